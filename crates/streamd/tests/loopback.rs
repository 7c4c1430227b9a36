//! The server over 127.0.0.1 with `listen`'s real session as the listener (testkit::peer),
//! watching the wire: handshake, audio in order with the right format and exactly the decoded
//! samples (on the wire and as played), End at EOF with last_seq, capacity, eviction, leave,
//! late join, shutdown (and a second stop request), garbage and unreachable listeners,
//! real-time pacing, and a garbage flood.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{WAIT, audio, connect_msg, fixture, join, join_with};
use listen::ExitReason;
use proto::{
    End, EndReason, ErrorCode, ErrorMsg, Join, Leave, LeaveReason, Message, RejectReason, Report,
};
use streamd::server::{Config, Server, StartMode, Summary};
use testkit::peer::{Listener, PeerConfig};
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

/// Streams `file` to one listener and checks every datagram against `decode_all`, and what the
/// listener played.
async fn full_stream(file: &str, mtu: usize) {
    let mut cfg = config(file);
    cfg.mtu = mtu;
    let (addr, _stop, run) = start(cfg).await;
    let (info, expected) = streamd::source::decode_all(&fixture(file)).unwrap();
    let (c, w) = join(addr).await;
    assert_eq!(w.sample_rate, info.sample_rate);
    assert_eq!(w.channels, info.channels);
    assert_eq!(w.codec, proto::AudioCodec::Pcm);
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

    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Finished));
    let s = run.await.unwrap();
    c.sync_async().await;
    let seen = c.seen();
    let (_, end) = seen.end().expect("End at EOF");
    assert!(!seen.audio.is_empty());
    assert_eq!((seen.foreign, seen.undecodable), (0, 0));
    assert!(seen.largest <= proto::limits::MAX_DATAGRAM);
    let mut ts = 0u64;
    for (i, a) in seen.audio.iter().enumerate() {
        assert_eq!(
            a.seq, i as u64,
            "seq contiguous from 0 (loopback loses nothing here)"
        );
        assert_eq!(a.ts, ts, "ts = index of the first frame");
        assert!(a.payload.len() % bpf == 0, "whole frames");
        assert!(
            a.payload.len() + proto::limits::AUDIO_OVERHEAD <= mtu,
            "fits the mtu"
        );
        assert!(a.payload.len() / bpf <= w.frames_per_packet as usize);
        ts += (a.payload.len() / bpf) as u64;
    }
    assert!(
        seen.wire_samples() == expected,
        "not exactly the decoded samples"
    );
    assert!(
        seen.played() == expected,
        "the listener did not play exactly the decoded samples"
    );
    let last = seen.audio.len() as u64 - 1;
    assert_eq!(
        end,
        End {
            reason: EndReason::Finished,
            last_seq: Some(last)
        }
    );
    let st = seen.session.stats().unwrap();
    assert_eq!((st.expected, st.received, st.lost), (last + 1, last + 1, 0));
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

/// A hand-built Connect and Join from `l`'s address: the server's answer to the Join (the
/// session ignores repeated handshake answers; the wire log keeps them).
async fn rejoin(l: &Listener) -> Message {
    let before = l.seen().control.len();
    l.send(connect_msg()).unwrap();
    let cookie = l
        .wait_async(WAIT, move |s| {
            s.control[before..].iter().find_map(|(_, m)| match m {
                Message::Challenge(c) => Some(c.cookie),
                _ => None,
            })
        })
        .await
        .expect("Challenge");
    let before = l.seen().control.len();
    l.send(Message::Join(Join::new(cookie))).unwrap();
    l.wait_async(WAIT, move |s| {
        s.control[before..]
            .iter()
            .find(|(_, m)| !matches!(m, Message::Challenge(_)))
            .map(|(_, m)| m.clone())
    })
    .await
    .expect("answer to Join")
}

