//! The server's clock, estimated from NTP-style exchanges (sans-IO).
//!
//! Each exchange gives four instants in microseconds: `t1` the listener sends a `TimeRequest`
//! (listener clock), `t2` the server receives it and `t3` the server answers (server clock), `t4`
//! the answer arrives (listener clock). The exchange measures the server's clock at the
//! listener's midpoint `(t1 + t4) / 2` to within half its round-trip delay
//! `(t4 − t1) − (t3 − t2)`, and exactly when the two directions take equally long. Queueing only
//! ever adds delay, so the exchanges with the least delay carry the least error: the estimator
//! keeps a window of exchanges, selects the lowest-delay eighth of each sixteenth of it and fits offset *and* rate to
//! them by least squares. A fixed asymmetry between the two directions cannot be observed by
//! any exchange; it shifts the estimate by half the difference.
//!
//! [`ClockEstimator::next_request_at`] says when to exchange: a burst every [`BURST_INTERVAL`]
//! until [`BURST_SAMPLES`] answers arrived (about 80 ms after a join on a clean path, so the
//! playout can start on time on an estimate made of the best of eight), every
//! [`FAST_INTERVAL`] until [`FAST_SAMPLES`], then every [`SLOW_INTERVAL`]. Only answers to requests it was told about are taken
//! ([`ClockEstimator::on_request_sent`]): the answer carries no token, so an echoed `t1` that
//! was never sent is a forgery or a stale duplicate.

use std::collections::VecDeque;

/// Interval between the first exchanges after a join (µs): [`BURST_SAMPLES`] of them fit in
/// the room's default 50 ms playout delay plus a few tens of milliseconds.
pub const BURST_INTERVAL: u64 = 10_000;

/// Answers after which the burst ends: the least delayed of eight is within tens of
/// microseconds of the truth on a LAN, even with a busy scheduler delaying a few.
pub const BURST_SAMPLES: usize = 8;

/// At most this many requests are sent at [`BURST_INTERVAL`], answered or not.
pub const BURST_MAX_SENT: u32 = 24;

/// Interval between exchanges while the estimate forms (µs): 100 ms gives
/// [`FAST_SAMPLES`] exchanges in the first 2 s.
pub const FAST_INTERVAL: u64 = 100_000;

/// Answers after which the estimator slows down to [`SLOW_INTERVAL`].
pub const FAST_SAMPLES: usize = 20;

/// At most this many requests are sent at [`FAST_INTERVAL`], answered or not, so a path that
/// drops answers does not keep the fast rate forever.
pub const FAST_MAX_SENT: u32 = 50;

/// Interval between exchanges once the estimate has formed (µs): four a second keep the
/// lowest-delay selection supplied through bursts of queueing, at 40 bytes each way.
pub const SLOW_INTERVAL: u64 = 250_000;

/// Exchanges kept: at [`SLOW_INTERVAL`], about four minutes, long enough to measure a rate
/// to a fraction of a ppm through milliseconds of jitter.
pub const WINDOW: usize = 2048;

/// Exchanges with more round-trip delay than this (µs) are discarded: they carry less
/// information than they cost in error.
pub const MAX_DELAY: u64 = 1_000_000;

/// The window is cut into this many runs of consecutive exchanges, so the fit sees the whole
/// window even when a burst of queueing covers part of it.
const BINS: usize = 16;

/// From each run the fit takes the lowest-delay `1 / SELECT` (at least one): with 32
/// exchanges a run, the two least delayed.
const SELECT: usize = 8;

/// Weighting floor (µs): exchanges within a few tens of microseconds of the least delay are
/// as good as each other (timestamping and scheduling noise).
const EXCESS_FLOOR: f64 = 250.0;

/// Requests whose answers are still accepted: the last this many sent.
const OUTSTANDING: usize = 16;

/// The rate is fitted only once the selected exchanges span this much listener time (µs);
/// over a shorter span a few microseconds of noise are hundreds of ppm.
const MIN_RATE_SPAN: f64 = 1_000_000.0;

/// Each exchange is a point (listener midpoint, server − listener at it) and its delay.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// `(t1 + t4) / 2` on the listener's clock (µs).
    local: u64,
    /// `(t2 + t3) / 2 − (t1 + t4) / 2` (µs): server minus listener at `local`.
    offset: f64,
    /// `(t4 − t1) − (t3 − t2)` (µs).
    delay: u64,
}

