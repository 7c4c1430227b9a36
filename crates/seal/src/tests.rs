use super::*;

const AUDIO: u8 = 6;
const RESENT: u8 = 34;
const REPORT: u8 = 7;
const REKEY: u8 = 11;

fn room() -> RoomKey {
    RoomKey::from_bytes([7; KEY_LEN])
}

fn other_room() -> RoomKey {
    RoomKey::from_bytes([8; KEY_LEN])
}

/// A full handshake: (listener session, server session, the stream key the listener got).
fn handshake(stream: &StreamKey) -> (Session, Session, StreamKey) {
    let (init, msg1) = Initiator::start(&room()).expect("start");
    assert_eq!(msg1.len(), MSG1_LEN);
    let (msg2, server) = respond(&room(), &msg1, stream).expect("respond");
    assert_eq!(msg2.len(), MSG2_LEN);
    let (client, got) = init.finish(&msg2).expect("finish");
    (client, server, got)
}

#[test]
fn nonce_layout_puts_the_type_above_the_seq() {
    assert_eq!(nonce(6, 1), 0x0600_0000_0000_0001);
    assert_eq!(nonce(64, u64::MAX), (64 << 56) | SEQ_MASK);
    assert_ne!(nonce(AUDIO, 9), nonce(RESENT, 9));
}

#[test]
fn right_key_handshake_gives_both_sides_working_keys() {
    let stream = StreamKey::generate(4).expect("key");
    let (mut client, mut server, got) = handshake(&stream);
    assert_eq!(got.id(), 4);
    assert_eq!(got.bytes(), stream.bytes());

    let mut wire = Vec::new();
    client.seal(REPORT, 1, b"report body", &mut wire);
    assert_eq!(wire.len(), 11 + TAG_LEN);
    assert!(
        !wire.windows(6).any(|w| w == b"report"),
        "the body is encrypted"
    );
    let mut plain = Vec::new();
    server
        .open(REPORT, 1, &wire, &mut plain)
        .expect("server opens");
    assert_eq!(plain, b"report body");

    wire.clear();
    server.seal(REKEY, 1, b"rekey body", &mut wire);
    client
        .open(REKEY, 1, &wire, &mut plain)
        .expect("client opens");
    assert_eq!(plain, b"rekey body");

    // Each direction has its own key: a listener's message cannot be reflected back to it.
    wire.clear();
    client.seal(REKEY, 2, b"reflected", &mut wire);
    assert_eq!(
        client.open(REKEY, 2, &wire, &mut plain),
        Err(SealError::Forged)
    );

    // The stream key from the Welcome opens what the server's copy seals.
    let mut ring = Keyring::new(got, Duration::from_secs(2));
    wire.clear();
    stream.seal(AUDIO, 100, &[1, 2, 3, 4], &mut wire);
    ring.open(Instant::now(), 4, AUDIO, 100, &wire, &mut plain)
        .expect("audio");
    assert_eq!(plain, [1, 2, 3, 4]);
}

#[test]
fn wrong_or_missing_room_key_fails_the_handshake() {
    let stream = StreamKey::generate(0).expect("key");
    let (init, msg1) = Initiator::start(&other_room()).expect("start");
    assert_eq!(
        respond(&room(), &msg1, &stream).err(),
        Some(SealError::BadKey)
    );
    // A server with another key: the listener refuses its message 2 too.
    let (msg2, _) = respond(&other_room(), &msg1, &stream).expect("same key");
    let (init2, _) = Initiator::start(&room()).expect("start");
    assert_eq!(init2.finish(&msg2).err(), Some(SealError::BadKey));
    // No Noise message at all, or garbage of the right length.
    assert_eq!(
        respond(&room(), &[], &stream).err(),
        Some(SealError::BadKey)
    );
    assert_eq!(
        respond(&room(), &[0u8; MSG1_LEN], &stream).err(),
        Some(SealError::BadKey)
    );
    // Tampering with any byte of message 2 breaks it.
    let (init3, msg1) = Initiator::start(&room()).expect("start");
    let (mut msg2, _) = respond(&room(), &msg1, &stream).expect("respond");
    msg2[40] ^= 1;
    assert_eq!(init3.finish(&msg2).err(), Some(SealError::BadKey));
    assert_eq!(init.finish(&[0u8; 3]).err(), Some(SealError::BadKey));
}

