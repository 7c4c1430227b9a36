//! One room, one clock, in the simulated room: listeners on clocks of their own
//! ([`ListenerSpec::clock`]: offset and rate, their virtual devices with them).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use listen::ExitReason;
use proto::EndReason;
use testkit::impair::Impairment;
use testkit::room::{ListenerSpec, Playback, PlayoutPoint, Room, SyntheticSource, server_config};

const RATE: u32 = 48_000;

/// Listeners whose clocks are ten seconds off either way join, time out nothing and play every
/// sample, exactly like one on the room's clock.
#[test]
fn offset_clocks_join_and_play_every_sample() {
    let total = u64::from(RATE) * 20;
    let mut room = Room::new(
        server_config(Duration::from_millis(20)),
        SyntheticSource::new(RATE, 2, total),
    );
    for offset_us in [0, 10_000_000, -10_000_000] {
        room.add_listener(
            ListenerSpec::new()
                .delay(Duration::from_millis(3), Duration::from_millis(1))
                .clock(offset_us, 0.0)
                .sink(Playback::Hash),
        );
    }
    room.run_to_end();
    assert_eq!(room.endpoint().end_reason(), Some(EndReason::Finished));
    for l in room.listeners() {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
        let start = l.welcome().unwrap().start_ts;
        assert_eq!(start, 0, "{ctx}");
        assert_eq!(
            l.played().hash,
            Some(SyntheticSource::hash(2, 0..total)),
            "{ctx}"
        );
        assert_eq!(
            (stats.lost, stats.underruns, stats.concealed_ms),
            (0, 0, 0),
            "{ctx}"
        );
    }
}

/// Listeners whose clocks run 200 ppm fast or slow play the whole stream without running dry
/// or overflowing, and finish within 50 ms of each other (their devices are off-rate: 200 ppm
/// of 60 s is 12 ms, and each starts when its buffer fills, to 10 ms).
#[test]
fn skewed_clocks_play_the_whole_stream() {
    let total = u64::from(RATE) * 60;
    let mut room = Room::new(
        server_config(Duration::from_millis(20)),
        SyntheticSource::new(RATE, 2, total),
    );
    for (offset_us, ppm) in [(400_000, 200.0), (-300_000, -200.0), (0, 0.0)] {
        room.add_listener(
            ListenerSpec::new()
                .delay(Duration::from_millis(2), Duration::from_millis(2))
                .clock(offset_us, ppm)
                .sink(Playback::Discard),
        );
    }
    room.run_to_end();
    let mut ended = Vec::new();
    for l in room.listeners() {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
        assert_eq!((stats.lost, stats.underruns), (0, 0), "{ctx}");
        assert_eq!(l.played().frames, total, "{ctx}");
        ended.push(
            l.event_time(|e| matches!(e, listen::Event::Ended(_)))
                .unwrap(),
        );
    }
    let spread =
        ended.iter().max().unwrap().as_secs_f64() - ended.iter().min().unwrap().as_secs_f64();
    assert!(spread < 0.050, "ends {ended:?}");
}

/// p99 of |a − b| over the frames both playout logs name, each log's lines interpolated at
/// the stream's rate (a line starts a run of consecutive frames), after room time `from`.
fn p99_between(a: &[PlayoutPoint], b: &[PlayoutPoint], from: Duration) -> (Duration, usize) {
    let at = |log: &[PlayoutPoint], frame: u64| -> Option<f64> {
        let i = log.partition_point(|p| p.frame <= frame).checked_sub(1)?;
        let p = log[i];
        let next = log.get(i + 1)?;
        // Only inside a run that the next line continues (no skip between them).
        let within = frame - p.frame;
        let span = next.frame - p.frame;
        let dt = (next.at.as_secs_f64() - p.at.as_secs_f64()) * f64::from(RATE);
        if (dt - span as f64).abs() > 2.0 {
            return None;
        }
        Some(p.at.as_secs_f64() + within as f64 / f64::from(RATE))
    };
    let mut diffs: Vec<f64> = a
        .iter()
        .filter(|p| p.at >= from)
        .filter_map(|p| Some((at(a, p.frame)? - at(b, p.frame)?).abs()))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let n = diffs.len();
    let p99 = diffs.get(n * 99 / 100).copied().unwrap_or(f64::MAX);
    (Duration::from_secs_f64(p99.min(1e6)), n)
}

