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
    // The proxy's per-client audio counts: `client I ADDR: audio received R sent S dropped D
    // duplicated 0 out_of_order O lost L`.
    let proxy: Vec<[u64; 4]> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("client ") && l.contains(": audio "))
        .map(|l| {
            let v = |k| number_after(l, k);
            [v(" received "), v(" sent "), v(" dropped "), v(" lost ")]
        })
        .collect();
    // Each listener's own counts: `listener K: G of E datagrams, L lost, O out of order, …`.
    let heard: Vec<[u64; 3]> = (1..=2)
        .map(|k| {
            let prefix = format!("listener {k}: ");
            let l = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` line:\n{stdout}"));
            let got = number_after(l, &prefix);
            [got, number_after(l, " of "), number_after(l, "datagrams, ")]
        })
        .collect();
    assert_eq!(proxy.len(), 2, "{stdout}");
    // The clip the stream carries.
    let (info, samples) = streamd::source::decode_all(&fixture("stereo44.wav")).unwrap();
    let frames = samples.len() as u64 / u64::from(info.channels);
    for [received, sent, dropped, lost] in &proxy {
        // The whole stream reached the proxy; what it dropped is what was lost downstream.
        assert_eq!(sent + dropped, *received, "{stdout}");
        assert_eq!(lost, dropped, "{stdout}");
        // 5% loss of ~300 datagrams: seeded, so fixed, but any sane engine lands in here.
        assert!((1..=45).contains(dropped), "{dropped} dropped:\n{stdout}");
    }
    for [got, expected, lost] in &heard {
        assert_eq!(got + lost, *expected, "{stdout}");
    }
    // Which listener is which proxy client is not printed: compare as sets of (datagrams the
    // stream had for it, datagrams it got, lost). A listener that joined a tick later (late
    // joiners join live) expects fewer, and the proxy saw fewer for it.
    let mut proxy_sets: Vec<[u64; 3]> = proxy.iter().map(|p| [p[0], p[1], p[3]]).collect();
    let mut heard_sets: Vec<[u64; 3]> = heard.iter().map(|h| [h[1], h[0], h[2]]).collect();
    proxy_sets.sort();
    heard_sets.sort();
    assert_eq!(proxy_sets, heard_sets, "proxy vs listeners:\n{stdout}");
    // The WAV (one listener's) holds the stream from where that listener joined to its end,
    // losses concealed: the whole clip, short of at most the late join.
    let (spec, got) = read_wav(&dir.path().join("loopback.wav"));
    assert_eq!((spec.sample_rate, spec.channels), (44_100, 2));
    let wav_frames = got.len() as u64 / 2;
    let late = heard_sets[1][0] - heard_sets[0][0];
    let per_datagram = 343; // frames in a full datagram at the default 1400-byte MTU
    assert!(
        wav_frames <= frames && frames - wav_frames <= late * per_datagram,
        "{wav_frames} frames in loopback.wav, the clip has {frames}:\n{stdout}"
    );
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> u64 {
    line.split(key)
        .nth(1)
        .and_then(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}
