//! The client against a scripted fake server over 127.0.0.1: WAV contents, exact statistics
//! under scripted loss, reordering and duplicates, exit codes and the JSON contract.
//! Streams are about a second long; nothing here measures speed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{CH, FPP, FakeServer, RATE, Script, Tmp, out_of_order, read_wav, source};
use listen::{Config, ExitReason, ListenError, Outcome};
use proto::RejectReason;

fn config(addr: std::net::SocketAddr, wav: std::path::PathBuf) -> Config {
    let mut c = Config::new(addr.to_string());
    c.output = Some(wav);
    c.quiet = true;
    c
}

async fn run(c: Config) -> Result<Outcome, ListenError> {
    listen::run(c, std::future::pending()).await
}

/// 1.2 s of 48 kHz stereo: 240 datagrams in 60 ticks.
const TOTAL: u64 = 57_600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav_is_the_stream_sample_for_sample_when_nothing_is_lost() {
    let tmp = Tmp::new();
    let srv = FakeServer::start(Script::clean(TOTAL)).await;
    let c = config(srv.addr, tmp.path("exact.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    assert_eq!(o.end_reason, ExitReason::Finished);
    assert_eq!(o.exit_code(), 0);
    let s = &o.stats;
    assert_eq!(
        (
            s.expected,
            s.received,
            s.lost,
            s.out_of_order,
            s.duplicates,
            s.late
        ),
        (240, 240, 0, 0, 0, 0)
    );
    assert_eq!(s.concealed_ms, 0);
    assert_eq!(s.played_ms, 1200);
    let (spec, samples) = read_wav(&wav);
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (RATE, CH, 16)
    );
    assert!(samples == source(TOTAL), "WAV differs from the source");
    let log = srv.log.lock().unwrap();
    assert!(log.leaves >= 1, "no Leave");
    assert!(!log.reports.is_empty(), "no Report in 1.2 s");
    // Connect is padded to the anti-amplification minimum.
    assert!(
        log.connects
            .iter()
            .all(|&n| n >= proto::limits::MIN_CONNECT_LEN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_and_duplicates_lose_nothing_and_are_counted_exactly() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.reverse_ticks = true;
    sc.duplicate = [1005, 1050, 1051, 1200].into_iter().collect();
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path("reorder.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    let sent = srv.log.lock().unwrap().sent.clone();
    let s = &o.stats;
    // Each tick of 4 sent backwards: 3 of every 4 arrive below a higher seq.
    assert_eq!(out_of_order(&sent), 180);
    assert_eq!(
        (s.expected, s.received, s.lost, s.out_of_order, s.duplicates),
        (240, 240, 0, 180, 4)
    );
    let (_, samples) = read_wav(&wav);
    assert!(samples == source(TOTAL), "WAV differs from the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_loss_is_counted_exactly_and_concealed_in_place() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    // Seq 1000 is the first datagram. Lose one, a burst of three, and the last two.
    let lost: HashSet<u64> = [1010, 1100, 1101, 1102, 1238, 1239].into_iter().collect();
    sc.drop = lost.clone();
    sc.duplicate = [1020].into_iter().collect();
    let srv = FakeServer::start(sc).await;
    let mut c = config(srv.addr, tmp.path("loss.wav"));
    c.stats_json = Some(tmp.path("loss.json"));
    let wav = c.output.clone().unwrap();
    let o = run(c.clone()).await.unwrap();
    let s = &o.stats;
    assert_eq!(
        (
            s.expected,
            s.received,
            s.lost,
            s.out_of_order,
            s.duplicates,
            s.late
        ),
        (240, 234, 6, 0, 1, 0)
    );
    // 6 datagrams of 5 ms each were concealed; the output keeps the stream's length.
    assert_eq!(s.concealed_ms, 30);
    assert_eq!(s.played_ms, 1200);
    let (_, samples) = read_wav(&wav);
    let src = source(TOTAL);
    assert_eq!(samples.len(), src.len());
    let spf = FPP as usize * usize::from(CH);
    for i in 0..240u64 {
        let r = i as usize * spf..(i as usize + 1) * spf;
        if lost.contains(&(1000 + i)) {
            assert!(
                samples[r.clone()] != src[r],
                "datagram {i} was lost yet plays"
            );
        } else {
            assert!(samples[r.clone()] == src[r], "datagram {i} differs");
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.stats_json.unwrap()).unwrap()).unwrap();
    assert_eq!(v["lost"], 6);
    assert_eq!(v["expected"], 240);
    assert_eq!(v["end_reason"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_plays_from_its_start_ts() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.start_packet = 100;
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path("late.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    assert_eq!((o.stats.expected, o.stats.lost), (140, 0));
    let info = o.info.unwrap();
    assert_eq!((info.start_seq, info.start_ts), (1100, 100 * FPP));
    let (_, samples) = read_wav(&wav);
    let src = source(TOTAL);
    assert!(samples[..] == src[100 * FPP as usize * usize::from(CH)..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_loss_is_concealed_only_as_far_as_the_missing_datagrams_reach() {
    let tmp = Tmp::new();
    // The Welcome claims an hour; the stream is 1.2 s and its last datagram is lost. The end is
    // concealed (the WAV keeps the stream's length), but not the hour the header claimed.
    let mut sc = Script::clean(TOTAL);
    sc.welcome_total = Some(u64::from(RATE) * 3600);
    let last = 1000 + sc.packets() - 1; // the fake server's seqs start at 1000
    sc.drop.insert(last);
    let srv = FakeServer::start(sc).await;
    // Without the cap this would play silence toward the claimed hour: fail, do not hang.
    let o = tokio::time::timeout(
        Duration::from_secs(30),
        run(config(srv.addr, tmp.path("trailing-cap.wav"))),
    )
    .await
    .expect("listen kept playing long after the stream's end")
    .unwrap();
    assert_eq!(o.exit_code(), 0);
    assert_eq!(o.stats.lost, 1, "{:?}", o.stats);
    let (_, samples) = read_wav(&tmp.path("trailing-cap.wav"));
    let frames = samples.len() as u64 / u64::from(CH);
    assert!(
        frames <= TOTAL + FPP,
        "{frames} frames for a {TOTAL}-frame stream"
    );
    assert!(
        frames >= TOTAL - FPP,
        "trailing loss was not concealed: {frames} frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_welcome_is_refused_not_obeyed() {
    let tmp = Tmp::new();
    // Each of these would size buffers (or a WAV header) from attacker-chosen numbers.
    for (rate, ch) in [(2_000_000_000, 2), (44_100, 60_000), (1, 2)] {
        let mut sc = Script::clean(TOTAL);
        sc.welcome_format = Some((rate, ch));
        let srv = FakeServer::start(sc).await;
        let e = run(config(srv.addr, tmp.path("hostile.wav")))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 1, "{rate} Hz {ch} ch: {e}");
        assert!(e.to_string().contains("unusable stream description"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_reported_with_exit_3() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.reject = Some(RejectReason::Full { max_clients: 3 });
    let srv = FakeServer::start(sc).await;
    let e = run(config(srv.addr, tmp.path("full.wav")))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert_eq!(
        e.to_string(),
        format!("server {} is full (3 listeners)", srv.addr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_exit_3() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.reject = Some(RejectReason::UnsupportedVersion { supported: 2 });
    let srv = FakeServer::start(sc).await;
    let e = run(config(srv.addr, tmp.path("version.wav")))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("version 2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_in_another_version_is_exit_3_at_once() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.answer_v2 = true;
    let srv = FakeServer::start(sc).await;
    let t = Instant::now();
    let e = run(config(srv.addr, tmp.path("v2.wav"))).await.unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("version 2"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "waited for the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_exit_4_after_the_timeout() {
    let tmp = Tmp::new();
    let (sock, addr) = FakeServer::silent().await;
    let mut c = config(addr, tmp.path("none.wav"));
    c.timeout = Duration::from_secs(1);
    let t = Instant::now();
    let e = run(c).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.exit_code(), 4);
    assert_eq!(e.to_string(), format!("no answer from {addr} after 1 s"));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // It retried with backoff: 0, 250, 750 ms → 3 Connects within the second.
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(10), sock.recv_from(&mut buf)).await
    {
        n += 1;
    }
    assert_eq!(n, 3, "Connects sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_a_fresh_challenge_still_join() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(9600);
    sc.ignore_connects = 1;
    sc.rechallenge = true;
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path("retry.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    assert_eq!(o.end_reason, ExitReason::Finished);
    let (_, samples) = read_wav(&wav);
    assert!(samples == source(9600));
    let log = srv.log.lock().unwrap();
    assert_eq!(log.connects.len(), 2);
    assert_eq!(log.joins, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_stream_is_a_timeout_with_exit_4() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.stop_after_tick = Some(20);
    let srv = FakeServer::start(sc).await;
    let mut c = config(srv.addr, tmp.path("timeout.wav"));
    c.timeout = Duration::from_millis(700);
    c.stats_json = Some(tmp.path("timeout.json"));
    let t = Instant::now();
    let o = run(c.clone()).await.unwrap();
    assert_eq!(o.end_reason, ExitReason::Timeout);
    assert_eq!(o.exit_code(), 4);
    assert_eq!(o.stats.received, 80);
    assert!(t.elapsed() < Duration::from_secs(4));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.stats_json.unwrap()).unwrap()).unwrap();
    assert_eq!(v["end_reason"], "timeout");
    assert!(srv.log.lock().unwrap().leaves >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_evicted_is_exit_4_after_playing_out() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(9600);
    sc.end = Some(proto::EndReason::Evicted);
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path("evicted.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    assert_eq!(o.end_reason, ExitReason::Evicted);
    assert_eq!(o.exit_code(), 4);
    let (_, samples) = read_wav(&wav);
    assert!(samples == source(9600), "buffered audio was not played out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_not_joined_is_treated_as_evicted() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(9600);
    sc.end = None;
    let srv = FakeServer::start(sc).await;
    let o = run(config(srv.addr, tmp.path("notjoined.wav")))
        .await
        .unwrap();
    assert_eq!(o.end_reason, ExitReason::Evicted);
    assert_eq!(o.exit_code(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_shutdown_is_exit_0() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(9600);
    sc.end = Some(proto::EndReason::Shutdown);
    let srv = FakeServer::start(sc).await;
    let o = run(config(srv.addr, tmp.path("shutdown.wav")))
        .await
        .unwrap();
    assert_eq!(o.end_reason, ExitReason::Shutdown);
    assert_eq!(o.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_other_senders_are_ignored_and_counted() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.garbage = true;
    sc.foreign = true;
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path("garbage.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    let s = &o.stats;
    assert_eq!((s.received, s.lost, s.duplicates), (240, 0, 0));
    assert_eq!(s.garbage, 60);
    assert_eq!(s.foreign, 60);
    let (_, samples) = read_wav(&wav);
    assert!(samples == source(TOTAL), "foreign audio got in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_ends_with_exit_0_and_leave() {
    let tmp = Tmp::new();
    let srv = FakeServer::start(Script::clean(TOTAL * 5)).await;
    let mut c = config(srv.addr, tmp.path("interrupt.wav"));
    c.stats_json = Some(tmp.path("interrupt.json"));
    let o = listen::run(c.clone(), tokio::time::sleep(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(o.end_reason, ExitReason::Interrupted);
    assert_eq!(o.exit_code(), 0);
    assert!(o.stats.received > 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(srv.log.lock().unwrap().leaves >= 1);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.stats_json.unwrap()).unwrap()).unwrap();
    assert_eq!(v["end_reason"], "interrupted");
}

/// Intervals at both ends of the design range play exactly: 5 ms (a datagram per tick) and
/// 2 s (bursts of 400 datagrams, which need the enlarged receive buffer and a grown target).
async fn interval_plays_exactly(interval_ms: u64, total: u64, name: &str) {
    let tmp = Tmp::new();
    let mut sc = Script::clean(total);
    sc.interval = Duration::from_millis(interval_ms);
    let srv = FakeServer::start(sc).await;
    let c = config(srv.addr, tmp.path(name));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    let s = &o.stats;
    assert_eq!((s.lost, s.underruns, s.concealed_ms, s.late), (0, 0, 0, 0));
    let (_, samples) = read_wav(&wav);
    assert!(samples == source(total), "WAV differs from the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_5ms_plays_exactly() {
    interval_plays_exactly(5, 48_000, "iv5.wav").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_2s_plays_exactly() {
    interval_plays_exactly(2000, 4 * 48_000, "iv2000.wav").await;
}
