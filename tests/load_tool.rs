//! The load tool (`testkit::load::run`) against a small scripted fake server written on `proto`,
//! over 127.0.0.1: handshake, capacity, scripted loss (in the middle and at the tail), End,
//! Leave, skew, and a server that never answers. Counts are asserted exactly; the only timing
//! assertions are lower bounds that sleeps guarantee, or generous upper bounds. Then the tool
//! against the real `streamd` for each codec: a short, small run that must lose nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proto::limits::MIN_CONNECT_LEN;
use proto::{
    Challenge, End, EndReason, LeaveReason, Message, Packet, Reject, RejectReason, StreamInfo,
    Token, Welcome,
};
use testkit::load::{self, LoadConfig};

/// First seq the fake server sends.
const START_SEQ: u64 = 1000;

/// What the fake server does.
struct Script {
    /// Listeners it welcomes; the rest get Reject{Full}.
    capacity: usize,
    /// Ticks of 3 datagrams to send before End (None: stream until Leave or stop).
    ticks: Option<u64>,
    /// Whether to skip `seq` for the listener welcomed `k`-th (0-based).
    drop: fn(usize, u64) -> bool,
    /// Pause between sending a tick to one listener and the next (creates skew).
    gap: Duration,
}

/// What the fake server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Reports carrying the sender's session token, per listener.
    reports: HashMap<SocketAddr, u64>,
    /// Listeners that left with their token, and why.
    leaves: HashMap<SocketAddr, LeaveReason>,
    /// Reports and Leaves without the sender's token.
    bad_tokens: u64,
    short_connects: u64,
}

fn cookie(a: SocketAddr) -> [u8; 16] {
    let mut h = DefaultHasher::new();
    a.hash(&mut h);
    let x = h.finish().to_le_bytes();
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&x);
    c[8..].copy_from_slice(&x);
    c
}

/// The session token the fake server gives `a`: distinct from its cookie and per address.
fn token(a: SocketAddr) -> Token {
    let mut t = cookie(a);
    t.iter_mut().for_each(|b| *b ^= 0x5a);
    t
}

fn welcome(a: SocketAddr) -> Message {
    Message::Welcome(Welcome {
        token: token(a),
        noise: bytes::Bytes::new(),
        info: info(),
    })
}

fn send(s: &UdpSocket, to: SocketAddr, msg: Message) {
    let mut b = BytesMut::new();
    proto::encode(&Packet::new(0, msg), &mut b).unwrap();
    s.send_to(&b, to).unwrap();
}

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 44_100,
        channels: 2,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: 20_000,
        frames_per_packet: 340,
        total_frames: None,
        start_seq: START_SEQ,
        start_ts: 0,
        title: "fake".into(),
    }
}

/// Starts the fake server; streaming begins once `capacity` listeners joined.
fn fake_server(script: Script) -> (SocketAddr, Arc<AtomicBool>, JoinHandle<Seen>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut joined: Vec<SocketAddr> = Vec::new();
        let mut left: HashSet<SocketAddr> = HashSet::new();
        let pcm = vec![0u8; 1360];
        let mut tick = 0u64;
        let mut next_tick: Option<Instant> = None;
        let mut ended_at: Option<Instant> = None;
        let hard_stop = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 9000];
        loop {
            // Told to stop: one last read of what is queued (a Leave sent before the stop was
            // asked for is there already: loopback delivers within the send), then out.
            let stopping = stop2.load(Ordering::Relaxed) || Instant::now() >= hard_stop;
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let Ok(p) = proto::decode(&buf[..n]) else {
                    continue;
                };
                match p.msg {
                    Message::Connect(_) if n < MIN_CONNECT_LEN => seen.short_connects += 1,
                    Message::Connect(_) => send(
                        &sock,
                        from,
                        Message::Challenge(Challenge {
                            cookie: cookie(from),
                        }),
                    ),
                    Message::Join(j) if j.cookie == cookie(from) => {
                        if joined.contains(&from) {
                            send(&sock, from, welcome(from));
                        } else if joined.len() < script.capacity && next_tick.is_none() {
                            joined.push(from);
                            send(&sock, from, welcome(from));
                            if joined.len() == script.capacity {
                                next_tick = Some(Instant::now());
                            }
                        } else {
                            let reason = RejectReason::Full {
                                max_clients: script.capacity as u32,
                            };
                            send(&sock, from, Message::Reject(Reject { reason }));
                        }
                    }
                    Message::Report(r) if r.token == token(from) => {
                        *seen.reports.entry(from).or_default() += 1;
                    }
                    Message::Leave(l) if l.token == token(from) => {
                        seen.leaves.insert(from, l.reason);
                        left.insert(from);
                    }
                    Message::Report(_) | Message::Leave(_) => seen.bad_tokens += 1,
                    _ => {}
                }
            }
            if stopping {
                break;
            }
            if let Some(t) = next_tick
                && Instant::now() >= t
                && ended_at.is_none()
            {
                if script.ticks.is_some_and(|n| tick >= n) {
                    let last = START_SEQ + 3 * tick - 1;
                    for _ in 0..proto::limits::END_REPEAT {
                        for &l in &joined {
                            let end = End {
                                reason: EndReason::Finished,
                                last_seq: Some(last),
                            };
                            send(&sock, l, Message::End(end));
                        }
                    }
                    ended_at = Some(Instant::now());
                } else {
                    for (k, &l) in joined.iter().enumerate() {
                        if left.contains(&l) {
                            continue;
                        }
                        if k > 0 && !script.gap.is_zero() {
                            std::thread::sleep(script.gap);
                        }
                        for d in 0..3 {
                            let seq = START_SEQ + 3 * tick + d;
                            if (script.drop)(k, seq) {
                                continue;
                            }
                            let mut b = BytesMut::new();
                            proto::encode_audio(seq, seq * 340, &pcm, &mut b);
                            sock.send_to(&b, l).unwrap();
                        }
                    }
                    tick += 1;
                    next_tick = Some(t + Duration::from_millis(20));
                }
            }
            if ended_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    });
    (addr, stop, h)
}

