//! Sample-synchronous playout: every listener of a room plays stream frame `F` at the same
//! instant (sans-IO).
//!
//! The server's `Welcome` pins the stream to its clock (a [`Schedule`]): frame `ts` is due at
//! `server_us`, the others follow at the stream's rate, and every listener plays frame `F`
//! the room's playout delay after it is due. [`SyncedPlayout`] turns that into what the sink
//! gets, each time it asks for audio: it maps the instant at which the next frame will leave
//! the output (the sink's own latency included) to the server's clock through the
//! [`ClockEstimator`], compares the frame due then with the frame the jitter buffer would hand
//! out, and lets the [`DriftControl`] servo decide (slip single frames, or past 50 ms skip or
//! wait). Before the first frame is due it waits; the first write tells the sink the instant
//! it should have started at, which a virtual device honours exactly, so a clean path starts
//! on time to the frame and stays sample-exact.

use std::time::{Duration, Instant};

use crate::clock::ClockEstimator;
use crate::drift::{DriftControl, ErrorHistogram, Resync};
use crate::jitter::{JitterBuffer, duration_of, frames_in};
use crate::sink::{Sink, SinkError};

/// How long to wait before asking again while the clock has no estimate yet (µs).
pub const UNSYNCED_RETRY_US: u64 = 5_000;

/// Clock exchanges taken before the playout starts: the join's burst
/// ([`crate::clock::BURST_SAMPLES`]).
pub const START_SAMPLES: usize = crate::clock::BURST_SAMPLES;

/// Once the estimate has formed ([`crate::clock::FAST_SAMPLES`] exchanges, about 1.3 s after
/// the join), an error beyond this (µs) is removed at once, counted as a resync, instead of
/// being slewed at 0.1 % for seconds: the start was made on a first estimate that the later
/// exchanges proved wrong (a burst of queueing on a busy machine). Above the estimate's
/// noise through Wi-Fi's jitter, where a realignment would be a glitch for nothing.
pub const ALIGN_US: f64 = 5_000.0;

/// The room's timeline on the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// A frame index ...
    pub ts: u64,
    /// ... and the server instant (µs) at which it is due.
    pub server_us: u64,
    /// Frames per second.
    pub rate: u32,
    /// Every listener plays a frame this long after it is due (µs).
    pub playout_delay_us: u64,
}

impl Schedule {
    /// The server instant (µs) at which `frame` leaves every listener's output.
    pub fn play_at(&self, frame: f64) -> f64 {
        self.server_us as f64
            + (frame - self.ts as f64) * 1e6 / f64::from(self.rate.max(1))
            + self.playout_delay_us as f64
    }

    /// The frame (fractional) leaving every output at server instant `server_us`.
    pub fn frame_at(&self, server_us: f64) -> f64 {
        self.ts as f64
            + (server_us - self.server_us as f64 - self.playout_delay_us as f64)
                * f64::from(self.rate.max(1))
                / 1e6
    }
}

/// What to give the sink now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet: the next frame is not due before local instant `until` (µs), or the clock
    /// is not estimated yet.
    Wait {
        /// Ask again at this local instant (µs).
        until: u64,
    },
    /// Play.
    Play {
        /// The first output: the local instant (µs) the device should have started at, so
        /// that the next frame leaves exactly when due (a virtual device honours it).
        start_at: Option<u64>,
        /// Drop this many stream frames first (a resync: the output is that late).
        skip: u64,
        /// Play this many frames of silence first (a resync: the output is that early).
        silence: u64,
        /// Then take this many stream frames and fit them into the device's frames
        /// ([`crate::drift::stretch`]).
        take: usize,
    },
}

/// The playout of one listener against the room's [`Schedule`]. See the module docs.
#[derive(Debug, Clone)]
pub struct SyncedPlayout {
    schedule: Schedule,
    drift: DriftControl,
    started: bool,
    /// The one check against the formed estimate ([`ALIGN_US`]) was made; errors are
    /// recorded from then on.
    aligned: bool,
    /// Device frames planned so far (the servo's time base).
    planned: u64,
    /// Device frames at the last servo update.
    updated_at: u64,
    /// The last measured error (µs, positive: late).
    last_error_us: f64,
    report: ErrorHistogram,
    total: ErrorHistogram,
}

