//! `listen --stay` against real binaries on loopback: the server killed with SIGKILL and started
//! again on the same port, and a server frozen for 10 s (an outage) then thawed. The listener
//! rejoins, plays on into the same WAV file, and its statistics show every session and the
//! outages.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// Starts `streamd --bind 127.0.0.1 --port PORT --file demo --loop` and waits for its
/// `listening on` line.
fn streamd_on(port: u16) -> (Proc, SocketAddr) {
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--file",
        &demo_clip().display().to_string(),
        "--loop",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::spawn(&bin("streamd"), &args, &[]);
    let line = proc
        .wait_for_line("listening on", SLOW)
        .unwrap_or_else(|| panic!("streamd never listened; stderr:\n{}", proc.stderr()));
    let addr = line
        .split("listening on")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (proc, addr)
}

fn wav_len(l: &Listener) -> u64 {
    std::fs::metadata(&l.wav).map_or(0, |m| m.len())
}

/// Waits until the WAV file grew by more than the WAV sink's write buffer past `from` bytes:
/// audio of the new session reached the file.
fn wait_for_growth(l: &Listener, from: u64) {
    wait_until(
        &format!("the WAV to grow past {from} bytes ({})", l.proc.stderr()),
        SLOW,
        || wav_len(l) > from + (64 << 10),
    );
}

/// Interrupts the listener and returns its statistics, checking the exit code (0) and that
/// they cover at least two sessions and one outage.
fn finish(mut l: Listener) -> serde_json::Value {
    l.proc.signal("INT");
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    let s = l.stats();
    assert_eq!(s["end_reason"], "interrupted", "{s}");
    assert!(stat(&s, "session_count") >= 2, "{s}");
    assert!(stat(&s, "outages") >= 1, "{s}");
    let sessions = s["sessions"].as_array().unwrap();
    assert_eq!(sessions.len() as u64, stat(&s, "session_count"), "{s}");
    // The totals are the sums of the sessions.
    for k in ["received", "expected", "played_ms"] {
        let sum: u64 = sessions.iter().map(|x| stat(x, k)).sum();
        assert_eq!(stat(&s, k), sum, "{k}: {s}");
    }
    let table = l.proc.stderr();
    assert!(table.contains("stream statistics"), "{table}");
    s
}

#[test]
fn a_staying_listener_rejoins_a_server_killed_and_restarted_on_the_same_port() {
    let dir = tempdir();
    let (mut first, addr) = streamd_on(0);
    let l = Listener::start(addr, dir.path(), "stay", &["--stay"]);
    wait_for_audio(&l);
    assert!(
        l.proc.wait_for_line("playing", SLOW).is_some(),
        "{}",
        l.proc.stderr()
    );
    first.signal("KILL");
    let _ = first.wait_timeout(SLOW);
    let (second, again) = streamd_on(addr.port());
    assert_eq!(again, addr);
    let back = Instant::now();
    let rejoined = l.proc.wait_for_line("rejoined", SLOW);
    let took = back.elapsed();
    assert!(
        rejoined.is_some(),
        "no rejoin; listener:\n{}\nserver:\n{}",
        l.proc.stderr(),
        second.stderr()
    );
    assert!(
        took <= Duration::from_secs(3),
        "rejoined {took:?} after the server's return: {}",
        l.proc.stderr()
    );
    // The loss was logged once, and it plays on into the same file.
    assert_eq!(
        l.proc.stderr().matches("lost the stream").count(),
        1,
        "{}",
        l.proc.stderr()
    );
    let at_rejoin = wav_len(&l);
    wait_for_growth(&l, at_rejoin);
    let s = finish(l);
    let first_end = &s["sessions"][0]["end_reason"];
    assert!(
        first_end == "evicted" || first_end == "timeout",
        "first session ended {first_end}: {s}"
    );
    assert!(stat(&s["sessions"][0], "received") > 0, "{s}");
    assert!(stat(&s["sessions"][1], "received") > 0, "{s}");
}

#[test]
fn a_staying_listener_rejoins_after_a_ten_second_outage() {
    /// The outage the path is blocked for.
    const OUTAGE: Duration = Duration::from_secs(10);
    let dir = tempdir();
    let (server, addr) = streamd_on(0);
    let l = Listener::start(addr, dir.path(), "outage", &["--stay"]);
    wait_for_audio(&l);
    // A frozen server: nothing reaches the listener, nothing it sends is answered.
    server.signal("STOP");
    let stopped = Instant::now();
    assert!(
        l.proc.wait_for_line("lost the stream", SLOW).is_some(),
        "{}",
        l.proc.stderr()
    );
    // The outage itself lasts OUTAGE: this wait is the scenario, not a synchronisation.
    if let Some(left) = OUTAGE.checked_sub(stopped.elapsed()) {
        std::thread::sleep(left);
    }
    let before = wav_len(&l);
    server.signal("CONT");
    assert!(
        l.proc.wait_for_line("rejoined", SLOW).is_some(),
        "{}\nserver:\n{}",
        l.proc.stderr(),
        server.stderr()
    );
    // Retries during the outage were not logged one by one.
    let log = l.proc.stderr();
    assert!(log.matches("still trying").count() <= 2, "{log}");
    wait_for_growth(&l, before);
    let s = finish(l);
    assert_eq!(s["sessions"][0]["end_reason"], "timeout", "{s}");
    // The outage lasted from the silence timeout (3 s after the freeze) to the rejoin.
    assert!(stat(&s, "outage_ms") >= 5_000, "{s}");
}
