//! `--playout-log FILE`: when each stream frame left the output, as CSV `realtime_ns,frame`.
//!
//! `realtime_ns` is `CLOCK_REALTIME` (ns since the Unix epoch) at the instant the sink outputs
//! stream frame `frame`. Listeners on one machine share that clock whatever their simulated
//! clocks say, so their logs compare directly: the same frame at the same instant is in sync.
//! A line is written at least every [`LOG_EVERY`] of playback; instants in between follow
//! from the rate. Real instants are turned into `CLOCK_REALTIME` through one pair of readings
//! taken when the log is opened.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::jitter::duration_of;
use crate::simclock::SimClock;

/// Longest playback between two lines.
pub const LOG_EVERY: Duration = Duration::from_millis(5);

/// The log file. See the module docs.
#[derive(Debug)]
pub struct PlayoutLog<W: Write = BufWriter<File>> {
    out: W,
    /// A real instant and `CLOCK_REALTIME` (ns) at it.
    anchor: (Instant, i128),
    /// The next frame due a line: lines go out at multiples of the step.
    next: Option<u64>,
}

impl PlayoutLog {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(BufWriter::new(File::create(path)?)))
    }
}

impl<W: Write> PlayoutLog<W> {
    /// A log into `out`.
    pub fn new(out: W) -> Self {
        let inst = Instant::now();
        let sys = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            out,
            anchor: (inst, sys),
            next: None,
        }
    }

    /// `CLOCK_REALTIME` (ns) at real instant `t`.
    fn realtime_ns(&self, t: Instant) -> i128 {
        let (i0, s0) = self.anchor;
        if t >= i0 {
            s0 + (t - i0).as_nanos() as i128
        } else {
            s0 - (i0 - t).as_nanos() as i128
        }
    }

    /// Stream frames `first..first + frames` leave the output one after another at `rate`, the
    /// first at `at` on the listener's `clock`.
    pub fn played(
        &mut self,
        clock: &SimClock,
        rate: u32,
        first: u64,
        frames: u64,
        at: Instant,
    ) -> std::io::Result<()> {
        let step = (u64::from(rate) * LOG_EVERY.as_micros() as u64 / 1_000_000).max(1);
        // After a skip or a rewind, start again at this chunk.
        let mut f = match self.next {
            Some(n) if (first..first + frames).contains(&n) || n == first + frames => n,
            _ => first,
        };
        while f < first + frames {
            let local = at + duration_of(f - first, rate);
            let ns = self.realtime_ns(clock.real(local));
            writeln!(self.out, "{ns},{f}")?;
            f += step;
        }
        self.next = Some(f);
        Ok(())
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The writer (tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(v: &[u8]) -> Vec<(i128, u64)> {
        String::from_utf8(v.to_vec())
            .unwrap()
            .lines()
            .map(|l| {
                let (a, b) = l.split_once(',').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn lines_every_5_ms_of_playback_at_the_output_instants() {
        let mut log = PlayoutLog::new(Vec::new());
        let clock = SimClock::real_clock();
        let t0 = Instant::now() + Duration::from_secs(1);
        // Chunks of 10 ms and 7 ms at 48 kHz, then a chunk after a gap.
        log.played(&clock, 48_000, 1_000, 480, t0).unwrap();
        log.played(&clock, 48_000, 1_480, 336, t0 + Duration::from_millis(10))
            .unwrap();
        log.played(&clock, 48_000, 5_000, 480, t0 + Duration::from_secs(1))
            .unwrap();
        let lines = parse(&log.into_inner());
        let frames: Vec<u64> = lines.iter().map(|l| l.1).collect();
        assert_eq!(frames, [1_000, 1_240, 1_480, 1_720, 5_000, 5_240]);
        for w in lines.windows(2).take(3) {
            // 240 frames apart at 48 kHz: 5 ms of real time.
            assert_eq!(w[1].0 - w[0].0, 5_000_000);
        }
        assert_eq!(lines[4].0 - lines[0].0, 1_000_000_000);
    }

    #[test]
    fn a_skewed_clock_logs_real_instants() {
        let base = Instant::now();
        // 1,000 ppm is beyond the option's range but makes the arithmetic plain.
        let clock = SimClock::new(base, 0, 1_000_000);
        let mut log = PlayoutLog::new(Vec::new());
        // One second of frames by the listener's clock lasts 1/1.001 s of real time.
        let at = clock.local(base + Duration::from_secs(1));
        log.played(&clock, 1_000, 0, 1_001, at).unwrap();
        let lines = parse(&log.into_inner());
        let (first, last) = (lines[0], lines[lines.len() - 1]);
        assert_eq!(last.1, 1_000);
        let real = last.0 - first.0;
        assert!((real - 999_000_999).abs() < 1_000, "{real}");
    }
}
