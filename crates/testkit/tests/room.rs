//! The simulated room (`testkit::room`): one streamd endpoint, many listen sessions, a simulated
//! network, one simulated clock. Statistics against the network's own account, playback
//! sample for sample, the ends of a stream (finished, shutdown, eviction), capacity, the
//! handshake under loss, and determinism.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use listen::{Event, ExitReason};
use nix::sys::resource::UsageWho;
use proto::{EndReason, MessageType, RejectReason};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use streamd::endpoint::{Event as ServerEvent, StartMode};
use testkit::impair::Impairment;
use testkit::procfs::own_cpu;
use testkit::room::{
    ListenerSpec, NetCounts, Playback, Room, RoomOutcome, SyntheticSource, listener_addr,
    server_config,
};

const RATE: u32 = 48_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn thread_cpu() -> Duration {
    own_cpu(UsageWho::RUSAGE_THREAD)
}

fn lossy(seed: u64) -> Impairment {
    Impairment {
        loss: 0.03,
        burst: Some(2.5),
        jitter: ms(30),
        reorder: 0.02,
        dup: 0.01,
        seed,
        impair_control: false,
    }
}

fn uplink_loss(seed: u64) -> Impairment {
    Impairment {
        loss: 0.02,
        seed: seed ^ 0xabcd,
        ..Impairment::none()
    }
}

/// The frames the server streamed (what a listener still there at the end was due).
fn frames_sent<S: streamd::endpoint::AudioSource>(room: &Room<S>) -> u64 {
    room.endpoint().stats().frames
}

/// One hour at 48 kHz stereo with a 20 ms interval, ten listeners joining and leaving at
/// seeded random instants, over lossy paths both ways: every listener's statistics equal the
/// network's account exactly, and those that stayed to the end equal the impairment link's own
/// report and played the whole tail.
#[test]
fn an_hour_of_ten_listeners_coming_and_going_matches_the_network_exactly() {
    let cpu0 = thread_cpu();
    let hour = 3600u64;
    let total = u64::from(RATE) * hour;
    let mut config = server_config(ms(20));
    config.start = StartMode::Now;
    let mut room = Room::new(config, SyntheticSource::new(RATE, 2, total));
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut stays = Vec::new();
    for i in 0..10u64 {
        let join = secs(rng.next_u64() % 3000) + ms(rng.next_u64() % 1000);
        // Half stay to the end; the others leave after 1 to 15 minutes.
        let stay = i % 2 == 0;
        let mut spec = ListenerSpec::new()
            .join_at(join)
            .down(lossy(100 + i))
            .up(uplink_loss(100 + i))
            .delay(ms(5 + rng.next_u64() % 40), ms(5 + rng.next_u64() % 40))
            // Above the 30 ms jitter plus the link's 100 ms reorder hold: nothing is late.
            .latency(ms(400));
        if !stay {
            spec = spec.leave_at(join + secs(60 + rng.next_u64() % 840));
        }
        stays.push(stay);
        room.add_listener(spec);
    }
    let end = room.run_to_end();
    let cpu = thread_cpu() - cpu0;
    eprintln!("one simulated hour, 10 listeners: {cpu:?} of CPU (simulated end {end:?})");

    assert_eq!(room.endpoint().end_reason(), Some(EndReason::Finished));
    assert_eq!(frames_sent(&room), total);
    assert_eq!(room.stray(), 0);
    let (mut dropped, mut dups, mut ooo) = (0, 0, 0);
    for (l, &stay) in room.listeners().iter().zip(&stays) {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(Some(NetCounts::of(&stats)), l.net_counts(), "{ctx}");
        assert_eq!(stats.late, 0, "{ctx}");
        assert!(stats.expected > 1000, "{ctx}");
        let a = &l.down().link.audio;
        dropped += a.dropped_seqs.len();
        dups += a.duplicates;
        ooo += a.out_of_order;
        if stay {
            // Everything the link let go arrived while the session counted: the listener's
            // numbers are the link's own report.
            assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
            let start = l.welcome().unwrap().start_seq;
            let last = l.end().unwrap().last_seq.unwrap();
            assert_eq!(stats.expected, last - start + 1, "{ctx}");
            assert_eq!(stats.received, a.unique_sent, "{ctx}");
            assert_eq!(stats.lost, a.lost_between(start, last), "{ctx}");
            assert_eq!(stats.duplicates, a.duplicates, "{ctx}");
            assert_eq!(stats.out_of_order, a.out_of_order, "{ctx}");
            let start_ts = l.welcome().unwrap().start_ts;
            assert_eq!(l.played().frames, total - start_ts, "the whole tail: {ctx}");
        } else {
            assert_eq!(l.exit_reason(), Some(ExitReason::Interrupted), "{ctx}");
        }
    }
    assert!(
        dropped > 0 && dups > 0 && ooo > 0,
        "the network did nothing: dropped {dropped} dup {dups} ooo {ooo}"
    );
}

