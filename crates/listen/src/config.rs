//! The `listen` command as a library call: its typed options ([`Config`]), how a run ended
//! ([`Outcome`]) and why it could not stream ([`ListenError`]), each error one line for the
//! user with its exit code.

use std::path::PathBuf;
use std::time::Duration;

use proto::StreamInfo;

use crate::discover::Chosen;
use crate::session::{DEFAULT_LATENCY, DEFAULT_TIMEOUT};
use crate::simclock::SimClock;
use crate::sink::SinkError;
use crate::stats::{ExitReason, Stats};
use crate::stay::StayStats;

/// Every option of the `listen` command, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server as the user wrote it, `HOST:PORT`; HOST may be a name.
    pub server: String,
    /// Write the played stream to this WAV file instead of an audio device.
    pub output: Option<PathBuf>,
    /// Play through the output device of this name instead of the default one.
    pub device: Option<String>,
    /// List the output devices and exit (handled by the binary, ignored by [`crate::client::run`]).
    pub list_devices: bool,
    /// Jitter-buffer target; grows when the server's interval needs more.
    pub latency: Duration,
    /// Server silence (handshake or mid-stream) after which the client gives up.
    pub timeout: Duration,
    /// Write the statistics as JSON to this file at exit.
    pub stats_json: Option<PathBuf>,
    /// Also write the log to this file (set up by the binary, ignored by [`crate::client::run`]).
    pub log_file: Option<PathBuf>,
    /// No live status line.
    pub quiet: bool,
    /// Rejoin after every end but the interrupt (`--stay`, [`crate::stay`]).
    pub stay: bool,
    /// The server was found by mDNS (no `--server`): with `stay`, it is looked for again when
    /// it may have moved.
    pub discovered: Option<Chosen>,
    /// The listener's clock: the real one, or offset and skewed by `--sim-clock-offset` and
    /// `--sim-clock-ppm` (tests of clock synchronisation).
    pub clock: SimClock,
    /// Write when each stream frame left the output to this CSV file (`--playout-log`).
    pub playout_log: Option<PathBuf>,
    /// Play in step with the room (`--sync`): every listener plays each frame at the same
    /// instant, whatever its clock and its device.
    pub sync: bool,
    /// The name the Join carries (`--name`, default the host name).
    pub name: String,
    /// Receive the server's multicast group when it names one (`--no-multicast` turns it
    /// off): the server then sends no unicast audio once the group arrives.
    pub multicast: bool,
    /// `--key-file`: join a private room with this key (docs/PROTOCOL.md §4.12); `None`: an
    /// open room.
    pub room_key: Option<seal::RoomKey>,
}

/// `--name`: printable and at most [`proto::limits::MAX_NAME`] bytes, or the error naming it.
pub fn check_name(name: &str) -> Result<&str, String> {
    if name.len() > proto::limits::MAX_NAME {
        return Err(format!(
            "--name {name:?} is {} bytes, more than {}",
            name.len(),
            proto::limits::MAX_NAME
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("--name {name:?} holds control characters"));
    }
    Ok(name)
}

/// This machine's host name (the default `--name`), or "" when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| check_name(h).is_ok())
        .unwrap_or_default()
}

impl Config {
    /// The defaults of the command line for `server`, playing to the default device; tests set
    /// `output` to a WAV file.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            output: None,
            device: None,
            list_devices: false,
            latency: DEFAULT_LATENCY,
            timeout: DEFAULT_TIMEOUT,
            stats_json: None,
            log_file: None,
            quiet: false,
            stay: false,
            discovered: None,
            clock: SimClock::real_clock(),
            playout_log: None,
            sync: false,
            name: String::new(),
            multicast: true,
            room_key: None,
        }
    }
}

/// How a run that reached the server ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The final statistics (zeros when interrupted before the `Welcome`).
    pub stats: Stats,
    /// Why the stream ended.
    pub end_reason: ExitReason,
    /// The stream as the server described it (`None` when interrupted during the handshake);
    /// with `--stay` the last one joined.
    pub info: Option<StreamInfo>,
    /// With `--stay`: the totals (also in `stats`), each session and the outages.
    pub stay: Option<StayStats>,
}