/// The fitted line: `server − listener = offset + slope · (listener − reference)`.
#[derive(Debug, Clone, Copy)]
struct Fit {
    /// Listener instant the line is anchored at (µs): the newest exchange's midpoint.
    reference: u64,
    /// Server minus listener at `reference` (µs).
    offset: f64,
    /// d(server − listener)/d(listener): −1e-6 when the listener runs 1 ppm fast.
    slope: f64,
    /// The slope was fitted (the exchanges span [`MIN_RATE_SPAN`]), not assumed.
    rated: bool,
}

/// Why an exchange was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// `t1` is not the send time of a recent request.
    #[error("t1 {0} answers no request")]
    Unsolicited(u64),
    /// The instants are inconsistent (an answer before its request, or a server that answered
    /// before it received).
    #[error("instants out of order")]
    Disordered,
    /// The round trip took longer than [`MAX_DELAY`].
    #[error("round trip of {0} µs")]
    TooSlow(u64),
}

/// Estimates the server's clock on the listener's clock. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ClockEstimator {
    samples: VecDeque<Sample>,
    outstanding: VecDeque<u64>,
    sent: u32,
    last_sent: Option<u64>,
    answered: usize,
    fit: Option<Fit>,
}

impl ClockEstimator {
    /// An estimator with no exchanges yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// When the next `TimeRequest` is due, on the listener's clock (µs). Before the first
    /// request: 0 (at once).
    pub fn next_request_at(&self) -> u64 {
        let Some(last) = self.last_sent else {
            return 0;
        };
        let burst = self.answered < BURST_SAMPLES && self.sent < BURST_MAX_SENT;
        let fast = self.answered < FAST_SAMPLES && self.sent < FAST_MAX_SENT;
        last + if burst {
            BURST_INTERVAL
        } else if fast {
            FAST_INTERVAL
        } else {
            SLOW_INTERVAL
        }
    }

    /// A `TimeRequest` carrying `t1` was sent (at `t1`).
    pub fn on_request_sent(&mut self, t1: u64) {
        self.sent = self.sent.saturating_add(1);
        self.last_sent = Some(t1);
        if self.outstanding.len() == OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(t1);
    }