/// A clean path with asymmetric delays: every listener plays the stream sample for sample
/// from its join point to the end of the file and ends `finished`.
#[test]
fn a_clean_path_plays_every_sample_from_the_join_point_to_the_end() {
    let total = u64::from(RATE) * 10 + 123;
    let mut room = Room::new(server_config(ms(20)), SyntheticSource::new(RATE, 2, total));
    for (join, down, up) in [(0, 10, 30), (1300, 80, 5), (4700, 0, 0), (9900, 25, 25)] {
        room.add_listener(
            ListenerSpec::new()
                .join_at(ms(join))
                .delay(ms(down), ms(up))
                .sink(Playback::Keep),
        );
    }
    room.run_to_end();
    assert_eq!(room.endpoint().end_reason(), Some(EndReason::Finished));
    assert!(room.endpoint().is_closed());
    for l in room.listeners() {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Finished), "{ctx}");
        let w = l.welcome().unwrap();
        let played = l.played();
        let want = SyntheticSource::samples(2, w.start_ts..total);
        assert_eq!(played.samples.as_ref().unwrap().len(), want.len(), "{ctx}");
        assert!(played.samples.as_ref().unwrap() == &want, "{ctx}");
        assert_eq!(
            played.hash,
            Some(SyntheticSource::hash(2, w.start_ts..total))
        );
        let last = l.end().unwrap().last_seq.unwrap();
        assert_eq!(stats.expected, last - w.start_seq + 1, "{ctx}");
        assert_eq!(
            (stats.lost, stats.duplicates, stats.out_of_order, stats.late),
            (0, 0, 0, 0),
            "{ctx}"
        );
        assert_eq!((stats.underruns, stats.concealed_ms), (0, 0), "{ctx}");
        let kinds: Vec<&str> = l
            .events()
            .iter()
            .map(|(_, e)| match e {
                Event::Challenged => "challenged",
                Event::Joined(_) => "joined",
                Event::Playing { .. } => "playing",
                Event::EndReceived { .. } => "end",
                Event::Ended(_) => "ended",
                _ => "other",
            })
            .collect();
        // A listener joining in the last 120 ms (the jitter buffer's start threshold) starts
        // playing on the End rather than before it.
        assert_eq!(kinds.len(), 5, "{ctx}");
        assert_eq!(kinds[..2], ["challenged", "joined"], "{ctx}");
        assert!(
            kinds.contains(&"playing") && kinds.contains(&"end"),
            "{ctx}"
        );
        assert_eq!(kinds[4], "ended", "{ctx}");
    }
    // The first listener's join started the stream: it heard it from frame 0.
    assert_eq!(room.listeners()[0].welcome().unwrap().start_ts, 0);
}

/// The server's shutdown ends every listener `shutdown`, with an `End` whose `last_seq` is the
/// last Audio sent; a join during the ending is refused.
#[test]
fn shutdown_ends_every_listener_with_the_last_seq_sent() {
    let mut room = Room::new(server_config(ms(20)), SyntheticSource::endless(RATE, 2))
        .listener(ListenerSpec::new().delay(ms(3), ms(3)).sink(Playback::Hash))
        .listener(
            ListenerSpec::new()
                .join_at(ms(2500))
                .delay(ms(40), ms(10))
                .down(lossy(5))
                .latency(ms(400)),
        )
        .listener(ListenerSpec::new().join_at(ms(6000)).delay(ms(1), ms(60)))
        // During the ending (End copies go out until 7.6 s).
        .listener(ListenerSpec::new().join_at(ms(7520)))
        .shutdown_at(ms(7500));
    room.run_to_end();
    let ep = room.endpoint();
    assert_eq!(ep.end_reason(), Some(EndReason::Shutdown));
    let seq = room
        .server_events()
        .iter()
        .find_map(|(t, e)| match e {
            ServerEvent::Ending {
                reason: EndReason::Shutdown,
                seq,
                listeners: 3,
            } => Some((*t, *seq)),
            _ => None,
        })
        .unwrap();
    assert_eq!(seq.0, ms(7500));
    assert_eq!(seq.1, ep.stats().audio_datagrams);
    let out = room.outcome();
    assert_eq!(out.server.closed_at, Some(ms(7600)));
    for l in &room.listeners()[..3] {
        let stats = l.stats().unwrap();
        let ctx = format!("listener {}: {stats:?}", l.index());
        assert_eq!(l.exit_reason(), Some(ExitReason::Shutdown), "{ctx}");
        let end = l.end().unwrap();
        assert_eq!(end.reason, EndReason::Shutdown);
        assert_eq!(end.last_seq, Some(seq.1 - 1), "{ctx}");
        assert_eq!(
            stats.expected,
            seq.1 - l.welcome().unwrap().start_seq,
            "{ctx}"
        );
        assert_eq!(Some(NetCounts::of(&stats)), l.net_counts(), "{ctx}");
    }
    let first = &room.listeners()[0];
    assert_eq!(
        first.played().hash,
        Some(SyntheticSource::hash(2, 0..frames_sent(&room))),
        "the first listener played everything sent"
    );
    let late = &room.listeners()[3];
    assert!(
        late.events()
            .iter()
            .any(|(_, e)| *e == Event::Rejected(RejectReason::ShuttingDown)),
        "{:?}",
        late.events()
    );
    assert_eq!(late.exit_reason(), None);
}

