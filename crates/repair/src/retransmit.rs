//! Selective retransmission: the server's history and per-listener budget, and the
//! listener's planner of what to ask for and when.
//!
//! The listener asks once for each missing seq as soon as the gap is certain (a later seq
//! arrived) and only while an answer can still arrive before the seq's playout deadline; it
//! asks again only when the answer is overdue by its round-trip estimate. The server answers
//! from the last second of datagrams, never spending more bytes per second on one listener's
//! resends than the stream itself.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How far back a server can resend by default: one second of stream.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(1);

/// The most datagrams a history holds whatever the stream's rate, so memory stays bounded
/// (a second of 48 kHz stereo PCM is ~140 datagrams; a 2.5 ms Opus stream 400).
pub const HISTORY_MAX_ENTRIES: usize = 4096;

struct Entry {
    seq: u64,
    ts: u64,
    payload: Bytes,
    at: Instant,
}

/// The server's recent audio datagrams by seq, for answering Nacks.
///
/// Holds what was sent in the last `keep` (and at most [`HISTORY_MAX_ENTRIES`]); payloads are
/// the same `Bytes` the fan-out sent, so keeping them costs no copy.
pub struct History {
    entries: VecDeque<Entry>,
    keep: Duration,
    bytes: usize,
}

impl History {
    /// A history of the last `keep` of stream.
    pub fn new(keep: Duration) -> Self {
        History {
            entries: VecDeque::new(),
            keep,
            bytes: 0,
        }
    }

    /// How far back it answers.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// Records a datagram sent at `now`. Seqs must increase; anything older than `keep` goes.
    pub fn push(&mut self, now: Instant, seq: u64, ts: u64, payload: Bytes) {
        if self.entries.back().is_some_and(|e| e.seq >= seq) {
            return;
        }
        self.bytes += payload.len();
        self.entries.push_back(Entry {
            seq,
            ts,
            payload,
            at: now,
        });
        self.expire(now);
    }

    /// Drops what is older than `keep` (also called by `push`).
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            let old = now.saturating_duration_since(front.at) > self.keep;
            if !old && self.entries.len() <= HISTORY_MAX_ENTRIES {
                break;
            }
            self.bytes -= front.payload.len();
            self.entries.pop_front();
        }
    }

    /// The datagram with `seq` as `(ts, payload)`, if still held.
    pub fn get(&self, seq: u64) -> Option<(u64, &Bytes)> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let e = &self.entries[i];
        Some((e.ts, &e.payload))
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held: the stream's byte count over the last `keep`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A per-listener byte budget for resends: refills at `rate` bytes per second up to `burst`.
///
/// Set to the stream's own byte rate, a listener asking for everything can at most double
/// what it receives, whatever it sends.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Available bytes × 10⁶ (byte-microseconds), so refills are exact integers.
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `rate` bytes per second.
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: u128::from(burst) * 1_000_000,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_micros();
        self.last = self.last.max(now);
        let cap = u128::from(self.burst) * 1_000_000;
        self.tokens = (self.tokens + dt * u128::from(self.rate)).min(cap);
    }

    /// Takes `bytes` if the budget has them at `now`; otherwise takes nothing.
    pub fn try_take(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        let need = bytes as u128 * 1_000_000;
        if need > self.tokens {
            return false;
        }
        self.tokens -= need;
        true
    }

    /// Bytes available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (self.tokens / 1_000_000) as u64
    }
}

/// One Nack: seq `base` and `base + 1 + i` for every bit i set in `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRequest {
    /// The lowest seq asked for.
    pub base: u64,
    /// Bit i asks for `base + 1 + i`.
    pub mask: u64,
}

impl NackRequest {
    /// The seqs asked for, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.base).chain(
            (0..64u64)
                .filter(|i| self.mask & (1 << i) != 0)
                .map(|i| self.base + 1 + i),
        )
    }
}

/// The planner's tuning.
#[derive(Debug, Clone, Copy)]
pub struct NackConfig {
    /// The most times one seq is asked for.
    pub max_asks: u8,
    /// Round-trip estimate before any sample.
    pub initial_rtt: Duration,
    /// The least time to wait for an answer before asking again.
    pub min_rto: Duration,
    /// The most missing seqs tracked: a longer outage is beyond repair anyway.
    pub max_tracked: usize,
    /// With FEC groups of this many seqs (0: none), a missing seq is asked for only once a
    /// seq of a later group arrived: its group's parity came first, and may have rebuilt it.
    pub fec_group: u8,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            max_asks: 6,
            initial_rtt: Duration::from_millis(50),
            min_rto: Duration::from_millis(10),
            max_tracked: 1024,
            fec_group: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    deadline: Instant,
    /// Not asked for before a seq at least this high arrived.
    ready_after: u64,
    /// When it may be asked for (next).
    due: Instant,
    asks: u8,
    first_ask: Option<Instant>,
}

