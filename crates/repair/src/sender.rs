//! The server's half of repair in one place: parity per group, encoded once for every
//! listener, and answers to Nacks from the history, within each listener's byte budget.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::fec::{FecEncoder, FecParams, ParityShard};
use crate::retransmit::{History, NackRequest, TokenBucket};

/// How much resend a listener may take at once, as time at the stream's byte rate: a burst of
/// a few lost datagrams is answered whole, a flood is held to the stream's own rate.
pub const RESEND_BURST: Duration = Duration::from_millis(250);

/// What a server repairs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Parity groups, or none.
    pub fec: Option<FecParams>,
    /// How far back Nacks are answered; zero turns retransmission off.
    pub retransmit: Duration,
    /// The stream's own bytes per second: each listener's resends never exceed it.
    pub byte_rate: u64,
}

/// Counters for the log and the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Parity shards produced (each sent to every listener).
    pub parity_shards: u64,
    /// Their bytes.
    pub parity_bytes: u64,
    /// Datagrams resent.
    pub resent: u64,
    /// Their payload bytes.
    pub resent_bytes: u64,
    /// Asks refused: over the listener's budget.
    pub over_budget: u64,
    /// Asks for seqs no longer (or never) in the history.
    pub unknown: u64,
}

/// One datagram to resend: the original seq, ts and payload (the same `Bytes` first sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend {
    /// The original audio seq.
    pub seq: u64,
    /// Its frame index.
    pub ts: u64,
    /// Its codec payload.
    pub payload: Bytes,
}

/// The server side of repair, per stream; `L` names a listener (its address).
pub struct Sender<L> {
    config: SenderConfig,
    fec: Option<FecEncoder>,
    history: Option<History>,
    buckets: HashMap<L, TokenBucket>,
    stats: SenderStats,
}

impl<L> std::fmt::Debug for Sender<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("config", &self.config)
            .field("listeners", &self.buckets.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<L: Eq + Hash + Clone> Sender<L> {
    /// Repair as `config` says.
    pub fn new(config: SenderConfig) -> Self {
        Sender {
            fec: config.fec.map(FecEncoder::new),
            history: (!config.retransmit.is_zero()).then(|| History::new(config.retransmit)),
            buckets: HashMap::new(),
            stats: SenderStats::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Records an audio datagram sent at `now`; returns the parity it completes (empty
    /// unless it ends a group).
    pub fn on_audio(
        &mut self,
        now: Instant,
        seq: u64,
        ts: u64,
        payload: &Bytes,
    ) -> Vec<ParityShard> {
        if let Some(h) = self.history.as_mut() {
            h.push(now, seq, ts, payload.clone());
        }
        let Some(enc) = self.fec.as_mut() else {
            return Vec::new();
        };
        let parity = enc.push(seq, ts, payload);
        for p in &parity {
            self.stats.parity_shards += 1;
            self.stats.parity_bytes += p.shard.len() as u64;
        }
        parity
    }

    /// Answers a Nack from a joined listener at `now`: appends to `out` what it may resend,
    /// in seq order, as long as its budget lasts.
    pub fn on_nack(
        &mut self,
        now: Instant,
        listener: &L,
        nack: NackRequest,
        out: &mut Vec<Resend>,
    ) {
        let Some(history) = self.history.as_mut() else {
            return;
        };
        history.expire(now);
        let rate = self.config.byte_rate;
        let burst = (rate as u128 * RESEND_BURST.as_micros() / 1_000_000) as u64;
        let bucket = self
            .buckets
            .entry(listener.clone())
            .or_insert_with(|| TokenBucket::new(now, rate, burst));
        for seq in nack.seqs() {
            let Some((ts, payload)) = history.get(seq) else {
                self.stats.unknown += 1;
                continue;
            };
            if !bucket.try_take(now, payload.len()) {
                self.stats.over_budget += 1;
                continue;
            }
            self.stats.resent += 1;
            self.stats.resent_bytes += payload.len() as u64;
            out.push(Resend {
                seq,
                ts,
                payload: payload.clone(),
            });
        }
    }

    /// Forgets a listener that left or was evicted.
    pub fn forget(&mut self, listener: &L) {
        self.buckets.remove(listener);
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
    fn parity_once_per_group_and_resends_within_budget() {
        let t0 = Instant::now();
        // 100 B datagrams every 10 ms: 10 kB/s.
        let mut s: Sender<u8> = Sender::new(SenderConfig {
            fec: Some(FecParams::new(4, 1).unwrap()),
            retransmit: ms(1000),
            byte_rate: 10_000,
        });
        let mut shards = 0;
        let mut out = Vec::new();
        for seq in 0..500u64 {
            let now = t0 + ms(seq * 10);
            let p = s.on_audio(now, seq, seq * 441, &Bytes::from(vec![1u8; 100]));
            shards += p.len();
            // From 4 s on, a greedy listener asks for 65 held datagrams every 10 ms.
            if seq >= 400 {
                s.on_nack(
                    now,
                    &7,
                    NackRequest {
                        base: seq - 80,
                        mask: u64::MAX,
                    },
                    &mut out,
                );
            }
        }
        assert_eq!(shards, 125);
        assert_eq!(s.stats().parity_bytes, 125 * 110);
        let bytes: usize = out.iter().map(|r| r.payload.len()).sum();
        // At most the burst (250 ms of stream) plus one second at the stream's rate, and the
        // budget is used.
        assert!(bytes <= 2_500 + 10_000, "{bytes}");
        assert!(bytes >= 10_000, "{bytes}");
        assert!(s.stats().over_budget > 0);
        // Another listener has its own budget.
        let mut other = Vec::new();
        s.on_nack(
            t0 + ms(4990),
            &8,
            NackRequest { base: 490, mask: 0 },
            &mut other,
        );
        assert_eq!(other.len(), 1);
        assert_eq!((other[0].seq, other[0].ts), (490, 490 * 441));
        // Out of the history: unknown.
        s.on_nack(
            t0 + ms(4990),
            &8,
            NackRequest { base: 10, mask: 0 },
            &mut other,
        );
        assert_eq!(other.len(), 1);
        assert!(s.stats().unknown >= 1);
    }

    #[test]
    fn off_means_nothing() {
        let t0 = Instant::now();
        let mut s: Sender<u8> = Sender::new(SenderConfig {
            fec: None,
            retransmit: Duration::ZERO,
            byte_rate: 10_000,
        });
        for seq in 0..10 {
            assert!(
                s.on_audio(t0, seq, seq, &Bytes::from_static(b"ab"))
                    .is_empty()
            );
        }
        let mut out = Vec::new();
        s.on_nack(t0, &1, NackRequest { base: 0, mask: 1 }, &mut out);
        assert!(out.is_empty());
    }
}
