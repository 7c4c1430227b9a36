//! Synchronised playout end to end on simulated time, without a network: a server that sends
//! each 10 ms datagram when it is due, a listener on a skewed clock with a virtual device on
//! that clock, its clock estimator fed by exact exchanges, and [`SyncedFeed`] between its
//! jitter buffer and the device.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::clock::ClockEstimator;
use listen::jitter::JitterBuffer;
use listen::schedule::{Epoch, Schedule, SyncedFeed};
use listen::simclock::SimClock;
use listen::sink::{MemorySink, Sink, VIRTUAL_LEAD};
use proto::{AudioCodec, Repair, StreamInfo, Timeline};

const RATE: u32 = 48_000;
const FPP: u64 = 480;

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: RATE,
        channels: 2,
        codec: AudioCodec::Pcm,
        interval_us: 10_000,
        frames_per_packet: FPP as u32,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        timeline: Timeline {
            ts: 0,
            server_us: 0,
        },
        playout_delay_us: 50_000,
        min_delay_us: 20_000,
        repair: Repair {
            fec: None,
            retransmit_ms: 0,
        },
        multicast: None,
        title: "t".into(),
    }
}

fn sample(f: u64, c: usize) -> i16 {
    ((f * 2 + c as u64) % 65_521) as i16 | 1
}

struct Run {
    samples: Vec<i16>,
    /// |playout error| (µs) of every feed after the settling time.
    errors: Vec<f64>,
    resyncs: u64,
    frames: u64,
    concealed: u64,
}

/// `secs` of stream; the listener's clock `offset_ms` ahead and `ppm` fast.
fn run(offset_ms: i64, ppm: i64, secs: u64, settle: f64) -> Run {
    run_on(offset_ms, ppm, secs, settle, false)
}