/// A listener whose uplink dies is evicted a client timeout after the server last heard it
/// (within one housekeeping period), and so is one that vanishes; the others play on.
#[test]
fn a_silent_listener_is_evicted_after_the_client_timeout_the_others_undisturbed() {
    let config = server_config(ms(20));
    let timeout = config.client_timeout;
    let mut room = Room::new(config, SyntheticSource::endless(RATE, 2))
        .listener(ListenerSpec::new().delay(ms(7), ms(3)).sink(Playback::Hash))
        .listener(
            ListenerSpec::new()
                .join_at(ms(500))
                .delay(ms(12), ms(21))
                .cut_uplink_at(ms(3300)),
        )
        .listener(ListenerSpec::new().join_at(ms(800)).vanish_at(ms(4100)))
        .listener(ListenerSpec::new().join_at(ms(1000)).sink(Playback::Hash))
        .shutdown_at(secs(16));
    room.run_to_end();
    let evicted_at = |i: usize| {
        room.server_events()
            .iter()
            .find_map(|(t, e)| match e {
                ServerEvent::Evicted { addr } if *addr == listener_addr(i) => Some(*t),
                _ => None,
            })
            .unwrap()
    };
    let housekeeping = streamd::endpoint::HOUSEKEEPING;
    for i in [1, 2] {
        let l = &room.listeners()[i];
        let heard = l.heard_by_server().unwrap();
        let t = evicted_at(i);
        assert!(
            t > heard + timeout && t <= heard + timeout + housekeeping,
            "listener {i}: last heard {heard:?}, evicted {t:?}"
        );
    }
    // The uplink died at 3.3 s; the last Report before it left at 3.x s.
    assert!(room.listeners()[1].heard_by_server().unwrap() <= ms(3300 + 21));
    let cut = &room.listeners()[1];
    assert_eq!(cut.exit_reason(), Some(ExitReason::Evicted));
    let end_at = cut
        .event_time(|e| {
            matches!(
                e,
                Event::EndReceived {
                    reason: ExitReason::Evicted,
                    ..
                }
            )
        })
        .unwrap();
    assert_eq!(
        end_at,
        evicted_at(1) + ms(12),
        "End{{Evicted}} one way later"
    );
    assert!(cut.up().cut > 0);
    let gone = &room.listeners()[2];
    assert!(gone.vanished());
    assert_eq!(gone.exit_reason(), None);
    assert_eq!(room.endpoint().stats().sessions.evicted, 2);
    for i in [0, 3] {
        let l = &room.listeners()[i];
        let stats = l.stats().unwrap();
        assert_eq!(l.exit_reason(), Some(ExitReason::Shutdown));
        assert_eq!((stats.lost, stats.underruns, stats.concealed_ms), (0, 0, 0));
        let start = l.welcome().unwrap().start_ts;
        assert_eq!(
            l.played().hash,
            Some(SyntheticSource::hash(2, start..frames_sent(&room))),
            "listener {i} played every sample"
        );
    }
}

/// Three slots, five listeners: two are refused `Full`; a slot freed by a `Leave` is taken
/// by a later joiner.
#[test]
fn capacity_refuses_beyond_max_clients_and_a_freed_slot_is_taken() {
    let mut config = server_config(ms(20));
    config.max_clients = 3;
    let mut room = Room::new(config, SyntheticSource::endless(RATE, 2));
    for i in 0..5 {
        let mut spec = ListenerSpec::new().join_at(ms(10 * i)).delay(ms(4), ms(4));
        if i == 0 {
            spec = spec.leave_at(secs(2));
        }
        room.add_listener(spec);
    }
    room.add_listener(ListenerSpec::new().join_at(secs(3)));
    let mut room = room.shutdown_at(secs(5));
    room.run_to_end();
    let full = Event::Rejected(RejectReason::Full { max_clients: 3 });
    for (i, l) in room.listeners().iter().enumerate() {
        let rejected = l.events().iter().any(|(_, e)| *e == full);
        assert_eq!(rejected, i == 3 || i == 4, "listener {i}: {:?}", l.events());
        assert_eq!(l.joined_at().is_some(), !rejected, "listener {i}");
    }
    assert_eq!(
        room.listeners()[0].exit_reason(),
        Some(ExitReason::Interrupted)
    );
    for i in [1, 2, 5] {
        assert_eq!(
            room.listeners()[i].exit_reason(),
            Some(ExitReason::Shutdown),
            "listener {i}"
        );
    }
    let s = room.endpoint().stats();
    assert_eq!(
        (s.sessions.accepted, s.sessions.rejected, s.sessions.left),
        (4, 2, 1)
    );
    assert_eq!(s.peak_listeners, 3);
}

