//! The server over 127.0.0.1 with a minimal test listener: handshake, audio in order with the
//! right format and exactly the decoded samples, End at EOF with last_seq, capacity, eviction,
//! leave, late join, shutdown (and a second stop request), garbage and unreachable listeners,
//! real-time pacing, and the log budget under a flood.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, WAIT, fixture, samples};
use proto::{End, EndReason, ErrorCode, ErrorMsg, Message, Reject, RejectReason, Report};
use streamd::server::{Config, Server, StartMode, Summary};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LOCAL: &str = "127.0.0.1:0";

fn config(file: &str) -> Config {
    Config::new(fixture(file), LOCAL.parse().unwrap())
}

/// Starts a server; returns its address, a shutdown trigger and the run's handle.
async fn start(cfg: Config) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<Summary>) {
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    (addr, tx, h)
}

/// Streams `file` to one listener and checks every datagram against `decode_all`.
async fn full_stream(file: &str, mtu: usize) {
    let mut cfg = config(file);
    cfg.mtu = mtu;
    let (addr, _stop, run) = start(cfg).await;
    let (info, expected) = streamd::source::decode_all(&fixture(file)).unwrap();
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    assert_eq!(w.sample_rate, info.sample_rate);
    assert_eq!(w.channels, info.channels);
    assert_eq!(w.format, proto::SampleFormat::S16Le);
    assert_eq!(w.interval_us, 20_000);
    let bpf = usize::from(info.channels) * 2;
    assert_eq!(
        w.frames_per_packet as usize,
        (mtu - proto::limits::AUDIO_OVERHEAD) / bpf
    );
    assert_eq!(w.total_frames, info.total_frames);
    assert_eq!(
        (w.start_seq, w.start_ts),
        (0, 0),
        "first listener starts at the start"
    );

    let r = c.collect_until_end(WAIT).await;
    let (_, end) = r.end.expect("End at EOF");
    assert!(!r.audio.is_empty());
    let mut ts = 0u64;
    for (i, (seq, a)) in r.audio.iter().enumerate() {
        assert_eq!(
            *seq, i as u64,
            "seq contiguous from 0 (loopback loses nothing here)"
        );
        assert_eq!(a.ts, ts, "ts = index of the first frame");
        assert!(a.pcm.len() % bpf == 0, "whole frames");
        assert!(
            a.pcm.len() + proto::limits::AUDIO_OVERHEAD <= mtu,
            "fits the mtu"
        );
        assert!(a.pcm.len() / bpf <= w.frames_per_packet as usize);
        ts += (a.pcm.len() / bpf) as u64;
    }
    assert_eq!(samples(&r.audio), expected, "exactly the decoded samples");
    let last = r.audio.len() as u64 - 1;
    assert_eq!(
        end,
        End {
            reason: EndReason::Finished,
            last_seq: Some(last)
        }
    );
    let s = run.await.unwrap();
    assert_eq!(s.end_reason, EndReason::Finished);
    assert_eq!(s.audio_datagrams, last + 1);
    assert_eq!(s.frames, ts);
    assert_eq!(s.listeners_served, 1);
    assert_eq!(s.sent.dropped(), 0);
}

#[tokio::test]
async fn mp3_streams_exactly_the_decoded_samples_then_end() {
    full_stream("stereo44.mp3", 1400).await;
}

#[tokio::test]
async fn mono_22k_wav_with_minimum_mtu() {
    full_stream("mono22.wav", proto::limits::MIN_MTU).await;
}

#[tokio::test]
async fn m4a_streams_its_decoded_samples() {
    full_stream("stereo44.m4a", 1400).await;
}

