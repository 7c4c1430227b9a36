//! criterion benches of a private room's costs: a full Noise handshake (both sides' CPU), and
//! sealing and opening one 1,388-byte audio datagram, the fan-out's unit.
//!
//! `cargo bench -p seal --bench seal` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seal::{Initiator, Keyring, RoomKey, StreamKey, respond};

fn benches(c: &mut Criterion) {
    let room = RoomKey::from_bytes([3; 32]);
    let stream = StreamKey::generate(0).unwrap();

    c.bench_function("handshake (listener + server)", |b| {
        b.iter(|| {
            let (init, msg1) = Initiator::start(&room).unwrap();
            let (msg2, server) = respond(&room, &msg1, &stream).unwrap();
            let (client, key) = init.finish(&msg2).unwrap();
            black_box((server, client, key))
        })
    });
    c.bench_function("handshake, server side", |b| {
        let (_, msg1) = Initiator::start(&room).unwrap();
        b.iter(|| black_box(respond(&room, &msg1, &stream).unwrap()))
    });

    let body = vec![0x5au8; 1388 - 12];
    let mut group = c.benchmark_group("audio datagram");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(2048);
    group.bench_function("seal", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            out.clear();
            seq += 1;
            stream.seal(6, seq, black_box(&body), &mut out);
            black_box(out.len())
        })
    });
    let mut ring = Keyring::new(stream.clone(), Duration::from_secs(2));
    let now = Instant::now();
    let mut plain = Vec::with_capacity(2048);
    // The seq keeps counting across criterion's runs of the closure: a repeat would be a replay.
    let mut seq = 0u64;
    group.bench_function("open", |b| {
        let mut wire = Vec::with_capacity(2048);
        b.iter(|| {
            seq += 1;
            wire.clear();
            stream.seal(6, seq, &body, &mut wire);
            ring.open(now, 0, 6, seq, black_box(&wire), &mut plain)
                .unwrap();
            black_box(plain.len())
        })
    });
    group.finish();
}

criterion_group!(seal_benches, benches);
criterion_main!(seal_benches);
