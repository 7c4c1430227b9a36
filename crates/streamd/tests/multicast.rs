//! `--multicast` at the endpoint, on simulated time: the Welcome names the group; each tick
//! goes once to the group while a listener needs it; a listener that joined with
//! `FEATURE_MULTICAST` gets unicast audio until its Report says the group arrives, then none,
//! and unicast again when a Report asks for it; handshake, capacity, eviction and `End` stay
//! unicast and unchanged.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{
    Connect, FEATURE_MULTICAST, FLAG_UNICAST_FALLBACK, Join, Leave, LeaveReason, Message, Packet,
    RejectReason, Report, Token, Welcome,
};
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, Event, RepairConfig, Transmit};
use streamd::multicast::Path;
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

const GROUP: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(239, 255, 12, 1)),
    5000,
);
const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);
const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4001);
const C: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4002);
const MS: Duration = Duration::from_millis(1);

fn endpoint(t0: Instant, config: EndpointConfig) -> Endpoint<Endless> {
    let info = SourceInfo {
        sample_rate: 8000,
        channels: 1,
        total_frames: None,
        codec: "test".into(),
        title: "tone".into(),
    };
    let mut ep = Endpoint::new(t0, config, Endless(info));
    ep.set_multicast(GROUP);
    ep
}

fn enc(msg: Message) -> Vec<u8> {
    proto::encode_to_bytes(&Packet::new(1, msg))
        .unwrap()
        .to_vec()
}

/// What one drain of the endpoint handed out: each fan-out's decoded datagrams with their
/// destinations, and the single replies.
#[derive(Debug, Default)]
struct Out {
    fanouts: Vec<(Vec<Message>, Vec<SocketAddr>)>,
    ones: Vec<(SocketAddr, Message)>,
}

impl Out {
    /// Audio datagrams that went to `dest`, over every fan-out.
    fn audio_to(&self, dest: SocketAddr) -> usize {
        self.fanouts
            .iter()
            .filter(|(_, d)| d.contains(&dest))
            .flat_map(|(m, _)| m)
            .filter(|m| matches!(m, Message::Audio(_)))
            .count()
    }

    /// Parity datagrams that went to `dest`.
    fn parity_to(&self, dest: SocketAddr) -> usize {
        self.fanouts
            .iter()
            .filter(|(_, d)| d.contains(&dest))
            .flat_map(|(m, _)| m)
            .filter(|m| matches!(m, Message::Parity(_)))
            .count()
    }

    /// Every fan-out that names the group names only the group.
    fn group_is_alone(&self) -> bool {
        self.fanouts
            .iter()
            .all(|(_, d)| !d.contains(&GROUP) || d == &[GROUP])
    }
}

fn drain(ep: &mut Endpoint<Endless>, now: Instant) -> Out {
    let mut out = Out::default();
    while let Some(t) = ep.poll_transmit(now) {
        match t {
            Transmit::One { dest, datagram } => {
                out.ones.push((dest, proto::decode(&datagram).unwrap().msg));
            }
            Transmit::Fanout { datagrams, dests } => out.fanouts.push((
                datagrams
                    .iter()
                    .map(|d| proto::decode(d).unwrap().msg)
                    .collect(),
                dests.to_vec(),
            )),
        }
    }
    out
}

fn events(ep: &mut Endpoint<Endless>) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn join(ep: &mut Endpoint<Endless>, now: Instant, from: SocketAddr, features: u32) -> Welcome {
    let connect = enc(Message::Connect(Connect {
        max_version: 2,
        padding: Bytes::from(vec![0; MIN_CONNECT_LEN]),
    }));
    ep.handle(now, from, &connect);
    let cookie = match drain(ep, now).ones.pop() {
        Some((_, Message::Challenge(c))) => c.cookie,
        other => panic!("no challenge: {other:?}"),
    };
    let mut j = Join::new(cookie);
    j.features = features;
    ep.handle(now, from, &enc(Message::Join(j)));
    match drain(ep, now).ones.pop() {
        Some((_, Message::Welcome(w))) => w,
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

fn report(ep: &mut Endpoint<Endless>, now: Instant, from: SocketAddr, token: Token, flags: u32) {
    let r = Report {
        token,
        flags,
        ..Report::default()
    };
    ep.handle(now, from, &enc(Message::Report(r)));
}

/// Runs ticks from `from` (exclusive) to `to` (inclusive) every millisecond, returning all
/// that was handed out.
fn run(ep: &mut Endpoint<Endless>, from: Instant, to: Instant) -> Out {
    let mut out = Out::default();
    let mut now = from;
    while now < to {
        now += MS;
        ep.handle_timeout(now);
        let o = drain(ep, now);
        out.fanouts.extend(o.fanouts);
        out.ones.extend(o.ones);
    }
    out
}

#[test]
fn the_welcome_names_the_group_and_a_listener_without_multicast_keeps_unicast() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, EndpointConfig::default());
    let w = join(&mut ep, t0, A, 0);
    let g = w.info.multicast.expect("the Welcome names the group");
    assert_eq!(g.socket_addr(), GROUP);
    assert_eq!(ep.stream_info().multicast, Some(g));
    let out = run(&mut ep, t0, t0 + 200 * MS);
    assert!(out.audio_to(A) > 0, "unicast audio for a plain listener");
    assert_eq!(
        out.audio_to(GROUP),
        0,
        "nobody can receive the group: not sent"
    );
}