impl Outcome {
    /// The process exit code: 0 finished, shutdown or interrupted; 4 timeout or evicted.
    pub fn exit_code(&self) -> u8 {
        match self.end_reason {
            ExitReason::Finished | ExitReason::Shutdown | ExitReason::Interrupted => 0,
            ExitReason::Timeout | ExitReason::Evicted => 4,
        }
    }
}

/// Why `listen` could not stream. Each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `--server` is not `HOST:PORT` or does not resolve.
    #[error("cannot resolve server {server}: {detail}")]
    Resolve {
        /// As given.
        server: String,
        /// What failed.
        detail: String,
    },
    /// `--playout-log` could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    PlayoutLog {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The local UDP socket failed.
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The handshake got no answer within `--timeout`.
    #[error("no answer from {server} after {}", fmt_secs(*.after))]
    NoAnswer {
        /// As given.
        server: String,
        /// The timeout.
        after: Duration,
    },
    /// The server is full.
    #[error("server {server} is full ({max_clients} listeners)")]
    Full {
        /// As given.
        server: String,
        /// The server's capacity.
        max_clients: u32,
    },
    /// The server speaks another protocol version.
    #[error(
        "server {server} speaks protocol version {supported}, this listen speaks {}",
        proto::VERSION
    )]
    Version {
        /// As given.
        server: String,
        /// The server's version.
        supported: u8,
    },
    /// The server is shutting down.
    #[error("server {server} is shutting down and takes no new listeners")]
    ShuttingDown {
        /// As given.
        server: String,
    },
    /// The room is keyed and our key (or lack of one) did not match.
    #[error("server {server} refused the key (Reject BadKey): the room key did not match{}", bad_key_detail(*.keyed))]
    BadKey {
        /// As given.
        server: String,
        /// Whether this listener has a key (`--key-file`).
        keyed: bool,
    },
    /// The handshake of a private room could not start (no randomness from the system).
    #[error("cannot start the private room's handshake: {0}")]
    Handshake(String),
    /// The server streams a codec this listener cannot decode.
    #[error("server {server} streams codec {codec}, which this listener cannot decode")]
    Codec {
        /// As given.
        server: String,
        /// The codec's wire index.
        codec: u32,
    },
    /// The `Welcome` described a stream this client cannot play.
    #[error("server {server} sent an unusable stream description: {detail}")]
    BadStream {
        /// As given.
        server: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An option value is unusable.
    #[error("{0}")]
    BadOption(String),
    /// The audio device or WAV file failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// `--stats-json` could not be written.
    #[error("cannot write statistics to {path}: {source}")]
    StatsJson {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ListenError {
    /// The process exit code: 3 rejected, 4 no answer, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ListenError::Full { .. }
            | ListenError::Version { .. }
            | ListenError::ShuttingDown { .. }
            | ListenError::BadKey { .. }
            | ListenError::Codec { .. } => 3,
            ListenError::NoAnswer { .. } => 4,
            _ => 1,
        }
    }
}

/// What a `BadKey` line adds: which side lacks the key, as far as this listener can tell.
fn bad_key_detail(keyed: bool) -> &'static str {
    if keyed {
        " (this listener's --key-file is not the room's, or the server runs an open room)"
    } else {
        " (the server runs a private room and this listener has no --key-file)"
    }
}

/// `5` → "5 s", `2.5` → "2.5 s".
pub(crate) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s:.1} s")
    }
}

/// Parses a duration as humantime (`100ms`, `2s`, `1m 30s`) or a bare number of seconds
/// (`5`, `0.25`): the syntax every earshot program shares ([`proto::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    proto::duration::parse_duration(s)
}

/// `--sync on|off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("--sync {s}: expected on or off")),
    }
}