impl SyncedPlayout {
    /// Playout on `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            drift: DriftControl::new(schedule.rate),
            started: false,
            aligned: false,
            planned: 0,
            updated_at: 0,
            last_error_us: 0.0,
            report: ErrorHistogram::new(),
            total: ErrorHistogram::new(),
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// At local instant `now` (µs) the sink wants `out_frames` device frames, the first
    /// leaving the output at local instant `out_at`; `next` is the next stream frame the
    /// jitter buffer hands out. `on_local_clock`: the device plays on the listener's clock
    /// ([`Sink::on_caller_clock`]), so it can start in the past and its rate against the
    /// server's is the clock's measured drift; any other device (a sound card) starts on
    /// time by playing silence up to the first frame's instant.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        clock: &ClockEstimator,
        now: u64,
        out_at: u64,
        next: u64,
        out_frames: usize,
        on_local_clock: bool,
    ) -> Step {
        let Some(server_now) = clock.local_to_server(out_at) else {
            return Step::Wait {
                until: out_at + UNSYNCED_RETRY_US,
            };
        };
        let rate = f64::from(self.schedule.rate.max(1));
        let mut start_at = None;
        if !self.started && clock.samples() < START_SAMPLES {
            // One exchange delayed by a busy machine can put the estimate milliseconds off;
            // the start waits for a few (a late start is skipped up to schedule).
            return Step::Wait {
                until: out_at + UNSYNCED_RETRY_US,
            };
        }
        if !self.started {
            let due = self.schedule.play_at(next as f64);
            let Some(due_local) = clock.server_to_local(due.round().max(0.0) as u64) else {
                return Step::Wait {
                    until: out_at + UNSYNCED_RETRY_US,
                };
            };
            if on_local_clock {
                if due_local > out_at {
                    return Step::Wait { until: due_local };
                }
                // Start on time: the device is told it began when the frame was due.
                self.started = true;
                return self.play(Some(due_local), 0, 0, out_frames);
            }
            self.drift.set_dead_band(crate::drift::DEVICE_DEAD_BAND_US);
            let ahead = due_local.saturating_sub(out_at);
            let ahead_frames = (ahead as f64 * rate / 1e6).round() as u64;
            if ahead_frames > out_frames as u64 {
                // Back when the first frame falls within one write.
                let write_us = (out_frames as f64 * 1e6 / rate) as u64;
                return Step::Wait {
                    until: now + ahead.saturating_sub(write_us),
                };
            }
            self.started = true;
            if ahead_frames > 0 {
                // Silence up to the first frame's instant, then the stream.
                return self.play(None, 0, ahead_frames, out_frames);
            }
            // Late: the device says when it can really start, and the feed skips what it is
            // late by.
            start_at = Some(due_local);
            return self.play(start_at, 0, 0, out_frames);
        }
        let due_frame = self.schedule.frame_at(server_now as f64);
        let late = due_frame - next as f64;
        let late_us = late / rate * 1e6;
        let elapsed = self.planned - self.updated_at;
        self.updated_at = self.planned;
        let resync = if !self.aligned && clock.samples() >= crate::clock::FAST_SAMPLES {
            self.aligned = true;
            (late_us.abs() > ALIGN_US).then(|| self.drift.realign(late))
        } else {
            let device_ppm = (on_local_clock && clock.has_rate()).then(|| clock.drift_ppm());
            self.drift.update(late, elapsed, device_ppm)
        };
        let (skip, silence) = match resync {
            Some(Resync::Skip(n)) => (n, 0),
            Some(Resync::Wait(n)) => (0, n),
            None => {
                if self.aligned {
                    self.record(late_us);
                }
                (0, 0)
            }
        };
        self.play(start_at, skip, silence, out_frames)
    }

    fn play(&mut self, start_at: Option<u64>, skip: u64, silence: u64, out_frames: usize) -> Step {
        let rest = out_frames.saturating_sub(silence as usize);
        let take = self.drift.plan(rest);
        self.planned += out_frames as u64;
        Step::Play {
            start_at,
            skip,
            silence: silence.min(out_frames as u64),
            take,
        }
    }

    fn record(&mut self, us: f64) {
        self.last_error_us = us;
        self.report.record(us);
        self.total.record(us);
    }

    /// The last measured playout error (µs, positive: late).
    pub fn error_us(&self) -> f64 {
        self.last_error_us
    }

    /// p99 of |error| since the last call (µs), for a `Report`; starts a new period.
    pub fn take_report_p99_us(&mut self) -> f64 {
        let p = self.report.p99_us();
        self.report.clear();
        p
    }

    /// p99 of |error| over the whole playout (µs).
    pub fn p99_us(&self) -> f64 {
        self.total.p99_us()
    }

    /// Hard corrections so far.
    pub fn resyncs(&self) -> u64 {
        self.drift.resyncs()
    }

    /// The servo's rate correction in force (ppm).
    pub fn correction_ppm(&self) -> f64 {
        self.drift.correction_ppm()
    }

    /// The device's rate against the server's clock as the servo learned it (ppm; positive:
    /// the device is slow).
    pub fn learned_ppm(&self) -> f64 {
        self.drift.learned_ppm()
    }

    /// Whether the first frame has been played.
    pub fn started(&self) -> bool {
        self.started
    }
}

