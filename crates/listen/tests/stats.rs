//! Sans-IO tests of the statistics: counters by definition, RFC 3550 jitter against values
//! computed by hand, the JSON contract and the table.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use listen::jitter::PlayoutCounters;
use listen::stats::{Arrival, ExitReason, SEQ_WINDOW, Stats, Tracker, render_table};

fn ms(t0: Instant, m: u64) -> Instant {
    t0 + Duration::from_millis(m)
}

#[test]
fn rfc3550_jitter_matches_hand_computation() {
    // 1 kHz so one frame is one millisecond. ts 0,10,20,30 arrive at 0,12,19,35 ms:
    // transit 0,2,-1,5; |D| = 2,3,6;
    // J1 = 2/16 = 0.125
    // J2 = 0.125 + (3 - 0.125)/16 = 0.3046875
    // J3 = 0.3046875 + (6 - 0.3046875)/16 = 0.66064453125
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 0, t0);
    let arrivals = [(0, 0), (10, 12), (20, 19), (30, 35)];
    let want = [0.0, 0.125, 0.3046875, 0.66064453125];
    for (i, (&(ts, at), w)) in arrivals.iter().zip(want).enumerate() {
        t.on_audio(ms(t0, at), i as u64, ts);
        assert!(
            (t.jitter_ms() - w).abs() < 1e-9,
            "after {i}: {} != {w}",
            t.jitter_ms()
        );
    }
}

#[test]
fn rfc3550_jitter_is_in_timestamp_units_converted_by_rate() {
    // 48 kHz: the same arrival pattern in ms gives the same jitter in ms.
    let t0 = Instant::now();
    let mut t = Tracker::new(48_000, 0, t0);
    for (i, &(ts_ms, at)) in [(0u64, 0u64), (10, 12), (20, 19), (30, 35)]
        .iter()
        .enumerate()
    {
        t.on_audio(ms(t0, at), i as u64, ts_ms * 48);
    }
    assert!((t.jitter_ms() - 0.66064453125).abs() < 1e-6);
}

#[test]
fn perfectly_paced_arrivals_have_zero_jitter() {
    let t0 = Instant::now();
    let mut t = Tracker::new(8000, 0, t0);
    for s in 0..100u64 {
        t.on_audio(ms(t0, 20 * s + 5), s, s * 160);
    }
    assert_eq!(t.jitter_ms(), 0.0);
}

#[test]
fn a_tick_burst_on_a_clean_path_has_zero_jitter_once_ticks_are_known() {
    // 48 kHz, 20 ms ticks of 960 frames, each sent as four 240-frame datagrams at once.
    let t0 = Instant::now();
    let run = |tick_frames: Option<u64>| {
        let mut t = Tracker::new(48_000, 0, t0);
        if let Some(f) = tick_frames {
            t.set_tick_frames(f);
        }
        for tick in 0..50u64 {
            for d in 0..4u64 {
                let seq = tick * 4 + d;
                t.on_audio(ms(t0, 20 * tick + 1), seq, tick * 960 + d * 240);
            }
        }
        t.jitter_ms()
    };
    // Measured against each datagram's own media time, the burst reads as jitter...
    assert!(run(None) > 2.0, "{}", run(None));
    // ... against its tick's, as what it is: none.
    assert_eq!(run(Some(960)), 0.0);
}

#[test]
fn counts_by_definition() {
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 10, t0);
    // Arrival order: 10 11 13 12 12 14 11 17 16 (15 lost, 18-19 lost at the end).
    let order = [10, 11, 13, 12, 12, 14, 11, 17, 16];
    let got: Vec<Arrival> = order.iter().map(|&s| t.on_audio(t0, s, s * 10)).collect();
    use Arrival::{Duplicate as D, New as N};
    assert_eq!(got, [N, N, N, N, D, N, D, N, N]);
    assert_eq!(t.received(), 7);
    assert_eq!(t.expected(), 8); // 10..=17
    t.on_end(Some(19));
    assert_eq!(t.expected(), 10); // trailing loss counted via End.last_seq
    assert_eq!(t.lost(), 3); // 15, 18, 19
    let p = PlayoutCounters {
        late: 1,
        played_frames: 2000,
        concealed_frames: 500,
        underruns: 2,
        ..Default::default()
    };
    let s = Stats::new(&t, &p, ExitReason::Finished);
    assert_eq!(
        (s.expected, s.received, s.lost, s.out_of_order, s.duplicates),
        (10, 7, 3, 2, 2) // out of order: 12 (after 13), 16 (after 17)
    );
    assert_eq!(
        (s.late, s.underruns, s.concealed_ms, s.played_ms),
        (1, 2, 500, 2000)
    );
    let r = t.report([3; proto::TOKEN_LEN], &p, 42);
    assert_eq!(r.token, [3; proto::TOKEN_LEN]);
    // 500 frames at 1000 Hz.
    assert_eq!(r.concealed_ms, 500);
    assert_eq!(
        (
            r.received,
            r.lost,
            r.late,
            r.duplicates,
            r.out_of_order,
            r.highest_seq,
            r.buffered_ms
        ),
        (7, 3, 1, 2, 2, 19, 42)
    );
}

