//! criterion benches of the wire codec: encode and decode, ns per message, for the messages that
//! matter at scale (Audio of 1388 B, the fan-out's unit; Welcome; Report, the keepalive) and for
//! garbage, which a server must reject cheaply.
//!
//! `cargo bench -p proto --bench codec` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::{Audio, Message, Packet, Report, StreamInfo, Welcome};

fn audio() -> Packet {
    // 340 stereo s16 frames: 1360 B of PCM, 1388 B on the wire.
    Packet::new(
        42,
        Message::Audio(Audio {
            ts: 14_280,
            payload: Bytes::from(vec![0x5au8; 1360]),
        }),
    )
}

fn welcome() -> Packet {
    Packet::new(
        3,
        Message::Welcome(Welcome {
            token: [0xa5; proto::TOKEN_LEN],
            noise: Bytes::new(),
            info: StreamInfo {
                sample_rate: 44_100,
                channels: 2,
                codec: proto::AudioCodec::Pcm,
                timeline: proto::Timeline::default(),
                playout_delay_us: 50_000,
                min_delay_us: 25_000,
                repair: proto::Repair::default(),
                multicast: None,
                interval_us: 20_000,
                frames_per_packet: 340,
                total_frames: Some(44_100 * 180),
                start_seq: 1_000,
                start_ts: 340_000,
                title: "A reasonably long stream title — with some non-ASCII".into(),
            },
        }),
    )
}

fn report() -> Packet {
    Packet::new(
        9,
        Message::Report(Report {
            received: 9_000,
            lost: 3,
            late: 1,
            duplicates: 0,
            out_of_order: 2,
            highest_seq: 9_002,
            jitter_us: 250,
            buffered_ms: 60,
            token: [0xa5; proto::TOKEN_LEN],
            recovered_fec: 2,
            recovered_retransmit: 1,
            concealed_ms: 0,
            clock_offset_us: -1_250,
            drift_ppb: 1_500,
            playout_error_us: 180,
            resyncs: 0,
            flags: 0,
        }),
    )
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    for (name, p) in [
        ("audio_1388B", audio()),
        ("welcome", welcome()),
        ("report", report()),
    ] {
        let mut buf = BytesMut::with_capacity(2048);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                proto::encode(black_box(&p), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
    }
    // The fan-out path: straight from a PCM slice, no Packet.
    let pcm = vec![0x5au8; 1360];
    let mut buf = BytesMut::with_capacity(2048);
    g.bench_function("audio_1388B_encode_audio", |b| {
        b.iter(|| {
            buf.clear();
            proto::encode_audio(black_box(42), black_box(14_280), black_box(&pcm), &mut buf);
            black_box(buf.len())
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, p) in [
        ("audio_1388B", audio()),
        ("welcome", welcome()),
        ("report", report()),
    ] {
        let wire = proto::encode_to_bytes(&p).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| proto::decode(black_box(&wire)).unwrap())
        });
    }
    // Garbage: random bytes (bad magic), a valid header with a hostile length prefix, and a
    // truncated Audio. Each must fail fast without allocating.
    let mut noise = vec![0u8; 1388];
    let mut x: u32 = 0x1234_5678;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut hostile = proto::encode_to_bytes(&audio()).unwrap().to_vec();
    hostile[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let truncated = proto::encode_to_bytes(&audio()).unwrap().slice(..700);
    for (name, d) in [
        ("garbage_random_1388B", &noise[..]),
        ("garbage_hostile_length", &hostile[..]),
        ("garbage_truncated_audio", &truncated[..]),
    ] {
        g.bench_function(name, |b| b.iter(|| proto::decode(black_box(d)).is_err()));
    }
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
