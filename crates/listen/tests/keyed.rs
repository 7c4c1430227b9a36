//! A private room's session (docs/PROTOCOL.md §4.12) on simulated time, against a scripted
//! server that holds the room key through `seal`: the Join carries Noise message 1, the
//! Welcome's message 2 finishes it, audio opens only sealed under the stream key (forged,
//! tampered, replayed and plaintext datagrams are counted as garbage), a Rekey is followed,
//! every message the listener sends is sealed, and a wrong key fails as `Reject{BadKey}`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use listen::session::{Event, Session, SessionConfig};
use proto::{Challenge, Message, Packet, RejectReason, Rekey, StreamInfo, Token, Welcome};
use seal::{RoomKey, SERVER_KEY_ID, ServerSession, StreamKey};

const TOKEN: Token = [0x5e; proto::TOKEN_LEN];
const SEQ0: u64 = 1000;
const FPP: u64 = 240;

fn server() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
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
        multicast: None,
        interval_us: 20_000,
        frames_per_packet: FPP as u32,
        total_frames: Some(48_000),
        start_seq: SEQ0,
        start_ts: 0,
        title: "private".into(),
    }
}

fn audio(i: u64) -> Bytes {
    let pcm: Vec<u8> = (0..FPP as usize * 2)
        .flat_map(|k| ((i as usize * 1000 + k) as i16).to_le_bytes())
        .collect();
    let mut b = BytesMut::new();
    proto::encode_audio(SEQ0 + i, i * FPP, &pcm, &mut b);
    b.freeze()
}

fn sealed(plain: &[u8], key: &StreamKey) -> Bytes {
    seal::wire::seal_datagram(plain, key.id(), |t, s, b, o| key.seal(t, s, b, o)).unwrap()
}

fn drain(s: &mut Session, now: Instant) -> Vec<Bytes> {
    std::iter::from_fn(|| s.poll_transmit(now).map(|t| t.contents)).collect()
}

/// The listener's session with `listener_key`, joined to a server holding `room`: returns the
/// session (joined or failed), the server's side of the handshake if it accepted, and the
/// server's stream key.
fn join(
    listener_key: Option<RoomKey>,
    room: Option<RoomKey>,
    t0: Instant,
) -> (Session, Option<ServerSession>, StreamKey) {
    let mut s = Session::new(SessionConfig::new(server()), t0);
    if let Some(k) = listener_key {
        s = s.with_room_key(&k).unwrap();
    }
    drain(&mut s, t0);
    let challenge = Message::Challenge(Challenge { cookie: [3; 16] });
    s.handle(
        t0,
        server(),
        &proto::encode_to_bytes(&Packet::new(1, challenge)).unwrap(),
    );
    let sent = drain(&mut s, t0);
    let Message::Join(j) = proto::decode(&sent[0]).unwrap().msg else {
        panic!("no Join")
    };
    let stream = StreamKey::generate(0).unwrap();
    let (noise, accepted) = match room {
        None => (Bytes::new(), None),
        Some(room) => match ServerSession::accept(&room, &j.noise, &stream) {
            Ok(ss) => (Bytes::copy_from_slice(ss.welcome_noise()), Some(ss)),
            Err(_) => return (s, None, stream),
        },
    };
    let welcome = Message::Welcome(Welcome {
        token: TOKEN,
        noise,
        info: info(),
    });
    s.handle(
        t0,
        server(),
        &proto::encode_to_bytes(&Packet::new(2, welcome)).unwrap(),
    );
    (s, accepted, stream)
}

