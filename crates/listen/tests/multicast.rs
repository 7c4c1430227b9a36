//! The session's part in `--multicast`, on simulated time against hand-built server datagrams:
//! the Join announces `FEATURE_MULTICAST`; Reports ask for unicast until group audio arrives,
//! the first group audio sends a Report without the flag at once; copies that come by both
//! paths during the switch are not duplicates; no group audio within a second (or a group
//! that cannot be joined) falls back to unicast, reported at once; the statistics count every
//! seq the same whichever path brought it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use listen::multicast::{GROUP_WAIT, Transport};
use listen::session::{Phase, Session, SessionConfig};
use proto::{
    Challenge, End, EndReason, FEATURE_MULTICAST, FLAG_UNICAST_FALLBACK, Group, Message, Packet,
    StreamInfo, Token, Welcome,
};

const FPP: u64 = 240;
const SEQ0: u64 = 1000;
const TOKEN: Token = [0x5e; proto::TOKEN_LEN];

fn server() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

fn group() -> SocketAddr {
    "239.255.12.1:5000".parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 48_000,
        channels: 2,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: Some(Group::from_socket_addr(group())),
        interval_us: 20_000,
        frames_per_packet: FPP as u32,
        total_frames: Some(100 * FPP),
        start_seq: SEQ0,
        start_ts: 0,
        title: "test".into(),
    }
}

fn enc(msg: Message) -> Bytes {
    proto::encode_to_bytes(&Packet::new(7, msg)).unwrap()
}

fn audio(i: u64) -> Bytes {
    let pcm = vec![1u8; FPP as usize * 4];
    let mut b = BytesMut::new();
    proto::encode_audio(SEQ0 + i, i * FPP, &pcm, &mut b);
    b.freeze()
}

fn sent(s: &mut Session, now: Instant) -> Vec<Message> {
    std::iter::from_fn(|| s.poll_transmit(now))
        .map(|t| proto::decode(&t.contents).unwrap().msg)
        .collect()
}

/// The report flags of every Report sent at `now`.
fn report_flags(s: &mut Session, now: Instant) -> Vec<u32> {
    sent(s, now)
        .into_iter()
        .filter_map(|m| match m {
            Message::Report(r) => Some(r.flags),
            _ => None,
        })
        .collect()
}

/// A multicast session joined at `t0 + 20 ms`; returns it, the Join's features and the
/// Welcome's instant.
fn joined(with_multicast: bool, info: &StreamInfo) -> (Session, u32, Instant) {
    let t0 = Instant::now();
    let mut s = Session::new(SessionConfig::new(server()), t0);
    if with_multicast {
        s = s.with_multicast();
    }
    sent(&mut s, t0);
    s.handle(
        t0 + ms(10),
        server(),
        &enc(Message::Challenge(Challenge { cookie: [1; 16] })),
    );
    let features = match sent(&mut s, t0 + ms(10)).pop() {
        Some(Message::Join(j)) => j.features,
        other => panic!("expected a Join, got {other:?}"),
    };
    let tw = t0 + ms(20);
    s.handle(
        tw,
        server(),
        &enc(Message::Welcome(Welcome {
            token: TOKEN,
            noise: Bytes::new(),
            info: info.clone(),
        })),
    );
    assert_eq!(s.phase(), Phase::Streaming);
    (s, features, tw)
}

/// Timers up to `until`, collecting the flags of every Report.
fn run(s: &mut Session, from: Instant, until: Instant) -> Vec<(Instant, u32)> {
    let mut out = Vec::new();
    let mut now = from;
    loop {
        out.extend(report_flags(s, now).into_iter().map(|f| (now, f)));
        match s.poll_timeout() {
            Some(t) if t <= until && !s.is_closed() => {
                now = t.max(now);
                s.handle_timeout(now);
            }
            _ => break,
        }
    }
    out
}

fn end(s: &mut Session, now: Instant, last: u64) -> listen::Stats {
    s.handle(
        now,
        server(),
        &enc(Message::End(End {
            reason: EndReason::Finished,
            last_seq: Some(SEQ0 + last),
        })),
    );
    let mut sink = listen::sink::NullSink::new(48_000, 2);
    let mut t = now;
    while !s.is_closed() && t < now + Duration::from_secs(10) {
        t += ms(5);
        let _ = s.feed(t, &mut sink);
        s.handle_timeout(t);
    }
    s.stats().unwrap()
}

