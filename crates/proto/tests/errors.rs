//! Each kind of bad input gives its own typed error.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proto::limits::{HEADER_LEN, MAX_DATAGRAM};
use proto::*;

fn valid_audio() -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_audio(5, 10, &[1, 2, 3, 4], &mut b);
    b.to_vec()
}

#[test]
fn truncated_header() {
    for n in 0..HEADER_LEN {
        assert_eq!(decode(&valid_audio()[..n]), Err(DecodeError::Truncated(n)));
    }
}

#[test]
fn truncated_body() {
    let a = valid_audio();
    let err = decode(&a[..a.len() - 1]).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Malformed {
                msg_type: MessageType::Audio,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn oversized() {
    let mut a = valid_audio();
    a.resize(MAX_DATAGRAM + 1, 0);
    assert_eq!(decode(&a), Err(DecodeError::TooLarge(MAX_DATAGRAM + 1)));
}

#[test]
fn encode_refuses_oversized() {
    let p = Packet::new(
        0,
        Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0; MAX_DATAGRAM]),
        }),
    );
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert!(encode(&p, &mut buf).is_err());
    assert_eq!(
        buf.as_ref(),
        b"keep",
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn wrong_magic() {
    let mut a = valid_audio();
    a[0] = b'X';
    assert_eq!(decode(&a), Err(DecodeError::BadMagic([b'X', b'S'])));
}

#[test]
fn wrong_version_keeps_type() {
    assert_eq!(valid_audio()[2], 2, "v2 header");
    for v in [0u8, 1, 3, 255] {
        let mut a = valid_audio();
        a[2] = v;
        assert_eq!(
            decode(&a),
            Err(DecodeError::UnsupportedVersion {
                version: v,
                msg_type: 6
            })
        );
    }
}

#[test]
fn unknown_and_reserved_types() {
    for t in [0u8, 12, 16, 31, 35, 47, 50, 63, 65, 255] {
        let mut a = valid_audio();
        a[3] = t;
        assert_eq!(decode(&a), Err(DecodeError::UnknownType(t)));
    }
}

#[test]
fn trailing_bytes() {
    let mut a = valid_audio();
    a.push(0);
    assert_eq!(
        decode(&a),
        Err(DecodeError::TrailingBytes {
            msg_type: MessageType::Audio,
            extra: 1
        })
    );
    let mut leave = BytesMut::new();
    let msg = Message::Leave(Leave {
        token: [7; TOKEN_LEN],
        reason: LeaveReason::Done,
    });
    encode(&Packet::new(0, msg), &mut leave).unwrap();
    leave.extend_from_slice(&[9, 9]);
    assert_eq!(
        decode(&leave),
        Err(DecodeError::TrailingBytes {
            msg_type: MessageType::Leave,
            extra: 2
        })
    );
}

#[test]
fn odd_audio_payload_is_codec_data_not_a_wire_error() {
    // A payload is codec data (one FLAC frame, one Opus packet): its length is the listener's
    // check for PCM, not the decoder's.
    let mut b = BytesMut::new();
    encode_audio(0, 0, &[1, 2, 3], &mut b);
    let p = decode(&b).unwrap();
    assert_eq!(
        p.msg,
        Message::Audio(Audio {
            ts: 0,
            payload: Bytes::from_static(&[1, 2, 3])
        })
    );
}

#[test]
fn leave_with_unknown_reason_or_short_token() {
    let mut leave = BytesMut::new();
    let msg = Message::Leave(Leave {
        token: [1; TOKEN_LEN],
        reason: LeaveReason::Interrupted,
    });
    encode(&Packet::new(0, msg), &mut leave).unwrap();
    let mut bad_reason = leave.to_vec();
    let n = bad_reason.len();
    bad_reason[n - 4..].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        decode(&bad_reason),
        Err(DecodeError::Malformed {
            msg_type: MessageType::Leave,
            ..
        })
    ));
    // A v1 Leave: a header and no body.
    let mut bare = leave[..HEADER_LEN].to_vec();
    assert!(matches!(
        decode(&bare),
        Err(DecodeError::Malformed {
            msg_type: MessageType::Leave,
            ..
        })
    ));
    bare.extend_from_slice(&[1; TOKEN_LEN - 1]);
    assert!(decode(&bare).is_err());
}

#[test]
fn bad_enum_tag_and_bad_utf8() {
    // End with reason tag 7: no such EndReason.
    let mut end = vec![b'E', b'S', 2, 9, 0, 0, 0, 0, 0, 0, 0, 0];
    end.extend_from_slice(&[7, 0, 0, 0, 0]);
    assert!(matches!(
        decode(&end),
        Err(DecodeError::Malformed {
            msg_type: MessageType::End,
            ..
        })
    ));
    // Error whose text is not UTF-8.
    let mut err = vec![b'E', b'S', 2, 10, 0, 0, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&[0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
    assert!(matches!(
        decode(&err),
        Err(DecodeError::Malformed {
            msg_type: MessageType::Error,
            ..
        })
    ));
    // Option tag 2 in End.last_seq.
    let mut opt = vec![b'E', b'S', 2, 9, 0, 0, 0, 0, 0, 0, 0, 0];
    opt.extend_from_slice(&[0, 0, 0, 0, 2]);
    assert!(decode(&opt).is_err());
}

#[test]
fn huge_length_prefix_is_an_error_not_an_allocation() {
    // Audio whose payload length claims 2^40 and 2^62 bytes (bincode 2 without a limit
    // allocates the claimed length, which aborts the process).
    for claim in [1u64 << 40, 1 << 62, u64::MAX] {
        let mut a = vec![b'E', b'S', 2, 6, 0, 0, 0, 0, 0, 0, 0, 0];
        a.extend_from_slice(&0u64.to_le_bytes());
        a.extend_from_slice(&claim.to_le_bytes());
        a.extend_from_slice(&[0; 4]);
        assert!(
            matches!(decode(&a), Err(DecodeError::Malformed { .. })),
            "claim {claim}"
        );
    }
}
