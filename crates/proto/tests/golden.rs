//! Golden bytes: the wire layout of every v1 message, written out field by field as
//! docs/PROTOCOL.md specifies it. A layout change (field order, integer width, enum tag)
//! fails here before it reaches a peer.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proto::*;

/// Parses "45 53 | 01 ..." style hex: whitespace and `|` separators are ignored.
fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert!(digits.len() % 2 == 0, "odd hex string");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn check(packet: Packet, expected_hex: &str) {
    let expected = hex(expected_hex);
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf).unwrap();
    assert_eq!(buf.as_ref(), expected.as_slice(), "encoding of {packet:?}");
    assert_eq!(
        decode(&expected).unwrap(),
        packet,
        "decoding of {expected_hex}"
    );
}

#[test]
fn connect() {
    let p = Packet::new(
        1,
        Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0; 3]),
        }),
    );
    check(
        p,
        "45 53 | 01 | 01 | 01 00 00 00 00 00 00 00 \
         01 | 03 00 00 00 00 00 00 00 | 00 00 00",
    );
}

#[test]
fn challenge_and_join() {
    let cookie: [u8; COOKIE_LEN] = core::array::from_fn(|i| i as u8 + 0xa0);
    let c = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af";
    check(
        Packet::new(2, Message::Challenge(Challenge { cookie })),
        &format!("45 53 01 02 | 02 00 00 00 00 00 00 00 | {c}"),
    );
    check(
        Packet::new(3, Message::Join(Join { cookie })),
        &format!("45 53 01 03 | 03 00 00 00 00 00 00 00 | {c}"),
    );
}

#[test]
fn welcome() {
    let info = StreamInfo {
        sample_rate: 44_100,
        channels: 2,
        format: SampleFormat::S16Le,
        interval_us: 20_000,
        frames_per_packet: 343,
        total_frames: Some(88_200),
        start_seq: 7,
        start_ts: 2_401,
        title: "ab".into(),
    };
    check(
        Packet::new(0x0102, Message::Welcome(info)),
        "45 53 01 04 | 02 01 00 00 00 00 00 00 \
         44 ac 00 00 | 02 00 | 00 00 00 00 | 20 4e 00 00 | 57 01 00 00 \
         01 88 58 01 00 00 00 00 00 | 07 00 00 00 00 00 00 00 | 61 09 00 00 00 00 00 00 \
         02 00 00 00 00 00 00 00 61 62",
    );
}

#[test]
fn welcome_unknown_length() {
    let info = StreamInfo {
        sample_rate: 8_000,
        channels: 1,
        format: SampleFormat::S16Le,
        interval_us: 5_000,
        frames_per_packet: 40,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        title: String::new(),
    };
    check(
        Packet::new(0, Message::Welcome(info)),
        "45 53 01 04 | 00 00 00 00 00 00 00 00 \
         40 1f 00 00 | 01 00 | 00 00 00 00 | 88 13 00 00 | 28 00 00 00 \
         00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00",
    );
}

#[test]
fn reject_every_reason() {
    check(
        Packet::new(
            4,
            Message::Reject(Reject {
                reason: RejectReason::Full { max_clients: 3 },
            }),
        ),
        "45 53 01 05 | 04 00 00 00 00 00 00 00 | 00 00 00 00 | 03 00 00 00",
    );
    check(
        Packet::new(
            4,
            Message::Reject(Reject {
                reason: RejectReason::UnsupportedVersion { supported: 1 },
            }),
        ),
        "45 53 01 05 | 04 00 00 00 00 00 00 00 | 01 00 00 00 | 01",
    );
    check(
        Packet::new(
            4,
            Message::Reject(Reject {
                reason: RejectReason::ShuttingDown,
            }),
        ),
        "45 53 01 05 | 04 00 00 00 00 00 00 00 | 02 00 00 00",
    );
}

#[test]
fn audio() {
    let pcm = Bytes::from_static(&[0x01, 0x00, 0xff, 0xff, 0x00, 0x80, 0xff, 0x7f]);
    let p = Packet::new(
        0x1_0000_0000,
        Message::Audio(Audio {
            ts: 0x0304,
            pcm: pcm.clone(),
        }),
    );
    let expected = "45 53 01 06 | 00 00 00 00 01 00 00 00 | 04 03 00 00 00 00 00 00 \
                    08 00 00 00 00 00 00 00 | 01 00 ff ff 00 80 ff 7f";
    check(p, expected);
    // The fan-out helper writes the same bytes without building a Packet.
    let mut buf = BytesMut::new();
    encode_audio(0x1_0000_0000, 0x0304, &pcm, &mut buf);
    assert_eq!(buf.as_ref(), hex(expected).as_slice());
}

