//! Reading `listen --playout-log` files and comparing them: when a listener played a given
//! stream frame, and how far apart two listeners played the same frames.
//!
//! A log is CSV lines `realtime_ns,frame`: `CLOCK_REALTIME` at the instant the listener's
//! output played stream frame `frame`, a line at least every 10 ms of playback. Listeners on
//! one machine share that clock, so their logs compare directly. Between two lines the
//! instants follow from the rate; a pause or a skip shows as a larger gap in frames, across
//! which nothing is interpolated.

use std::path::Path;
use std::time::Duration;

/// One line of a log: `CLOCK_REALTIME` in ns and the stream frame played at that instant.
pub type Line = (i128, u64);

/// Longest playback between two lines that [`when`] interpolates across: twice the logger's
/// most, so a line written a little late still counts, a pause or a skip does not.
pub const MAX_LINE_GAP: Duration = Duration::from_millis(10);

/// Parses a log's text; the error names the first bad line.
pub fn parse_log(text: &str) -> Result<Vec<Line>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let bad = || format!("line {}: {l:?} is not `realtime_ns,frame`", i + 1);
            let (a, b) = l.split_once(',').ok_or_else(bad)?;
            Ok((
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

/// Reads and parses the log at `path`; the error names the file.
pub fn read_log(path: &Path) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_log(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The instant (`CLOCK_REALTIME`, ns) at which a log at `rate` frames per second played
/// `frame`, interpolated between the lines around it; `None` outside the log or across a gap
/// longer than [`MAX_LINE_GAP`].
pub fn when(lines: &[Line], rate: u32, frame: u64) -> Option<f64> {
    let max_gap = u64::from(rate) * MAX_LINE_GAP.as_millis() as u64 / 1000;
    let i = lines.partition_point(|l| l.1 <= frame);
    let a = lines.get(i.checked_sub(1)?)?;
    if a.1 == frame {
        return Some(a.0 as f64);
    }
    let b = lines.get(i)?;
    if b.1 - a.1 > max_gap {
        return None;
    }
    let k = (frame - a.1) as f64 / (b.1 - a.1) as f64;
    Some(a.0 as f64 + k * (b.0 - a.0) as f64)
}

/// How far apart two listeners played the same frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Frames compared: lines of the first log whose frame the second also played.
    pub frames: usize,
    /// Median of |difference|, ms.
    pub p50_ms: f64,
    /// 99th percentile of |difference|, ms.
    pub p99_ms: f64,
    /// Largest |difference|, ms.
    pub max_ms: f64,
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} frames",
            self.p50_ms, self.p99_ms, self.max_ms, self.frames
        )
    }
}

/// The spread between logs `a` and `b` (both at `rate`) over the frames `a` played at least
/// `settle` after both had started: every line of `a` from then on whose frame `b` also
/// played, compared at that frame. `None` when there is no such frame.
pub fn spread(a: &[Line], b: &[Line], rate: u32, settle: Duration) -> Option<Spread> {
    let start = a.first()?.0.max(b.first()?.0) + settle.as_nanos() as i128;
    let mut diffs: Vec<f64> = a
        .iter()
        .filter(|l| l.0 >= start)
        .filter_map(|&(t, f)| when(b, rate, f).map(|u| (t as f64 - u).abs() / 1e6))
        .collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: usize| diffs[(diffs.len() * q / 100).min(diffs.len() - 1)];
    Some(Spread {
        frames: diffs.len(),
        p50_ms: at(50),
        p99_ms: at(99),
        max_ms: diffs[diffs.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A log at 48 kHz: a line every 240 frames (5 ms), frame `first` at `t0` ns.
    fn log(t0: i128, first: u64, lines: u64) -> Vec<Line> {
        (0..lines)
            .map(|i| (t0 + i128::from(i) * 5_000_000, first + i * 240))
            .collect()
    }

    #[test]
    fn parses_lines_and_names_a_bad_one() {
        assert_eq!(parse_log("10,0\n20,5\n").unwrap(), [(10, 0), (20, 5)]);
        let e = parse_log("10,0\n20;5\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("20;5"), "{e}");
        assert!(parse_log("x,1").is_err());
    }

    #[test]
    fn when_interpolates_but_not_across_a_gap() {
        let mut l = log(1_000_000_000, 0, 4);
        assert_eq!(when(&l, 48_000, 120), Some(1_002_500_000.0));
        assert_eq!(when(&l, 48_000, 720), Some(1_015_000_000.0));
        assert_eq!(when(&l, 48_000, 721), None);
        // A skip of 100 ms: nothing in between is known.
        l.push((1_020_000_000, 720 + 4_800));
        assert_eq!(when(&l, 48_000, 1_000), None);
    }

    #[test]
    fn spread_measures_the_offset_after_settling() {
        // b plays every frame 0.3 ms after a, except for its first second (2 ms late).
        let a = log(0, 0, 800);
        let b: Vec<Line> = log(0, 0, 800)
            .into_iter()
            .map(|(t, f)| {
                (
                    t + if t < 1_000_000_000 {
                        2_000_000
                    } else {
                        300_000
                    },
                    f,
                )
            })
            .collect();
        let s = spread(&a, &b, 48_000, Duration::from_secs(1)).unwrap();
        assert!((s.p50_ms - 0.3).abs() < 1e-9, "{s}");
        assert!((s.max_ms - 0.3).abs() < 1e-9, "{s}");
        // Without settling the first second counts.
        let s = spread(&a, &b, 48_000, Duration::ZERO).unwrap();
        assert!((s.max_ms - 2.0).abs() < 1e-9, "{s}");
        // Nothing in common.
        assert_eq!(
            spread(&a, &log(0, 1_000_000, 10), 48_000, Duration::ZERO),
            None
        );
    }
}
