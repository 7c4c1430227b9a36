//! The real cpal path, headless: `listen` plays to the default ALSA device, which a private
//! PulseAudio routes into a pipe sink at the stream's rate. What the "sound card" received must
//! equal the stream sample for sample, and playing must take real time. With the sink at
//! another rate than the stream's, the tone that comes out must keep its frequency and level.
//! Skipped loudly where PulseAudio is missing, unless `EARSHOT_REQUIRE_PULSE` is set
//! (`cargo xtask test` sets it).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::pulse::{Pulse, alsa_pulse_plugin_available, pulse_available, trim_silence};

/// True when the headless audio path is here; prints why not otherwise (a failure where
/// `EARSHOT_REQUIRE_PULSE` is set).
fn audio_path_or_skip(test: &str) -> bool {
    match pulse_available().and_then(|()| alsa_pulse_plugin_available()) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
                "EARSHOT_REQUIRE_PULSE is set but the headless audio path is unavailable: {why}"
            );
            eprintln!("\n!!!!! SKIPPED {test}: {why} !!!!!\n");
            false
        }
    }
}

#[test]
fn playback_through_cpal_is_sample_exact_and_real_time() {
    if !audio_path_or_skip("playback_through_cpal_is_sample_exact_and_real_time") {
        return;
    }
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
    if !audio_path_or_skip("a_44k1_stream_on_a_48k_device_keeps_its_tone") {
        return;
    }
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
