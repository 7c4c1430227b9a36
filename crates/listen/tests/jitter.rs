//! Sans-IO tests of the jitter buffer with simulated time: a scripted server sends datagrams
//! at chosen instants, a virtual device (the WAV sink's clock) pulls frames every client tick.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::jitter::{FADE, JitterBuffer, MIN_MARGIN, State, frames_in};
use listen::sink::VirtualDevice;
use listen::stats::{Arrival, Tracker};
use proto::StreamInfo;

/// The client's playout tick in these simulations (the real client uses the same value).
const TICK: Duration = Duration::from_millis(5);
/// The virtual device's lead.
const LEAD: Duration = Duration::from_millis(20);

fn info(rate: u32, channels: u16, interval: Duration, fpp: u32, start: (u64, u64)) -> StreamInfo {
    StreamInfo {
        sample_rate: rate,
        channels,
        codec: proto::AudioCodec::Pcm,
        timeline: proto::Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 25_000,
        repair: proto::Repair::default(),
        multicast: None,
        interval_us: interval.as_micros() as u32,
        frames_per_packet: fpp,
        total_frames: None,
        start_seq: start.0,
        start_ts: start.1,
        title: "test".into(),
    }
}

/// The sample value of channel `c` of frame `f`: distinct everywhere, never 0.
fn sample(f: u64, c: usize) -> i16 {
    ((f * 7 + c as u64 * 3) % 30000) as i16 + 1
}

fn pcm(ts: u64, frames: u64, ch: usize) -> Bytes {
    let mut v = Vec::new();
    for f in ts..ts + frames {
        for c in 0..ch {
            v.extend_from_slice(&sample(f, c).to_le_bytes());
        }
    }
    Bytes::from(v)
}

fn expected(from: u64, to: u64, ch: usize) -> Vec<i16> {
    (from..to)
        .flat_map(|f| (0..ch).map(move |c| sample(f, c)))
        .collect()
}

/// One datagram the scripted server sends: when it arrives, its seq, first frame and length.
#[derive(Clone, Copy, Debug)]
struct Dgram {
    at: Duration,
    seq: u64,
    ts: u64,
    frames: u64,
}

/// A stream cut into packets of `fpp` frames, sent one interval's worth per tick, each
/// datagram arriving at `tick time + delay(seq)`.
fn schedule(
    total: u64,
    fpp: u64,
    rate: u32,
    interval: Duration,
    start: (u64, u64),
    delay: impl Fn(u64) -> Duration,
) -> Vec<Dgram> {
    let per_tick = frames_in(interval, rate);
    let mut v = Vec::new();
    let mut ts = start.1;
    let mut seq = start.0;
    while ts < start.1 + total {
        let frames = fpp.min(start.1 + total - ts);
        let tick = (ts - start.1) / per_tick;
        let at = interval * tick as u32 + delay(seq);
        v.push(Dgram {
            at,
            seq,
            ts,
            frames,
        });
        ts += frames;
        seq += 1;
    }
    v
}

struct Run {
    out: Vec<i16>,
    jb: JitterBuffer,
    tracker: Tracker,
    /// (time, frames buffered before the pull) at every pull that started or restarted playout.
    starts: Vec<(Duration, u64)>,
    /// When the last frame was handed out.
    finished_at: Option<Duration>,
}

/// Delivers `dgrams` (in any order; sorted by arrival, stable) and pulls every tick until the
/// buffer finishes; `End` arrives at `end_at`.
fn simulate(info: &StreamInfo, latency: Duration, dgrams: &[Dgram], end_at: Duration) -> Run {
    let t0 = Instant::now();
    let ch = usize::from(info.channels);
    let mut jb = JitterBuffer::new(info, latency, LEAD);
    let mut tracker = Tracker::new(info.sample_rate, info.start_seq, t0);
    let mut dev = VirtualDevice::new(info.sample_rate, LEAD);
    let mut order: Vec<Dgram> = dgrams.to_vec();
    order.sort_by_key(|d| d.at);
    let mut next = 0;
    let mut out = Vec::new();
    let mut starts = Vec::new();
    let mut ended = false;
    let mut now = Duration::ZERO;
    let limit = end_at + Duration::from_secs(30);
    while now < limit {
        while next < order.len() && order[next].at <= now {
            let d = order[next];
            if tracker.on_audio(t0 + d.at, d.seq, d.ts) == Arrival::New {
                jb.push(d.ts, pcm(d.ts, d.frames, ch));
            }
            next += 1;
        }
        if !ended && now >= end_at {
            jb.end(None);
            ended = true;
        }
        let was = jb.state();
        let buffered = jb.buffered_frames();
        let want = dev.demand(t0 + now);
        let mut chunk = Vec::new();
        let n = jb.pull(want, &mut chunk);
        if was == State::Buffering && jb.state() != State::Buffering {
            starts.push((now, buffered));
        }
        dev.wrote(t0 + now, n as u64);
        out.extend_from_slice(&chunk);
        if jb.is_finished() {
            return Run {
                out,
                jb,
                tracker,
                starts,
                finished_at: Some(now),
            };
        }
        now += TICK;
    }
    Run {
        out,
        jb,
        tracker,
        starts,
        finished_at: None,
    }
}

