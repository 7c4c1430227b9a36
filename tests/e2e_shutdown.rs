//! Stopping the server mid-stream: on Ctrl-C or SIGTERM every listener gets `End` and exits 0
//! promptly with `end_reason` `shutdown` and its statistics; a listener that missed every `End`
//! (the server was killed outright) exits 4 after its `--timeout`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// How long a listener may take from the signal to its exit: `End` goes out at once (3 copies
/// within 100 ms), then the listener plays out its buffer (the default 100 ms latency). The
/// listeners' `--timeout` is 10 s, so an exit through the timeout path fails this by far.
const PROMPT: Duration = Duration::from_millis(2500);

fn stop_with(signal: &str) {
    let dir = tempdir();
    let dir = dir.path();
    let mut server = Server::start(&demo_clip(), &["--loop"]);
    let mut listeners: Vec<Listener> = (0..2)
        .map(|i| Listener::start(server.addr, dir, &format!("l{i}"), &["--timeout", "10s"]))
        .collect();
    // Let audio flow.
    let deadline = Instant::now() + SLOW;
    while server.proc.stderr().matches("accepted").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "not accepted: {}",
            server.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));

    let t0 = Instant::now();
    server.proc.signal(signal);
    for l in &mut listeners {
        let code = l.proc.exit_code(SLOW);
        let took = t0.elapsed();
        assert_eq!(code, 0, "listener after SIG{signal}: {}", l.proc.stderr());
        assert!(
            took < PROMPT,
            "listener took {took:?} to exit after SIG{signal}"
        );
        let s = l.stats();
        assert_eq!(s["end_reason"], "shutdown", "{s}");
        assert!(stat(&s, "received") > 0);
        let table = l.proc.stdout() + &l.proc.stderr();
        assert!(
            table.contains("lost") && table.contains('%'),
            "no statistics table:\n{table}"
        );
    }
    assert_eq!(
        server.proc.exit_code(SLOW),
        0,
        "streamd after SIG{signal}: {}",
        server.proc.stderr()
    );
}

#[test]
fn ctrl_c_ends_every_listener_cleanly() {
    stop_with("INT");
}

#[test]
fn sigterm_ends_every_listener_cleanly() {
    stop_with("TERM");
}

#[test]
fn a_listener_that_missed_every_end_times_out_with_exit_4() {
    let dir = tempdir();
    let mut server = Server::start(&demo_clip(), &["--loop"]);
    let mut l = Listener::start(server.addr, dir.path(), "l", &["--timeout", "1s"]);
    let deadline = Instant::now() + SLOW;
    while !server.proc.stderr().contains("accepted") {
        assert!(
            Instant::now() < deadline,
            "not accepted: {}",
            server.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(800));
    // SIGKILL: no End is ever sent.
    server.proc.signal("KILL");
    let t0 = Instant::now();
    let code = l.proc.exit_code(SLOW);
    let took = t0.elapsed();
    assert_eq!(code, 4, "{}", l.proc.stderr());
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before its 1 s timeout"
    );
    assert_eq!(l.stats()["end_reason"], "timeout");
    let _ = server.proc.wait_timeout(SLOW);
}
