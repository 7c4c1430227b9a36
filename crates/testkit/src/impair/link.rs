//! One direction of one client: turns the engine's decisions into a release schedule.
//!
//! Sans-IO in the quinn style: [`ImpairedLink::handle`] takes `(now, datagram)`,
//! [`ImpairedLink::poll_transmit`] hands out what may leave at `now`,
//! [`ImpairedLink::poll_timeout`] says when to ask again.
//!
//! Release rules, in order of precedence:
//! 1. A dropped datagram never leaves.
//! 2. A forwarded datagram becomes due at `arrival + delay`; due datagrams leave in order of
//!    due time, ties in arrival order. Jitter larger than the gap between datagrams therefore
//!    reorders them, as on a real network.
//! 3. A duplicated datagram's copy leaves immediately after the original.
//! 4. A held-back (reordered) datagram leaves right after the next later-arrived datagram of
//!    the link leaves (and its copy), but never before its own due time; if no later datagram
//!    leaves within [`REORDER_MAX_HOLD`] of its due time, it leaves then, in place.
//! 5. A datagram that is not impaired (control, by default; repair traffic, `Parity` and
//!    `Resent`, is media and impaired like `Audio`) is never delayed by the engine, but
//!    it does not overtake anything that arrived before it: it becomes due when the last
//!    earlier datagram is due, and any held-back datagram is released just before it. So the
//!    `End` after the last audio still arrives after it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Impairment;
use super::engine::{Decision, Engine};

/// Longest a held-back datagram waits for a successor past its due time: a few server ticks,
/// so a hold-back at a pause or at the end of the stream still leaves while a listener's
/// jitter buffer could use it.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(100);

/// Wire type codes of the repair traffic (`Parity`, `Resent`): media like `Audio`, so the
/// engine impairs them too, but the report's seq-by-seq account stays `Audio` only (a
/// `Resent` carries an audio seq that must not count as received).
pub const REPAIR_TYPES: [u8; 2] = [32, 34];

/// Whether `datagram` is repair traffic: the magic, then a type of [`REPAIR_TYPES`] (the
/// header's fourth byte), whatever the version.
pub fn is_repair(datagram: &[u8]) -> bool {
    datagram.len() >= proto::limits::HEADER_LEN
        && datagram[..2] == proto::MAGIC
        && REPAIR_TYPES.contains(&datagram[3])
}

/// A datagram the link lets go: the shell sends `bytes` and reports the result back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The datagram, byte for byte as it arrived.
    pub bytes: Bytes,
    /// Its `seq` if it decoded as `Audio`: what the report tracks.
    pub audio_seq: Option<u64>,
    /// True for the extra copy of a duplicated datagram.
    pub copy: bool,
}

/// What [`ImpairedLink::handle`] did with a datagram, for the tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Treatment {
    /// Whether the engine was consulted (false: passed through untouched).
    pub impaired: bool,
    /// The engine's decision (all default when not impaired).
    pub decision: Decision,
}

/// A datagram waiting to leave.
#[derive(Debug)]
struct Entry {
    /// Arrival order on this link: the tie-breaker and the reorder reference.
    order: u64,
    /// The datagram.
    bytes: Bytes,
    /// Its audio seq, if any.
    audio_seq: Option<u64>,
    /// Whether a copy follows it.
    duplicate: bool,
}

/// A held-back datagram.
#[derive(Debug)]
struct Held {
    /// Earliest it may leave (arrival + delay).
    due: Instant,
    /// When it leaves even without a successor.
    deadline: Instant,
    /// The datagram.
    entry: Entry,
}

/// One client's one direction: engine plus schedule.
#[derive(Debug)]
pub struct ImpairedLink {
    /// Decisions for impaired datagrams.
    engine: Engine,
    /// Impair control datagrams too.
    impair_control: bool,
    /// Next arrival order number.
    next_order: u64,
    /// Scheduled datagrams keyed by (due time, arrival order).
    queue: BTreeMap<(Instant, u64), Entry>,
    /// Held-back datagrams waiting for a successor, in arrival order.
    held: Vec<Held>,
    /// Duplicate copies that leave next, before anything else.
    ready: VecDeque<Transmit>,
    /// Latest due time ever scheduled: where a control datagram queues up.
    latest: Option<Instant>,
    /// Last `now` seen, for [`ImpairedLink::poll_timeout`] when copies are ready.
    last_now: Option<Instant>,
}

impl ImpairedLink {
    /// A link impaired as `imp` says; `stream` separates the engines of different clients.
    pub fn new(imp: &Impairment, stream: u64) -> Self {
        Self {
            engine: Engine::new(imp, stream),
            impair_control: imp.impair_control,
            next_order: 0,
            queue: BTreeMap::new(),
            held: Vec::new(),
            ready: VecDeque::new(),
            latest: None,
            last_now: None,
        }
    }

