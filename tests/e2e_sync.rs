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

/// Writes a 20 s 48 kHz stereo tone: long enough for the clocks to settle, short for the suite.
fn clip(path: &Path) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for f in 0..48_000 * 20u32 {
        let v = ((f as f64 * 440.0 * std::f64::consts::TAU / 48_000.0).sin() * 8_000.0) as i16;
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn two_listeners_on_skewed_clocks_play_in_step() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let file = dir.path().join("clip.wav");
    clip(&file);
    let mut server = Server::start(&file, &["--interval", "20ms", "--latency", "50ms"]);
    let knobs = [("0.4s", "-120", -120.0), ("-0.3s", "150", 150.0)];
    let mut listeners = Vec::new();
    for (i, (off, ppm, _)) in knobs.iter().enumerate() {
        let log = dir.path().join(format!("s{i}.csv"));
        let l = Listener::start(
            server.addr,
            dir.path(),
            &format!("s{i}"),
            &[
                "--sync",
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
        assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
        let s = l.stats();
        let drift = s["drift_ppm"].as_f64().unwrap();
        eprintln!("listener {i}: {s}");
        // The estimate over this ~25 s clip has come within 0.1–2.2 ppm of the knob; 3 ppm
        // still fails an estimate that has not converged (a wrong sign or a missing rate).
        assert!(
            (drift - knobs[i].2).abs() < 3.0,
            "listener {i}: drift {drift} ppm"
        );
        logs.push(read_log(log));
    }
    // Over the last 5 s of the clip, the same frame leaves both outputs at the same instant.
    // (The servo slews at most 0.1 %: a first estimate a few ms off, made after three
    // exchanges, takes seconds to work off, so the first 15 s are not held to the bound.)
    let t0 = logs[0].last().map_or(0, |l| l.0) - 5_000_000_000;
    let mut diffs: Vec<f64> = logs[0]
        .iter()
        .filter(|l| l.0 > t0)
        .filter_map(|&(t, f)| when(&logs[1], 48_000, f).map(|u| (t as f64 - u).abs() / 1e6))
        .collect();
    assert!(diffs.len() > 500, "{} common frames", diffs.len());
    diffs.sort_by(f64::total_cmp);
    let p99 = diffs[diffs.len() * 99 / 100];
    eprintln!(
        "playout difference p99 {p99:.3} ms over {} frames",
        diffs.len()
    );
    assert!(p99 < 0.2, "p99 {p99} ms");
    assert_eq!(server.proc.exit_code(SLOW), 0);
}
