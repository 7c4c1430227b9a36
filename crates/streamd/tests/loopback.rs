//! The server over 127.0.0.1 with a minimal test listener: handshake, audio in order with the
//! right format and exactly the decoded samples, End at EOF with last_seq, capacity, eviction,
//! leave, late join, shutdown, garbage and unreachable listeners.
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    // Three copies of End{Shutdown}, sharing their seq.
    let mut ends = Vec::new();
    while let Some(p) = a.recv_control(Duration::from_secs(2)).await {
        if let Message::End(e) = p.msg {
            ends.push((p.seq, e));
        }
    }
    assert_eq!(ends.len(), proto::limits::END_REPEAT as usize, "{ends:?}");
    assert!(
        ends.iter()
            .all(|(s, e)| *s == ends[0].0 && e.reason == EndReason::Shutdown)
    );
    assert!(ends[0].1.last_seq.is_some());
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
    let mut got_audio = 0;
    let end = loop {
        let p = c.recv(WAIT).await.expect("End{Evicted}");
        match p.msg {
            Message::Audio(_) => got_audio += 1,
            Message::End(e) => break e,
            m => panic!("unexpected {m:?}"),
        }
    };
    assert_eq!(end.reason, EndReason::Evicted);
    assert!(got_audio > 0);
    assert_eq!(end.last_seq.map(|_| ()), Some(()));
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
