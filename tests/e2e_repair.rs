//! Loss repair end to end, through the seeded impairment proxy: with FEC and retransmission
//! on, the listener's WAV equals the decoded file sample for sample although the network lost
//! audio, and `lost` is exactly what the proxy dropped (repair never counts as received).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use testkit::impair::{Impairment, Proxy};

#[test]
fn repair_on_plays_every_sample_and_lost_is_what_the_proxy_dropped() {
    let file = fixture("stereo44.wav");
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    let imp = Impairment {
        loss: 0.05,
        burst: Some(3.0),
        jitter: Duration::from_millis(5),
        reorder: 0.02,
        dup: 0.01,
        seed: 11,
        ..Impairment::none()
    };
    let dir = tempdir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(
        &file,
        &[
            "--interval",
            "20ms",
            "--fec",
            "4,1",
            "--retransmit",
            "on",
            "--latency",
            "400ms",
        ],
    );
    let proxy = rt
        .block_on(Proxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            server.addr,
            imp.clone(),
        ))
        .unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = rt.spawn(proxy.run(async {
        let _ = stop_rx.await;
    }));
    // A playout delay far above the loopback round trip: every Nack has time for retries.
    let mut listener = Listener::start(proxy_addr, dir.path(), "l", &["--latency", "400ms"]);
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    let _ = stop_tx.send(());
    let report = rt.block_on(proxy_task).unwrap();
    let audio = &report.clients[0].downstream.audio;
    let first = audio
        .dropped_seqs
        .iter()
        .chain(&audio.sent_seqs)
        .min()
        .copied()
        .unwrap();
    let last = audio
        .dropped_seqs
        .iter()
        .chain(&audio.sent_seqs)
        .max()
        .copied()
        .unwrap();
    let s = listener.stats();
    let ctx = format!("listen {s}\nproxy {report}");
    let lost = stat(&s, "lost");
    eprintln!(
        "dropped {} of {} audio datagrams; listen: lost {lost}, recovered fec {} retransmit {}, concealed {} ms",
        audio.dropped_seqs.len(),
        last - first + 1,
        stat(&s, "recovered_fec"),
        stat(&s, "recovered_retransmit"),
        s["concealed_ms"]
    );
    assert!(
        !audio.dropped_seqs.is_empty(),
        "the proxy dropped nothing: {ctx}"
    );
    assert_eq!(lost, audio.lost_between(first, last), "{ctx}");
    assert_eq!(stat(&s, "received"), audio.unique_sent, "{ctx}");
    assert!(
        stat(&s, "recovered_fec") + stat(&s, "recovered_retransmit") >= lost,
        "{ctx}"
    );
    assert_eq!(s["concealed_ms"].as_f64().unwrap(), 0.0, "{ctx}");
    let (_, got) = listener.samples();
    assert_eq!(got.len(), expected.len(), "{ctx}");
    assert!(
        got == expected,
        "first difference at {:?}. {ctx}",
        first_difference(&got, &expected)
    );
    drop(rt);
}
