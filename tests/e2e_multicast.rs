//! Multicast inside network namespaces the test builds and removes itself: a bridge in one
//! namespace, the server and each receiver in their own, joined by veth pairs, with addresses
//! from the benchmarking range 198.18.0.0/15 inside the namespaces only (nothing is sent on the
//! machine's own interfaces).
//!
//! - SAP: the announcements of `--rtp GROUP:PORT --sap` reach a socket in another namespace on
//!   224.2.127.254:9875, name the group and the server, and a deletion follows the end.
//! - RTP to a group: every receiver gets the packets, and the server's bytes per second on its
//!   link do not depend on how many receivers joined.
//! - Native multicast (`streamd --multicast`): 1 and then 20 `listen` processes, each in its
//!   own namespace, play sample-exact with nothing lost, and the server's bytes per second on
//!   its link are the same for both; a listener the group does not reach falls back to unicast,
//!   plays sample-exact and says so; bad `--multicast`/`--ttl` values exit 2.
//!
//! Needs root (`ip netns add`). With `EARSHOT_REQUIRE_NETNS=1` it must run; otherwise, without
//! root or `ip`, it says why and passes without testing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::{Lan, Member, group_socket_in, require_netns, spawn_in, tx_bytes};
use common::*;

/// A member's namespace and address.
fn ns_addr(m: Member) -> (String, Ipv4Addr) {
    (m.ns, m.addr)
}

/// Waits for one datagram on `sock` for which `pick` returns something.
fn receive<R>(
    sock: &UdpSocket,
    what: &str,
    mut pick: impl FnMut(&[u8], SocketAddr) -> Option<R>,
) -> R {
    let deadline = Instant::now() + SLOW;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && let Some(r) = pick(&buf[..n], from)
        {
            return r;
        }
    }
    panic!("{what}: nothing after {SLOW:?}");
}

/// A SAP packet's deletion flag, origin and SDP (RFC 2974 §3, IPv4 origin, no authentication).
fn parse_sap(p: &[u8]) -> Option<(bool, Ipv4Addr, String)> {
    let (&flags, rest) = p.split_first()?;
    if flags >> 5 != 1 || rest.len() < 7 {
        return None;
    }
    let origin = Ipv4Addr::new(rest[3], rest[4], rest[5], rest[6]);
    let body = &rest[7..];
    let nul = body.iter().position(|&b| b == 0)?;
    (&body[..nul] == b"application/sdp").then(|| {
        (
            flags & 0b100 != 0,
            origin,
            String::from_utf8_lossy(&body[nul + 1..]).into_owned(),
        )
    })
}

#[test]
fn sap_announcements_reach_another_namespace_and_the_deletion_follows() {
    if !require_netns("SAP across network namespaces") {
        return;
    }
    let mut lan = Lan::new();
    let (srv_ns, srv_addr) = ns_addr(lan.member(true));
    let (rx_ns, rx_addr) = ns_addr(lan.member(true));
    let sap = group_socket_in(&rx_ns, Ipv4Addr::new(224, 2, 127, 254), 9875, rx_addr);
    let clip = demo_clip();
    let bind = srv_addr.to_string();
    let mut server = spawn_in(
        &srv_ns,
        &bin("streamd"),
        &[
            "--bind",
            &bind,
            "--port",
            "5000",
            "--file",
            &clip.display().to_string(),
            "--rtp",
            "239.255.7.1:5004",
            "--sap",
            "--no-announce",
        ],
    );
    let (origin, sdp) = receive(&sap, "a SAP announcement", |p, _| {
        parse_sap(p).and_then(|(del, o, sdp)| (!del).then_some((o, sdp)))
    });
    assert_eq!(origin, srv_addr, "{sdp}");
    assert!(sdp.contains("c=IN IP4 239.255.7.1/1"), "{sdp}");
    assert!(sdp.contains("m=audio 5004 RTP/AVP"), "{sdp}");
    server.signal("INT");
    let deleted = receive(&sap, "the SAP deletion", |p, _| {
        parse_sap(p).and_then(|(del, o, s)| del.then_some((o, s)))
    });
    assert_eq!(deleted, (srv_addr, sdp));
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
}

