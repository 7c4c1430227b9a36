//! Keeps a sink's playout in step with the room's schedule (sans-IO).
//!
//! The caller measures the playout error: how many frames the frame leaving the device now is
//! behind the frame the schedule says is due now (positive: late). [`DriftControl`] answers
//! with a rate correction, a proportional-integral servo bounded to ±[`MAX_CORRECTION_PPM`]
//! (0.1 %): the integral learns the device's drift against the server's clock, the
//! proportional term removes what is left. A correction is applied by consuming one stream
//! frame more (late) or less (early) than the device plays, single frames spread evenly
//! through each chunk ([`DriftControl::plan`] and [`stretch`]): at 0.1 % at most one frame in
//! a thousand, inaudible on music.
//!
//! The servo starts only when the error leaves a dead band of [`DEAD_BAND_US`] (a sound card:
//! [`DEVICE_DEAD_BAND_US`]), and stops
//! again once the error is back near zero with no drift learned, so a device that keeps the
//! server's pace (a clean path, no skew) never slips a frame and its output stays
//! sample-exact; a drifting device is tracked to zero error. Past [`RESYNC_US`] the servo gives up on smoothness: it skips the frames it is
//! late by or waits (plays silence) for those it is early by, and counts a resync.

/// The largest rate correction (ppm): one frame in a thousand is not heard on music, and it
/// covers any crystal (±100 ppm is typical, ±500 the worst sold) on both ends.
pub const MAX_CORRECTION_PPM: f64 = 1_000.0;

/// The servo starts correcting when the error exceeds this (µs), and then tracks it to zero:
/// below it is the clock estimate's noise (tens of microseconds on an idle LAN, a few hundred
/// on a busy machine relaying through a user-space proxy), which must not cost a clean,
/// unskewed listener its sample-exact output. A listener 100 ppm off leaves it 3 s after its
/// start and is tracked to zero from then on.
pub const DEAD_BAND_US: f64 = 300.0;

/// The dead band for a sound card (µs): its output instant is measured from the callback's
/// timestamps, which wander by a few hundred microseconds between callbacks, so a narrower
/// band would slip frames on noise and cost a clean card its sample-exact output.
pub const DEVICE_DEAD_BAND_US: f64 = 500.0;

/// A tracking servo stops when the error is below this (µs) and ...
const SETTLED_US: f64 = 10.0;

/// ... the drift it learned is below this (ppm): the device keeps the server's pace.
const SETTLED_PPM: f64 = 0.5;

/// Errors beyond this (µs) are removed at once by skipping or waiting, counted as a resync.
pub const RESYNC_US: f64 = 50_000.0;

/// Proportional gain (1/s): an error is worked off with a time constant of half a second.
const KP: f64 = 2.0;

/// Integral gain (1/s²): `KP² / 4`, the critically damped loop (no overshoot).
const KI: f64 = KP * KP / 4.0;

/// A hard correction the caller must apply before playing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Drop this many stream frames: the device is that far behind the schedule.
    Skip(u64),
    /// Play this many frames of silence before the stream: the device is that far ahead.
    Wait(u64),
}

/// The servo. See the module docs.
#[derive(Debug, Clone)]
pub struct DriftControl {
    rate: u32,
    /// Integral term: the learned rate difference (fraction; positive: consume faster).
    integral: f64,
    /// The correction in force (fraction), bounded.
    correction: f64,
    /// Fractional frames owed: consumed beyond (positive) or short of (negative) what was played.
    owed: f64,
    resyncs: u64,
    slipped: i64,
    /// Correcting: the error left the dead band and the device has not proved to keep pace.
    tracking: bool,
    /// [`DEAD_BAND_US`] or [`DEVICE_DEAD_BAND_US`].
    dead_band_us: f64,
}