#[test]
fn without_multicast_the_join_does_not_ask_and_the_group_is_ignored() {
    let (mut s, features, tw) = joined(false, &info());
    assert_eq!(features & FEATURE_MULTICAST, 0);
    assert_eq!(s.multicast_group(), None);
    assert_eq!(s.transport(), Transport::Unicast);
    s.handle_group(tw, &audio(0));
    assert_eq!(s.tracker().received(), 0);
    let (mut s, features, _) = joined(
        true,
        &StreamInfo {
            multicast: None,
            ..info()
        },
    );
    assert_ne!(features & FEATURE_MULTICAST, 0);
    assert_eq!(
        (s.multicast_group(), s.transport()),
        (None, Transport::Unicast)
    );
    assert_eq!(end(&mut s, Instant::now(), 0).transport, "unicast");
}

#[test]
fn the_first_group_audio_is_reported_at_once_and_copies_by_both_paths_count_once() {
    let (mut s, features, tw) = joined(true, &info());
    assert_ne!(features & FEATURE_MULTICAST, 0);
    assert_eq!(s.multicast_group(), Some(group()));
    assert_eq!(s.transport(), Transport::Multicast);
    // Unicast audio while the group is joined: the server sends both until it has our Report.
    let mut now = tw;
    for i in 0..5 {
        now = tw + ms(5 * i);
        s.handle(now, server(), &audio(i));
    }
    assert!(run(&mut s, now, now).is_empty(), "no Report due yet");
    // The group's copies of 3 and 4 arrive, then 5 by the group only: a Report goes at once,
    // without the flag.
    s.handle_group(now, &audio(3));
    s.handle_group(now, &audio(4));
    s.handle_group(now, &audio(5));
    assert_eq!(run(&mut s, now, now), vec![(now, 0)]);
    // Unicast copies still in flight: not duplicates either.
    s.handle(now, server(), &audio(5));
    s.handle(now, server(), &audio(6));
    s.handle_group(now, &audio(6));
    // Then the group alone, with one datagram lost on the way (8).
    for i in [7, 9] {
        now += ms(5);
        s.handle_group(now, &audio(i));
    }
    // The group goes on for 1.5 s: the Reports carry no flag.
    let mut reports = Vec::new();
    for i in 10..85 {
        let t = now + ms(20 * (i - 9));
        s.handle_group(t, &audio(i));
        reports.extend(run(&mut s, t, t));
    }
    assert!(!reports.is_empty() && reports.iter().all(|(_, f)| *f == 0));
    assert_eq!(s.transport(), Transport::Multicast);
    let st = end(&mut s, now + ms(1500), 84);
    assert_eq!(
        (st.expected, st.received, st.lost, st.duplicates),
        (85, 84, 1, 0)
    );
    assert_eq!(st.transport, "multicast");
}

#[test]
fn no_group_audio_within_the_wait_falls_back_reported_at_once_and_is_said_in_the_stats() {
    let (mut s, _, tw) = joined(true, &info());
    // Unicast audio flows (the server sends it until our Report says the group arrives).
    for i in 0..10 {
        s.handle(tw + ms(20 * i), server(), &audio(i));
    }
    let reports = run(&mut s, tw, tw + GROUP_WAIT + ms(100));
    // The flag is set in every Report: first while waiting, then for good.
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|(_, f)| *f == FLAG_UNICAST_FALLBACK));
    assert!(
        reports.iter().any(|(t, _)| *t == tw + GROUP_WAIT),
        "a Report at the instant it falls back: {reports:?}"
    );
    assert_eq!(s.transport(), Transport::UnicastFallback);
    assert_eq!(s.multicast_group(), None, "the group is no longer wanted");
    // Group audio arriving late is not taken: the server sends by unicast now.
    s.handle_group(tw + GROUP_WAIT + ms(200), &audio(10));
    assert_eq!(s.tracker().received(), 10);
    let st = end(&mut s, tw + GROUP_WAIT + ms(300), 9);
    assert_eq!((st.expected, st.received, st.lost), (10, 10, 0));
    assert_eq!(st.transport, "unicast-fallback");
}

#[test]
fn a_group_that_cannot_be_joined_falls_back_at_once() {
    let (mut s, _, tw) = joined(true, &info());
    s.group_unavailable(tw);
    assert_eq!(run(&mut s, tw, tw), vec![(tw, FLAG_UNICAST_FALLBACK)]);
    assert_eq!(s.transport(), Transport::UnicastFallback);
}

#[test]
fn group_garbage_is_counted_and_control_messages_are_not_taken_from_the_group() {
    let (mut s, _, tw) = joined(true, &info());
    s.handle_group(tw, b"not a datagram");
    s.handle_group(
        tw,
        &enc(Message::End(End {
            reason: EndReason::Finished,
            last_seq: None,
        })),
    );
    assert_eq!(
        s.phase(),
        Phase::Streaming,
        "an End by the group is not taken"
    );
    assert_eq!(s.tracker().garbage(), 2);
}
