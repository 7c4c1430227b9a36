//! earshot server: streams one audio file over UDP to many listeners.
//!
//! Sans-IO cores under a thin tokio shell (as quinn-proto/quinn and str0m):
//! - [`source`]: symphonia decoding into interleaved s16 frames, pulled on demand.
//! - [`pacing`]: the media clock that says how many frames are due at `now`, without drift.
//! - [`sessions`]: the listener table: stateless cookie handshake, capacity, keepalive,
//!   eviction, leave, and the anti-amplification rule.
//! - [`fanout`]: "send these datagrams to these addresses", non-blocking, batched: `sendmmsg`
//!   across listeners and UDP GSO within a listener's tick on Linux, `send_to` elsewhere.
//! - [`endpoint`]: the whole server as one sans-IO state machine over the three above (ticks,
//!   Audio datagrams, End ×3, start, loop, evictions, replies); `handle` / `poll_transmit` /
//!   `poll_timeout` / `handle_timeout` / `shutdown`.
//! - [`rtp`]: the stream as RTP (L16) beside the listeners, with RTCP sender reports, the SDP a
//!   player opens and SAP announcements; sans-IO builders plus the shell's socket piece.
//! - [`multicast`]: `--multicast`: the group value, which listeners the group serves, and the
//!   socket that sends each tick once to the group.
//! - [`relay`]: `--relay-from`: joins another server with listen's session and serves its
//!   stream again, each hop with its own handshake, capacity and statistics.
//! - [`roomsync`]: the room's synchronisation from the listeners' Reports, for the log.
//! - [`server`]: the tokio shell that moves bytes between the socket, one timer, the endpoint
//!   and the fan-out, and logs.
//! - [`control`]: the control plane (`--http`): JSON API, Prometheus metrics, server-sent
//!   events and a dashboard, fed by snapshots the shell publishes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod announce;
pub mod capture;
pub mod cli;
pub mod control;
pub mod endpoint;
pub mod fanout;
pub mod live;
pub mod multicast;
pub mod pacing;
pub mod relay;
pub mod roomsync;
pub mod rtp;
pub mod server;
pub mod sessions;
pub mod source;
