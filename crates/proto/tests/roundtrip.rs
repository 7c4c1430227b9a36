//! Property tests: every message survives encode → decode unchanged, and arbitrary bytes never
//! panic the decoder.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::limits::{MAX_DATAGRAM, MAX_NAME, MAX_TITLE};
use proto::*;

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

fn cookie() -> impl Strategy<Value = [u8; COOKIE_LEN]> {
    any::<[u8; COOKIE_LEN]>()
}

fn token() -> impl Strategy<Value = Token> {
    any::<Token>()
}

fn codec() -> impl Strategy<Value = AudioCodec> {
    prop_oneof![
        Just(AudioCodec::Pcm),
        Just(AudioCodec::Flac),
        any::<u32>().prop_map(|bitrate| AudioCodec::Opus { bitrate }),
    ]
}

fn repair() -> impl Strategy<Value = Repair> {
    (any::<Option<(u8, u8)>>(), any::<u32>()).prop_map(|(fec, retransmit_ms)| Repair {
        fec: fec.map(|(k, m)| Fec { k, m }),
        retransmit_ms,
    })
}

fn group() -> impl Strategy<Value = Option<Group>> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(GroupAddr::V4),
        any::<[u8; 16]>().prop_map(GroupAddr::V6),
    ];
    prop::option::of((addr, any::<u16>()).prop_map(|(addr, port)| Group { addr, port }))
}

fn stream_info() -> impl Strategy<Value = StreamInfo> {
    (
        (
            any::<u32>(),
            any::<u16>(),
            codec(),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<Option<u64>>(), any::<u64>(), any::<u64>()),
        (
            any::<(u64, u64)>(),
            any::<u32>(),
            any::<u32>(),
            repair(),
            group(),
        ),
        prop::string::string_regex(&format!(".{{0,{}}}", MAX_TITLE / 4)).unwrap(),
    )
        .prop_map(
            |(
                (sample_rate, channels, codec, interval_us, frames_per_packet),
                (total_frames, start_seq, start_ts),
                ((ts, server_us), playout_delay_us, min_delay_us, repair, multicast),
                title,
            )| {
                StreamInfo {
                    sample_rate,
                    channels,
                    codec,
                    interval_us,
                    frames_per_packet,
                    total_frames,
                    start_seq,
                    start_ts,
                    timeline: Timeline { ts, server_us },
                    playout_delay_us,
                    min_delay_us,
                    repair,
                    multicast,
                    title,
                }
            },
        )
}

fn report() -> impl Strategy<Value = Report> {
    (
        token(),
        any::<[u64; 6]>(),
        any::<[u32; 2]>(),
        any::<[u64; 3]>(),
        (
            any::<i64>(),
            any::<i32>(),
            any::<i32>(),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                token,
                c,
                [jitter_us, buffered_ms],
                r,
                (clock_offset_us, drift_ppb, playout_error_us, resyncs, flags),
            )| {
                Report {
                    token,
                    received: c[0],
                    lost: c[1],
                    late: c[2],
                    duplicates: c[3],
                    out_of_order: c[4],
                    highest_seq: c[5],
                    jitter_us,
                    buffered_ms,
                    recovered_fec: r[0],
                    recovered_retransmit: r[1],
                    concealed_ms: r[2],
                    clock_offset_us,
                    drift_ppb,
                    playout_error_us,
                    resyncs,
                    flags,
                }
            },
        )
}

fn audio() -> impl Strategy<Value = Audio> {
    (any::<u64>(), bytes_up_to(1400)).prop_map(|(ts, payload)| Audio { ts, payload })
}

