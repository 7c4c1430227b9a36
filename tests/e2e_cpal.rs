//! The real cpal path, headless: `listen` plays to the default ALSA device, which a private
//! PulseAudio routes into a pipe sink at the stream's rate. What the "sound card" received must
//! equal the stream sample for sample, and playing must take real time. With the sink at
//! another rate than the stream's, the tone that comes out must keep its frequency and level.
//! A listener's playout log (`--playout-log`) must say when the device really played each
//! frame, within 2 ms (5 ms in the 2 s after the sound server broke its output, starved, while
//! its reported latency settles). The tests take the device one at a time. Skipped loudly
//! where PulseAudio is missing, unless `EARSHOT_REQUIRE_PULSE` is set (`cargo xtask test`
//! sets it).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use testkit::playout::{read_log, when};
use testkit::pulse::{
    Pulse, SinkClock, alsa_pulse_plugin_available, pulse_available, trim_silence,
};

/// One real-time audio test at a time: three PulseAudio servers, servers and listeners on a
/// 2-core machine starve each other, and a starved sound server inserts silence.
static DEVICE: Mutex<()> = Mutex::new(());

/// The device, held for the whole test, when the headless audio path is here; prints why not
/// otherwise (a failure where `EARSHOT_REQUIRE_PULSE` is set).
fn audio_path_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    match pulse_available().and_then(|()| alsa_pulse_plugin_available()) {
        // A test that failed while holding it leaves nothing behind that matters here.
        Ok(()) => Some(DEVICE.lock().unwrap_or_else(PoisonError::into_inner)),
        Err(why) => {
            assert!(
                std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
                "EARSHOT_REQUIRE_PULSE is set but the headless audio path is unavailable: {why}"
            );
            eprintln!("\n!!!!! SKIPPED {test}: {why} !!!!!\n");
            None
        }
    }
}

#[test]
fn playback_through_cpal_is_sample_exact_and_real_time() {
    let Some(_device) = audio_path_or_skip("playback_through_cpal_is_sample_exact_and_real_time")
    else {
        return;
    };
    let file = fixture("stereo44.flac");
    let (info, expected) = streamd::source::decode_all(&file).unwrap();
    let duration = expected.len() as f64 / f64::from(info.channels) / f64::from(info.sample_rate);
    let pulse = Pulse::start(info.sample_rate, info.channels).unwrap();
    let envs: Vec<(String, String)> = pulse
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();

    let mut server = Server::start(&file, &[]);
    let dir = tempdir();
    let json = dir.path().join("stats.json");
    let args: Vec<String> = vec![
        "--server".into(),
        server.addr.to_string(),
        "--stats-json".into(),
        json.display().to_string(),
        "--quiet".into(),
        // The card's own clock, uncorrected: a synchronised listener keeps a card in step
        // with the server by slipping single frames, which a sample-exact capture would count
        // as differences (the playout-log test below covers synchronised playout on a card).
        "--sync".into(),
        "off".into(),
    ];
    let started = Instant::now();
    let mut listen = Proc::spawn(&bin("listen"), &args, &envs);
    let code = listen.exit_code(SLOW);
    let took = started.elapsed();
    assert_eq!(
        code,
        0,
        "listen through cpal: {}\npulse: {}",
        listen.stderr(),
        pulse.log_tail()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(stat(&stats, "lost"), 0, "{stats}");

    let captured = pulse.stop_and_read().unwrap();
    let got = trim_silence(&captured, info.channels);
    let want = trim_silence(&expected, info.channels);
    assert_eq!(
        first_difference(got, want),
        None,
        "the device received {} samples, the stream has {}",
        got.len(),
        want.len()
    );
    assert!(
        took >= Duration::from_secs_f64(duration * 0.9),
        "{duration:.2} s of audio played in {took:?}: not real time"
    );
}

/// Power of `x` at `freq` Hz (Goertzel), per sample squared.
fn goertzel(x: &[f64], rate: f64, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64 * x.len() as f64)
}

