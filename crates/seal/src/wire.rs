//! Sealed datagrams on the wire: turns an encoded plaintext datagram into a `Sealed` one under a
//! key, and a received `Sealed` back into the plaintext message, so the programs seal and open
//! at their socket edge and handle everything else as in an open room.

use bytes::Bytes;
use proto::limits::HEADER_LEN;
use proto::{MAGIC, Message, MessageType, Packet, Sealed, VERSION};

use crate::SealError;

/// Bytes a datagram grows by when sealed: `key_id` (4), `inner_type` (1), the ciphertext's
/// length prefix (8) and the tag (16). An Audio datagram's payload leaves room for it.
pub const SEALED_OVERHEAD: usize = 4 + 1 + 8 + crate::TAG_LEN;

/// Seals `plain`, one encoded datagram (header and body), as `Sealed { key_id, inner_type,
/// ciphertext }` with the same header seq; `seal` is the key's `seal` method. `None` for bytes
/// shorter than a header or a result too large to send.
pub fn seal_datagram(
    plain: &[u8],
    key_id: u32,
    seal: impl FnOnce(u8, u64, &[u8], &mut Vec<u8>),
) -> Option<Bytes> {
    if plain.len() < HEADER_LEN {
        return None;
    }
    let inner_type = plain[3];
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&plain[4..HEADER_LEN]);
    let seq = u64::from_le_bytes(seq);
    let mut ciphertext = Vec::with_capacity(plain.len() - HEADER_LEN + crate::TAG_LEN);
    seal(inner_type, seq, &plain[HEADER_LEN..], &mut ciphertext);
    let sealed = Sealed {
        key_id,
        inner_type,
        ciphertext: Bytes::from(ciphertext),
    };
    proto::encode_to_bytes(&Packet::new(seq, Message::Sealed(sealed))).ok()
}

/// Opens a received `Sealed` (its header `seq` and body) with `open` (the key's `open`
/// method), then decodes the inner message as if it had arrived in the clear. A `Sealed`
/// inside a `Sealed`, or a body that does not decode, is refused as forged.
pub fn open_datagram(
    seq: u64,
    sealed: &Sealed,
    open: impl FnOnce(u32, u8, u64, &[u8], &mut Vec<u8>) -> Result<(), SealError>,
) -> Result<Packet, SealError> {
    if sealed.inner_type == MessageType::Sealed as u8 {
        return Err(SealError::Forged);
    }
    let mut body = Vec::with_capacity(sealed.ciphertext.len());
    open(
        sealed.key_id,
        sealed.inner_type,
        seq,
        &sealed.ciphertext,
        &mut body,
    )?;
    let mut plain = Vec::with_capacity(HEADER_LEN + body.len());
    plain.extend_from_slice(&MAGIC);
    plain.push(VERSION);
    plain.push(sealed.inner_type);
    plain.extend_from_slice(&seq.to_le_bytes());
    plain.extend_from_slice(&body);
    proto::decode(&plain).map_err(|_| SealError::Forged)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::BytesMut;
    use proto::{Leave, LeaveReason};

    use super::*;
    use crate::{Initiator, LISTENER_KEY_ID, ListenerKeys, RoomKey, ServerSession, StreamKey};

    fn decode_sealed(d: &[u8]) -> (u64, Sealed) {
        match proto::decode(d).expect("decodes") {
            Packet {
                seq,
                msg: Message::Sealed(s),
            } => (seq, s),
            other => panic!("not sealed: {other:?}"),
        }
    }

    #[test]
    fn audio_and_control_round_trip_and_grow_by_the_overhead() {
        let room = RoomKey::from_bytes([9; 32]);
        let stream = StreamKey::generate(3).expect("key");
        let (init, msg1) = Initiator::start(&room).expect("start");
        let mut server = ServerSession::accept(&room, &msg1, &stream).expect("accept");
        let (session, key) = init.finish(server.welcome_noise()).expect("finish");
        let mut keys = ListenerKeys::new(session, key, Duration::from_secs(2));
        let now = Instant::now();

        let pcm: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
        let mut plain = BytesMut::new();
        proto::encode_audio(77, 4242, &pcm, &mut plain);
        let wire = seal_datagram(&plain, stream.id(), |t, s, b, o| stream.seal(t, s, b, o))
            .expect("sealed");
        assert_eq!(wire.len(), plain.len() + SEALED_OVERHEAD);
        assert!(!wire.windows(32).any(|w| pcm.windows(32).any(|p| p == w)));
        let (seq, sealed) = decode_sealed(&wire);
        assert_eq!(
            (seq, sealed.key_id, sealed.inner_type),
            (77, 3, MessageType::Audio as u8)
        );
        let p = open_datagram(seq, &sealed, |k, t, s, c, o| keys.open(now, k, t, s, c, o))
            .expect("opens");
        match p.msg {
            Message::Audio(a) => {
                assert_eq!((p.seq, a.ts), (77, 4242));
                assert_eq!(&a.payload[..], &pcm[..]);
            }
            other => panic!("{other:?}"),
        }

        let leave = Packet::new(
            5,
            Message::Leave(Leave {
                token: [1; 16],
                reason: LeaveReason::Interrupted,
            }),
        );
        let plain = proto::encode_to_bytes(&leave).expect("encode");
        let wire = seal_datagram(&plain, LISTENER_KEY_ID, |t, s, b, o| keys.seal(t, s, b, o))
            .expect("sealed");
        let (seq, sealed) = decode_sealed(&wire);
        let p = open_datagram(seq, &sealed, |_, t, s, c, o| server.open(t, s, c, o))
            .expect("server opens");
        assert_eq!(p, leave);
        // The same datagram again is a replay.
        assert_eq!(
            open_datagram(seq, &sealed, |_, t, s, c, o| server.open(t, s, c, o)),
            Err(SealError::Replayed(crate::Replay::Duplicate))
        );
        // Another header seq: the nonce differs, the tag fails.
        assert_eq!(
            open_datagram(seq + 1, &sealed, |_, t, s, c, o| server.open(t, s, c, o)),
            Err(SealError::Forged)
        );
    }

    #[test]
    fn sealed_inside_sealed_and_short_input_are_refused() {
        assert!(seal_datagram(&[0; 11], 0, |_, _, _, _| {}).is_none());
        let s = Sealed {
            key_id: 0,
            inner_type: MessageType::Sealed as u8,
            ciphertext: Bytes::new(),
        };
        assert_eq!(
            open_datagram(1, &s, |_, _, _, _, _| Ok(())),
            Err(SealError::Forged)
        );
        // An inner body that opens but does not decode as its type.
        let s = Sealed {
            key_id: 0,
            inner_type: MessageType::Audio as u8,
            ciphertext: Bytes::new(),
        };
        assert_eq!(
            open_datagram(1, &s, |_, _, _, _, _| Ok(())),
            Err(SealError::Forged)
        );
    }
}
