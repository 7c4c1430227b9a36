//! `kill -9` of a listener: it never says goodbye, so the server must notice its silence, evict
//! it within client-timeout + 1 s, and the other listener's audio must be untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

#[test]
fn a_killed_listener_is_evicted_and_the_others_are_untouched() {
    let clip = demo_clip();
    let (_, expected) = streamd::source::decode_all(&clip).unwrap();
    let dir = tempdir();
    let dir = dir.path();
    let mut server = Server::start(&clip, &["--client-timeout", "2s"]);

    let mut victim = Listener::start(server.addr, dir, "victim", &[]);
    let first = server
        .proc
        .wait_for_line("accepted", SLOW)
        .expect("victim accepted");
    let victim_addr: std::net::SocketAddr = first
        .split("accepted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    // The survivor joins first in the stream's life: start it before audio begins flowing far.
    // On its own clock: synchronised playout may drop or repeat single frames on a busy
    // machine, and the survivor's audio is compared sample for sample.
    let mut survivor = Listener::start(
        server.addr,
        dir,
        "survivor",
        &["--latency", "300ms", "--sync", "off"],
    );

    // Both play: the victim dies mid-stream.
    wait_for_audio(&victim);
    wait_for_audio(&survivor);
    let killed = SystemTime::now();
    victim.proc.signal("KILL");
    let _ = victim.proc.wait_timeout(SLOW);

    let evicted = server
        .proc
        .wait_for_line(&format!("evicted {victim_addr}"), SLOW)
        .unwrap_or_else(|| panic!("no eviction logged:\n{}", server.proc.stderr()));
    // Timed by the server's own clock, in its log line: how fast the test saw the line does
    // not count. The victim was last heard before the kill, so it must be gone within
    // client-timeout (2 s) + 1 s of it.
    let took = (log_time_of_day(&evicted) - time_of_day(killed)).rem_euclid(86_400.0);
    assert!(
        (0.0..=3.0).contains(&took),
        "evicted {took:.3} s after the kill: {evicted}"
    );

    assert_eq!(
        survivor.proc.exit_code(SLOW),
        0,
        "{}",
        survivor.proc.stderr()
    );
    let s = survivor.stats();
    assert_eq!(stat(&s, "lost"), 0, "{s}");
    let (_, got) = survivor.samples();
    // The survivor joined a moment after the stream started (late joiners join live): its WAV
    // must equal the tail of the decoded file exactly.
    assert!(!got.is_empty() && got.len() <= expected.len());
    let tail = &expected[expected.len() - got.len()..];
    assert_eq!(
        first_difference(&got, tail),
        None,
        "survivor's audio differs: {s}"
    );
    assert_eq!(server.proc.exit_code(SLOW), 0);
}

/// Seconds since midnight UTC.
fn time_of_day(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) * 1e-9
}

/// Seconds since midnight UTC of a log line stamped `YYYY-MM-DDTHH:MM:SS.ffffffZ …`.
fn log_time_of_day(line: &str) -> f64 {
    let stamp = line
        .split_whitespace()
        .next()
        .and_then(|s| s.split_once('T'))
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("no time stamp in {line:?}"));
    let parts: Vec<f64> = stamp.split(':').map(|p| p.parse().unwrap()).collect();
    let [h, m, s] = parts[..] else {
        panic!("no HH:MM:SS in {line:?}")
    };
    h * 3600.0 + m * 60.0 + s
}
