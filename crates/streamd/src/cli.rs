//! Value parsers for the command line, in the library so they are unit tested: durations as
//! humantime (`20ms`, `0.5s`, `1s`) or a plain number of seconds (`0.02`), as the original
//! asked for "the rate in seconds".

use std::time::Duration;

use crate::server::{MAX_INTERVAL, MIN_INTERVAL};

/// Longest `--client-timeout` accepted: a day is already far beyond any sensible keepalive,
/// and bounding it keeps `Instant` arithmetic far from overflow.
pub const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Parses `20ms`, `1.5s`, `2m` (humantime, which also allows fractions like `0.5s`) or a bare
/// number of seconds such as `0.02` or `5`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration: give e.g. 20ms, 0.5s or 0.02".into());
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds"))?;
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"));
    }
    // humantime does not take fractions ("0.5s"); handle "<number><unit>" with a fraction here.
    if let Some(idx) = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))
        && t[..idx].contains('.')
    {
        let (num, unit) = t.split_at(idx);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration"))?;
        let scale = match unit.trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hours" => 3600.0,
            other => return Err(format!("'{s}': unknown unit '{other}'")),
        };
        return Duration::try_from_secs_f64(n * scale).map_err(|e| format!("'{s}': {e}"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("'{s}' is not a duration ({e}); give e.g. 20ms, 0.5s or 0.02"))
}

/// `--interval`: a duration within [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err(format!(
            "interval {} is outside {}..{}",
            humantime::format_duration(d),
            humantime::format_duration(MIN_INTERVAL),
            humantime::format_duration(MAX_INTERVAL)
        ));
    }
    Ok(d)
}

/// `--client-timeout`: more than zero, at most [`MAX_CLIENT_TIMEOUT`].
pub fn parse_client_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > MAX_CLIENT_TIMEOUT {
        return Err(format!(
            "client timeout {} is outside (0s, {}]",
            humantime::format_duration(d),
            humantime::format_duration(MAX_CLIENT_TIMEOUT)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.02"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1.2.3").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn interval_range() {
        assert_eq!(parse_interval("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.02"), Ok(Duration::from_millis(20)));
        let e = parse_interval("4ms").unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert!(parse_interval("3s").is_err());
        assert!(parse_interval("0").is_err());
    }

    #[test]
    fn client_timeout_range() {
        assert_eq!(parse_client_timeout("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_client_timeout("0").is_err());
        assert!(parse_client_timeout("2days").is_err());
    }
}
