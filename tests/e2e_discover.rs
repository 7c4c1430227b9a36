//! Discovery by mDNS between network namespaces the test builds and removes itself: a bridge in
//! one namespace, each server and the listener in their own, joined by veth pairs, with
//! addresses from the benchmarking range 198.18.0.0/15 inside the namespaces only (nothing is
//! sent on the machine's own interfaces).
//!
//! Also: the announced live listener count (`--discover` shows `listeners/capacity`), and a
//! staying listener that found its server by mDNS finding it again after the server came back
//! on a new port.
//!
//! Needs root (`ip netns add`). Under `cargo xtask test` (`EARSHOT_REQUIRE_NETNS=1`) it must
//! run; otherwise, without root or `ip`, it says why and passes without testing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{self, Lan, spawn_in};
use common::*;

/// Skips (loudly) when namespaces are unavailable, unless `EARSHOT_REQUIRE_NETNS=1`.
fn require_netns() -> bool {
    netns::require_netns("mDNS discovery across network namespaces")
}

/// A new member of `lan` with a multicast route (mDNS needs it): its namespace and address.
fn member(lan: &mut Lan) -> (String, String) {
    let m = lan.member(true);
    (m.ns, m.addr.to_string())
}

/// A streamd announcing `file` from `ns` on `addr:port`, once it listens.
fn server_in(ns: &str, addr: &str, port: u16, file: &Path) -> Proc {
    server_with(ns, addr, port, file, &[])
}

/// [`server_in`] with more arguments (`--loop`).
fn server_with(ns: &str, addr: &str, port: u16, file: &Path, more: &[&str]) -> Proc {
    let port = port.to_string();
    let file = file.display().to_string();
    let mut args = vec![
        "--bind",
        addr,
        "--port",
        &port,
        "--file",
        &file,
        "--interval",
        "20ms",
    ];
    args.extend_from_slice(more);
    let p = spawn_in(ns, &bin("streamd"), &args);
    assert!(
        p.wait_for_line("announced as", SLOW).is_some(),
        "streamd did not announce: {}",
        p.stderr()
    );
    p
}

#[test]
fn a_listener_without_server_finds_the_only_one_and_plays_it_sample_exact() {
    if !require_netns() {
        return;
    }
    let mut lan = Lan::new();
    let (srv_ns, srv_addr) = member(&mut lan);
    let (cli_ns, _) = member(&mut lan);
    let file = fixture("stereo44.wav");
    let (info, expected) = streamd::source::decode_all(&file).unwrap();
    let mut server = server_in(&srv_ns, &srv_addr, 5000, &file);
    let dir = tempdir();
    let wav = dir.path().join("found.wav");
    let mut l = spawn_in(
        &cli_ns,
        &bin("listen"),
        &[
            "--output",
            &wav.display().to_string(),
            "--latency",
            "200ms",
            "--timeout",
            "10s",
            "--quiet",
        ],
    );
    assert_eq!(l.exit_code(SLOW), 0, "{}", l.stderr());
    assert!(
        l.stderr()
            .contains(&format!("at {srv_addr}:5000 by mDNS; joining it")),
        "{}",
        l.stderr()
    );
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    let (spec, got) = read_wav(&wav);
    assert_eq!(
        (spec.sample_rate, spec.channels),
        (info.sample_rate, info.channels)
    );
    assert_eq!(first_difference(&got, &expected), None, "{}", l.stderr());
}

#[test]
fn discover_lists_two_servers_and_name_of_server_picks_one() {
    if !require_netns() {
        return;
    }
    let mut lan = Lan::new();
    let (a_ns, a_addr) = member(&mut lan);
    let (b_ns, b_addr) = member(&mut lan);
    let (cli_ns, _) = member(&mut lan);
    let _a = server_in(&a_ns, &a_addr, 5001, &fixture("stereo44.wav"));
    let _b = server_in(&b_ns, &b_addr, 5002, &fixture("mono22.wav"));
    // --discover lists both (waiting the whole --timeout).
    let mut d = spawn_in(&cli_ns, &bin("listen"), &["--discover", "--timeout", "4s"]);
    assert_eq!(d.exit_code(SLOW), 0, "{}", d.stderr());
    let out = d.stdout();
    assert!(out.contains(&format!("{a_addr}:5001")), "{out}");
    assert!(out.contains(&format!("{b_addr}:5002")), "{out}");
    // Two servers and no name: the listener says to choose.
    let mut two = spawn_in(
        &cli_ns,
        &bin("listen"),
        &["--output", "/dev/null", "--timeout", "4s", "--quiet"],
    );
    assert_eq!(two.exit_code(SLOW), 2, "{}", two.stderr());
    assert!(
        two.stderr().contains("--name-of-server"),
        "{}",
        two.stderr()
    );
    // By name: the instance names carry the port.
    let dir = tempdir();
    let wav = dir.path().join("b.wav");
    let mut l = spawn_in(
        &cli_ns,
        &bin("listen"),
        &[
            "--name-of-server",
            &instance_with_port(&out, 5002),
            "--output",
            &wav.display().to_string(),
            "--timeout",
            "10s",
            "--quiet",
        ],
    );
    assert_eq!(l.exit_code(SLOW), 0, "{}", l.stderr());
    assert!(
        l.stderr().contains(&format!("at {b_addr}:5002 by mDNS")),
        "{}",
        l.stderr()
    );
    let (spec, _) = read_wav(&wav);
    assert_eq!(spec.channels, 1, "joined the mono server");
}

