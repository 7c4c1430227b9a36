//! A deliberately wrong clock for tests: `--sim-clock-offset D --sim-clock-ppm X`.
//!
//! Every time reading of the listener goes through one [`SimClock`]: it reads `D` ahead of the
//! real monotonic clock and runs `X` parts per million fast (negative: behind, slow). The
//! virtual devices (WAV and null sinks) are clocked by those readings, so their playback rate
//! is off by `X` ppm too, like a sound card on a crystal of its own. Timers are set on the real
//! clock at [`SimClock::real`] of the simulated deadline. Without the options the clock is the
//! real one, untouched.

use std::time::{Duration, Instant};

use proto::duration::parse_duration;

/// Largest `--sim-clock-offset` either way: more than any clock-sync path has to cope with at a
/// join, small enough that `Instant` arithmetic never nears its limits.
pub const MAX_OFFSET: Duration = Duration::from_secs(10);

/// Largest `--sim-clock-ppm` either way: the worst crystal sold is ±100 ppm; 500 is the
/// margin the drift compensation is built for.
pub const MAX_PPM: f64 = 500.0;

/// The listener's clock: real, or offset and skewed. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimClock {
    /// Real instant at which the skew starts to accumulate.
    base: Instant,
    /// Offset (ns, signed).
    offset_ns: i64,
    /// Skew in parts per billion (signed).
    ppb: i64,
}

impl SimClock {
    /// The real clock.
    pub fn real_clock() -> Self {
        Self {
            base: Instant::now(),
            offset_ns: 0,
            ppb: 0,
        }
    }

    /// A clock `offset_ns` ahead of the real one and `ppb` parts per billion fast, from `base`.
    pub fn new(base: Instant, offset_ns: i64, ppb: i64) -> Self {
        Self {
            base,
            offset_ns,
            ppb,
        }
    }

    /// Whether this is the real clock.
    pub fn is_real(&self) -> bool {
        self.offset_ns == 0 && self.ppb == 0
    }

    /// The offset (ns) and skew (ppb) it was built with.
    pub fn knobs(&self) -> (i64, i64) {
        (self.offset_ns, self.ppb)
    }

    /// The listener's reading now.
    pub fn now(&self) -> Instant {
        self.local(Instant::now())
    }

    /// The listener's real-time clock now (µs since the Unix epoch): the machine's, moved as
    /// [`Self::now`] is, so a clock offset estimated against a server on the same machine
    /// reads `--sim-clock-offset`.
    pub fn realtime_us(&self) -> u64 {
        let real = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i128);
        let moved_ns = signed_ns(self.local(real), real);
        u64::try_from(unix + moved_ns / 1_000).unwrap_or(0)
    }

    /// The listener's reading at real instant `real`.
    pub fn local(&self, real: Instant) -> Instant {
        if self.is_real() {
            return real;
        }
        let e = signed_ns(real, self.base);
        shift(
            real,
            i128::from(self.offset_ns) + e * i128::from(self.ppb) / 1_000_000_000,
        )
    }

    /// The first real instant (to the nanosecond) at which the listener's clock reads
    /// `local`.
    pub fn real(&self, local: Instant) -> Instant {
        if self.is_real() {
            return local;
        }
        // local = base + e·(1 + p) + offset, e = real − base; rounded up, so that the clock
        // reads at least `local` then (a timer set there never fires early).
        let d = signed_ns(local, self.base) - i128::from(self.offset_ns);
        let den = 1_000_000_000 + i128::from(self.ppb);
        let mut e = (d * 1_000_000_000).div_euclid(den);
        let mut t = shift(self.base, e);
        while self.local(t) < local && e < d.abs() + 1_000_000_000 {
            e += 1;
            t = shift(self.base, e);
        }
        t
    }
}

/// `a − b` in signed nanoseconds.
fn signed_ns(a: Instant, b: Instant) -> i128 {
    if a >= b {
        (a - b).as_nanos() as i128
    } else {
        -((b - a).as_nanos() as i128)
    }
}

