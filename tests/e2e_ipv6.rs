//! IPv6 end to end: `streamd --bind ::1` and `listen --server [::1]:PORT` stream a file sample
//! for sample. Skipped loudly, with the reason, only where this machine has no ::1.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn a_stream_over_ipv6_loopback_is_sample_exact() {
    if let Err(e) = std::net::UdpSocket::bind("[::1]:0") {
        eprintln!(
            "\n!!!!! SKIPPED the IPv6 test: cannot bind [::1]:0 on this machine: {e} !!!!!\n"
        );
        return;
    }
    let file = fixture("stereo44.flac");
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    let dir = tempdir();
    let mut server = Server::start_on("::1", &file, &[]);
    assert!(
        server.addr.is_ipv6() && server.addr.ip().is_loopback(),
        "streamd listens on {}",
        server.addr
    );
    let mut l = Listener::start(server.addr, dir.path(), "v6", &[]);
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    // The server saw the listener at its IPv6 address.
    assert!(
        server
            .proc
            .wait_for_line("accepted [::1]:", std::time::Duration::ZERO)
            .is_some(),
        "{}",
        server.proc.stderr()
    );
    let s = l.stats();
    assert_eq!(s["end_reason"], "finished", "{s}");
    assert_eq!(stat(&s, "lost"), 0, "{s}");
    assert_eq!(stat(&s, "expected"), stat(&s, "received"), "{s}");
    let (spec, got) = l.samples();
    assert_eq!((spec.sample_rate, spec.channels), (44_100, 2));
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "{} samples over IPv6, the file has {}",
        got.len(),
        expected.len()
    );
}