#[test]
fn a_44k1_stream_on_a_48k_device_keeps_its_tone() {
    let Some(_device) = audio_path_or_skip("a_44k1_stream_on_a_48k_device_keeps_its_tone") else {
        return;
    };
    const STREAM_RATE: u32 = 44_100;
    const DEVICE_RATE: u32 = 48_000;
    const FREQ: f64 = 1000.0;
    const AMP: f64 = 10_000.0;
    // Two seconds of a 1 kHz stereo tone at 44.1 kHz.
    let dir = tempdir();
    let wav = dir.path().join("tone44.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: STREAM_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for n in 0..2 * STREAM_RATE {
        let t = f64::from(n) / f64::from(STREAM_RATE);
        let v = (AMP * (2.0 * std::f64::consts::PI * FREQ * t).sin()).round() as i16;
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();

    let pulse = Pulse::start(DEVICE_RATE, 2).unwrap();
    let envs: Vec<(String, String)> = pulse
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    let mut server = Server::start(&wav, &[]);
    let json = dir.path().join("stats.json");
    let args: Vec<String> = vec![
        "--server".into(),
        server.addr.to_string(),
        "--stats-json".into(),
        json.display().to_string(),
        "--quiet".into(),
        // The conversion is checked, on the device's own clock: a synchronised start on a
        // busy machine skips what was due before the device opened.
        "--sync".into(),
        "off".into(),
    ];
    let mut listen = Proc::spawn(&bin("listen"), &args, &envs);
    let code = listen.exit_code(SLOW);
    assert_eq!(
        code,
        0,
        "listen through cpal: {}\npulse: {}",
        listen.stderr(),
        pulse.log_tail()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(stat(&stats, "lost"), 0, "{stats}");

    let captured = pulse.stop_and_read().unwrap();
    let got = trim_silence(&captured, 2);
    let rate = f64::from(DEVICE_RATE);
    // The device played about 2 s at its own rate (the ends of a resampled tone may fade in
    // or out over a few frames, and the device may pad a period).
    let secs = got.len() as f64 / 2.0 / rate;
    assert!((1.9..=2.3).contains(&secs), "{secs:.3} s played at 48 kHz");
    // The middle second, away from the ends, per channel.
    let mid = &got[got.len() / 2 - DEVICE_RATE as usize..got.len() / 2 + DEVICE_RATE as usize];
    for ch in 0..2 {
        let x: Vec<f64> = mid[ch..].iter().step_by(2).map(|&s| f64::from(s)).collect();
        let at = goertzel(&x, rate, FREQ);
        // Unconverted, the tone would sound at 1000 · 48/44.1 = 1088 Hz.
        for off in [-88.0, -40.0, -20.0, 20.0, 40.0, 88.0] {
            let beside = goertzel(&x, rate, FREQ + off);
            assert!(
                at > 100.0 * beside,
                "channel {ch}: {FREQ} Hz power {at:.0} vs {beside:.0} at {off:+} Hz"
            );
        }
        let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!(
            (999..=1001).contains(&crossings),
            "channel {ch}: {crossings} cycles in one second"
        );
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        let want = AMP / 2f64.sqrt();
        assert!(
            (rms / want - 1.0).abs() < 0.1,
            "channel {ch}: RMS {rms:.0}, the tone's is {want:.0}"
        );
    }
}

/// The stream frame a sample frame of [`ramp`] carries, if it is one: left = frame mod 2^15,
/// right = −1 − frame / 2^15 (never 0, so the sink's silence is no frame).
fn ramp_frame(left: i16, right: i16) -> Option<u64> {
    (left >= 0 && right < 0).then(|| (-1 - i64::from(right)) as u64 * 32_768 + left as u64)
}

/// Writes `secs` seconds of a stereo ramp at `rate`: every frame names its own index.
fn ramp(path: &std::path::Path, rate: u32, secs: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for f in 0..rate * secs {
        w.write_sample((f % 32_768) as i16).unwrap();
        w.write_sample(-1 - (f / 32_768) as i16).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn the_playout_log_says_when_the_device_played_each_frame() {
    let Some(_device) =
        audio_path_or_skip("the_playout_log_says_when_the_device_played_each_frame")
    else {
        return;
    };
    const RATE: u32 = 44_100;
    let dir = tempdir();
    let wav = dir.path().join("ramp.wav");
    ramp(&wav, RATE, 6);
    // Built before the sink starts its clock.
    let listen_bin = bin("listen");
    let pulse = Pulse::start_timed(RATE, 2).unwrap();
    let envs: Vec<(String, String)> = pulse
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    let mut server = Server::start(&wav, &[]);
    let log = dir.path().join("playout.csv");
    let json = dir.path().join("stats.json");
    let args: Vec<String> = vec![
        "--server".into(),
        server.addr.to_string(),
        "--sync".into(),
        "--playout-log".into(),
        log.display().to_string(),
        "--stats-json".into(),
        json.display().to_string(),
        "--quiet".into(),
    ];
    let mut listen = Proc::spawn(&listen_bin, &args, &envs);
    let code = listen.exit_code(SLOW);
    assert_eq!(
        code,
        0,
        "listen through cpal: {}\npulse: {}",
        listen.stderr(),
        pulse.log_tail()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    eprintln!(
        "listen: sync_error_ms_p99 {}, resyncs {}, underruns {}",
        stats["sync_error_ms_p99"], stats["resyncs"], stats["underruns"]
    );
    let captured = pulse.stop_and_read_timed().unwrap();
    let sink = SinkClock::fit(&captured.reads, RATE, 2).unwrap();
    eprintln!(
        "pipe sink: {} writes, block {} frames ({:.1} ms), {:+.1} ppm off its rate; a write's \
         first frame came out {:.3} ms (p50) / {:.3} ms (p99) after the sink's clock reached it",
        sink.writes,
        sink.block_frames,
        sink.block_frames as f64 * 1e3 / f64::from(RATE),
        sink.rate_error_ppm(),
        sink.late_p50_ms,
        sink.late_p99_ms
    );
    let lines = read_log(&log).unwrap();
    // Every 10 ms of what the device played: the stream frame it carried (its neighbour
    // confirming it is the ramp, not concealment) and when the sink's clock played it,
    // against when the log says that frame left the output.
    let frames: Vec<(i16, i16)> = captured
        .samples
        .chunks_exact(2)
        .map(|c| (c[0], c[1]))
        .collect();
    // Where the device's output breaks: it played something other than the frame after the
    // one before (an underrun's silence, or frames skipped), beyond the servo's single frames.
    let decoded: Vec<Option<u64>> = frames.iter().map(|&(l, r)| ramp_frame(l, r)).collect();
    let first_ramp = decoded.iter().position(Option::is_some).unwrap_or(0);
    let last_ramp = decoded.iter().rposition(Option::is_some).unwrap_or(0);
    // Each break as (first, last) device frame; breaks less than 10 ms apart are one.
    let mut breaks: Vec<(usize, usize)> = Vec::new();
    for n in first_ramp + 1..=last_ramp {
        let ok = match (decoded[n - 1], decoded[n]) {
            (Some(a), Some(b)) => b > a && b <= a + 2 || b == a,
            _ => false,
        };
        if ok {
            continue;
        }
        match breaks.last_mut() {
            Some(b) if n - b.1 < RATE as usize / 100 => b.1 = n,
            _ => breaks.push((n, n)),
        }
    }
    // Device frames since the end of the latest break at or before `n`.
    let since_break = |n: usize| {
        breaks
            .iter()
            .filter(|&&(a, _)| n >= a)
            .map(|&(_, b)| n.saturating_sub(b))
            .min()
    };
    // The log is written as audio goes into the device's queue (up to 200 ms ahead), so a
    // break invalidates what was logged before it for that long.
    let after_break = |n: usize| since_break(n).is_some_and(|d| d < RATE as usize * 3 / 10);
    // Then the sound server's reported latency settles again (a break is its underrun: it
    // played silence while this machine was starved): the log follows the device's jump of a
    // whole block, to within SETTLING_MS, for the next SETTLING.
    const SETTLING: usize = RATE as usize * 2;
    const SETTLING_MS: f64 = 5.0;
    let settling = |n: usize| since_break(n).is_some_and(|d| d < SETTLING);
    // (device frame, log − device in ms)
    let mut diffs: Vec<(usize, f64)> = Vec::new();
    let mut excluded = 0;
    for n in (first_ramp..last_ramp).step_by(RATE as usize / 100) {
        let (Some(f), Some(g)) = (decoded[n], decoded[n + 1]) else {
            continue;
        };
        if g != f + 1 {
            continue;
        }
        if after_break(n) {
            excluded += 1;
            continue;
        }
        if let Some(t) = when(&lines, RATE, f) {
            diffs.push((n, (t - sink.played_at(n as u64)) / 1e6));
        }
    }
    eprintln!(
        "the device's output broke {} times (device frames {breaks:?}, the ramp at {first_ramp}); \
         {excluded} points within 300 ms after a break are not compared",
        breaks.len()
    );
    // The first second is shown apart: the log's first lines are written while the device is
    // starting, the part most likely to go wrong.
    let start = diffs.first().map_or(0, |d| d.0) + RATE as usize;
    let (first, rest): (Vec<&(usize, f64)>, Vec<_>) = diffs.iter().partition(|d| d.0 < start);
    let worst = |v: &[&(usize, f64)]| v.iter().map(|d| d.1.abs()).fold(0.0, f64::max);
    let (settled, after): (Vec<&(usize, f64)>, Vec<_>) = diffs.iter().partition(|d| !settling(d.0));
    // About 6 s of ramp, a point every 10 ms.
    assert!(diffs.len() > 400, "{} frames compared", diffs.len());
    let mean = diffs.iter().map(|d| d.1).sum::<f64>() / diffs.len() as f64;
    let mut abs: Vec<f64> = diffs.iter().map(|d| d.1.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let p = |q: usize| abs[(abs.len() * q / 100).min(abs.len() - 1)];
    eprintln!(
        "playout log − device: mean {mean:+.3} ms; |difference| p50 {:.3} ms, p99 {:.3} ms, \
         max {:.3} ms over {} frames (first second: max {:.3} ms; after it: max {:.3} ms)",
        p(50),
        p(99),
        abs[abs.len() - 1],
        abs.len(),
        worst(&first),
        worst(&rest)
    );
    eprintln!(
        "{} frames within {:.0} s after a break: max {:.3} ms; the {} others: max {:.3} ms",
        after.len(),
        SETTLING as f64 / f64::from(RATE),
        worst(&after),
        settled.len(),
        worst(&settled)
    );
    assert!(
        settled.len() > 100,
        "{} frames compared away from a break",
        settled.len()
    );
    assert!(
        worst(&settled) < 2.0,
        "the log is up to {:.3} ms off the device",
        worst(&settled)
    );
    assert!(
        worst(&after) < SETTLING_MS,
        "after a break of the device's output the log is up to {:.3} ms off it",
        worst(&after)
    );
}