#[tokio::test]
async fn full_server_rejects_and_shutdown_sends_end_three_times() {
    let mut cfg = config("stereo44.mp3");
    cfg.max_clients = 1;
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let a = TestClient::new(addr).await;
    let w = a.welcome().await;
    assert_eq!(w.total_frames, None, "--loop has no length");
    let b = TestClient::new(addr).await;
    assert_eq!(
        b.join().await,
        Message::Reject(Reject {
            reason: RejectReason::Full { max_clients: 1 }
        })
    );
    // A repeated Join from the accepted listener is welcomed again, not refused.
    assert!(matches!(a.join().await, Message::Welcome(_)));
    // Wait for audio to flow to it (the Welcome above may have skipped some).
    let p = a.recv(WAIT).await.unwrap();
    assert!(matches!(p.msg, Message::Audio(_)), "{p:?}");
    stop.send(()).unwrap();
    // Three copies of End{Shutdown}, sharing their seq, whose last_seq is the last Audio.
    let mut ends = Vec::new();
    let mut highest = Some(p.seq);
    while let Some(p) = a.recv(Duration::from_secs(2)).await {
        match p.msg {
            Message::End(e) => ends.push((p.seq, e)),
            Message::Audio(_) => {
                assert!(ends.is_empty(), "audio after End");
                highest = highest.max(Some(p.seq));
            }
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(ends.len(), proto::limits::END_REPEAT as usize, "{ends:?}");
    assert!(
        ends.iter()
            .all(|(s, e)| *s == ends[0].0 && e.reason == EndReason::Shutdown)
    );
    // Loopback loses nothing: the highest seq received is the last one sent.
    assert_eq!(ends[0].1.last_seq, highest);
    assert!(highest.is_some());
    let s = run.await.unwrap();
    assert_eq!(s.end_reason, EndReason::Shutdown);
    assert_eq!(s.listeners_served, 1);
    assert_eq!(s.rejected, 1);
    // The rejected listener never got audio.
    assert!(b.recv(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn silent_listener_is_evicted_with_end() {
    let mut cfg = config("stereo44.mp3");
    cfg.client_timeout = Duration::from_millis(300);
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let c = TestClient::new(addr).await;
    c.welcome().await;
    // Never report: within timeout + housekeeping (+ margin) comes End{Evicted}.
    let mut highest = None;
    let end = loop {
        let p = c.recv(WAIT).await.expect("End{Evicted}");
        match p.msg {
            Message::Audio(_) => highest = highest.max(Some(p.seq)),
            Message::End(e) => break e,
            m => panic!("unexpected {m:?}"),
        }
    };
    assert_eq!(end.reason, EndReason::Evicted);
    assert!(highest.is_some());
    // Loopback loses nothing: last_seq is the highest seq received.
    assert_eq!(end.last_seq, highest);
    // Now it is a stranger: a Report gets Error{NotJoined}; before it only End's repeated
    // copies may arrive, and no audio.
    c.send(Message::Report(Report::default())).await;
    let reply = loop {
        let p = c.recv(WAIT).await.expect("Error{NotJoined}");
        match p.msg {
            Message::End(e) => assert_eq!(e.reason, EndReason::Evicted),
            Message::Audio(_) => panic!("audio after eviction"),
            m => break m,
        }
    };
    assert!(
        matches!(
            reply,
            Message::Error(ErrorMsg {
                code: ErrorCode::NotJoined,
                ..
            })
        ),
        "{reply:?}"
    );
    stop.send(()).unwrap();
    let s = run.await.unwrap();
    assert_eq!(s.evicted, 1);
}

#[tokio::test]
async fn leave_frees_the_slot_and_stops_audio() {
    let mut cfg = config("stereo44.mp3");
    cfg.max_clients = 1;
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let a = TestClient::new(addr).await;
    a.welcome().await;
    assert!(matches!(a.recv(WAIT).await.unwrap().msg, Message::Audio(_)));
    a.send(Message::Leave).await;
    // The slot is free at once: another listener gets in.
    let b = TestClient::new(addr).await;
    assert!(matches!(b.join().await, Message::Welcome(_)));
    // Audio to `a` stops: drain what was in flight, then silence.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while a.recv(Duration::from_millis(10)).await.is_some() {}
    assert!(
        a.recv(Duration::from_millis(300)).await.is_none(),
        "audio after Leave"
    );
    stop.send(()).unwrap();
    let s = run.await.unwrap();
    assert_eq!(s.left, 1);
    assert_eq!(s.listeners_served, 2);
}

#[tokio::test]
async fn late_joiner_starts_live() {
    let mut cfg = config("stereo44.mp3");
    cfg.start = StartMode::Now;
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    assert!(w.start_seq > 0 && w.start_ts > 0, "{w:?}");
    let p = c.recv(WAIT).await.unwrap();
    let Message::Audio(a) = p.msg else {
        panic!("expected audio, got {p:?}")
    };
    assert_eq!(p.seq, w.start_seq, "first audio is the announced one");
    assert_eq!(a.ts, w.start_ts);
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn garbage_and_unreachable_listeners_do_not_disturb_the_stream() {
    let (addr, _stop, run) = start(config("stereo44.mp3")).await;
    // A listener that joins and vanishes: its port answers with ICMP unreachable.
    let gone = TestClient::new(addr).await;
    gone.welcome().await;
    drop(gone);
    // Garbage of every kind.
    let g = TestClient::new(addr).await;
    for junk in [
        &b""[..],
        b"x",
        &[0u8; 12],
        &[b'E', b'S', 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0xAB; 9000],
    ] {
        g.send_raw(junk).await;
    }
    // A short Connect is ignored, unanswered.
    let short = proto::encode_to_bytes(&proto::Packet::new(
        0,
        Message::Connect(proto::Connect {
            max_version: 1,
            padding: bytes::Bytes::new(),
        }),
    ))
    .unwrap();
    g.send_raw(&short).await;
    assert!(g.recv(Duration::from_millis(200)).await.is_none());
    // A real listener still gets the whole stream (it joins live).
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    let r = c.collect_until_end(WAIT).await;
    let (_, end) = r.end.expect("End");
    assert_eq!(end.reason, EndReason::Finished);
    for (i, (seq, _)) in r.audio.iter().enumerate() {
        assert_eq!(*seq, w.start_seq + i as u64);
    }
    let s = run.await.unwrap();
    assert_eq!(s.listeners_served, 2);
    assert!(s.ignored >= 6, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_neither_stops_nor_delays_the_stream() {
    let (addr, _stop, run) = start(config("stereo44.mp3")).await;
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    // 20 000 junk datagrams (bounded), from another task, while the stream plays.
    let flood = tokio::spawn(async move {
        let g = TestClient::new(addr).await;
        for i in 0..20_000u32 {
            let mut junk = [0u8; 64];
            junk[..4].copy_from_slice(&i.to_le_bytes());
            g.send_raw(&junk).await;
            if i % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let r = c.collect_until_end(WAIT).await;
    flood.await.unwrap();
    let (_, end) = r.end.expect("End");
    assert_eq!(end.reason, EndReason::Finished);
    for (i, (seq, _)) in r.audio.iter().enumerate() {
        assert_eq!(*seq, w.start_seq + i as u64, "no audio lost or reordered");
    }
    assert_eq!(
        samples(&r.audio),
        streamd::source::decode_all(&fixture("stereo44.mp3"))
            .unwrap()
            .1
    );
    let s = run.await.unwrap();
    assert!(s.ignored > 1000, "{s:?}");
    assert_eq!(s.listeners_served, 1);
}

#[tokio::test]
async fn loop_repeats_the_file_seamlessly() {
    let mut cfg = config("mono22.wav");
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let expected = streamd::source::decode_all(&fixture("mono22.wav"))
        .unwrap()
        .1;
    // Joining 300 ms after start-up still starts at the beginning (--start first-client).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    assert_eq!((w.start_seq, w.start_ts), (0, 0));
    // Collect a little more than one pass (2 s of audio).
    let want = expected.len() + 22050 / 2;
    let mut got = Vec::new();
    let mut ts = 0u64;
    while got.len() < want {
        let p = c.recv(WAIT).await.expect("audio");
        if let Message::Audio(a) = p.msg {
            assert_eq!(a.ts, ts, "ts keeps counting across the loop");
            ts += (a.pcm.len() / 2) as u64;
            got.extend(
                a.pcm
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
        }
    }
    assert_eq!(got[..expected.len()], expected[..]);
    let tail = got.len() - expected.len();
    assert_eq!(
        got[expected.len()..],
        expected[..tail],
        "second pass starts at frame 0"
    );
    stop.send(()).unwrap();
    let s = run.await.unwrap();
    assert_eq!(s.end_reason, EndReason::Shutdown);
}

#[tokio::test]
async fn a_second_stop_request_cuts_the_shutdown_short() {
    let mut cfg = config("stereo44.mp3");
    cfg.looping = true;
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let run = tokio::spawn(server.run_until(rx));
    let c = TestClient::new(addr).await;
    c.welcome().await;
    assert!(matches!(c.recv(WAIT).await.unwrap().msg, Message::Audio(_)));
    // Two requests at once (a double Ctrl-C): the first End goes out, then the run returns
    // without the other copies.
    tx.unbounded_send(()).unwrap();
    tx.unbounded_send(()).unwrap();
    let s = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(s.aborted);
    assert_eq!(s.end_reason, EndReason::Shutdown);
    let mut ends = 0;
    while let Some(p) = c.recv(Duration::from_millis(300)).await {
        if matches!(p.msg, Message::End(_)) {
            ends += 1;
        }
    }
    assert_eq!(ends, 1, "only the first copy of End");
}

#[tokio::test]
async fn one_stop_request_finishes_the_shutdown() {
    let mut cfg = config("stereo44.mp3");
    cfg.looping = true;
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let run = tokio::spawn(server.run_until(rx));
    let c = TestClient::new(addr).await;
    c.welcome().await;
    tx.unbounded_send(()).unwrap();
    let s = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!s.aborted);
    let mut ends = 0;
    while let Some(p) = c.recv(Duration::from_millis(300)).await {
        if matches!(p.msg, Message::End(_)) {
            ends += 1;
        }
    }
    assert_eq!(ends, proto::limits::END_REPEAT);
}

#[tokio::test]
async fn audio_is_sent_in_real_time() {
    let mut cfg = config("mono22.wav");
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let c = TestClient::new(addr).await;
    let w = c.welcome().await;
    let rate = f64::from(w.sample_rate);
    let bpf = usize::from(w.channels) * 2;
    // Frames received over at least 3 s after the first audio, reporting as a listener does.
    let mut first = None;
    let mut frames = 0usize;
    let mut last_report = std::time::Instant::now();
    let elapsed = loop {
        let p = c.recv(WAIT).await.expect("audio");
        let now = std::time::Instant::now();
        if let Message::Audio(a) = p.msg {
            let t0 = *first.get_or_insert(now);
            frames += a.pcm.len() / bpf;
            if now - t0 >= Duration::from_secs(3) {
                break now - t0;
            }
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            last_report = now;
            c.send(Message::Report(Report::default())).await;
        }
    };
    // One interval more than the elapsed time at most (the first burst), and not much less.
    let ratio = frames as f64 / (rate * elapsed.as_secs_f64());
    assert!(
        (0.8..=1.25).contains(&ratio),
        "{frames} frames in {elapsed:?} at {rate} Hz: {ratio:.3} of real time"
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}
