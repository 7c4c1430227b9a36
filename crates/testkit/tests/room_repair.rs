//! Loss repair in the simulated room (`testkit::room`): streamd's endpoint and listen's
//! sessions with FEC and retransmission over impaired links, on simulated time. What reaches
//! the speaker, what `lost` says, and what repair costs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proto::{AudioCodec, EndReason, MessageType};
use repair::FecParams;
use streamd::endpoint::RepairConfig;
use testkit::impair::Impairment;
use testkit::room::{ListenerSpec, NetCounts, Playback, Room, SyntheticSource, server_config};

const RATE: u32 = 48_000;

/// The Opus stream streamd sends by default.
const OPUS: AudioCodec = AudioCodec::Opus { bitrate: 128_000 };

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

/// A server ticking every `interval` that repairs by retransmission alone.
fn resend_only(interval: Duration) -> streamd::endpoint::EndpointConfig {
    let mut config = server_config(interval);
    config.repair = RepairConfig {
        fec: None,
        retransmit: true,
    };
    config
}

/// The only listener's stats after the end, once `lost` is checked against what its link
/// dropped.
fn checked_stats(room: &Room<SyntheticSource>, seed: u64) -> listen::stats::Stats {
    let l = &room.listeners()[0];
    let s = l.stats().unwrap();
    let a = &l.down().link.audio;
    let start = l.welcome().unwrap().start_seq;
    let last = l.end().unwrap().last_seq.unwrap();
    assert_eq!(s.lost, a.lost_between(start, last), "seed {seed}: {s:?}");
    s
}

