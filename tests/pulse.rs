//! The headless-audio harness itself: a known tone played with `pacat` through a private
//! PulseAudio pipe sink comes out sample for sample and takes real time; the guard leaves no
//! process behind. Skipped loudly where PulseAudio is missing, unless `EARSHOT_REQUIRE_PULSE`
//! is set (CI), where that is a failure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use testkit::pulse::{
    Pulse, SINK_NAME, SinkClock, alsa_pulse_plugin_available, pulse_available, trim_silence,
};

/// True when the test may run; prints why not otherwise.
fn pulse_or_skip(test: &str) -> bool {
    match pulse_available() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
                "EARSHOT_REQUIRE_PULSE is set but PulseAudio is unavailable: {why}"
            );
            eprintln!("\n!!!!! SKIPPED {test}: no PulseAudio here: {why} !!!!!\n");
            false
        }
    }
}

/// A deterministic tone: 440 Hz, a different phase per channel, never exactly zero (so its
/// ends are found exactly in the sink's silence).
fn tone(rate: u32, channels: u16, frames: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(frames * usize::from(channels));
    for n in 0..frames {
        for c in 0..channels {
            let t = n as f64 / f64::from(rate);
            let v = (9000.0 * (2.0 * std::f64::consts::PI * 440.0 * t + f64::from(c) + 0.3).sin())
                .round() as i16;
            out.push(if v == 0 { 1 } else { v });
        }
    }
    out
}

/// Plays `samples` with pacat through `pulse`; returns how long pacat took.
fn play(pulse: &Pulse, samples: &[i16]) -> Duration {
    let path = pulse.dir().join("tone.raw");
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    let t0 = Instant::now();
    let st = pulse
        .command("pacat")
        .args(["--playback", "--raw", "--format=s16le"])
        .arg(format!("--rate={}", pulse.rate()))
        .arg(format!("--channels={}", pulse.channels()))
        .arg(format!("--device={SINK_NAME}"))
        .arg(&path)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "pacat failed ({st}); log: {}",
        pulse.log_tail()
    );
    t0.elapsed()
}

fn round_trip(rate: u32, channels: u16, secs: f64) {
    let frames = (f64::from(rate) * secs) as usize;
    let sent = tone(rate, channels, frames);
    let pulse = Pulse::start(rate, channels).unwrap();
    let took = play(&pulse, &sent);
    let captured = pulse.stop_and_read().unwrap();
    let played = trim_silence(&captured, channels);
    assert_eq!(played.len(), sent.len(), "captured length in samples");
    assert!(
        played == sent.as_slice(),
        "captured samples differ from the tone"
    );
    // Real time: pacat returns once drained, so never much sooner than the audio lasts;
    // the upper bound only guards against a hang on a loaded machine.
    let want = Duration::from_secs_f64(secs);
    assert!(
        took >= want.mul_f64(0.8),
        "played {want:?} of audio in {took:?}"
    );
    assert!(
        took <= want + Duration::from_secs(8),
        "took {took:?} for {want:?}"
    );
}

#[test]
fn tone_is_captured_sample_exact_in_real_time_44k_stereo() {
    if pulse_or_skip("tone_is_captured_sample_exact_in_real_time_44k_stereo") {
        round_trip(44_100, 2, 1.5);
    }
}

#[test]
fn tone_is_captured_sample_exact_in_real_time_48k_mono() {
    if pulse_or_skip("tone_is_captured_sample_exact_in_real_time_48k_mono") {
        round_trip(48_000, 1, 1.0);
    }
}

