//! The sans-IO [`Session`] on simulated time, against hand-built server datagrams: no sockets,
//! no tokio, no clock reads. Every instant is a base `Instant` plus an exact offset, so the
//! retransmission schedule, the report cadence and every timeout are asserted to the tick.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use listen::ExitReason;
use listen::session::{
    Event, HANDSHAKE_RETRY_FIRST, HANDSHAKE_RETRY_MAX, MAX_WELCOME_CHANNELS, MAX_WELCOME_INTERVAL,
    MAX_WELCOME_RATE, MIN_WELCOME_RATE, Phase, Session, SessionConfig,
};
use listen::sink::{MemorySink, NullSink, Sink};
use proto::limits::{MAX_PAYLOAD, MIN_CONNECT_LEN, REPORT_INTERVAL};
use proto::{
    Challenge, End, EndReason, ErrorCode, ErrorMsg, Leave, LeaveReason, Message, Packet, Reject,
    RejectReason, Report, StreamInfo, Token, Welcome,
};

/// Frames per datagram of the test stream (5 ms at 48 kHz).
const FPP: u64 = 240;
/// Stereo.
const CH: usize = 2;
/// First seq of the test stream.
const SEQ0: u64 = 1000;
/// The session token of the test server's Welcome.
const TOKEN: Token = [0x5e; proto::TOKEN_LEN];

fn server() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(timeout: Duration) -> SessionConfig {
    let mut c = SessionConfig::new(server());
    c.timeout = timeout;
    c
}

/// 48 kHz stereo, 20 ms interval, `total` frames from seq 1000 frame 0.
fn info(total: u64) -> StreamInfo {
    StreamInfo {
        sample_rate: 48_000,
        channels: CH as u16,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: 20_000,
        frames_per_packet: FPP as u32,
        total_frames: Some(total),
        start_seq: SEQ0,
        start_ts: 0,
        title: "test".into(),
    }
}

fn enc(msg: Message) -> Bytes {
    proto::encode_to_bytes(&Packet::new(7, msg)).unwrap()
}

fn challenge(cookie: u8) -> Bytes {
    enc(Message::Challenge(Challenge {
        cookie: [cookie; 16],
    }))
}

fn welcome(info: &StreamInfo) -> Bytes {
    enc(Message::Welcome(Welcome {
        token: TOKEN,
        noise: Bytes::new(),
        info: info.clone(),
    }))
}

/// The Leave a joined session sends: the Welcome's token and `reason`.
fn leave(reason: LeaveReason) -> Message {
    Message::Leave(Leave {
        token: TOKEN,
        reason,
    })
}

/// Datagram `i` of the stream (seq 1000 + i, frames from i × 240), with distinct samples.
fn audio(i: u64) -> Bytes {
    let pcm: Vec<u8> = (0..FPP as usize * CH)
        .flat_map(|k| ((i as usize * 1000 + k) as i16).to_le_bytes())
        .collect();
    let mut b = BytesMut::new();
    proto::encode_audio(SEQ0 + i, i * FPP, &pcm, &mut b);
    b.freeze()
}

fn end(reason: EndReason, last_seq: Option<u64>) -> Bytes {
    enc(Message::End(End { reason, last_seq }))
}

fn error(code: ErrorCode) -> Bytes {
    enc(Message::Error(ErrorMsg {
        code,
        text: "who are you".into(),
    }))
}

/// Every datagram queued, decoded.
fn sent(s: &mut Session, now: Instant) -> Vec<Message> {
    let mut v = Vec::new();
    while let Some(t) = s.poll_transmit(now) {
        assert_eq!(t.destination, server());
        v.push(proto::decode(&t.contents).unwrap().msg);
    }
    v
}

/// Every event queued.
fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The Join this listener sends: every codec it decodes.
fn our_join(cookie: [u8; 16]) -> proto::Join {
    let mut j = proto::Join::new(cookie);
    j.codecs = listen::session::SUPPORTED_CODECS;
    j
}

fn is_connect(m: &Message) -> bool {
    matches!(m, Message::Connect(_))
}

/// A session joined at `t0 + 20 ms` (Challenge at 10 ms), transmits and events drained.
fn joined(cfg: SessionConfig, info: &StreamInfo) -> (Session, Instant, Instant) {
    let t0 = Instant::now();
    let mut s = Session::new(cfg, t0);
    assert!(is_connect(&sent(&mut s, t0)[0]));
    s.handle(t0 + ms(10), server(), &challenge(1));
    assert_eq!(
        sent(&mut s, t0 + ms(10)),
        vec![Message::Join(join_msg([1; 16]))]
    );
    let tw = t0 + ms(20);
    s.handle(tw, server(), &welcome(info));
    assert_eq!(
        events(&mut s),
        vec![Event::Challenged, Event::Joined(info.clone())]
    );
    assert_eq!(s.phase(), Phase::Streaming);
    (s, t0, tw)
}

/// What a session sent and what happened, each with its instant.
type Timeline = (Vec<(Instant, Message)>, Vec<(Instant, Event)>);