#[test]
fn report() {
    let r = Report {
        received: 1,
        lost: 2,
        late: 3,
        duplicates: 4,
        out_of_order: 5,
        highest_seq: 6,
        jitter_us: 7,
        buffered_ms: 8,
    };
    check(
        Packet::new(9, Message::Report(r)),
        "45 53 01 07 | 09 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 \
         02 00 00 00 00 00 00 00 | 03 00 00 00 00 00 00 00 | 04 00 00 00 00 00 00 00 \
         05 00 00 00 00 00 00 00 | 06 00 00 00 00 00 00 00 | 07 00 00 00 | 08 00 00 00",
    );
}

#[test]
fn leave() {
    check(
        Packet::new(10, Message::Leave),
        "45 53 01 08 | 0a 00 00 00 00 00 00 00",
    );
}

#[test]
fn end_every_reason() {
    check(
        Packet::new(
            11,
            Message::End(End {
                reason: EndReason::Finished,
                last_seq: Some(300),
            }),
        ),
        "45 53 01 09 | 0b 00 00 00 00 00 00 00 | 00 00 00 00 | 01 2c 01 00 00 00 00 00 00",
    );
    check(
        Packet::new(
            11,
            Message::End(End {
                reason: EndReason::Shutdown,
                last_seq: None,
            }),
        ),
        "45 53 01 09 | 0b 00 00 00 00 00 00 00 | 01 00 00 00 | 00",
    );
    check(
        Packet::new(
            11,
            Message::End(End {
                reason: EndReason::Evicted,
                last_seq: Some(0),
            }),
        ),
        "45 53 01 09 | 0b 00 00 00 00 00 00 00 | 02 00 00 00 | 01 00 00 00 00 00 00 00 00",
    );
}

#[test]
fn error_every_code() {
    check(
        Packet::new(
            12,
            Message::Error(ErrorMsg {
                code: ErrorCode::NotJoined,
                text: "no".into(),
            }),
        ),
        "45 53 01 0a | 0c 00 00 00 00 00 00 00 | 00 00 00 00 | 02 00 00 00 00 00 00 00 6e 6f",
    );
    check(
        Packet::new(
            12,
            Message::Error(ErrorMsg {
                code: ErrorCode::Internal,
                text: String::new(),
            }),
        ),
        "45 53 01 0a | 0c 00 00 00 00 00 00 00 | 01 00 00 00 | 00 00 00 00 00 00 00 00",
    );
}

#[test]
fn type_codes_are_pinned() {
    let codes = [
        (MessageType::Connect, 1),
        (MessageType::Challenge, 2),
        (MessageType::Join, 3),
        (MessageType::Welcome, 4),
        (MessageType::Reject, 5),
        (MessageType::Audio, 6),
        (MessageType::Report, 7),
        (MessageType::Leave, 8),
        (MessageType::End, 9),
        (MessageType::Error, 10),
    ];
    for (t, code) in codes {
        assert_eq!(t as u8, code);
        assert_eq!(MessageType::from_u8(code), Some(t));
    }
    for b in (0u8..=255).filter(|b| !(1..=10).contains(b)) {
        assert_eq!(
            MessageType::from_u8(b),
            None,
            "code {b} must stay unassigned in v1"
        );
    }
    assert!(MessageType::is_reserved(16) && MessageType::is_reserved(63));
    assert!(!MessageType::is_reserved(15) && !MessageType::is_reserved(64));
}

/// The anti-amplification rule (PROTOCOL.md §5.2) rests on these size relations: every reply a
/// server may send to an unvalidated address is no longer than the request that caused it.
#[test]
fn pre_validation_replies_are_never_larger_than_their_requests() {
    use proto::limits::MIN_CONNECT_LEN;
    let len = |m: Message| encode_to_bytes(&Packet::new(u64::MAX, m)).unwrap().len();
    let cookie = [0u8; COOKIE_LEN];
    let challenge = len(Message::Challenge(Challenge { cookie }));
    let join = len(Message::Join(Join { cookie }));
    let report = len(Message::Report(Report::default()));
    let not_joined = len(Message::Error(ErrorMsg {
        code: ErrorCode::NotJoined,
        text: String::new(),
    }));
    let rejects = [
        RejectReason::Full {
            max_clients: u32::MAX,
        },
        RejectReason::UnsupportedVersion { supported: 1 },
        RejectReason::ShuttingDown,
    ]
    .map(|reason| len(Message::Reject(Reject { reason })));
    assert_eq!((challenge, join, report, not_joined), (28, 28, 68, 24));
    assert_eq!(rejects, [20, 17, 16]);
    assert!(challenge <= MIN_CONNECT_LEN && challenge <= join);
    assert!(rejects.iter().all(|&r| r <= join && r < MIN_CONNECT_LEN));
    assert!(not_joined <= report);
}