#[test]
fn the_timed_reader_captures_sample_exact_and_finds_the_sinks_clock() {
    if !pulse_or_skip("the_timed_reader_captures_sample_exact_and_finds_the_sinks_clock") {
        return;
    }
    const RATE: u32 = 44_100;
    let sent = tone(RATE, 2, RATE as usize * 2);
    let pulse = Pulse::start_timed(RATE, 2).unwrap();
    let took = play(&pulse, &sent);
    let got = pulse.stop_and_read_timed().unwrap();
    assert!(
        trim_silence(&got.samples, 2) == sent.as_slice(),
        "captured samples differ from the tone"
    );
    // The reads cover the capture in order, with no gap or overlap, at rising instants.
    let mut next = 0;
    for w in got.reads.windows(2) {
        assert!(w[1].realtime_ns >= w[0].realtime_ns, "{w:?}");
    }
    for r in &got.reads {
        assert_eq!(r.first_byte, next, "{r:?}");
        next += r.bytes;
    }
    assert_eq!(next, got.samples.len() as u64 * 2);
    // The sink ran on the system clock for at least as long as the tone played: its fitted
    // rate is the nominal one within its microsecond rounding (+41 ppm with 1,024-frame
    // blocks) and the reader's noise over a few seconds.
    let clock = SinkClock::fit(&got.reads, RATE, 2).unwrap();
    eprintln!("{clock:?} (pacat took {took:?})");
    assert!(clock.rate_error_ppm().abs() < 500.0, "{clock:?}");
    assert!(clock.block_frames > 0 && clock.writes > 20, "{clock:?}");
    // Its frame at the start of the capture's last second played about a second before the
    // last write came out.
    let frames = got.samples.len() as u64 / 2;
    let last = got.reads.last().unwrap().realtime_ns as f64;
    let gap = (last - clock.played_at(frames - u64::from(RATE))) / 1e9;
    assert!((0.5..1.5).contains(&gap), "{gap} s");
}

#[test]
fn dropping_a_timed_guard_stops_its_daemon_and_reader() {
    if !pulse_or_skip("dropping_a_timed_guard_stops_its_daemon_and_reader") {
        return;
    }
    let pulse = Pulse::start_timed(44_100, 2).unwrap();
    let (Some(daemon), None) = pulse.pids() else {
        panic!("the daemon runs, the reader is a thread");
    };
    let dir = pulse.dir().to_path_buf();
    // Returns only once the reader thread has ended.
    drop(pulse);
    assert!(
        !std::path::PathBuf::from(format!("/proc/{daemon}")).exists(),
        "daemon {daemon} still there"
    );
    assert!(!dir.exists(), "temp dir removed");
}

#[test]
fn dropping_the_guard_stops_exactly_its_processes() {
    if !pulse_or_skip("dropping_the_guard_stops_exactly_its_processes") {
        return;
    }
    let pulse = Pulse::start(44_100, 2).unwrap();
    let (Some(daemon), Some(reader)) = pulse.pids() else {
        panic!("both processes must be running");
    };
    let proc_dir = |pid: u32| std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir(daemon).exists() && proc_dir(reader).exists());
    let dir = pulse.dir().to_path_buf();
    drop(pulse);
    assert!(!proc_dir(daemon).exists(), "daemon {daemon} still there");
    assert!(!proc_dir(reader).exists(), "reader {reader} still there");
    assert!(!dir.exists(), "temp dir removed");
}

/// Every `libasound_module_pcm_pulse.so` under /usr/lib, at most three folders deep: found here
/// independently of the harness, by walking the tree.
fn pulse_plugins() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, depth: u32, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() && depth > 0 {
                walk(&p, depth - 1, out);
            } else if p
                .file_name()
                .is_some_and(|n| n == "libasound_module_pcm_pulse.so")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/usr/lib"), 3, &mut out);
    out
}

#[test]
fn the_alsa_plugin_check_agrees_with_the_file_system() {
    let found = pulse_plugins();
    match alsa_pulse_plugin_available() {
        Ok(()) => {
            // The plugin the check saw is a real shared object ALSA can load.
            assert!(
                !found.is_empty(),
                "the check passed, but no plugin is under /usr/lib"
            );
            for p in &found {
                let head = std::fs::read(p).unwrap();
                assert_eq!(
                    &head[..4],
                    b"\x7fELF",
                    "{} is not a shared object",
                    p.display()
                );
            }
        }
        Err(why) => {
            assert!(
                found.is_empty(),
                "the check failed ({why}) though {found:?} exist"
            );
            assert!(why.contains("libasound2-plugins"), "{why}");
            assert!(
                std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
                "EARSHOT_REQUIRE_PULSE is set but {why}"
            );
        }
    }
}