#[test]
fn nothing_lost_gives_exact_zeros() {
    let t0 = Instant::now();
    let mut t = Tracker::new(44_100, 1000, t0);
    for s in 1000..1500u64 {
        t.on_audio(t0, s, (s - 1000) * 349);
    }
    t.on_end(Some(1499));
    let s = Stats::new(&t, &PlayoutCounters::default(), ExitReason::Finished);
    assert_eq!(
        (s.expected, s.received, s.lost, s.out_of_order, s.duplicates),
        (500, 500, 0, 0, 0)
    );
}

#[test]
fn end_with_no_audio_counts_everything_lost() {
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 5, t0);
    assert_eq!(t.expected(), 0);
    t.on_end(Some(9));
    assert_eq!((t.expected(), t.lost()), (5, 5));
    t.on_end(None);
    assert_eq!(t.expected(), 5);
}

#[test]
fn seqs_older_than_the_window_count_as_duplicates_and_window_slides() {
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 0, t0);
    assert_eq!(t.on_audio(t0, 0, 0), Arrival::New);
    assert_eq!(t.on_audio(t0, SEQ_WINDOW + 5, 0), Arrival::New);
    assert_eq!(t.on_audio(t0, 1, 0), Arrival::Duplicate);
    // A seq inside the window that was never seen is new (and out of order) ...
    assert_eq!(t.on_audio(t0, SEQ_WINDOW, 0), Arrival::New);
    // ... and after the window slid past seq 5's slot, seq SEQ_WINDOW+5 is still known.
    assert_eq!(t.on_audio(t0, SEQ_WINDOW + 5, 0), Arrival::Duplicate);
    // Bits of seqs that left the window were cleared: 2*SEQ_WINDOW shares slot 0 with seq 0.
    assert_eq!(t.on_audio(t0, 2 * SEQ_WINDOW, 0), Arrival::New);
    assert_eq!(t.on_audio(t0, 2 * SEQ_WINDOW - 1, 0), Arrival::New);
}

#[test]
fn json_has_the_contract_fields_and_lowercase_reasons() {
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 0, t0);
    t.on_audio(t0, 0, 0);
    for (reason, name) in [
        (ExitReason::Finished, "finished"),
        (ExitReason::Shutdown, "shutdown"),
        (ExitReason::Evicted, "evicted"),
        (ExitReason::Timeout, "timeout"),
        (ExitReason::Interrupted, "interrupted"),
    ] {
        let s = Stats::new(&t, &PlayoutCounters::default(), reason);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        for k in [
            "expected",
            "received",
            "lost",
            "out_of_order",
            "duplicates",
            "late",
            "jitter_ms",
            "underruns",
            "concealed_ms",
            "played_ms",
        ] {
            assert!(v[k].is_number(), "{k} missing or not a number: {v}");
        }
        assert_eq!(v["end_reason"], name);
        assert_eq!(v["received"], 1);
    }
}

#[test]
fn table_shows_counts_and_percentages() {
    let t0 = Instant::now();
    let mut t = Tracker::new(1000, 0, t0);
    for s in [0u64, 1, 3] {
        t.on_audio(t0, s, s);
    }
    let s = Stats::new(&t, &PlayoutCounters::default(), ExitReason::Shutdown);
    let table = render_table(&s);
    assert!(table.contains("lost"), "{table}");
    assert!(table.contains("25.00%"), "{table}"); // 1 of 4 lost
    assert!(table.contains("75.00%"), "{table}"); // 3 of 4 received
    assert!(table.contains("shutdown"), "{table}");
    // Unsynchronised: no clock rows.
    assert!(!table.contains("drift"), "{table}");
    let synced = s.with_sync((-2.5, 120.25, 0.03, 1));
    let table = render_table(&synced);
    for row in ["-2.500 ms", "+120.250 ppm", "0.030 ms", "resyncs"] {
        assert!(table.contains(row), "{row}: {table}");
    }
}