fn drop_script(k: usize, seq: u64) -> bool {
    match k {
        1 => seq % 7 == 0,                     // scattered loss
        2 => seq >= START_SEQ + 3 * TICKS - 2, // tail loss: only End.last_seq reveals it
        _ => false,
    }
}

const TICKS: u64 = 100;

#[test]
fn exact_counts_with_capacity_scripted_loss_end_and_skew() {
    let gap = Duration::from_millis(2);
    let (addr, _stop, h) = fake_server(Script {
        capacity: 3,
        ticks: Some(TICKS),
        drop: drop_script,
        gap,
    });
    let mut cfg = LoadConfig::new(addr, 4, Duration::from_secs(20));
    cfg.connect_rate = 20; // one Connect every 50 ms: join order = start order
    let t0 = Instant::now();
    let rep = load::run(&cfg).unwrap();
    let seen = h.join().unwrap();

    assert_eq!(rep.accepted, 3);
    assert_eq!(rep.rejected, 1);
    assert_eq!(rep.rejected_full, 1);
    assert_eq!(rep.no_answer, 0);
    assert_eq!(rep.ended, 3, "every accepted listener got End");
    assert_eq!(
        seen.short_connects, 0,
        "Connects are padded to MIN_CONNECT_LEN"
    );
    // All ended before the 20 s duration: the tool stops when nothing is left to do.
    assert!(t0.elapsed() < Duration::from_secs(15));

    let seqs: Vec<u64> = (START_SEQ..START_SEQ + 3 * TICKS).collect();
    let lost: Vec<u64> = (0..3)
        .map(|k| seqs.iter().filter(|&&s| drop_script(k, s)).count() as u64)
        .collect();
    assert_eq!(lost, vec![0, 43, 2]);
    assert_eq!(rep.totals.expected, 3 * 3 * TICKS);
    assert_eq!(rep.totals.lost, 45);
    assert_eq!(rep.totals.received, 3 * 3 * TICKS - 45);
    assert_eq!(rep.totals.duplicates, 0);
    assert_eq!(
        rep.totals.short_at_end, 0,
        "End.last_seq makes the tail exact"
    );
    let worst = rep.worst.as_ref().unwrap();
    assert_eq!(worst.counts.lost, 43);
    assert_eq!(worst.index, 1);

    // Skew: seqs that at least two listeners got; the server paused `gap` between listeners.
    let multi = seqs
        .iter()
        .filter(|&&s| (0..3).filter(|&k| !drop_script(k, s)).count() >= 2)
        .count() as u64;
    assert_eq!(rep.skew_ms.count, multi);
    let gap_ms = gap.as_secs_f64() * 1e3;
    assert!(rep.skew_ms.p50 >= 2.0 * gap_ms * 0.99, "{:?}", rep.skew_ms);
    assert!(rep.skew_ms.max >= rep.skew_ms.p99 && rep.skew_ms.p99 >= rep.skew_ms.p50);

    // Keepalives: each listener was in the stream for 2 s, so it reported at least once.
    assert_eq!(seen.reports.len(), 3, "{:?}", seen.reports);
    assert_eq!(
        seen.bad_tokens, 0,
        "a Report or Leave without its Welcome's token"
    );
    assert_eq!(rep.tool.rx_queue_drops, 0);

    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["totals"]["lost"], 45);
    assert_eq!(json["accepted"], 3);
    let text = rep.to_string();
    assert!(text.contains("accepted 3"), "{text}");
}

