//! Properties of the jitter buffer over arbitrary arrival orders, duplicates and losses.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::jitter::JitterBuffer;
use listen::stats::{Arrival, Tracker};
use proptest::prelude::*;
use proto::StreamInfo;

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 1000,
        channels: 1,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: 10_000,
        frames_per_packet: 10,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        title: String::new(),
    }
}

fn pcm(ts: u64, frames: u64) -> Bytes {
    Bytes::from(
        (ts..ts + frames)
            .flat_map(|f| ((f % 30000) as i16 + 1).to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

proptest! {
    /// Whatever the arrival order and duplicates, a stream that loses nothing and is fully
    /// buffered before playout comes out exactly once, in order.
    #[test]
    fn any_order_with_duplicates_plays_exactly(
        n in 1u64..60,
        swaps in proptest::collection::vec((0usize..60, 0usize..60), 0..40),
        dups in proptest::collection::vec(0u64..60, 0..20),
        chunk in 1usize..50,
    ) {
        let mut order: Vec<u64> = (0..n).collect();
        for (a, b) in swaps {
            let (a, b) = (a % n as usize, b % n as usize);
            order.swap(a, b);
        }
        order.extend(dups.into_iter().map(|d| d % n));
        let t0 = Instant::now();
        let mut tr = Tracker::new(1000, 0, t0);
        let mut jb = JitterBuffer::new(&info(), Duration::from_millis(100), Duration::ZERO);
        for &s in &order {
            if tr.on_audio(t0, s, s * 10) == Arrival::New {
                jb.push(s * 10, pcm(s * 10, 10));
            }
        }
        jb.end(None);
        let mut out = Vec::new();
        let mut guard = 0;
        while !jb.is_finished() {
            jb.pull(chunk, &mut out);
            guard += 1;
            prop_assert!(guard < 100_000);
        }
        let want: Vec<i16> = (0..n * 10).map(|f| (f % 30000) as i16 + 1).collect();
        prop_assert_eq!(out, want);
        prop_assert_eq!(tr.lost(), 0);
        prop_assert_eq!(jb.counters().concealed_frames, 0);
    }

    /// Arbitrary datagrams (any ts, any length, losses, interleaved pulls) never panic, and
    /// every frame handed out advances the position by one.
    #[test]
    fn arbitrary_input_is_handled(
        ops in proptest::collection::vec((any::<bool>(), 0u64..2000, 0u64..40, 0usize..200), 0..200),
    ) {
        let mut jb = JitterBuffer::new(&info(), Duration::from_millis(50), Duration::ZERO);
        let mut out = Vec::new();
        for (push, ts, frames, want) in ops {
            if push {
                jb.push(ts, pcm(ts, frames));
            } else {
                let before = jb.position();
                out.clear();
                let n = jb.pull(want, &mut out);
                prop_assert_eq!(out.len(), n);
                prop_assert!(n <= want);
                prop_assert_eq!(jb.position(), before + n as u64);
            }
        }
        jb.end(None);
        let mut guard = 0;
        while !jb.is_finished() {
            out.clear();
            jb.pull(64, &mut out);
            guard += 1;
            prop_assert!(guard < 100_000);
        }
    }
}