const RATE: u32 = 1000;
const FPP: u64 = 10;
const IV: Duration = Duration::from_millis(10);

fn simple(delay: impl Fn(u64) -> Duration) -> Vec<Dgram> {
    schedule(1000, FPP, RATE, IV, (0, 0), delay)
}

fn end_after(d: &[Dgram]) -> Duration {
    d.iter().map(|d| d.at).max().unwrap() + Duration::from_millis(1)
}

#[test]
fn in_order_plays_every_frame_once_after_the_target() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    let d = simple(|_| Duration::from_millis(2));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out, expected(0, 1000, 1));
    let c = r.jb.counters();
    assert_eq!(
        (c.concealed_frames, c.underruns, c.late, c.played_frames),
        (0, 0, 0, 1000)
    );
    assert_eq!(r.jb.grown(), None);
    // Starts once it holds target + lead (120 frames at 1 kHz), not before.
    assert_eq!(r.starts.len(), 1);
    let (at, buffered) = r.starts[0];
    assert!(buffered >= 120, "started with only {buffered} frames");
    assert!(
        at >= Duration::from_millis(110) && at <= Duration::from_millis(140),
        "{at:?}"
    );
    assert_eq!(r.tracker.lost(), 0);
    assert!(r.finished_at.is_some());
}

#[test]
fn reordered_datagrams_play_in_order() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    // Every odd seq overtakes its even predecessor (sent 10 ms earlier, delayed 14 ms more).
    let d = simple(|s| Duration::from_millis(if s % 2 == 0 { 16 } else { 2 }));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out, expected(0, 1000, 1));
    assert_eq!(r.jb.counters().concealed_frames, 0);
    // Each even seq arrives after the odd one above it: 50 out of order.
    let st = listen::Stats::new(&r.tracker, &r.jb.counters(), listen::ExitReason::Finished);
    assert_eq!(st.out_of_order, 50);
    assert_eq!((st.lost, st.duplicates), (0, 0));
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    let mut d = simple(|_| Duration::from_millis(1));
    let dups: Vec<Dgram> = d
        .iter()
        .filter(|x| x.seq % 7 == 0)
        .map(|x| Dgram {
            at: x.at + Duration::from_millis(3),
            ..*x
        })
        .collect();
    let n = dups.len() as u64;
    d.extend(dups);
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out, expected(0, 1000, 1));
    let st = listen::Stats::new(&r.tracker, &r.jb.counters(), listen::ExitReason::Finished);
    assert_eq!(
        (st.duplicates, st.received, st.lost, st.out_of_order),
        (n, 100, 0, 0)
    );
}

fn check_concealed(out: &[i16], from: u64, to: u64) {
    // A fade from the last good frame, then silence.
    let fade = frames_in(FADE, RATE);
    let last = sample(from - 1, 0);
    for f in from..to {
        let s = out[f as usize];
        if f - from >= fade {
            assert_eq!(s, 0, "frame {f} not silent");
        } else {
            assert!(
                s.abs() < last.abs(),
                "frame {f} ({s}) not fading from {last}"
            );
        }
    }
}

#[test]
fn a_lost_datagram_is_concealed_in_place() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    let d: Vec<Dgram> = simple(|_| Duration::from_millis(1))
        .into_iter()
        .filter(|x| x.seq != 30)
        .collect();
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out.len(), 1000);
    assert_eq!(r.out[..300], expected(0, 300, 1)[..]);
    assert_eq!(r.out[310..], expected(310, 1000, 1)[..]);
    check_concealed(&r.out, 300, 310);
    let c = r.jb.counters();
    assert_eq!((c.concealed_frames, c.underruns, c.late), (10, 0, 0));
    assert_eq!((r.tracker.lost(), r.tracker.expected()), (1, 100));
}

