//! The client against streamd's real core over 127.0.0.1 (tests/common), its traffic shaped
//! by a script: WAV contents, exact statistics under scripted loss, reordering and duplicates,
//! eviction, exit codes and the JSON contract; and against scripted responders for the servers
//! streamd never is. Streams are about a second long; nothing here measures speed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    Answer, CH, FPP, RATE, Script, Streamd, Tmp, occupy, out_of_order, read_wav, responder, silent,
    source,
};
use listen::{Config, ExitReason, ListenError, Outcome};
use proto::RejectReason;
use streamd::endpoint::StartMode;

/// Generous: the machine may be busy compiling.
const WAIT: Duration = Duration::from_secs(10);

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
    let srv = Streamd::start(Script::clean(TOTAL)).await;
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
    assert!(srv.wait(WAIT, |l| l.leaves >= 1).await, "no Leave");
    {
        let log = srv.log.lock().unwrap();
        assert_eq!(log.leave_reasons, [proto::LeaveReason::Done]);
        assert_eq!(
            log.bad_tokens, 0,
            "a Report or Leave without the Welcome's token"
        );
    }
    let log = srv.log.lock().unwrap();
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
    sc.duplicate = [5, 50, 51, 200].into_iter().collect();
    let srv = Streamd::start(sc).await;
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
    // Seq 0 is the first datagram. Lose one, a burst of three, and the last two.
    let lost: HashSet<u64> = [10, 100, 101, 102, 238, 239].into_iter().collect();
    sc.drop = lost.clone();
    sc.duplicate = [20].into_iter().collect();
    let srv = Streamd::start(sc).await;
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
        if lost.contains(&i) {
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
    // 2.4 s (480 datagrams) streaming from the start, whoever listens: join after 100.
    let total = 2 * TOTAL;
    let mut sc = Script::clean(total);
    sc.start = StartMode::Now;
    let srv = Streamd::start(sc).await;
    assert!(srv.wait(WAIT, |l| l.live_seq >= 100).await, "not streaming");
    let c = config(srv.addr, tmp.path("late.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    let info = o.info.unwrap();
    let start = info.start_seq;
    assert!((100..480).contains(&start), "joined at {start}");
    assert_eq!(info.start_ts, start * FPP);
    assert_eq!((o.stats.expected, o.stats.lost), (480 - start, 0));
    let (_, samples) = read_wav(&wav);
    let src = source(total);
    assert!(samples[..] == src[(start * FPP) as usize * usize::from(CH)..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_loss_is_concealed_only_as_far_as_the_missing_datagrams_reach() {
    let tmp = Tmp::new();
    // The Welcome claims an hour (a truncated file's header); the stream is 1.2 s and its last
    // datagram is lost. The end is concealed (the WAV keeps the stream's length), but not the
    // hour the header claimed.
    let mut sc = Script::clean(TOTAL);
    sc.claim_total = Some(u64::from(RATE) * 3600);
    let last = sc.packets() - 1;
    sc.drop.insert(last);
    let srv = Streamd::start(sc).await;
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
    for (rate, channels) in [(2_000_000_000, 2), (44_100, 60_000), (1, 2)] {
        let addr = responder(Answer::Welcome { rate, channels }).await;
        let e = run(config(addr, tmp.path("hostile.wav")))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 1, "{rate} Hz {channels} ch: {e}");
        assert!(e.to_string().contains("unusable stream description"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_is_reported_with_exit_3() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(TOTAL);
    sc.max_clients = 3;
    let srv = Streamd::start(sc).await;
    let _taken = [
        occupy(srv.addr).await,
        occupy(srv.addr).await,
        occupy(srv.addr).await,
    ];
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
    let addr = responder(Answer::Reject(RejectReason::UnsupportedVersion {
        supported: 3,
    }))
    .await;
    let e = run(config(addr, tmp.path("version.wav")))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("version 3"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_in_another_version_is_exit_3_at_once() {
    let tmp = Tmp::new();
    let addr = responder(Answer::FutureVersion).await;
    let t = Instant::now();
    let e = run(config(addr, tmp.path("v3.wav"))).await.unwrap_err();
    assert_eq!(e.exit_code(), 3);
    assert!(e.to_string().contains("version 3"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "waited for the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_is_exit_4_after_the_timeout() {
    let tmp = Tmp::new();
    let (sock, addr) = silent().await;
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
    // The first Connect is lost; the first Challenge's cookie is damaged on the way, so the
    // server answers the Join with a fresh Challenge.
    sc.ignore_connects = 1;
    sc.tamper_first_challenge = true;
    let srv = Streamd::start(sc).await;
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
    let srv = Streamd::start(sc).await;
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
    assert!(srv.wait(WAIT, |l| l.leaves >= 1).await, "no Leave");
    {
        let log = srv.log.lock().unwrap();
        assert_eq!(log.leave_reasons, [proto::LeaveReason::Timeout]);
        assert_eq!(
            log.bad_tokens, 0,
            "a Report or Leave without the Welcome's token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_evicted_is_exit_4_after_playing_out() {
    let tmp = Tmp::new();
    // The server stops hearing the listener once it joined, and evicts it mid-stream.
    let mut sc = Script::clean(TOTAL);
    sc.deaf_after_join = true;
    sc.client_timeout = Duration::from_millis(300);
    let srv = Streamd::start(sc).await;
    let c = config(srv.addr, tmp.path("evicted.wav"));
    let wav = c.output.clone().unwrap();
    let o = run(c).await.unwrap();
    assert_eq!(o.end_reason, ExitReason::Evicted);
    assert_eq!(o.exit_code(), 4);
    let sent = srv.log.lock().unwrap().sent.clone();
    assert!(
        !sent.is_empty() && (sent.len() as u64) < 240,
        "evicted after {} datagrams",
        sent.len()
    );
    assert!(sent.iter().enumerate().all(|(i, &s)| s == i as u64));
    // Everything sent before End{Evicted} was played out, and nothing else.
    let (_, samples) = read_wav(&wav);
    let played = sent.len() * FPP as usize * usize::from(CH);
    assert!(
        samples[..] == source(TOTAL)[..played],
        "buffered audio was not played out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_not_joined_is_treated_as_evicted() {
    let tmp = Tmp::new();
    // A forged Leave makes the server forget the listener: its next Report (after 1 s) is
    // answered with Error{NotJoined}. The stream lasts long enough for that.
    let mut sc = Script::clean(3 * u64::from(RATE));
    sc.forget_after_tick = Some(2);
    let srv = Streamd::start(sc).await;
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
    sc.shutdown_after_tick = Some(5);
    let srv = Streamd::start(sc).await;
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
    let srv = Streamd::start(sc).await;
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
    let srv = Streamd::start(Script::clean(TOTAL * 5)).await;
    let mut c = config(srv.addr, tmp.path("interrupt.wav"));
    c.stats_json = Some(tmp.path("interrupt.json"));
    // The user's Ctrl-C, once the server has a Report saying audio arrived (mid-stream: the
    // stream lasts 6 s, the first Report comes after 1 s).
    let heard = srv.wait(WAIT, |l| l.reports.iter().any(|r| r.received > 0));
    let o = listen::run(c.clone(), async {
        assert!(heard.await, "no Report with audio before the interrupt");
    })
    .await
    .unwrap();
    assert_eq!(o.end_reason, ExitReason::Interrupted);
    assert_eq!(o.exit_code(), 0);
    assert!(o.stats.received > 0);
    assert!(srv.wait(WAIT, |l| l.leaves >= 1).await, "no Leave");
    {
        let log = srv.log.lock().unwrap();
        assert_eq!(log.leave_reasons, [proto::LeaveReason::Interrupted]);
        assert_eq!(
            log.bad_tokens, 0,
            "a Report or Leave without the Welcome's token"
        );
    }
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
    let srv = Streamd::start(sc).await;
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
