//! The log budget on a real socket: a flood of Connects, bad-cookie Joins and garbage logs at
//! most `HANDSHAKE_LOG_BURST` handshake lines per summary period (and some, so the test fails if
//! logging stops), counts the rest in the summary line, and logs no line per garbage datagram.
//! Alone in its binary because it installs the global `tracing` subscriber.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{WAIT, connect_msg, fixture};
use proto::{Message, Packet};
use streamd::server::{Config, Server};

/// A `tracing` writer into a shared buffer, to count log lines.
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_handshake_and_garbage_flood_stays_within_the_log_budget() {
    use streamd::server::HANDSHAKE_LOG_BURST;
    let buf = LogBuf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    // Global, and alone in this test binary: a thread-scoped subscriber can miss lines whose
    // callsite another thread registered first.
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let cfg = Config::new(
        fixture("stereo44.mp3"),
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    );
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    // A flooder, not a listener: hand-built datagrams from one socket.
    let f = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let encode = |m: Message| proto::encode_to_bytes(&Packet::new(0, m)).unwrap();
    const N: usize = 100;
    for i in 0..N {
        f.send_to(&encode(connect_msg()), addr).await.unwrap();
        let join = Message::Join(proto::Join::new([i as u8; 16]));
        f.send_to(&encode(join), addr).await.unwrap();
        f.send_to(&[0xAB; 64], addr).await.unwrap();
    }
    // Every Connect and every bad Join is answered with a Challenge: wait for all of them.
    let mut rbuf = [0u8; 2048];
    for i in 0..2 * N {
        let (n, _) = tokio::time::timeout(WAIT, f.recv_from(&mut rbuf))
            .await
            .unwrap_or_else(|_| panic!("challenge {i}"))
            .unwrap();
        let p = proto::decode(&rbuf[..n]).unwrap();
        assert!(matches!(p.msg, Message::Challenge(_)), "{p:?}");
    }
    stop.send(()).unwrap();
    let s = run.await.unwrap().unwrap();
    assert!(s.ignored >= N as u64, "{s:?}");
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    // Per summary period: at most the budget of handshake lines; over the run, every one of
    // the 2N either logged or counted as not logged, and the garbage only counted.
    let (mut logged, mut unlogged, mut malformed) = (0u64, 0u64, 0u64);
    let mut in_period = 0u64;
    let number_before = |line: &str, what: &str| -> u64 {
        let head = &line[..line.find(what).unwrap()];
        head.trim_end()
            .rsplit([' ', '('])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for line in text.lines() {
        if line.contains("connect from") || line.contains("invalid or expired cookie") {
            logged += 1;
            in_period += 1;
            assert!(in_period <= HANDSHAKE_LOG_BURST, "over budget:\n{text}");
        }
        if line.contains("summary:") {
            unlogged += number_before(line, " handshakes not logged");
            malformed += line
                .split("malformed ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap()
                .parse::<u64>()
                .unwrap();
            in_period = 0;
        }
    }
    assert!(logged >= 1, "nothing logged at all:\n{text}");
    assert_eq!(logged + unlogged, 2 * N as u64, "\n{text}");
    assert_eq!(malformed, N as u64, "\n{text}");
    assert!(
        text.lines().count() < 60,
        "{} lines:\n{text}",
        text.lines().count()
    );
}