/// The quoted instance name on the `--discover` line of the server on `port`.
fn instance_with_port(listing: &str, port: u16) -> String {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!(":{port} ")))
        .unwrap_or_else(|| panic!("no server on port {port} in {listing}"));
    line.split('"').nth(1).unwrap().to_owned()
}

#[test]
fn no_server_exits_4_after_the_timeout() {
    if !require_netns() {
        return;
    }
    let mut lan = Lan::new();
    let (cli_ns, _) = member(&mut lan);
    let mut l = spawn_in(
        &cli_ns,
        &bin("listen"),
        &["--output", "/dev/null", "--timeout", "2s", "--quiet"],
    );
    assert_eq!(l.exit_code(SLOW), 4, "{}", l.stderr());
    assert!(
        l.stderr().contains("no earshot server found"),
        "{}",
        l.stderr()
    );
    let mut d = spawn_in(&cli_ns, &bin("listen"), &["--discover", "--timeout", "2s"]);
    assert_eq!(d.exit_code(SLOW), 4, "{}", d.stderr());
}

/// Runs `listen --discover` in `ns` until its listing has a line with `needle`, for at most
/// `deadline`; returns the last listing.
fn discover_until(ns: &str, needle: &str, deadline: Duration) -> String {
    let until = Instant::now() + deadline;
    loop {
        let mut d = spawn_in(ns, &bin("listen"), &["--discover", "--timeout", "1s"]);
        let code = d.exit_code(SLOW);
        let out = d.stdout();
        if code == 0 && out.lines().any(|l| l.contains(needle)) {
            return out;
        }
        assert!(
            Instant::now() < until,
            "no {needle:?} in --discover after {deadline:?}: {out}\n{}",
            d.stderr()
        );
    }
}

#[test]
fn discover_shows_the_live_listener_count() {
    if !require_netns() {
        return;
    }
    let mut lan = Lan::new();
    let (srv_ns, srv_addr) = member(&mut lan);
    let (cli_ns, _) = member(&mut lan);
    let _server = server_with(
        &srv_ns,
        &srv_addr,
        5000,
        &fixture("stereo44.wav"),
        &["--loop", "--max-clients", "5"],
    );
    let at = format!("{srv_addr}:5000");
    let idle = discover_until(&cli_ns, &at, SLOW);
    assert!(idle.contains("listeners 0/5"), "{idle}");
    let dir = tempdir();
    let wav = dir.path().join("count.wav");
    let l = spawn_in(
        &cli_ns,
        &bin("listen"),
        &["--server", &at, "--output", &wav.display().to_string()],
    );
    assert!(l.wait_for_line("playing", SLOW).is_some(), "{}", l.stderr());
    // Re-announced within REPUBLISH_MIN (2 s) and a check period of the join.
    discover_until(&cli_ns, "listeners 1/5", SLOW);
    l.signal("INT");
    discover_until(&cli_ns, "listeners 0/5", SLOW);
}

#[test]
fn a_staying_listener_finds_its_server_again_on_a_new_port() {
    if !require_netns() {
        return;
    }
    let mut lan = Lan::new();
    let (srv_ns, srv_addr) = member(&mut lan);
    let (cli_ns, _) = member(&mut lan);
    let clip = demo_clip();
    let mut first = server_with(&srv_ns, &srv_addr, 5000, &clip, &["--loop"]);
    let dir = tempdir();
    let wav = dir.path().join("stay.wav");
    let json = dir.path().join("stay.json");
    let mut l = spawn_in(
        &cli_ns,
        &bin("listen"),
        &[
            "--stay",
            "--output",
            &wav.display().to_string(),
            "--stats-json",
            &json.display().to_string(),
            "--timeout",
            "3s",
        ],
    );
    assert!(l.wait_for_line("playing", SLOW).is_some(), "{}", l.stderr());
    assert!(
        l.stderr()
            .contains(&format!("at {srv_addr}:5000 by mDNS; joining it")),
        "{}",
        l.stderr()
    );
    // Killed: no goodbye on mDNS, no End to the listener.
    first.signal("KILL");
    let _ = first.wait_timeout(SLOW);
    let second = server_with(&srv_ns, &srv_addr, 5001, &clip, &["--loop"]);
    let back = Instant::now();
    let rejoined = l.wait_for_line("rejoined", SLOW);
    let took = back.elapsed();
    assert!(
        rejoined.is_some(),
        "no rejoin; listener:\n{}\nserver:\n{}",
        l.stderr(),
        second.stderr()
    );
    eprintln!("rejoined {took:?} after the server came back on a new port");
    // Measured 6.3 s: the 3 s silence timeout, 0.25 s backoff, one failed rejoin of 3 s
    // (--timeout), then a browse that finds the server in well under 0.1 s.
    assert!(
        took <= Duration::from_secs(10),
        "rejoined {took:?} after the server's return: {}",
        l.stderr()
    );
    assert!(
        l.stderr()
            .contains(&format!("again by mDNS, now at {srv_addr}:5001")),
        "{}",
        l.stderr()
    );
    // It plays on into the same file.
    let at_rejoin = std::fs::metadata(&wav).map_or(0, |m| m.len());
    wait_until(&format!("the WAV to grow ({})", l.stderr()), SLOW, || {
        std::fs::metadata(&wav).is_ok_and(|m| m.len() > at_rejoin + (64 << 10))
    });
    l.signal("INT");
    assert_eq!(l.exit_code(SLOW), 0, "{}", l.stderr());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(stat(&s, "session_count"), 2, "{s}");
    assert_eq!(stat(&s, "outages"), 1, "{s}");
    assert!(stat(&s["sessions"][1], "received") > 0, "{s}");
}