/// A change to a `Welcome`.
type Mutation = Box<dyn Fn(&mut StreamInfo)>;

/// Runs the session's timers (and a null sink's refills) up to `until`, as the drive loop does:
/// jump to the earliest deadline, handle it, feed the sink, drain. Returns what was sent and
/// what happened, with the instant of each.
fn run_until(
    s: &mut Session,
    sink: Option<&mut dyn Sink>,
    from: Instant,
    until: Instant,
) -> Timeline {
    let mut tx = Vec::new();
    let mut ev = Vec::new();
    let mut now = from;
    let mut sink = sink;
    let mut refill = None;
    loop {
        if let Some(k) = sink.as_deref_mut()
            && !s.is_closed()
        {
            refill = s.feed(now, k).unwrap();
        }
        tx.extend(sent(s, now).into_iter().map(|m| (now, m)));
        ev.extend(events(s).into_iter().map(|e| (now, e)));
        let next = match (s.poll_timeout(), refill) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => break,
            },
        };
        if next > until || s.is_closed() {
            break;
        }
        now = next.max(now);
        s.handle_timeout(now);
    }
    (tx, ev)
}

#[test]
fn connect_is_padded_and_resent_with_doubling_backoff_capped_at_2s() {
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(10)), t0);
    let first = s.poll_transmit(t0).unwrap();
    assert_eq!(first.contents.len(), MIN_CONNECT_LEN);
    assert!(s.poll_transmit(t0).is_none());
    let (tx, ev) = run_until(&mut s, None, t0, t0 + Duration::from_secs(60));
    let at: Vec<Duration> = tx.iter().map(|(t, _)| *t - t0).collect();
    assert!(tx.iter().all(|(_, m)| is_connect(m)), "{tx:?}");
    // 250 ms, doubling: +500, +1000, then capped at +2000 until the 10 s timeout.
    assert_eq!(
        at,
        [250, 750, 1750, 3750, 5750, 7750, 9750].map(ms).to_vec()
    );
    assert_eq!(HANDSHAKE_RETRY_FIRST, ms(250));
    assert_eq!(HANDSHAKE_RETRY_MAX, ms(2000));
    assert_eq!(
        ev,
        vec![(
            t0 + Duration::from_secs(10),
            Event::NoAnswer {
                after: Duration::from_secs(10)
            }
        )]
    );
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
    assert!(s.stats().is_none());
}

#[test]
fn no_answer_comes_exactly_at_the_timeout_and_sends_no_leave() {
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(3)), t0);
    sent(&mut s, t0);
    let (tx, ev) = run_until(&mut s, None, t0, t0 + ms(2999));
    assert_eq!(tx.len(), 3, "{tx:?}"); // 250, 750, 1750
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(s.poll_timeout(), Some(t0 + ms(3000)));
    s.handle_timeout(t0 + ms(2999));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(t0 + ms(3000));
    assert_eq!(
        events(&mut s),
        vec![Event::NoAnswer {
            after: Duration::from_secs(3)
        }]
    );
    assert!(
        sent(&mut s, t0 + ms(3000)).is_empty(),
        "no Leave after no answer"
    );
}

#[test]
fn a_lost_challenge_is_recovered_by_the_resent_connect() {
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(3)), t0);
    sent(&mut s, t0); // the first Connect is lost
    s.handle_timeout(t0 + ms(250));
    assert!(is_connect(&sent(&mut s, t0 + ms(250))[0]));
    s.handle(t0 + ms(260), server(), &challenge(4));
    assert_eq!(
        sent(&mut s, t0 + ms(260)),
        vec![Message::Join(join_msg([4; 16]))]
    );
    let i = info(48_000);
    s.handle(t0 + ms(270), server(), &welcome(&i));
    assert_eq!(events(&mut s), vec![Event::Challenged, Event::Joined(i)]);
}

#[test]
fn a_lost_join_is_resent_with_the_cookie_and_a_fresh_challenge_replaces_it() {
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(3)), t0);
    sent(&mut s, t0);
    s.handle(t0 + ms(10), server(), &challenge(1));
    assert_eq!(sent(&mut s, t0 + ms(10)).len(), 1); // this Join is lost
    // The retransmission timer keeps its schedule: the Join goes again at 250 ms.
    assert_eq!(s.poll_timeout(), Some(t0 + ms(250)));
    s.handle_timeout(t0 + ms(250));
    assert_eq!(
        sent(&mut s, t0 + ms(250)),
        vec![Message::Join(join_msg([1; 16]))]
    );
    // The server's epoch moved on: a fresh Challenge; the next Joins carry the new cookie.
    s.handle(t0 + ms(300), server(), &challenge(2));
    assert_eq!(
        sent(&mut s, t0 + ms(300)),
        vec![Message::Join(join_msg([2; 16]))]
    );
    s.handle_timeout(t0 + ms(750));
    assert_eq!(
        sent(&mut s, t0 + ms(750)),
        vec![Message::Join(join_msg([2; 16]))]
    );
    s.handle(t0 + ms(760), server(), &welcome(&info(48_000)));
    assert_eq!(s.phase(), Phase::Streaming);
}