/// The server's bytes per second on its link over `window`.
fn rate(ns: &str, window: Duration) -> f64 {
    let (b0, t0) = (tx_bytes(ns), Instant::now());
    std::thread::sleep(window);
    let (b1, t1) = (tx_bytes(ns), Instant::now());
    (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
}

#[test]
fn rtp_to_a_group_costs_the_server_the_same_for_one_and_for_three_receivers() {
    if !require_netns("RTP multicast across network namespaces") {
        return;
    }
    let mut lan = Lan::new();
    let (srv_ns, srv_addr) = ns_addr(lan.member(true));
    let group = Ipv4Addr::new(239, 255, 7, 2);
    let clip = demo_clip();
    let bind = srv_addr.to_string();
    let mut server = spawn_in(
        &srv_ns,
        &bin("streamd"),
        &[
            "--bind",
            &bind,
            "--port",
            "5000",
            "--file",
            &clip.display().to_string(),
            "--loop",
            "--rtp",
            "239.255.7.2:5004",
            "--no-announce",
        ],
    );
    assert!(
        server.wait_for_line("rtp: sending", SLOW).is_some(),
        "{}",
        server.stderr()
    );
    let mut receivers = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let (ns, addr) = ns_addr(lan.member(true));
        let sock = group_socket_in(&ns, group, 5004, addr);
        // RTP version 2 from the server.
        receive(&sock, "RTP from the group", |p, from| {
            (from.ip() == srv_addr && p.first().is_some_and(|b| b >> 6 == 2)).then_some(())
        });
        receivers.push(sock);
        if receivers.len() == 1 || receivers.len() == 3 {
            rates.push(rate(&srv_ns, Duration::from_secs(2)));
        }
    }
    // Every receiver is still getting the stream.
    for (i, sock) in receivers.iter().enumerate() {
        receive(sock, &format!("RTP at receiver {i}"), |p, _| {
            p.first().is_some_and(|b| b >> 6 == 2).then_some(())
        });
    }
    let (one, three) = (rates[0], rates[1]);
    eprintln!(
        "server link with 1 receiver: {one:.0} B/s; with 3: {three:.0} B/s (44.1 kHz stereo L16 = 176400 B/s of audio)"
    );
    assert!(one > 150_000.0, "{one}");
    assert!(
        (three - one).abs() / one < 0.05,
        "1 receiver: {one} B/s, 3 receivers: {three} B/s"
    );
    server.signal("INT");
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
}

/// The native stream's group.
const GROUP: &str = "239.255.12.1:5004";

/// `secs` of 44.1 kHz stereo noise (a fixed LCG): any run of frames occurs once, so a tail of
/// it matches only where it belongs. Written to `dir`; returns the file and its samples.
fn noise_clip(dir: &Path, secs: u32) -> (PathBuf, Vec<i16>) {
    let path = dir.join(format!("noise{secs}.wav"));
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    let mut x: u32 = 0x1234_5678;
    let mut samples = Vec::new();
    for _ in 0..44_100 * 2 * secs {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let v = (x >> 16) as i16 / 4;
        w.write_sample(v).unwrap();
        samples.push(v);
    }
    w.finalize().unwrap();
    (path, samples)
}

/// `streamd --multicast GROUP` bound to `m`'s address, port 5000, once it listens.
fn multicast_server(m: &Member, clip: &Path) -> Proc {
    let bind = m.addr.to_string();
    let file = clip.display().to_string();
    let p = spawn_in(
        &m.ns,
        &bin("streamd"),
        &[
            "--bind",
            &bind,
            "--port",
            "5000",
            "--file",
            &file,
            "--multicast",
            GROUP,
            "--no-announce",
        ],
    );
    assert!(
        p.wait_for_line("listening on", SLOW).is_some(),
        "{}",
        p.stderr()
    );
    p
}

/// `listen` inside `m`'s namespace, writing `dir/NAME.wav` and `dir/NAME.json`, with `more`
/// arguments.
fn listener_in(m: &Member, server: Ipv4Addr, dir: &Path, name: &str, more: &[&str]) -> Listener {
    let wav = dir.join(format!("{name}.wav"));
    let json = dir.join(format!("{name}.json"));
    let server = format!("{server}:5000");
    let (w, j) = (wav.display().to_string(), json.display().to_string());
    let mut args = vec![
        "--server",
        &server,
        "--output",
        &w,
        "--stats-json",
        &j,
        "--quiet",
        // Played as the jitter buffer fills: twenty listeners and the server in namespaces on
        // two cores delay the clock exchanges of an 8 s stream too much for a rate estimate,
        // and this test is about delivery, not the room's clock.
        "--sync",
        "off",
        "--name",
        name,
    ];
    args.extend_from_slice(more);
    let proc = spawn_in(&m.ns, &bin("listen"), &args);
    Listener { proc, wav, json }
}