/// Dropping exactly the Challenge, the Join or the Welcome: the handshake retries at the
/// session's backoff instant and joins then.
#[test]
fn the_handshake_survives_a_lost_challenge_join_or_welcome() {
    let (down, up) = (ms(10), ms(30));
    let rtt = down + up;
    let retry = listen::session::HANDSHAKE_RETRY_FIRST;
    let join = ms(1000);
    let cases = [
        (None, None, 2 * rtt),
        (Some(MessageType::Challenge), None, retry + 2 * rtt),
        (None, Some(MessageType::Join), retry + rtt),
        (Some(MessageType::Welcome), None, retry + rtt),
    ];
    for (drop_down, drop_up, after) in cases {
        let mut spec = ListenerSpec::new()
            .join_at(join)
            .delay(down, up)
            .sink(Playback::Hash);
        if let Some(t) = drop_down {
            spec = spec.drop_down(t, 0);
        }
        if let Some(t) = drop_up {
            spec = spec.drop_up(t, 0);
        }
        let mut room = Room::new(server_config(ms(20)), SyntheticSource::endless(RATE, 2))
            .listener(spec)
            .shutdown_at(secs(3));
        room.run_to_end();
        let l = &room.listeners()[0];
        let ctx = format!("dropping {drop_down:?}/{drop_up:?}: {:?}", l.events());
        assert_eq!(l.joined_at(), Some(join + after), "{ctx}");
        let scripted = l.down().scripted_drops + l.up().scripted_drops;
        assert_eq!(
            scripted,
            u64::from(drop_down.is_some() || drop_up.is_some())
        );
        assert_eq!(l.exit_reason(), Some(ExitReason::Shutdown), "{ctx}");
        let stats = l.stats().unwrap();
        assert_eq!(Some(NetCounts::of(&stats)), l.net_counts(), "{ctx}");
        assert_eq!((stats.lost, stats.underruns), (0, 0), "{ctx}");
        let start = l.welcome().unwrap().start_ts;
        assert_eq!(
            l.played().hash,
            Some(SyntheticSource::hash(2, start..frames_sent(&room))),
            "{ctx}"
        );
    }
}

/// Two minutes, four listeners coming and going over lossy paths both ways.
fn scenario(seed: u64) -> RoomOutcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut room = Room::new(
        server_config(ms(20)),
        SyntheticSource::new(RATE, 2, u64::from(RATE) * 120),
    );
    for i in 0..4 {
        let join = ms(rng.next_u64() % 60_000);
        let mut spec = ListenerSpec::new()
            .join_at(join)
            .down(lossy(seed * 10 + i))
            .up(uplink_loss(seed * 10 + i))
            .delay(ms(rng.next_u64() % 50), ms(rng.next_u64() % 50))
            .sink(Playback::Hash);
        if i % 2 == 1 {
            spec = spec.leave_at(join + ms(rng.next_u64() % 60_000));
        }
        room.add_listener(spec);
    }
    room.run_to_end();
    room.outcome()
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let a = scenario(7);
    let b = scenario(7);
    assert!(a == b, "same seed, different runs");
    assert!(a.listeners.iter().all(|l| l.stats.is_some()));
    let c = scenario(8);
    assert!(a != c, "another seed, the same run");
}

/// Listeners evicted at the same housekeeping are evicted (and logged) in the same order in
/// every run: the server's listener table is a hash map with per-instance random keys.
#[test]
fn simultaneous_evictions_happen_in_the_same_order_every_run() {
    let run = || {
        let mut room = Room::new(server_config(ms(20)), SyntheticSource::endless(RATE, 2));
        for _ in 0..6 {
            room.add_listener(ListenerSpec::new().vanish_at(secs(1)));
        }
        room.add_listener(ListenerSpec::new());
        let mut room = room.shutdown_at(secs(8));
        room.run_to_end();
        room.outcome()
    };
    let first = run();
    let evicted: Vec<_> = first
        .server
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ServerEvent::Evicted { .. }))
        .collect();
    assert_eq!(evicted.len(), 6);
    assert!(
        evicted.iter().all(|(t, _)| *t == evicted[0].0),
        "{evicted:?}"
    );
    for _ in 0..4 {
        assert!(run() == first, "another run, another order");
    }
}