impl DriftControl {
    /// A servo for a stream of `rate` frames per second.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            integral: 0.0,
            correction: 0.0,
            owed: 0.0,
            resyncs: 0,
            slipped: 0,
            tracking: false,
            dead_band_us: DEAD_BAND_US,
        }
    }

    /// Sets the dead band (µs): [`DEVICE_DEAD_BAND_US`] for a sound card.
    pub fn set_dead_band(&mut self, us: f64) {
        self.dead_band_us = us;
    }

    /// Removes an error of `late_frames` at once (skip or wait) and counts a resync.
    pub fn realign(&mut self, late_frames: f64) -> Resync {
        self.resyncs += 1;
        self.owed = 0.0;
        let n = late_frames.abs().round() as u64;
        if late_frames > 0.0 {
            Resync::Skip(n)
        } else {
            Resync::Wait(n)
        }
    }

    /// Takes one measurement: the device is `late_frames` behind the schedule (negative:
    /// ahead), `elapsed_frames` frames after the previous measurement; `device_ppm` is how
    /// fast the device runs against the server's clock when that is known (a device on the
    /// listener's clock runs at the clock's measured drift): tracking then starts with it as
    /// the learned rate instead of learning it from the error. Returns the hard correction to
    /// apply, if the error is past [`RESYNC_US`].
    pub fn update(
        &mut self,
        late_frames: f64,
        elapsed_frames: u64,
        device_ppm: Option<f64>,
    ) -> Option<Resync> {
        let rate = f64::from(self.rate);
        let err = late_frames / rate; // seconds
        if err.abs() * 1e6 > RESYNC_US {
            return Some(self.realign(late_frames));
        }
        let us = err.abs() * 1e6;
        let max = MAX_CORRECTION_PPM * 1e-6;
        if !self.tracking && us > self.dead_band_us {
            self.tracking = true;
            if let Some(ppm) = device_ppm {
                // A device fast against the server must consume the stream slower.
                self.integral = (-ppm * 1e-6).clamp(-max, max);
            }
        } else if self.tracking && us < SETTLED_US && self.integral.abs() * 1e6 < SETTLED_PPM {
            // Back on schedule with nothing to compensate: stop correcting altogether.
            self.tracking = false;
            self.integral = 0.0;
        }
        if !self.tracking {
            self.correction = 0.0;
            return None;
        }
        let dt = elapsed_frames as f64 / rate;
        self.integral = (self.integral + KI * err * dt).clamp(-max, max);
        self.correction = (self.integral + KP * err).clamp(-max, max);
        None
    }

    /// How many stream frames to take for the device's next `out_frames`: `out_frames`
    /// corrected by the rate in force, in whole frames (the remainder is carried).
    pub fn plan(&mut self, out_frames: usize) -> usize {
        self.owed += out_frames as f64 * self.correction;
        let whole = self.owed.trunc();
        self.owed -= whole;
        let whole = whole as i64;
        self.slipped += whole;
        (out_frames as i64 + whole).max(0) as usize
    }

    /// The rate correction in force (ppm; positive: the stream is consumed faster than the
    /// device plays, because the device is slow against the server).
    pub fn correction_ppm(&self) -> f64 {
        self.correction * 1e6
    }

    /// The rate difference the servo has learned (ppm, the integral term; positive: the
    /// device is slow against the server): what it corrects once the error is worked off.
    pub fn learned_ppm(&self) -> f64 {
        self.integral * 1e6
    }

    /// Hard corrections so far.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Net frames consumed beyond those played by the rate correction (negative: repeated).
    pub fn slipped(&self) -> i64 {
        self.slipped
    }
}

/// Fits `input` (interleaved, `channels` per frame) into `out` (the device's frames) by nearest
/// frame: when they hold as many frames it copies; when `input` holds k frames more or fewer,
/// k frames evenly spread are dropped or repeated.
pub fn stretch(input: &[i16], channels: usize, out: &mut [i16]) {
    let ch = channels.max(1);
    let n_in = input.len() / ch;
    let n_out = out.len() / ch;
    if n_in == n_out {
        out.copy_from_slice(&input[..n_out * ch]);
        return;
    }
    if n_in == 0 {
        out.fill(0);
        return;
    }
    for j in 0..n_out {
        // Centre-aligned nearest frame: slips land mid-chunk, never at the joins.
        let i = ((2 * j + 1) * n_in / (2 * n_out)).min(n_in - 1);
        out[j * ch..(j + 1) * ch].copy_from_slice(&input[i * ch..(i + 1) * ch]);
    }
}