/// Checks a finished listener: exit 0, `transport` as expected, nothing concealed, and its
/// WAV is the source's last frames sample for sample (a listener that joined after the start
/// hears the rest of the stream), at least half of it. A listener starved on a busy machine
/// may have a few datagrams dropped at its socket (at most 1 %), repaired in time.
fn check_listener(l: &mut Listener, name: &str, source: &[i16], transport: &str) {
    assert_eq!(l.proc.exit_code(SLOW), 0, "{name}: {}", l.proc.stderr());
    let st = l.stats();
    assert_eq!(st["transport"], transport, "{name}: {st}");
    assert!(
        stat(&st, "lost") <= stat(&st, "expected") / 100,
        "{name}: {st}"
    );
    assert_eq!(stat(&st, "concealed_ms"), 0, "{name}: {st}");
    assert_eq!(stat(&st, "duplicates"), 0, "{name}: {st}");
    let (_, wav) = l.samples();
    assert!(
        wav.len() >= source.len() / 2,
        "{name}: only {} of {} samples",
        wav.len(),
        source.len()
    );
    let tail = &source[source.len() - wav.len().min(source.len())..];
    assert_eq!(
        first_difference(&wav, tail),
        None,
        "{name}: the WAV is not the source's tail: {st}"
    );
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// What the server's link and CPU did while `n` listeners played the group.
struct Measured {
    bytes_per_s: f64,
    cpu: f64,
}

/// One run: a server and `n` listeners in their own namespaces, spawned at once; measures the
/// server once every listener receives the group only (with `unicast`: the listeners refuse
/// the group, for comparison) and the start-up load has passed, then checks every listener.
fn serve_group(
    lan: &mut Lan,
    srv: &Member,
    n: usize,
    unicast: bool,
    (dir, clip, src): (&Path, &Path, &[i16]),
) -> Measured {
    let members: Vec<Member> = (0..n).map(|_| lan.member(true)).collect();
    let mut server = multicast_server(srv, clip);
    let more: &[&str] = if unicast { &["--no-multicast"] } else { &[] };
    let mut listeners: Vec<Listener> = members
        .iter()
        .enumerate()
        .map(|(i, m)| listener_in(m, srv.addr, dir, &format!("n{n}u{unicast}l{i}"), more))
        .collect();
    let (needle, transport) = if unicast {
        ("accepted", "unicast")
    } else {
        ("receives the group: no unicast audio", "multicast")
    };
    assert!(
        server.wait_for_lines(needle, n, SLOW),
        "not every listener is served: {}",
        server.stderr()
    );
    // Twenty processes starting on a loaded machine can stall the server for a moment, and a
    // tick that catches up would then count twice in the window: it starts a second later.
    std::thread::sleep(Duration::from_secs(1));
    let window = Duration::from_secs(3);
    let (b0, c0, t0) = (tx_bytes(&srv.ns), cpu_time(server.pid()), Instant::now());
    std::thread::sleep(window);
    let (b1, c1, t1) = (tx_bytes(&srv.ns), cpu_time(server.pid()), Instant::now());
    assert!(
        server.wait_timeout(Duration::ZERO).is_none(),
        "the stream ended inside the measuring window: {}",
        server.stderr()
    );
    let secs = (t1 - t0).as_secs_f64();
    for (i, l) in listeners.iter_mut().enumerate() {
        check_listener(l, &format!("listener {i} of {n}"), src, transport);
    }
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    assert!(
        !server.stderr().contains("does not receive the group"),
        "{}",
        server.stderr()
    );
    Measured {
        bytes_per_s: (b1 - b0) as f64 / secs,
        cpu: (c1 - c0).as_secs_f64() / secs,
    }
}

#[test]
fn native_multicast_serves_1_and_20_listeners_sample_exact_for_the_same_bytes_per_second() {
    if !require_netns("native multicast across network namespaces") {
        return;
    }
    let dir = tempdir();
    let (clip, src) = noise_clip(dir.path(), 8);
    let mut lan = Lan::new();
    let srv = lan.member(true);
    let run = (dir.path(), clip.as_path(), src.as_slice());
    let one = serve_group(&mut lan, &srv, 1, false, run);
    let twenty = serve_group(&mut lan, &srv, 20, false, run);
    let unicast = serve_group(&mut lan, &srv, 20, true, run);
    eprintln!(
        "server link: 1 listener {:.0} B/s, {:.1} % CPU; 20 listeners {:.0} B/s, {:.1} % CPU; \
         20 listeners refusing the group {:.0} B/s, {:.1} % CPU \
         (44.1 kHz stereo PCM = 176400 B/s of audio)",
        one.bytes_per_s,
        one.cpu * 100.0,
        twenty.bytes_per_s,
        twenty.cpu * 100.0,
        unicast.bytes_per_s,
        unicast.cpu * 100.0,
    );
    assert!(
        unicast.bytes_per_s > 15.0 * twenty.bytes_per_s,
        "20 unicast listeners cost {} B/s, the group {} B/s",
        unicast.bytes_per_s,
        twenty.bytes_per_s
    );
    assert!(one.bytes_per_s > 150_000.0, "{}", one.bytes_per_s);
    assert!(
        (twenty.bytes_per_s - one.bytes_per_s).abs() / one.bytes_per_s < 0.05,
        "1 listener: {} B/s, 20 listeners: {} B/s",
        one.bytes_per_s,
        twenty.bytes_per_s
    );
}

#[test]
fn a_listener_the_group_does_not_reach_falls_back_to_unicast_plays_sample_exact_and_says_so() {
    if !require_netns("multicast fallback across network namespaces") {
        return;
    }
    let dir = tempdir();
    let (clip, src) = noise_clip(dir.path(), 4);
    let mut lan = Lan::new();
    let srv = lan.member(true);
    let reached = lan.member(true);
    // No multicast route, and the bridge passes it no multicast.
    let cut_off = lan.member(false);
    lan.block_multicast_to(&cut_off);
    let mut server = multicast_server(&srv, &clip);
    let mut a = listener_in(&reached, srv.addr, dir.path(), "reached", &[]);
    let mut b = listener_in(&cut_off, srv.addr, dir.path(), "cutoff", &[]);
    check_listener(&mut a, "the reached listener", &src, "multicast");
    check_listener(&mut b, "the cut-off listener", &src, "unicast-fallback");
    let said = b
        .proc
        .stderr()
        .lines()
        .filter(|l| l.contains("no audio from multicast group 239.255.12.1:5004"))
        .count();
    assert_eq!(said, 1, "said once: {}", b.proc.stderr());
    assert!(!a.proc.stderr().contains("no audio from multicast group"));
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    let log = server.stderr();
    assert!(
        log.contains(&format!("{}:", cut_off.addr)) && log.contains("does not receive the group"),
        "{log}"
    );
}

#[test]
fn bad_multicast_values_exit_2_naming_the_value() {
    let clip = demo_clip();
    let file = clip.display().to_string();
    for (args, needle) in [
        (
            vec!["--multicast", "198.18.1.1:5004"],
            "198.18.1.1 is not a multicast address",
        ),
        (vec!["--multicast", "239.1.1.1"], "239.1.1.1"),
        (
            vec!["--multicast", "239.1.1.1:5004", "--ttl", "0"],
            "--ttl 0",
        ),
        (
            vec!["--multicast", "239.1.1.1:5004", "--ttl", "256"],
            "--ttl 256",
        ),
        (
            vec!["--bind", "::1", "--multicast", "239.1.1.1:5004"],
            "--multicast 239.1.1.1:5004 is IPv4",
        ),
    ] {
        let mut all: Vec<String> = ["--port", "0", "--no-announce", "--file", &file]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(&bin("streamd"), &all, &[]);
        assert_eq!(p.exit_code(SLOW), 2, "{args:?}: {}", p.stderr());
        assert!(p.stderr().contains(needle), "{args:?}: {}", p.stderr());
    }
}