/// The listener's clock in microseconds, as `TimeRequest` carries it and the
/// [`ClockEstimator`] works in: it reads `base_us` at the instant `at` and runs with the
/// listener's `Instant`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The instant the clock reads `base_us`.
    pub at: Instant,
    /// The clock's reading at `at` (µs). The binary passes the real-time clock (µs since the
    /// Unix epoch, through `--sim-clock-offset`), so the estimated clock offset is the real
    /// difference between the listener's and the server's clocks; a simulation passes 0.
    pub base_us: u64,
}

impl Epoch {
    /// A clock reading `base_us` at `at`.
    pub fn new(at: Instant, base_us: u64) -> Self {
        Self { at, base_us }
    }

    /// The clock's reading (µs) at `t` (`base_us` before `at`).
    pub fn us(&self, t: Instant) -> u64 {
        let since =
            u64::try_from(t.saturating_duration_since(self.at).as_micros()).unwrap_or(u64::MAX);
        self.base_us.saturating_add(since)
    }

    /// The instant the clock reads `us` (`at` for any reading before `base_us`).
    pub fn instant(&self, us: u64) -> Instant {
        self.at + Duration::from_micros(us.saturating_sub(self.base_us))
    }
}

/// What one synchronised feed played: for `--playout-log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// The first stream frame written.
    pub first: u64,
    /// Stream frames written (after any skipped).
    pub frames: u64,
    /// When the first of them leaves the output (the listener's clock).
    pub at: Instant,
}

/// What [`SyncedFeed::feed`] returns: when to feed again at the latest (`None`: the stream
/// has finished) and what was played.
pub type FeedResult = Result<(Option<Instant>, Option<Fed>), SinkError>;

/// Feeds a sink from a jitter buffer on the room's schedule: the synchronised counterpart of
/// `Session::feed`.
#[derive(Debug)]
pub struct SyncedFeed {
    playout: SyncedPlayout,
    epoch: Epoch,
    channels: usize,
    taken: Vec<i16>,
    out: Vec<i16>,
}