#[test]
fn two_handshakes_give_unrelated_session_keys() {
    let stream = StreamKey::generate(0).expect("key");
    let (a, _, _) = handshake(&stream);
    let (_, mut server_b, _) = handshake(&stream);
    let mut wire = Vec::new();
    a.seal(REPORT, 1, b"from a", &mut wire);
    let mut plain = Vec::new();
    assert_eq!(
        server_b.open(REPORT, 1, &wire, &mut plain),
        Err(SealError::Forged)
    );
}

#[test]
fn tampered_truncated_or_retagged_datagrams_are_refused() {
    let stream = StreamKey::generate(1).expect("key");
    let mut ring = Keyring::new(stream.clone(), Duration::from_secs(2));
    let now = Instant::now();
    let mut wire = Vec::new();
    stream.seal(AUDIO, 7, &[9; 200], &mut wire);
    let mut plain = Vec::new();
    for i in [0, 100, 199, 200, 215] {
        let mut bad = wire.clone();
        bad[i] ^= 0x40;
        assert_eq!(
            ring.open(now, 1, AUDIO, 7, &bad, &mut plain),
            Err(SealError::Forged),
            "byte {i}"
        );
    }
    assert_eq!(
        ring.open(now, 1, AUDIO, 7, &wire[..wire.len() - 1], &mut plain),
        Err(SealError::Forged)
    );
    assert_eq!(
        ring.open(now, 1, AUDIO, 7, &wire[..15], &mut plain),
        Err(SealError::BadLength(15))
    );
    // The seq and the inner type are bound by the nonce.
    assert_eq!(
        ring.open(now, 1, AUDIO, 8, &wire, &mut plain),
        Err(SealError::Forged)
    );
    assert_eq!(
        ring.open(now, 1, RESENT, 7, &wire, &mut plain),
        Err(SealError::Forged)
    );
    assert_eq!(
        ring.open(now, 2, AUDIO, 7, &wire, &mut plain),
        Err(SealError::UnknownKey(2))
    );
    // A key other than the room's stream key.
    let wrong = StreamKey::generate(1).expect("key");
    let mut forged = Vec::new();
    wrong.seal(AUDIO, 7, &[9; 200], &mut forged);
    assert_eq!(
        ring.open(now, 1, AUDIO, 7, &forged, &mut plain),
        Err(SealError::Forged)
    );
    // None of those moved the replay window: the genuine datagram still opens, once.
    ring.open(now, 1, AUDIO, 7, &wire, &mut plain)
        .expect("genuine");
    assert_eq!(plain, [9; 200]);
}

#[test]
fn replayed_and_too_old_datagrams_are_refused() {
    let stream = StreamKey::generate(0).expect("key");
    let (client, mut server, got) = handshake(&stream);
    let mut ring = Keyring::new(got, Duration::from_secs(2));
    let now = Instant::now();
    let mut plain = Vec::new();
    let seal = |seq: u64| {
        let mut w = Vec::new();
        stream.seal(AUDIO, seq, b"pcm", &mut w);
        w
    };
    let first = seal(10);
    ring.open(now, 0, AUDIO, 10, &first, &mut plain)
        .expect("first");
    assert_eq!(
        ring.open(now, 0, AUDIO, 10, &first, &mut plain),
        Err(SealError::Replayed(Replay::Duplicate))
    );
    // A copy of an opened seq that does not verify is a forgery, not a repeat.
    let mut tampered = first.clone();
    tampered[0] ^= 1;
    assert_eq!(
        ring.open(now, 0, AUDIO, 10, &tampered, &mut plain),
        Err(SealError::Forged)
    );
    assert!(plain.is_empty());
    // A Resent of the same seq is another inner type, with its own nonce and window.
    let mut resent = Vec::new();
    stream.seal(RESENT, 10, b"pcm", &mut resent);
    ring.open(now, 0, RESENT, 10, &resent, &mut plain)
        .expect("resent");
    ring.open(
        now,
        0,
        AUDIO,
        10 + REPLAY_WINDOW,
        &seal(10 + REPLAY_WINDOW),
        &mut plain,
    )
    .expect("far ahead");
    assert_eq!(
        ring.open(now, 0, AUDIO, 9, &seal(9), &mut plain),
        Err(SealError::Replayed(Replay::TooOld))
    );
    ring.open(now, 0, AUDIO, 11, &seal(11), &mut plain)
        .expect("just inside the window");

    // Control: a replayed Report (say, a Leave captured earlier) is refused.
    let mut wire = Vec::new();
    client.seal(REPORT, 3, b"leave", &mut wire);
    server.open(REPORT, 3, &wire, &mut plain).expect("first");
    assert_eq!(
        server.open(REPORT, 3, &wire, &mut plain),
        Err(SealError::Replayed(Replay::Duplicate))
    );
    assert!(plain.is_empty());
    let mut tampered = wire.clone();
    tampered[1] ^= 1;
    assert_eq!(
        server.open(REPORT, 3, &tampered, &mut plain),
        Err(SealError::Forged)
    );
}

