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
            proto::encode(&Packet::new(1, Message::Join(Join::new(c.cookie))), &mut j).unwrap();
            return j.to_vec();
        }
    }
}

/// The lines that share the handshake log budget.
const HANDSHAKE_LINES: [&str; 4] = [
    "connect from",
    "challenged again",
    "joined again",
    "rejected",
];

#[test]
fn replayed_joins_do_not_flood_the_log() {
    use streamd::server::{HANDSHAKE_LOG_BURST, SUMMARY_PERIOD};
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
            // Pacing: the replays are read by the server, not dropped by a full socket buffer.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The server reads its socket in order: once a Connect sent after the replays is answered,
    // every replay was handled.
    let _ = join_bytes(&UdpSocket::bind("127.0.0.1:0").unwrap(), server.addr);
    server.proc.signal("INT");
    assert_eq!(server.proc.exit_code(SLOW), 0);
    // Summary periods the server lived through: each logs at most HANDSHAKE_LOG_BURST lines.
    let periods = server.proc.started.elapsed().as_secs() / SUMMARY_PERIOD.as_secs() + 1;
    let log = server.proc.stderr();
    let lines = log
        .lines()
        .filter(|l| HANDSHAKE_LINES.iter().any(|h| l.contains(h)))
        .count() as u64;
    // What the summaries counted without logging ("…, N handshakes not logged").
    let unlogged: u64 = log
        .lines()
        .filter_map(|l| {
            l.split(" handshakes not logged")
                .next()
                .filter(|_| l.contains("summary:"))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // Thousands of each kind of reply happened: every period logs its budget in full before
    // only counting, so at least one budget's worth is logged, and at most one per period.
    assert!(
        lines >= HANDSHAKE_LOG_BURST,
        "{lines} handshake lines, fewer than one budget ({HANDSHAKE_LOG_BURST}):\n{log}"
    );
    assert!(
        lines <= periods * HANDSHAKE_LOG_BURST,
        "{lines} lines in {periods} summary period(s) for {} replayed joins",
        2 * REPLAYS
    );
    // The rest were counted, not lost: logged + counted is every replay the server read (the
    // kernel may drop a few on a loaded machine, never more than a tenth).
    // The three Connects (two listeners', the final one) share the budget.
    let handled = lines + unlogged;
    let sent = 2 * REPLAYS as u64 + 3;
    assert!(
        handled <= sent && handled >= sent * 9 / 10,
        "{lines} logged + {unlogged} counted for {} replayed joins",
        2 * REPLAYS
    );
}
