//! The loopback demo as a newcomer meets it on a headless machine: it finds no sound device,
//! writes `loopback.wav` in the current folder, says where, prints the statistics table and
//! exits 0; the WAV holds the whole built-in clip. With impairment it reports what the proxy
//! did and what each listener counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs the demo in `cwd` with no audio server reachable (a private, empty runtime dir).
fn run_demo(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(built("loopback", true))
        .args(args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .env("XDG_RUNTIME_DIR", cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn headless_demo_writes_the_whole_clip_to_loopback_wav() {
    let dir = tempdir();
    let (code, stdout, stderr) = run_demo(dir.path(), &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let wav = dir.path().join("loopback.wav");
    assert!(
        stdout.contains("writing what it would play to loopback.wav"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("wrote {}", wav.display())),
        "{stdout}"
    );
    assert!(
        stderr.contains("stream statistics") && stderr.contains("lost"),
        "{stderr}"
    );
    let (_, expected) = streamd::source::decode_all(&demo_clip()).unwrap();
    let (spec, got) = read_wav(&wav);
    assert_eq!((spec.sample_rate, spec.channels), (44_100, 2));
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "the WAV is not the clip"
    );
}

#[test]
fn impaired_demo_reports_the_proxy_and_every_listener() {
    let dir = tempdir();
    let clip = fixture("stereo44.wav");
    let clip = clip.to_str().unwrap();
    let args = [
        "--file",
        clip,
        "--listeners",
        "2",
        "--loss",
        "5%",
        "--jitter",
        "10ms",
        "--seed",
        "3",
    ];
    let (code, stdout, stderr) = run_demo(dir.path(), &args);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("impairment proxy"), "{stdout}");
    for k in 1..=2 {
        assert!(stdout.contains(&format!("listener {k}: ")), "{stdout}");
    }
    assert!(dir.path().join("loopback.wav").exists());
}