/// Playout errors in 10 µs buckets up to [`RESYNC_US`], for the 99th percentile a `Report`
/// (since the last) and the final statistics (the whole run) carry.
#[derive(Debug, Clone)]
pub struct ErrorHistogram {
    buckets: Vec<u64>,
    count: u64,
}

/// Width of one histogram bucket (µs).
const BUCKET_US: f64 = 10.0;

impl Default for ErrorHistogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; (RESYNC_US / BUCKET_US) as usize + 1],
            count: 0,
        }
    }
}

impl ErrorHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one error of `us` (either sign).
    pub fn record(&mut self, us: f64) {
        let i = ((us.abs() / BUCKET_US) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    /// Errors counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The 99th percentile of |error| (µs, the upper edge of its bucket); 0 when empty.
    pub fn p99_us(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let want = (self.count * 99).div_ceil(100);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return (i + 1) as f64 * BUCKET_US;
            }
        }
        RESYNC_US
    }

    /// Forgets every error (a new report period).
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RATE: u32 = 48_000;

    /// A device playing `ppm` fast against the server, fed in chunks of 480 frames; returns
    /// (final error in µs, worst |error| µs after `settle` seconds, the servo).
    fn simulate(
        ppm: f64,
        secs: f64,
        settle: f64,
        start_error_frames: f64,
    ) -> (f64, f64, DriftControl) {
        let mut d = DriftControl::new(RATE);
        let chunk = 480usize;
        let mut played = 0u64; // device frames
        let mut pos = -start_error_frames; // stream frame at the device's output
        let mut worst: f64 = 0.0;
        let mut last = 0.0;
        while (played as f64) < secs * f64::from(RATE) {
            // The schedule runs on the server's clock: after `played` device frames, the
            // server has seen played / (1 + ppm) frames' worth of time.
            let due = played as f64 / (1.0 + ppm * 1e-6);
            let late = due - pos;
            if let Some(r) = d.update(late, chunk as u64, None) {
                match r {
                    Resync::Skip(n) => pos += n as f64,
                    Resync::Wait(n) => played += n,
                }
            }
            let t = played as f64 / f64::from(RATE);
            last = late / f64::from(RATE) * 1e6;
            if t > settle {
                worst = worst.max(last.abs());
            }
            pos += d.plan(chunk) as f64;
            played += chunk as u64;
        }
        (last, worst, d)
    }

    #[test]
    fn no_skew_never_slips_a_frame() {
        let (_, worst, d) = simulate(0.0, 600.0, 0.0, 0.0);
        assert_eq!(d.slipped(), 0);
        assert_eq!(d.resyncs(), 0);
        assert_eq!(d.correction_ppm(), 0.0);
        assert_eq!(worst, 0.0);
    }

    #[test]
    fn noise_inside_the_dead_band_never_slips_a_frame() {
        let mut d = DriftControl::new(RATE);
        for k in 0..100_000u64 {
            // ±290 µs of measurement noise.
            let noise = (((k * 7919) % 59) as f64 - 29.0) * 10.0;
            assert_eq!(d.update(noise * 1e-6 * f64::from(RATE), 480, None), None);
            assert_eq!(d.plan(480), 480);
        }
        assert_eq!(d.slipped(), 0);
    }

    #[test]
    fn drift_up_to_500_ppm_is_followed_to_within_a_frame() {
        for ppm in [-500.0, -200.0, -37.0, 120.0, 200.0, 500.0] {
            let (_, worst, d) = simulate(ppm, 600.0, 60.0, 0.0);
            assert!(worst < 30.0, "{ppm} ppm: error up to {worst} µs");
            assert_eq!(d.resyncs(), 0);
            // The servo consumes faster when the device is slow (negative ppm).
            let expect = -ppm / (1.0 + ppm * 1e-6);
            assert!(
                (d.learned_ppm() - expect).abs() < 5.0,
                "{ppm} ppm: learned {}",
                d.learned_ppm()
            );
            // Over ten minutes the slips add up to the drift (~ppm × 28.8 M frames).
            let frames = 600.0 * f64::from(RATE);
            let want = expect * 1e-6 * frames;
            assert!(
                (d.slipped() as f64 - want).abs() < 0.01 * want.abs() + 50.0,
                "{ppm}: slipped {}",
                d.slipped()
            );
        }
    }

    #[test]
    fn a_start_error_within_the_limit_is_worked_off_smoothly() {
        // 20 ms late at the start: no resync, converges.
        let (last, _, d) = simulate(150.0, 120.0, 0.0, 0.020 * f64::from(RATE));
        assert_eq!(d.resyncs(), 0);
        assert!(last.abs() < DEAD_BAND_US + 20.0, "error {last} µs");
    }

    #[test]
    fn past_50_ms_the_servo_skips_or_waits_once() {
        let (last, _, d) = simulate(0.0, 10.0, 0.0, 0.080 * f64::from(RATE));
        assert_eq!(d.resyncs(), 1);
        assert!(last.abs() < 1.0, "error {last} µs");
        let (last, _, d) = simulate(0.0, 10.0, 0.0, -0.080 * f64::from(RATE));
        assert_eq!(d.resyncs(), 1);
        assert!(last.abs() < 1.0, "error {last} µs");
        let mut d = DriftControl::new(RATE);
        assert_eq!(d.update(2_401.0, 480, None), Some(Resync::Skip(2_401)));
        assert_eq!(d.update(-2_401.0, 480, None), Some(Resync::Wait(2_401)));
        assert_eq!(d.update(2_399.0, 480, None), None);
        assert_eq!(d.resyncs(), 2);
    }

    #[test]
    fn a_drift_beyond_the_bound_is_resynced_not_chased_faster() {
        // 2,000 ppm: the correction saturates at 1,000 ppm; the rest piles up to a resync
        // every 50 s or so.
        let (_, _, d) = simulate(2_000.0, 200.0, 0.0, 0.0);
        assert!((d.correction_ppm().abs() - MAX_CORRECTION_PPM).abs() < 1e-6);
        assert!((2..=5).contains(&d.resyncs()), "{} resyncs", d.resyncs());
    }

    #[test]
    fn stretch_copies_drops_and_repeats_single_frames() {
        let input: Vec<i16> = (0..20).collect(); // 10 stereo frames: (0,1) (2,3) ...
        let mut out = vec![0; 20];
        stretch(&input, 2, &mut out);
        assert_eq!(out, input);
        let mut out = vec![0; 18];
        stretch(&input, 2, &mut out);
        let frames: Vec<i16> = out.chunks(2).map(|f| f[0] / 2).collect();
        assert_eq!(frames.len(), 9);
        assert!(
            frames
                .windows(2)
                .all(|w| w[1] == w[0] + 1 || w[1] == w[0] + 2)
        );
        assert_eq!(frames.windows(2).filter(|w| w[1] == w[0] + 2).count(), 1);
        assert!(
            out.chunks(2).all(|f| f[1] == f[0] + 1),
            "channels stay paired"
        );
        let mut out = vec![0; 22];
        stretch(&input, 2, &mut out);
        let frames: Vec<i16> = out.chunks(2).map(|f| f[0] / 2).collect();
        assert_eq!(frames.first(), Some(&0));
        assert_eq!(frames.last(), Some(&9));
        assert_eq!(frames.windows(2).filter(|w| w[1] == w[0]).count(), 1);
        assert!(frames.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
    }

    #[test]
    fn histogram_p99() {
        let mut h = ErrorHistogram::new();
        assert_eq!(h.p99_us(), 0.0);
        for _ in 0..990 {
            h.record(5.0);
        }
        for _ in 0..10 {
            h.record(-1_234.0);
        }
        assert_eq!(h.p99_us(), 10.0);
        h.record(-1_234.0);
        assert_eq!(h.p99_us(), 1_240.0);
        h.record(1e9);
        assert_eq!(h.count(), 1_002);
        h.clear();
        assert_eq!(h.p99_us(), 0.0);
    }
}
