//! What the integration tests share: the fixtures, and the listener they stream to, which is
//! `listen`'s real session on a socket ([`testkit::peer`]), keeping every datagram it got.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Connect, Message, StreamInfo};
use testkit::peer::{Listener, PeerConfig};

/// Generous: a 2-core machine compiling other crates in parallel can stall us for a while.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A listener with `listen`'s defaults that has joined `server`: its `Welcome`.
pub async fn join(server: SocketAddr) -> (Listener, StreamInfo) {
    join_with(server, PeerConfig::default()).await
}

/// A listener configured as `config` that has joined `server`: its `Welcome`.
pub async fn join_with(server: SocketAddr, config: PeerConfig) -> (Listener, StreamInfo) {
    let l = Listener::join(server, config).unwrap();
    let w = l
        .wait_async(WAIT, |s| s.joined())
        .await
        .expect("no answer to the handshake")
        .unwrap_or_else(|e| panic!("not joined: {e:?}"));
    (l, w)
}

/// Waits until `l` has received at least `n` Audio datagrams.
pub async fn audio(l: &Listener, n: usize) {
    l.wait_async(WAIT, move |s| (s.audio.len() >= n).then_some(()))
        .await
        .unwrap_or_else(|| panic!("fewer than {n} audio datagrams"));
}

/// A `Connect` padded as the protocol asks, for hand-built handshakes.
pub fn connect_msg() -> Message {
    Message::Connect(Connect {
        max_version: proto::VERSION,
        padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
    })
}
