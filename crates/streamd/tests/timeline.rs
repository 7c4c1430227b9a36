//! The media timeline and the clock exchange on simulated time: the Welcome says when each
//! frame is due on the server clock, a TimeResponse answers with the server clock and the
//! current timeline, and a slip of the media clock moves the timeline the next answer carries.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{
    Connect, Join, Message, Packet, TIME_REQUEST_PAD, TimeRequest, Timeline, Token, Welcome,
};
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, Transmit};
use streamd::source::SourceInfo;

/// An endless tone: a source that never ends.
struct Endless(SourceInfo);

impl AudioSource for Endless {
    fn info(&self) -> &SourceInfo {
        &self.0
    }
    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        out.extend(std::iter::repeat_n(1000i16, max_frames));
        max_frames
    }
    fn is_finished(&self) -> bool {
        false
    }
    fn rewind(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn endpoint(t0: Instant, interval: Duration, delay: Duration) -> Endpoint<Endless> {
    let config = EndpointConfig {
        interval,
        playout_delay: delay,
        ..EndpointConfig::default()
    };
    let info = SourceInfo {
        sample_rate: 8000,
        channels: 1,
        total_frames: None,
        codec: "test".into(),
        title: "tone".into(),
    };
    Endpoint::new(t0, config, Endless(info))
}

fn enc(msg: Message) -> Vec<u8> {
    proto::encode_to_bytes(&Packet::new(1, msg))
        .unwrap()
        .to_vec()
}

/// Every reply to `from` queued now, decoded (the audio fan-out is skipped).
fn replies(ep: &mut Endpoint<Endless>, now: Instant, from: SocketAddr) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        if let Transmit::One { dest, datagram } = t
            && dest == from
        {
            out.push(proto::decode(&datagram).unwrap().msg);
        }
    }
    out
}

fn join(ep: &mut Endpoint<Endless>, now: Instant, from: SocketAddr) -> Welcome {
    let connect = enc(Message::Connect(Connect {
        max_version: 2,
        padding: Bytes::from(vec![0; MIN_CONNECT_LEN]),
    }));
    ep.handle(now, from, &connect);
    let Some(Message::Challenge(c)) = replies(ep, now, from).pop() else {
        panic!("no challenge")
    };
    ep.handle(now, from, &enc(Message::Join(Join::new(c.cookie))));
    match replies(ep, now, from).pop() {
        Some(Message::Welcome(w)) => w,
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

fn ask(ep: &mut Endpoint<Endless>, now: Instant, from: SocketAddr, token: Token) -> Message {
    let req = enc(Message::TimeRequest(TimeRequest {
        token,
        t1: 42,
        pad: [0; TIME_REQUEST_PAD],
    }));
    ep.handle(now, from, &req);
    replies(ep, now, from).pop().unwrap()
}

const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);

#[test]
fn the_welcome_places_frame_zero_at_the_join_that_starts_the_stream() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, Duration::from_millis(20), Duration::from_millis(50));
    let w = join(&mut ep, t0 + Duration::from_secs(3), A);
    assert_eq!(
        w.info.timeline,
        Timeline {
            ts: 0,
            server_us: 3_000_000
        }
    );
    assert_eq!(
        (w.info.playout_delay_us, w.info.min_delay_us),
        (50_000, 25_000)
    );
    assert_ne!(w.token, [0; 16]);
}

#[test]
fn time_responses_carry_the_server_clock_and_follow_a_slip() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, Duration::from_millis(20), Duration::from_millis(50));
    let w = join(&mut ep, t0, A);
    // Tick for a second: the timeline does not move.
    let mut now = t0;
    for _ in 0..50 {
        now += Duration::from_millis(20);
        ep.handle_timeout(now);
        replies(&mut ep, now, A);
    }
    let Message::TimeResponse(r) = ask(&mut ep, now, A, w.token) else {
        panic!("expected a TimeResponse")
    };
    assert_eq!((r.t1, r.t2, r.t3), (42, 1_000_000, 1_000_000));
    assert_eq!(r.timeline, w.info.timeline);
    // A 3 s stall: the media clock slips (it owes at most 1 s), so frame F is due later.
    now += Duration::from_secs(3);
    ep.handle_timeout(now);
    replies(&mut ep, now, A);
    let Message::TimeResponse(r) = ask(&mut ep, now, A, w.token) else {
        panic!("expected a TimeResponse")
    };
    let due = |t: Timeline, f: u64| t.server_us as i64 + ((f - t.ts) * 1_000_000 / 8000) as i64;
    let f = r.timeline.ts + 8000;
    let slipped = due(r.timeline, f) - due(w.info.timeline, f);
    assert_eq!(slipped, 2_000_000, "the 2 s given up to the slip");
}

#[test]
fn a_delay_shorter_than_the_interval_allows_is_raised() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, Duration::from_millis(100), Duration::from_millis(10));
    let w = join(&mut ep, t0, A);
    assert_eq!(
        (w.info.playout_delay_us, w.info.min_delay_us),
        (105_000, 105_000)
    );
}

#[test]
fn a_time_request_without_the_token_gets_nothing() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, Duration::from_millis(20), Duration::from_millis(50));
    let w = join(&mut ep, t0, A);
    let mut wrong = w.token;
    wrong[15] ^= 0x80;
    let req = enc(Message::TimeRequest(TimeRequest {
        token: wrong,
        t1: 1,
        pad: [0; TIME_REQUEST_PAD],
    }));
    ep.handle(t0, A, &req);
    assert!(replies(&mut ep, t0, A).is_empty());
}
