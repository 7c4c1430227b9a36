//! earshot client: connects to a `streamd`, plays its stream through a jitter buffer into an
//! audio device or a WAV file, and reports how the transmission went.
//!
//! The protocol logic is sans-IO and takes explicit time: [`session`] (handshake, reports, the
//! end of the stream, every timeout) composes [`decode`] (each payload to PCM, the codec's own
//! concealment), [`jitter`] (reorder, conceal, rebuffer) and [`stats`] (counters, RFC 3550
//! jitter). [`sink`] holds the outputs behind one trait (the
//! virtual ones run on the caller's clock), [`status`] renders the live status line, and
//! [`stay`] is the rejoin policy of `--stay` and [`discover`] finds servers by mDNS.
//! [`multicast`] joins a server's group and decides when to ask for unicast instead.
//! [`client`] is the thin tokio shell that drives one session (`staying` runs sessions one
//! after another for `--stay`); [`config`] holds the command's typed options, outcome and
//! errors. The `listen` binary parses flags and calls [`client::run`].
#![forbid(unsafe_code)]

pub mod client;
pub mod clock;
pub mod config;
pub mod decode;
pub mod discover;
pub mod drift;
pub mod jitter;
pub mod multicast;
pub mod playlog;
pub mod schedule;
pub mod session;
pub mod simclock;
pub mod sink;
pub mod stats;
pub mod status;
pub mod stay;
mod staying;
pub mod sync;

pub use client::run;
pub use config::{Config, ListenError, Outcome, parse_duration};
pub use session::{Event, Session, SessionConfig, Transmit};
pub use stats::{ExitReason, Stats};
