//! One direction of one listener's simulated network path: scripted drops, a cut, an
//! [`ImpairedLink`] (loss, bursts, jitter, reordering, duplication, counted by the proxy's own
//! [`Tally`]) and then a fixed one-way delay. A datagram leaves the link at `t` and arrives at
//! `t + delay`; the delay is the same for every datagram, so it never reorders.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::MessageType;
use proto::limits::HEADER_LEN;

use crate::impair::{DirectionReport, ImpairedLink, Impairment, Tally};

/// The type and seq of a datagram, read from its header alone (the room's senders are the
/// cores, which only send valid datagrams; anything else reads as `None`).
pub(crate) fn peek(d: &[u8]) -> Option<(MessageType, u64)> {
    if d.len() < HEADER_LEN || d[..2] != proto::MAGIC || d[2] != proto::VERSION {
        return None;
    }
    let t = MessageType::from_u8(d[3])?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&d[4..12]);
    Some((t, u64::from_le_bytes(seq)))
}

/// What one direction of a path did, as the network saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    /// The impairment link's account, by the proxy's rules ([`crate::impair::report`]): what
    /// it was given, dropped, held back, duplicated and let go, in the order it let go.
    pub link: DirectionReport,
    /// The fixed one-way delay after the link.
    pub delay: Duration,
    /// Datagrams dropped by a scripted rule ([`super::ListenerSpec::drop_down`] /
    /// [`super::ListenerSpec::drop_up`]) before reaching the link.
    pub scripted_drops: u64,
    /// Datagrams dropped because the path was cut ([`super::ListenerSpec::cut_uplink_at`]).
    pub cut: u64,
    /// Datagrams that arrived at the far end.
    pub arrived: u64,
    /// Datagrams still inside the link or on the wire.
    pub in_flight: u64,
}

/// One direction of a path.
#[derive(Debug)]
pub(crate) struct Path {
    link: ImpairedLink,
    tally: Tally,
    delay: Duration,
    /// Left the link, arriving at the instant given; FIFO since the delay is constant.
    wire: VecDeque<(Instant, Bytes)>,
    /// Drop the n-th (from 0) datagram of a type.
    rules: Vec<(MessageType, u64)>,
    /// Datagrams of each type code seen so far (for the rules).
    by_type: [u64; 16],
    scripted_drops: u64,
    cut: bool,
    cut_count: u64,
    arrived: u64,
}

impl Path {
    /// A path impaired as `imp` says (engine stream `stream`), then delayed by `delay`, with
    /// the scripted drop `rules`.
    pub(crate) fn new(
        imp: &Impairment,
        stream: u64,
        delay: Duration,
        rules: Vec<(MessageType, u64)>,
    ) -> Self {
        Self {
            link: ImpairedLink::new(imp, stream),
            tally: Tally::default(),
            delay,
            wire: VecDeque::new(),
            rules,
            by_type: [0; 16],
            scripted_drops: 0,
            cut: false,
            cut_count: 0,
            arrived: 0,
        }
    }

    /// From now on nothing gets through (what was sent before still arrives).
    pub(crate) fn cut(&mut self) {
        self.cut = true;
    }

    /// A datagram enters the path at `now`.
    pub(crate) fn send(&mut self, now: Instant, bytes: Bytes) {
        let head = peek(&bytes);
        if let Some((t, _)) = head {
            let k = &mut self.by_type[usize::from(t as u8) & 15];
            let nth = *k;
            *k += 1;
            if self.rules.contains(&(t, nth)) {
                self.scripted_drops += 1;
                return;
            }
        }
        if self.cut {
            self.cut_count += 1;
            return;
        }
        let audio_seq = head.and_then(|(t, s)| (t == MessageType::Audio).then_some(s));
        let treatment = self.link.handle(now, bytes, audio_seq);
        self.tally.on_handled(audio_seq, &treatment);
    }

    /// Moves what the link lets go at `now` onto the wire.
    pub(crate) fn release(&mut self, now: Instant) {
        while let Some(t) = self.link.poll_transmit(now) {
            self.tally.on_sent(&t, true);
            self.wire.push_back((now + self.delay, t.bytes));
        }
    }

    /// The next datagram arriving at the far end by `now`.
    pub(crate) fn arrival(&mut self, now: Instant) -> Option<Bytes> {
        match self.wire.front() {
            Some(&(at, _)) if at <= now => {
                self.arrived += 1;
                self.wire.pop_front().map(|(_, b)| b)
            }
            _ => None,
        }
    }

    /// When something next happens on this path: the link lets go, or a datagram arrives.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let wire = self.wire.front().map(|&(at, _)| at);
        match (self.link.poll_timeout(), wire) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when something arrives by `now`.
    pub(crate) fn arriving(&self, now: Instant) -> bool {
        self.wire.front().is_some_and(|&(at, _)| at <= now)
    }

    pub(crate) fn report(&self) -> PathReport {
        PathReport {
            link: self.tally.report().clone(),
            delay: self.delay,
            scripted_drops: self.scripted_drops,
            cut: self.cut_count,
            arrived: self.arrived,
            in_flight: (self.link.pending() + self.wire.len()) as u64,
        }
    }
}

/// The audio datagrams that reached a listener's session while it counted audio (joined, not
/// yet closed), classified in arrival order by the proxy's rules: the network's side of the
/// listener's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Distinct seqs.
    pub unique: u64,
    /// Arrivals of a seq that had already arrived.
    pub duplicates: u64,
    /// First arrivals of a seq lower than one that had already arrived.
    pub out_of_order: u64,
    /// Lowest seq arrived.
    pub lowest: Option<u64>,
    /// Highest seq arrived.
    pub highest: Option<u64>,
    /// Bit per seq (absolute): arrived.
    seen: Vec<u64>,
}

impl Delivered {
    pub(crate) fn on_audio(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & b != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[w] |= b;
        self.unique += 1;
        if self.highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.lowest = Some(self.lowest.map_or(seq, |l| l.min(seq)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leave() -> proto::Message {
        proto::Message::Leave(proto::Leave {
            token: [1; proto::TOKEN_LEN],
            reason: proto::LeaveReason::Done,
        })
    }

    #[test]
    fn peek_reads_type_and_seq() {
        let b = proto::encode_to_bytes(&proto::Packet::new(77, leave())).unwrap();
        assert_eq!(peek(&b), Some((MessageType::Leave, 77)));
        assert_eq!(peek(b"ES"), None);
    }

    #[test]
    fn delay_is_fifo_and_rules_drop_the_nth_of_a_type() {
        let leave = || proto::encode_to_bytes(&proto::Packet::new(1, leave()));
        let mut p = Path::new(
            &Impairment::none(),
            0,
            Duration::from_millis(30),
            vec![(MessageType::Leave, 1)],
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            p.send(t0, leave().unwrap());
        }
        p.release(t0);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(30)));
        assert!(p.arrival(t0).is_none());
        let at = t0 + Duration::from_millis(30);
        assert_eq!(std::iter::from_fn(|| p.arrival(at)).count(), 2);
        let r = p.report();
        assert_eq!((r.scripted_drops, r.arrived, r.in_flight), (1, 2, 0));
    }

    #[test]
    fn delivered_classifies_like_the_proxy() {
        let mut d = Delivered::default();
        for s in [5, 7, 6, 7, 5, 8] {
            d.on_audio(s);
        }
        assert_eq!((d.unique, d.duplicates, d.out_of_order), (4, 2, 1));
        assert_eq!((d.lowest, d.highest), (Some(5), Some(8)));
    }
}
