//! Hostile input while streaming: tens of thousands of random, truncated, oversized,
//! wrong-version and replayed datagrams, forged cookies, a valid `Join` replayed from another
//! address, `Report`s / `Leave`s from strangers, and `Report`s / `Leave`s with a wrong session
//! token from a joined listener's own address. The listener's audio must be unchanged, the
//! server must neither crash nor grow, no stranger may receive audio, no address may receive
//! more bytes than it sent before it is validated (PROTOCOL.md §5.2), and a wrong token neither
//! ends a session nor keeps it alive nor gets an answer. Half the flood comes from
//! tens of thousands of distinct source addresses (one per datagram, spread over 127.0.0.0/8,
//! which Linux routes to `lo`), so any state the server kept per address would show in its
//! memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Connect, EndReason, Join, Leave, LeaveReason, Message, Packet, Report, encode};
use rand::{Rng, SeedableRng};

/// What one stranger socket sent and received.
#[derive(Default, Debug)]
struct Tally {
    /// Datagrams the kernel took (a full send buffer refuses some).
    datagrams: u64,
    /// Bytes of those.
    sent: u64,
    received: u64,
    audio: u64,
    welcomes: u64,
}

/// One stranger: a socket with its own address, which drains whatever comes back.
struct Stranger {
    sock: UdpSocket,
    tally: Tally,
}

impl Stranger {
    fn new(ip: std::net::Ipv4Addr) -> Stranger {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_nonblocking(true).unwrap();
        Stranger {
            sock,
            tally: Tally::default(),
        }
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        // A full socket buffer just drops this one: the flood is best effort.
        if self.sock.send_to(bytes, to).is_ok() {
            self.tally.datagrams += 1;
            self.tally.sent += bytes.len() as u64;
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 9000];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            self.tally.received += n as u64;
            match proto::decode(&buf[..n]).map(|p| p.msg) {
                Ok(Message::Audio(_)) => self.tally.audio += 1,
                Ok(Message::Welcome(_)) => self.tally.welcomes += 1,
                _ => {}
            }
        }
    }
}

fn enc(p: Packet) -> Bytes {
    let mut b = BytesMut::new();
    encode(&p, &mut b).unwrap();
    b.freeze()
}

fn connect() -> Bytes {
    let pad = MIN_CONNECT_LEN - proto::limits::HEADER_LEN - 1 - 8;
    enc(Packet::new(
        0,
        Message::Connect(Connect {
            max_version: proto::VERSION,
            padding: vec![0; pad].into(),
        }),
    ))
}

/// A real handshake from `s`: returns its valid Join bytes (the cookie is bound to `s`'s
/// address).
fn handshake_join(s: &mut Stranger, server: SocketAddr) -> Bytes {
    s.send(server, &connect());
    let deadline = Instant::now() + SLOW;
    let mut buf = [0u8; 9000];
    s.sock.set_nonblocking(false).unwrap();
    s.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let join = loop {
        assert!(Instant::now() < deadline, "no Challenge from the server");
        let Ok((n, _)) = s.sock.recv_from(&mut buf) else {
            s.send(server, &connect());
            continue;
        };
        s.tally.received += n as u64;
        if let Ok(Packet {
            msg: Message::Challenge(c),
            ..
        }) = proto::decode(&buf[..n])
        {
            break enc(Packet::new(1, Message::Join(Join::new(c.cookie))));
        }
    };
    s.sock.set_nonblocking(true).unwrap();
    join
}

/// How much the server's resident memory may grow under the flood.
const RSS_SLACK_KIB: u64 = 2 * 1024;

/// The server's `--client-timeout`: the victim's eviction comes this long after its Join.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// A joined listener that goes quiet, and datagrams forged in its name from its own address.
struct Victim {
    peer: testkit::peer::Listener,
    /// When its Welcome arrived.
    joined: Instant,
    /// A `Report` and a `Leave` with a wrong token, and a `Report` with the zero token.
    forged: [Bytes; 3],
    /// Forged datagrams sent while it was joined (as far as it knew).
    sent: u64,
    /// When it first saw its `End`.
    ended: Option<Instant>,
}