/// 5 % loss in bursts of 3, 2 % reordering, 1 % duplication: with FEC and retransmission on,
/// nothing is concealed and the listener plays the stream sample for sample; `lost` is still
/// exactly what the link dropped; repair costs at most 30 % of the stream's bytes.
#[test]
fn bursty_loss_is_repaired_completely_and_lost_stays_the_networks() {
    let down = Impairment::bursty(5);
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
        let mut room = Room::new(
            resend_only(ms(20)),
            SyntheticSource::new(NARROW, 1, u64::from(NARROW) * 60),
        );
        room.add_listener(
            ListenerSpec::new()
                .down(Impairment::bursty(seed))
                .delay(ms(1), ms(1))
                .latency(ms(100))
                .sink(Playback::Keep),
        );
        room.run_to_end();
        let s = checked_stats(&room, seed);
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

/// Opus as streamd sends it from a file with `--latency 100ms`: the tick of whole 20 ms
/// packets that fits the delay (80 ms: four packets a send).
fn opus_file_tick() -> Duration {
    let tick = streamd::server::default_interval(OPUS, true, Some(ms(100)));
    assert_eq!(tick, ms(80));
    tick
}

/// `seconds` of 48 kHz stereo as Opus from a file at streamd's tick for a 100 ms room delay
/// ([`opus_file_tick`]), retransmission only.
fn opus_file_room(seconds: u64) -> Room<SyntheticSource> {
    let mut config = resend_only(opus_file_tick());
    config.playout_delay = ms(100);
    let mut room = Room::new(
        config,
        SyntheticSource::new(RATE, 2, u64::from(RATE) * seconds),
    );
    room.endpoint_mut().set_codec(OPUS).unwrap();
    room
}

/// A listener 1 ms each way at 100 ms latency that keeps what it plays; `n` Audio datagrams
/// in a row are lost on its way from the `first`th on.
fn outage_listener(first: u64, n: u64) -> ListenerSpec {
    let mut spec = ListenerSpec::new()
        .delay(ms(1), ms(1))
        .latency(ms(100))
        .sink(Playback::Keep);
    for nth in first..first + n {
        spec = spec.drop_down(MessageType::Audio, nth);
    }
    spec
}

/// Opus from a file ([`opus_file_room`]), 3 s: `n` Audio datagrams in a row lost from the
/// `first`th on, right as playout starts. Returns the listener's stats.
fn opus_start_outage(first: u64, n: u64, synced: bool) -> listen::stats::Stats {
    let mut room = opus_file_room(3);
    let spec = outage_listener(first, n);
    room.add_listener(if synced { spec.synced() } else { spec });
    room.run_to_end();
    room.listeners()[0].stats().unwrap()
}

/// Six and nine Opus datagrams lost just as playout starts: the listener knows the round trip from
/// its handshake (and, synchronised, from its clock exchanges) and the stream's step from the
/// Welcome, so it asks for each datagram as soon as it is overdue and gets every one back in
/// time. Without either it would wait for the link to come back, or take 50 ms for the round
/// trip, and give the first ones up.
#[test]
fn an_outage_as_playout_starts_is_resent_in_time() {
    for (first, n) in [(5, 6), (11, 9)] {
        for synced in [false, true] {
            let s = opus_start_outage(first, n, synced);
            let ctx = format!("{n} from {first}, synced {synced}: {s:?}");
            assert_eq!(s.lost, n, "{ctx}");
            assert_eq!(s.recovered_retransmit, n, "{ctx}");
            assert_eq!(s.concealed_ms, 0, "{ctx}");
        }
    }
}

/// Opus from a file at streamd's tick through the link (5 % loss in bursts of
/// 3, 2 % reordering, 1 % duplication; 1 ms each way), 100 ms latency, retransmission only,
/// synchronised: in each of ten seeded 20 s runs at most 0.1 % of the played time concealed.
/// Bursts right as playout starts are among them (seeds 2 and 5), which a listener without the
/// handshake's round trip or the stream's step gave up on.
#[test]
fn opus_at_the_file_tick_through_bursty_loss_conceals_at_most_a_thousandth() {
    let (mut concealed, mut played, mut lost) = (0, 0, 0);
    for seed in 1..=10u64 {
        let mut room = opus_file_room(20);
        room.add_listener(
            ListenerSpec::new()
                .down(Impairment::bursty(seed))
                .delay(ms(1), ms(1))
                .latency(ms(100))
                .synced()
                .sink(Playback::Keep),
        );
        room.run_to_end();
        let s = checked_stats(&room, seed);
        assert!(
            s.concealed_ms * 1000 <= s.played_ms,
            "seed {seed}: concealed {} of {} ms: {s:?}",
            s.concealed_ms,
            s.played_ms
        );
        concealed += s.concealed_ms;
        played += s.played_ms;
        lost += s.lost;
    }
    eprintln!("opus from a file, 200 s: lost {lost}, concealed {concealed} of {played} ms");
    assert!(lost > 200, "lost {lost}");
}

/// FLAC at 20 ms ticks with streamd's default repair at 100 ms (parity 6,1 and
/// retransmission), 1 ms each way: eight datagrams in a row lost from the 10th (107 ms of
/// audio), while the buffer is still filling, so playout starts during the silence. The
/// listener learns of the start from its own playout, expects the next datagram a step after
/// the last one came, and gets every one back before it is due.
#[test]
fn an_outage_while_the_buffer_fills_is_resent_in_time() {
    let mut config = server_config(ms(20));
    config.playout_delay = ms(100);
    config.repair = both();
    let mut room = Room::new(config, SyntheticSource::new(44_100, 2, 44_100 * 3));
    room.endpoint_mut().set_codec(AudioCodec::Flac).unwrap();
    room.add_listener(outage_listener(10, 8));
    room.run_to_end();
    let s = room.listeners()[0].stats().unwrap();
    assert_eq!(s.lost, 8, "{s:?}");
    assert_eq!(s.recovered_fec + s.recovered_retransmit, 8, "{s:?}");
    assert_eq!(s.concealed_ms, 0, "{s:?}");
    let played = room.listeners()[0].played();
    let want = SyntheticSource::samples(2, 0..44_100 * 3);
    assert!(played.samples.as_ref().unwrap() == &want, "{s:?}");
}
