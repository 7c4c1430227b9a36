//! Forward error correction over groups of audio datagrams.
//!
//! A group is K consecutive audio seqs aligned on a multiple of K (`group_seq % K == 0`).
//! Source shard i of a group is `ts u64 LE | len u16 LE | payload`, zero padded to the group's
//! shard length: the largest `10 + len` in the group, rounded up to even (reed-solomon-simd
//! works on even shard sizes). The server sends M parity shards per group, Reed-Solomon over
//! the K source shards with reed-solomon-simd's code; a listener holding any K of the K + M
//! shards rebuilds every missing datagram of the group, `ts` and payload exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Bytes a source shard spends before the payload: `ts u64 | len u16`.
pub const SHARD_HEADER: usize = 10;

/// The largest payload a shard can carry: `len` is a u16 on the wire.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// How many groups behind the newest one a decoder keeps: older groups are past any playout
/// deadline long before this, and the bound keeps memory fixed whatever arrives.
pub const DECODER_GROUPS: u64 = 64;

/// A group shape: K source datagrams protected by M parity shards.
///
/// Both are at least 1, so every group has parity and every parity covers something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FecParams {
    k: u8,
    m: u8,
}

/// Why a group shape was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsError {
    /// K or M is zero: a group without sources or without parity protects nothing.
    Zero,
}

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamsError::Zero => f.write_str("K and M must both be at least 1"),
        }
    }
}

impl std::error::Error for ParamsError {}

impl FecParams {
    /// Checks a shape: K ≥ 1 and M ≥ 1 (any u8 pair of those is a shape reed-solomon-simd
    /// supports).
    pub fn new(k: u8, m: u8) -> Result<Self, ParamsError> {
        if k == 0 || m == 0 {
            return Err(ParamsError::Zero);
        }
        Ok(FecParams { k, m })
    }

    /// Source datagrams per group.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// Parity shards per group.
    pub fn m(&self) -> u8 {
        self.m
    }

    /// The first seq of the group `seq` belongs to.
    pub fn group_of(&self, seq: u64) -> u64 {
        seq - seq % u64::from(self.k)
    }
}

/// The default group: six datagrams and one parity shard. Measured on simulated time
/// (`examples/recovery.rs`, docs/BENCHMARKS.md): with retransmission it keeps repair under a
/// quarter of the stream's bytes at 5 % loss, and six 1,400-byte PCM datagrams of 48 kHz
/// stereo (43 ms) fit the default 50 ms playout delay.
pub const DEFAULT_K: u8 = 6;
/// Parity shards in the default group.
pub const DEFAULT_M: u8 = 1;
/// The most source datagrams per group `--fec` accepts.
pub const MAX_K: u8 = 32;

/// Parses `--fec`: `off` or `K,M` with K in 1..=[`MAX_K`] and M in 1..=K. The error names the
/// value and the range.
pub fn parse_fec(s: &str) -> Result<Option<FecParams>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("--fec {s}: expected off or K,M with K in 1..={MAX_K} and M in 1..=K");
    let (k, m) = t.split_once(',').ok_or_else(bad)?;
    let k: u8 = k.trim().parse().map_err(|_| bad())?;
    let m: u8 = m.trim().parse().map_err(|_| bad())?;
    if k == 0 || k > MAX_K || m == 0 || m > k {
        return Err(bad());
    }
    FecParams::new(k, m).map(Some).map_err(|_| bad())
}

/// Checks that a group of `params` fits the playout delay: K datagrams of `packet` each must
/// be no longer than `playout`, or its parity could only arrive after its first datagram's
/// deadline. The error names the value and the K that fit.
pub fn check_fits(params: FecParams, packet: Duration, playout: Duration) -> Result<(), String> {
    let group = packet * u32::from(params.k);
    if group <= playout {
        return Ok(());
    }
    let most = most_k(packet, playout);
    Err(format!(
        "--fec {},{}: a group of {} datagrams lasts {} ms, longer than the {} ms playout delay; \
         K must be in 1..={most} here",
        params.k,
        params.m,
        params.k,
        group.as_millis(),
        playout.as_millis()
    ))
}

fn most_k(packet: Duration, playout: Duration) -> u8 {
    let n = playout.as_nanos() / packet.as_nanos().max(1);
    u8::try_from(n.min(u128::from(MAX_K))).unwrap_or(MAX_K)
}