    /// Takes in one datagram that arrived at `now`; `audio_seq` is its seq if it is `Audio`.
    pub fn handle(&mut self, now: Instant, bytes: Bytes, audio_seq: Option<u64>) -> Treatment {
        self.last_now = Some(now);
        let order = self.next_order;
        self.next_order += 1;
        let impaired = self.impair_control || audio_seq.is_some() || is_repair(&bytes);
        let decision = if impaired {
            self.engine.decide()
        } else {
            Decision::default()
        };
        if decision.drop {
            return Treatment { impaired, decision };
        }
        let entry = Entry {
            order,
            bytes,
            audio_seq,
            duplicate: decision.duplicate,
        };
        if !impaired {
            // Rule 5: queue up behind everything earlier, releasing held-back datagrams first.
            let held_due = self.held.iter().map(|h| h.due).max();
            let at = [Some(now), self.latest, held_due]
                .into_iter()
                .flatten()
                .max();
            let at = at.unwrap_or(now);
            for h in std::mem::take(&mut self.held) {
                self.schedule(at, h.entry);
            }
            self.schedule(at, entry);
            return Treatment { impaired, decision };
        }
        let due = now + decision.delay;
        if decision.hold {
            self.held.push(Held {
                due,
                deadline: due + REORDER_MAX_HOLD,
                entry,
            });
        } else {
            self.schedule(due, entry);
        }
        Treatment { impaired, decision }
    }

    /// The one way into the queue, so `latest` really is the latest due time.
    fn schedule(&mut self, at: Instant, entry: Entry) {
        self.latest = Some(self.latest.map_or(at, |l| l.max(at)));
        self.queue.insert((at, entry.order), entry);
    }