#[test]
fn a_lost_welcome_is_recovered_and_audio_before_it_is_ignored() {
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(3)), t0);
    sent(&mut s, t0);
    s.handle(t0 + ms(10), server(), &challenge(1));
    sent(&mut s, t0 + ms(10));
    // The Welcome is lost; the server streams already.
    for i in 0..4 {
        s.handle(t0 + ms(20), server(), &audio(i));
    }
    assert_eq!(s.phase(), Phase::Handshake);
    assert_eq!(
        (s.tracker().received(), s.tracker().garbage()),
        (0, 0),
        "audio before the Welcome is neither counted nor garbage"
    );
    s.handle_timeout(t0 + ms(250));
    assert_eq!(
        sent(&mut s, t0 + ms(250)),
        vec![Message::Join(join_msg([1; 16]))]
    );
    let mut i = info(48_000);
    i.start_seq = SEQ0 + 50;
    i.start_ts = 50 * FPP;
    s.handle(t0 + ms(260), server(), &welcome(&i));
    assert!(events(&mut s).contains(&Event::Joined(i.clone())));
    s.handle(t0 + ms(270), server(), &audio(50));
    assert_eq!((s.tracker().received(), s.tracker().expected()), (1, 1));
    assert_eq!(s.jitter_buffer().unwrap().position(), 50 * FPP);
}

#[test]
fn rejections_are_terminal_and_send_no_leave() {
    for reason in [
        RejectReason::Full { max_clients: 3 },
        RejectReason::ShuttingDown,
        RejectReason::UnsupportedVersion { supported: 3 },
        RejectReason::BadKey,
        RejectReason::CodecUnsupported { codec: 2 },
    ] {
        let t0 = Instant::now();
        let mut s = Session::new(config(Duration::from_secs(3)), t0);
        sent(&mut s, t0);
        s.handle(
            t0 + ms(5),
            server(),
            &enc(Message::Reject(Reject { reason })),
        );
        assert_eq!(events(&mut s), vec![Event::Rejected(reason)]);
        assert!(s.is_closed());
        assert!(sent(&mut s, t0 + ms(5)).is_empty());
        assert_eq!(s.poll_timeout(), None);
    }
}

#[test]
fn an_answer_in_another_protocol_version_is_a_rejection_at_once() {
    // A v1 server's Reject{UnsupportedVersion{1}} (the same bytes in v1 and v2 but the
    // version byte), and a datagram from some later version.
    let mut v1 = enc(Message::Reject(Reject {
        reason: RejectReason::UnsupportedVersion { supported: 1 },
    }))
    .to_vec();
    v1[2] = 1;
    for (datagram, version) in [(v1, 1), (b"ES\x03\x05\0\0\0\0\0\0\0\0future".to_vec(), 3)] {
        let t0 = Instant::now();
        let mut s = Session::new(config(Duration::from_secs(3)), t0);
        sent(&mut s, t0);
        s.handle(t0 + ms(5), server(), &datagram);
        assert_eq!(
            events(&mut s),
            vec![Event::Rejected(RejectReason::UnsupportedVersion {
                supported: version
            })]
        );
        assert!(s.is_closed());
        assert!(sent(&mut s, t0 + ms(5)).is_empty());
    }
}