impl Victim {
    fn join(server: SocketAddr) -> Victim {
        let config = testkit::peer::PeerConfig {
            mute_after_join: true,
            timeout: SLOW,
            ..Default::default()
        };
        let peer = testkit::peer::Listener::join(server, config).unwrap();
        let token = peer
            .wait(SLOW, testkit::peer::Seen::token)
            .expect("the victim was not welcomed");
        let joined = Instant::now();
        let mut wrong = token;
        wrong[0] ^= 0xff;
        let report = |token| {
            enc(Packet::new(
                3,
                Message::Report(Report {
                    token,
                    received: 1,
                    ..Report::default()
                }),
            ))
        };
        let leave = enc(Packet::new(
            4,
            Message::Leave(Leave {
                token: wrong,
                reason: LeaveReason::Interrupted,
            }),
        ));
        Victim {
            peer,
            joined,
            forged: [report(wrong), leave, report([0; proto::TOKEN_LEN])],
            sent: 0,
            ended: None,
        }
    }

    /// Sends the forged datagrams from the victim's address while it is joined (no `End`
    /// seen yet); false once it has been ended.
    fn forge(&mut self) -> bool {
        if self.peer.seen().end().is_some() {
            self.ended.get_or_insert_with(Instant::now);
            return false;
        }
        for d in &self.forged {
            if self.peer.send_raw(d).is_ok() {
                self.sent += 1;
            }
        }
        true
    }
}

