//! Helpers for end-to-end tests that need more than sockets: shared so every test starts and
//! cleans up external processes the same way.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

pub mod pulse;
