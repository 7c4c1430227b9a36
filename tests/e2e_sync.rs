//! One room, one clock: the test knobs of `listen` (`--sim-clock-offset`, `--sim-clock-ppm`,
//! `--playout-log`) over the real binaries.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use testkit::playout::when;

/// The tests of this file run one at a time: the playout comparison measures a tenth of a
/// millisecond, which two more streams on a 2-core machine blur.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `realtime_ns,frame` lines of a playout log.
fn read_log(path: &Path) -> Vec<(i128, u64)> {
    testkit::playout::read_log(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The longest run of lines whose real-time gaps match their frame gaps within 1 ms.
fn longest_unbroken(lines: &[(i128, u64)], rate: f64) -> &[(i128, u64)] {
    let mut best = (0, 0);
    let mut start = 0;
    for i in 1..=lines.len() {
        let broken = i == lines.len() || {
            let dt = (lines[i].0 - lines[i - 1].0) as f64 / 1e9;
            let df = (lines[i].1 - lines[i - 1].1) as f64 / rate;
            (dt - df).abs() > 0.001
        };
        if broken {
            if i - start > best.1 - best.0 {
                best = (start, i);
            }
            start = i;
        }
    }
    &lines[best.0..best.1]
}

/// Least-squares slope of frame against real time: frames per real second.
fn frames_per_second(lines: &[(i128, u64)]) -> f64 {
    let (t0, f0) = lines[0];
    let pts: Vec<(f64, f64)> = lines
        .iter()
        .map(|&(t, f)| ((t - t0) as f64 / 1e9, (f - f0) as f64))
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

#[test]
fn sim_clock_options_out_of_range_exit_2_naming_the_value_and_range() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (args, value, range) in [
        (["--sim-clock-ppm", "600"], "600", "[-500, 500]"),
        (["--sim-clock-ppm", "-500.5"], "-500.5", "[-500, 500]"),
        (["--sim-clock-offset", "11s"], "11s", "[-10s, 10s]"),
        (["--sim-clock-offset", "-12s"], "-12s", "[-10s, 10s]"),
    ] {
        let mut all = vec!["--server".to_string(), "127.0.0.1:9".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(&bin("listen"), &all, &[]);
        assert_eq!(p.exit_code(SLOW), 2, "{args:?}: {}", p.stderr());
        let err = p.stderr();
        assert!(
            err.contains(value) && err.contains(range),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_playout_log_runs_at_the_simulated_device_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let mut server = Server::start(&demo_clip(), &["--interval", "20ms"]);
    let knobs = [(-0.3, "-300ms", 400.0, "400"), (2.0, "2s", -250.0, "-250")];
    let mut listeners = Vec::new();
    for (i, (_, off, _, ppm)) in knobs.iter().enumerate() {
        let log = dir.path().join(format!("l{i}.csv"));
        let l = Listener::start(
            server.addr,
            dir.path(),
            &format!("l{i}"),
            &[
                // The device's own rate, not the room's: nothing corrects it.
                "--sync",
                "off",
                "--sim-clock-offset",
                off,
                "--sim-clock-ppm",
                ppm,
                "--playout-log",
                log.to_str().unwrap(),
            ],
        );
        listeners.push((l, log));
    }
    for (i, (l, log)) in listeners.iter_mut().enumerate() {
        assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
        let (spec, _) = l.samples();
        let lines = read_log(log);
        let rate = f64::from(spec.sample_rate);
        // A line at least every 10 ms of playback, frames in order.
        assert!(lines.len() as f64 > 5.0 * 100.0, "{} lines", lines.len());
        for w in lines.windows(2) {
            assert!(w[1].1 > w[0].1, "frames out of order: {w:?}");
            assert!(
                (w[1].1 - w[0].1) as f64 <= rate / 100.0,
                "gap in the log: {w:?}"
            );
        }
        let want = knobs[i].2;
        // A loaded machine can make the device run dry (a pause in the log): the rate is
        // measured over the longest stretch without one.
        let run = longest_unbroken(&lines, rate);
        assert!(
            run.len() as f64 > 3.0 * 200.0,
            "{} lines unbroken",
            run.len()
        );
        let got = (frames_per_second(run) / rate - 1.0) * 1e6;
        assert!((got - want).abs() < 5.0, "device at {got} ppm, knob {want}");
    }
    assert_eq!(server.proc.exit_code(SLOW), 0);
}

/// Writes a `secs` long 48 kHz stereo tone.
fn clip(path: &Path, secs: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for f in 0..48_000 * secs {
        let v = ((f as f64 * 440.0 * std::f64::consts::TAU / 48_000.0).sin() * 8_000.0) as i16;
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

/// p99 of |a − b| (ms) over the frames both logs played after real instant `from` (ns).
fn p99_difference(a: &[(i128, u64)], b: &[(i128, u64)], from: i128) -> (f64, usize) {
    let mut diffs: Vec<f64> = a
        .iter()
        .filter(|l| l.0 > from)
        .filter_map(|&(t, f)| when(b, 48_000, f).map(|u| (t as f64 - u).abs() / 1e6))
        .collect();
    diffs.sort_by(f64::total_cmp);
    let n = diffs.len();
    (diffs.get(n * 99 / 100).copied().unwrap_or(f64::MAX), n)
}

/// Three listeners on skewed, offset clocks, joined a second apart, `--latency 50ms` and no
/// other option (synchronised playout is the default): after 5 s of convergence, their
/// playout logs agree on every common frame within 0.2 ms (p99) over two minutes; each one's
/// drift is its knob within 2 ppm, its clock offset the knob within a millisecond, and a
/// clean loopback costs no underrun, no concealment and reads a jitter far below the delay.
#[test]
fn three_listeners_on_skewed_clocks_play_in_step() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let file = dir.path().join("clip.wav");
    clip(&file, 125);
    let mut server = Server::start(&file, &["--interval", "20ms", "--latency", "50ms"]);
    let knobs = [
        ("0.4s", 400.0, "-120", -120.0),
        ("-0.3s", -300.0, "80", 80.0),
        ("0s", 0.0, "150", 150.0),
    ];
    let mut listeners = Vec::new();
    let mut started = Vec::new();
    let mut joined_at = 0;
    for (i, (off, _, ppm, _)) in knobs.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        joined_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let log = dir.path().join(format!("s{i}.csv"));
        started.push(std::time::Instant::now());
        let l = Listener::start(
            server.addr,
            dir.path(),
            &format!("s{i}"),
            &[
                "--latency",
                "50ms",
                "--sim-clock-offset",
                off,
                "--sim-clock-ppm",
                ppm,
                "--playout-log",
                log.to_str().unwrap(),
            ],
        );
        listeners.push((l, log));
    }
    let mut logs = Vec::new();
    for (i, (l, log)) in listeners.iter_mut().enumerate() {
        assert_eq!(l.proc.exit_code(SLOW * 10), 0, "{}", l.proc.stderr());
        let s = l.stats();
        eprintln!("listener {i}: {s}");
        let (_, offset_ms, _, ppm) = knobs[i];
        let drift = s["drift_ppm"].as_f64().unwrap();
        assert!((drift - ppm).abs() < 2.0, "listener {i}: drift {drift} ppm");
        // The knob sets the offset at the listener's start; its skew adds to it since, over
        // the run (its exit is known to within the two seconds of joins).
        let ran = started[i].elapsed().as_secs_f64();
        let want = offset_ms + ppm * 1e-6 * ran * 1e3;
        let offset = s["clock_offset_ms"].as_f64().unwrap();
        assert!(
            (offset - want).abs() < 1.0,
            "listener {i}: clock offset {offset} ms, {want} ms expected"
        );
        assert_eq!(s["underruns"], 0, "listener {i}: {s}");
        assert_eq!(s["concealed_ms"], 0, "listener {i}: {s}");
        assert_eq!(s["resyncs"], 0, "listener {i}: {s}");
        let jitter = s["jitter_ms"].as_f64().unwrap();
        // On loopback the jitter is how late the processes get the CPU: 0.15–0.37 ms beside
        // two busy loops, once 2.4 ms with the rest of the suite beside them too; a tenth of
        // the 50 ms delay would be a wrong estimate, not a busy machine.
        assert!(jitter < 5.0, "listener {i}: jitter {jitter} ms on loopback");
        logs.push(read_log(log));
    }
    let from = joined_at + 5_000_000_000;
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let (p99, n) = p99_difference(&logs[a], &logs[b], from);
        eprintln!("listeners {a} and {b}: playout difference p99 {p99:.3} ms over {n} frames");
        // Lines at least every 10 ms over ~2 minutes.
        assert!(n > 10_000, "{n} common frames");
        assert!(p99 < 0.2, "listeners {a} and {b}: p99 {p99} ms");
    }
    assert_eq!(server.proc.exit_code(SLOW), 0);
    // The server's summary, every 10 s, says how the room is doing from the listeners'
    // reports: the last one with all three in it puts the spread within the same bound.
    let err = server.proc.stderr();
    let spread = err
        .lines()
        .rev()
        .filter_map(|l| {
            l.split("room sync: 3 synchronised listener(s), spread ≤ ")
                .nth(1)
        })
        .find_map(|rest| rest.split(" ms").next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no room sync line with three listeners: {err}"));
    assert!(spread < 0.2, "the server's spread {spread} ms");
}

/// A room delay shorter than the server's interval allows: streamd says so at start, the
/// Welcome carries the floor, and a listener that asked for less says so once and plays in
/// step at the floor.
#[test]
fn a_room_delay_below_the_servers_floor_is_raised_and_said_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let file = dir.path().join("clip.wav");
    clip(&file, 2);
    let mut server = Server::start(&file, &["--interval", "20ms", "--latency", "10ms"]);
    let mut l = Listener::start(server.addr, dir.path(), "l", &["--latency", "10ms"]);
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(server.proc.exit_code(SLOW), 0);
    let said = server.proc.stderr();
    assert!(
        said.contains("--latency 10ms is shorter than a 20ms interval allows"),
        "{said}"
    );
    let heard = l.proc.stderr();
    assert_eq!(
        heard
            .matches("the server cannot keep a shorter playout delay than 25ms")
            .count(),
        1,
        "{heard}"
    );
    assert!(
        heard.contains("in step with the room: each frame plays"),
        "{heard}"
    );
    let s = l.stats();
    assert_eq!(s["end_reason"], "finished", "{s}");
    assert_eq!(s["underruns"], 0, "{s}");
}

/// Eight synchronised listeners of one server on this machine, on its own clock: their clock
/// exchanges queue behind each other's work on two cores, and yet each WAV is the clip's tail
/// sample for sample. Answers drained after a busy wake-up must be stamped when they were
/// received, or they look faster than the network and pull the estimate by milliseconds, and
/// the drift servo drops or repeats frames to follow it.
#[test]
fn eight_synchronised_listeners_on_one_machine_slip_no_frame() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let clip = demo_clip();
    let (_, expected) = streamd::source::decode_all(&clip).unwrap();
    let dir = tempdir();
    let mut server = Server::start(&clip, &[]);
    let mut listeners: Vec<Listener> = (0..8)
        .map(|i| Listener::start(server.addr, dir.path(), &format!("l{i}"), &[]))
        .collect();
    for l in &mut listeners {
        assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    }
    assert_eq!(server.proc.exit_code(SLOW), 0);
    for (i, l) in listeners.iter().enumerate() {
        let s = l.stats();
        assert_eq!(s["end_reason"], "finished", "listener {i}: {s}");
        assert_eq!(stat(&s, "concealed_ms"), 0, "listener {i}: {s}");
        assert_eq!(stat(&s, "resyncs"), 0, "listener {i}: {s}");
        let (_, got) = l.samples();
        // Joined at the start, give or take a synchronised start's skip.
        assert!(
            got.len() >= expected.len() * 3 / 4 && got.len() <= expected.len(),
            "listener {i}: {} of {} samples: {s}",
            got.len(),
            expected.len()
        );
        let tail = &expected[expected.len() - got.len()..];
        assert_eq!(
            first_difference(&got, tail),
            None,
            "listener {i} slipped: {s}"
        );
    }
}