#[test]
fn welcome_bounds_refuse_unplayable_streams_with_a_reason_and_a_leave() {
    let max_fpp = (MAX_PAYLOAD / 4) as u32;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "fpp 0",
            Box::new(|i| i.frames_per_packet = 0),
            "0 frames per packet",
        ),
        (
            "fpp too large",
            Box::new(move |i| i.frames_per_packet = max_fpp + 1),
            "frames per packet (expected 1..=",
        ),
        (
            "interval 0",
            Box::new(|i| i.interval_us = 0),
            "interval 0ns",
        ),
        (
            "interval too long",
            Box::new(|i| i.interval_us = MAX_WELCOME_INTERVAL.as_micros() as u32 + 1),
            "interval 10.000001s",
        ),
        (
            "rate too low",
            Box::new(|i| i.sample_rate = MIN_WELCOME_RATE - 1),
            "sample rate 3999 Hz",
        ),
        (
            "rate too high",
            Box::new(|i| i.sample_rate = MAX_WELCOME_RATE + 1),
            "sample rate 384001 Hz",
        ),
        ("no channels", Box::new(|i| i.channels = 0), "0 channels"),
        (
            "flac in blocks too small for FLAC",
            Box::new(|i| {
                i.codec = proto::AudioCodec::Flac;
                i.frames_per_packet = 8;
            }),
            "flac cannot use 8 frames per packet",
        ),
        (
            "opus not at 48 kHz",
            Box::new(|i| {
                i.codec = proto::AudioCodec::Opus { bitrate: 96_000 };
                i.sample_rate = 44_100;
                i.frames_per_packet = 960;
            }),
            "this one is 44100 Hz, 2 channels, 960-frame packets",
        ),
        (
            "too many channels",
            Box::new(|i| i.channels = MAX_WELCOME_CHANNELS + 1),
            "33 channels (expected 1..=32)",
        ),
    ];
    for (name, mutate, says) in cases {
        let t0 = Instant::now();
        let mut s = Session::new(config(Duration::from_secs(3)), t0);
        sent(&mut s, t0);
        let mut i = info(48_000);
        mutate(&mut i);
        s.handle(t0 + ms(5), server(), &welcome(&i));
        let ev = events(&mut s);
        match ev.as_slice() {
            [Event::Unplayable(detail)] => assert!(detail.contains(says), "{name}: {detail}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(s.is_closed(), "{name}");
        // The Welcome made it a session: its Leave carries the token.
        assert_eq!(
            sent(&mut s, t0 + ms(5)),
            vec![leave(LeaveReason::Done)],
            "{name}"
        );
    }
    // The bounds themselves are playable.
    let edges: Vec<Mutation> = vec![
        Box::new(move |i| i.frames_per_packet = max_fpp),
        Box::new(|i| i.interval_us = MAX_WELCOME_INTERVAL.as_micros() as u32),
        Box::new(|i| i.sample_rate = MIN_WELCOME_RATE),
        Box::new(|i| i.sample_rate = MAX_WELCOME_RATE),
        Box::new(|i| {
            i.channels = MAX_WELCOME_CHANNELS;
            i.frames_per_packet = 1;
        }),
    ];
    for mutate in edges {
        let t0 = Instant::now();
        let mut s = Session::new(config(Duration::from_secs(3)), t0);
        let mut i = info(48_000);
        mutate(&mut i);
        s.handle(t0 + ms(5), server(), &welcome(&i));
        assert_eq!(events(&mut s), vec![Event::Joined(i)]);
    }
}

#[test]
fn silence_timeout_at_a_2s_interval_is_twice_the_interval_not_the_timeout() {
    let mut i = info(48_000 * 60);
    i.interval_us = 2_000_000;
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &i);
    assert_eq!(s.silence_timeout(), Some(Duration::from_secs(4)));
    // Past --timeout (3 s) but within 2 × interval: still streaming.
    let (tx, ev) = run_until(&mut s, None, tw, tw + ms(3999));
    assert!(ev.is_empty(), "{ev:?}");
    assert!(
        tx.iter().all(|(_, m)| matches!(m, Message::Report(_))),
        "{tx:?}"
    );
    assert_eq!(s.phase(), Phase::Streaming);
    s.handle_timeout(tw + ms(3999));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(tw + ms(4000));
    assert_eq!(
        events(&mut s),
        vec![
            Event::TimedOut {
                silence: Duration::from_secs(4)
            },
            Event::Ended(ExitReason::Timeout)
        ]
    );
    assert_eq!(
        sent(&mut s, tw + ms(4000)),
        vec![leave(LeaveReason::Timeout)]
    );
    assert_eq!(s.stats().unwrap().end_reason, ExitReason::Timeout);
}

#[test]
fn silence_timeout_is_the_timeout_when_that_is_longer_and_audio_restarts_it() {
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000 * 60));
    assert_eq!(s.silence_timeout(), Some(Duration::from_secs(3)));
    s.handle(tw + ms(1000), server(), &audio(0));
    // Heard at +1 s: silent until +4 s.
    s.handle_timeout(tw + ms(3999));
    assert!(!events(&mut s).contains(&Event::Ended(ExitReason::Timeout)));
    s.handle_timeout(tw + ms(4000));
    assert!(events(&mut s).contains(&Event::Ended(ExitReason::Timeout)));
    // Foreign datagrams do not count as hearing the server.
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000 * 60));
    let other: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    s.handle(tw + ms(2000), other, &audio(0));
    s.handle_timeout(tw + ms(3000));
    assert!(events(&mut s).contains(&Event::Ended(ExitReason::Timeout)));
    assert_eq!(s.stats().unwrap().foreign, 1);
}