/// Three synchronised listeners on clocks 200 ppm fast, 200 ppm slow and 150 ppm fast (and
/// ±0.4 s off), over paths with 1 % loss and up to 5 ms of jitter each way on a 3 ms / 1 ms
/// asymmetric delay, for a simulated hour: after the first minute, each frame leaves the three
/// sinks within 0.2 ms of each other (p99), every buffer holds its level within 2 ms, and
/// nobody runs dry. (An asymmetry shifts a clock
/// estimate by half of it, invisibly to any exchange: the listeners share it here, as
/// listeners on one LAN do.)
#[test]
fn three_skewed_listeners_on_jittery_lossy_paths_play_in_step_for_an_hour() {
    let secs = 3_600;
    let total = u64::from(RATE) * secs;
    let mut room = Room::new(
        server_config(Duration::from_millis(20)),
        SyntheticSource::new(RATE, 2, total),
    );
    let path = |seed: u64| Impairment {
        loss: 0.01,
        jitter: Duration::from_millis(5),
        seed,
        impair_control: true,
        ..Impairment::none()
    };
    for (i, (offset_us, ppm)) in [(400_000, 200.0), (-400_000, -200.0), (0, 150.0)]
        .into_iter()
        .enumerate()
    {
        room.add_listener(
            ListenerSpec::new()
                .join_at(Duration::from_millis(700 * i as u64))
                .delay(Duration::from_millis(3), Duration::from_millis(1))
                .down(path(11 + i as u64))
                .up(path(31 + i as u64))
                .clock(offset_us, ppm)
                .latency(Duration::from_millis(50))
                .sink(Playback::Discard)
                .synced(),
        );
    }
    room.run_to_end();
    let ls = room.listeners();
    for l in ls {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
        assert_eq!(stats.underruns, 0, "{ctx}");
        assert!(stats.lost > 0, "the path lost nothing: {ctx}");
        assert!(
            (stats.drift_ppm - l.spec().clock_ppb as f64 / 1e3).abs() < 2.0,
            "{ctx}"
        );
        assert!(stats.resyncs <= 1, "{ctx}");
        // The buffer holds its level: no growth or shrinking from clock rates. Its average
        // over each minute after the first stays within 2 ms of the hour's median minute.
        let minutes: Vec<f64> = (1..secs / 60)
            .map(|m| {
                let from = Duration::from_secs(m * 60);
                let to = from + Duration::from_secs(60);
                let v: Vec<f64> = l
                    .playout()
                    .iter()
                    .filter(|p| p.at >= from && p.at < to)
                    .map(|p| p.buffered.as_secs_f64())
                    .collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            })
            .collect();
        let mut sorted = minutes.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let worst = minutes
            .iter()
            .map(|m| (m - median).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "listener {}: buffer {:.1} ms, minute averages within {:.2} ms",
            l.index(),
            median * 1e3,
            worst * 1e3
        );
        assert!(worst < 0.002, "{ctx}: buffer off by {worst} s");
    }
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let (p99, n) = p99_between(ls[a].playout(), ls[b].playout(), Duration::from_secs(60));
        eprintln!("listeners {a} and {b}: p99 {p99:?} over {n} lines");
        assert!(n > 100_000, "{n} lines");
        assert!(
            p99 < Duration::from_micros(200),
            "listeners {a} and {b}: p99 {p99:?}"
        );
    }
}

/// Synchronised listeners on a clean path at the server's rate (whatever their clock offset)
/// play the stream sample for sample: inside the dead band nothing is corrected.
#[test]
fn synchronised_listeners_at_the_servers_rate_play_every_sample_unchanged() {
    let total = u64::from(RATE) * 120;
    let mut room = Room::new(
        server_config(Duration::from_millis(20)),
        SyntheticSource::new(RATE, 2, total),
    );
    for (i, offset_us) in [0, 2_500_000, -7_000_000].into_iter().enumerate() {
        room.add_listener(
            ListenerSpec::new()
                .join_at(Duration::from_millis(300 * i as u64))
                .delay(Duration::from_millis(2), Duration::from_millis(2))
                .clock(offset_us, 0.0)
                .latency(Duration::from_millis(50))
                .sink(Playback::Hash)
                .synced(),
        );
    }
    room.run_to_end();
    for l in room.listeners() {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
        assert!(l.session().unwrap().sync().is_synchronised(), "{ctx}");
        assert_eq!(stats.resyncs, 0, "{ctx}");
        let start = l.welcome().unwrap().start_ts;
        assert_eq!(
            l.played().hash,
            Some(SyntheticSource::hash(2, start..total)),
            "{ctx}"
        );
        assert!(!l.playout().is_empty(), "{ctx}");
    }
}
