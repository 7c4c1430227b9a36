//! A minimal listener built on `proto`, for the integration tests: handshake, collect audio,
//! reports, leave. Deliberately naive (no jitter buffer): loopback does not reorder.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Audio, Connect, End, Join, Message, Packet, Report, StreamInfo};
use tokio::net::UdpSocket;

/// Generous: a 2-core machine compiling other crates in parallel can stall us for a while.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub struct TestClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

/// What a listener saw from Welcome to End.
#[derive(Debug, Default)]
pub struct Received {
    pub audio: Vec<(u64, Audio)>,
    pub end: Option<(u64, End)>,
    pub other: Vec<Message>,
}

impl TestClient {
    pub async fn new(server: SocketAddr) -> Self {
        // A big receive buffer, so a catch-up burst after a stall of this loaded machine is
        // not lost in our own socket (the kernel caps it at net.core.rmem_max).
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        let _ = s.set_recv_buffer_size(4 << 20);
        s.set_nonblocking(true).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let sock = UdpSocket::from_std(s.into()).unwrap();
        Self { sock, server }
    }

    pub async fn send(&self, msg: Message) {
        let b = proto::encode_to_bytes(&Packet::new(0, msg)).unwrap();
        self.sock.send_to(&b, self.server).await.unwrap();
    }

    pub async fn send_raw(&self, b: &[u8]) {
        self.sock.send_to(b, self.server).await.unwrap();
    }

    /// Next packet from the server, or None after `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Packet> {
        let mut buf = vec![0u8; 65536];
        loop {
            let r = tokio::time::timeout(wait, self.sock.recv_from(&mut buf)).await;
            match r {
                Err(_) => return None,
                Ok(Ok((n, from))) => {
                    assert_eq!(from, self.server);
                    assert!(n <= proto::limits::MAX_DATAGRAM);
                    return Some(proto::decode(&buf[..n]).unwrap());
                }
                Ok(Err(_)) => continue,
            }
        }
    }

    /// Next packet that is not Audio (audio in between is dropped).
    pub async fn recv_control(&self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.recv(left).await?;
            if !matches!(p.msg, Message::Audio(_)) {
                return Some(p);
            }
        }
    }

    pub fn connect_msg() -> Message {
        Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
        })
    }

    pub async fn challenge(&self) -> [u8; 16] {
        self.send(Self::connect_msg()).await;
        match self.recv_control(WAIT).await.unwrap().msg {
            Message::Challenge(c) => c.cookie,
            m => panic!("expected Challenge, got {m:?}"),
        }
    }

    /// Full handshake; returns the server's answer to Join (Welcome or Reject).
    pub async fn join(&self) -> Message {
        let cookie = self.challenge().await;
        self.send(Message::Join(Join { cookie })).await;
        self.recv_control(WAIT).await.unwrap().msg
    }

    pub async fn welcome(&self) -> StreamInfo {
        match self.join().await {
            Message::Welcome(w) => w,
            m => panic!("expected Welcome, got {m:?}"),
        }
    }

    /// Collects everything until End (or `wait` of silence), reporting every 500 ms.
    pub async fn collect_until_end(&self, wait: Duration) -> Received {
        let mut r = Received::default();
        let mut last_report = tokio::time::Instant::now();
        loop {
            if last_report.elapsed() > Duration::from_millis(500) {
                last_report = tokio::time::Instant::now();
                self.send(Message::Report(Report::default())).await;
            }
            let Some(p) = self.recv(wait).await else {
                return r;
            };
            match p.msg {
                Message::Audio(a) => r.audio.push((p.seq, a)),
                Message::End(e) => {
                    r.end = Some((p.seq, e));
                    return r;
                }
                m => r.other.push(m),
            }
        }
    }
}

/// Interleaved samples of the audio datagrams, in order.
pub fn samples(audio: &[(u64, Audio)]) -> Vec<i16> {
    let mut out = Vec::new();
    for (_, a) in audio {
        for c in a.pcm.chunks_exact(2) {
            out.push(i16::from_le_bytes([c[0], c[1]]));
        }
    }
    out
}