#[test]
fn error_not_joined_is_an_eviction_at_once() {
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000));
    s.handle(tw + ms(5), server(), &error(ErrorCode::Internal));
    assert!(
        matches!(events(&mut s).as_slice(), [Event::ServerError(e)] if e.code == ErrorCode::Internal)
    );
    assert_eq!(s.phase(), Phase::Streaming);
    s.handle(tw + ms(10), server(), &error(ErrorCode::NotJoined));
    let ev = events(&mut s);
    assert!(
        matches!(ev.as_slice(), [Event::Evicted(e), Event::Ended(ExitReason::Evicted)] if e.code == ErrorCode::NotJoined),
        "{ev:?}"
    );
    assert_eq!(sent(&mut s, tw + ms(10)), vec![leave(LeaveReason::Done)]);
    assert_eq!(s.exit_reason(), Some(ExitReason::Evicted));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn end_is_played_out_before_the_session_ends() {
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(8 * FPP));
    let mut sink = NullSink::new(48_000, CH as u16);
    // Eight datagrams (40 ms) arrive, paced at 5 ms; far below the start threshold (120 ms).
    for i in 0..8 {
        s.handle(tw + ms(5 * i), server(), &audio(i));
    }
    let now = tw + ms(40);
    assert_eq!(s.feed(now, &mut sink).unwrap(), None, "still buffering");
    assert_eq!(s.playout().played_frames, 0);
    s.handle(now, server(), &end(EndReason::Finished, Some(SEQ0 + 7)));
    assert_eq!(
        events(&mut s),
        vec![Event::EndReceived {
            reason: ExitReason::Finished,
            buffered: ms(40)
        }]
    );
    assert_eq!(s.phase(), Phase::PlayingOut);
    // The sink takes 20 ms at once, then 10 ms at each refill (+10, +20 ms): the next refill
    // finds the buffer empty and the stream over.
    let (tx, ev) = run_until(
        &mut s,
        Some(&mut sink as &mut dyn Sink),
        now,
        now + Duration::from_secs(10),
    );
    let ended: Vec<_> = ev
        .iter()
        .filter(|(_, e)| matches!(e, Event::Ended(_)))
        .collect();
    assert_eq!(
        ended,
        vec![&(now + ms(30), Event::Ended(ExitReason::Finished))]
    );
    assert!(
        ev.contains(&(now, Event::Playing { buffered: ms(20) })),
        "{ev:?}"
    );
    assert_eq!(tx, vec![(now + ms(30), leave(LeaveReason::Done))]);
    let st = s.stats().unwrap();
    assert_eq!(
        (
            st.expected,
            st.received,
            st.lost,
            st.played_ms,
            st.concealed_ms
        ),
        (8, 8, 0, 40, 0)
    );
    assert_eq!(st.end_reason, ExitReason::Finished);
}

#[test]
fn trailing_loss_is_concealed_only_as_far_as_the_missing_datagrams_reach() {
    // The Welcome claims an hour; datagrams 6 and 7 of 8 are lost.
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000 * 3600));
    let mut sink = NullSink::new(48_000, CH as u16);
    for i in 0..6 {
        s.handle(tw + ms(5 * i), server(), &audio(i));
    }
    s.handle(
        tw + ms(40),
        server(),
        &end(EndReason::Finished, Some(SEQ0 + 7)),
    );
    run_until(
        &mut s,
        Some(&mut sink as &mut dyn Sink),
        tw + ms(40),
        tw + Duration::from_secs(30),
    );
    let st = s.stats().unwrap();
    assert_eq!(st.end_reason, ExitReason::Finished);
    // Two missing datagrams of at most 240 frames each: 10 ms concealed, 40 ms in all.
    assert_eq!(
        (st.expected, st.lost, st.concealed_ms, st.played_ms),
        (8, 2, 10, 40)
    );
    // A stream ended by shutdown conceals nothing past what arrived.
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000 * 3600));
    let mut sink = NullSink::new(48_000, CH as u16);
    for i in 0..6 {
        s.handle(tw + ms(5 * i), server(), &audio(i));
    }
    s.handle(
        tw + ms(40),
        server(),
        &end(EndReason::Shutdown, Some(SEQ0 + 7)),
    );
    run_until(
        &mut s,
        Some(&mut sink as &mut dyn Sink),
        tw + ms(40),
        tw + Duration::from_secs(30),
    );
    let st = s.stats().unwrap();
    assert_eq!(
        (st.end_reason, st.concealed_ms, st.played_ms),
        (ExitReason::Shutdown, 0, 30)
    );
}

#[test]
fn an_end_the_sink_never_plays_out_ends_at_its_deadline() {
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000));
    for i in 0..4 {
        s.handle(tw, server(), &audio(i));
    }
    s.handle(tw, server(), &end(EndReason::Evicted, Some(SEQ0 + 3)));
    events(&mut s);
    // 20 ms left to play plus the 3 s grace; nobody pulls.
    let deadline = tw + ms(3020);
    assert_eq!(s.poll_timeout(), Some(deadline));
    s.handle_timeout(deadline - ms(1));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(deadline);
    assert_eq!(
        events(&mut s),
        vec![Event::EndOverdue, Event::Ended(ExitReason::Evicted)]
    );
}