/// What the planner has done, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackStats {
    /// Seqs asked for, counting each ask.
    pub asked: u64,
    /// Seqs given up on: no answer could arrive before the deadline any more.
    pub abandoned: u64,
}

/// The listener side: decides which missing seqs to ask for and when.
///
/// The caller feeds every original audio datagram with its playout deadline (`on_received`),
/// every datagram it got back another way (`on_repaired`: FEC or Resent), and sends what
/// `poll_nack` returns, calling again at `poll_timeout`.
pub struct NackPlanner {
    config: NackConfig,
    /// The stream's first seq, when known: seqs from it up to the first arrival are missing.
    first: Option<u64>,
    highest: Option<(u64, Instant)>,
    missing: BTreeMap<u64, Missing>,
    srtt: Option<Duration>,
    rttvar: Duration,
    stats: NackStats,
}

impl NackPlanner {
    /// A planner with `config`.
    pub fn new(config: NackConfig) -> Self {
        NackPlanner {
            config,
            first: None,
            highest: None,
            missing: BTreeMap::new(),
            srtt: None,
            rttvar: Duration::ZERO,
            stats: NackStats::default(),
        }
    }

    /// The current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(self.config.initial_rtt)
    }

    /// How long to wait for an answer before asking again (RFC 6298's srtt + 4·rttvar).
    pub fn rto(&self) -> Duration {
        let rto = match self.srtt {
            Some(srtt) => srtt + 4 * self.rttvar,
            None => 2 * self.config.initial_rtt,
        };
        rto.max(self.config.min_rto)
    }

    /// What it has asked and abandoned so far.
    pub fn stats(&self) -> NackStats {
        self.stats
    }

    /// Seqs currently missing and still worth asking for.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Feeds a round-trip sample (a handshake, a time exchange, a Nack answered first time).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The stream starts at `seq` (the `Welcome`'s `start_seq`): when the first datagram to
    /// arrive is a later one, those before it are missing and asked for like any gap.
    pub fn expect_from(&mut self, seq: u64) {
        self.first = Some(seq);
    }

    /// The stream ended at `last_seq` (`End.last_seq`): seqs after the highest received up to
    /// it are missing, none of them due later than `deadline` (the first one's).
    pub fn on_end(&mut self, now: Instant, last_seq: u64, deadline: Instant) {
        let Some((high, _)) = self.highest else {
            return;
        };
        let from = (high + 1).max(last_seq.saturating_sub(self.config.max_tracked as u64));
        for s in from..=last_seq {
            if !self.missing.contains_key(&s) {
                let mut m = self.missing_entry(now, s, deadline);
                // No later group will come to say whether parity rebuilt it.
                m.ready_after = 0;
                self.missing.insert(s, m);
            }
        }
    }

    fn missing_entry(&self, now: Instant, s: u64, deadline: Instant) -> Missing {
        let ready_after = match u64::from(self.config.fec_group) {
            0 => s + 1,
            k => s - s % k + k,
        };
        Missing {
            deadline,
            ready_after,
            due: now,
            asks: 0,
            first_ask: None,
        }
    }

    /// Feeds an original audio datagram that arrived at `now`, with the instant its audio must
    /// be in the buffer (`deadline`). Seqs skipped between the highest one before and this one
    /// become missing, with deadlines interpolated between their neighbours'.
    pub fn on_received(&mut self, now: Instant, seq: u64, deadline: Instant) {
        self.missing.remove(&seq);
        let Some((high, high_deadline)) = self.highest else {
            self.highest = Some((seq, deadline));
            // The stream's first datagrams lost: nothing came before to interpolate from, and
            // they are due before this one, so this one's deadline bounds theirs.
            if let Some(first) = self.first.filter(|&f| f < seq) {
                let from = first.max(seq.saturating_sub(self.config.max_tracked as u64));
                for s in from..seq {
                    self.missing.insert(s, self.missing_entry(now, s, deadline));
                }
            }
            return;
        };
        if seq <= high {
            return;
        }
        self.highest = Some((seq, deadline));
        let gap = seq - high - 1;
        // Only the newest `max_tracked` of a long gap are worth tracking.
        let first = high + 1 + gap.saturating_sub(self.config.max_tracked as u64);
        let span = deadline.saturating_duration_since(high_deadline);
        for s in first..seq {
            let frac = (s - high) as f64 / (seq - high) as f64;
            let d = high_deadline + span.mul_f64(frac);
            self.missing.insert(s, self.missing_entry(now, s, d));
        }
        while self.missing.len() > self.config.max_tracked {
            self.missing.pop_first();
            self.stats.abandoned += 1;
        }
    }

    /// Feeds a datagram recovered at `now` by FEC (`resent` false) or by a `Resent`
    /// (`resent` true): it is no longer asked for. A Resent answering a single ask is a
    /// round-trip sample (Karn: an answer to a repeated ask is ambiguous).
    pub fn on_repaired(&mut self, now: Instant, seq: u64, resent: bool) {
        if let Some(m) = self.missing.remove(&seq)
            && resent
            && m.asks == 1
            && let Some(at) = m.first_ask
        {
            self.on_rtt_sample(now.saturating_duration_since(at));
        }
    }

    /// The next Nack to send at `now`, if any seq is due; call until `None`.
    ///
    /// A seq is due when it has not been asked for yet or its last ask is overdue, and an answer
    /// sent now can still arrive a round trip before its deadline. Seqs that can no longer make
    /// it are dropped.
    pub fn poll_nack(&mut self, now: Instant) -> Option<NackRequest> {
        let rtt = self.rtt();
        let rto = self.rto();
        let max_asks = self.config.max_asks;
        let mut abandoned = 0;
        self.missing.retain(|_, m| {
            let keep = now + rtt <= m.deadline && m.asks < max_asks;
            if !keep {
                abandoned += 1;
            }
            keep
        });
        self.stats.abandoned += abandoned;
        let mut request: Option<NackRequest> = None;
        let high = self.highest.map_or(0, |(h, _)| h);
        for (&seq, m) in self.missing.iter_mut() {
            if m.due > now || (high < m.ready_after && now + rtt + rto < m.deadline) {
                continue;
            }
            match request.as_mut() {
                None => request = Some(NackRequest { base: seq, mask: 0 }),
                Some(r) if seq - r.base <= 64 => r.mask |= 1 << (seq - r.base - 1),
                Some(_) => break,
            }
            m.asks += 1;
            m.first_ask.get_or_insert(now);
            m.due = now + rto;
            self.stats.asked += 1;
        }
        request
    }

    /// When `poll_nack` next has something to do. A seq waiting for its group's end waits
    /// for an arrival, or at most until only a round trip and one retry are left before its
    /// deadline: then it is asked for anyway.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let high = self.highest.map_or(0, |(h, _)| h);
        let last_chance = self.rtt() + self.rto();
        self.missing
            .values()
            .map(|m| {
                if high >= m.ready_after {
                    m.due
                } else {
                    m.due
                        .max(m.deadline.checked_sub(last_chance).unwrap_or(m.due))
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn history_keeps_a_window_and_finds_by_seq() {
        let t0 = Instant::now();
        let mut h = History::new(ms(1000));
        for seq in 0..200u64 {
            h.push(
                t0 + ms(seq * 10),
                seq,
                seq * 480,
                Bytes::from(vec![seq as u8; 100]),
            );
        }
        // At 1.99 s the window reaches back to 0.99 s: seqs 99..=199.
        assert_eq!(h.len(), 101);
        assert_eq!(h.bytes(), 101 * 100);
        assert!(h.get(98).is_none());
        let (ts, p) = h.get(150).unwrap();
        assert_eq!((ts, p[0]), (150 * 480, 150));
        assert!(h.get(200).is_none());
        // Out-of-order pushes are ignored.
        h.push(t0 + ms(1990), 5, 0, Bytes::new());
        assert!(h.get(5).is_none());
        h.expire(t0 + ms(5000));
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn history_is_bounded_in_entries() {
        let t0 = Instant::now();
        let mut h = History::new(ms(1000));
        for seq in 0..(HISTORY_MAX_ENTRIES as u64 + 10) {
            h.push(t0, seq, seq, Bytes::from_static(b"x"));
        }
        assert_eq!(h.len(), HISTORY_MAX_ENTRIES);
        assert!(h.get(9).is_none());
        assert!(h.get(10).is_some());
    }

    #[test]
    fn token_bucket_never_exceeds_its_rate() {
        let t0 = Instant::now();
        // 10 kB/s, 1 kB burst; someone asks for 300 B every millisecond for 10 s.
        let mut b = TokenBucket::new(t0, 10_000, 1_000);
        let mut sent = 0u64;
        for i in 0..10_000u64 {
            if b.try_take(t0 + ms(i), 300) {
                sent += 300;
            }
        }
        // At most burst + rate × 10 s, and the budget is actually used.
        assert!(sent <= 1_000 + 10_000 * 10, "{sent}");
        assert!(sent >= 10_000 * 10 - 300, "{sent}");
        assert!(!b.try_take(t0 + ms(9_999), 300));
    }

    #[test]
    fn token_bucket_refuses_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1_000_000, 500);
        assert!(!b.try_take(t0 + ms(100), 501));
        assert!(b.try_take(t0 + ms(100), 500));
        assert_eq!(b.available(t0 + ms(100)), 0);
    }

    fn planner() -> NackPlanner {
        NackPlanner::new(NackConfig {
            initial_rtt: ms(20),
            max_asks: 3,
            ..NackConfig::default()
        })
    }

    #[test]
    fn asks_once_as_soon_as_a_gap_is_certain() {
        let t0 = Instant::now();
        let mut p = planner();
        let deadline = |seq: u64| t0 + ms(200 + seq * 10);
        p.on_received(t0, 10, deadline(10));
        assert_eq!(p.poll_nack(t0), None);
        assert_eq!(p.poll_timeout(), None);
        // 11, 12 and 14 lost; 13 and 15 arrive.
        p.on_received(t0 + ms(30), 13, deadline(13));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(30)));
        let n = p.poll_nack(t0 + ms(30)).unwrap();
        assert_eq!(n.seqs().collect::<Vec<_>>(), vec![11, 12]);
        assert_eq!(n, NackRequest { base: 11, mask: 1 });
        assert_eq!(p.poll_nack(t0 + ms(30)), None);
        p.on_received(t0 + ms(50), 15, deadline(15));
        assert_eq!(
            p.poll_nack(t0 + ms(50)).unwrap().seqs().collect::<Vec<_>>(),
            vec![14]
        );
        // Answers: no more asks.
        for s in [11, 12, 14] {
            p.on_repaired(t0 + ms(60), s, true);
        }
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(
            p.stats(),
            NackStats {
                asked: 3,
                abandoned: 0
            }
        );
    }

    #[test]
    fn asks_again_only_when_the_answer_is_overdue() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(500));
        p.on_received(t0, 2, t0 + ms(520));
        assert_eq!(p.poll_nack(t0).unwrap().base, 1);
        // No samples yet: rto = 2 × the initial 20 ms.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(40)));
        assert_eq!(p.poll_nack(t0 + ms(39)), None);
        assert_eq!(p.poll_nack(t0 + ms(40)).unwrap().base, 1);
        assert_eq!(p.poll_nack(t0 + ms(80)).unwrap().base, 1);
        // Three asks is the most (as configured).
        assert_eq!(p.poll_nack(t0 + ms(120)), None);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(
            p.stats(),
            NackStats {
                asked: 3,
                abandoned: 1
            }
        );
    }

    #[test]
    fn never_asks_when_the_answer_would_be_late() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_rtt_sample(ms(100));
        p.on_received(t0, 0, t0 + ms(50));
        p.on_received(t0, 2, t0 + ms(150));
        // 1's deadline interpolates to 100 ms: a 100 ms round trip makes it just in time.
        assert_eq!(p.poll_nack(t0).unwrap().base, 1);
        p.on_received(t0 + ms(10), 4, t0 + ms(150));
        // 3's deadline is 150 ms: 10 + 100 ≤ 150, asked.
        assert_eq!(p.poll_nack(t0 + ms(10)).unwrap().base, 3);
        p.on_received(t0 + ms(60), 6, t0 + ms(150));
        // 5 at 60 ms: 160 > 150, never asked.
        assert_eq!(p.poll_nack(t0 + ms(60)), None);
        assert_eq!(p.stats().asked, 2);
    }

    #[test]
    fn fec_repairs_stop_asks_and_karn_skips_ambiguous_samples() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 3, t0 + ms(1000));
        p.on_repaired(t0, 1, false);
        assert_eq!(p.poll_nack(t0), Some(NackRequest { base: 2, mask: 0 }));
        p.on_repaired(t0 + ms(30), 2, true);
        assert_eq!(p.rtt(), ms(30));
        // Asked twice: no sample.
        p.on_received(t0 + ms(30), 5, t0 + ms(1000));
        p.poll_nack(t0 + ms(30)).unwrap();
        p.poll_nack(t0 + ms(30) + p.rto()).unwrap();
        p.on_repaired(t0 + ms(200), 4, true);
        assert_eq!(p.rtt(), ms(30));
    }

    #[test]
    fn one_nack_covers_65_seqs_and_the_rest_follow() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 101, t0 + ms(1000));
        let a = p.poll_nack(t0).unwrap();
        assert_eq!(
            a,
            NackRequest {
                base: 1,
                mask: u64::MAX
            }
        );
        let b = p.poll_nack(t0).unwrap();
        assert_eq!(b.base, 66);
        assert_eq!(b.seqs().collect::<Vec<_>>(), (66..101).collect::<Vec<_>>());
        assert_eq!(p.poll_nack(t0), None);
    }

    #[test]
    fn a_long_outage_tracks_a_bounded_number() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            max_tracked: 100,
            ..NackConfig::default()
        });
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 1_000_000, t0 + ms(1000));
        assert_eq!(p.missing(), 100);
        assert_eq!(p.poll_nack(t0).unwrap().base, 1_000_000 - 100);
    }

    #[test]
    fn with_fec_asks_only_after_the_group_ended() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            fec_group: 4,
            ..NackConfig::default()
        });
        p.on_received(t0, 4, t0 + ms(1000));
        p.on_received(t0, 6, t0 + ms(1000));
        // 5 is missing, but group 4..8 has not ended: its parity may still rebuild it. Unless
        // nothing else arrives: then it is asked for when a round trip and a retry are left
        // (rtt 50 ms, rto 100 ms before the deadline).
        assert_eq!(p.poll_nack(t0), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(850)));
        p.on_received(t0 + ms(5), 7, t0 + ms(1000));
        assert_eq!(p.poll_nack(t0 + ms(5)), None);
        p.on_received(t0 + ms(10), 9, t0 + ms(1000));
        // 8 is missing in the next group, 5's group ended: only 5 is asked for.
        assert_eq!(p.poll_timeout(), Some(t0));
        assert_eq!(
            p.poll_nack(t0 + ms(10)),
            Some(NackRequest { base: 5, mask: 0 })
        );
        assert_eq!(p.poll_nack(t0 + ms(10)), None);
        // 8 at its last chance (5 came back meanwhile).
        p.on_repaired(t0 + ms(20), 5, false);
        assert_eq!(p.poll_nack(t0 + ms(849)), None);
        assert_eq!(
            p.poll_nack(t0 + ms(850)),
            Some(NackRequest { base: 8, mask: 0 })
        );
    }

    #[test]
    fn reordered_arrivals_cancel_their_asks() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 2, t0 + ms(1000));
        p.on_received(t0, 1, t0 + ms(1000));
        assert_eq!(p.poll_nack(t0), None);
    }

    #[test]
    fn loss_at_the_start_of_the_stream_is_asked_for() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        p.expect_from(100);
        // 100 and 101 lost; 102 is the first to arrive.
        p.on_received(t0, 102, t0 + ms(500));
        let r = p.poll_nack(t0).unwrap();
        assert_eq!((r.base, r.mask), (100, 0b1));
        // Without the start, nothing before the first arrival is known to be missing.
        let mut q = NackPlanner::new(NackConfig::default());
        q.on_received(t0, 102, t0 + ms(500));
        assert!(q.poll_nack(t0).is_none());
    }

    #[test]
    fn loss_at_the_end_of_the_stream_is_asked_for() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            fec_group: 4,
            ..NackConfig::default()
        });
        p.on_received(t0, 10, t0 + ms(500));
        // 11 and 12 lost, then End says 12 was the last.
        p.on_end(t0, 12, t0 + ms(400));
        let r = p.poll_nack(t0).unwrap();
        assert_eq!((r.base, r.mask), (11, 0b1));
        // Nothing past the end, nothing twice.
        p.on_end(t0, 12, t0 + ms(400));
        assert!(p.poll_nack(t0).is_none());
    }
}
