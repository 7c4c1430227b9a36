//! The listener's half of repair in one place: every datagram that reaches the jitter buffer
//! goes through [`Receiver`], which rebuilds lost ones from parity, plans Nacks, and hands each
//! seq to playout exactly once, saying where it came from.
//!
//! The network statistics stay the caller's (`lost` is what the network lost): a datagram
//! rebuilt or resent is counted here as recovered, never as received.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::fec::{FecDecoder, FecParams, ParityRejected, Recovered};
use crate::retransmit::{NackConfig, NackPlanner, NackRequest};

/// Seqs remembered as delivered behind the newest: far more than any playout delay holds.
pub const DELIVERED_WINDOW: u64 = 8192;

/// Where a delivered datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The original Audio.
    Network,
    /// Rebuilt from parity.
    Fec,
    /// A `Resent` answering a Nack.
    Retransmit,
}

/// One datagram for the jitter buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Audio seq.
    pub seq: u64,
    /// Frame index.
    pub ts: u64,
    /// Codec payload.
    pub payload: Vec<u8>,
    /// How it arrived.
    pub origin: Origin,
}

/// Counters for `--stats-json` and the Report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Datagrams delivered rebuilt from parity.
    pub recovered_fec: u64,
    /// Datagrams delivered from a `Resent`.
    pub recovered_retransmit: u64,
    /// Parity shards ignored as malformed or foreign.
    pub parity_rejected: u64,
    /// Nack requests produced.
    pub nacks: u64,
}