/// The group used without `--fec`: [`DEFAULT_K`],[`DEFAULT_M`] when that many datagrams fit
/// the playout delay, else none. A shorter group costs more than a sixth of the stream in
/// parity, and where six do not fit, retransmission alone does nearly as well on a home
/// network: in the simulated room, 20 ms Opus-sized datagrams at 100 ms through 5 % loss in
/// bursts of 3 conceal 0.020 % with retransmission alone and 0.013 % with 5,1 as well, for
/// 7.5 % against 27.9 % of the stream in repair (1 ms one way; 0.077 % and 0.082 % at 10 ms).
/// Parity pays off when the round trip eats the delay (20 ms one way, 15 % random loss: 1.9 %
/// concealed alone, 0.65 % with 5,1): `--fec` or a longer `--latency` is the answer there.
pub fn default_fec(packet: Duration, playout: Duration) -> Option<FecParams> {
    if most_k(packet, playout) < DEFAULT_K {
        return None;
    }
    FecParams::new(DEFAULT_K, DEFAULT_M).ok()
}

/// One parity shard, field for field the body of a v2 `Parity` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityShard {
    /// The group's first audio seq (a multiple of `k`).
    pub group_seq: u64,
    /// Source datagrams in the group.
    pub k: u8,
    /// Parity shards in the group.
    pub m: u8,
    /// Which parity shard this is, `0..m`.
    pub index: u8,
    /// The Reed-Solomon recovery shard.
    pub shard: Vec<u8>,
}

/// An audio datagram rebuilt from parity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Its audio seq.
    pub seq: u64,
    /// Its frame index.
    pub ts: u64,
    /// Its codec payload, exactly as the server sent it.
    pub payload: Vec<u8>,
}

/// The shard length of a group whose largest payload is `max_len` bytes.
pub fn shard_len(max_len: usize) -> usize {
    let n = SHARD_HEADER + max_len;
    n + (n & 1)
}

fn write_shard(out: &mut Vec<u8>, ts: u64, payload: &[u8], len: usize) {
    out.clear();
    out.extend_from_slice(&ts.to_le_bytes());
    // Callers only pass payloads up to MAX_PAYLOAD.
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(len, 0);
}

fn read_shard(shard: &[u8]) -> Option<(u64, &[u8])> {
    let ts = u64::from_le_bytes(shard.get(..8)?.try_into().ok()?);
    let len = u16::from_le_bytes(shard.get(8..10)?.try_into().ok()?) as usize;
    let payload = shard.get(SHARD_HEADER..SHARD_HEADER + len)?;
    Some((ts, payload))
}

/// The server side: collects each group's audio datagrams and yields its parity once the
/// group is complete, encoded once for every listener.
///
/// A group the stream entered after its start (a stream that does not start on a multiple of
/// K) or left before its end never completes and gets no parity: the decoder cannot use
/// shards of a group it cannot fill anyway.
pub struct FecEncoder {
    params: FecParams,
    group_seq: Option<u64>,
    /// `(ts, payload)` of the current group's seqs so far, in seq order.
    pending: Vec<(u64, Vec<u8>)>,
    shard: Vec<u8>,
    rs: Option<ReedSolomonEncoder>,
}

impl FecEncoder {
    /// An encoder for groups of `params` shape.
    pub fn new(params: FecParams) -> Self {
        FecEncoder {
            params,
            group_seq: None,
            pending: Vec::with_capacity(usize::from(params.k)),
            shard: Vec::new(),
            rs: None,
        }
    }

    /// The group shape.
    pub fn params(&self) -> FecParams {
        self.params
    }

    /// Feeds the next audio datagram. Returns the group's M parity shards when `seq` completes
    /// a group, else an empty vector. Seqs must come in order; a jump abandons the group it
    /// leaves. A payload longer than [`MAX_PAYLOAD`] abandons its group (it cannot be framed).
    pub fn push(&mut self, seq: u64, ts: u64, payload: &[u8]) -> Vec<ParityShard> {
        let k = u64::from(self.params.k);
        let group = self.params.group_of(seq);
        let index = seq - group;
        let expected = self.group_seq == Some(group) && self.pending.len() as u64 == index;
        if !expected {
            self.pending.clear();
            self.group_seq = None;
            if index != 0 {
                return Vec::new();
            }
            self.group_seq = Some(group);
        }
        if payload.len() > MAX_PAYLOAD {
            self.pending.clear();
            self.group_seq = None;
            return Vec::new();
        }
        self.pending.push((ts, payload.to_vec()));
        if (self.pending.len() as u64) < k {
            return Vec::new();
        }
        let parity = self.encode(group);
        self.pending.clear();
        self.group_seq = None;
        parity
    }