#[test]
fn reports_go_out_every_second_with_the_counters_until_the_end() {
    // One datagram per 5 ms tick, so each datagram's transit is its own.
    let mut paced = info(48_000 * 60);
    paced.interval_us = 5_000;
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &paced);
    // Datagrams 0..10 paced at 5 ms (zero jitter), 3 lost, 5 twice, 9 and 8 swapped.
    for (i, at) in [
        (0, 0),
        (1, 5),
        (2, 10),
        (4, 20),
        (5, 25),
        (5, 26),
        (6, 30),
        (7, 35),
        (9, 40),
        (8, 45),
    ] {
        s.handle(tw + ms(at), server(), &audio(i));
    }
    let (tx, _) = run_until(&mut s, None, tw + ms(45), tw + ms(2000));
    let reports: Vec<(Duration, Report)> = tx
        .into_iter()
        .map(|(t, m)| match m {
            Message::Report(r) => (t - tw, r),
            other => panic!("{other:?}"),
        })
        .collect();
    let want = Report {
        token: TOKEN,
        received: 9,
        lost: 1,
        late: 0,
        duplicates: 1,
        out_of_order: 1,
        highest_seq: SEQ0 + 9,
        // RFC 3550 by hand: 9 comes 240 frames early (J = 240/16 = 15 frames), 8 comes 240
        // late (D = 480, J = 15 + 465/16 = 44.0625 frames = 0.918 ms).
        jitter_us: 918,
        buffered_ms: 50,
        // Nothing played yet, so nothing concealed; no repair, no clock sync.
        ..Report::default()
    };
    assert_eq!(
        reports,
        vec![(REPORT_INTERVAL, want), (2 * REPORT_INTERVAL, want)]
    );
    // After End: no more reports.
    s.handle(
        tw + ms(2100),
        server(),
        &end(EndReason::Finished, Some(SEQ0 + 9)),
    );
    let (tx, _) = run_until(&mut s, None, tw + ms(2100), tw + ms(2500));
    assert!(tx.is_empty(), "{tx:?}");
    s.handle_timeout(tw + ms(3000));
    assert!(sent(&mut s, tw + ms(3000)).is_empty());
}

#[test]
fn leave_interrupts_the_handshake_silently_and_the_stream_with_a_leave() {
    // During the handshake there is no token yet, so nothing a server would take as a Leave.
    let t0 = Instant::now();
    let mut s = Session::new(config(Duration::from_secs(3)), t0);
    sent(&mut s, t0);
    s.handle(t0 + ms(10), server(), &challenge(1));
    sent(&mut s, t0 + ms(10));
    events(&mut s);
    s.leave(t0 + ms(100), LeaveReason::Interrupted);
    assert_eq!(events(&mut s), vec![Event::Ended(ExitReason::Interrupted)]);
    assert!(sent(&mut s, t0 + ms(100)).is_empty());
    assert_eq!(s.stats().unwrap().end_reason, ExitReason::Interrupted);
    assert!(s.info().is_none());
    assert_eq!(
        s.poll_timeout(),
        None,
        "no retransmission after the interrupt"
    );
    // A second interrupt, or late datagrams (the Welcome too), change nothing.
    s.leave(t0 + ms(200), LeaveReason::Interrupted);
    s.handle(t0 + ms(200), server(), &challenge(1));
    s.handle(t0 + ms(200), server(), &welcome(&info(48_000)));
    assert!(events(&mut s).is_empty());
    assert!(sent(&mut s, t0 + ms(200)).is_empty());

    // Joined: the Leave carries the token and the reason given.
    for why in [
        LeaveReason::Interrupted,
        LeaveReason::Terminated,
        LeaveReason::DeviceError,
    ] {
        let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000));
        s.handle(tw, server(), &audio(0));
        s.leave(tw + ms(10), why);
        assert_eq!(events(&mut s), vec![Event::Ended(ExitReason::Interrupted)]);
        assert_eq!(sent(&mut s, tw + ms(10)), vec![leave(why)]);
        assert_eq!(s.stats().unwrap().received, 1);
        // Only once.
        s.leave(tw + ms(20), LeaveReason::Interrupted);
        assert!(sent(&mut s, tw + ms(20)).is_empty());
    }
}

#[test]
fn garbage_and_foreign_datagrams_are_counted_and_dropped_never_a_panic() {
    let (mut s, t0, tw) = joined(config(Duration::from_secs(3)), &info(48_000));
    let other: SocketAddr = "[::1]:4000".parse().unwrap();
    s.handle(tw, other, &audio(0));
    s.handle(tw, server(), b"ES\x02\x06garbage!");
    s.handle(tw, server(), &[]);
    // Messages only a listener sends are out of place from a server.
    s.handle(tw, server(), &enc(leave(LeaveReason::Done)));
    s.handle(
        tw,
        server(),
        &enc(Message::Report(Report {
            token: TOKEN,
            ..Report::default()
        })),
    );
    // Random bytes, and random bytes behind a valid header, of every length up to 300.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..300 {
        let mut d: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        s.handle(tw, server(), &d);
        if d.len() >= 4 {
            d[..3].copy_from_slice(b"ES\x02");
            // The codes v2 defines (and some it does not).
            d[3] %= 70;
            s.handle(tw, server(), &d);
        }
    }
    assert_eq!(s.tracker().foreign(), 1);
    assert!(s.tracker().garbage() >= 4, "{}", s.tracker().garbage());
    assert_eq!(s.phase(), Phase::Streaming, "garbage ended the session");
    assert_eq!(s.tracker().received(), 0);
    // Garbage and foreign datagrams from the handshake carry over.
    let mut h = Session::new(config(Duration::from_secs(3)), t0);
    h.handle(t0, server(), b"nonsense");
    h.handle(t0, other, b"nonsense");
    h.handle(t0, server(), &welcome(&info(48_000)));
    assert_eq!((h.tracker().garbage(), h.tracker().foreign()), (1, 1));
}