#[test]
fn right_key_joins_opens_sealed_audio_and_refuses_everything_else() {
    let t0 = Instant::now();
    let room = RoomKey::from_bytes([4; 32]);
    let (mut s, server_side, stream) = join(Some(room), Some(room), t0);
    let mut server_side = server_side.expect("accepted");
    assert!(
        std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, Event::Joined(_))),
        "not joined"
    );
    let now = t0 + Duration::from_millis(5);
    s.handle(now, server(), &sealed(&audio(0), &stream));
    assert_eq!(s.tracker().received(), 1);

    // Plaintext audio, a replay, a tampered copy and one under another key: all garbage.
    let garbage0 = s.tracker().garbage();
    s.handle(now, server(), &audio(1));
    s.handle(now, server(), &sealed(&audio(0), &stream));
    let mut tampered = sealed(&audio(1), &stream).to_vec();
    let n = tampered.len();
    tampered[n - 3] ^= 1;
    s.handle(now, server(), &tampered);
    s.handle(
        now,
        server(),
        &sealed(&audio(1), &StreamKey::generate(0).unwrap()),
    );
    assert_eq!(s.tracker().garbage() - garbage0, 4);
    assert_eq!(s.tracker().received(), 1);
    s.handle(now, server(), &sealed(&audio(1), &stream));
    assert_eq!(s.tracker().received(), 2);

    // A Rekey under the session key; audio under the new key then opens.
    let next = StreamKey::generate(1).unwrap();
    let rekey = Message::Rekey(Rekey {
        key_id: next.id(),
        key: *next.bytes(),
    });
    let plain = proto::encode_to_bytes(&Packet::new(1, rekey)).unwrap();
    let wire = seal::wire::seal_datagram(&plain, SERVER_KEY_ID, |t, q, b, o| {
        server_side.seal(t, q, b, o)
    })
    .unwrap();
    s.handle(now, server(), &wire);
    s.handle(now, server(), &sealed(&audio(2), &next));
    assert_eq!(s.tracker().received(), 3);

    // The Report and the Leave go out sealed under the session key, with the token inside.
    s.handle_timeout(t0 + Duration::from_millis(1000));
    s.leave(
        t0 + Duration::from_millis(1001),
        proto::LeaveReason::Interrupted,
    );
    let sent = drain(&mut s, t0 + Duration::from_millis(1001));
    assert_eq!(sent.len(), 2);
    for d in &sent {
        let p = proto::decode(d).unwrap();
        let Message::Sealed(sl) = &p.msg else {
            panic!("sent in the clear: {:?}", p.msg)
        };
        assert_eq!(sl.key_id, seal::LISTENER_KEY_ID);
        let inner =
            seal::wire::open_datagram(p.seq, sl, |_, t, q, c, o| server_side.open(t, q, c, o))
                .unwrap();
        match inner.msg {
            Message::Report(r) => assert_eq!(r.token, TOKEN),
            Message::Leave(l) => assert_eq!(l.token, TOKEN),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_key_that_does_not_match_fails_as_bad_key() {
    let t0 = Instant::now();
    let cases = [
        // Another key: the server would answer Reject{BadKey}; a Welcome from a server with
        // another key does not finish the handshake either.
        (
            Some(RoomKey::from_bytes([1; 32])),
            Some(RoomKey::from_bytes([2; 32])),
        ),
        // A key for an open room: its Welcome has no Noise message.
        (Some(RoomKey::from_bytes([1; 32])), None),
    ];
    for (listener, room) in cases {
        let (mut s, _, _) = join(listener, room, t0);
        if room.is_some() {
            // The scripted server refused: the listener gets what streamd sends.
            let reject = Message::Reject(proto::Reject {
                reason: RejectReason::BadKey,
            });
            s.handle(
                t0,
                server(),
                &proto::encode_to_bytes(&Packet::new(2, reject)).unwrap(),
            );
        }
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Rejected(RejectReason::BadKey))),
            "{events:?}"
        );
        assert!(!events.iter().any(|e| matches!(e, Event::Joined(_))));
        assert!(s.is_closed());
    }
    // A Welcome carrying message 2 of another room, to a listener with a key.
    let a = RoomKey::from_bytes([1; 32]);
    let mut s = Session::new(SessionConfig::new(server()), t0)
        .with_room_key(&a)
        .unwrap();
    let (_, msg1) = seal::Initiator::start(&RoomKey::from_bytes([2; 32])).unwrap();
    let other = ServerSession::accept(
        &RoomKey::from_bytes([2; 32]),
        &msg1,
        &StreamKey::generate(0).unwrap(),
    )
    .unwrap();
    let welcome = Message::Welcome(Welcome {
        token: TOKEN,
        noise: Bytes::copy_from_slice(other.welcome_noise()),
        info: info(),
    });
    s.handle(
        t0,
        server(),
        &proto::encode_to_bytes(&Packet::new(2, welcome)).unwrap(),
    );
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Rejected(RejectReason::BadKey))),
        "{events:?}"
    );
}