#[test]
fn burst_loss_is_concealed_with_fade_then_silence() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    let d: Vec<Dgram> = simple(|_| Duration::from_millis(1))
        .into_iter()
        .filter(|x| !(40..46).contains(&x.seq))
        .collect();
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out.len(), 1000);
    assert_eq!(r.out[..400], expected(0, 400, 1)[..]);
    assert_eq!(r.out[460..], expected(460, 1000, 1)[..]);
    check_concealed(&r.out, 400, 460);
    assert_eq!(r.jb.counters().concealed_frames, 60);
    assert_eq!(r.jb.counters().underruns, 0);
    assert_eq!(r.tracker.lost(), 6);
}

#[test]
fn a_datagram_after_its_deadline_is_late_and_concealed() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    // seq 50 arrives 400 ms late, far past the 100 ms target.
    let d = simple(|s| Duration::from_millis(if s == 50 { 400 } else { 1 }));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out.len(), 1000);
    check_concealed(&r.out, 500, 510);
    assert_eq!(r.out[510..], expected(510, 1000, 1)[..]);
    let c = r.jb.counters();
    assert_eq!((c.late, c.concealed_frames, c.underruns), (1, 10, 0));
    // Late is not lost: it was received.
    assert_eq!((r.tracker.received(), r.tracker.lost()), (100, 0));
}

#[test]
fn underrun_rebuffers_to_the_target_and_loses_nothing() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    // The server stalls from 300 ms to 900 ms, then sends the backlog at once and goes on.
    let d = simple(|s| {
        let sent = Duration::from_millis(10 * s);
        if (30..90).contains(&s) {
            Duration::from_millis(900) - sent
        } else {
            Duration::from_millis(1)
        }
    });
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    // Nothing lost, so every frame plays exactly once despite the gap.
    assert_eq!(r.out, expected(0, 1000, 1));
    let c = r.jb.counters();
    assert_eq!((c.underruns, c.concealed_frames, c.late), (1, 0, 0));
    assert_eq!(r.starts.len(), 2, "one start, one restart");
    let (at, buffered) = r.starts[1];
    assert!(buffered >= 120, "restarted with only {buffered} frames");
    assert!(at >= Duration::from_millis(900), "restarted at {at:?}");
}

#[test]
fn late_joiner_starts_at_the_welcome_seq_and_ts() {
    let start = (500, 5000);
    let inf = info(RATE, 1, IV, FPP as u32, start);
    let d = schedule(1000, FPP, RATE, IV, start, |_| Duration::from_millis(1));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out, expected(5000, 6000, 1));
    assert_eq!(r.tracker.expected(), 100);
    assert_eq!(r.tracker.lost(), 0);
    assert_eq!(r.jb.position(), 6000);
}

#[test]
fn late_joiner_whose_first_datagram_is_lost_conceals_from_start_ts() {
    let start = (500, 5000);
    let inf = info(RATE, 1, IV, FPP as u32, start);
    let d: Vec<Dgram> = schedule(1000, FPP, RATE, IV, start, |_| Duration::from_millis(1))
        .into_iter()
        .filter(|x| x.seq != 500)
        .collect();
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.out.len(), 1000);
    assert!(r.out[..10].iter().all(|&s| s == 0));
    assert_eq!(r.out[10..], expected(5010, 6000, 1)[..]);
    assert_eq!((r.tracker.expected(), r.tracker.lost()), (100, 1));
}

/// A deterministic jitter of 0..max for each seq (an LCG, no dependency).
fn jitter(seq: u64, max_ms: u64) -> Duration {
    let x = seq
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Duration::from_micros((x >> 33) % (max_ms * 1000))
}

#[test]
fn interval_5ms_with_jitter_plays_without_gaps() {
    let iv = Duration::from_millis(5);
    let inf = info(48_000, 2, iv, 240, (0, 0));
    let d = schedule(96_000, 240, 48_000, iv, (0, 0), |s| jitter(s, 30));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.jb.grown(), None);
    assert_eq!(r.out, expected(0, 96_000, 2));
    let c = r.jb.counters();
    assert_eq!((c.underruns, c.concealed_frames, c.late), (0, 0, 0));
}

