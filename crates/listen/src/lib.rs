//! earshot client: connects to a `streamd`, plays its stream through a jitter buffer into an
//! audio device or a WAV file, and reports how the transmission went.
//!
//! The protocol logic is sans-IO and takes explicit time: [`session`] (handshake, reports, the
//! end of the stream, every timeout) composes [`jitter`] (reorder, conceal, rebuffer) and
//! [`stats`] (counters, RFC 3550 jitter). [`sink`] holds the outputs behind one trait (the
//! virtual ones run on the caller's clock), [`status`] renders the live status line, and
//! [`stay`] is the rejoin policy of `--stay`, and
//! [`client`] is the thin tokio shell that drives them; the `listen` binary parses flags and
//! calls [`client::run`].
#![forbid(unsafe_code)]

pub mod client;
pub mod discover;
pub mod jitter;
pub mod session;
pub mod sink;
pub mod stats;
pub mod status;
pub mod stay;

pub use client::{Config, ListenError, Outcome, parse_duration, run};
pub use session::{Event, Session, SessionConfig, Transmit};
pub use stats::{ExitReason, Stats};
