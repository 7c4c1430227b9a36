//! A validated host replaying its own `Join` (legal for the cookie's lifetime) must not flood
//! the server's log: "joined again" and "rejected" lines share the handshake budget.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use proto::{Connect, Join, Message, Packet};

/// Handshakes from `sock` and returns its valid Join datagram.
fn join_bytes(sock: &UdpSocket, server: SocketAddr) -> Vec<u8> {
    let pad = proto::limits::MIN_CONNECT_LEN - proto::limits::HEADER_LEN - 1 - 8;
    let connect = Packet::new(
        0,
        Message::Connect(Connect {
            max_version: 1,
            padding: vec![0; pad].into(),
        }),
    );
    let mut b = BytesMut::new();
    proto::encode(&connect, &mut b).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + SLOW;
    let mut buf = [0u8; 9000];
    loop {
        assert!(Instant::now() < deadline, "no Challenge");
        sock.send_to(&b, server).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(Packet {
                msg: Message::Challenge(c),
                ..
            }) = proto::decode(&buf[..n])
        {
            let mut j = BytesMut::new();
            proto::encode(
                &Packet::new(1, Message::Join(Join { cookie: c.cookie })),
                &mut j,
            )
            .unwrap();
            return j.to_vec();
        }
    }
}

#[test]
fn replayed_joins_do_not_flood_the_log() {
    let mut server = Server::start(&demo_clip(), &["--max-clients", "1", "--loop"]);
    let accepted = UdpSocket::bind("127.0.0.1:0").unwrap();
    let refused = UdpSocket::bind("127.0.0.1:0").unwrap();
    let join_a = join_bytes(&accepted, server.addr);
    let join_b = join_bytes(&refused, server.addr);
    accepted.send_to(&join_a, server.addr).unwrap();
    assert!(server.proc.wait_for_line("accepted", SLOW).is_some());
    const REPLAYS: usize = 3_000;
    for i in 0..REPLAYS {
        accepted.send_to(&join_a, server.addr).unwrap();
        refused.send_to(&join_b, server.addr).unwrap();
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    server.proc.signal("INT");
    assert_eq!(server.proc.exit_code(SLOW), 0);
    let log = server.proc.stderr();
    let lines = log
        .lines()
        .filter(|l| l.contains("joined again") || l.contains("rejected"))
        .count();
    // Both kinds of reply did happen thousands of times; the log holds at most one summary
    // period's budget of them (streamd::server::HANDSHAKE_LOG_BURST = 20), with room for a
    // period boundary.
    assert!(lines >= 1, "no rejoin or reject logged at all:\n{log}");
    assert!(
        lines <= 2 * 20 + 5,
        "{lines} lines for {} replayed joins",
        2 * REPLAYS
    );
}