    /// Takes one exchange: `t1` sent and `t4` received on the listener's clock, `t2` received
    /// and `t3` sent on the server's (all µs). Returns its round trip on the network (µs,
    /// the server's own time taken out), which also tells loss repair how soon an answer comes.
    pub fn on_sample(&mut self, t1: u64, t2: u64, t3: u64, t4: u64) -> Result<u64, Rejected> {
        let Some(i) = self.outstanding.iter().position(|&t| t == t1) else {
            return Err(Rejected::Unsolicited(t1));
        };
        if t4 < t1 || t3 < t2 {
            return Err(Rejected::Disordered);
        }
        self.outstanding.remove(i);
        // The server's processing time is measured on its clock and the round trip on ours;
        // at ±500 ppm the difference is nanoseconds, so a negative delay is clamped.
        let delay = (t4 - t1).saturating_sub(t3 - t2);
        if delay > MAX_DELAY {
            return Err(Rejected::TooSlow(delay));
        }
        let local2 = u128::from(t1) + u128::from(t4);
        let server2 = u128::from(t2) + u128::from(t3);
        let offset = (server2 as i128 - local2 as i128) as f64 / 2.0;
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            local: (local2 / 2) as u64,
            offset,
            delay,
        });
        self.answered += 1;
        self.refit();
        Ok(delay)
    }

    /// Fits the line to the least delayed exchanges of each part of the window.
    fn refit(&mut self) {
        let Some(newest) = self.samples.back() else {
            return;
        };
        let reference = newest.local;
        // Split the window into BINS runs of consecutive exchanges and take the lowest-delay
        // 1/SELECT of each (at least one): low delay, spread over the whole window.
        let all: Vec<Sample> = self.samples.iter().copied().collect();
        let bin = all.len().div_ceil(BINS);
        let mut chosen = Vec::with_capacity(all.len());
        for run in all.chunks(bin) {
            let mut run = run.to_vec();
            run.sort_by_key(|s| s.delay);
            run.truncate((run.len() / SELECT).max(1));
            chosen.extend(run);
        }
        // Weighted least squares: an exchange's error is at most half its delay above the
        // least, so the weight falls with the square of that excess.
        let least = chosen.iter().map(|s| s.delay).min().unwrap_or(0);
        let w = |s: &Sample| 1.0 / ((s.delay - least) as f64 + EXCESS_FLOOR).powi(2);
        let x = |s: &Sample| (i128::from(s.local) - i128::from(reference)) as f64;
        let sw: f64 = chosen.iter().map(w).sum();
        let mean_x = chosen.iter().map(|s| w(s) * x(s)).sum::<f64>() / sw;
        let mean_y = chosen.iter().map(|s| w(s) * s.offset).sum::<f64>() / sw;
        let (min_x, max_x) = chosen
            .iter()
            .map(x)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let sxx: f64 = chosen.iter().map(|s| w(s) * (x(s) - mean_x).powi(2)).sum();
        let rated = max_x - min_x >= MIN_RATE_SPAN && sxx > 0.0;
        let slope = if rated {
            chosen
                .iter()
                .map(|s| w(s) * (x(s) - mean_x) * (s.offset - mean_y))
                .sum::<f64>()
                / sxx
        } else {
            // Too short a span for a rate: keep the one measured before, if any.
            self.fit.map_or(0.0, |f| f.slope)
        };
        self.fit = Some(Fit {
            reference,
            offset: mean_y - slope * mean_x,
            slope,
            rated: rated || self.fit.is_some_and(|f| f.rated),
        });
    }

    /// Whether at least one exchange has been taken, so the mappings mean something.
    pub fn is_synced(&self) -> bool {
        self.fit.is_some()
    }

    /// Whether the rate has been measured (the exchanges span a second), so
    /// [`Self::drift_ppm`] means something.
    pub fn has_rate(&self) -> bool {
        self.fit.is_some_and(|f| f.rated)
    }

    /// Exchanges taken so far.
    pub fn samples(&self) -> usize {
        self.answered
    }

    /// The listener instant (µs) at which the server's clock reads `server_us`; `None` before
    /// the first exchange.
    pub fn server_to_local(&self, server_us: u64) -> Option<u64> {
        let f = self.fit?;
        // server = local + offset + slope·(local − ref)  ⇒  local − ref = (server − ref − offset)/(1 + slope)
        let d = (i128::from(server_us) - i128::from(f.reference)) as f64;
        let local = f.reference as f64 + (d - f.offset) / (1.0 + f.slope);
        Some(local.round().max(0.0) as u64)
    }

    /// The server's clock (µs) at listener instant `local_us`; `None` before the first
    /// exchange.
    pub fn local_to_server(&self, local_us: u64) -> Option<u64> {
        let f = self.fit?;
        let d = (i128::from(local_us) - i128::from(f.reference)) as f64;
        let server = local_us as f64 + f.offset + f.slope * d;
        Some(server.round().max(0.0) as u64)
    }

    /// Listener minus server (µs) at the newest exchange, as a `Report` carries it; 0 before the
    /// first.
    pub fn offset_us(&self) -> i64 {
        self.fit.map_or(0, |f| (-f.offset).round() as i64)
    }

    /// How fast the listener's clock runs against the server's, in parts per million (listener
    /// fast: positive); 0 until the exchanges span a second.
    pub fn drift_ppm(&self) -> f64 {
        self.fit
            .map_or(0.0, |f| (1.0 / (1.0 + f.slope) - 1.0) * 1e6)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// splitmix64: a deterministic stream of draws without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The server's clock is true time (µs, from an arbitrary epoch); the listener's runs
    /// `ppm` fast and `offset` ahead.
    #[derive(Clone, Copy)]
    struct Clocks {
        offset_us: f64,
        ppm: f64,
    }
    const EPOCH: f64 = 50_000_000_000.0;
    impl Clocks {
        fn local(&self, t: f64) -> f64 {
            EPOCH + t * (1.0 + self.ppm * 1e-6) + self.offset_us
        }
        fn true_of_local(&self, l: f64) -> f64 {
            (l - EPOCH - self.offset_us) / (1.0 + self.ppm * 1e-6)
        }
    }

    /// One-way delays: a fixed base each way plus uniform jitter up to `jitter` each way (µs).
    #[derive(Clone, Copy)]
    struct Path {
        up: f64,
        down: f64,
        jitter_up: f64,
        jitter_down: f64,
        loss: f64,
    }

    /// Runs exchanges on the estimator's own schedule for `secs` of true time; returns the
    /// true time at the end.
    fn run(
        est: &mut ClockEstimator,
        c: Clocks,
        p: Path,
        rng: &mut Rng,
        from: f64,
        secs: f64,
    ) -> f64 {
        let mut t = from;
        loop {
            let due = est.next_request_at() as f64;
            let t_send = c.true_of_local(due).max(t);
            if t_send > from + secs * 1e6 {
                return from + secs * 1e6;
            }
            let t1 = c.local(t_send).round() as u64;
            est.on_request_sent(t1);
            t = t_send;
            let up = p.up + p.jitter_up * rng.unit();
            let down = p.down + p.jitter_down * rng.unit();
            let lost = rng.unit() < p.loss;
            if lost {
                continue;
            }
            let t2 = (t_send + up).round() as u64;
            let t3 = t2 + 20;
            let t4 = c.local(t3 as f64 + down).round() as u64;
            est.on_sample(t1, t2, t3, t4).unwrap();
        }
    }

    /// Worst mapping error (µs) over server instants around true time `t`.
    fn mapping_error(est: &ClockEstimator, c: Clocks, t: f64) -> f64 {
        (-5..=5)
            .map(|k| {
                let s = t + f64::from(k) * 1e6;
                let got = est.server_to_local(s.round() as u64).unwrap() as f64;
                (got - c.local(s)).abs()
            })
            .fold(0.0, f64::max)
    }

    const CLEAN: Path = Path {
        up: 200.0,
        down: 200.0,
        jitter_up: 0.0,
        jitter_down: 0.0,
        loss: 0.0,
    };

    #[test]
    fn clean_path_finds_offset_and_drift_at_the_extremes() {
        for (offset_s, ppm) in [
            (10.0, 500.0),
            (-10.0, -500.0),
            (10.0, -500.0),
            (-10.0, 500.0),
            (0.0, 0.0),
        ] {
            let c = Clocks {
                offset_us: offset_s * 1e6,
                ppm,
            };
            let mut est = ClockEstimator::new();
            let mut rng = Rng(1);
            let t = run(&mut est, c, CLEAN, &mut rng, 1e9, 30.0);
            assert!(
                (est.drift_ppm() - ppm).abs() < 0.1,
                "{offset_s} s {ppm} ppm: {}",
                est.drift_ppm()
            );
            let err = mapping_error(&est, c, t);
            assert!(err < 5.0, "{offset_s} s {ppm} ppm: mapping error {err} µs");
            let off = est.offset_us() as f64;
            let truth = c.local(t) - t;
            assert!(
                (off - truth).abs() < 1e3 * 1.0,
                "offset {off} against {truth}"
            );
        }
    }

    #[test]
    fn jittery_asymmetric_lossy_path_converges_within_2_ppm_and_a_tenth_of_a_millisecond() {
        // Jitter up to 1 ms downstream and 0.5 ms upstream on 1 ms each way, 1 % loss; measured
        // every 10 s for ten minutes after the first minute.
        let path = Path {
            up: 1_000.0,
            down: 1_000.0,
            jitter_up: 500.0,
            jitter_down: 1_000.0,
            loss: 0.01,
        };
        for (seed, (offset_s, ppm)) in [(7.3, 480.0), (-9.9, -350.0), (2.0, 120.0), (-0.5, -499.0)]
            .into_iter()
            .enumerate()
        {
            let c = Clocks {
                offset_us: offset_s * 1e6,
                ppm,
            };
            let mut est = ClockEstimator::new();
            let mut rng = Rng(seed as u64 + 11);
            let mut t = run(&mut est, c, path, &mut rng, 5e8, 60.0);
            let mut worst_ppm: f64 = 0.0;
            let mut worst_map: f64 = 0.0;
            for _ in 0..60 {
                t = run(&mut est, c, path, &mut rng, t, 10.0);
                worst_ppm = worst_ppm.max((est.drift_ppm() - ppm).abs());
                worst_map = worst_map.max(mapping_error(&est, c, t));
            }
            assert!(worst_ppm < 2.0, "seed {seed}: drift off by {worst_ppm} ppm");
            assert!(
                worst_map < 100.0,
                "seed {seed}: mapping off by {worst_map} µs"
            );
        }
    }

    #[test]
    fn heavy_one_sided_jitter_still_finds_the_rate() {
        // Answers queued up to 5 ms: the rate stays within 2 ppm once the window spans two
        // minutes, the mapping within 0.4 ms.
        let path = Path {
            up: 1_000.0,
            down: 1_000.0,
            jitter_up: 1_000.0,
            jitter_down: 5_000.0,
            loss: 0.01,
        };
        let c = Clocks {
            offset_us: -4e6,
            ppm: 250.0,
        };
        let mut est = ClockEstimator::new();
        let mut rng = Rng(99);
        let mut t = run(&mut est, c, path, &mut rng, 5e8, 120.0);
        let (mut worst_ppm, mut worst_map) = (0.0f64, 0.0f64);
        for _ in 0..60 {
            t = run(&mut est, c, path, &mut rng, t, 10.0);
            worst_ppm = worst_ppm.max((est.drift_ppm() - c.ppm).abs());
            worst_map = worst_map.max(mapping_error(&est, c, t));
        }
        assert!(worst_ppm < 2.0, "drift off by {worst_ppm} ppm");
        assert!(worst_map < 400.0, "mapping off by {worst_map} µs");
    }

    #[test]
    fn fixed_asymmetry_shifts_the_estimate_by_half_of_it() {
        let c = Clocks {
            offset_us: 3e6,
            ppm: 0.0,
        };
        let path = Path {
            up: 500.0,
            down: 2_500.0,
            ..CLEAN
        };
        let mut est = ClockEstimator::new();
        let t = run(&mut est, c, path, &mut Rng(3), 1e9, 20.0);
        let got = est.server_to_local(t as u64).unwrap() as f64;
        // The answer took 1 ms longer than the midpoint assumes: the server seems 1 ms behind.
        let shift = got - c.local(t);
        assert!((shift - 1_000.0).abs() < 2.0, "shift {shift} µs");
    }

    #[test]
    fn schedule_is_fast_then_slow() {
        let c = Clocks {
            offset_us: 0.0,
            ppm: 0.0,
        };
        let mut est = ClockEstimator::new();
        assert_eq!(est.next_request_at(), 0);
        let mut sends = Vec::new();
        let mut t = 1e9;
        let mut rng = Rng(5);
        for _ in 0..30 {
            let due = est.next_request_at();
            t = run(
                &mut est,
                c,
                CLEAN,
                &mut rng,
                t,
                (due as f64 - c.local(t)).max(0.0) / 1e6 + 0.001,
            );
            sends.push(est.last_sent.unwrap());
        }
        let gaps: Vec<u64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
        // sends[k] is the request after the k-th answer (one each on a clean path).
        assert!(
            gaps[..BURST_SAMPLES - 1]
                .iter()
                .all(|&g| g == BURST_INTERVAL),
            "{gaps:?}"
        );
        assert!(
            gaps[BURST_SAMPLES..FAST_SAMPLES - 2]
                .iter()
                .all(|&g| g == FAST_INTERVAL),
            "{gaps:?}"
        );
        assert!(
            gaps[FAST_SAMPLES..].iter().all(|&g| g == SLOW_INTERVAL),
            "{gaps:?}"
        );
    }

    #[test]
    fn an_unanswered_path_stops_asking_fast() {
        let mut est = ClockEstimator::new();
        let mut t1 = 1_000_000;
        for k in 1..FAST_MAX_SENT {
            est.on_request_sent(t1);
            let gap = if k < BURST_MAX_SENT {
                BURST_INTERVAL
            } else {
                FAST_INTERVAL
            };
            assert_eq!(est.next_request_at(), t1 + gap);
            t1 += gap;
        }
        est.on_request_sent(t1);
        assert_eq!(est.next_request_at(), t1 + SLOW_INTERVAL);
    }

    #[test]
    fn forged_stale_and_disordered_answers_are_rejected() {
        let mut est = ClockEstimator::new();
        assert_eq!(
            est.on_sample(10, 20, 30, 40),
            Err(Rejected::Unsolicited(10))
        );
        est.on_request_sent(1_000);
        assert_eq!(est.on_sample(1_000, 5, 4, 2_000), Err(Rejected::Disordered));
        assert_eq!(est.on_sample(1_000, 5, 6, 900), Err(Rejected::Disordered));
        assert_eq!(
            est.on_sample(1_000, 5, 6, 1_000 + MAX_DELAY + 2),
            Err(Rejected::TooSlow(MAX_DELAY + 1))
        );
        assert!(!est.is_synced());
        est.on_request_sent(3_000);
        assert_eq!(est.on_sample(3_000, 10_100, 10_110, 3_210), Ok(200));
        // Each answer is taken once.
        assert_eq!(
            est.on_sample(3_000, 10_100, 10_110, 3_210),
            Err(Rejected::Unsolicited(3_000))
        );
        assert!(est.is_synced());
        assert_eq!(est.offset_us(), -7_000);
        assert_eq!(est.server_to_local(10_105), Some(3_105));
        assert_eq!(est.local_to_server(3_105), Some(10_105));
        // Only the last OUTSTANDING requests are remembered.
        for k in 0..=OUTSTANDING as u64 {
            est.on_request_sent(100_000 + k);
        }
        assert_eq!(
            est.on_sample(100_000, 1, 1, 100_001),
            Err(Rejected::Unsolicited(100_000))
        );
    }
}
