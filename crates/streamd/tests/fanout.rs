//! The send path over loopback: every live listener gets every datagram in order, a dead one
//! (ICMP port unreachable) and a full socket buffer never stop the others, and nothing blocks.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use streamd::fanout::Fanout;
use tokio::net::UdpSocket;

async fn sock() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

#[tokio::test]
async fn dead_listeners_do_not_stop_live_ones() {
    let (tx, _) = sock().await;
    let (r1, a1) = sock().await;
    let (r2, a2) = sock().await;
    // A port that was bound and closed: sends to it provoke ICMP port unreachable.
    let dead = {
        let (d, a) = sock().await;
        drop(d);
        a
    };
    let datagrams = [Bytes::from_static(b"one"), Bytes::from_static(b"two")];
    let dests = [dead, a1, dead, a2, dead];
    let mut f = Fanout::new();
    for _ in 0..3 {
        f.send(&tx, &datagrams, &dests);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut buf = [0u8; 16];
    for r in [&r1, &r2] {
        for _ in 0..3 {
            for want in [&b"one"[..], b"two"] {
                let n = tokio::time::timeout(Duration::from_secs(5), r.recv(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&buf[..n], want);
            }
        }
    }
    let s = f.stats();
    // Live ones got all 12; every send is accounted for as sent or dropped.
    assert!(s.datagrams >= 12, "{s:?}");
    assert_eq!(s.datagrams + s.dropped(), 3 * 2 * 5, "{s:?}");
}

#[tokio::test]
async fn an_unread_listener_never_blocks_the_sender() {
    let (tx, _) = sock().await;
    let (_r, a) = sock().await; // never reads
    let big = Bytes::from(vec![0u8; 8000]);
    let dests = [a; 64];
    let mut f = Fanout::new();
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        f.send(&tx, std::slice::from_ref(&big), &dests);
    }
    // 3200 datagrams of 8 kB into one unread socket: far beyond its buffer (loopback drops
    // them at the receiver). The loop must finish, not block, and account for every one.
    let s = f.stats();
    assert_eq!(s.datagrams + s.dropped(), 50 * 64);
    assert!(t0.elapsed() < Duration::from_secs(30));
}
