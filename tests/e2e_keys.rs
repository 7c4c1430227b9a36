//! Private rooms end to end: `streamd --gen-key` writes a room key only its owner can read,
//! and never overwrites one; an open room's wire, captured by a relay, carries the source's
//! PCM in the clear, and the check that finds it. A private room (`--key-file` on both
//! sides): the listener plays through a relay that replays, tampers with, truncates and
//! forges audio and spoofs the listener's Leave and Report from its own address, across
//! stream key rotations; the captured wire carries none of the PCM; a wrong or missing key
//! exits 3 with one line and the server logs it; bad key files are refused in one line; a
//! flood of strangers gets no more bytes than it sent; and the handshake's time is printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// Type code of `Sealed` in the header (docs/PROTOCOL.md).
const SEALED: u8 = 64;

/// `streamd --gen-key PATH`: its exit code and stderr.
fn gen_key(path: &Path) -> (i32, String) {
    let out = Command::new(bin("streamd"))
        .arg("--gen-key")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let (code, err) = gen_key(&path);
    assert_eq!(code, 0, "streamd --gen-key: {err}");
    path
}

/// A UDP relay between one listener and the server that keeps every datagram the server
/// sends. With `mischief`, after every 10th sealed audio datagram it also sends the listener
/// a replay of it (unless it is a `Resent`), a copy with one ciphertext bit flipped, and a
/// forgery under a fresh seq, counting each.
struct Relay {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    injected: Arc<AtomicU64>,
    /// Datagrams sent to the server from the listener's address in its name.
    spoofed: Arc<AtomicU64>,
    /// Datagrams passed on truncated instead of whole.
    truncated: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr, mischief: bool) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up = UdpSocket::bind("127.0.0.1:0").unwrap();
        up.connect(server).unwrap();
        for s in [&front, &up] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let injected = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (front2, up2) = (front.try_clone().unwrap(), up.try_clone().unwrap());
        let up3 = up.try_clone().unwrap();
        let (c1, s1) = (client.clone(), stop.clone());
        // The listener's last sealed datagram, for a replay in its name.
        let last_up: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let last_up2 = last_up.clone();
        let upward = std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            while !s1.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    *c1.lock().unwrap() = Some(from);
                    if buf[3] == SEALED {
                        *last_up2.lock().unwrap() = Some(buf[..n].to_vec());
                    }
                    let _ = up.send(&buf[..n]);
                }
            }
        });
        let spoofed = Arc::new(AtomicU64::new(0));
        let spf = spoofed.clone();
        let truncated = Arc::new(AtomicU64::new(0));
        let trunc = truncated.clone();
        let mut token: Option<proto::Token> = None;
        let (c2, s2, cap, inj) = (client, stop.clone(), captured.clone(), injected.clone());
        let downward = std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            let mut sealed_audio = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let Ok(n) = up2.recv(&mut buf) else { continue };
                let d = buf[..n].to_vec();
                cap.lock().unwrap().push(d.clone());
                if let Ok(proto::Packet {
                    msg: proto::Message::Welcome(w),
                    ..
                }) = proto::decode(&d)
                {
                    token = Some(w.token);
                }
                let Some(to) = *c2.lock().unwrap() else {
                    continue;
                };
                // With mischief, one large sealed datagram (audio or parity) in 25 arrives
                // truncated by a byte instead of whole (never one replayed below, whose replay
                // would stand in for it): refused, so the listener must repair it (parity or
                // a resend) or conceal it.
                let truncate =
                    mischief && d[3] == SEALED && n > 200 && (sealed_audio + 1) % 25 == 7;
                if truncate {
                    let _ = front2.send_to(&d[..n - 1], to);
                    trunc.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = front2.send_to(&d, to);
                }
                if mischief && d[3] == SEALED && n > 200 {
                    sealed_audio += 1;
                    if sealed_audio % 10 == 0 {
                        let mut tampered = d.clone();
                        tampered[n - 20] ^= 0x10;
                        let mut forged = d.clone();
                        forged[4..12].copy_from_slice(&(1_000_000 + sealed_audio).to_le_bytes());
                        // A replayed Resent is not sent: one seq asked for twice is resent
                        // twice under the same seq, so the listener takes the second copy as
                        // a repeat, not as garbage.
                        let resent = matches!(
                            proto::decode(&d),
                            Ok(proto::Packet { msg: proto::Message::Sealed(s), .. })
                                if s.inner_type == proto::MessageType::Resent as u8
                        );
                        let replay = (!resent).then_some(&d);
                        for extra in replay.into_iter().chain([&tampered, &forged]) {
                            let _ = front2.send_to(extra, to);
                            inj.fetch_add(1, Ordering::Relaxed);
                        }
                        // In the listener's name, from its address: a Leave and a Report in
                        // the clear with its token (read off the Welcome), and a replay of
                        // its last sealed datagram.
                        if let Some(token) = token {
                            let leave = proto::Message::Leave(proto::Leave {
                                token,
                                reason: proto::LeaveReason::Done,
                            });
                            let report = proto::Message::Report(proto::Report {
                                token,
                                ..Default::default()
                            });
                            let mut spoofs: Vec<Vec<u8>> = [leave, report]
                                .into_iter()
                                .map(|m| {
                                    proto::encode_to_bytes(&proto::Packet::new(7, m))
                                        .unwrap()
                                        .to_vec()
                                })
                                .collect();
                            spoofs.extend(last_up.lock().unwrap().clone());
                            for sp in spoofs {
                                if up3.send(&sp).is_ok() {
                                    spf.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            captured,
            injected,
            spoofed,
            truncated,
            stop,
            threads: vec![upward, downward],
        }
    }

    fn finish(mut self) -> (Vec<Vec<u8>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let captured = std::mem::take(&mut *self.captured.lock().unwrap());
        (captured, self.injected.load(Ordering::Relaxed))
    }

    fn spoofed(&self) -> u64 {
        self.spoofed.load(Ordering::Relaxed)
    }

    fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }
}

/// How many captured datagrams contain a 16-byte run of the source's PCM (sample-aligned
/// in the source, at any offset in the datagram). Runs with fewer than 8 distinct byte values
/// (silence, fades) are skipped: those could match a header's zeros.
fn pcm_runs_on_wire(source: &[i16], captured: &[Vec<u8>]) -> usize {
    const RUN: usize = 16;
    let bytes: Vec<u8> = source.iter().flat_map(|s| s.to_le_bytes()).collect();
    let runs: HashSet<&[u8]> = bytes
        .windows(RUN)
        .step_by(2)
        .filter(|w| w.iter().collect::<HashSet<_>>().len() >= 8)
        .collect();
    assert!(runs.len() > 1000, "the fixture has too little varied audio");
    captured
        .iter()
        .filter(|d| d.windows(RUN).any(|w| runs.contains(w)))
        .count()
}

#[test]
fn gen_key_writes_a_private_key_once() {
    let dir = tempdir();
    let path = new_key(dir.path(), "room.key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    let (code, err) = gen_key(&path);
    assert_ne!(code, 0, "overwrote an existing key");
    assert!(
        err.contains("room.key") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the key was changed"
    );
}

/// An open room through the relay: the listener still plays sample-exact, and the captured
/// datagrams hold runs of the source's PCM, found by the same check a private room must pass
/// with zero.
#[test]
fn an_open_room_carries_its_pcm_in_the_clear() {
    let file = fixture("stereo44.wav");
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    let dir = tempdir();
    let mut open = Server::start(&file, &["--interval", "20ms"]);
    let relay = Relay::start(open.addr, false);
    // These listeners' WAVs are compared sample for sample: they play on their own clock, so
    // no drift correction (e2e_sync's subject) can move a frame on a loaded machine.
    let mut l = Listener::start(
        relay.addr,
        dir.path(),
        "open",
        &["--latency", "200ms", "--sync", "off"],
    );
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(open.proc.exit_code(SLOW), 0, "{}", open.proc.stderr());
    let (captured, injected) = relay.finish();
    assert_eq!(injected, 0);
    let (_, got) = l.samples();
    let st = l.stats();
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "through the relay: {st}"
    );
    assert!(
        !captured.iter().any(|d| d[3] == SEALED),
        "an open room sealed something"
    );
    let audio = captured.iter().filter(|d| d[3] == 6).count();
    assert!(audio > 50, "only {audio} audio datagrams captured");
    assert!(
        pcm_runs_on_wire(&expected, &captured) > audio / 2,
        "the PCM check finds too little"
    );
}

/// A private room through the relay's mischief: the replayed, tampered, forged and truncated
/// datagrams are dropped and counted, the truncated ones repaired (or concealed, never
/// corrupted: without concealment the audio is sample-exact); the spoofed Leave, Report and
/// replayed control change nothing; audio crosses stream key rotations; and the captured wire
/// carries no run of the source's PCM.
#[test]
fn a_private_room_plays_exactly_and_its_wire_carries_no_pcm() {
    let file = fixture("stereo44.wav");
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    let dir = tempdir();
    let key = new_key(dir.path(), "room.key");
    let key = key.to_str().unwrap();
    // The 2 s clip with a 1 s rotation: at least one switch mid-stream, wherever the
    // listener's join falls in the server's key schedule.
    let mut server = Server::start(
        &file,
        &[
            "--interval",
            "20ms",
            "--key-file",
            key,
            "--rekey-interval",
            "1s",
        ],
    );
    let relay = Relay::start(server.addr, true);
    let mut l = Listener::start(
        relay.addr,
        dir.path(),
        "keyed",
        &["--latency", "200ms", "--sync", "off", "--key-file", key],
    );
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    let spoofed = relay.spoofed();
    let truncated = relay.truncated();
    let (captured, injected) = relay.finish();
    let (_, got) = l.samples();
    let s = l.stats();
    assert_eq!(got.len(), expected.len());
    // Every truncated datagram was refused, and repaired (parity or a resend) or concealed:
    // the audio differs from the source at most where it was concealed.
    assert!(truncated >= 5, "only {truncated} datagrams truncated");
    let repaired = stat(&s, "recovered_fec") + stat(&s, "recovered_retransmit");
    assert!(repaired >= 1, "{s}");
    if stat(&s, "concealed_ms") == 0 {
        assert_eq!(
            first_difference(&got, &expected),
            None,
            "a private room's audio: {s}"
        );
    }
    assert_eq!(stat(&s, "duplicates"), 0, "{s}");
    // Every replay, tampered copy, forgery and truncated copy was refused as garbage.
    assert!(injected >= 30, "only {injected} datagrams injected");
    assert!(
        stat(&s, "garbage") >= injected + truncated,
        "{s}; {injected} injected, {truncated} truncated"
    );
    assert!(spoofed >= 20, "only {spoofed} datagrams spoofed");
    assert!(
        !server.proc.stderr().contains("left:"),
        "a spoofed Leave ended the session: {}",
        server.proc.stderr()
    );
    // Nothing after the Welcome in the clear, and no PCM on the wire.
    let welcome = captured.iter().position(|d| d[3] == 4).unwrap();
    assert!(captured[welcome + 1..].iter().all(|d| d[3] == SEALED));
    let sealed = captured.iter().filter(|d| d[3] == SEALED).count();
    assert!(sealed > 100, "only {sealed} sealed datagrams captured");
    assert_eq!(
        pcm_runs_on_wire(&expected, &captured),
        0,
        "PCM on a private room's wire"
    );
    // Audio went out under more than one stream key (the rotation), seamlessly.
    let mut ids: Vec<u32> = captured[welcome + 1..]
        .iter()
        .filter_map(|d| match proto::decode(d).ok()?.msg {
            proto::Message::Sealed(s) if s.inner_type == 6 => Some(s.key_id),
            _ => None,
        })
        .collect();
    ids.dedup();
    assert!(
        ids.len() >= 2 && ids.windows(2).all(|w| w[1] == w[0] + 1),
        "{ids:?}"
    );
}

/// The one line a listener prints when the key did not match.
fn bad_key_line(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains("refused the key (Reject BadKey): the room key did not match"))
}