#[test]
fn interval_2s_grows_the_target_and_plays_without_gaps() {
    let iv = Duration::from_secs(2);
    // 8 kHz stereo, 16 datagrams of 1000 frames per 2 s burst, 8 s of audio, bursts up to
    // 30 ms late.
    let inf = info(8000, 2, iv, 1000, (0, 0));
    let d = schedule(64_000, 1000, 8000, iv, (0, 0), |s| jitter(s, 30));
    let r = simulate(&inf, Duration::from_millis(100), &d, end_after(&d));
    assert_eq!(r.jb.grown(), Some(Duration::from_millis(100)));
    assert_eq!(r.jb.target(), iv + MIN_MARGIN);
    assert_eq!(r.out, expected(0, 64_000, 2));
    let c = r.jb.counters();
    assert_eq!((c.underruns, c.concealed_frames, c.late), (0, 0, 0));
}

#[test]
fn end_plays_out_then_finishes_and_conceals_trailing_loss_to_the_end_ts() {
    let inf = info(RATE, 1, IV, FPP as u32, (0, 0));
    let d: Vec<Dgram> = simple(|_| Duration::from_millis(1))
        .into_iter()
        .filter(|x| x.seq < 98)
        .collect();
    let mut jb = JitterBuffer::new(&inf, Duration::from_millis(100), LEAD);
    for x in &d {
        jb.push(x.ts, pcm(x.ts, x.frames, 1));
    }
    jb.end(Some(1000));
    let mut out = Vec::new();
    while !jb.is_finished() {
        jb.pull(64, &mut out);
    }
    assert_eq!(out.len(), 1000);
    assert_eq!(out[..980], expected(0, 980, 1)[..]);
    assert!(
        out[980 + frames_in(FADE, RATE) as usize..]
            .iter()
            .all(|&s| s == 0)
    );
    assert_eq!(jb.counters().concealed_frames, 20);
    assert_eq!(jb.counters().underruns, 0);
}

#[test]
fn malformed_and_far_ahead_datagrams_are_dropped() {
    let inf = info(RATE, 2, IV, FPP as u32, (0, 0));
    let mut jb = JitterBuffer::new(&inf, Duration::from_millis(100), LEAD);
    // 3 bytes: not whole stereo frames.
    assert_eq!(
        jb.push(0, Bytes::from_static(&[1, 2, 3])),
        listen::jitter::PushOutcome::Malformed
    );
    assert_eq!(
        jb.push(10_000_000, pcm(10_000_000, 10, 2)),
        listen::jitter::PushOutcome::Overflow
    );
    assert_eq!(jb.buffered_frames(), 0);
    let c = jb.counters();
    assert_eq!((c.malformed, c.overflow), (1, 1));
}

/// A relay's view ([`JitterBuffer::ready`]): contiguous audio is ready at once, whatever the
/// target; a hole is reported with its length; `pull_due_with` hands out exactly what is asked
/// (the hole concealed); after `End` everything left is ready, and the buffer finishes.
#[test]
fn ready_reports_contiguous_audio_and_the_hole_after_it() {
    let i = info(48_000, 2, Duration::from_millis(20), 480, (0, 1000));
    let mut jb = JitterBuffer::new(&i, Duration::from_millis(200), LEAD);
    assert_eq!(jb.ready(), (0, 0));
    jb.push(1000, pcm(1000, 480, 2));
    assert_eq!(jb.ready(), (480, 0), "no waiting for the 200 ms target");
    jb.push(1960, pcm(1960, 480, 2));
    assert_eq!(jb.ready(), (480, 480), "1480..1960 missing");
    let mut out = Vec::new();
    assert_eq!(
        jb.pull_due_with(480, &mut out, &mut listen::jitter::Fade),
        480
    );
    assert_eq!(out, expected(1000, 1480, 2));
    assert_eq!(jb.ready(), (0, 480));
    out.clear();
    assert_eq!(
        jb.pull_due_with(480, &mut out, &mut listen::jitter::Fade),
        480
    );
    assert_eq!(jb.counters().concealed_frames, 480);
    assert_eq!(jb.ready(), (480, 0));
    jb.push(2440, pcm(2440, 100, 2));
    jb.end(Some(2600));
    assert_eq!(
        jb.ready(),
        (640, 0),
        "after End: the rest, trailing loss included"
    );
    out.clear();
    assert_eq!(jb.pull_due(640, &mut out), 640);
    assert_eq!(&out[..580 * 2], &expected(1960, 2540, 2)[..]);
    assert_eq!(jb.pull_due(1, &mut out), 0);
    assert!(jb.is_finished());
    assert_eq!(jb.ready(), (0, 0));
}
