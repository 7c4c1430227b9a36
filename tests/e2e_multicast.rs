//! Multicast inside network namespaces the test builds and removes itself: a bridge in one
//! namespace, the server and each receiver in their own, joined by veth pairs, with addresses
//! from the benchmarking range 198.18.0.0/15 inside the namespaces only (nothing is sent on the
//! machine's own interfaces).
//!
//! - SAP: the announcements of `--rtp GROUP:PORT --sap` reach a socket in another namespace on
//!   224.2.127.254:9875, name the group and the server, and a deletion follows the end.
//! - RTP to a group: every receiver gets the packets, and the server's bytes per second on its
//!   link do not depend on how many receivers joined.
//!
//! Needs root (`ip netns add`). With `EARSHOT_REQUIRE_NETNS=1` it must run; otherwise, without
//! root or `ip`, it says why and passes without testing.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Runs `ip ARGS…`, failing the test with its stderr; returns its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the namespaces can be built here; the reason when not.
fn netns_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (ip netns add needs it)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("no `ip` command ({e}); install iproute2")),
    }
}

/// Skips (loudly) when namespaces are unavailable, unless `EARSHOT_REQUIRE_NETNS=1`.
fn require_netns(what: &str) -> bool {
    match netns_unavailable() {
        None => true,
        Some(why) if std::env::var("EARSHOT_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("EARSHOT_REQUIRE_NETNS=1 but network namespaces are unavailable: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: {what}: {why}");
            false
        }
    }
}

/// A bridge namespace and member namespaces; every namespace is deleted on drop (their veth
/// pairs go with them), also when the test fails.
struct Lan {
    prefix: String,
    bridge: String,
    made: Vec<String>,
    members: u32,
}

impl Lan {
    fn new() -> Lan {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "em{}x{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("{prefix}br");
        let mut lan = Lan {
            prefix,
            bridge: bridge.clone(),
            made: Vec::new(),
            members: 0,
        };
        ip(&["netns", "add", &bridge]);
        lan.made.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        // Plain flooding: no IGMP snooping state to wait for.
        ip(&[
            "-n",
            &bridge,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        lan
    }

    /// A new namespace on the bridge with address 198.18.78.N/24 (and, with `multicast`, a
    /// route for 224.0.0.0/4); returns its name and address.
    fn member(&mut self, multicast: bool) -> (String, Ipv4Addr) {
        self.members += 1;
        let n = self.members;
        let ns = format!("{}m{n}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        let port = format!("p{n}");
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge,
        ]);
        ip(&["-n", &self.bridge, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.bridge, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(198, 18, 78, u8::try_from(n).unwrap());
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        if multicast {
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        (ns, addr)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `program ARGS…` inside namespace `ns`.
fn spawn_in(ns: &str, program: &Path, args: &[&str]) -> Proc {
    let mut all: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
    all.push(program.display().to_string());
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn(Path::new("ip"), &all, &[])
}

/// A UDP socket bound to `port` inside namespace `ns` that has joined `group` on the interface
/// with address `iface`: made on a thread that entered the namespace, it stays there.
fn group_socket_in(ns: &str, group: Ipv4Addr, port: u16, iface: Ipv4Addr) -> UdpSocket {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
            sock.join_multicast_v4(&group, &iface).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            sock
        })
        .join()
        .unwrap()
    })
}

/// Bytes sent on `eth0` of namespace `ns` so far.
fn tx_bytes(ns: &str) -> u64 {
    let json = ip(&["-n", ns, "-j", "-s", "link", "show", "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx bytes in {json}"))
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
    let (srv_ns, srv_addr) = lan.member(true);
    let (rx_ns, rx_addr) = lan.member(true);
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
    let (srv_ns, srv_addr) = lan.member(true);
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
        let (ns, addr) = lan.member(true);
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
