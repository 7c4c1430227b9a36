//! Pure counting for the load tool beyond what each listener's session counts itself: when each
//! `seq` first and last arrived across all listeners ([`SkewTable`]), and nearest-rank
//! percentiles ([`Quantiles`]). No I/O and no clock: times are passed in as nanoseconds.

use std::collections::HashMap;

use serde::Serialize;

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