impl SyncedFeed {
    /// A feed on `schedule` for `channels`-channel audio, timing in `epoch`'s microseconds.
    pub fn new(schedule: Schedule, channels: u16, epoch: Epoch) -> Self {
        Self {
            playout: SyncedPlayout::new(schedule),
            epoch,
            channels: usize::from(channels.max(1)),
            taken: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The playout and its measurements.
    pub fn playout(&self) -> &SyncedPlayout {
        &self.playout
    }

    /// The playout, mutably (to take a report period's p99).
    pub fn playout_mut(&mut self) -> &mut SyncedPlayout {
        &mut self.playout
    }

    /// Gives `sink` what it asks for at `now`, from `jb`, on schedule. Returns when to feed
    /// again at the latest (`None`: the stream has finished) and what was played.
    pub fn feed(
        &mut self,
        now: Instant,
        clock: &ClockEstimator,
        jb: &mut JitterBuffer,
        sink: &mut dyn Sink,
    ) -> FeedResult {
        if jb.is_finished() {
            return Ok((None, None));
        }
        let want = sink.demand(now);
        if want == 0 {
            return Ok((Some(sink.refill_at(now)), None));
        }
        // Before the start, the device is idle whatever it played before (a sink kept across
        // a rejoin keeps its old position): the first frame can leave now at the earliest.
        let out_at = if self.playout.started() {
            sink.output_at(now)
        } else {
            sink.output_at(now).max(now)
        };
        let on_local_clock = sink.on_caller_clock();
        let (start_at, mut skip, silence, take) = match self.playout.step(
            clock,
            self.epoch.us(now),
            self.epoch.us(out_at),
            jb.position(),
            want,
            on_local_clock,
        ) {
            Step::Wait { until } => {
                return Ok((Some(self.epoch.instant(until).max(now)), None));
            }
            Step::Play {
                start_at,
                skip,
                silence,
                take,
            } => (start_at, skip, silence as usize, take),
        };
        let mut first_out = out_at;
        if let Some(s) = start_at {
            let due = self.epoch.instant(s);
            first_out = sink.start_at(now, due);
            // A device that cannot start in the past starts late: the frames it is late by are
            // skipped, so it starts with the frame due then.
            skip += frames_in(
                first_out.saturating_duration_since(due),
                self.playout.schedule.rate,
            );
        }
        if skip > 0 {
            jb.skip(skip);
        }
        let first = jb.position();
        let ch = self.channels;
        self.taken.clear();
        let got = jb.pull_due(take, &mut self.taken);
        self.out.clear();
        self.out.resize(silence * ch, 0);
        // The stream's last frames are written as they are.
        let n_out = if got == take { want - silence } else { got };
        self.out.resize((silence + n_out) * ch, 0);
        crate::drift::stretch(&self.taken, ch, &mut self.out[silence * ch..]);
        if !self.out.is_empty() {
            sink.write(now, &self.out)?;
        }
        let fed = (got > 0).then(|| Fed {
            first,
            frames: got as u64,
            at: first_out + duration_of(silence as u64, self.playout.schedule.rate),
        });
        let next = (!jb.is_finished()).then(|| sink.refill_at(now));
        Ok((next, fed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RATE: u32 = 48_000;

    /// A listener whose clock is `offset_us` ahead and `ppm` fast, with a virtual device on
    /// that clock, exchanging with the server over a clean 300 µs path every time the
    /// estimator asks. Returns the playout errors measured on true time (µs) after `settle`
    /// seconds, and the playout.
    fn room_of_one(offset_us: f64, ppm: f64, secs: f64, settle: f64) -> (Vec<f64>, SyncedPlayout) {
        let local = |t: f64| 7e9 + offset_us + t * (1.0 + ppm * 1e-6);
        let true_of = |l: f64| (l - 7e9 - offset_us) / (1.0 + ppm * 1e-6);
        // Server: true time + 3e9 µs.
        let server = |t: f64| t + 3e9;
        let schedule = Schedule {
            ts: 1_000,
            server_us: 3e9 as u64 + 500_000,
            rate: RATE,
            playout_delay_us: 50_000,
        };
        let mut sp = SyncedPlayout::new(schedule);
        let mut clock = ClockEstimator::new();
        let mut next: u64 = 1_000; // the jitter buffer's next frame
        // The device: when its next written frame leaves (local µs), None before the start.
        let mut dev_next: Option<f64> = None;
        let chunk = 480usize;
        let mut t = 0.0f64; // true µs
        let mut errors = Vec::new();
        while t < secs * 1e6 {
            // Clock exchanges due by now.
            while (clock.next_request_at() as f64) <= local(t) {
                let t1_true = true_of(clock.next_request_at() as f64).max(0.0);
                let t1 = local(t1_true).round() as u64;
                clock.on_request_sent(t1);
                let t2 = server(t1_true + 150.0).round() as u64;
                let t3 = t2 + 10;
                let t4 = local(t1_true + 310.0).round() as u64;
                clock.on_sample(t1, t2, t3, t4).unwrap();
            }
            let now = local(t);
            // The device asks for audio when 10 ms are left.
            let out_at = dev_next.map_or(now, |d| d.max(now));
            match sp.step(
                &clock,
                now.round() as u64,
                out_at.round() as u64,
                next,
                chunk,
                true,
            ) {
                Step::Wait { until } => {
                    t = true_of(until as f64).max(t + 1.0);
                    continue;
                }
                Step::Play {
                    start_at,
                    skip,
                    silence,
                    take,
                } => {
                    let begin = start_at.map_or(out_at, |s| s as f64);
                    next += skip;
                    // Measure: the frame leaving at `begin + silence` against the one due then.
                    let first_out_local = begin + silence as f64 * 1e6 / f64::from(RATE);
                    let due = schedule.frame_at(server(true_of(first_out_local)));
                    if true_of(first_out_local) > settle * 1e6 {
                        errors.push((due - next as f64) / f64::from(RATE) * 1e6);
                    }
                    next += take as u64;
                    dev_next = Some(begin + chunk as f64 * 1e6 / f64::from(RATE));
                }
            }
            // Wake when the device holds 10 ms.
            t = true_of(dev_next.unwrap() - 10_000.0).max(t + 1.0);
        }
        (errors, sp)
    }

    fn p99(v: &[f64]) -> f64 {
        let mut a: Vec<f64> = v.iter().map(|e| e.abs()).collect();
        a.sort_by(f64::total_cmp);
        a[(a.len() * 99 / 100).min(a.len() - 1)]
    }

    #[test]
    fn a_clean_unskewed_listener_starts_on_time_and_never_slips() {
        let (errors, sp) = room_of_one(2.5e6, 0.0, 60.0, 0.0);
        assert!(sp.started());
        assert_eq!(sp.resyncs(), 0);
        assert_eq!(sp.drift.slipped(), 0);
        assert!(p99(&errors) < 25.0, "p99 {} µs", p99(&errors));
    }

    #[test]
    fn skewed_listeners_play_on_the_server_schedule() {
        for (offset_s, ppm) in [(-9.5, 500.0), (0.4, -120.0), (-0.3, 150.0), (10.0, -500.0)] {
            let (errors, sp) = room_of_one(offset_s * 1e6, ppm, 120.0, 20.0);
            assert_eq!(sp.resyncs(), 0, "{offset_s} s {ppm} ppm");
            let p = p99(&errors);
            assert!(p < 100.0, "{offset_s} s {ppm} ppm: p99 {p} µs");
            // The servo compensates the device's skew.
            assert!(
                (sp.learned_ppm() + ppm).abs() < 5.0,
                "{ppm} ppm: learned {}",
                sp.learned_ppm()
            );
        }
    }

    /// Frame 0 due at server time 1 s, 50 ms playout delay.
    fn one_second_in() -> Schedule {
        Schedule {
            ts: 0,
            server_us: 1_000_000,
            rate: RATE,
            playout_delay_us: 50_000,
        }
    }

    /// [`START_SAMPLES`] exchanges from local `from` µs on, answered at once: the listener's
    /// clock reads the server's plus 1 s, exactly.
    fn one_second_ahead(clock: &mut ClockEstimator, from: u64) {
        for k in 0..START_SAMPLES as u64 {
            let t = from + k;
            clock.on_request_sent(t);
            clock.on_sample(t, t - 1_000_000, t - 1_000_000, t).unwrap();
        }
    }

    #[test]
    fn a_device_that_cannot_start_in_the_past_starts_on_time_behind_silence() {
        let schedule = one_second_in();
        let mut clock = ClockEstimator::new();
        one_second_ahead(&mut clock, 1_900_000);
        let mut sp = SyncedPlayout::new(schedule);
        // Frame 0 plays at local 2.05 s; the device outputs 40 ms after a write, in writes of
        // 480 frames (10 ms): 20 ms early is too early ...
        assert_eq!(
            sp.step(&clock, 1_990_000, 2_030_000, 0, 480, false),
            Step::Wait { until: 2_000_000 }
        );
        // ... 10 ms early, the write is all silence and the next one starts with frame 0.
        assert_eq!(
            sp.step(&clock, 2_000_000, 2_040_000, 0, 480, false),
            Step::Play {
                start_at: None,
                skip: 0,
                silence: 480,
                take: 0
            }
        );
        assert!(sp.started());
        assert_eq!(sp.resyncs(), 0);
    }

    #[test]
    fn waits_until_the_first_frame_is_due_and_resyncs_a_late_start() {
        let schedule = one_second_in();
        let mut clock = ClockEstimator::new();
        let mut sp = SyncedPlayout::new(schedule);
        assert_eq!(
            sp.step(&clock, 10, 10, 0, 480, true),
            Step::Wait {
                until: 10 + UNSYNCED_RETRY_US
            }
        );
        one_second_ahead(&mut clock, 2_000_000 - 2);
        // Frame 0 plays at server 1.05 s = local 2.05 s.
        assert_eq!(
            sp.step(&clock, 2_000_000, 2_000_000, 0, 480, true),
            Step::Wait { until: 2_050_000 }
        );
        assert_eq!(
            sp.step(&clock, 2_050_700, 2_050_700, 0, 480, true),
            Step::Play {
                start_at: Some(2_050_000),
                skip: 0,
                silence: 0,
                take: 480
            }
        );
        // A late start of 60 ms still starts at the due instant: the sink says when it can
        // really start, and the feed skips what it is late by; no resync.
        let mut sp = SyncedPlayout::new(schedule);
        assert_eq!(
            sp.step(&clock, 2_110_000, 2_110_000, 0, 480, true),
            Step::Play {
                start_at: Some(2_050_000),
                skip: 0,
                silence: 0,
                take: 480
            }
        );
        assert_eq!(sp.resyncs(), 0);
    }
}