#[test]
fn a_multicast_listener_is_unicast_until_its_report_then_group_only_then_unicast_on_fallback() {
    let t0 = Instant::now();
    let fec = repair::FecParams::new(4, 1).unwrap();
    let config = EndpointConfig {
        repair: RepairConfig {
            fec: Some(fec),
            retransmit: true,
        },
        ..EndpointConfig::default()
    };
    let mut ep = endpoint(t0, config);
    let wa = join(&mut ep, t0, A, 0);
    let wb = join(&mut ep, t0, B, FEATURE_MULTICAST);
    assert_eq!(
        ep.multicast_members().unwrap().path(&B),
        Some(Path::Waiting)
    );
    events(&mut ep);

    // Waiting: B gets unicast audio (nothing lost while it joins) and the group goes out.
    let t1 = t0 + 200 * MS;
    let out = run(&mut ep, t0, t1);
    let per_listener = out.audio_to(A);
    assert!(per_listener > 0);
    assert_eq!(out.audio_to(B), per_listener);
    assert_eq!(out.audio_to(GROUP), per_listener, "each datagram once");
    assert!(out.parity_to(GROUP) > 0, "parity goes to the group too");
    assert!(out.group_is_alone());

    // B's Report says the group arrives: no more unicast audio for it, the group goes on.
    report(&mut ep, t1, B, wb.token, 0);
    assert!(events(&mut ep).contains(&Event::PathChanged {
        addr: B,
        path: Path::Group
    }));
    let t2 = t1 + 200 * MS;
    let out = run(&mut ep, t1, t2);
    assert!(out.audio_to(A) > 0);
    assert_eq!(out.audio_to(B), 0, "the group serves B");
    assert_eq!(out.parity_to(B), 0);
    assert_eq!(out.audio_to(GROUP), out.audio_to(A));
    // A's Reports change nothing: it cannot receive the group.
    report(&mut ep, t2, A, wa.token, 0);
    assert!(
        !events(&mut ep)
            .iter()
            .any(|e| matches!(e, Event::PathChanged { .. }))
    );

    // B asks for unicast: it gets audio again, and the group, needed by nobody, stops.
    report(&mut ep, t2, B, wb.token, FLAG_UNICAST_FALLBACK);
    assert!(events(&mut ep).contains(&Event::PathChanged {
        addr: B,
        path: Path::Unicast
    }));
    let t3 = t2 + 200 * MS;
    let out = run(&mut ep, t2, t3);
    assert!(out.audio_to(B) > 0);
    assert_eq!(out.audio_to(B), out.audio_to(A));
    assert_eq!(out.audio_to(GROUP), 0, "nobody needs the group");
    // A Report with the wrong token changes nothing.
    report(&mut ep, t3, B, Token::default(), 0);
    assert_eq!(
        ep.multicast_members().unwrap().path(&B),
        Some(Path::Unicast)
    );
}

#[test]
fn group_listeners_count_for_capacity_and_are_evicted_and_ended_by_unicast() {
    let t0 = Instant::now();
    let config = EndpointConfig {
        max_clients: 2,
        ..EndpointConfig::default()
    };
    let mut ep = endpoint(t0, config);
    let wa = join(&mut ep, t0, A, FEATURE_MULTICAST);
    let wb = join(&mut ep, t0, B, FEATURE_MULTICAST);
    report(&mut ep, t0, A, wa.token, 0);
    report(&mut ep, t0, B, wb.token, 0);
    assert_eq!(ep.multicast_members().unwrap().on_group(), 2);
    // Capacity counts them.
    let connect = enc(Message::Connect(Connect {
        max_version: 2,
        padding: Bytes::from(vec![0; MIN_CONNECT_LEN]),
    }));
    ep.handle(t0, C, &connect);
    let Some((_, Message::Challenge(c))) = drain(&mut ep, t0).ones.pop() else {
        panic!("no challenge")
    };
    ep.handle(t0, C, &enc(Message::Join(Join::new(c.cookie))));
    assert!(matches!(
        drain(&mut ep, t0).ones.pop(),
        Some((_, Message::Reject(r))) if matches!(r.reason, RejectReason::Full { max_clients: 2 })
    ));

    // B leaves; A stays on the group and keeps reporting; then A falls silent and is evicted
    // with End by unicast, after which the group is no longer sent.
    ep.handle(
        t0,
        B,
        &enc(Message::Leave(Leave {
            token: wb.token,
            reason: LeaveReason::Done,
        })),
    );
    assert_eq!(ep.multicast_members().unwrap().len(), 1);
    let timeout = EndpointConfig::default().client_timeout;
    let out = run(&mut ep, t0, t0 + timeout + 300 * MS);
    assert!(out.audio_to(GROUP) > 0);
    assert_eq!(out.audio_to(A), 0);
    assert!(
        out.ones
            .iter()
            .any(|(d, m)| *d == A && matches!(m, Message::End(_))),
        "End{{Evicted}} reaches A by unicast"
    );
    assert!(ep.multicast_members().unwrap().is_empty());
    let t1 = t0 + timeout + 300 * MS;
    let out = run(&mut ep, t1, t1 + 100 * MS);
    assert_eq!(out.audio_to(GROUP), 0, "nobody left to receive the group");
}

#[test]
fn the_end_of_the_stream_goes_to_every_listener_by_unicast() {
    let t0 = Instant::now();
    let mut ep = endpoint(t0, EndpointConfig::default());
    let wa = join(&mut ep, t0, A, FEATURE_MULTICAST);
    join(&mut ep, t0, B, 0);
    report(&mut ep, t0, A, wa.token, 0);
    run(&mut ep, t0, t0 + 100 * MS);
    let t1 = t0 + 100 * MS;
    ep.shutdown(t1);
    let out = drain(&mut ep, t1);
    let ends: Vec<&Vec<SocketAddr>> = out
        .fanouts
        .iter()
        .filter(|(m, _)| matches!(m.first(), Some(Message::End(_))))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(ends.len(), 1);
    assert!(ends[0].contains(&A) && ends[0].contains(&B));
    assert!(!ends[0].contains(&GROUP));
}