#[test]
fn keyring_ignores_stale_and_duplicate_keys_and_stays_small() {
    let mut ring = Keyring::new(StreamKey::generate(5).expect("key"), Duration::from_secs(1));
    ring.insert(StreamKey::generate(4).expect("key"));
    ring.insert(StreamKey::generate(5).expect("key"));
    assert_eq!(ring.ids(), [5]);
    for id in 6..10 {
        ring.insert(StreamKey::generate(id).expect("key"));
    }
    assert_eq!(ring.ids(), [7, 8, 9]);
}

/// The server rotates while a listener receives every datagram, some late and reordered
/// across the switch: nothing sealed is ever refused, and the old key is then forgotten.
#[test]
fn rotation_without_a_gap() {
    let t0 = Instant::now();
    let period = Duration::from_secs(10);
    let lead = Duration::from_secs(3);
    let overlap = Duration::from_secs(2);
    let mut rot = Rotation::new(t0, period, lead).expect("rotation");
    let stream = rot.current().clone();
    let (_client, _server, got) = handshake(&stream);
    let mut ring = Keyring::new(got, overlap);

    let tick = Duration::from_millis(20);
    let mut now = t0;
    let mut seq = 0u64;
    let mut held_back: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    let (mut announces, mut switches) = (0, 0);
    let mut plain = Vec::new();
    while now < t0 + Duration::from_secs(35) {
        while let Some(step) = rot.poll(now).expect("poll") {
            match step {
                RotationStep::Announce => {
                    announces += 1;
                    // The first announcement is lost on the way; the second arrives.
                    if announces % 3 != 1 {
                        let next = rot.next().expect("announced key");
                        ring.insert(StreamKey::from_bytes(next.id(), *next.bytes()));
                    }
                }
                RotationStep::Switch => switches += 1,
            }
        }
        assert!(rot.poll_timeout() > now);
        let key = rot.current();
        let mut wire = Vec::new();
        key.seal(AUDIO, seq, &seq.to_le_bytes(), &mut wire);
        // Every 7th datagram arrives 200 ms late (after the next ones).
        if seq % 7 == 0 {
            held_back.push((key.id(), seq, wire));
        } else {
            ring.open(now, key.id(), AUDIO, seq, &wire, &mut plain)
                .unwrap_or_else(|e| panic!("seq {seq} under key {}: {e}", key.id()));
            assert_eq!(plain, seq.to_le_bytes());
        }
        held_back.retain(|(id, s, w)| {
            if (seq - s) * 20 < 200 {
                return true;
            }
            ring.open(now, *id, AUDIO, *s, w, &mut plain)
                .unwrap_or_else(|e| panic!("late seq {s} under key {id}: {e}"));
            false
        });
        seq += 1;
        now += tick;
    }
    assert_eq!(switches, 3, "switches at 10, 20 and 30 s");
    assert_eq!(announces, 9);
    assert_eq!(rot.current().id(), 3);
    assert_eq!(ring.ids(), [3], "older keys retired after the overlap");
    // The retired key no longer opens anything.
    let mut wire = Vec::new();
    let old = StreamKey::from_bytes(0, *stream.bytes());
    old.seal(AUDIO, seq, b"x", &mut wire);
    assert_eq!(
        ring.open(now, 0, AUDIO, seq, &wire, &mut plain),
        Err(SealError::UnknownKey(0))
    );
}

#[test]
fn rotate_soon_announces_before_switching() {
    let t0 = Instant::now();
    let mut rot = Rotation::new(t0, Duration::from_secs(600), Duration::from_secs(3)).expect("r");
    assert_eq!(rot.poll(t0).expect("poll"), None);
    let kick = t0 + Duration::from_secs(5);
    rot.rotate_soon(kick);
    assert_eq!(rot.poll(kick).expect("poll"), Some(RotationStep::Announce));
    assert_eq!(rot.next().map(StreamKey::id), Some(1));
    assert_eq!(rot.poll(kick).expect("poll"), None);
    let mut steps = Vec::new();
    let mut now = kick;
    while now <= kick + Duration::from_secs(4) {
        while let Some(s) = rot.poll(now).expect("poll") {
            steps.push((now - kick, s));
        }
        now += Duration::from_millis(100);
    }
    assert_eq!(
        steps,
        [
            (Duration::from_secs(1), RotationStep::Announce),
            (Duration::from_secs(2), RotationStep::Announce),
            (Duration::from_secs(3), RotationStep::Switch),
        ]
    );
    assert_eq!(rot.current().id(), 1);
    assert!(
        rot.key(0).is_some(),
        "the previous key stays for retransmissions"
    );
}