#[test]
fn audio_that_is_not_a_whole_number_of_frames_is_garbage_not_received() {
    let (mut s, _t0, tw) = joined(config(Duration::from_secs(3)), &info(48_000));
    let bpf = CH * 2;
    for len in [0, 1, bpf - 1, bpf + 2, 3 * bpf + 1] {
        let mut b = BytesMut::new();
        proto::encode_audio(SEQ0, 0, &vec![0u8; len], &mut b);
        s.handle(tw, server(), &b);
    }
    assert_eq!(s.tracker().garbage(), 5);
    assert_eq!(s.tracker().received(), 0);
    // The same seq as a whole frame afterwards is received as new.
    s.handle(tw, server(), &audio(0));
    assert_eq!(s.tracker().received(), 1);
}

#[test]
fn a_caller_without_a_sink_pulls_playout_frames_directly() {
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(48_000 * 60));
    // 120 ms (the 100 ms target plus the 20 ms sink lead) starts playout.
    for i in 0..24 {
        s.handle(tw + ms(5 * i), server(), &audio(i));
    }
    let mut out = Vec::new();
    let now = tw + ms(120);
    assert_eq!(s.pull(now, 300, &mut out), 300);
    assert_eq!(out.len(), 300 * CH);
    // The first 240 frames are datagram 0's samples, then datagram 1's.
    assert_eq!(out[0], 0);
    assert_eq!(out[240 * CH], 1000);
    assert_eq!(s.jitter_buffer().unwrap().position(), 300);
    // 5760 - 300 frames left: 113.75 ms.
    assert!(events(&mut s).contains(&Event::Playing {
        buffered: Duration::from_micros(113_750)
    }));
}

#[test]
fn the_session_never_reads_a_clock_between_calls() {
    // The same inputs at the same instants give the same outputs, whatever the wall clock.
    let run = |t0: Instant| {
        let mut s = Session::new(config(Duration::from_secs(3)), t0);
        let mut log = Vec::new();
        log.extend(sent(&mut s, t0));
        s.handle(t0 + ms(300), server(), &challenge(1));
        s.handle(t0 + ms(310), server(), &welcome(&info(48_000)));
        for i in 0..50 {
            s.handle(t0 + ms(320 + 5 * i), server(), &audio(i));
        }
        let (tx, _) = run_until(&mut s, None, t0 + ms(310), t0 + ms(3000));
        log.extend(tx.into_iter().map(|(t, m)| {
            assert!(t >= t0);
            m
        }));
        (log, s.poll_timeout().map(|t| t - t0))
    };
    let a = run(Instant::now());
    let b = run(Instant::now() + Duration::from_secs(3600));
    assert_eq!(a, b);
    // Reports went out at 1310 and 2310 ms; the next is due at 3310 ms, before the silence
    // timeout (last audio at 565 ms + 3 s).
    assert_eq!(a.1, Some(ms(3310)));
}

#[test]
fn a_whole_stream_plays_into_a_memory_sink_on_simulated_time() {
    // 48 datagrams (240 ms) in 20 ms bursts of 4; datagram 10 lost, burst 3 sent backwards.
    let n = 48;
    let (mut s, _, tw) = joined(config(Duration::from_secs(3)), &info(n * FPP));
    let mut sink = MemorySink::new(48_000, CH as u16);
    let mut arrivals: Vec<(Instant, Bytes)> = Vec::new();
    for burst in 0..n / 4 {
        let mut ids: Vec<u64> = (burst * 4..burst * 4 + 4).filter(|&i| i != 10).collect();
        if burst == 3 {
            ids.reverse();
        }
        let at = tw + ms(20 * burst);
        arrivals.extend(ids.into_iter().map(|i| (at, audio(i))));
    }
    let t_end = tw + ms(20 * (n / 4));
    for k in 0..3 {
        arrivals.push((
            t_end + ms(50 * k),
            end(EndReason::Finished, Some(SEQ0 + n - 1)),
        ));
    }
    let mut now = tw;
    let mut log = Vec::new();
    let mut all = Vec::new();
    for (at, d) in arrivals {
        let (tx, ev) = run_until(&mut s, Some(&mut sink as &mut dyn Sink), now, at);
        log.extend(tx.into_iter().map(|(_, m)| m));
        all.extend(ev);
        s.handle(at, server(), &d);
        now = at;
    }
    let (tx, ev) = run_until(
        &mut s,
        Some(&mut sink as &mut dyn Sink),
        now,
        now + Duration::from_secs(10),
    );
    log.extend(tx.into_iter().map(|(_, m)| m));
    all.extend(ev);
    assert!(s.is_closed());
    // Playout starts once 120 ms are buffered (the 100 ms target and the sink's 20 ms), at the
    // burst of 100 ms; no underrun on the way. The sink then holds 20 ms and is refilled 10 ms
    // at a time, so the last frames go out at 320 ms and the refill at 330 ms finds the stream
    // over. The End repeats at 290 and 340 ms change nothing.
    let kinds: Vec<(Duration, &Event)> = all.iter().map(|(t, e)| (*t - tw, e)).collect();
    assert_eq!(
        kinds,
        vec![
            (ms(100), &Event::Playing { buffered: ms(100) }),
            (
                ms(240),
                &Event::EndReceived {
                    reason: ExitReason::Finished,
                    buffered: ms(80)
                }
            ),
            (ms(330), &Event::Ended(ExitReason::Finished)),
        ]
    );
    assert_eq!(
        log.iter()
            .filter(|m| matches!(m, Message::Leave(_)))
            .count(),
        1
    );
    assert_eq!(log.last(), Some(&leave(LeaveReason::Done)));
    let st = s.stats().unwrap();
    assert_eq!(
        (
            st.expected,
            st.received,
            st.lost,
            st.out_of_order,
            st.underruns,
            st.late
        ),
        (48, 47, 1, 3, 0, 0)
    );
    assert_eq!((st.played_ms, st.concealed_ms), (240, 5));
    // Bit-exact except the lost datagram, which is concealed in place.
    let got = sink.samples();
    assert_eq!(got.len(), (n * FPP) as usize * CH);
    let spf = FPP as usize * CH;
    for i in 0..n as usize {
        let want: Vec<i16> = (0..spf).map(|k| (i * 1000 + k) as i16).collect();
        let r = &got[i * spf..(i + 1) * spf];
        if i == 10 {
            assert!(r != want.as_slice(), "the lost datagram plays");
            assert!(
                r[spf - CH..].iter().all(|&x| x == 0),
                "concealment ends in silence"
            );
        } else {
            assert!(r == want.as_slice(), "datagram {i} differs");
        }
    }
}