#[tokio::test]
async fn full_server_rejects_and_shutdown_sends_end_three_times() {
    let mut cfg = config("stereo44.mp3");
    cfg.max_clients = 1;
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let (a, w) = join(addr).await;
    assert_eq!(w.total_frames, None, "--loop has no length");
    let b = Listener::join(addr, PeerConfig::default()).unwrap();
    let answer = b.wait_async(WAIT, |s| s.joined()).await;
    assert_eq!(
        answer,
        Some(Err(listen::Event::Rejected(RejectReason::Full {
            max_clients: 1
        })))
    );
    // A repeated Join from the accepted listener is welcomed again, not refused.
    assert!(matches!(rejoin(&a).await, Message::Welcome(_)));
    // Wait for audio to flow to it (the Welcome above may have skipped some).
    let n = a.seen().audio.len();
    audio(&a, n + 1).await;
    stop.send(()).unwrap();
    let s = run.await.unwrap();
    // The server is done: everything it sent is in the sockets.
    a.sync_async().await;
    b.sync_async().await;
    let seen = a.seen();
    // Three copies of End{Shutdown}, sharing their seq, whose last_seq is the last Audio.
    let ends = &seen.ends;
    assert_eq!(ends.len(), proto::limits::END_REPEAT as usize, "{ends:?}");
    assert!(
        ends.iter()
            .all(|(s, e)| *s == ends[0].0 && e.reason == EndReason::Shutdown)
    );
    assert_eq!(
        seen.audio_before_end,
        Some(seen.audio.len()),
        "audio after End"
    );
    // Loopback loses nothing: the highest seq received is the last one sent.
    let highest = seen.audio.iter().map(|a| a.seq).max();
    assert!(highest.is_some());
    assert_eq!(ends[0].1.last_seq, highest);
    // The listener heard it: it ended on the shutdown.
    assert_eq!(seen.ended(), Some(ExitReason::Shutdown));
    assert_eq!(s.end_reason, EndReason::Shutdown);
    assert_eq!(s.listeners_served, 1);
    assert_eq!(s.rejected, 1);
    // The rejected listener never got audio.
    let rejected = b.seen();
    assert!(rejected.audio.is_empty() && rejected.ends.is_empty());
}

