//! Capacity: with `--max-clients N`, listener N+1 is refused (exit 3, with the reason), and once
//! a listener leaves a new one is accepted.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn listener_beyond_capacity_is_rejected_and_admitted_after_a_leave() {
    let dir = tempdir();
    let dir = dir.path();
    let mut server = Server::start(&demo_clip(), &["--max-clients", "2", "--loop"]);
    let mut a = Listener::start(server.addr, dir, "a", &[]);
    let mut b = Listener::start(server.addr, dir, "b", &[]);
    wait_accepted(&server, 2);

    let mut c = Listener::start(server.addr, dir, "c", &[]);
    assert_eq!(
        c.proc.exit_code(SLOW),
        3,
        "third listener: {}",
        c.proc.stderr()
    );
    let msg = c.proc.stderr();
    assert!(
        msg.contains(&format!("server {} is full (2 listeners)", server.addr)),
        "rejection message: {msg}"
    );

    // A leaves (Ctrl-C sends Leave) once it plays: its slot frees at once.
    wait_for_audio(&a);
    a.proc.signal("INT");
    assert_eq!(a.proc.exit_code(SLOW), 0, "{}", a.proc.stderr());
    assert_eq!(a.stats()["end_reason"], "interrupted");
    assert!(stat(&a.stats(), "received") > 0);

    let mut d = Listener::start(server.addr, dir, "d", &[]);
    wait_accepted(&server, 3);
    // d plays: audio reached it through the freed slot.
    wait_for_audio(&d);
    assert!(
        d.proc.wait_timeout(Duration::ZERO).is_none(),
        "d exited: {}",
        d.proc.stderr()
    );
    d.proc.signal("INT");
    assert_eq!(d.proc.exit_code(SLOW), 0, "{}", d.proc.stderr());
    assert!(
        stat(&d.stats(), "received") > 0,
        "d got no audio: {}",
        d.stats()
    );

    b.proc.signal("INT");
    assert_eq!(b.proc.exit_code(SLOW), 0);
    server.proc.signal("INT");
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
}

/// Waits until the server has logged `n` accepted listeners.
fn wait_accepted(server: &Server, n: usize) {
    assert!(
        server.proc.wait_for_lines("accepted", n, SLOW),
        "server never accepted {n} listeners:\n{}",
        server.proc.stderr()
    );
}
