//! The send path over loopback: every live listener gets every datagram in order, a dead one
//! (ICMP port unreachable) and a full socket buffer never stop the others, and nothing blocks.
//! Every path (sendmmsg + GSO, sendmmsg, send_to) delivers exactly the same bytes in the same
//! order to every listener, including ticks whose last datagram is short.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use streamd::fanout::{Fanout, SendPath};
use tokio::net::UdpSocket;

const PATHS: [SendPath; 3] = [SendPath::Gso, SendPath::Sendmmsg, SendPath::PerDatagram];

/// The ticks sent in the path tests: a usual 20 ms tick at 44.1 kHz stereo (two full datagrams
/// and a short one), an all-full tick, a lone full and a lone short datagram, and a catch-up
/// tick longer than one GSO super-datagram may be (46 segments of 1388 bytes), with a short
/// last. Every datagram's bytes are distinct (its global index and position), so any
/// reordering, merging or truncation shows.
fn ticks() -> Vec<Vec<Bytes>> {
    let shapes: [&[usize]; 5] = [
        &[1388, 1388, 812],
        &[1388, 1388, 1388],
        &[1388],
        &[600],
        &[1388; 60],
    ];
    let mut n = 0u32;
    let mut out = Vec::new();
    for shape in shapes {
        let mut tick: Vec<usize> = shape.to_vec();
        if tick.len() == 60 {
            tick.push(100);
        }
        out.push(
            tick.iter()
                .map(|&len| {
                    n += 1;
                    let v: Vec<u8> = (0..len)
                        .map(|i| (n.wrapping_mul(31).wrapping_add(i as u32) % 251) as u8)
                        .collect();
                    Bytes::from(v)
                })
                .collect(),
        );
    }
    out
}

async fn listeners(n: usize) -> (Vec<UdpSocket>, Vec<SocketAddr>) {
    let mut socks = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Room for the 61-datagram catch-up tick (each small skb costs ~2.3 kB of buffer).
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(1 << 20)
            .unwrap();
        s.set_nonblocking(true).unwrap();
        addrs.push(s.local_addr().unwrap());
        socks.push(UdpSocket::from_std(s).unwrap());
    }
    (socks, addrs)
}

/// Everything waiting on `s` now (loopback delivers before the send returns).
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Ok(n) = s.try_recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

async fn deliver_all_ticks(path: SendPath, n: usize, dead_every: usize) {
    let (tx, _) = sock().await;
    let (socks, mut dests) = listeners(n).await;
    // Closed ports among the listeners (see `dead_port`).
    let mut dead = 0;
    let mut held = Vec::new();
    if dead_every > 0 {
        for i in (0..dests.len()).step_by(dead_every) {
            let (d, a) = dead_port();
            held.push(d);
            dests.insert(i, a);
            dead += 1;
        }
        // And one address the kernel refuses outright (port 0: EINVAL): mid-batch, so
        // sendmmsg returns a partial count and the send must resume after it.
        dests.insert(dests.len() / 2, SocketAddr::from(([127, 0, 0, 1], 0)));
        dead += 1;
    }
    let mut f = Fanout::with_path(path);
    let ticks = ticks();
    let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); socks.len()];
    let mut due = 0;
    for tick in &ticks {
        f.send(&tx, tick, &dests);
        // Read until every listener holds everything sent so far, or the deadline passes (then
        // the count assertion below says who is short).
        due += tick.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            for (g, s) in got.iter_mut().zip(&socks) {
                g.extend(drain(s));
            }
            if got.iter().all(|g| g.len() >= due) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if cfg!(target_os = "linux") {
        // Non-vacuity: the path asked for is the path used (GSO on any kernel since 4.18).
        assert_eq!(f.path(), path, "fell back from {path:?}");
    }
    let want: Vec<Vec<u8>> = ticks.iter().flatten().map(|b| b.to_vec()).collect();
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.len(),
            want.len(),
            "{path:?}: listener {i} got {} datagrams",
            g.len()
        );
        assert!(
            g == &want,
            "{path:?}: listener {i} got other bytes or another order"
        );
    }
    let s = f.stats();
    let per_listener = want.len() as u64;
    // Every send is accounted for, as sent or dropped (a closed port on loopback usually
    // takes the datagram and answers with an ICMP error that an unconnected socket ignores).
    assert_eq!(
        s.datagrams + s.dropped(),
        per_listener * (n + dead) as u64,
        "{path:?} {s:?}"
    );
    assert!(s.datagrams >= per_listener * n as u64, "{path:?} {s:?}");
    if dead_every > 0 {
        // The refused address lost its datagrams, and only those (per datagram: GSO falls
        // back to plain sends for that listener to tell a bad address from a bad route).
        assert_eq!(s.dropped(), per_listener, "{path:?} {s:?}");
    }
    if path == SendPath::Gso && cfg!(target_os = "linux") && dead == 0 {
        // One sendmmsg per super-datagram for up to MAX_BATCH listeners: the catch-up tick
        // takes two super-datagrams; nothing went out one datagram a call.
        let batches = n.div_ceil(streamd::fanout::MAX_BATCH) as u64;
        assert_eq!(s.syscalls, batches * 6, "{s:?}");
    }
}

#[tokio::test]
async fn every_path_delivers_the_same_bytes_in_order_to_150_listeners() {
    for path in PATHS {
        deliver_all_ticks(path, 150, 0).await;
    }
}

#[tokio::test]
async fn batches_larger_than_one_call_deliver_everything() {
    // 300 listeners: more than MAX_BATCH, so every super-datagram takes two calls.
    deliver_all_ticks(SendPath::Gso, 300, 0).await;
    deliver_all_ticks(SendPath::Sendmmsg, 300, 0).await;
}

#[tokio::test]
async fn dead_ports_among_100_listeners_do_not_stop_the_rest_on_any_path() {
    for path in PATHS {
        deliver_all_ticks(path, 100, 10).await;
    }
}

/// A UDP port on 127.0.0.1 that stays dead for as long as the returned socket lives: the socket
/// holds the port (no other test in this binary can bind it, not even through port 0), but it
/// is connected to another address, so the kernel delivers nothing from anyone else to it and
/// answers with ICMP port unreachable, exactly as for a closed port. A port bound and then
/// closed would not do: a test running in parallel may be given it by port 0.
fn dead_port() -> (std::net::UdpSocket, SocketAddr) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect("127.0.0.1:9").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

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
    // A port no socket takes datagrams on: sends to it provoke ICMP port unreachable.
    let (held, dead) = dead_port();
    let datagrams = [Bytes::from_static(b"one"), Bytes::from_static(b"two")];
    let dests = [dead, a1, dead, a2, dead];
    let mut f = Fanout::new();
    // Back to back: on loopback each send to the dead port is answered (ICMP port unreachable)
    // before the send returns, so every later send meets whatever error that left pending.
    for _ in 0..3 {
        f.send(&tx, &datagrams, &dests);
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
    // The dead port really was dead: nothing reached the socket holding it.
    held.set_nonblocking(true).unwrap();
    assert!(held.recv(&mut buf).is_err(), "the dead port received");
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