#[test]
fn hostile_traffic_changes_nothing_for_a_listener() {
    let clip = demo_clip();
    let (_, expected) = streamd::source::decode_all(&clip).unwrap();
    let dir = tempdir();
    let timeout = format!("{}s", CLIENT_TIMEOUT.as_secs());
    let mut server = Server::start(&clip, &["--client-timeout", &timeout]);
    let addr = server.addr;
    let mut listener = Listener::start(addr, dir.path(), "l", &["--latency", "300ms"]);
    server
        .proc
        .wait_for_line("accepted", SLOW)
        .expect("listener accepted");
    // Streaming in its steady state: the listener plays.
    wait_for_audio(&listener);
    let rss_before = rss_kib(server.proc.pid());
    let mut victim = Victim::join(addr);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0xea5);
    // Strangers that stay for the whole flood, each on its own address, so what each receives
    // can be held against what it sent.
    let mut strangers: Vec<Stranger> = (0..16)
        .map(|i| Stranger::new(std::net::Ipv4Addr::new(127, 1, 0, 1 + i)))
        .collect();
    // A legitimate handshake from socket 0, whose Join the others replay. Socket 0 itself is
    // validated only if it sends that Join, which it never does.
    let join = handshake_join(&mut strangers[0], addr);
    let valid_audio_like = {
        let mut b = BytesMut::new();
        proto::encode_audio(1, 0, &[0; 64], &mut b);
        b.freeze()
    };
    let report = enc(Packet::new(3, Message::Report(Report::default())));
    let leave = enc(Packet::new(
        4,
        Message::Leave(Leave {
            token: [0; proto::TOKEN_LEN],
            reason: LeaveReason::Interrupted,
        }),
    ));

    const ROUNDS: usize = 2_000;
    const PER_ROUND: usize = 16; // 32,000 datagrams from the strangers over ~4 s
    // And as many again, each from a fresh address (127.2.0.1 onwards), one datagram each.
    let mut passers_by = 0u64;
    let mut passer_datagrams = 0u64;
    for round in 0..ROUNDS {
        for k in 0..PER_ROUND {
            let datagram: Vec<u8> = match k % 8 {
                0 => (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect(),
                1 => {
                    let mut v = connect().to_vec();
                    v.truncate(rng.random_range(0..v.len()));
                    v
                }
                2 => vec![0x45; 8192 + rng.random_range(1..800)],
                3 => {
                    let mut v = connect().to_vec();
                    // Any version but this one.
                    v[2] = rng.random_range(0..=254u8);
                    if v[2] >= proto::VERSION {
                        v[2] += 1;
                    }
                    v
                }
                4 => join.to_vec(), // valid Join replayed from another address
                5 => {
                    let mut cookie = [0u8; proto::COOKIE_LEN];
                    rng.fill(&mut cookie);
                    enc(Packet::new(1, Message::Join(Join::new(cookie)))).to_vec()
                }
                6 => {
                    if round % 2 == 0 {
                        report.to_vec()
                    } else {
                        leave.to_vec()
                    }
                }
                _ => valid_audio_like.to_vec(), // server-only type from a stranger
            };
            let s = 1 + (round * PER_ROUND + k) % (strangers.len() - 1);
            strangers[s].send(addr, &datagram);
            // A passer-by: a fresh address sends one datagram (a Connect, a replayed Join, a
            // Report, …: whatever might make a server remember it) and is never seen again.
            passers_by += 1;
            let n = u32::try_from(passers_by).unwrap();
            let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([127, 2, 0, 0]) + n);
            let sock = UdpSocket::bind((ip, 0)).unwrap();
            let what: &[u8] = match k % 4 {
                0 => &connect(),
                1 => &join,
                2 => &report,
                _ => &datagram,
            };
            if sock.send_to(what, addr).is_ok() {
                passer_datagrams += 1;
            }
        }
        if round % 50 == 0 {
            strangers.iter_mut().for_each(Stranger::drain);
        }
        if round % 10 == 0 {
            victim.forge();
        }
        // Pacing, not synchronisation: the flood is spread over seconds of streaming, so the
        // server's socket buffer is not simply full and the flood is read, not dropped.
        std::thread::sleep(Duration::from_micros(2_000));
    }
    // The server reads its one socket in order: once a Connect sent now is answered, every
    // datagram of the flood before it was handled and its answer is in the strangers' sockets.
    let _ = handshake_join(
        &mut Stranger::new(std::net::Ipv4Addr::new(127, 1, 0, 200)),
        addr,
    );
    strangers.iter_mut().for_each(Stranger::drain);
    let rss_after = rss_kib(server.proc.pid());
    // Forged Reports are no keepalive: however long they keep coming, the quiet victim is
    // evicted one client timeout after its Join.
    let deadline = Instant::now() + SLOW;
    while victim.forge() {
        assert!(Instant::now() < deadline, "the victim was never evicted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let evicted_after = victim.ended.unwrap() - victim.joined;
    let stranger_datagrams: u64 = strangers.iter().map(|s| s.tally.datagrams).sum();
    assert!(
        stranger_datagrams >= 30_000,
        "only {stranger_datagrams} of the strangers' {} datagrams were sent",
        ROUNDS * PER_ROUND
    );
    assert!(
        passer_datagrams >= 30_000,
        "only {passer_datagrams} datagrams from {passers_by} fresh addresses were sent"
    );

    for (i, s) in strangers.iter().enumerate() {
        assert_eq!(
            s.tally.audio, 0,
            "stranger {i} received audio: {:?}",
            s.tally
        );
        assert_eq!(
            s.tally.welcomes, 0,
            "stranger {i} was welcomed: {:?}",
            s.tally
        );
        assert!(
            s.tally.received <= s.tally.sent,
            "stranger {i} received more bytes than it sent before validation: {:?}",
            s.tally
        );
    }
    // The server did answer strangers (fresh Challenges for replayed and forged Joins, NotJoined
    // for stranger Reports), so the byte accounting above was tested, not vacuous.
    let answered: u64 = strangers[1..].iter().map(|s| s.tally.received).sum();
    assert!(answered > 0, "no stranger got any answer at all");
    eprintln!(
        "strangers sent {stranger_datagrams} datagrams, got {answered} bytes back; \
         {passer_datagrams} more from {passers_by} addresses; RSS {rss_before} -> {rss_after} KiB; \
         the victim got {} forged datagrams and was evicted {evicted_after:?} after its Join",
        victim.sent
    );
    // 2 MiB over 32,000 addresses is 64 bytes per address: less than any table entry keyed by
    // a socket address with anything in it.
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB under the flood"
    );

    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    let s = listener.stats();
    assert_eq!(
        (stat(&s, "lost"), stat(&s, "late"), stat(&s, "duplicates")),
        (0, 0, 0),
        "{s}"
    );
    let (_, got) = listener.samples();
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "the listener's audio changed"
    );
    // The victim: neither forged Leaves nor forged Reports changed its session. It got audio
    // until the server evicted it for silence (a Leave taken as its own would have ended the
    // audio without an End), no answer to any forged datagram while joined, and its End came
    // within a client timeout (+ housekeeping and a loaded machine's margin) of its Join.
    let (_, end) = victim.peer.seen().end().unwrap();
    assert_eq!(end.reason, EndReason::Evicted, "{end:?}");
    assert!(
        victim.sent >= 30,
        "only {} forged datagrams were sent",
        victim.sent
    );
    assert!(
        evicted_after < CLIENT_TIMEOUT + Duration::from_secs(3),
        "evicted {evicted_after:?} after joining: forged Reports kept it alive"
    );
    {
        let seen = victim.peer.seen();
        assert!(seen.audio_before_end.is_some_and(|n| n > 0), "no audio");
        let answers = &seen.control[..seen.control_before_end.unwrap()];
        assert!(
            answers
                .iter()
                .all(|(_, m)| matches!(m, Message::Challenge(_) | Message::Welcome(_))),
            "a forged datagram was answered: {answers:?}"
        );
    }
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    assert!(server.proc.wait_for_line("panic", Duration::ZERO).is_none());
}
