//! Loss repair in the simulated room (`testkit::room`): streamd's endpoint and listen's
//! sessions with FEC and retransmission over impaired links, on simulated time. What reaches
//! the speaker, what `lost` says, and what repair costs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proto::EndReason;
use repair::FecParams;
use streamd::endpoint::RepairConfig;
use testkit::impair::Impairment;
use testkit::room::{ListenerSpec, NetCounts, Playback, Room, SyntheticSource, server_config};

const RATE: u32 = 48_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One listener for `seconds` of 48 kHz stereo through `down`, 5 ms each way, 100 ms latency,
/// with `repair`; returns the room after the end.
fn run(down: Impairment, repair: RepairConfig, seconds: u64) -> Room<SyntheticSource> {
    let total = u64::from(RATE) * seconds;
    let mut config = server_config(ms(20));
    config.repair = repair;
    let mut room = Room::new(config, SyntheticSource::new(RATE, 2, total));
    room.add_listener(
        ListenerSpec::new()
            .down(down)
            .delay(ms(5), ms(5))
            .latency(ms(100))
            .sink(Playback::Keep),
    );
    room.run_to_end();
    assert_eq!(room.endpoint().end_reason(), Some(EndReason::Finished));
    room
}

fn both() -> RepairConfig {
    RepairConfig {
        fec: FecParams::new(6, 1).ok(),
        retransmit: true,
    }
}

/// 5 % loss in bursts of 3, 2 % reordering, 1 % duplication: with FEC and retransmission on,
/// nothing is concealed and the listener plays the stream sample for sample; `lost` is still
/// exactly what the link dropped; repair costs at most 30 % of the stream's bytes.
#[test]
fn bursty_loss_is_repaired_completely_and_lost_stays_the_networks() {
    let down = Impairment {
        loss: 0.05,
        burst: Some(3.0),
        reorder: 0.02,
        dup: 0.01,
        seed: 5,
        ..Impairment::none()
    };
    let room = run(down, both(), 60);
    let l = &room.listeners()[0];
    let stats = l.stats().unwrap();
    let ctx = format!("{stats:?}");
    let a = &l.down().link.audio;
    let start = l.welcome().unwrap().start_seq;
    let last = l.end().unwrap().last_seq.unwrap();
    assert!(a.dropped_seqs.len() > 100, "{ctx}");
    assert_eq!(Some(NetCounts::of(&stats)), l.net_counts(), "{ctx}");
    assert_eq!(stats.lost, a.lost_between(start, last), "{ctx}");
    assert_eq!(stats.received, a.unique_sent, "{ctx}");
    assert!(
        stats.recovered_fec > 0 && stats.recovered_retransmit > 0,
        "{ctx}"
    );
    assert!(
        stats.recovered_fec + stats.recovered_retransmit >= stats.lost,
        "{ctx}"
    );
    assert_eq!(stats.concealed_ms, 0, "{ctx}");
    let played = l.played();
    let want = SyntheticSource::samples(2, 0..u64::from(RATE) * 60);
    assert!(played.samples.as_ref().unwrap() == &want, "{ctx}");
    let r = room.endpoint().repair_stats();
    let stream = u64::from(RATE) * 60 * 4;
    let repair_bytes = r.parity_bytes + r.resent_bytes;
    eprintln!(
        "5 % bursty loss: lost {} recovered fec {} retransmit {}; repair {:.1} % of the stream",
        stats.lost,
        stats.recovered_fec,
        stats.recovered_retransmit,
        100.0 * repair_bytes as f64 / stream as f64
    );
    assert!(repair_bytes * 100 <= stream * 30, "{r:?}");
}

/// 15 % random loss: with repair on, at most 1 % of the audio reaches the speaker missing.
#[test]
fn fifteen_percent_random_loss_conceals_at_most_one_percent() {
    let down = Impairment {
        loss: 0.15,
        seed: 15,
        ..Impairment::none()
    };
    let room = run(down, both(), 30);
    let stats = room.listeners()[0].stats().unwrap();
    eprintln!(
        "15 % random loss: lost {} recovered fec {} retransmit {}, concealed {} ms",
        stats.lost, stats.recovered_fec, stats.recovered_retransmit, stats.concealed_ms
    );
    assert!(stats.lost > 0);
    assert!(stats.concealed_ms * 100 <= 30_000, "{stats:?}");
}

/// Without repair the same link conceals what it lost: the repair tests above measure repair.
#[test]
fn without_repair_the_loss_is_concealed() {
    let down = Impairment {
        loss: 0.05,
        burst: Some(3.0),
        seed: 5,
        ..Impairment::none()
    };
    let room = run(down, RepairConfig::default(), 10);
    let stats = room.listeners()[0].stats().unwrap();
    assert!(stats.lost > 0 && stats.concealed_ms > 0, "{stats:?}");
    assert_eq!((stats.recovered_fec, stats.recovered_retransmit), (0, 0));
}

/// A stream of one datagram per 20 ms tick (8 kHz mono PCM: 320 bytes, the size and cadence of
/// 128 kbit/s Opus) through 5 % loss in bursts of 3, 2 % reordering and 1 % duplication, 1 ms
/// each way, 100 ms latency, retransmission (and no parity, as streamd chooses for a group of
/// 20 ms datagrams at 100 ms: see `repair::default_fec`): over ten seeded minutes at most 0.1 %
/// of the audio reaches the speaker missing. A burst of the link's Gilbert loss spans 20 ms a
/// datagram here, so its first datagrams are due before a later one arrives to show the gap:
/// the listener asks for each as soon as it is overdue, and again while the link stays silent.
#[test]
fn one_datagram_a_tick_through_bursty_loss_conceals_at_most_a_thousandth() {
    const NARROW: u32 = 8_000;
    let (mut concealed, mut played, mut lost, mut resent_runs) = (0, 0, 0, 0);
    for seed in 1..=10u64 {
        let mut config = server_config(ms(20));
        config.repair = RepairConfig {
            fec: None,
            retransmit: true,
        };
        let mut room = Room::new(
            config,
            SyntheticSource::new(NARROW, 1, u64::from(NARROW) * 60),
        );
        room.add_listener(
            ListenerSpec::new()
                .down(Impairment {
                    loss: 0.05,
                    burst: Some(3.0),
                    reorder: 0.02,
                    dup: 0.01,
                    seed,
                    ..Impairment::none()
                })
                .delay(ms(1), ms(1))
                .latency(ms(100))
                .sink(Playback::Keep),
        );
        room.run_to_end();
        let l = &room.listeners()[0];
        let s = l.stats().unwrap();
        let a = &l.down().link.audio;
        let start = l.welcome().unwrap().start_seq;
        let last = l.end().unwrap().last_seq.unwrap();
        assert_eq!(s.lost, a.lost_between(start, last), "seed {seed}: {s:?}");
        concealed += s.concealed_ms;
        played += s.played_ms;
        lost += s.lost;
        resent_runs += u64::from(s.recovered_retransmit > 0);
    }
    eprintln!("one datagram a tick, 10 min: lost {lost}, concealed {concealed} of {played} ms");
    assert!(lost > 500 && resent_runs == 10, "lost {lost}");
    assert!(
        concealed * 1000 <= played,
        "concealed {concealed} of {played} ms"
    );
}
