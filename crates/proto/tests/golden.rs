//! Golden bytes: the wire layout of every v2 message, written out field by field as
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
            max_version: 2,
            padding: Bytes::from(vec![0; 3]),
        }),
    );
    check(
        p,
        "45 53 | 02 | 01 | 01 00 00 00 00 00 00 00 \
         02 | 03 00 00 00 00 00 00 00 | 00 00 00",
    );
}

const COOKIE: &str = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af";
const TOKEN: &str = "10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f";

fn cookie() -> [u8; COOKIE_LEN] {
    core::array::from_fn(|i| i as u8 + 0xa0)
}

fn token() -> Token {
    core::array::from_fn(|i| i as u8 + 0x10)
}

#[test]
fn challenge_and_join() {
    let cookie = cookie();
    check(
        Packet::new(2, Message::Challenge(Challenge { cookie })),
        &format!("45 53 02 02 | 02 00 00 00 00 00 00 00 | {COOKIE}"),
    );
    check(
        Packet::new(
            3,
            Message::Join(Join {
                cookie,
                name: "ab".into(),
                codecs: 7,
                features: FEATURE_FEC | FEATURE_RETRANSMIT,
                noise: Bytes::new(),
            }),
        ),
        &format!(
            "45 53 02 03 | 03 00 00 00 00 00 00 00 | {COOKIE} \
             02 00 00 00 00 00 00 00 61 62 | 07 00 00 00 | 03 00 00 00 \
             00 00 00 00 00 00 00 00"
        ),
    );
    // The smallest Join: no name, PCM only, no key.
    check(
        Packet::new(3, Message::Join(Join::new(cookie))),
        &format!(
            "45 53 02 03 | 03 00 00 00 00 00 00 00 | {COOKIE} \
             00 00 00 00 00 00 00 00 | 01 00 00 00 | 00 00 00 00 | 00 00 00 00 00 00 00 00"
        ),
    );
    // A keyed Join carries the Noise message as a byte string.
    let mut j = Join::new(cookie);
    j.noise = Bytes::from_static(&[0xee, 0xff]);
    check(
        Packet::new(3, Message::Join(j)),
        &format!(
            "45 53 02 03 | 03 00 00 00 00 00 00 00 | {COOKIE} \
             00 00 00 00 00 00 00 00 | 01 00 00 00 | 00 00 00 00 | 02 00 00 00 00 00 00 00 ee ff"
        ),
    );
}

fn stream_info() -> StreamInfo {
    StreamInfo {
        sample_rate: 44_100,
        channels: 2,
        codec: AudioCodec::Pcm,
        interval_us: 20_000,
        frames_per_packet: 343,
        total_frames: Some(88_200),
        start_seq: 7,
        start_ts: 2_401,
        timeline: Timeline {
            ts: 2_401,
            server_us: 1_000_000,
        },
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: Repair {
            fec: Some(Fec { k: 6, m: 2 }),
            retransmit_ms: 250,
        },
        multicast: Some(Group {
            addr: GroupAddr::V4([239, 1, 2, 3]),
            port: 5004,
        }),
        title: "ab".into(),
    }
}

#[test]
fn welcome() {
    check(
        Packet::new(
            0x0102,
            Message::Welcome(Welcome {
                token: token(),
                noise: Bytes::new(),
                info: stream_info(),
            }),
        ),
        &format!(
            "45 53 02 04 | 02 01 00 00 00 00 00 00 | {TOKEN} | 00 00 00 00 00 00 00 00 \
             44 ac 00 00 | 02 00 | 00 00 00 00 | 20 4e 00 00 | 57 01 00 00 \
             01 88 58 01 00 00 00 00 00 | 07 00 00 00 00 00 00 00 | 61 09 00 00 00 00 00 00 \
             61 09 00 00 00 00 00 00 | 40 42 0f 00 00 00 00 00 \
             50 c3 00 00 | a8 61 00 00 \
             01 06 02 | fa 00 00 00 \
             01 | 00 00 00 00 | ef 01 02 03 | 8c 13 \
             02 00 00 00 00 00 00 00 61 62"
        ),
    );
}

