//! The load tool (listen's sessions) against its stand-in server (`load::fake`: streamd's
//! endpoint on silence) over 127.0.0.1, on each batched path of streamd's fan-out: every
//! `Audio` datagram the server's fan-out counted as sent reaches a listener, the `End` makes the
//! tail exact, and the path asked for is the path used (a GSO run that fell back to plain sends
//! fails here instead of passing as plain).
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

use std::net::UdpSocket;
use std::time::Duration;

use streamd::fanout::SendPath;
use testkit::load::{self, LoadConfig, fake};

/// Two listeners: a GSO call then carries 3 or 6 datagrams, a plain sendmmsg call 1 or 2, so
/// the counters tell the paths apart.
const LISTENERS: usize = 2;

fn load_the_fake_server(path: SendPath) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        fake::serve(&sock, Duration::from_millis(1500), 10, path).unwrap()
    });
    // Longer than the server runs: the listeners stop on its End, not on this duration.
    let rep = load::run(&LoadConfig::new(addr, LISTENERS, Duration::from_secs(30))).unwrap();
    let st = server.join().unwrap();

    assert_eq!(st.path, path, "the fan-out fell back from {path:?}");
    assert_eq!(st.endpoint.sessions.accepted, LISTENERS as u64);
    assert_eq!(rep.accepted, LISTENERS as u64);
    assert_eq!(rep.ended, LISTENERS as u64, "every listener got End");
    assert_eq!(st.sent.dropped(), 0, "{:?}", st.sent);
    let sent = st.audio;
    assert!(sent.datagrams > 0, "{sent:?}");
    // The stream starts at once, so a listener misses at most what was sent before it joined.
    assert!(
        sent.datagrams <= LISTENERS as u64 * st.endpoint.audio_datagrams,
        "{sent:?} {:?}",
        st.endpoint
    );
    assert_eq!(rep.totals.received, sent.datagrams, "{rep}");
    assert_eq!(rep.totals.expected, sent.datagrams, "{rep}");
    assert_eq!(rep.totals.lost, 0, "{rep}");
    assert_eq!(rep.totals.duplicates, 0, "{rep}");
    assert_eq!(rep.tool.rx_queue_drops, 0);
    match path {
        // One call per tick carries each listener's whole tick (3 segments).
        SendPath::Gso => assert!(3 * sent.syscalls <= sent.datagrams, "{sent:?}"),
        // One call per datagram of the tick carries it to at most 2 listeners.
        _ => assert!(3 * sent.syscalls > sent.datagrams, "{sent:?}"),
    }
}

#[test]
fn gso_stand_in_delivers_every_datagram_on_the_gso_path() {
    load_the_fake_server(SendPath::Gso);
}

#[test]
fn sendmmsg_stand_in_delivers_every_datagram() {
    load_the_fake_server(SendPath::Sendmmsg);
}