#[test]
fn a_wrong_or_missing_key_exits_3_with_one_line_and_the_server_logs_it() {
    let file = fixture("stereo44.wav");
    let dir = tempdir();
    let key = new_key(dir.path(), "room.key");
    let other = new_key(dir.path(), "other.key");
    let mut server = Server::start(
        &file,
        &[
            "--key-file",
            key.to_str().unwrap(),
            "--start",
            "now",
            "--loop",
        ],
    );
    let other_arg = other.to_str().unwrap();
    for (name, args) in [("wrong", vec!["--key-file", other_arg]), ("none", vec![])] {
        let mut l = Listener::start(server.addr, dir.path(), name, &args);
        assert_eq!(l.proc.exit_code(SLOW), 3, "{name}: {}", l.proc.stderr());
        assert!(
            bad_key_line(&l.proc.stderr()),
            "{name}: {}",
            l.proc.stderr()
        );
    }
    assert!(
        server
            .proc
            .wait_for_lines("BadKey, its Join did not prove the room key", 2, SLOW),
        "{}",
        server.proc.stderr()
    );
    server.proc.signal("TERM");
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());

    // A keyed listener against an open room says so too.
    let mut open = Server::start(&file, &["--start", "now", "--loop"]);
    let mut l = Listener::start(
        open.addr,
        dir.path(),
        "keyed",
        &["--key-file", key.to_str().unwrap()],
    );
    assert_eq!(l.proc.exit_code(SLOW), 3, "{}", l.proc.stderr());
    let err = l.proc.stderr();
    assert!(bad_key_line(&err) && err.contains("open room"), "{err}");
    open.proc.signal("TERM");
    assert_eq!(open.proc.exit_code(SLOW), 0, "{}", open.proc.stderr());
}

