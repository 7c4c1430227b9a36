//! testkit: the tools earshot's examples, end-to-end tests and `cargo xtask` share, none of
//! which ships in `streamd` or `listen`:
//!
//! - [`impair`]: the impairment proxy (`examples/impair.rs`), a UDP relay that loses, delays,
//!   reorders and duplicates a server's datagrams deterministically and reports what it did;
//! - [`load`]: the load tool (`examples/load.rs`), N protocol-complete listeners in one
//!   process, and its stand-in server;
//! - [`peer`]: a real listener (`listen`'s session) on a UDP socket that also keeps every
//!   datagram the server sent it, for tests that watch the wire;
//! - [`room`]: a simulated room, one `streamd` endpoint and many `listen` sessions over a
//!   simulated network on one simulated clock, deterministic for a seed;
//! - [`playout`]: reading `listen --playout-log` files and measuring how far apart two
//!   listeners played the same frames;
//! - [`pulse`]: a private headless PulseAudio for tests that play through a real audio path;
//! - [`procfs`]: CPU, memory and socket drops of processes, from `/proc` and `getrusage`;
//! - [`install`]: system packages and Rust components, installed when we can, otherwise the
//!   exact command to run.
//!
//! Without the default `tools` feature only [`procfs`] and [`install`] are built: what
//! `cargo xtask` needs before anything else can build (it installs the ALSA headers that
//! `listen` links against).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "tools")]
pub mod impair;
pub mod install;
#[cfg(feature = "tools")]
pub mod load;
#[cfg(feature = "tools")]
pub mod peer;
#[cfg(feature = "tools")]
pub mod playout;
pub mod procfs;
#[cfg(feature = "tools")]
pub mod pulse;
#[cfg(feature = "tools")]
pub mod room;