#[test]
fn a_late_poll_still_announces_before_the_switch() {
    let t0 = Instant::now();
    let mut rot = Rotation::new(t0, Duration::from_secs(10), Duration::from_secs(3)).expect("r");
    let late = t0 + Duration::from_secs(60);
    assert_eq!(rot.poll(late).expect("poll"), Some(RotationStep::Announce));
    assert_eq!(
        rot.current().id(),
        0,
        "not switched before anyone heard of the key"
    );
    assert_eq!(rot.poll_timeout(), late + Duration::from_secs(1));
}

#[test]
fn listener_keys_tell_session_and_stream_apart_by_key_id() {
    let stream = StreamKey::generate(0).expect("key");
    let (client, mut server, got) = handshake(&stream);
    let mut keys = ListenerKeys::new(client, got, Duration::from_secs(2));
    let now = Instant::now();
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    server.seal(REKEY, 1, b"control", &mut wire);
    keys.open(now, SERVER_KEY_ID, REKEY, 1, &wire, &mut plain)
        .expect("session");
    assert_eq!(
        keys.open(now, 0, REKEY, 1, &wire, &mut plain),
        Err(SealError::Forged)
    );
    wire.clear();
    let next = StreamKey::generate(1).expect("key");
    keys.rekey(next.id(), *next.bytes());
    assert_eq!(keys.stream_key_ids(), [0, 1]);
    next.seal(AUDIO, 5, b"audio", &mut wire);
    keys.open(now, 1, AUDIO, 5, &wire, &mut plain)
        .expect("new stream key");
    assert_eq!(plain, b"audio");
    assert_eq!(
        keys.open(now, SERVER_KEY_ID, AUDIO, 5, &wire, &mut plain),
        Err(SealError::Forged),
        "audio under a stream key never passes as control"
    );
    wire.clear();
    keys.seal(REPORT, 9, b"report", &mut wire);
    server
        .open(REPORT, 9, &wire, &mut plain)
        .expect("server opens");
    assert_eq!(plain, b"report");
}

#[test]
fn a_retransmitted_join_gets_the_same_welcome_and_keys() {
    let stream = StreamKey::generate(0).expect("key");
    let (init, msg1) = Initiator::start(&room()).expect("start");
    let mut server = ServerSession::accept(&room(), &msg1, &stream).expect("accept");
    assert!(server.is_same_handshake(&msg1));
    let (_, other_msg1) = Initiator::start(&room()).expect("start");
    assert!(!server.is_same_handshake(&other_msg1));
    // The first Welcome was lost; the listener finishes with the repeated one.
    let (client, _) = init.finish(server.welcome_noise()).expect("finish");
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    client.seal(REPORT, 1, b"hello", &mut wire);
    server
        .open(REPORT, 1, &wire, &mut plain)
        .expect("same keys");
    assert_eq!(
        ServerSession::accept(&other_room(), &msg1, &stream)
            .err()
            .map(|e| e.to_string()),
        Some("the room key did not match".into())
    );
}

#[test]
fn session_and_stream_key_ids_never_meet() {
    const { assert!(LISTENER_KEY_ID >= STREAM_KEY_IDS && SERVER_KEY_ID >= STREAM_KEY_IDS) };
    assert_eq!(
        next_id(STREAM_KEY_IDS - 1),
        0,
        "stream key ids wrap below the session ids"
    );
    let stream = StreamKey::generate(0).expect("key");
    let (client, _, got) = handshake(&stream);
    let mut keys = ListenerKeys::new(client, got, Duration::from_secs(2));
    let mut plain = Vec::new();
    assert_eq!(
        keys.open(
            Instant::now(),
            LISTENER_KEY_ID,
            REPORT,
            1,
            &[0; 40],
            &mut plain
        ),
        Err(SealError::UnknownKey(LISTENER_KEY_ID)),
        "a listener never opens what is sealed for the server"
    );
}