/// The handshake and v1-era messages.
fn control_message() -> impl Strategy<Value = Message> {
    let reject = prop_oneof![
        any::<u32>().prop_map(|max_clients| RejectReason::Full { max_clients }),
        any::<u8>().prop_map(|supported| RejectReason::UnsupportedVersion { supported }),
        Just(RejectReason::ShuttingDown),
        Just(RejectReason::BadKey),
        any::<u32>().prop_map(|codec| RejectReason::CodecUnsupported { codec }),
    ];
    let end_reason = prop_oneof![
        Just(EndReason::Finished),
        Just(EndReason::Shutdown),
        Just(EndReason::Evicted),
        Just(EndReason::Kicked),
    ];
    let leave_reason = prop_oneof![
        Just(LeaveReason::Interrupted),
        Just(LeaveReason::Terminated),
        Just(LeaveReason::DeviceError),
        Just(LeaveReason::Timeout),
        Just(LeaveReason::Done),
    ];
    let code = prop_oneof![Just(ErrorCode::NotJoined), Just(ErrorCode::Internal)];
    prop_oneof![
        (any::<u8>(), bytes_up_to(512)).prop_map(|(max_version, padding)| Message::Connect(
            Connect {
                max_version,
                padding
            }
        )),
        cookie().prop_map(|cookie| Message::Challenge(Challenge { cookie })),
        cookie().prop_map(|cookie| Message::Join(Join::new(cookie))),
        (
            cookie(),
            prop::string::string_regex(&format!(".{{0,{}}}", MAX_NAME / 4)).unwrap(),
            any::<(u32, u32)>(),
            bytes_up_to(96)
        )
            .prop_map(
                |(cookie, name, (codecs, features), noise)| Message::Join(Join {
                    cookie,
                    name,
                    codecs,
                    features,
                    noise
                })
            ),
        (token(), bytes_up_to(96), stream_info())
            .prop_map(|(token, noise, info)| { Message::Welcome(Welcome { token, noise, info }) }),
        reject.prop_map(|reason| Message::Reject(Reject { reason })),
        report().prop_map(Message::Report),
        (token(), leave_reason).prop_map(|(token, reason)| Message::Leave(Leave { token, reason })),
        (end_reason, any::<Option<u64>>())
            .prop_map(|(reason, last_seq)| Message::End(End { reason, last_seq })),
        (code, ".{0,40}").prop_map(|(code, text)| Message::Error(ErrorMsg { code, text })),
    ]
}

/// Audio and the repair, clock and keyed-room messages.
fn media_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        audio().prop_map(Message::Audio),
        audio().prop_map(Message::Resent),
        (any::<u32>(), any::<[u8; KEY_LEN]>())
            .prop_map(|(key_id, key)| Message::Rekey(Rekey { key_id, key })),
        (any::<u64>(), any::<[u8; 3]>(), bytes_up_to(1400)).prop_map(
            |(group_seq, [k, m, index], shard)| Message::Parity(Parity {
                group_seq,
                k,
                m,
                index,
                shard
            })
        ),
        (token(), any::<u64>(), any::<u64>()).prop_map(|(token, base, mask)| Message::Nack(Nack {
            token,
            base,
            mask
        })),
        (token(), any::<u64>()).prop_map(|(token, t1)| Message::TimeRequest(TimeRequest {
            token,
            t1,
            pad: [0; TIME_REQUEST_PAD]
        })),
        (any::<[u64; 5]>()).prop_map(|t| Message::TimeResponse(TimeResponse {
            t1: t[0],
            t2: t[1],
            t3: t[2],
            timeline: Timeline {
                ts: t[3],
                server_us: t[4]
            }
        })),
        (any::<u32>(), any::<u8>(), bytes_up_to(1400)).prop_map(
            |(key_id, inner_type, ciphertext)| Message::Sealed(Sealed {
                key_id,
                inner_type,
                ciphertext
            })
        ),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![control_message(), media_message()]
}

/// Every type code v2 defines, and codes next to them that it does not.
fn type_code() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![
        0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 31, 32, 33, 34, 35, 47, 48, 49, 50, 63, 64, 65,
    ])
}

proptest! {
    #[test]
    fn every_message_round_trips(seq in any::<u64>(), msg in message()) {
        let packet = Packet::new(seq, msg);
        let mut buf = BytesMut::new();
        encode(&packet, &mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_DATAGRAM);
        prop_assert_eq!(&buf[..2], &MAGIC[..]);
        prop_assert_eq!(buf[2], VERSION);
        prop_assert_eq!(buf[3], packet.msg.message_type() as u8);
        prop_assert_eq!(decode(&buf).unwrap(), packet);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&data);
    }

    /// Valid header, random body: the interesting region for a length-prefix bug.
    #[test]
    fn random_bodies_never_panic(t in type_code(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut data = vec![b'E', b'S', VERSION, t, 0, 0, 0, 0, 0, 0, 0, 0];
        data.extend_from_slice(&body);
        if let Ok(p) = decode(&data) {
            // Whatever decodes must re-encode to exactly the bytes it came from.
            let mut buf = BytesMut::new();
            encode(&p, &mut buf).unwrap();
            prop_assert_eq!(buf.as_ref(), data.as_slice());
        }
    }

    #[test]
    fn every_strict_prefix_is_rejected(seq in any::<u64>(), msg in message()) {
        let mut buf = BytesMut::new();
        encode(&Packet::new(seq, msg), &mut buf).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(decode(&buf[..cut]).is_err(), "prefix of {} of {} bytes decoded", cut, buf.len());
        }
    }
}
