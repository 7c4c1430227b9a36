//! A session's share of "one room, one clock" (sans-IO): when to send a `TimeRequest` and what
//! its `t1` is, what to make of a `TimeResponse`, the synchronised feed once the stream's
//! timeline is known, and the numbers a `Report` and the statistics carry.
//!
//! Times on the wire are microseconds of the listener's clock since the session's [`Epoch`];
//! the session passes its `now` (already through `--sim-clock-*` in the shell).

use std::time::{Duration, Instant};

use crate::clock::{ClockEstimator, Rejected};
use crate::jitter::JitterBuffer;
use crate::schedule::{Epoch, FeedResult, Schedule, SyncedFeed};
use crate::sink::Sink;

/// What a `Report` says about synchronisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Listener minus server (µs).
    pub clock_offset_us: i64,
    /// How fast the listener's clock runs against the server's (ppb, listener fast: +).
    pub drift_ppb: i32,
    /// p99 of |playout error| since the last report (µs).
    pub playout_error_us: i32,
    /// Hard resyncs so far.
    pub resyncs: u32,
}

/// How long a synchronised start waits for the first answer to a clock exchange before the
/// listener plays on its own clock instead: a server that answers none (an older or a
/// minimal implementation) still gets a listener that plays.
pub const FIRST_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// A session's clock synchronisation and synchronised playout. See the module docs.
#[derive(Debug)]
pub struct ClockSync {
    epoch: Epoch,
    clock: ClockEstimator,
    feed: Option<SyncedFeed>,
    /// When the timeline was given ([`Self::start`]).
    started_at: Option<Instant>,
    /// No exchange was answered in [`FIRST_ANSWER_TIMEOUT`]: playing unsynchronised.
    abandoned: bool,
    rejected: u64,
}

impl ClockSync {
    /// Synchronisation for a session started at `now`, when the listener's clock read
    /// `clock_base_us` ([`Epoch`]).
    pub fn new(now: Instant, clock_base_us: u64) -> Self {
        Self {
            epoch: Epoch::new(now, clock_base_us),
            clock: ClockEstimator::new(),
            feed: None,
            started_at: None,
            abandoned: false,
            rejected: 0,
        }
    }

    /// The session's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The clock estimate.
    pub fn clock(&self) -> &ClockEstimator {
        &self.clock
    }

    /// When the next `TimeRequest` is due.
    pub fn next_request_at(&self) -> Instant {
        self.epoch.instant(self.clock.next_request_at())
    }

    /// A `TimeRequest` to send at `now`, if one is due: its `t1`.
    pub fn poll_request(&mut self, now: Instant) -> Option<u64> {
        let t1 = self.epoch.us(now);
        if t1 < self.clock.next_request_at() {
            return None;
        }
        self.clock.on_request_sent(t1);
        Some(t1)
    }

    /// A `TimeResponse` arrived at `now` for the request sent at `t1`; the server received it
    /// at `t2` and answered at `t3` (server µs). Returns the exchange's round trip on the
    /// network.
    pub fn on_response(
        &mut self,
        now: Instant,
        t1: u64,
        t2: u64,
        t3: u64,
    ) -> Result<Duration, Rejected> {
        let r = self.clock.on_sample(t1, t2, t3, self.epoch.us(now));
        if r.is_err() {
            self.rejected += 1;
        }
        r.map(Duration::from_micros)
    }

    /// Answers that were not taken (forged, stale, inconsistent).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The stream's timeline is known (the `Welcome`): playout follows `schedule` from now on.
    pub fn start(&mut self, now: Instant, schedule: Schedule, channels: u16) {
        self.feed = Some(SyncedFeed::new(schedule, channels, self.epoch));
        self.started_at = Some(now);
    }

    /// Gives synchronisation up if the server has answered no exchange in
    /// [`FIRST_ANSWER_TIMEOUT`] since [`Self::start`]: the playout then follows the jitter
    /// buffer on this listener's clock. True the one time it happens.
    pub fn give_up_unanswered(&mut self, now: Instant) -> bool {
        let waited = self
            .started_at
            .is_some_and(|t| now.saturating_duration_since(t) >= FIRST_ANSWER_TIMEOUT);
        if self.feed.is_some() && waited && self.clock.samples() == 0 {
            self.feed = None;
            self.abandoned = true;
            return true;
        }
        false
    }

    /// Whether synchronisation was given up ([`Self::give_up_unanswered`]).
    pub fn abandoned(&self) -> bool {
        self.abandoned
    }

    /// The room's schedule this listener plays on, once a timeline was given.
    pub fn schedule(&self) -> Option<Schedule> {
        self.feed.as_ref().map(|f| f.playout().schedule())
    }

    /// Whether playout is synchronised (a timeline was given).
    pub fn is_synchronised(&self) -> bool {
        self.feed.is_some()
    }

