//! `proto::duration::parse_duration`: the forms every command line accepts, the forms it
//! rejects, and the exact error text.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proto::duration::{error_message, parse_duration};

#[test]
fn humantime_forms() {
    let ok = [
        ("20ms", Duration::from_millis(20)),
        ("1s", Duration::from_secs(1)),
        ("0.5s", Duration::from_millis(500)),
        ("1.5ms", Duration::from_micros(1500)),
        ("2m", Duration::from_secs(120)),
        ("2m 30s", Duration::from_secs(150)),
        ("1h", Duration::from_secs(3600)),
        ("250us", Duration::from_micros(250)),
        ("0s", Duration::ZERO),
    ];
    for (s, want) in ok {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
}

#[test]
fn bare_seconds() {
    let ok = [
        ("5", Duration::from_secs(5)),
        ("0.25", Duration::from_millis(250)),
        ("0.02", Duration::from_millis(20)),
        (".5", Duration::from_millis(500)),
        ("3.", Duration::from_secs(3)),
        ("0", Duration::ZERO),
        ("600", Duration::from_secs(600)),
    ];
    for (s, want) in ok {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
}

#[test]
fn surrounding_whitespace_is_ignored() {
    assert_eq!(parse_duration(" 20ms "), Ok(Duration::from_millis(20)));
    assert_eq!(parse_duration("\t5\n"), Ok(Duration::from_secs(5)));
}

#[test]
fn rejected_forms() {
    let bad = [
        "",
        "   ",
        ".",
        "-1",
        "+1",
        "-1s",
        "1e3",
        "1e400",
        "inf",
        "NaN",
        "1.2.3",
        "fast",
        "5 parsecs",
        "ms",
        "1x",
        "1,5s",
    ];
    for s in bad {
        assert!(parse_duration(s).is_err(), "{s:?} was accepted");
    }
    // Too many seconds for a Duration, bare or with a unit.
    assert!(parse_duration("99999999999999999999999").is_err());
    assert!(parse_duration("99999999999999999999999h").is_err());
}

#[test]
fn one_error_wording_names_the_value_and_gives_examples() {
    let want = "\"fast\" is not a duration: write e.g. 20ms, 1.5s, 2m 30s, or seconds as 5 or 0.25";
    assert_eq!(parse_duration("fast"), Err(want.to_string()));
    assert_eq!(error_message("fast"), want);
    // The same wording whatever went wrong, quoting the value as given.
    for s in ["-1", "1e400", " 1x "] {
        assert_eq!(parse_duration(s), Err(error_message(s)));
    }
    assert_eq!(
        parse_duration(" 1x "),
        Err(
            "\" 1x \" is not a duration: write e.g. 20ms, 1.5s, 2m 30s, or seconds as 5 or 0.25"
                .into()
        )
    );
}

#[test]
fn range_errors_have_one_wording_with_interval_notation() {
    use proto::duration::{Lower, parse_within};
    let ms = Duration::from_millis;
    let interval = |s| parse_within(s, "--interval", Lower::Inclusive(ms(5)), ms(2000));
    assert_eq!(interval("5ms"), Ok(ms(5)));
    assert_eq!(interval("2s"), Ok(ms(2000)));
    assert_eq!(
        interval("1ms"),
        Err("--interval 1ms is outside [5ms, 2s]".to_string())
    );
    assert_eq!(
        interval("3s"),
        Err("--interval 3s is outside [5ms, 2s]".to_string())
    );
    let timeout = |s| parse_within(s, "--timeout", Lower::Exclusive(ms(0)), ms(86_400_000));
    assert_eq!(timeout("1ns"), Ok(Duration::from_nanos(1)));
    assert_eq!(
        timeout("0"),
        Err("--timeout 0s is outside (0s, 1day]".to_string())
    );
    // A value that is not a duration keeps the parser's own message.
    assert_eq!(timeout("soon"), Err(proto::duration::error_message("soon")));
}
