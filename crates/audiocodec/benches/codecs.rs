//! Cost of each codec on one second of music-like audio (44.1 kHz stereo for PCM and FLAC; 48
//! and 44.1 kHz stereo for Opus, the latter resampled): encode once per stream, decode once per
//! listener. Real-time factor = 1 s / the time shown.
#![allow(missing_docs)]

use std::hint::black_box;

use audiocodec::signal::music;
use audiocodec::{AudioCodec, Decoder, Encoder, Format};
use criterion::{Criterion, criterion_group, criterion_main};

/// A PCM datagram's room at the default 1400-byte datagrams.
const ROOM: usize = 1372;

fn packets(codec: AudioCodec, format: Format, pcm: &[i16]) -> (Encoder, Vec<Vec<u8>>) {
    let mut enc = Encoder::new(codec, format, ROOM).expect("encoder");
    let mut out = Vec::new();
    enc.encode(pcm, &mut |_, b| out.push(b.to_vec()))
        .expect("encode");
    (enc, out)
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("pcm", AudioCodec::Pcm, 44_100),
        ("flac", AudioCodec::Flac, 44_100),
        ("opus48k", AudioCodec::Opus { bitrate: 128_000 }, 48_000),
        ("opus44k", AudioCodec::Opus { bitrate: 128_000 }, 44_100),
    ];
    for (name, codec, rate) in cases {
        let format = Format {
            sample_rate: rate,
            channels: 2,
        };
        let pcm = music(rate, 2, 0, rate as usize);
        let tick = rate as usize / 50 * 2;
        c.bench_function(&format!("encode_1s_{name}"), |b| {
            b.iter(|| {
                let mut enc = Encoder::new(codec, format, ROOM).expect("encoder");
                let mut bytes = 0usize;
                for chunk in pcm.chunks(tick) {
                    enc.encode(black_box(chunk), &mut |_, p| bytes += p.len())
                        .expect("encode");
                }
                bytes
            })
        });
        let (enc, pkts) = packets(codec, format, &pcm);
        c.bench_function(&format!("decode_1s_{name}"), |b| {
            let mut out = Vec::with_capacity(rate as usize * 2 + 8192);
            b.iter(|| {
                let mut dec = Decoder::new(codec, enc.stream_format(), enc.frames_per_packet())
                    .expect("decoder");
                out.clear();
                for p in &pkts {
                    dec.decode(black_box(p), &mut out).expect("decode");
                }
                out.len()
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