/// The listener side of repair for one stream.
pub struct Receiver {
    fec: Option<FecDecoder>,
    nack: Option<NackPlanner>,
    delivered: BTreeSet<u64>,
    stats: ReceiverStats,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("fec", &self.fec.as_ref().map(FecDecoder::params))
            .field("retransmit", &self.nack.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Receiver {
    /// Repairs with the server's announced `fec` shape, and asks for resends when `retransmit`
    /// (with FEC, only for seqs their group's parity did not rebuild).
    pub fn new(fec: Option<FecParams>, retransmit: bool, mut nack: NackConfig) -> Self {
        if let Some(f) = fec {
            nack.fec_group = f.k();
        }
        Receiver {
            fec: fec.map(FecDecoder::new),
            nack: retransmit.then(|| NackPlanner::new(nack)),
            delivered: BTreeSet::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The Nack planner, when retransmission is on (its round-trip estimate, its counters).
    pub fn planner(&self) -> Option<&NackPlanner> {
        self.nack.as_ref()
    }

    /// The stream starts at `seq` (the `Welcome`'s `start_seq`): datagrams lost before the
    /// first to arrive are asked for too.
    pub fn expect_from(&mut self, seq: u64) {
        if let Some(n) = self.nack.as_mut() {
            n.expect_from(seq);
        }
    }

    /// The stream ended at `last_seq` (`End.last_seq`): datagrams lost after the last to
    /// arrive are asked for too, in time for `deadline` (the first of them's).
    pub fn on_end(&mut self, now: Instant, last_seq: u64, deadline: Instant) {
        if let Some(n) = self.nack.as_mut() {
            n.on_end(now, last_seq, deadline);
        }
    }

    /// Whether playout runs (see [`NackPlanner::set_playing`]).
    pub fn set_playing(&mut self, playing: bool) {
        if let Some(n) = self.nack.as_mut() {
            n.set_playing(playing);
        }
    }

    /// Feeds a round-trip sample to the Nack planner (the handshake's, for one).
    pub fn on_rtt_sample(&mut self, rtt: std::time::Duration) {
        if let Some(n) = self.nack.as_mut() {
            n.on_rtt_sample(rtt);
        }
    }

    fn deliver(
        &mut self,
        seq: u64,
        ts: u64,
        payload: Vec<u8>,
        origin: Origin,
        out: &mut Vec<Delivery>,
    ) {
        let newest = self.delivered.last().copied().unwrap_or(0).max(seq);
        if seq + DELIVERED_WINDOW <= newest || !self.delivered.insert(seq) {
            return;
        }
        while let Some(&first) = self.delivered.first() {
            if first + DELIVERED_WINDOW > newest {
                break;
            }
            self.delivered.pop_first();
        }
        match origin {
            Origin::Network => {}
            Origin::Fec => self.stats.recovered_fec += 1,
            Origin::Retransmit => self.stats.recovered_retransmit += 1,
        }
        out.push(Delivery {
            seq,
            ts,
            payload,
            origin,
        });
    }

    fn deliver_recovered(&mut self, now: Instant, rec: Vec<Recovered>, out: &mut Vec<Delivery>) {
        for r in rec {
            if let Some(n) = self.nack.as_mut() {
                n.on_repaired(now, r.seq, false);
            }
            self.deliver(r.seq, r.ts, r.payload, Origin::Fec, out);
        }
    }

    /// An original Audio that arrived at `now`, whose audio must be in the buffer by
    /// `deadline`. Appends to `out` what reaches playout (it, unless already rebuilt or resent,
    /// and whatever it completes).
    pub fn on_audio(
        &mut self,
        now: Instant,
        seq: u64,
        ts: u64,
        payload: &[u8],
        deadline: Instant,
        out: &mut Vec<Delivery>,
    ) {
        if let Some(n) = self.nack.as_mut() {
            n.on_received(now, seq, deadline);
        }
        let rec = match self.fec.as_mut() {
            Some(f) => f.on_audio(seq, ts, payload),
            None => Vec::new(),
        };
        self.deliver(seq, ts, payload.to_vec(), Origin::Network, out);
        self.deliver_recovered(now, rec, out);
    }

    /// A `Resent` that arrived at `now`.
    pub fn on_resent(
        &mut self,
        now: Instant,
        seq: u64,
        ts: u64,
        payload: &[u8],
        out: &mut Vec<Delivery>,
    ) {
        if let Some(n) = self.nack.as_mut() {
            n.on_repaired(now, seq, true);
        }
        let rec = match self.fec.as_mut() {
            Some(f) => f.on_audio(seq, ts, payload),
            None => Vec::new(),
        };
        self.deliver(seq, ts, payload.to_vec(), Origin::Retransmit, out);
        self.deliver_recovered(now, rec, out);
    }

    /// A `Parity` that arrived at `now`. Without FEC announced, or when malformed, it is
    /// counted and ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn on_parity(
        &mut self,
        now: Instant,
        group_seq: u64,
        k: u8,
        m: u8,
        index: u8,
        shard: &[u8],
        out: &mut Vec<Delivery>,
    ) -> Result<(), ParityRejected> {
        let Some(f) = self.fec.as_mut() else {
            self.stats.parity_rejected += 1;
            return Err(ParityRejected::Shape);
        };
        match f.on_parity(group_seq, k, m, index, shard) {
            Ok(rec) => {
                self.deliver_recovered(now, rec, out);
                Ok(())
            }
            Err(e) => {
                self.stats.parity_rejected += 1;
                Err(e)
            }
        }
    }

    /// The next Nack to send at `now`; call until `None`.
    pub fn poll_nack(&mut self, now: Instant) -> Option<NackRequest> {
        let r = self.nack.as_mut()?.poll_nack(now);
        if r.is_some() {
            self.stats.nacks += 1;
        }
        r
    }

    /// When `poll_nack` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nack.as_ref()?.poll_timeout()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fec::FecEncoder;
    use std::time::Duration;

    #[test]
    fn each_seq_reaches_playout_once_with_its_origin() {
        let t0 = Instant::now();
        let params = FecParams::new(4, 1).unwrap();
        let mut enc = FecEncoder::new(params);
        let mut parity = Vec::new();
        let payload = |seq: u64| vec![seq as u8; 20];
        for seq in 0..4 {
            parity.extend(enc.push(seq, seq * 10, &payload(seq)));
        }
        let nack = NackConfig {
            detect_overdue: false,
            ..NackConfig::default()
        };
        let mut r = Receiver::new(Some(params), true, nack);
        let dl = t0 + Duration::from_secs(1);
        let mut out = Vec::new();
        r.on_audio(t0, 0, 0, &payload(0), dl, &mut out);
        r.on_audio(t0, 2, 20, &payload(2), dl, &mut out);
        // 1 is missing, but its group's parity may still come.
        assert_eq!(r.poll_nack(t0), None);
        // The next group begins (this group's parity is late): 1 and 3 are asked for.
        r.on_audio(t0, 4, 40, &payload(4), dl, &mut out);
        assert_eq!(
            r.poll_nack(t0),
            Some(NackRequest {
                base: 1,
                mask: 0b10
            })
        );
        r.on_resent(t0, 1, 10, &payload(1), &mut out);
        // The parity rebuilds 3 before its Resent comes.
        let p = &parity[0];
        r.on_parity(t0, p.group_seq, p.k, p.m, p.index, &p.shard, &mut out)
            .unwrap();
        // The original 1 arrives late: not delivered twice.
        r.on_audio(t0, 1, 10, &payload(1), dl, &mut out);
        let got: Vec<(u64, Origin)> = out.iter().map(|d| (d.seq, d.origin)).collect();
        assert_eq!(
            got,
            vec![
                (0, Origin::Network),
                (2, Origin::Network),
                (4, Origin::Network),
                (1, Origin::Retransmit),
                (3, Origin::Fec)
            ]
        );
        assert_eq!(out[4].payload, payload(3));
        assert_eq!(r.stats().recovered_fec, 1);
        assert_eq!(r.stats().recovered_retransmit, 1);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn parity_without_fec_is_rejected() {
        let mut r = Receiver::new(None, false, NackConfig::default());
        let mut out = Vec::new();
        assert!(
            r.on_parity(Instant::now(), 0, 4, 1, 0, &[0; 12], &mut out)
                .is_err()
        );
        assert_eq!(r.stats().parity_rejected, 1);
        assert_eq!(r.poll_nack(Instant::now()), None);
    }
}