    fn encode(&mut self, group_seq: u64) -> Vec<ParityShard> {
        let FecParams { k, m } = self.params;
        let max = self.pending.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
        let len = shard_len(max);
        let rs = match self.rs.as_mut() {
            Some(rs) => rs.reset(usize::from(k), usize::from(m), len).map(|()| rs),
            None => ReedSolomonEncoder::new(usize::from(k), usize::from(m), len)
                .map(|rs| self.rs.insert(rs)),
        };
        let Ok(rs) = rs else {
            return Vec::new();
        };
        for (ts, payload) in &self.pending {
            write_shard(&mut self.shard, *ts, payload, len);
            if rs.add_original_shard(&self.shard).is_err() {
                return Vec::new();
            }
        }
        let Ok(result) = rs.encode() else {
            return Vec::new();
        };
        result
            .recovery_iter()
            .enumerate()
            .map(|(i, shard)| ParityShard {
                group_seq,
                k,
                m,
                // i < m, a u8.
                index: i as u8,
                shard: shard.to_vec(),
            })
            .collect()
    }
}

/// What a decoder keeps of one group until it is whole.
#[derive(Default)]
struct GroupState {
    /// Received source datagrams by index in the group: `(ts, payload)`.
    sources: BTreeMap<u8, (u64, Vec<u8>)>,
    /// Received parity shards by index; all of one length.
    parity: BTreeMap<u8, Vec<u8>>,
    /// Every source is known (received or rebuilt): nothing more to do.
    done: bool,
}

/// Why the decoder ignored a parity shard. Each is a malformed or foreign shard; counted by
/// the caller, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParityRejected {
    /// `k`/`m` differ from the stream's announced shape.
    Shape,
    /// `group_seq` is not a multiple of K, or `index ≥ m`.
    Position,
    /// Odd, too short, or different from the group's other parity shards.
    Length,
    /// The group is older than the decoder keeps.
    Stale,
}

/// The listener side: takes received audio and parity, and yields every missing datagram of a
/// group as soon as it holds K of the group's K + M shards.
pub struct FecDecoder {
    params: FecParams,
    groups: BTreeMap<u64, GroupState>,
    newest: Option<u64>,
    shard: Vec<u8>,
    rs: Option<ReedSolomonDecoder>,
}

impl FecDecoder {
    /// A decoder for groups of `params` shape (the server's `Repair.fec`).
    pub fn new(params: FecParams) -> Self {
        FecDecoder {
            params,
            groups: BTreeMap::new(),
            newest: None,
            shard: Vec::new(),
            rs: None,
        }
    }

    /// The group shape.
    pub fn params(&self) -> FecParams {
        self.params
    }

    /// Feeds a received audio datagram (or a retransmitted one). Returns what this completes.
    pub fn on_audio(&mut self, seq: u64, ts: u64, payload: &[u8]) -> Vec<Recovered> {
        if payload.len() > MAX_PAYLOAD {
            return Vec::new();
        }
        let group_seq = self.params.group_of(seq);
        let Some(state) = self.group(group_seq) else {
            return Vec::new();
        };
        if state.done {
            return Vec::new();
        }
        // seq - group_seq < k ≤ 255.
        let index = (seq - group_seq) as u8;
        state
            .sources
            .entry(index)
            .or_insert_with(|| (ts, payload.to_vec()));
        self.try_recover(group_seq)
    }

    /// Feeds a received parity shard. Returns what this completes, or why the shard was
    /// ignored.
    pub fn on_parity(
        &mut self,
        group_seq: u64,
        k: u8,
        m: u8,
        index: u8,
        shard: &[u8],
    ) -> Result<Vec<Recovered>, ParityRejected> {
        if k != self.params.k || m != self.params.m {
            return Err(ParityRejected::Shape);
        }
        if group_seq % u64::from(k) != 0 || index >= m {
            return Err(ParityRejected::Position);
        }
        if shard.len() < SHARD_HEADER
            || shard.len() % 2 != 0
            || shard.len() > shard_len(MAX_PAYLOAD)
        {
            return Err(ParityRejected::Length);
        }
        let Some(state) = self.group(group_seq) else {
            return Err(ParityRejected::Stale);
        };
        if let Some(other) = state.parity.values().next()
            && other.len() != shard.len()
        {
            return Err(ParityRejected::Length);
        }
        if state.done {
            return Ok(Vec::new());
        }
        state.parity.entry(index).or_insert_with(|| shard.to_vec());
        Ok(self.try_recover(group_seq))
    }

