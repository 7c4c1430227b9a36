//! Arbitrary bytes from the network: no handshake message, sealed datagram or key id an
//! attacker without the keys can choose ever opens, panics, or moves a replay window.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use seal::{Initiator, Keyring, RoomKey, SealError, ServerSession, StreamKey, respond};

fn room() -> RoomKey {
    RoomKey::from_bytes([1; 32])
}

proptest! {
    #[test]
    fn random_message_1_never_completes_a_handshake(msg in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(any::<u8>(), seal::MSG1_LEN),
    ]) {
        let stream = StreamKey::generate(0).unwrap();
        prop_assert_eq!(respond(&room(), &msg, &stream).err(), Some(SealError::BadKey));
    }

    #[test]
    fn random_message_2_never_finishes_a_handshake(msg in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::collection::vec(any::<u8>(), seal::MSG2_LEN),
    ]) {
        let (init, _) = Initiator::start(&room()).unwrap();
        prop_assert_eq!(init.finish(&msg).err(), Some(SealError::BadKey));
    }

    #[test]
    fn random_sealed_datagrams_never_open(
        key_id in 0u32..3,
        inner_type in any::<u8>(),
        seq in any::<u64>(),
        ciphertext in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let stream = StreamKey::generate(0).unwrap();
        let mut ring = Keyring::new(stream.clone(), Duration::from_secs(1));
        let now = Instant::now();
        let mut out = Vec::new();
        prop_assert!(ring.open(now, key_id, inner_type, seq, &ciphertext, &mut out).is_err());
        prop_assert!(out.is_empty());
        // The genuine datagram with that seq still opens: the forgery left no trace.
        let mut wire = Vec::new();
        stream.seal(inner_type, seq, b"genuine", &mut wire);
        ring.open(now, 0, inner_type, seq, &wire, &mut out).unwrap();
        prop_assert_eq!(&out[..], b"genuine");

        let (_, msg1) = Initiator::start(&room()).unwrap();
        let mut server = ServerSession::accept(&room(), &msg1, &stream).unwrap();
        prop_assert!(server.open(inner_type, seq, &ciphertext, &mut out).is_err());
    }
}
