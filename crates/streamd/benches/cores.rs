//! Benchmarks of the sans-IO hot paths: what one datagram costs the session table (a Report
//! from a listener, a Connect answered with a cookie), what the media clock costs per tick, and
//! how fast the source decodes. The send path's cost is the kernel's; measure it end to end.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use proto::{Connect, Join, Message, Packet, Report, StreamInfo};
use streamd::pacing::MediaClock;
use streamd::sessions::{LivePosition, Sessions};

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 44100,
        channels: 2,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: 20_000,
        frames_per_packet: 343,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        title: "bench".into(),
    }
}

fn enc(m: Message) -> Bytes {
    proto::encode_to_bytes(&Packet::new(0, m)).unwrap()
}

fn sessions(c: &mut Criterion) {
    let now = Instant::now();
    let mut s = Sessions::new(now, (1, 2), 10_000, Duration::from_secs(5));
    let info = info();
    let live = LivePosition::default();
    // 1000 joined listeners.
    for p in 0..1000u16 {
        let a = SocketAddr::from(([127, 0, 0, 1], 10_000 + p));
        let cookie = s.cookie(now, &a);
        s.handle(now, a, &enc(Message::Join(Join::new(cookie))), &info, live);
    }
    let report = enc(Message::Report(Report::default()));
    let from = SocketAddr::from(([127, 0, 0, 1], 10_500));
    c.bench_function("sessions/report_from_listener", |b| {
        b.iter(|| s.handle(now, from, &report, &info, live))
    });
    let connect = enc(Message::Connect(Connect {
        max_version: 1,
        padding: Bytes::from(vec![0u8; 128]),
    }));
    let stranger = SocketAddr::from(([10, 0, 0, 1], 4000));
    c.bench_function("sessions/connect_to_challenge", |b| {
        b.iter(|| s.handle(now, stranger, &connect, &info, live))
    });
    c.bench_function("sessions/garbage", |b| {
        b.iter(|| s.handle(now, stranger, &[0xAB; 1200], &info, live))
    });
}

fn clock(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut clk = MediaClock::new(44100, Duration::from_millis(20));
    clk.start(t0);
    let mut i = 0u32;
    c.bench_function("pacing/due_and_sent", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let d = clk.due(t0 + Duration::from_millis(20) * i);
            clk.sent(d);
            d
        })
    });
}

fn source(c: &mut Criterion) {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/stereo44.mp3");
    c.bench_function("source/decode_2s_mp3", |b| {
        b.iter(|| streamd::source::decode_all(&f).unwrap())
    });
}

criterion_group!(benches, sessions, clock, source);
criterion_main!(benches);