#[test]
fn without_playout_audio_is_counted_and_reported_never_buffered_and_end_ends_at_once() {
    let mut cfg = config(Duration::from_secs(3));
    cfg.playout = false;
    let (mut s, _, tw) = joined(cfg, &info(48_000 * 60));
    // The same datagrams to a playout session: it buffers them, this one must not.
    let (mut p, _, _) = joined(config(Duration::from_secs(3)), &info(48_000 * 60));
    // 0..10 without 3, 5 twice.
    for (i, at) in [(0, 0), (1, 5), (2, 10), (4, 20), (5, 25), (5, 26), (6, 30)] {
        s.handle(tw + ms(at), server(), &audio(i));
        p.handle(tw + ms(at), server(), &audio(i));
    }
    for i in 7..10 {
        s.handle(tw + ms(5 * i), server(), &audio(i));
        p.handle(tw + ms(5 * i), server(), &audio(i));
    }
    assert_eq!(s.tracker().received(), 9);
    assert_eq!(s.tracker().lost(), 1);
    assert_eq!(s.jitter_buffer().unwrap().buffered_frames(), 0);
    // Up to the end of datagram 9, the hole at 3 included.
    assert_eq!(p.jitter_buffer().unwrap().buffered_frames(), 10 * FPP);
    let mut out = Vec::new();
    assert_eq!(s.pull(tw + ms(50), 48_000, &mut out), 0);
    assert!(out.is_empty());

    // Reports carry the counters, with nothing buffered.
    let (tx, _) = run_until(&mut s, None, tw + ms(45), tw + ms(1500));
    let Some((at, Message::Report(r))) = tx.first() else {
        panic!("{tx:?}");
    };
    assert_eq!(*at, tw + REPORT_INTERVAL);
    assert_eq!(
        (
            r.received,
            r.lost,
            r.duplicates,
            r.highest_seq,
            r.buffered_ms
        ),
        (9, 1, 1, SEQ0 + 9, 0)
    );
    assert_eq!(tx.len(), 1, "{tx:?}");

    // End: nothing to play out, so the session ends here with the End's tail counted.
    let te = tw + ms(1600);
    s.handle(te, server(), &end(EndReason::Finished, Some(SEQ0 + 11)));
    assert_eq!(
        events(&mut s),
        vec![
            Event::EndReceived {
                reason: ExitReason::Finished,
                buffered: Duration::ZERO
            },
            Event::Ended(ExitReason::Finished)
        ]
    );
    assert_eq!(sent(&mut s, te), vec![leave(LeaveReason::Done)]);
    assert!(s.is_closed());
    let st = s.stats().unwrap();
    assert_eq!(
        (
            st.expected,
            st.received,
            st.lost,
            st.duplicates,
            st.played_ms
        ),
        (12, 9, 3, 1, 0)
    );
    assert_eq!(st.end_reason, ExitReason::Finished);
    // The playout session is still playing the end out.
    p.handle(te, server(), &end(EndReason::Finished, Some(SEQ0 + 11)));
    assert!(!p.is_closed());
}

/// The Join this listener sends for `cookie`: its codecs and its repair features.
fn join_msg(cookie: [u8; 16]) -> proto::Join {
    proto::Join {
        features: listen::session::SUPPORTED_FEATURES,
        ..our_join(cookie)
    }
}