    /// The state of `group_seq`, created if new; `None` when it is older than the window.
    fn group(&mut self, group_seq: u64) -> Option<&mut GroupState> {
        let k = u64::from(self.params.k);
        let span = DECODER_GROUPS * k;
        match self.newest {
            Some(newest) if group_seq + span <= newest => return None,
            Some(newest) if group_seq <= newest => {}
            _ => {
                self.newest = Some(group_seq);
                let oldest = group_seq.saturating_sub(span - k);
                self.groups = self.groups.split_off(&oldest);
            }
        }
        Some(self.groups.entry(group_seq).or_default())
    }

    fn try_recover(&mut self, group_seq: u64) -> Vec<Recovered> {
        let FecParams { k, m } = self.params;
        let Some(state) = self.groups.get_mut(&group_seq) else {
            return Vec::new();
        };
        if state.sources.len() == usize::from(k) {
            state.done = true;
            state.parity.clear();
            return Vec::new();
        }
        if state.parity.is_empty() || state.sources.len() + state.parity.len() < usize::from(k) {
            return Vec::new();
        }
        let Some(len) = state.parity.values().next().map(Vec::len) else {
            return Vec::new();
        };
        // A source longer than the parity says cannot belong to this group's encoding.
        if state
            .sources
            .values()
            .any(|(_, p)| shard_len(p.len()) > len)
        {
            return Vec::new();
        }
        let rs = match self.rs.as_mut() {
            Some(rs) => rs.reset(usize::from(k), usize::from(m), len).map(|()| rs),
            None => ReedSolomonDecoder::new(usize::from(k), usize::from(m), len)
                .map(|rs| self.rs.insert(rs)),
        };
        let Ok(rs) = rs else {
            return Vec::new();
        };
        for (&i, (ts, payload)) in &state.sources {
            write_shard(&mut self.shard, *ts, payload, len);
            if rs.add_original_shard(usize::from(i), &self.shard).is_err() {
                return Vec::new();
            }
        }
        for (&i, shard) in &state.parity {
            if rs.add_recovery_shard(usize::from(i), shard).is_err() {
                return Vec::new();
            }
        }
        let Ok(result) = rs.decode() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, shard) in result.restored_original_iter() {
            if let Some((ts, payload)) = read_shard(shard) {
                out.push(Recovered {
                    seq: group_seq + i as u64,
                    ts,
                    payload: payload.to_vec(),
                });
            }
        }
        out.sort_by_key(|r| r.seq);
        state.done = true;
        state.parity.clear();
        state.sources.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn datagram(seq: u64, len: usize) -> (u64, Vec<u8>) {
        let ts = seq * 441;
        let payload = (0..len)
            .map(|i| (seq as usize * 31 + i * 7) as u8)
            .collect();
        (ts, payload)
    }

