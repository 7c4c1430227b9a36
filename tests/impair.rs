//! The impairment proxy in-process over loopback: a tiny server and tiny listeners speaking
//! proto v1 through `testkit::impair::Proxy`, checking that the proxy's report equals what the
//! listeners really received, that control messages pass untouched by default, and that every
//! client gets its own upstream address.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use proto::{Audio, Challenge, Connect, End, EndReason, Message, Packet};
use testkit::impair::{Impairment, Proxy, ProxyReport};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Audio datagrams per server tick: several per tick, as with a real stream at a small MTU.
const PER_TICK: u64 = 3;
/// Server tick.
const TICK: Duration = Duration::from_millis(10);
/// A listener gives up this long after the last datagram (generous: loaded 2-core machine).
const QUIET: Duration = Duration::from_secs(3);

fn enc(p: Packet) -> Bytes {
    proto::encode_to_bytes(&p).unwrap()
}

fn connect() -> Bytes {
    enc(Packet::new(
        1,
        Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0; 128]),
        }),
    ))
}

fn challenge() -> Bytes {
    enc(Packet::new(
        1,
        Message::Challenge(Challenge { cookie: [7; 16] }),
    ))
}

fn end(last: u64) -> Bytes {
    enc(Packet::new(
        2,
        Message::End(End {
            reason: EndReason::Finished,
            last_seq: Some(last),
        }),
    ))
}

fn audio(seq: u64) -> Bytes {
    let pcm: Vec<u8> = (0..64).map(|i| (seq as u8).wrapping_add(i)).collect();
    enc(Packet::new(
        seq,
        Message::Audio(Audio {
            ts: seq * 16,
            payload: Bytes::from(pcm),
        }),
    ))
}