#[test]
fn stops_after_duration_and_leaves() {
    let (addr, stop, h) = fake_server(Script {
        capacity: 2,
        ticks: None,
        drop: |_, _| false,
        gap: Duration::ZERO,
    });
    let cfg = LoadConfig::new(addr, 2, Duration::from_millis(1500));
    let t0 = Instant::now();
    let rep = load::run(&cfg).unwrap();
    let took = t0.elapsed();
    // The Leaves went out before `run` returned; the server reads them before it stops.
    stop.store(true, Ordering::Relaxed);
    let seen = h.join().unwrap();

    assert!(took >= Duration::from_millis(1500));
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(rep.accepted, 2);
    assert_eq!(rep.ended, 0);
    assert_eq!(seen.leaves.len(), 2, "both listeners sent Leave");
    assert_eq!(
        seen.bad_tokens, 0,
        "a Report or Leave without its Welcome's token"
    );
    assert!(
        seen.leaves.values().all(|&r| r == LeaveReason::Done),
        "the tool's own limit: {:?}",
        seen.leaves
    );
    assert!(rep.totals.received > 0);
    assert_eq!(rep.totals.lost, 0, "{rep}");
    assert_eq!(rep.totals.short_at_end, 0);
    assert_eq!(rep.totals.expected, rep.totals.received);
}

#[test]
fn a_silent_server_counts_as_no_answer() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = LoadConfig::new(silent.local_addr().unwrap(), 3, Duration::from_millis(700));
    let rep = load::run(&cfg).unwrap();
    assert_eq!(rep.accepted, 0);
    assert_eq!(rep.no_answer, 3);
    assert_eq!(rep.totals.expected, 0);
    assert!(rep.worst.is_none());
    assert_eq!(rep.skew_ms.count, 0);
}

/// A short run of the load tool against the real `streamd` for each codec: every listener
/// joins declaring the codecs `listen` decodes, nothing is lost, every audio datagram is seen
/// by the tool's fast path (an Opus packet has any length), and the bytes per listener match
/// the codec (Opus at 128 kbit/s is under a tenth of PCM's, FLAC under 0.7).
#[test]
fn real_server_each_codec_zero_loss() {
    const N: usize = 12;
    let file = common::fixture("stereo44.wav");
    let mut rates = HashMap::new();
    for codec in ["pcm", "flac", "opus"] {
        let mut server = common::Server::start(
            &file,
            &[
                "--codec",
                codec,
                "--loop",
                "--start",
                "now",
                "--max-clients",
                "20",
            ],
        );
        let mut cfg = LoadConfig::new(server.addr, N, Duration::from_secs(3));
        cfg.server_pid = Some(server.proc.pid());
        let rep = load::run(&cfg).unwrap();
        server.proc.signal("INT");
        assert_eq!(
            server.proc.exit_code(common::SLOW),
            0,
            "{}",
            server.proc.stderr()
        );
        let ctx = format!("{codec}: {rep}");
        assert_eq!(rep.accepted, N as u64, "{ctx}");
        assert_eq!(rep.codec.as_deref(), Some(codec), "{ctx}");
        assert!(rep.totals.received > 0, "{ctx}");
        assert_eq!(rep.totals.lost, 0, "{ctx}");
        assert_eq!(rep.totals.expected, rep.totals.received, "{ctx}");
        assert_eq!(
            rep.tool.audio_datagrams,
            rep.totals.received + rep.totals.duplicates,
            "{ctx}"
        );
        assert_eq!(rep.tool.garbage, 0, "{ctx}");
        assert!(rep.skew_ms.count > 0, "{ctx}");
        assert!(rep.server_proc.is_some(), "{ctx}");
        rates.insert(codec, rep.bytes_per_listener_per_s);
    }
    let (pcm, flac, opus) = (rates["pcm"], rates["flac"], rates["opus"]);
    assert!(pcm > 150_000.0, "{rates:?}");
    assert!(flac <= 0.7 * pcm, "{rates:?}");
    assert!(opus <= pcm / 10.0, "{rates:?}");
}
