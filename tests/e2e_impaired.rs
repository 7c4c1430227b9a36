//! Through the impairment proxy with fixed seeds: `listen`'s `lost`, `duplicates` and
//! `out_of_order` equal exactly what the proxy did, concealment happens only where audio was
//! lost, and the WAV is exactly as long as the stream.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use testkit::impair::{Impairment, Proxy};

fn run_through_proxy(file: &Path, imp: Impairment) {
    let (info, expected) = streamd::source::decode_all(file).unwrap();
    let channels = usize::from(info.channels);
    let dir = tempdir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Without repair: every loss is concealed, which the checks below measure.
    let mut server = Server::start(
        file,
        &["--interval", "20ms", "--fec", "off", "--retransmit", "off"],
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

    // Latency well above jitter + the proxy's reorder hold, so nothing is late. Played as the
    // jitter buffer fills: the WAV must hold every frame of the stream, which a synchronised
    // listener's clock estimate through 10 ms of jitter may trade for a slip or a resync.
    let mut listener = Listener::start(
        proxy_addr,
        dir.path(),
        "l",
        &["--latency", "400ms", "--sync", "off"],
    );
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    let _ = stop_tx.send(());
    let report = rt.block_on(proxy_task).unwrap();

    assert_eq!(report.clients.len(), 1, "{report}");
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
    eprintln!(
        "seed {}: dropped {} duplicated {} out of order {} of {} datagrams; listen: lost {} dup {} ooo {}",
        imp.seed,
        audio.dropped_seqs.len(),
        audio.duplicates,
        audio.out_of_order,
        last - first + 1,
        stat(&s, "lost"),
        stat(&s, "duplicates"),
        stat(&s, "out_of_order")
    );
    let ctx = format!("seed {}: listen {s}\nproxy {report}", imp.seed);
    assert!(
        audio.dropped_seqs.len() + audio.duplicates as usize + audio.out_of_order as usize > 0,
        "the impairment did nothing; pick another seed. {ctx}"
    );
    assert_eq!(stat(&s, "expected"), last - first + 1, "{ctx}");
    assert_eq!(stat(&s, "received"), audio.unique_sent, "{ctx}");
    assert_eq!(stat(&s, "lost"), audio.lost_between(first, last), "{ctx}");
    assert_eq!(stat(&s, "duplicates"), audio.duplicates, "{ctx}");
    assert_eq!(stat(&s, "out_of_order"), audio.out_of_order, "{ctx}");
    assert_eq!(stat(&s, "late"), 0, "{ctx}");

    let (_, got) = listener.samples();
    assert_eq!(
        got.len(),
        expected.len(),
        "the WAV is not as long as the stream. {ctx}"
    );
    // Every frame that differs from the decoded file lies in audio that was lost: there can be
    // at most (lost datagrams × frames per datagram) of them, and none when nothing was lost.
    let differing = got
        .chunks(channels)
        .zip(expected.chunks(channels))
        .filter(|(a, b)| a != b)
        .count() as u64;
    let fpp = (1400 - proto::limits::AUDIO_OVERHEAD) as u64 / (2 * channels as u64);
    let lost = stat(&s, "lost");
    assert!(
        differing <= lost * fpp,
        "{differing} frames differ but only {lost} datagrams were lost. {ctx}"
    );
    if lost == 0 {
        assert_eq!(differing, 0);
    }
    let concealed_ms = s["concealed_ms"].as_f64().unwrap();
    let lost_ms = (lost * fpp) as f64 * 1000.0 / f64::from(info.sample_rate);
    assert!(
        concealed_ms <= lost_ms + 1.0,
        "concealed {concealed_ms} ms for {lost_ms} ms of lost audio. {ctx}"
    );
    assert!(lost == 0 || concealed_ms > 0.0, "{ctx}");
    drop(rt);
}

#[test]
fn bursty_loss_duplication_and_reordering_are_counted_exactly() {
    let imp = Impairment {
        loss: 0.05,
        burst: Some(3.0),
        jitter: Duration::from_millis(10),
        reorder: 0.03,
        dup: 0.02,
        seed: 7,
        ..Impairment::none()
    };
    run_through_proxy(&fixture("stereo44.wav"), imp);
}

#[test]
fn jitter_heavy_link_is_counted_exactly() {
    let imp = Impairment {
        loss: 0.02,
        burst: None,
        jitter: Duration::from_millis(30),
        reorder: 0.05,
        dup: 0.01,
        seed: 42,
        ..Impairment::none()
    };
    run_through_proxy(&fixture("mono22.mp3"), imp);
}