/// A one-stream server: answers each new peer's first datagram with a `Challenge`, then sends
/// it `n` audio datagrams (`PER_TICK` per `TICK`) and three `End`s 50 ms apart. Returns every
/// datagram it received, with the sender.
async fn server(sock: UdpSocket, peers: usize, n: u64) -> Vec<(SocketAddr, Bytes)> {
    let sock = std::sync::Arc::new(sock);
    let mut got = Vec::new();
    let mut streams = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut seen = HashSet::new();
    while seen.len() < peers {
        let (len, from) = timeout(QUIET, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.push((from, Bytes::copy_from_slice(&buf[..len])));
        if seen.insert(from) {
            let s = sock.clone();
            streams.push(tokio::spawn(async move {
                s.send_to(&challenge(), from).await.unwrap();
                let mut tick = tokio::time::interval(TICK);
                for seq in 0..n {
                    if seq % PER_TICK == 0 {
                        tick.tick().await;
                    }
                    s.send_to(&audio(seq), from).await.unwrap();
                }
                for _ in 0..3 {
                    s.send_to(&end(n - 1), from).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }
    // Keep listening briefly for the listeners' further control messages.
    while let Ok(Ok((len, from))) =
        timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        got.push((from, Bytes::copy_from_slice(&buf[..len])));
    }
    for s in streams {
        s.await.unwrap();
    }
    got
}

/// What one listener received, in order.
struct Heard {
    /// Its own address (the proxy's report is keyed by it).
    addr: SocketAddr,
    /// Every datagram, raw, in arrival order.
    raw: Vec<Bytes>,
}

impl Heard {
    fn audio_seqs(&self) -> Vec<u64> {
        self.raw
            .iter()
            .filter_map(|b| match proto::decode(b) {
                Ok(p) if matches!(p.msg, Message::Audio(_)) => Some(p.seq),
                _ => None,
            })
            .collect()
    }

    fn control(&self) -> Vec<Bytes> {
        self.raw
            .iter()
            .filter(|b| {
                !matches!(
                    proto::decode(b),
                    Ok(Packet {
                        msg: Message::Audio(_),
                        ..
                    })
                )
            })
            .cloned()
            .collect()
    }
}

/// A listener: sends `Connect` (and a `Join`-like second datagram) to the proxy and records
/// everything until three `End`s or `QUIET` of silence.
/// A listener through the proxy; `contact` fires with the first answer it gets (so the proxy has
/// seen this listener by then).
async fn listener(proxy: SocketAddr, contact: oneshot::Sender<()>) -> Heard {
    let mut contact = Some(contact);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    sock.send_to(&connect(), proxy).await.unwrap();
    let mut raw = Vec::new();
    let mut ends = 0;
    let mut buf = vec![0u8; 65536];
    while ends < 3 {
        let Ok(r) = timeout(QUIET, sock.recv_from(&mut buf)).await else {
            break;
        };
        let (len, _) = r.unwrap();
        let b = Bytes::copy_from_slice(&buf[..len]);
        if let Ok(Packet {
            msg: Message::End(_),
            ..
        }) = proto::decode(&b)
        {
            ends += 1;
        }
        if raw.is_empty() {
            if let Some(c) = contact.take() {
                let _ = c.send(());
            }
            // Answer the challenge, as a listener would, so upstream traffic is seen too.
            sock.send_to(&connect(), proxy).await.unwrap();
        }
        raw.push(b);
    }
    Heard { addr, raw }
}

/// The listener's statistics, defined independently of the proxy's code: a seq already
/// received is a duplicate (only); else a seq lower than the highest received is out of order.
#[derive(Debug, PartialEq, Eq)]
struct ListenerStats {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    lost: u64,
}

fn listener_stats(seqs: &[u64]) -> ListenerStats {
    let mut seen = HashSet::new();
    let (mut dup, mut ooo, mut hi) = (0, 0, None::<u64>);
    for &s in seqs {
        if !seen.insert(s) {
            dup += 1;
            continue;
        }
        if hi.is_some_and(|h| s < h) {
            ooo += 1;
        }
        hi = Some(hi.map_or(s, |h| h.max(s)));
    }
    let lo = seen.iter().min().copied().unwrap_or(0);
    let expected = hi.map_or(0, |h| h - lo + 1);
    ListenerStats {
        received: seen.len() as u64,
        duplicates: dup,
        out_of_order: ooo,
        lost: expected - seen.len() as u64,
    }
}

/// Server, proxy and `listeners` listeners on loopback; returns the report, what each
/// listener heard and what the server received.
async fn run(
    imp: Impairment,
    listeners: usize,
    n: u64,
) -> (ProxyReport, Vec<Heard>, Vec<(SocketAddr, Bytes)>) {
    let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let srv_addr = srv.local_addr().unwrap();
    let server = tokio::spawn(server(srv, listeners, n));
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), srv_addr, imp)
        .await
        .unwrap();
    let paddr = proxy.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    let mut heard = Vec::new();
    for _ in 0..listeners {
        // One after the other: the first contact order fixes each client's engine stream.
        let (contact, contacted) = oneshot::channel();
        heard.push(tokio::spawn(listener(paddr, contact)));
        // Dropped unsent only if this listener never heard back (then the test fails on
        // its counts anyway).
        let _ = contacted.await;
    }
    let mut out = Vec::new();
    for h in heard {
        out.push(h.await.unwrap());
    }
    let got = server.await.unwrap();
    stop.send(()).unwrap();
    let report = timeout(Duration::from_secs(10), proxy)
        .await
        .unwrap()
        .unwrap();
    (report, out, got)
}

fn heavy(seed: u64) -> Impairment {
    Impairment {
        loss: 0.08,
        burst: Some(3.0),
        jitter: Duration::from_millis(12),
        reorder: 0.05,
        dup: 0.05,
        seed,
        impair_control: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_equals_what_listeners_received() {
    let n = 600;
    let (report, heard, _) = run(heavy(7), 2, n).await;
    assert_eq!(report.clients.len(), 2);
    for h in &heard {
        let c = report.client(h.addr).unwrap();
        let a = &c.downstream.audio;
        let seqs = h.audio_seqs();
        let mine = listener_stats(&seqs);
        assert_eq!(
            mine,
            ListenerStats {
                received: a.unique_sent,
                duplicates: a.duplicates,
                out_of_order: a.out_of_order,
                lost: a.lost(),
            },
            "client {}",
            c.index
        );
        // Every datagram the proxy says it sent arrived, in the same number.
        assert_eq!(seqs.len() as u64, a.sent);
        assert_eq!(
            seqs, a.sent_seqs,
            "arrival order is emission order on loopback"
        );
        assert_eq!(a.received, n);
        // Dropped seqs are exactly the ones that never arrived.
        let got: HashSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = (0..n).filter(|s| !got.contains(s)).collect();
        assert_eq!(missing, a.dropped_seqs);
        assert_eq!(a.lost_between(0, n - 1), missing.len() as u64);
        // Duplicated seqs are exactly the repeated ones.
        let mut count: HashMap<u64, u64> = HashMap::new();
        for s in &seqs {
            *count.entry(*s).or_default() += 1;
        }
        let mut repeated: Vec<u64> = count
            .iter()
            .flat_map(|(&s, &k)| std::iter::repeat_n(s, (k - 1) as usize))
            .collect();
        repeated.sort_unstable();
        let mut dups = a.duplicated_seqs.clone();
        dups.sort_unstable();
        assert_eq!(repeated, dups);
        // With these settings all three impairments must have happened.
        assert!(!a.dropped_seqs.is_empty() && a.duplicates > 0 && a.out_of_order > 0);
        // And the End still came after all audio.
        let first_end = h
            .raw
            .iter()
            .position(|b| {
                matches!(
                    proto::decode(b),
                    Ok(Packet {
                        msg: Message::End(_),
                        ..
                    })
                )
            })
            .unwrap();
        assert!(h.raw[first_end..].iter().all(|b| {
            proto::decode(b)
                .map(|p| !matches!(p.msg, Message::Audio(_)))
                .unwrap_or(true)
        }));
    }
    // The two listeners were impaired differently (own engine streams).
    let d0 = &report.clients[0].downstream.audio.dropped_seqs;
    let d1 = &report.clients[1].downstream.audio.dropped_seqs;
    assert_ne!(d0, d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_decisions_over_sockets() {
    let (r1, _, _) = run(heavy(11), 1, 300).await;
    let (r2, _, _) = run(heavy(11), 1, 300).await;
    let (a1, a2) = (&r1.clients[0].downstream, &r2.clients[0].downstream);
    assert_eq!(a1.audio.dropped_seqs, a2.audio.dropped_seqs);
    let sorted = |v: &Vec<u64>| {
        let mut v = v.clone();
        v.sort_unstable();
        v
    };
    assert_eq!(
        sorted(&a1.audio.duplicated_seqs),
        sorted(&a2.audio.duplicated_seqs)
    );
    assert_eq!(a1.counts.reordered, a2.counts.reordered);
    assert_eq!(a1.counts.delayed, a2.counts.delayed);
    let (r3, _, _) = run(heavy(12), 1, 300).await;
    assert_ne!(
        r3.clients[0].downstream.audio.dropped_seqs,
        a1.audio.dropped_seqs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_untouched_by_default_and_one_upstream_address_per_client() {
    let all_lost = Impairment {
        loss: 1.0,
        jitter: Duration::from_millis(30),
        dup: 1.0,
        ..Impairment::none()
    };
    let (report, heard, got) = run(all_lost, 2, 50).await;
    for h in &heard {
        assert!(h.audio_seqs().is_empty(), "every audio datagram dropped");
        assert_eq!(
            h.control(),
            vec![challenge(), end(49), end(49), end(49)],
            "control byte for byte, once each, in order"
        );
        let c = report.client(h.addr).unwrap();
        assert_eq!(c.downstream.audio.dropped_seqs, (0..50).collect::<Vec<_>>());
        assert_eq!(c.downstream.counts.sent, 4);
        assert_eq!(c.upstream.counts.received, 2);
        assert_eq!(c.upstream.counts.sent, 2);
    }
    // The server heard each listener's two datagrams, unchanged, from two distinct addresses
    // that are not the listeners' own.
    let from: HashSet<SocketAddr> = got.iter().map(|(a, _)| *a).collect();
    assert_eq!(from.len(), 2);
    for h in &heard {
        assert!(!from.contains(&h.addr));
    }
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|(_, b)| *b == connect()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impair_control_drops_control_too() {
    let all_lost = Impairment {
        loss: 1.0,
        impair_control: true,
        ..Impairment::none()
    };
    let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        srv.local_addr().unwrap(),
        all_lost,
    )
    .await
    .unwrap();
    let paddr = proxy.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    let cli = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    cli.send_to(&connect(), paddr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (_, via) = timeout(QUIET, srv.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    srv.send_to(&challenge(), via).await.unwrap();
    assert!(
        timeout(Duration::from_millis(500), cli.recv_from(&mut buf))
            .await
            .is_err(),
        "the challenge must be dropped"
    );
    stop.send(()).unwrap();
    let r = task.await.unwrap();
    assert_eq!(r.downstream.dropped, 1);
    assert_eq!(r.downstream.sent, 0);
    assert_eq!(
        r.upstream_counts.sent, 1,
        "client → server is never impaired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_what_is_still_delayed() {
    let slow = Impairment {
        jitter: Duration::from_secs(5),
        seed: 3,
        ..Impairment::none()
    };
    let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        srv.local_addr().unwrap(),
        slow,
    )
    .await
    .unwrap();
    let paddr = proxy.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    let cli = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    cli.send_to(&connect(), paddr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (_, via) = timeout(QUIET, srv.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    for seq in 0..20 {
        srv.send_to(&audio(seq), via).await.unwrap();
    }
    // Loopback queued them on the proxy's socket within each send: once that queue is empty,
    // the proxy has read all 20 (and holds them, 5 s of jitter away from sending).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while udp_rx_queue(via) != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never read its socket"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let r = timeout(Duration::from_secs(3), task)
        .await
        .unwrap()
        .unwrap();
    let a = &r.clients[0].downstream.audio;
    assert_eq!((a.received, a.sent, a.unique_sent), (20, 20, 20));
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let (len, _) = timeout(QUIET, cli.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seqs.push(proto::decode(&buf[..len]).unwrap().seq);
    }
    let stats = listener_stats(&seqs);
    assert_eq!(stats.out_of_order, a.out_of_order);
    assert_eq!(stats.received, 20);
}

/// Bytes queued on the IPv4 UDP socket bound to `addr`, from /proc/net/udp (`None` if no such
/// socket is listed).
fn udp_rx_queue(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(a) = addr else { return None };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()))
            .then(|| f.get(4)?.split(':').nth(1))
            .flatten()
            .and_then(|rx| u64::from_str_radix(rx, 16).ok())
    })
}
