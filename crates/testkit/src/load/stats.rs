//! Pure counting for the load tool: which audio `seq`s one listener got ([`SeqTracker`]), when
//! each `seq` first and last arrived across all listeners ([`SkewTable`]), and nearest-rank
//! percentiles ([`Quantiles`]). No I/O and no clock: times are passed in as nanoseconds.

use std::collections::HashMap;

use serde::Serialize;

/// What [`SeqTracker::record`] made of one audio datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First copy of a seq inside the window: counts as received.
    New,
    /// A seq already received.
    Duplicate,
    /// A seq below the listener's `start_seq` (sent before it joined): ignored.
    BeforeStart,
    /// A seq too far above `start_seq` to track (a broken or hostile server): ignored.
    OutOfWindow,
}

/// The audio datagrams one listener received, as a bitmap over `start_seq ..
/// start_seq + window`.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// `StreamInfo.start_seq`: the first seq this listener should get.
    start: u64,
    /// Largest `seq - start` tracked: bounds the bitmap whatever the server sends.
    window: u64,
    /// Bit `i` set: `start + i` received.
    bits: Vec<u64>,
    /// Unique seqs received.
    received: u64,
    /// Copies of seqs already received.
    duplicates: u64,
    /// Datagrams whose seq was below the highest already received.
    out_of_order: u64,
    /// Datagrams ignored as [`Recorded::BeforeStart`] or [`Recorded::OutOfWindow`].
    ignored: u64,
    /// Highest seq received.
    highest: Option<u64>,
}

impl SeqTracker {
    /// A tracker for a listener whose stream starts at `start_seq`, tracking at most `window`
    /// seqs from there.
    pub fn new(start_seq: u64, window: u64) -> Self {
        Self {
            start: start_seq,
            window,
            bits: Vec::new(),
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            ignored: 0,
            highest: None,
        }
    }

    /// Counts one audio datagram.
    pub fn record(&mut self, seq: u64) -> Recorded {
        let Some(off) = seq.checked_sub(self.start) else {
            self.ignored += 1;
            return Recorded::BeforeStart;
        };
        if off >= self.window {
            self.ignored += 1;
            return Recorded::OutOfWindow;
        }
        let (word, bit) = ((off / 64) as usize, off % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Recorded::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        self.received += 1;
        match self.highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest = Some(seq),
        }
        Recorded::New
    }

    /// The first seq this listener should get.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Highest seq received, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Unique seqs received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Copies of seqs already received.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Datagrams that came after a higher seq.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Datagrams outside the tracked range.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Datagrams expected from `start_seq` up to the highest of: the highest seq received, and
    /// `last` (the `End.last_seq`, or the cutoff seq of a run stopped by the tool).
    pub fn expected(&self, last: Option<u64>) -> u64 {
        let top = match (self.highest, last) {
            (Some(h), Some(l)) => h.max(l),
            (h, l) => match h.or(l) {
                Some(t) => t,
                None => return 0,
            },
        };
        // Capped at the window: seqs past it were never counted either way.
        (top.saturating_sub(self.start) + 1).min(self.window) * u64::from(top >= self.start)
    }

    /// `expected(last) - received`.
    pub fn lost(&self, last: Option<u64>) -> u64 {
        self.expected(last).saturating_sub(self.received)
    }
}

/// First and last arrival of each seq across listeners, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct SkewTable {
    /// seq → (first arrival, last arrival, listeners that got it).
    seqs: HashMap<u64, (i64, i64, u32)>,
}

impl SkewTable {
    /// Notes that one listener got `seq` at `t_ns`.
    pub fn record(&mut self, seq: u64, t_ns: i64) {
        let e = self.seqs.entry(seq).or_insert((t_ns, t_ns, 0));
        e.0 = e.0.min(t_ns);
        e.1 = e.1.max(t_ns);
        e.2 += 1;
    }

    /// Folds in another table (e.g. another worker thread's).
    pub fn merge(&mut self, other: &SkewTable) {
        for (&seq, &(first, last, n)) in &other.seqs {
            let e = self.seqs.entry(seq).or_insert((first, last, 0));
            e.0 = e.0.min(first);
            e.1 = e.1.max(last);
            e.2 += n;
        }
    }

    /// Last minus first arrival, in milliseconds, of every seq that at least two listeners got
    /// (a seq seen once has no spread to measure).
    pub fn skews_ms(&self) -> Vec<f64> {
        self.seqs
            .values()
            .filter(|e| e.2 >= 2)
            .map(|&(first, last, _)| (last - first) as f64 / 1e6)
            .collect()
    }
}

/// p50, p99 and max of a sample, nearest-rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Quantiles {
    /// The quantiles of `values` (sorted in place); all zero for an empty sample.
    pub fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            count: values.len() as u64,
            p50: percentile(values, 50.0),
            p99: percentile(values, 99.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

/// Nearest-rank percentile `p` (0–100) of an ascending slice: the smallest value with at least
/// `p`% of the sample at or below it. 0.0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let mut w = vec![3.0, 1.0, 2.0, 10.0];
        let q = Quantiles::of(&mut w);
        assert_eq!((q.count, q.p50, q.p99, q.max), (4, 2.0, 10.0, 10.0));
    }

    #[test]
    fn tracker_counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::new(100, 1000);
        for s in [100, 101, 103, 102, 103, 99, 5000] {
            t.record(s);
        }
        assert_eq!(t.received(), 4);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.out_of_order(), 1);
        assert_eq!(t.ignored(), 2);
        assert_eq!(t.highest(), Some(103));
        assert_eq!(t.expected(None), 4);
        // Loss at the tail shows once the end seq is known.
        assert_eq!(t.expected(Some(105)), 6);
        assert_eq!(t.lost(Some(105)), 2);
        // A cutoff below what was received does not shrink the count.
        assert_eq!(t.lost(Some(101)), 0);
    }

    #[test]
    fn tracker_with_nothing_received() {
        let t = SeqTracker::new(10, 100);
        assert_eq!(t.expected(None), 0);
        assert_eq!(t.expected(Some(9)), 0);
        assert_eq!(t.expected(Some(12)), 3);
        assert_eq!(t.lost(Some(12)), 3);
    }

    #[test]
    fn skew_is_last_minus_first_across_listeners() {
        let mut a = SkewTable::default();
        let mut b = SkewTable::default();
        a.record(1, 1_000_000);
        a.record(1, 1_500_000);
        b.record(1, 3_000_000); // seq 1: 1.0 ms .. 3.0 ms → 2 ms
        a.record(2, 10_000_000); // seq 2 seen once: no skew
        b.record(3, 5_000_000);
        b.record(3, 5_250_000); // seq 3: 0.25 ms
        a.merge(&b);
        let mut s = a.skews_ms();
        s.sort_by(f64::total_cmp);
        assert_eq!(s, vec![0.25, 2.0]);
        let q = Quantiles::of(&mut s);
        assert_eq!((q.p50, q.max), (0.25, 2.0));
    }
}