#[test]
fn bad_key_files_are_refused_in_one_line_naming_them() {
    let dir = tempdir();
    let missing = dir.path().join("missing.key");
    let open = new_key(dir.path(), "readable.key");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let malformed = dir.path().join("malformed.key");
    std::fs::write(&malformed, "not a key\n").unwrap();
    std::fs::set_permissions(&malformed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = fixture("stereo44.wav");
    for path in [&missing, &open, &malformed] {
        let name = path.file_name().unwrap().to_str().unwrap();
        let runs = [
            Command::new(bin("streamd"))
                .args(["--bind", "127.0.0.1", "--port", "0", "--file"])
                .arg(&file)
                .arg("--key-file")
                .arg(path)
                .output()
                .unwrap(),
            Command::new(bin("listen"))
                .args(["--server", "127.0.0.1:9", "--output"])
                .arg(dir.path().join("x.wav"))
                .arg("--key-file")
                .arg(path)
                .output()
                .unwrap(),
        ];
        for out in runs {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{name}: {err}");
            assert!(
                err.contains(name) && err.trim().lines().count() == 1,
                "{name}: {err}"
            );
        }
    }
    // Usage errors (exit 2): a rotation shorter than 1 s, RTP (in the clear) from a private
    // room.
    let key = new_key(dir.path(), "room.key");
    for (extra, says) in [
        (vec!["--rekey-interval", "500ms"], "--rekey-interval"),
        (vec!["--rtp", "127.0.0.1:5004"], "--rtp"),
    ] {
        let out = Command::new(bin("streamd"))
            .args(["--bind", "127.0.0.1", "--port", "0", "--file"])
            .arg(&file)
            .arg("--key-file")
            .arg(&key)
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// Strangers flood a private room: random bytes, Connects, Joins without the key (each
/// answered by a Reject{BadKey} no larger than the Join), plaintext Reports and Leaves. None
/// is welcomed or gets audio, none gets more bytes than it sent, and the listener's audio is
/// unchanged.
#[test]
fn a_flood_against_a_private_room_is_bounded_and_changes_nothing() {
    let clip = demo_clip();
    let (_, expected) = streamd::source::decode_all(&clip).unwrap();
    let dir = tempdir();
    let key = new_key(dir.path(), "room.key");
    let key = key.to_str().unwrap();
    let mut server = Server::start(&clip, &["--key-file", key]);
    let mut l = Listener::start(
        server.addr,
        dir.path(),
        "l",
        &["--latency", "300ms", "--sync", "off", "--key-file", key],
    );
    wait_for_audio(&l);
    let mut rng_state = 0x5eed_u64;
    let mut rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let connect = {
        let c = proto::Message::Connect(proto::Connect {
            max_version: proto::VERSION,
            padding: bytes::Bytes::from(vec![0u8; proto::limits::MIN_CONNECT_LEN]),
        });
        proto::encode_to_bytes(&proto::Packet::new(1, c)).unwrap()
    };
    let (mut sent, mut received, mut rejects, mut bad) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..16u8 {
        let sock = UdpSocket::bind((std::net::Ipv4Addr::new(127, 3, 0, 1 + i), 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 9000];
        for round in 0..60 {
            let d: Vec<u8> = match round % 4 {
                0 => (0..rand() % 200).map(|_| rand() as u8).collect(),
                1 => connect.to_vec(),
                2 => {
                    // A Join with this socket's fresh cookie and no Noise message.
                    sock.send_to(&connect, server.addr).unwrap();
                    sent += connect.len() as u64;
                    // Its Challenge, past any answer still queued from earlier rounds.
                    let challenge = loop {
                        let Ok((n, _)) = sock.recv_from(&mut buf) else {
                            break None;
                        };
                        received += n as u64;
                        if let Ok(proto::Packet {
                            msg: proto::Message::Challenge(c),
                            ..
                        }) = proto::decode(&buf[..n])
                        {
                            break Some(c);
                        }
                    };
                    let Some(c) = challenge else { continue };
                    let j = proto::Message::Join(proto::Join::new(c.cookie));
                    proto::encode_to_bytes(&proto::Packet::new(2, j))
                        .unwrap()
                        .to_vec()
                }
                _ => {
                    let r = proto::Message::Report(proto::Report::default());
                    proto::encode_to_bytes(&proto::Packet::new(3, r))
                        .unwrap()
                        .to_vec()
                }
            };
            if sock.send_to(&d, server.addr).is_ok() {
                sent += d.len() as u64;
            }
            // A Join's answer is awaited; anything else only drained.
            let mut awaiting = round % 4 == 2;
            loop {
                sock.set_nonblocking(!awaiting).unwrap();
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    break;
                };
                received += n as u64;
                match proto::decode(&buf[..n]).map(|p| p.msg) {
                    Ok(proto::Message::Reject(r)) => {
                        assert_eq!(r.reason, proto::RejectReason::BadKey);
                        assert!(awaiting, "a Reject to something but a Join");
                        assert!(n <= d.len(), "a {n}-byte Reject to a {}-byte Join", d.len());
                        rejects += 1;
                        awaiting = false;
                    }
                    Ok(
                        proto::Message::Welcome(_)
                        | proto::Message::Audio(_)
                        | proto::Message::Sealed(_),
                    ) => bad += 1,
                    _ => {}
                }
            }
            sock.set_nonblocking(false).unwrap();
        }
    }
    assert_eq!(bad, 0, "a stranger was welcomed or got audio");
    assert!(rejects >= 150, "only {rejects} joins rejected");
    assert!(
        received <= sent,
        "strangers got {received} bytes for {sent}"
    );
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    let (_, got) = l.samples();
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "the listener's audio changed"
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
}

/// How long a keyed handshake takes on loopback, Connect to Welcome opened, against the
/// one without a key: printed for docs/BENCHMARKS.md, not asserted tightly.
#[test]
fn handshake_time_with_and_without_a_key() {
    let file = fixture("stereo44.wav");
    let dir = tempdir();
    let key_path = new_key(dir.path(), "room.key");
    let key = seal::load_key(&key_path).unwrap();
    let mut report = Vec::new();
    for keyed in [false, true] {
        let mut args = vec!["--start", "now", "--loop", "--max-clients", "64"];
        if keyed {
            args.extend(["--key-file", key_path.to_str().unwrap()]);
        }
        let mut server = Server::start(&file, &args);
        let mut times = Vec::new();
        for _ in 0..20 {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let t0 = std::time::Instant::now();
            let mut session =
                listen::session::Session::new(listen::session::SessionConfig::new(server.addr), t0);
            if keyed {
                session = session.with_room_key(&key).unwrap();
            }
            let mut buf = [0u8; 9000];
            let joined = loop {
                while let Some(t) = session.poll_transmit(std::time::Instant::now()) {
                    sock.send_to(&t.contents, t.destination).unwrap();
                }
                if let Some(e) = session.poll_event() {
                    if matches!(e, listen::session::Event::Joined(_)) {
                        break true;
                    }
                    continue;
                }
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    break false;
                };
                session.handle(std::time::Instant::now(), from, &buf[..n]);
            };
            assert!(joined, "no Welcome");
            times.push(t0.elapsed());
            session.leave(std::time::Instant::now(), proto::LeaveReason::Done);
            while let Some(t) = session.poll_transmit(std::time::Instant::now()) {
                let _ = sock.send_to(&t.contents, t.destination);
            }
        }
        times.sort();
        report.push((keyed, times[times.len() / 2], times[times.len() - 1]));
        server.proc.signal("TERM");
        assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    }
    for (keyed, median, max) in &report {
        eprintln!(
            "handshake on loopback {}: median {:.3} ms, max {:.3} ms (20 joins)",
            if *keyed {
                "with a key"
            } else {
                "without a key"
            },
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    // Generous: a loaded 2-core machine, debug build.
    assert!(report[1].1 < Duration::from_millis(500), "{report:?}");
}
