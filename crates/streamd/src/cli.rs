//! Value parsers for the command line, in the library so they are unit tested. Durations use
//! the syntax every earshot program shares ([`proto::duration::parse_duration`]: `20ms`,
//! `0.5s`, or a plain number of seconds such as `0.02`); these add streamd's ranges.

use std::net::SocketAddr;
use std::time::Duration;

use proto::duration::{Lower, parse_within};

use crate::live::RawFormat;
use crate::server::{MAX_INTERVAL, MIN_INTERVAL};

/// `--format`: raw PCM as `s16le:RATE:CHANNELS` ([`RawFormat::parse`]).
pub fn parse_format(s: &str) -> Result<RawFormat, String> {
    RawFormat::parse(s)
}

/// Longest `--client-timeout` accepted: a day is already far beyond any sensible keepalive,
/// and bounding it keeps `Instant` arithmetic far from overflow.
pub const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `--interval`: a duration within [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_within(
        s,
        "--interval",
        Lower::Inclusive(MIN_INTERVAL),
        MAX_INTERVAL,
    )
}

/// Shortest `--latency`.
pub const MIN_LATENCY: Duration = Duration::from_millis(10);
/// Longest `--latency`.
pub const MAX_LATENCY: Duration = Duration::from_secs(5);

/// `--latency`: the room's playout delay, within [`MIN_LATENCY`]..=[`MAX_LATENCY`].
pub fn parse_latency(s: &str) -> Result<Duration, String> {
    parse_within(s, "--latency", Lower::Inclusive(MIN_LATENCY), MAX_LATENCY)
}

/// `--client-timeout`: more than zero, at most [`MAX_CLIENT_TIMEOUT`].
pub fn parse_client_timeout(s: &str) -> Result<Duration, String> {
    parse_within(
        s,
        "--client-timeout",
        Lower::Exclusive(Duration::ZERO),
        MAX_CLIENT_TIMEOUT,
    )
}

/// `--rtp DEST:PORT`: an IP address (IPv6 in brackets) and an even port a datagram can be
/// sent to ([`crate::rtp::output::check_dest`]).
pub fn parse_rtp_dest(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("{s:?} is not DEST:PORT (an IP address and a port, e.g. 127.0.0.1:5004 or [ff15::1]:5004)")
    })?;
    crate::rtp::output::check_dest(a)?;
    Ok(a)
}

/// `--http-token`: 8 to 256 visible ASCII characters (it travels in an HTTP header and a URL
/// query), so a typo such as an empty value is a usage error rather than an open door.
pub fn parse_http_token(s: &str) -> Result<String, String> {
    if !(8..=256).contains(&s.len()) {
        return Err(format!(
            "--http-token must be 8 to 256 characters, not {}",
            s.len()
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err("--http-token may hold only letters, digits and - . _ ~".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
    fn http_token() {
        assert_eq!(parse_http_token("s3cret-token"), Ok("s3cret-token".into()));
        assert!(parse_http_token("").is_err());
        assert!(parse_http_token("short").is_err());
        assert!(parse_http_token("has space in it").is_err());
        assert!(parse_http_token("percent%20token").is_err());
        assert!(parse_http_token(&"x".repeat(257)).is_err());
    }

    #[test]
    fn format_values() {
        let f = parse_format("s16le:48000:2").unwrap();
        assert_eq!((f.sample_rate, f.channels), (48_000, 2));
        assert_eq!(parse_format("S16LE:8000:1").unwrap().channels, 1);
        for bad in [
            "",
            "s16le",
            "s16le:48000",
            "f32le:48000:2",
            "s16le:x:2",
            "s16le:48000:0",
            "s16le:48000:33",
            "s16le:1000:2",
            "s16le:48000:2:1",
        ] {
            let e = parse_format(bad).unwrap_err();
            assert!(e.contains("--format"), "{bad}: {e}");
        }
    }

    #[test]
    fn client_timeout_range() {
        assert_eq!(parse_client_timeout("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_client_timeout("0").is_err());
        assert!(parse_client_timeout("2days").is_err());
    }

    #[test]
    fn rtp_dest() {
        assert_eq!(
            parse_rtp_dest("127.0.0.1:5004"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 5004)))
        );
        assert!(parse_rtp_dest("[ff15::1]:5004").is_ok());
        assert!(parse_rtp_dest("239.1.2.3:5006").is_ok());
        for bad in [
            "localhost:5004",
            "127.0.0.1",
            "127.0.0.1:5005",
            "0.0.0.0:5004",
            "1.2.3:4",
        ] {
            let e = parse_rtp_dest(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