/// `t` moved by `ns` (either sign); `t` itself if that leaves the clock's range.
fn shift(t: Instant, ns: i128) -> Instant {
    let d = Duration::from_nanos(ns.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if ns >= 0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

/// `--sim-clock-offset`: a duration with an optional sign, within ±[`MAX_OFFSET`]; in ns.
pub fn parse_offset(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let d = parse_duration(body).map_err(|_| {
        format!("--sim-clock-offset {s:?} is not a duration: write e.g. 400ms, -0.3s, +2s")
    })?;
    if d > MAX_OFFSET {
        return Err(format!("--sim-clock-offset {s} is outside [-10s, 10s]"));
    }
    let ns = d.as_nanos() as i64;
    Ok(if neg { -ns } else { ns })
}

/// `--sim-clock-ppm`: a number within ±[`MAX_PPM`]; in parts per billion.
pub fn parse_ppm(s: &str) -> Result<i64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("--sim-clock-ppm {s:?} is not a number: write e.g. 120 or -37.5"))?;
    if !x.is_finite() || x.abs() > MAX_PPM {
        return Err(format!("--sim-clock-ppm {s} is outside [-500, 500]"));
    }
    Ok((x * 1e3).round() as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_real_clock_is_untouched() {
        let c = SimClock::real_clock();
        let t = Instant::now() + Duration::from_secs(3);
        assert_eq!(c.local(t), t);
        assert_eq!(c.real(t), t);
    }

    #[test]
    fn offset_and_skew_apply_and_invert() {
        let base = Instant::now() + Duration::from_secs(20);
        for (off_ms, ppm) in [
            (400i64, -120i64),
            (-300, 150),
            (10_000, 500),
            (-10_000, -500),
        ] {
            let c = SimClock::new(base, off_ms * 1_000_000, ppm * 1_000);
            let real = base + Duration::from_secs(100);
            let local = c.local(real);
            // 100 s at `ppm` is 100·ppm µs, plus the offset.
            let want = off_ms * 1_000_000 + 100 * ppm * 1_000;
            assert_eq!(signed_ns(local, real) as i64, want, "{off_ms} ms {ppm} ppm");
            let back = c.real(local);
            assert!(
                signed_ns(back, real).abs() <= 1,
                "{off_ms} {ppm}: {:?}",
                signed_ns(back, real)
            );
            // Readings advance `ppm` fast.
            let a = c.local(real + Duration::from_secs(1));
            assert_eq!(signed_ns(a, local) as i64, 1_000_000_000 + ppm * 1_000);
        }
    }

    #[test]
    fn options_are_checked_and_name_the_value_and_range() {
        assert_eq!(parse_offset("400ms"), Ok(400_000_000));
        assert_eq!(parse_offset("+0.4s"), Ok(400_000_000));
        assert_eq!(parse_offset("-0.3s"), Ok(-300_000_000));
        assert_eq!(parse_offset("-10s"), Ok(-10_000_000_000));
        assert_eq!(parse_offset("0"), Ok(0));
        let e = parse_offset("11s").unwrap_err();
        assert!(e.contains("11s") && e.contains("[-10s, 10s]"), "{e}");
        let e = parse_offset("-10.5s").unwrap_err();
        assert!(e.contains("-10.5s") && e.contains("[-10s, 10s]"), "{e}");
        assert!(parse_offset("soon").unwrap_err().contains("\"soon\""));
        assert!(parse_offset("--1s").is_err());
        assert_eq!(parse_ppm("-120"), Ok(-120_000));
        assert_eq!(parse_ppm("37.5"), Ok(37_500));
        assert_eq!(parse_ppm("500"), Ok(500_000));
        let e = parse_ppm("501").unwrap_err();
        assert!(e.contains("501") && e.contains("[-500, 500]"), "{e}");
        assert!(parse_ppm("NaN").is_err());
        assert!(parse_ppm("fast").unwrap_err().contains("\"fast\""));
    }
}
