//! Property tests: every message survives encode → decode unchanged, and arbitrary bytes never
//! panic the decoder.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::limits::{MAX_DATAGRAM, MAX_TITLE};
use proto::*;

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

fn cookie() -> impl Strategy<Value = [u8; COOKIE_LEN]> {
    any::<[u8; COOKIE_LEN]>()
}

fn stream_info() -> impl Strategy<Value = StreamInfo> {
    (
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (any::<Option<u64>>(), any::<u64>(), any::<u64>()),
        prop::string::string_regex(&format!(".{{0,{}}}", MAX_TITLE / 4)).unwrap(),
    )
        .prop_map(
            |(
                (sample_rate, channels, interval_us, frames_per_packet),
                (total_frames, start_seq, start_ts),
                title,
            )| {
                StreamInfo {
                    sample_rate,
                    channels,
                    format: SampleFormat::S16Le,
                    interval_us,
                    frames_per_packet,
                    total_frames,
                    start_seq,
                    start_ts,
                    title,
                }
            },
        )
}

fn report() -> impl Strategy<Value = Report> {
    (any::<[u64; 6]>(), any::<u32>(), any::<u32>()).prop_map(|(c, jitter_us, buffered_ms)| Report {
        received: c[0],
        lost: c[1],
        late: c[2],
        duplicates: c[3],
        out_of_order: c[4],
        highest_seq: c[5],
        jitter_us,
        buffered_ms,
    })
}

fn message() -> impl Strategy<Value = Message> {
    let reject = prop_oneof![
        any::<u32>().prop_map(|max_clients| RejectReason::Full { max_clients }),
        any::<u8>().prop_map(|supported| RejectReason::UnsupportedVersion { supported }),
        Just(RejectReason::ShuttingDown),
    ];
    let end_reason = prop_oneof![
        Just(EndReason::Finished),
        Just(EndReason::Shutdown),
        Just(EndReason::Evicted)
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
        cookie().prop_map(|cookie| Message::Join(Join { cookie })),
        stream_info().prop_map(Message::Welcome),
        reject.prop_map(|reason| Message::Reject(Reject { reason })),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..1400)).prop_map(|(ts, mut pcm)| {
            pcm.truncate(pcm.len() & !1); // whole 16-bit samples
            Message::Audio(Audio {
                ts,
                pcm: Bytes::from(pcm),
            })
        }),
        report().prop_map(Message::Report),
        Just(Message::Leave),
        (end_reason, any::<Option<u64>>())
            .prop_map(|(reason, last_seq)| Message::End(End { reason, last_seq })),
        (code, ".{0,40}").prop_map(|(code, text)| Message::Error(ErrorMsg { code, text })),
    ]
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
    fn random_bodies_never_panic(t in 0u8..=12, body in prop::collection::vec(any::<u8>(), 0..256)) {
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