    /// The next datagram that may leave at `now`, if any. Call until `None` after every
    /// `handle` and timeout; send in the order given.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.ready.pop_front() {
            return Some(t);
        }
        // Rule 4, fallback: held-back datagrams past their deadline leave in place.
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].deadline <= now {
                let h = self.held.remove(i);
                self.schedule(h.deadline, h.entry);
            } else {
                i += 1;
            }
        }
        let (&(at, _), _) = self.queue.first_key_value()?;
        if at > now {
            return None;
        }
        let (_, e) = self.queue.pop_first()?;
        // Rule 4: everything held back before `e` arrived leaves right after it.
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].entry.order < e.order {
                let h = self.held.remove(i);
                self.schedule(at.max(h.due), h.entry);
            } else {
                i += 1;
            }
        }
        if e.duplicate {
            self.ready.push_back(Transmit {
                bytes: e.bytes.clone(),
                audio_seq: e.audio_seq,
                copy: true,
            });
        }
        Some(Transmit {
            bytes: e.bytes,
            audio_seq: e.audio_seq,
            copy: false,
        })
    }

    /// When [`ImpairedLink::poll_transmit`] may next return something; `None` if nothing is
    /// waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return self.last_now;
        }
        let q = self.queue.first_key_value().map(|(&(at, _), _)| at);
        let h = self.held.iter().map(|h| h.deadline).min();
        match (q, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Datagrams waiting to leave (copies included).
    pub fn pending(&self) -> usize {
        self.queue.len()
            + self.held.len()
            + self.ready.len()
            + self
                .queue
                .values()
                .chain(self.held.iter().map(|h| &h.entry))
                .filter(|e| e.duplicate)
                .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn b(x: u8) -> Bytes {
        Bytes::from(vec![x])
    }

    fn drain(l: &mut ImpairedLink, now: Instant) -> Vec<(u8, bool)> {
        std::iter::from_fn(|| l.poll_transmit(now))
            .map(|t| (t.bytes[0], t.copy))
            .collect()
    }

    #[test]
    fn transparent_link_is_fifo_and_immediate() {
        let mut l = ImpairedLink::new(&Impairment::none(), 0);
        let t0 = Instant::now();
        for i in 0..10 {
            l.handle(t0, b(i), Some(u64::from(i)));
        }
        let out = drain(&mut l, t0);
        assert_eq!(out, (0..10).map(|i| (i, false)).collect::<Vec<_>>());
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn hold_back_swaps_with_the_next_and_copies_follow() {
        let all_hold = Impairment {
            reorder: 1.0,
            ..Impairment::none()
        };
        let mut l = ImpairedLink::new(&all_hold, 0);
        let t0 = Instant::now();
        l.handle(t0, b(0), Some(0));
        assert_eq!(drain(&mut l, t0), vec![], "held until a successor leaves");
        assert_eq!(l.poll_timeout(), Some(t0 + REORDER_MAX_HOLD));
        assert_eq!(drain(&mut l, t0 + REORDER_MAX_HOLD), vec![(0, false)]);

        let dup = Impairment {
            dup: 1.0,
            ..Impairment::none()
        };
        let mut l = ImpairedLink::new(&dup, 0);
        l.handle(t0, b(1), Some(1));
        l.handle(t0, b(2), Some(2));
        assert_eq!(l.pending(), 4);
        assert_eq!(
            drain(&mut l, t0),
            vec![(1, false), (1, true), (2, false), (2, true)]
        );
    }

    #[test]
    fn control_waits_for_earlier_audio_but_is_never_delayed_itself() {
        let jit = Impairment {
            jitter: Duration::from_millis(30),
            seed: 1,
            ..Impairment::none()
        };
        let mut l = ImpairedLink::new(&jit, 0);
        let t0 = Instant::now();
        l.handle(t0, b(0), Some(0));
        l.handle(t0, b(9), None);
        let due = l.poll_timeout().unwrap();
        assert!(due > t0 && due <= t0 + Duration::from_millis(30));
        assert_eq!(drain(&mut l, t0), vec![]);
        assert_eq!(drain(&mut l, due), vec![(0, false), (9, false)]);
        // With nothing queued a control datagram leaves at once.
        l.handle(due, b(8), None);
        assert_eq!(drain(&mut l, due), vec![(8, false)]);
    }

    #[test]
    fn repair_traffic_is_impaired_like_audio_but_not_counted_as_audio() {
        let all_drop = Impairment {
            loss: 1.0,
            ..Impairment::none()
        };
        let mut l = ImpairedLink::new(&all_drop, 0);
        let t0 = Instant::now();
        let header = |ty: u8| {
            let mut d = vec![b'E', b'S', 2, ty];
            d.extend_from_slice(&7u64.to_le_bytes());
            d.extend_from_slice(&[0; 20]);
            Bytes::from(d)
        };
        for ty in REPAIR_TYPES {
            assert!(is_repair(&header(ty)));
            assert!(l.handle(t0, header(ty), None).decision.drop);
        }
        // Control (End = 9) and foreign bytes pass untouched.
        assert!(!is_repair(&header(9)));
        assert!(!is_repair(b"XS\x02\x20aaaaaaaa"));
        assert!(!is_repair(&[b'E', b'S', 2, 32]));
        assert!(!l.handle(t0, header(9), None).decision.drop);
        assert_eq!(drain(&mut l, t0).len(), 1);
    }

    /// Random traffic, random impairments, random polling: nothing is lost or invented, a
    /// copy always follows its original, and unimpaired datagrams never overtake earlier ones.
    #[test]
    fn conservation_and_control_order_under_random_schedules() {
        use rand_chacha::ChaCha8Rng;
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        for seed in 0..60u64 {
            let mut r = ChaCha8Rng::seed_from_u64(1000 + seed);
            let pct = |r: &mut ChaCha8Rng, max: u64| (r.next_u64() % (max + 1)) as f64 / 100.0;
            let imp = Impairment {
                loss: pct(&mut r, 30),
                burst: (r.next_u64() % 2 == 0).then_some(1.0 + pct(&mut r, 400)),
                jitter: Duration::from_micros(r.next_u64() % 40_000),
                reorder: pct(&mut r, 50),
                dup: pct(&mut r, 50),
                seed,
                impair_control: r.next_u64() % 4 == 0,
            };
            let mut l = ImpairedLink::new(&imp, seed);
            let t0 = Instant::now();
            let mut now = t0;
            let mut out: Vec<Transmit> = Vec::new();
            let mut kept = Vec::new(); // (id, duplicated, is_control)
            for id in 0..400u64 {
                now += Duration::from_micros(r.next_u64() % 8_000);
                let control = r.next_u64() % 10 == 0;
                let seq = (!control).then_some(id);
                let mut bytes = id.to_le_bytes().to_vec();
                bytes.push(u8::from(control));
                let h = l.handle(now, Bytes::from(bytes), seq);
                if !h.decision.drop {
                    kept.push((id, h.decision.duplicate, control));
                }
                if r.next_u64() % 3 == 0 {
                    out.extend(std::iter::from_fn(|| l.poll_transmit(now)));
                }
            }
            let end = now + Duration::from_secs(3600);
            out.extend(std::iter::from_fn(|| l.poll_transmit(end)));
            assert_eq!(l.pending(), 0);
            let id = |t: &Transmit| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&t.bytes[..8]);
                u64::from_le_bytes(b)
            };
            let want = kept.len() + kept.iter().filter(|k| k.1).count();
            assert_eq!(out.len(), want, "seed {seed}");
            for (i, t) in out.iter().enumerate() {
                if t.copy {
                    assert!(i > 0 && id(&out[i - 1]) == id(t) && !out[i - 1].copy);
                }
            }
            let pos: std::collections::HashMap<u64, usize> = out
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.copy)
                .map(|(i, t)| (id(t), i))
                .collect();
            assert_eq!(
                pos.len(),
                kept.len(),
                "each kept datagram once, seed {seed}"
            );
            if !imp.impair_control {
                for &(c, _, control) in &kept {
                    if control {
                        for &(e, _, _) in kept.iter().filter(|k| k.0 < c) {
                            assert!(pos[&e] < pos[&c], "seed {seed}: {c} overtook {e}");
                        }
                    }
                }
            }
        }
    }
}
