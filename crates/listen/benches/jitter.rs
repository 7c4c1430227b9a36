//! Cost of the client's per-datagram path: stats tracking, jitter-buffer insert and playout of
//! one second of 48 kHz stereo in 240-frame datagrams (200 datagrams), in order and reordered.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use listen::jitter::JitterBuffer;
use listen::stats::{Arrival, Tracker};
use proto::StreamInfo;

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 48_000,
        channels: 2,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: 20_000,
        frames_per_packet: 240,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        title: String::new(),
    }
}

fn one_second(order: &[u64], pcm: &Bytes) -> usize {
    let t0 = Instant::now();
    let mut jb = JitterBuffer::new(&info(), Duration::from_millis(100), Duration::ZERO);
    let mut tr = Tracker::new(48_000, 0, t0);
    for &s in order {
        if tr.on_audio(t0, s, s * 240) == Arrival::New {
            jb.push(s * 240, pcm.clone());
        }
    }
    jb.end(None);
    let mut out = Vec::with_capacity(4096);
    let mut n = 0;
    while !jb.is_finished() {
        out.clear();
        n += jb.pull(960, &mut out);
    }
    n
}

fn bench(c: &mut Criterion) {
    let pcm = Bytes::from(vec![1u8; 960]);
    let in_order: Vec<u64> = (0..200).collect();
    let reordered: Vec<u64> = (0..200).map(|s| s ^ 1).collect();
    c.bench_function("1 s of 48k stereo, in order", |b| {
        b.iter(|| one_second(&in_order, &pcm))
    });
    c.bench_function("1 s of 48k stereo, pairs swapped", |b| {
        b.iter(|| one_second(&reordered, &pcm))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