#[tokio::test]
async fn silent_listener_is_evicted_with_end() {
    let mut cfg = config("stereo44.mp3");
    cfg.client_timeout = Duration::from_millis(300);
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    // Never report: within timeout + housekeeping (+ margin) comes End{Evicted}.
    let quiet = PeerConfig {
        mute_after_join: true,
        ..PeerConfig::default()
    };
    let (c, _) = join_with(addr, quiet).await;
    let (_, end) = c.wait_async(WAIT, |s| s.end()).await.expect("End{Evicted}");
    assert_eq!(end.reason, EndReason::Evicted);
    // Now it is a stranger: a Report, even with the token it had, gets Error{NotJoined}.
    let token = c.seen().token().expect("the Welcome's token");
    c.send(Message::Report(Report {
        token,
        ..Report::default()
    }))
    .unwrap();
    let reply = c
        .wait_async(WAIT, |s| {
            s.control
                .iter()
                .find(|(_, m)| matches!(m, Message::Error(_)))
                .map(|(_, m)| m.clone())
        })
        .await
        .expect("Error{NotJoined}");
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
    c.sync_async().await;
    {
        let seen = c.seen();
        // Loopback loses nothing: last_seq is the highest seq received.
        let highest = seen.audio.iter().map(|a| a.seq).max();
        assert!(highest.is_some());
        assert_eq!(end.last_seq, highest);
        // Before the Error only End's repeated copies arrived, and no audio.
        assert_eq!(
            seen.audio_before_end,
            Some(seen.audio.len()),
            "audio after eviction"
        );
        assert!(seen.ends.iter().all(|(_, e)| *e == end));
        assert!(
            seen.control.iter().all(|(_, m)| matches!(
                m,
                Message::Challenge(_) | Message::Welcome(_)
            ) || *m == reply),
            "{:?}",
            seen.control
        );
    }
    // The listener played out what it had and ended as evicted.
    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Evicted));
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
    let (a, _) = join(addr).await;
    audio(&a, 1).await;
    // A Leave from its address without its token is not its Leave: the slot stays taken.
    let mut forged = a.seen().token().expect("the Welcome's token");
    forged[15] ^= 0x80;
    a.send(Message::Leave(Leave {
        token: forged,
        reason: LeaveReason::Interrupted,
    }))
    .unwrap();
    let full = Listener::join(addr, PeerConfig::default()).unwrap();
    assert_eq!(
        full.wait_async(WAIT, |s| s.joined()).await,
        Some(Err(listen::Event::Rejected(RejectReason::Full {
            max_clients: 1
        })))
    );
    drop(full);
    let n = a.seen().audio.len();
    audio(&a, n + 1).await;
    a.leave();
    // The session ends and sends its Leave in the same step: once it has ended, the Leave is
    // on its way, ahead of anything sent below.
    let ended = a.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Interrupted));
    // The slot is free at once: another listener gets in.
    let (b, _) = join(addr).await;
    // Every Audio sent to `a` left before b's Welcome: it is in a's socket now.
    a.sync_async().await;
    let got = a.seen().audio.len();
    // Ten more ticks to b, none to a.
    let n = b.seen().audio.len();
    audio(&b, n + 10).await;
    a.sync_async().await;
    assert_eq!(a.seen().audio.len(), got, "audio after Leave");
    // b vanishes without a Leave (a real listener leaves after the shutdown's End).
    drop(b);
    stop.send(()).unwrap();
    let s = run.await.unwrap();
    assert_eq!(s.left, 1);
    assert_eq!(s.listeners_served, 2);
    assert_eq!(s.rejected, 1);
}

