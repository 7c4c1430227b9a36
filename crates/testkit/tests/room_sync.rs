//! One room, one clock, in the simulated room: listeners on clocks of their own
//! ([`ListenerSpec::clock`]: offset and rate, their virtual devices with them).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use listen::ExitReason;
use proto::EndReason;
use testkit::room::{ListenerSpec, Playback, Room, SyntheticSource, server_config};

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