    fn encode_group(params: FecParams, group: u64, lens: &[usize]) -> Vec<ParityShard> {
        let mut enc = FecEncoder::new(params);
        let mut parity = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let seq = group + i as u64;
            let (ts, p) = datagram(seq, len);
            let out = enc.push(seq, ts, &p);
            if i + 1 < lens.len() {
                assert!(out.is_empty(), "parity before the group was complete");
            }
            parity = out;
        }
        parity
    }

    #[test]
    fn params_refuse_zero() {
        assert_eq!(FecParams::new(0, 2), Err(ParamsError::Zero));
        assert_eq!(FecParams::new(4, 0), Err(ParamsError::Zero));
        assert!(FecParams::new(255, 255).is_ok());
    }

    #[test]
    fn fec_option_parses_and_names_bad_values() {
        assert_eq!(parse_fec("off"), Ok(None));
        assert_eq!(parse_fec("6,1"), Ok(Some(FecParams::new(6, 1).unwrap())));
        assert_eq!(
            parse_fec(" 32,32 "),
            Ok(Some(FecParams::new(32, 32).unwrap()))
        );
        for bad in ["", "6", "0,1", "6,0", "4,5", "33,1", "a,b", "6,1,1", "-1,1"] {
            let e = parse_fec(bad).unwrap_err();
            assert!(e.contains(&format!("--fec {bad}")), "{e}");
            assert!(e.contains("1..=32"), "{e}");
        }
    }

    #[test]
    fn a_group_must_fit_the_playout_delay() {
        let pcm = Duration::from_micros(7_146);
        let p = FecParams::new(6, 1).unwrap();
        assert_eq!(check_fits(p, pcm, Duration::from_millis(50)), Ok(()));
        let e = check_fits(
            FecParams::new(8, 2).unwrap(),
            pcm,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(
            e.contains("--fec 8,2") && e.contains("57 ms") && e.contains("1..=6"),
            "{e}"
        );
        assert_eq!(default_fec(pcm, Duration::from_millis(50)), Some(p));
        // Four fit in 30 ms: a group of four would cost a quarter of the stream.
        assert_eq!(default_fec(pcm, Duration::from_millis(30)), None);
        // 20 ms Opus packets: five fit 100 ms, not enough; six fit 120 ms.
        let opus = Duration::from_millis(20);
        assert_eq!(default_fec(opus, Duration::from_millis(100)), None);
        assert_eq!(default_fec(opus, Duration::from_millis(120)), Some(p));
        assert_eq!(default_fec(opus, Duration::from_millis(200)), Some(p));
    }

    #[test]
    fn shard_length_is_even_and_fits_the_largest() {
        assert_eq!(shard_len(0), 10);
        assert_eq!(shard_len(1), 12);
        assert_eq!(shard_len(1400), 1410);
        assert_eq!(shard_len(1401), 1412);
    }

    #[test]
    fn encoder_yields_m_shards_per_aligned_group() {
        let params = FecParams::new(4, 2).unwrap();
        let parity = encode_group(params, 8, &[100, 101, 57, 0]);
        assert_eq!(parity.len(), 2);
        for (i, p) in parity.iter().enumerate() {
            assert_eq!((p.group_seq, p.k, p.m, p.index), (8, 4, 2, i as u8));
            assert_eq!(p.shard.len(), shard_len(101));
        }
    }

    #[test]
    fn parity_matches_the_layout_in_the_protocol() {
        // Independent of the encoder: build the source shards by hand and compare.
        let params = FecParams::new(3, 2).unwrap();
        let parity = encode_group(params, 3, &[5, 8, 1]);
        let shards: Vec<Vec<u8>> = (3..6)
            .zip([5usize, 8, 1])
            .map(|(seq, len)| {
                let (ts, p) = datagram(seq, len);
                let mut s = ts.to_le_bytes().to_vec();
                s.extend_from_slice(&(len as u16).to_le_bytes());
                s.extend_from_slice(&p);
                s.resize(18, 0);
                s
            })
            .collect();
        let expected = reed_solomon_simd::encode(3, 2, &shards).unwrap();
        let got: Vec<Vec<u8>> = parity.into_iter().map(|p| p.shard).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn unaligned_start_and_gaps_yield_no_parity() {
        let params = FecParams::new(4, 1).unwrap();
        let mut enc = FecEncoder::new(params);
        for seq in 5..8 {
            assert!(enc.push(seq, seq, b"ab").is_empty());
        }
        // 8..12 is the first whole group.
        for seq in 8..11 {
            assert!(enc.push(seq, seq, b"ab").is_empty());
        }
        assert_eq!(enc.push(11, 11, b"ab").len(), 1);
        // A jump inside a group abandons it.
        assert!(enc.push(12, 12, b"ab").is_empty());
        assert!(enc.push(14, 14, b"ab").is_empty());
        assert!(enc.push(15, 15, b"ab").is_empty());
        assert_eq!(enc.push(16, 16, b"ab").len(), 0);
    }

    #[test]
    fn decoder_rebuilds_as_soon_as_it_holds_k() {
        let params = FecParams::new(4, 2).unwrap();
        let lens = [300, 280, 310, 90];
        let parity = encode_group(params, 40, &lens);
        let mut dec = FecDecoder::new(params);
        // Lose 41 and 43.
        for seq in [40u64, 42] {
            let (ts, p) = datagram(seq, lens[(seq - 40) as usize]);
            assert!(dec.on_audio(seq, ts, &p).is_empty());
        }
        let p0 = &parity[0];
        assert!(dec.on_parity(40, 4, 2, 0, &p0.shard).unwrap().is_empty());
        let p1 = &parity[1];
        let got = dec.on_parity(40, 4, 2, 1, &p1.shard).unwrap();
        let want: Vec<Recovered> = [41u64, 43]
            .iter()
            .map(|&seq| {
                let (ts, payload) = datagram(seq, lens[(seq - 40) as usize]);
                Recovered { seq, ts, payload }
            })
            .collect();
        assert_eq!(got, want);
        // The late original is not rebuilt twice.
        let (ts, p) = datagram(41, 280);
        assert!(dec.on_audio(41, ts, &p).is_empty());
    }

    #[test]
    fn decoder_rejects_foreign_parity() {
        let params = FecParams::new(4, 2).unwrap();
        let mut dec = FecDecoder::new(params);
        assert_eq!(
            dec.on_parity(0, 5, 2, 0, &[0; 20]),
            Err(ParityRejected::Shape)
        );
        assert_eq!(
            dec.on_parity(2, 4, 2, 0, &[0; 20]),
            Err(ParityRejected::Position)
        );
        assert_eq!(
            dec.on_parity(0, 4, 2, 2, &[0; 20]),
            Err(ParityRejected::Position)
        );
        assert_eq!(
            dec.on_parity(0, 4, 2, 0, &[0; 21]),
            Err(ParityRejected::Length)
        );
        assert_eq!(
            dec.on_parity(0, 4, 2, 0, &[0; 8]),
            Err(ParityRejected::Length)
        );
        assert_eq!(dec.on_parity(0, 4, 2, 0, &[0; 20]), Ok(Vec::new()));
        assert_eq!(
            dec.on_parity(0, 4, 2, 1, &[0; 22]),
            Err(ParityRejected::Length)
        );
        // Far newer groups push old ones out of the window.
        let far = 4 * DECODER_GROUPS * 2;
        assert_eq!(dec.on_parity(far, 4, 2, 0, &[0; 20]), Ok(Vec::new()));
        assert_eq!(
            dec.on_parity(0, 4, 2, 1, &[0; 20]),
            Err(ParityRejected::Stale)
        );
    }

    #[test]
    fn garbage_parity_never_panics_or_invents_seqs() {
        let params = FecParams::new(2, 1).unwrap();
        let mut dec = FecDecoder::new(params);
        assert!(dec.on_audio(0, 0, b"abc").is_empty());
        // A parity shard of random bytes decodes to a shard whose len may exceed it: dropped.
        let got = dec.on_parity(0, 2, 1, 0, &[0xff; 14]).unwrap();
        for r in got {
            assert_eq!(r.seq, 1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any ≤ M losses per group, in any arrival order, are rebuilt exactly.
        #[test]
        fn any_m_losses_are_recovered_exactly(
            k in 1u8..=12,
            m in 1u8..=4,
            groups in 1u64..4,
            start_group in 0u64..1000,
            lens in proptest::collection::vec(0usize..1500, 48),
            losses in proptest::collection::vec(proptest::collection::vec(any::<proptest::sample::Index>(), 0..=4), 4),
            order_seed in any::<u64>(),
        ) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let params = FecParams::new(k, m).unwrap();
            let first = start_group * u64::from(k);
            let mut enc = FecEncoder::new(params);
            let mut arrivals: Vec<(bool, u64, u64, Vec<u8>)> = Vec::new(); // (is_parity, seq|group, ts|index, bytes)
            let mut sent = BTreeMap::new();
            for g in 0..groups {
                let group = first + g * u64::from(k);
                let lost: std::collections::BTreeSet<u64> = losses[g as usize]
                    .iter()
                    .take(usize::from(m))
                    .map(|ix| group + ix.index(usize::from(k)) as u64)
                    .collect();
                for i in 0..u64::from(k) {
                    let seq = group + i;
                    let (ts, p) = datagram(seq, lens[(seq % 48) as usize]);
                    for par in enc.push(seq, ts, &p) {
                        arrivals.push((true, par.group_seq, u64::from(par.index), par.shard));
                    }
                    sent.insert(seq, (ts, p.clone()));
                    if !lost.contains(&seq) {
                        arrivals.push((false, seq, ts, p));
                    }
                }
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(order_seed);
            arrivals.shuffle(&mut rng);
            let mut dec = FecDecoder::new(params);
            let mut have = BTreeMap::new();
            for (is_parity, a, b, bytes) in arrivals {
                let rec = if is_parity {
                    dec.on_parity(a, k, m, b as u8, &bytes).unwrap()
                } else {
                    // An original may arrive after parity already rebuilt it: same bytes.
                    if let Some(prev) = have.insert(a, (b, bytes.clone())) {
                        prop_assert_eq!(prev, (b, bytes.clone()));
                    }
                    dec.on_audio(a, b, &bytes)
                };
                for r in rec {
                    prop_assert!(!have.contains_key(&r.seq), "seq {} rebuilt after it arrived", r.seq);
                    have.insert(r.seq, (r.ts, r.payload));
                }
            }
            prop_assert_eq!(have, sent);
        }
    }
}
