//! Named limits and timers of protocol v2, each with the reason for its value.
//!
//! Both peers use these; `docs/PROTOCOL.md` repeats them for implementers in other languages.

use std::time::Duration;

/// Bytes in the fixed header: magic (2) + version (1) + type (1) + seq (8).
pub const HEADER_LEN: usize = 12;

/// Largest datagram a peer sends or accepts. It covers a 9000-byte jumbo frame's UDP payload
/// (less IP/UDP headers) with room to spare, and keeps every receive buffer small. Anything
/// larger is rejected unread as [`crate::DecodeError::TooLarge`].
pub const MAX_DATAGRAM: usize = 8192;

/// Bytes an `Audio` datagram spends on anything but PCM: header + `ts` (8) + payload length (8).
pub const AUDIO_OVERHEAD: usize = HEADER_LEN + 8 + 8;

/// Largest PCM payload one `Audio` datagram can carry.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - AUDIO_OVERHEAD;

/// Smallest datagram size a sender may choose (`--mtu`): below this an `Audio` datagram cannot
/// hold even a few frames of 8-channel audio, and a `Welcome` with a full title might not fit.
pub const MIN_MTU: usize = 576;

/// Default datagram size: fits the 1500-byte Ethernet MTU with IPv6 and tunnel headers to spare.
pub const DEFAULT_MTU: usize = 1400;

/// Longest stream title in a `Welcome`, in bytes; the server truncates longer titles at a char
/// boundary. Keeps a `Welcome` well inside [`MIN_MTU`].
pub const MAX_TITLE: usize = 200;

/// Longest listener name in a `Join`, in bytes; a server truncates longer names.
pub const MAX_NAME: usize = 64;

/// Default playout delay of a room: frame F plays this long after the server's media clock made
/// it due. Covers a 20 ms interval, a LAN's jitter and a retransmission round trip.
pub const DEFAULT_PLAYOUT_DELAY: Duration = Duration::from_millis(50);

/// Longest human-readable text in an `Error`, in bytes.
pub const MAX_ERROR_TEXT: usize = 200;

/// A `Connect` is padded to at least this many bytes, and a server ignores shorter ones. Every
/// reply a server may send to an unvalidated address (`Challenge`, `Reject`) is smaller, so the
/// anti-amplification rule (RFC 9000 §8) holds with margin.
pub const MIN_CONNECT_LEN: usize = 128;

/// How often a listener sends `Report`: it is both the keepalive and the receiver report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Default silence after which a server evicts a listener: five missed reports, so one or two
/// lost `Report`s never evict anyone.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times `End` is sent, because it is the one message whose loss costs a listener a
/// `--timeout` wait.
pub const END_REPEAT: u32 = 3;

/// Spacing between the copies of `End`: wider than a typical loss burst on a LAN.
pub const END_SPACING: Duration = Duration::from_millis(50);

/// A cookie is valid in the epoch it was made in and the next one: 10 to 20 s, long enough for
/// any handshake round trip, short enough that a captured cookie soon expires.
pub const COOKIE_EPOCH: Duration = Duration::from_secs(10);
