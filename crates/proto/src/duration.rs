//! The duration syntax of every earshot command line (`streamd`, `listen`, the examples and
//! tools): humantime (`20ms`, `1.5s`, `2m 30s`) or a bare number of seconds (`5`, `0.25`),
//! which humantime alone rejects. It lives here because every program already depends on
//! `proto`; one parser means one syntax and one error message everywhere.

use std::time::Duration;

/// Parses `s` (surrounding whitespace ignored) as a bare number of seconds (digits with at most
/// one `.`: `5`, `0.25`, `.5`) or as a humantime duration (`20ms`, `1.5s`, `2m 30s`, `1h`).
///
/// Zero is a duration (`0`, `0s`); signs, exponents and units humantime does not know are not.
/// Every error has the same wording, naming the value and giving examples (see
/// [`error_message`]); a program that needs a range checks it after parsing.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let parsed = if is_bare_seconds(t) {
        t.parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
    } else {
        humantime::parse_duration(t).ok()
    };
    parsed.ok_or_else(|| error_message(s))
}

/// The one error message of [`parse_duration`] for `s`: quotes the value as given and shows
/// the accepted forms.
pub fn error_message(s: &str) -> String {
    format!("{s:?} is not a duration: write e.g. 20ms, 1.5s, 2m 30s, or seconds as 5 or 0.25")
}

/// Digits with at most one decimal point and at least one digit.
fn is_bare_seconds(t: &str) -> bool {
    t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes().filter(|&b| b == b'.').count() <= 1
}

/// The lower end of a duration range: whether the bound itself is allowed (`[5ms, …`) or not
/// (`(0s, …`: "longer than zero").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    /// The bound itself is allowed.
    Inclusive(Duration),
    /// Only durations longer than the bound are allowed.
    Exclusive(Duration),
}

/// Parses `s` with [`parse_duration`] and checks it lies between `min` and `max` (inclusive).
/// The one range error of every command line names the option and the value and shows the
/// range in interval notation: `--interval 1ms is outside [5ms, 2s]`.
pub fn parse_within(s: &str, option: &str, min: Lower, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let (ok_low, open, low) = match min {
        Lower::Inclusive(m) => (d >= m, '[', m),
        Lower::Exclusive(m) => (d > m, '(', m),
    };
    if ok_low && d <= max {
        return Ok(d);
    }
    Err(format!(
        "{option} {} is outside {open}{}, {}]",
        humantime::format_duration(d),
        humantime::format_duration(low),
        humantime::format_duration(max)
    ))
}
