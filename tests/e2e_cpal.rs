//! The real cpal path, headless: `listen` plays to the default ALSA device, which a private
//! PulseAudio routes into a pipe sink at the stream's rate. What the "sound card" received must
//! equal the stream sample for sample, and playing must take real time. Skipped loudly where
//! PulseAudio is missing, unless `EARSHOT_REQUIRE_PULSE` is set (`cargo xtask test` sets it).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::pulse::{Pulse, alsa_pulse_plugin_available, pulse_available, trim_silence};

#[test]
fn playback_through_cpal_is_sample_exact_and_real_time() {
    if let Err(why) = pulse_available().and_then(|()| alsa_pulse_plugin_available()) {
        assert!(
            std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
            "EARSHOT_REQUIRE_PULSE is set but the headless audio path is unavailable: {why}"
        );
        eprintln!("\n!!!!! SKIPPED the real cpal test: {why} !!!!!\n");
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