#[test]
fn welcome_other_codecs_groups_and_unknown_length() {
    let mut info = stream_info();
    info.codec = AudioCodec::Opus { bitrate: 128_000 };
    info.sample_rate = 48_000;
    info.channels = 1;
    info.frames_per_packet = 960;
    info.total_frames = None;
    info.start_seq = 0;
    info.start_ts = 0;
    info.timeline = Timeline::default();
    info.repair = Repair::default();
    info.multicast = Some(Group {
        addr: GroupAddr::V6([0xff, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        port: 9,
    });
    info.title = String::new();
    let noise = Bytes::from_static(&[1, 2, 3]);
    check(
        Packet::new(
            0,
            Message::Welcome(Welcome {
                token: [0; 16],
                noise,
                info: info.clone(),
            }),
        ),
        "45 53 02 04 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         03 00 00 00 00 00 00 00 01 02 03 \
         80 bb 00 00 | 01 00 | 02 00 00 00 00 f4 01 00 | 20 4e 00 00 | c0 03 00 00 \
         00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 \
         50 c3 00 00 | a8 61 00 00 \
         00 | 00 00 00 00 \
         01 | 01 00 00 00 | ff 15 00 00 00 00 00 00 00 00 00 00 00 00 00 01 | 09 00 \
         00 00 00 00 00 00 00 00",
    );
    info.codec = AudioCodec::Flac;
    info.multicast = None;
    let b = encode_to_bytes(&Packet::new(
        0,
        Message::Welcome(Welcome {
            token: [0; 16],
            noise: Bytes::new(),
            info,
        }),
    ))
    .unwrap();
    // The codec's enum index sits after rate (4) and channels (2).
    let at = 12 + 16 + 8 + 6;
    assert_eq!(&b[at..at + 4], &hex("01 00 00 00")[..]);
    assert_eq!(b[b.len() - 9], 0, "multicast none");
}

#[test]
fn reject_every_reason() {
    let cases = [
        (
            RejectReason::Full { max_clients: 3 },
            "00 00 00 00 | 03 00 00 00",
        ),
        (
            RejectReason::UnsupportedVersion { supported: 2 },
            "01 00 00 00 | 02",
        ),
        (RejectReason::ShuttingDown, "02 00 00 00"),
        (RejectReason::BadKey, "03 00 00 00"),
        (
            RejectReason::CodecUnsupported { codec: 2 },
            "04 00 00 00 | 02 00 00 00",
        ),
    ];
    for (reason, body) in cases {
        check(
            Packet::new(4, Message::Reject(Reject { reason })),
            &format!("45 53 02 05 | 04 00 00 00 00 00 00 00 | {body}"),
        );
    }
}

#[test]
fn audio_and_resent() {
    let payload = Bytes::from_static(&[0x01, 0x00, 0xff, 0xff, 0x00, 0x80, 0xff, 0x7f]);
    let body = "04 03 00 00 00 00 00 00 | 08 00 00 00 00 00 00 00 | 01 00 ff ff 00 80 ff 7f";
    let audio = Audio {
        ts: 0x0304,
        payload: payload.clone(),
    };
    let expected = format!("45 53 02 06 | 00 00 00 00 01 00 00 00 | {body}");
    check(
        Packet::new(0x1_0000_0000, Message::Audio(audio.clone())),
        &expected,
    );
    // The fan-out helper writes the same bytes without building a Packet.
    let mut buf = BytesMut::new();
    encode_audio(0x1_0000_0000, 0x0304, &payload, &mut buf);
    assert_eq!(buf.as_ref(), hex(&expected).as_slice());
    // Resent: the same body under type 34, with the original seq.
    let expected = format!("45 53 02 22 | 00 00 00 00 01 00 00 00 | {body}");
    check(
        Packet::new(0x1_0000_0000, Message::Resent(audio)),
        &expected,
    );
    let mut buf = BytesMut::new();
    encode_resent(0x1_0000_0000, 0x0304, &payload, &mut buf);
    assert_eq!(buf.as_ref(), hex(&expected).as_slice());
    // An odd payload is valid on the wire (FLAC and Opus frames); PCM's rule is the listener's.
    check(
        Packet::new(
            1,
            Message::Audio(Audio {
                ts: 0,
                payload: Bytes::from_static(&[9]),
            }),
        ),
        "45 53 02 06 | 01 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 09",
    );
}

#[test]
fn report() {
    let r = Report {
        token: token(),
        received: 1,
        lost: 2,
        late: 3,
        duplicates: 4,
        out_of_order: 5,
        highest_seq: 6,
        jitter_us: 7,
        buffered_ms: 8,
        recovered_fec: 9,
        recovered_retransmit: 10,
        concealed_ms: 11,
        clock_offset_us: -2,
        drift_ppb: -150_000,
        playout_error_us: 80,
        resyncs: 1,
        flags: FLAG_UNICAST_FALLBACK,
    };
    check(
        Packet::new(9, Message::Report(r)),
        &format!(
            "45 53 02 07 | 09 00 00 00 00 00 00 00 | {TOKEN} \
             01 00 00 00 00 00 00 00 | 02 00 00 00 00 00 00 00 | 03 00 00 00 00 00 00 00 \
             04 00 00 00 00 00 00 00 | 05 00 00 00 00 00 00 00 | 06 00 00 00 00 00 00 00 \
             07 00 00 00 | 08 00 00 00 \
             09 00 00 00 00 00 00 00 | 0a 00 00 00 00 00 00 00 | 0b 00 00 00 00 00 00 00 \
             fe ff ff ff ff ff ff ff | 10 b6 fd ff | 50 00 00 00 | 01 00 00 00 | 01 00 00 00"
        ),
    );
}

#[test]
fn leave_every_reason() {
    let reasons = [
        LeaveReason::Interrupted,
        LeaveReason::Terminated,
        LeaveReason::DeviceError,
        LeaveReason::Timeout,
        LeaveReason::Done,
    ];
    for (i, reason) in reasons.into_iter().enumerate() {
        check(
            Packet::new(
                10,
                Message::Leave(Leave {
                    token: token(),
                    reason,
                }),
            ),
            &format!("45 53 02 08 | 0a 00 00 00 00 00 00 00 | {TOKEN} | {i:02x} 00 00 00"),
        );
    }
}

#[test]
fn end_every_reason() {
    let cases = [
        (
            EndReason::Finished,
            Some(300),
            "00 00 00 00 | 01 2c 01 00 00 00 00 00 00",
        ),
        (EndReason::Shutdown, None, "01 00 00 00 | 00"),
        (
            EndReason::Evicted,
            Some(0),
            "02 00 00 00 | 01 00 00 00 00 00 00 00 00",
        ),
        (EndReason::Kicked, None, "03 00 00 00 | 00"),
    ];
    for (reason, last_seq, body) in cases {
        check(
            Packet::new(11, Message::End(End { reason, last_seq })),
            &format!("45 53 02 09 | 0b 00 00 00 00 00 00 00 | {body}"),
        );
    }
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
        "45 53 02 0a | 0c 00 00 00 00 00 00 00 | 00 00 00 00 | 02 00 00 00 00 00 00 00 6e 6f",
    );
    check(
        Packet::new(
            12,
            Message::Error(ErrorMsg {
                code: ErrorCode::Internal,
                text: String::new(),
            }),
        ),
        "45 53 02 0a | 0c 00 00 00 00 00 00 00 | 01 00 00 00 | 00 00 00 00 00 00 00 00",
    );
}

#[test]
fn rekey() {
    let key: [u8; KEY_LEN] = core::array::from_fn(|i| i as u8);
    check(
        Packet::new(13, Message::Rekey(Rekey { key_id: 5, key })),
        "45 53 02 0b | 0d 00 00 00 00 00 00 00 | 05 00 00 00 \
         00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f \
         10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f",
    );
}

#[test]
fn parity() {
    check(
        Packet::new(
            14,
            Message::Parity(Parity {
                group_seq: 12,
                k: 6,
                m: 2,
                index: 1,
                shard: Bytes::from_static(&[0xab, 0xcd]),
            }),
        ),
        "45 53 02 20 | 0e 00 00 00 00 00 00 00 | 0c 00 00 00 00 00 00 00 | 06 | 02 | 01 \
         02 00 00 00 00 00 00 00 ab cd",
    );
}

#[test]
fn nack() {
    let n = Nack {
        token: token(),
        base: 100,
        mask: 0b101,
    };
    assert_eq!(n.seqs().collect::<Vec<_>>(), vec![100, 101, 103]);
    check(
        Packet::new(15, Message::Nack(n)),
        &format!(
            "45 53 02 21 | 0f 00 00 00 00 00 00 00 | {TOKEN} \
             64 00 00 00 00 00 00 00 | 05 00 00 00 00 00 00 00"
        ),
    );
    // The mask never names a seq past u64::MAX.
    let top = Nack {
        token: token(),
        base: u64::MAX - 1,
        mask: u64::MAX,
    };
    assert_eq!(top.seqs().collect::<Vec<_>>(), vec![u64::MAX - 1, u64::MAX]);
}

#[test]
fn time_request_and_response() {
    let req = Packet::new(
        16,
        Message::TimeRequest(TimeRequest {
            token: token(),
            t1: 0x0102_0304,
            pad: [0; TIME_REQUEST_PAD],
        }),
    );
    check(
        req.clone(),
        &format!(
            "45 53 02 30 | 10 00 00 00 00 00 00 00 | {TOKEN} | 04 03 02 01 00 00 00 00 \
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        ),
    );
    let resp = Packet::new(
        17,
        Message::TimeResponse(TimeResponse {
            t1: 0x0102_0304,
            t2: 5,
            t3: 6,
            timeline: Timeline {
                ts: 441,
                server_us: 10_000,
            },
        }),
    );
    check(
        resp.clone(),
        "45 53 02 31 | 11 00 00 00 00 00 00 00 | 04 03 02 01 00 00 00 00 \
         05 00 00 00 00 00 00 00 | 06 00 00 00 00 00 00 00 \
         b9 01 00 00 00 00 00 00 | 10 27 00 00 00 00 00 00",
    );
    let len = |p: &Packet| encode_to_bytes(p).unwrap().len();
    assert_eq!((len(&req), len(&resp)), (60, 52));
}

#[test]
fn sealed() {
    check(
        Packet::new(
            18,
            Message::Sealed(Sealed {
                key_id: 0x8000_0001,
                inner_type: 6,
                ciphertext: Bytes::from_static(&[1, 2, 3]),
            }),
        ),
        "45 53 02 40 | 12 00 00 00 00 00 00 00 | 01 00 00 80 | 06 \
         03 00 00 00 00 00 00 00 01 02 03",
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
        (MessageType::Rekey, 11),
        (MessageType::Parity, 32),
        (MessageType::Nack, 33),
        (MessageType::Resent, 34),
        (MessageType::TimeRequest, 48),
        (MessageType::TimeResponse, 49),
        (MessageType::Sealed, 64),
    ];
    for (t, code) in codes {
        assert_eq!(t as u8, code);
        assert_eq!(MessageType::from_u8(code), Some(t));
    }
    for b in (0u8..=255).filter(|b| !codes.iter().any(|(_, c)| c == b)) {
        assert_eq!(
            MessageType::from_u8(b),
            None,
            "code {b} must stay unassigned in v2"
        );
    }
}

#[test]
fn codec_indexes_and_bits() {
    let codecs = [
        (AudioCodec::Pcm, 0, "pcm"),
        (AudioCodec::Flac, 1, "flac"),
        (AudioCodec::Opus { bitrate: 1 }, 2, "opus"),
    ];
    for (c, i, name) in codecs {
        assert_eq!((c.index(), c.bit(), c.name()), (i, 1 << i, name));
    }
}

/// The anti-amplification rule (PROTOCOL.md §5.2) rests on these size relations: every reply a
/// server may send to an unvalidated address is no longer than the request that caused it.
#[test]
fn pre_validation_replies_are_never_larger_than_their_requests() {
    use proto::limits::MIN_CONNECT_LEN;
    let len = |m: Message| encode_to_bytes(&Packet::new(u64::MAX, m)).unwrap().len();
    let cookie = [0u8; COOKIE_LEN];
    let challenge = len(Message::Challenge(Challenge { cookie }));
    let join = len(Message::Join(Join::new(cookie)));
    let report = len(Message::Report(Report::default()));
    let leave = len(Message::Leave(Leave {
        token: [0; 16],
        reason: LeaveReason::Done,
    }));
    let not_joined = len(Message::Error(ErrorMsg {
        code: ErrorCode::NotJoined,
        text: String::new(),
    }));
    let rejects = [
        RejectReason::Full {
            max_clients: u32::MAX,
        },
        RejectReason::UnsupportedVersion { supported: 2 },
        RejectReason::ShuttingDown,
        RejectReason::BadKey,
        RejectReason::CodecUnsupported { codec: 2 },
    ]
    .map(|reason| len(Message::Reject(Reject { reason })));
    assert_eq!(
        (challenge, join, report, leave, not_joined),
        (28, 52, 132, 32, 24)
    );
    assert_eq!(rejects, [20, 17, 16, 16, 20]);
    assert!(challenge <= MIN_CONNECT_LEN && challenge <= join);
    assert!(rejects.iter().all(|&r| r <= join && r < MIN_CONNECT_LEN));
    assert!(not_joined <= report);
}