#[tokio::test]
async fn late_joiner_starts_live() {
    let mut cfg = config("stereo44.mp3");
    cfg.start = StartMode::Now;
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    // Not synchronisation: the stream runs with nobody listening for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, w) = join(addr).await;
    assert!(w.start_seq > 0 && w.start_ts > 0, "{w:?}");
    audio(&c, 1).await;
    let first = c.seen().audio[0].clone();
    assert_eq!(first.seq, w.start_seq, "first audio is the announced one");
    assert_eq!(first.ts, w.start_ts);
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn garbage_and_unreachable_listeners_do_not_disturb_the_stream() {
    let (addr, _stop, run) = start(config("stereo44.mp3")).await;
    // A listener that joins and vanishes: its port answers with ICMP unreachable.
    let (gone, _) = join(addr).await;
    drop(gone);
    // Garbage of every kind, from a stranger.
    let g = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b""[..],
        b"x",
        &[0u8; 12],
        &[b'E', b'S', 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[b'E', b'S', proto::VERSION, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0xAB; 9000],
    ] {
        g.send_to(junk, addr).await.unwrap();
    }
    // A short Connect is ignored, unanswered.
    let short = proto::encode_to_bytes(&proto::Packet::new(
        0,
        Message::Connect(proto::Connect {
            max_version: proto::VERSION,
            padding: bytes::Bytes::new(),
        }),
    ))
    .unwrap();
    g.send_to(&short, addr).await.unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), g.recv_from(&mut buf))
            .await
            .is_err(),
        "garbage was answered"
    );
    // A real listener still gets the whole stream (it joins live).
    let (c, w) = join(addr).await;
    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Finished));
    {
        let seen = c.seen();
        let (_, end) = seen.end().expect("End");
        assert_eq!(end.reason, EndReason::Finished);
        for (i, a) in seen.audio.iter().enumerate() {
            assert_eq!(a.seq, w.start_seq + i as u64);
        }
        assert_eq!(seen.session.stats().unwrap().lost, 0);
    }
    let s = run.await.unwrap();
    assert_eq!(s.listeners_served, 2);
    assert!(s.ignored >= 7, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_neither_stops_nor_delays_the_stream() {
    let (addr, _stop, run) = start(config("stereo44.mp3")).await;
    let (c, w) = join(addr).await;
    // 20 000 junk datagrams (bounded), from another task, while the stream plays.
    let flood = tokio::spawn(async move {
        let g = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..20_000u32 {
            let mut junk = [0u8; 64];
            junk[..4].copy_from_slice(&i.to_le_bytes());
            g.send_to(&junk, addr).await.unwrap();
            if i % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    flood.await.unwrap();
    assert_eq!(ended, Some(ExitReason::Finished));
    let expected = streamd::source::decode_all(&fixture("stereo44.mp3"))
        .unwrap()
        .1;
    {
        let seen = c.seen();
        let (_, end) = seen.end().expect("End");
        assert_eq!(end.reason, EndReason::Finished);
        for (i, a) in seen.audio.iter().enumerate() {
            assert_eq!(a.seq, w.start_seq + i as u64, "no audio lost or reordered");
        }
        assert!(seen.wire_samples() == expected, "samples differ");
        assert!(seen.played() == expected, "played samples differ");
    }
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
    let (c, w) = join(addr).await;
    assert_eq!((w.start_seq, w.start_ts), (0, 0));
    // Collect a little more than one pass (2 s of audio).
    let want = expected.len() + 22050 / 2;
    c.wait_async(WAIT, move |s| {
        let samples: usize = s.audio.iter().map(|a| a.payload.len() / 2).sum();
        (samples >= want).then_some(())
    })
    .await
    .expect("audio");
    let (got, ts_ok) = {
        let seen = c.seen();
        let mut ts = 0u64;
        let mut ok = true;
        for a in &seen.audio {
            ok &= a.ts == ts;
            ts += (a.payload.len() / 2) as u64;
        }
        (seen.wire_samples(), ok)
    };
    assert!(ts_ok, "ts keeps counting across the loop");
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
    let (c, _) = join(addr).await;
    audio(&c, 1).await;
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
    // The server is gone: every End it sent is in the socket.
    c.sync_async().await;
    assert_eq!(c.seen().ends.len(), 1, "only the first copy of End");
}

#[tokio::test]
async fn one_stop_request_finishes_the_shutdown() {
    let mut cfg = config("stereo44.mp3");
    cfg.looping = true;
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addr();
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let run = tokio::spawn(server.run_until(rx));
    let (c, _) = join(addr).await;
    tx.unbounded_send(()).unwrap();
    let s = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!s.aborted);
    c.sync_async().await;
    assert_eq!(c.seen().ends.len(), proto::limits::END_REPEAT as usize);
}

#[tokio::test]
async fn audio_is_sent_in_real_time() {
    let mut cfg = config("mono22.wav");
    cfg.looping = true;
    let (addr, stop, run) = start(cfg).await;
    let (c, w) = join(addr).await;
    let rate = f64::from(w.sample_rate);
    let bpf = usize::from(w.channels) * 2;
    // Frames received over at least 3 s after the first audio (the session reports as a
    // listener does).
    let (frames, elapsed) = c
        .wait_async(WAIT, move |s| {
            let first = s.audio.first()?.at;
            let last = s.audio.last()?.at;
            let frames: usize = s.audio.iter().map(|a| a.payload.len() / bpf).sum();
            (last - first >= Duration::from_secs(3)).then_some((frames, last - first))
        })
        .await
        .expect("3 s of audio");
    // One interval more than the elapsed time at most (the first burst), and not much less.
    let ratio = frames as f64 / (rate * elapsed.as_secs_f64());
    assert!(
        (0.8..=1.25).contains(&ratio),
        "{frames} frames in {elapsed:?} at {rate} Hz: {ratio:.3} of real time"
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}
