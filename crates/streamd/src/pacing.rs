//! The media clock and packetisation: how many frames are due at `now`, and how to cut them
//! into datagrams. Sans-IO: time is always passed in.
//!
//! Frames due at `now` = `floor(elapsed * rate)`, computed in integer nanoseconds from one fixed
//! anchor, so there is no accumulated rounding: over any run the send rate equals the audio
//! rate exactly, however late or early individual ticks fire. A late tick simply finds more
//! frames due and sends them all (catch-up). Only a stall longer than [`MAX_CATCH_UP`] moves
//! the anchor ("slips"), so that a suspended or starved process does not fire seconds of audio
//! at its listeners in one burst.

use std::time::{Duration, Instant};

use proto::limits::{AUDIO_OVERHEAD, MAX_PAYLOAD};

/// Most audio one tick may send to catch up after a stall. One second is far more than any
/// scheduling hiccup on a loaded machine (so normal lateness is always caught up in full), but
/// bounds the burst a listener's jitter buffer has to absorb (~176 kB for 44.1 kHz stereo).
/// With long intervals the bound is two intervals instead (see [`MediaClock::new`]), since
/// one on-time tick already carries a whole interval.
pub const MAX_CATCH_UP: Duration = Duration::from_secs(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Whole frames in `d` at `rate` frames per second (rounded down, saturating).
pub fn frames_in(d: Duration, rate: u32) -> u64 {
    u64::try_from(d.as_nanos() * u128::from(rate) / NANOS_PER_SEC).unwrap_or(u64::MAX)
}

/// Frames per datagram: as many whole frames as fit in `mtu` bytes after the audio header,
/// and never more than a v1 payload may hold. At least one.
pub fn frames_per_packet(mtu: usize, bytes_per_frame: usize) -> usize {
    let room = mtu.saturating_sub(AUDIO_OVERHEAD).min(MAX_PAYLOAD);
    (room / bytes_per_frame.max(1)).max(1)
}

/// Says how many frames are due; the caller sends them and reports with [`MediaClock::sent`].
#[derive(Debug, Clone)]
pub struct MediaClock {
    /// Frames per second.
    rate: u32,
    /// Instant at which frame `anchor_frames` was due; `None` until started.
    anchor: Option<Instant>,
    /// Frames already due at the anchor (non-zero after a slip).
    anchor_frames: u64,
    /// Frames handed out so far.
    sent: u64,
    /// Total time given up to slips, for the log.
    slipped: Duration,
    /// Most frames owed before the clock slips.
    max_owed: u64,
    /// Frames handed out ahead of the media clock, for a source that can be read ahead (see
    /// [`MediaClock::set_lead`]).
    lead: u64,
}

impl MediaClock {
    /// A stopped clock at `rate` frames per second, ticking every `interval`: it slips after
    /// a stall longer than [`MAX_CATCH_UP`] or two intervals, whichever is longer.
    pub fn new(rate: u32, interval: Duration) -> Self {
        let rate = rate.max(1);
        let window = MAX_CATCH_UP.max(interval.saturating_mul(2));
        let max_owed = frames_in(window, rate);
        Self {
            rate,
            anchor: None,
            anchor_frames: 0,
            sent: 0,
            slipped: Duration::ZERO,
            max_owed,
            lead: 0,
        }
    }

    /// Hands out `frames` more than are due, from now on: a file read ahead by what a FLAC or
    /// Opus encoder holds back (plus an interval) has each packet out before its first frame is
    /// due. The timeline ([`MediaClock::anchor`]) does not move.
    pub fn set_lead(&mut self, frames: u64) {
        self.lead = frames;
    }

    /// Starts the clock: frame 0 is due at `now`. Starting twice does nothing.
    pub fn start(&mut self, now: Instant) {
        if self.anchor.is_none() {
            self.anchor = Some(now);
        }
    }

    /// Whether [`MediaClock::start`] has been called.
    pub fn is_started(&self) -> bool {
        self.anchor.is_some()
    }

    /// The instant at which frame `.1` was (or is) due, once started: the media timeline.
    pub fn anchor(&self) -> Option<(Instant, u64)> {
        self.anchor.map(|a| (a, self.anchor_frames))
    }

    /// Frames handed out so far (= the `ts` of the next frame).
    pub fn frames_sent(&self) -> u64 {
        self.sent
    }

    /// Time given up to stalls longer than [`MAX_CATCH_UP`].
    pub fn slipped(&self) -> Duration {
        self.slipped
    }

    fn due_total(&self, anchor: Instant, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(anchor).as_nanos();
        let frames = elapsed * u128::from(self.rate) / NANOS_PER_SEC;
        self.anchor_frames
            .saturating_add(u64::try_from(frames).unwrap_or(u64::MAX))
    }

    /// Frames that became due by `now` and have not been sent. If more than [`MAX_CATCH_UP`]
    /// is owed, the clock slips so that exactly that much is owed.
    pub fn due(&mut self, now: Instant) -> u64 {
        let Some(anchor) = self.anchor else { return 0 };
        let owed = self
            .due_total(anchor, now)
            .saturating_add(self.lead)
            .saturating_sub(self.sent);
        let max = self.max_owed;
        if owed > max {
            let excess = owed - max;
            let excess_time = Duration::from_nanos(
                u64::try_from(u128::from(excess) * NANOS_PER_SEC / u128::from(self.rate))
                    .unwrap_or(u64::MAX),
            );
            // Re-anchor at now with exactly `max` owed.
            self.anchor = Some(now);
            self.anchor_frames = (self.sent + max).saturating_sub(self.lead);
            self.slipped += excess_time;
            return max;
        }
        owed
    }

    /// Forgets the frames owed at `now` (a paused live source): frames are due from here on,
    /// as if the clock had started now with what was sent. Does nothing before the start.
    pub fn hold(&mut self, now: Instant) {
        if self.anchor.is_some() {
            self.anchor = Some(now);
            self.anchor_frames = self.sent.saturating_sub(self.lead);
        }
    }

    /// Records that `frames` more frames went out.
    pub fn sent(&mut self, frames: u64) {
        self.sent += frames;
    }
}

/// Sizes of the datagrams for `frames` due frames: full packets of `fpp` frames, the last one
/// possibly shorter. An iterator, so the tick allocates nothing for it.
pub fn split(frames: u64, fpp: usize) -> impl Iterator<Item = usize> {
    let fpp = fpp.max(1) as u64;
    let full = frames / fpp;
    let rest = frames % fpp;
    (0..full)
        .map(move |_| fpp as usize)
        .chain((rest > 0).then_some(rest as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 44_100;
    const TICK: Duration = Duration::from_millis(20);

    #[test]
    fn frames_per_packet_fits_mtu() {
        // Stereo s16 at the default MTU: (1400 - 28) / 4.
        assert_eq!(frames_per_packet(1400, 4), 343);
        assert!(AUDIO_OVERHEAD + frames_per_packet(1400, 4) * 4 <= 1400);
        assert_eq!(frames_per_packet(1400, 2), 686);
        // A huge MTU is capped by the v1 payload limit.
        assert_eq!(frames_per_packet(100_000, 4), MAX_PAYLOAD / 4);
        // Never zero.
        assert_eq!(frames_per_packet(10, 16), 1);
    }

    #[test]
    fn split_sizes() {
        assert_eq!(split(882, 343).collect::<Vec<_>>(), vec![343, 343, 196]);
        assert_eq!(split(686, 343).collect::<Vec<_>>(), vec![343, 343]);
        assert_eq!(split(0, 343).count(), 0);
    }

    #[test]
    fn nothing_due_before_start() {
        let mut c = MediaClock::new(RATE, TICK);
        assert_eq!(c.due(Instant::now()), 0);
    }

    #[test]
    fn an_hour_of_ticks_does_not_drift() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(RATE, TICK);
        c.start(t0);
        let interval = Duration::from_millis(20);
        let ticks = 3600 * 50;
        let mut total = 0u64;
        let mut max_tick = 0;
        for i in 1..=ticks {
            // Each tick fires a little late, by a varying amount (up to 3 ms).
            let jitter = Duration::from_micros((i as u64 * 7919) % 3000);
            let now = t0 + interval * i + jitter;
            let d = c.due(now);
            max_tick = max_tick.max(d);
            c.sent(d);
            total += d;
        }
        // At the last tick, exactly floor(elapsed * rate) frames have gone out.
        let last = interval * ticks + Duration::from_micros((ticks as u64 * 7919) % 3000);
        let expected = (last.as_nanos() * u128::from(RATE) / NANOS_PER_SEC) as u64;
        assert_eq!(total, expected);
        assert_eq!(c.frames_sent(), expected);
        // One hour of audio, to within the last tick's lateness.
        assert!(total >= 3600 * u64::from(RATE));
        assert!(total <= 3600 * u64::from(RATE) + 3 * u64::from(RATE) / 1000);
        // No tick sent more than one interval plus the lateness swing.
        assert!(max_tick <= 882 + 3 * 44 + 1, "max_tick {max_tick}");
        assert_eq!(c.slipped(), Duration::ZERO);
    }

    #[test]
    fn catch_up_after_a_stall() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(RATE, TICK);
        c.start(t0);
        let d = c.due(t0 + Duration::from_millis(20));
        assert_eq!(d, 882);
        c.sent(d);
        // 300 ms without a tick: the next one sends all 300 ms at once.
        let d = c.due(t0 + Duration::from_millis(320));
        assert_eq!(d, 300 * 441 / 10);
        c.sent(d);
        // And the cadence resumes with no drift.
        let d = c.due(t0 + Duration::from_millis(340));
        assert_eq!(d, 882);
        c.sent(d);
        assert_eq!(c.frames_sent(), 340 * 441 / 10);
        assert_eq!(c.slipped(), Duration::ZERO);
    }

    #[test]
    fn a_long_stall_slips_instead_of_bursting() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(RATE, TICK);
        c.start(t0);
        // 5 s stall: only MAX_CATCH_UP worth goes out at once.
        let d = c.due(t0 + Duration::from_secs(5));
        assert_eq!(d, u64::from(RATE));
        c.sent(d);
        assert_eq!(c.slipped(), Duration::from_secs(4));
        // Afterwards the clock runs on from the new anchor.
        let d = c.due(t0 + Duration::from_millis(5020));
        assert_eq!(d, 882);
    }

    #[test]
    fn long_intervals_never_slip_on_time() {
        // A 2 s interval sends 2 s per tick: more than MAX_CATCH_UP, yet on time.
        let t0 = Instant::now();
        let tick = Duration::from_secs(2);
        let mut c = MediaClock::new(RATE, tick);
        c.start(t0);
        for i in 1..=100u32 {
            let d = c.due(t0 + tick * i + Duration::from_millis(150));
            c.sent(d);
        }
        assert_eq!(c.slipped(), Duration::ZERO);
        assert_eq!(c.frames_sent(), 200 * u64::from(RATE) + 150 * 441 / 10);
    }

    #[test]
    fn a_lead_hands_out_frames_early_and_keeps_the_timeline() {
        let t0 = Instant::now();
        let mut c = MediaClock::new(RATE, TICK);
        c.set_lead(1_000);
        c.start(t0);
        // At the start the lead is due at once; then the cadence is the clock's.
        assert_eq!(c.due(t0), 1_000);
        c.sent(1_000);
        assert_eq!(c.due(t0 + Duration::from_millis(20)), 882);
        c.sent(882);
        assert_eq!(c.anchor(), Some((t0, 0)));
        // A stall slips as without a lead, and the lead survives the slip.
        let d = c.due(t0 + Duration::from_secs(5));
        assert_eq!(d, u64::from(RATE));
        c.sent(d);
        assert_eq!(c.slipped(), Duration::from_millis(3_980));
        let Some((at, frames)) = c.anchor() else {
            panic!("a started clock has an anchor")
        };
        assert_eq!(at, t0 + Duration::from_secs(5));
        // The frame due at the new anchor is `lead` behind what went out.
        assert_eq!(frames + 1_000, c.frames_sent());
        assert_eq!(c.due(t0 + Duration::from_millis(5020)), 882);
        // Holding (a paused source) keeps the lead too.
        c.sent(882);
        c.hold(t0 + Duration::from_secs(6));
        assert_eq!(c.due(t0 + Duration::from_secs(6)), 0);
        assert_eq!(c.due(t0 + Duration::from_millis(6020)), 882);
    }
}