/// Arrival of datagram `k`: 2 ms on the wire, plus (impaired) up to 5 ms of jitter.
fn arrival(k: u64, impaired: bool) -> Duration {
    let jitter = if impaired {
        // A fixed scramble of k: uniform enough over 0..5 ms.
        (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 5_000
    } else {
        0
    };
    Duration::from_micros(200_000 + k * 10_000 + 2_000 + jitter)
}

/// With `impaired`: 1 % of the datagrams lost, up to 5 ms of jitter (reordering included),
/// and the clock exchanges' answers 1 ms slower than their requests half of the time.
fn run_on(offset_ms: i64, ppm: i64, secs: u64, settle: f64, impaired: bool) -> Run {
    let base = Instant::now();
    let clock = SimClock::new(base, offset_ms * 1_000_000, ppm * 1_000);
    let epoch = Epoch::new(clock.local(base), 0);
    // The server's clock: true µs since `base` + 1e9.
    let server_us = |t: Duration| t.as_micros() as u64 + 1_000_000_000;
    let schedule = Schedule {
        ts: 0,
        server_us: server_us(Duration::from_millis(200)),
        rate: RATE,
        playout_delay_us: 50_000,
    };
    let info = info();
    let mut jb = JitterBuffer::new(&info, Duration::from_millis(50), VIRTUAL_LEAD);
    let mut sink = MemorySink::new(RATE, 2);
    let mut est = ClockEstimator::new();
    let mut feed = SyncedFeed::new(schedule, 2, epoch);
    let total = secs * u64::from(RATE) / FPP;
    // Datagrams in order of arrival.
    let mut pending: Vec<u64> = (0..total).collect();
    pending.sort_by_key(|&k| arrival(k, impaired));
    let mut t = Duration::ZERO;
    let mut wake = Duration::ZERO;
    let mut errors = Vec::new();
    let local_us = |t: Duration| epoch.us(clock.local(base + t));
    loop {
        // Datagrams due by t (sent when due, 2 ms on the wire).
        while let Some(&k) = pending.first()
            && arrival(k, impaired) <= t
        {
            pending.remove(0);
            if impaired && k % 100 == 37 {
                continue;
            }
            let sent = k;
            let pcm: Vec<u8> = (sent * FPP..(sent + 1) * FPP)
                .flat_map(|f| [sample(f, 0), sample(f, 1)])
                .flat_map(i16::to_le_bytes)
                .collect();
            jb.push(sent * FPP, Bytes::from(pcm));
            if pending.is_empty() {
                jb.end(Some(total * FPP));
            }
        }
        // Clock exchanges due by t: 150 µs each way.
        while est.next_request_at() <= local_us(t) {
            let t1 = local_us(t);
            est.on_request_sent(t1);
            let t2 = server_us(t + Duration::from_micros(150));
            let slow = if impaired && est.samples() % 2 == 1 {
                1_000
            } else {
                0
            };
            let t4 = local_us(t + Duration::from_micros(310 + slow));
            est.on_sample(t1, t2, t2 + 10, t4).unwrap();
        }
        if t >= wake {
            let now = clock.local(base + t);
            let (next, fed) = feed.feed(now, &est, &mut jb, &mut sink).unwrap();
            if let Some(f) = fed {
                // When the first frame really leaves, on the server's clock, against its due
                // instant.
                let real = clock.real(f.at);
                let due = schedule.play_at(f.first as f64);
                let err = server_us(real - base) as f64 - due;
                if (real - base).as_secs_f64() > settle {
                    errors.push(err.abs());
                }
            }
            match next {
                Some(at) => wake = clock.real(at).saturating_duration_since(base).max(t),
                None => break,
            }
        }
        // Advance to the next event: a datagram, an exchange or the feed.
        let mut next = wake;
        if let Some(&k) = pending.first() {
            next = next.min(arrival(k, impaired));
        }
        let ex = clock
            .real(epoch.instant(est.next_request_at()))
            .saturating_duration_since(base);
        next = next.min(ex).max(t + Duration::from_micros(1));
        t = next;
        assert!(
            t < Duration::from_secs(secs + 30),
            "the stream never finished"
        );
    }
    let frames = (sink.samples().len() / 2) as u64;
    let concealed = jb.counters().concealed_frames;
    Run {
        concealed,
        samples: sink.samples().to_vec(),
        errors,
        resyncs: feed.playout().resyncs(),
        frames,
    }
}

fn p99(v: &[f64]) -> f64 {
    let mut a = v.to_vec();
    a.sort_by(f64::total_cmp);
    a[(a.len() * 99 / 100).min(a.len() - 1)]
}

#[test]
fn an_unskewed_listener_is_on_time_and_sample_exact() {
    let r = run(3_000, 0, 20, 0.0);
    assert_eq!(r.resyncs, 0);
    assert_eq!(r.frames, 20 * u64::from(RATE));
    let want: Vec<i16> = (0..r.frames)
        .flat_map(|f| [sample(f, 0), sample(f, 1)])
        .collect();
    assert!(r.samples == want, "output differs from the stream");
    assert!(p99(&r.errors) < 25.0, "p99 {} µs", p99(&r.errors));
}

#[test]
fn skewed_listeners_keep_the_schedule_within_a_tenth_of_a_millisecond() {
    for (off, ppm) in [(400, -120), (-300, 150), (-9_000, 500), (9_000, -500)] {
        let r = run(off, ppm, 60, 10.0);
        assert_eq!(r.resyncs, 0, "{off} ms {ppm} ppm");
        let p = p99(&r.errors);
        assert!(p < 100.0, "{off} ms {ppm} ppm: p99 {p} µs");
        // Every frame of the stream was played, give or take the slips.
        let slips = (r.frames as f64 - 60.0 * f64::from(RATE)).abs();
        assert!(
            slips < 60.0 * 48.0 * 0.6,
            "{off} ms {ppm} ppm: {} frames",
            r.frames
        );
    }
}

#[test]
fn the_device_starts_when_the_first_frame_is_due() {
    let r = run(-5_000, 0, 2, 0.0);
    // The first measurement is the start itself: exact.
    assert!(r.errors[0] < 1.0, "start off by {} µs", r.errors[0]);
    let _ = MemorySink::new(RATE, 2).lead();
}

#[test]
fn loss_jitter_and_slow_answers_do_not_move_the_schedule() {
    for (off, ppm) in [(700, 200), (-1_500, -200)] {
        let r = run_on(off, ppm, 60, 10.0, true);
        assert_eq!(r.resyncs, 0, "{off} ms {ppm} ppm");
        // 1 % of 480-frame datagrams lost: concealed in place.
        assert!(
            r.concealed >= 50 * 480,
            "{off} ms {ppm} ppm: {} concealed",
            r.concealed
        );
        let p = p99(&r.errors);
        assert!(p < 100.0, "{off} ms {ppm} ppm: p99 {p} µs");
    }
}
