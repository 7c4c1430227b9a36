//! Loss repair at the endpoint, on simulated time: Parity after every group, Nacks answered
//! with Resent for a joined listener's token only.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Connect, Join, Message, Nack, Packet, Token, Welcome};
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, RepairConfig, Transmit};
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

fn endpoint(t0: Instant, repair: RepairConfig) -> Endpoint<Endless> {
    let config = EndpointConfig {
        repair,
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

const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4000);
const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4001);

/// Every fan-out datagram handed out at `now`, decoded with its header seq.
fn fanout(ep: &mut Endpoint<Endless>, now: Instant) -> Vec<(u64, Message)> {
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        if let Transmit::Fanout { datagrams, .. } = t {
            for d in datagrams {
                let p = proto::decode(d).unwrap();
                out.push((p.seq, p.msg));
            }
        }
    }
    out
}

/// How many `Resent` datagrams are handed out at `now`.
fn resent(ep: &mut Endpoint<Endless>, now: Instant) -> usize {
    let mut n = 0;
    while let Some(t) = ep.poll_transmit(now) {
        if let Transmit::One { datagram, .. } = t
            && matches!(proto::decode(&datagram).unwrap().msg, Message::Resent(_))
        {
            n += 1;
        }
    }
    n
}

fn nack(token: Token, base: u64, mask: u64) -> Vec<u8> {
    enc(Message::Nack(Nack { token, base, mask }))
}

/// Parity follows each whole group of K audio datagrams, once for every listener, under the
/// server's own parity counter; the Welcome states the repair.
#[test]
fn parity_follows_every_group_and_the_welcome_says_so() {
    let t0 = Instant::now();
    let fec = repair::FecParams::new(4, 1).unwrap();
    let mut ep = endpoint(
        t0,
        RepairConfig {
            fec: Some(fec),
            retransmit: true,
        },
    );
    let w: Welcome = join(&mut ep, t0, A);
    assert_eq!(w.info.repair.fec, Some(proto::Fec { k: 4, m: 1 }));
    assert_eq!(w.info.repair.retransmit_ms, 1000);
    let mut audio = Vec::new();
    let mut parity = Vec::new();
    for i in 0..=50u32 {
        let now = t0 + Duration::from_millis(20) * i;
        ep.handle_timeout(now);
        for (seq, m) in fanout(&mut ep, now) {
            match m {
                Message::Audio(_) => audio.push(seq),
                Message::Parity(p) => parity.push((seq, p.group_seq, p.k, p.m, p.index)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let groups = audio.len() as u64 / 4;
    assert!(groups >= 10, "{audio:?}");
    let want: Vec<_> = (0..groups).map(|g| (g, g * 4, 4, 1, 0)).collect();
    assert_eq!(parity, want);
}

/// A Nack from a joined listener with its token is answered with Resent under the original
/// seqs, byte for byte the Audio; a wrong token or retransmission off gets nothing.
#[test]
fn nacks_are_answered_with_the_original_audio_only_for_the_token() {
    let t0 = Instant::now();
    let mut ep = endpoint(
        t0,
        RepairConfig {
            fec: None,
            retransmit: true,
        },
    );
    let w = join(&mut ep, t0, A);
    let mut sent = std::collections::BTreeMap::new();
    for i in 0..10u32 {
        let now = t0 + Duration::from_millis(20) * i;
        ep.handle_timeout(now);
        for (seq, m) in fanout(&mut ep, now) {
            if let Message::Audio(a) = m {
                sent.insert(seq, a);
            }
        }
    }
    let now = t0 + Duration::from_millis(200);
    ep.handle(now, A, &nack(w.token, 2, 0b101));
    let mut got: Vec<(u64, proto::Audio)> = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        if let Transmit::One { dest, datagram } = t
            && dest == A
            && let Ok(p) = proto::decode(&datagram)
            && let Message::Resent(a) = p.msg
        {
            got.push((p.seq, a));
        }
    }
    let want: Vec<(u64, proto::Audio)> =
        [2u64, 3, 5].iter().map(|s| (*s, sent[s].clone())).collect();
    assert_eq!(got, want);
    // A stranger, or the right address with a wrong token: nothing resent.
    ep.handle(now, B, &nack(w.token, 2, 0));
    ep.handle(now, A, &nack([9; 16], 2, 0));
    assert_eq!(resent(&mut ep, now), 0);

    let mut off = endpoint(t0, RepairConfig::default());
    let w = join(&mut off, t0, A);
    assert_eq!(w.info.repair, proto::Repair::default());
    off.handle_timeout(t0);
    fanout(&mut off, t0);
    off.handle(t0, A, &nack(w.token, 0, 0));
    assert_eq!(resent(&mut off, t0), 0);
}