    /// Feeds `sink` from `jb` on the schedule ([`SyncedFeed::feed`]); `None` without a
    /// timeline.
    pub fn feed(
        &mut self,
        now: Instant,
        jb: &mut JitterBuffer,
        sink: &mut dyn Sink,
    ) -> Option<FeedResult> {
        let feed = self.feed.as_mut()?;
        Some(feed.feed(now, &self.clock, jb, sink))
    }

    /// The local instant at which the server sent the datagram carrying frame `ts` (it sends
    /// each frame when due): arrival minus this is the transit time, whose variation is the
    /// path's jitter (a clean path reads near zero).
    pub fn sent_at(&self, ts: u64) -> Option<Instant> {
        let feed = self.feed.as_ref()?;
        let s = feed.playout().schedule();
        let due = s.play_at(ts as f64) - s.playout_delay_us as f64;
        let local = self.clock.server_to_local(due.round().max(0.0) as u64)?;
        Some(self.epoch.instant(local))
    }

    /// The numbers for a `Report`; starts a new playout-error period.
    pub fn report(&mut self) -> SyncReport {
        let (p99, resyncs) = match self.feed.as_mut() {
            Some(f) => (f.playout_mut().take_report_p99_us(), f.playout().resyncs()),
            None => (0.0, 0),
        };
        SyncReport {
            clock_offset_us: self.clock.offset_us(),
            drift_ppb: (self.clock.drift_ppm() * 1e3).round() as i32,
            playout_error_us: p99.round() as i32,
            resyncs: u32::try_from(resyncs).unwrap_or(u32::MAX),
        }
    }

    /// For the final statistics: clock offset (ms), drift (ppm), p99 playout error over the
    /// whole run (ms), resyncs.
    pub fn summary(&self) -> (f64, f64, f64, u64) {
        let (p99, resyncs) = self
            .feed
            .as_ref()
            .map_or((0.0, 0), |f| (f.playout().p99_us(), f.playout().resyncs()));
        (
            self.clock.offset_us() as f64 / 1e3,
            self.clock.drift_ppm(),
            p99 / 1e3,
            resyncs,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_follow_the_estimators_schedule_and_answers_feed_it() {
        let t0 = Instant::now();
        let mut s = ClockSync::new(t0, 0);
        let t1 = s.poll_request(t0).unwrap();
        assert_eq!(t1, 0);
        assert_eq!(s.poll_request(t0 + Duration::from_millis(5)), None);
        assert_eq!(s.next_request_at(), t0 + Duration::from_millis(10));
        // The server is 5 s ahead; 200 µs each way.
        s.on_response(t0 + Duration::from_micros(400), t1, 5_000_200, 5_000_200)
            .unwrap();
        assert_eq!(s.clock().offset_us(), -5_000_000);
        // A replayed or forged answer is not taken.
        assert!(
            s.on_response(t0 + Duration::from_millis(1), t1, 1, 1)
                .is_err()
        );
        assert!(
            s.on_response(t0 + Duration::from_millis(1), 777, 1, 1)
                .is_err()
        );
        assert_eq!(s.rejected(), 2);
        let r = s.report();
        assert_eq!(r.clock_offset_us, -5_000_000);
        assert_eq!(r.resyncs, 0);
        assert!(!s.is_synchronised());
        assert_eq!(s.sent_at(0), None);
        s.start(
            t0,
            Schedule {
                ts: 100,
                server_us: 5_010_000,
                rate: 1_000,
                playout_delay_us: 50_000,
            },
            2,
        );
        // Frame 110 was sent at server 5.02 s = local 20 ms.
        assert_eq!(s.sent_at(110), Some(t0 + Duration::from_millis(20)));
        // It was answered: synchronisation is never given up.
        assert!(!s.give_up_unanswered(t0 + Duration::from_secs(5)));
        assert!(s.is_synchronised());
    }

    #[test]
    fn a_server_that_answers_no_exchange_leaves_the_listener_unsynchronised() {
        let t0 = Instant::now();
        let mut s = ClockSync::new(t0, 0);
        let schedule = Schedule {
            ts: 0,
            server_us: 0,
            rate: 48_000,
            playout_delay_us: 50_000,
        };
        s.start(t0, schedule, 2);
        assert!(s.poll_request(t0).is_some());
        assert!(!s.give_up_unanswered(t0 + FIRST_ANSWER_TIMEOUT - Duration::from_millis(1)));
        assert!(s.is_synchronised());
        assert!(s.give_up_unanswered(t0 + FIRST_ANSWER_TIMEOUT));
        assert!(!s.is_synchronised() && s.abandoned());
        // Once.
        assert!(!s.give_up_unanswered(t0 + FIRST_ANSWER_TIMEOUT * 2));
    }
}
