//! Codecs end to end over loopback with the real binaries: FLAC arrives sample for sample as
//! streamd decoded the file, Opus keeps music above 15 dB SNR and in time, each codec's bytes
//! per listener per second against PCM's, and bad `--codec` values are usage errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use audiocodec::signal::{best_alignment, music, snr_db};
use common::*;

/// Streams `file` with `codec` to one listener over a perfect loopback; returns the listener
/// (exited, its WAV and stats written).
fn stream(file: &Path, codec: &str, dir: &Path, name: &str) -> Listener {
    stream_with(file, codec, dir, name, &[])
}

/// [`stream`], with more options for `listen`.
fn stream_with(file: &Path, codec: &str, dir: &Path, name: &str, more: &[&str]) -> Listener {
    let mut server = Server::start(file, &["--interval", "20ms", "--codec", codec]);
    let mut args = vec!["--latency", "200ms"];
    args.extend_from_slice(more);
    let mut listener = Listener::start(server.addr, dir, name, &args);
    let code = listener.proc.exit_code(SLOW);
    assert_eq!(
        code,
        0,
        "{codec}: listen exited {code}: {}",
        listener.proc.stderr()
    );
    let server_code = server.proc.exit_code(SLOW);
    assert_eq!(
        server_code,
        0,
        "{codec}: streamd exited {server_code}: {}",
        server.proc.stderr()
    );
    let s = listener.stats();
    assert_eq!(s["end_reason"], "finished", "{s}");
    for key in ["lost", "late", "malformed"] {
        if s.get(key).is_some() {
            assert_eq!(stat(&s, key), 0, "{codec}: {key}: {s}");
        }
    }
    listener
}

#[test]
fn flac_arrives_sample_exact() {
    let dir = tempdir();
    for name in ["stereo44.flac", "mono22.wav"] {
        let file = fixture(name);
        let (info, expected) = streamd::source::decode_all(&file).unwrap();
        let l = stream(&file, "flac", dir.path(), name);
        let (spec, got) = l.samples();
        assert_eq!(
            (spec.sample_rate, spec.channels),
            (info.sample_rate, info.channels)
        );
        assert_eq!(
            first_difference(&got, &expected),
            None,
            "{name}: WAV {} samples, decoded {}",
            got.len(),
            expected.len()
        );
        let s = l.stats();
        assert_eq!(s["codec"], "flac", "{s}");
    }
}

#[test]
fn opus_keeps_music_above_15_db() {
    let dir = tempdir();
    // Three seconds of music-like audio at 48 kHz stereo, Opus's own rate: the WAV the
    // listener writes is compared with it directly.
    let src = dir.path().join("music48.wav");
    let pcm = music(48_000, 2, 0, 48_000 * 3);
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&src, spec).unwrap();
    for &s in &pcm {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let l = stream(&src, "opus", dir.path(), "opus");
    let (spec, got) = l.samples();
    assert_eq!((spec.sample_rate, spec.channels), (48_000, 2));
    assert_eq!(got.len(), pcm.len(), "the stream keeps its length");
    let (lag, best) = best_alignment(&pcm, &got, 2, 480);
    let snr = snr_db(&pcm, &got);
    eprintln!("opus end to end: SNR {snr:.1} dB (best {best:.1} dB at lag {lag})");
    assert!(snr >= 15.0, "SNR {snr:.1} dB (best {best:.1} at lag {lag})");
    assert_eq!(lag, 0, "decoded audio is {lag} frames off");
    let s = l.stats();
    assert_eq!(s["codec"], "opus:128000", "{s}");
}

/// Bytes per second one listener received for `codec` on `file`, and the stream's seconds.
fn rate(file: &Path, codec: &str, dir: &Path) -> f64 {
    let (info, pcm) = streamd::source::decode_all(file).unwrap();
    let seconds = pcm.len() as f64 / f64::from(info.channels) / f64::from(info.sample_rate);
    let name = format!(
        "{}-{}",
        file.file_name().unwrap().to_string_lossy(),
        codec.replace(':', "-")
    );
    // The audio's bytes: without the clock exchange's (a 52-byte answer four times a second).
    let s = stream_with(file, codec, dir, &name, &["--sync", "off"]).stats();
    stat(&s, "bytes_received") as f64 / seconds
}

#[test]
fn bytes_per_listener_per_second_by_codec() {
    let dir = tempdir();
    for name in ["stereo44.wav", "stereo44.mp3", "mono22.wav"] {
        let file = fixture(name);
        let pcm = rate(&file, "pcm", dir.path());
        let flac = rate(&file, "flac", dir.path());
        let opus = rate(&file, "opus", dir.path());
        let line = format!(
            "{name}: pcm {pcm:.0} B/s, flac {flac:.0} B/s ({:.3}), opus {opus:.0} B/s ({:.3})",
            flac / pcm,
            opus / pcm
        );
        eprintln!("{line}");
        assert!(flac <= 0.7 * pcm, "{line}");
        if name.starts_with("stereo") {
            assert!(opus <= pcm / 10.0, "{line}");
        } else {
            // 22 kHz mono PCM is a quarter of CD rate: at 128 kbit/s Opus is not a tenth of it,
            // at 20 kbit/s it is (28 bytes of header per 20 ms packet are 1400 B/s alone).
            let low = rate(&file, "opus:20000", dir.path());
            eprintln!("{name}: opus:20000 {low:.0} B/s ({:.3})", low / pcm);
            assert!(
                low <= pcm / 10.0,
                "{name}: opus:20000 {low:.0} B/s vs pcm {pcm:.0}"
            );
        }
    }
}

#[test]
fn bad_codec_values_are_usage_errors() {
    for (value, named) in [
        ("mp3", "mp3"),
        ("opus:5000", "opus:5000"),
        ("opus:600000", "opus:600000"),
    ] {
        let args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--file",
            &fixture("stereo44.wav").display().to_string(),
            "--codec",
            value,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut p = Proc::spawn(&bin("streamd"), &args, &[]);
        assert_eq!(p.exit_code(SLOW), 2, "--codec {value}");
        let err = p.stderr();
        assert!(err.contains(named), "--codec {value}: {err}");
        assert!(err.contains("pcm, flac, opus"), "--codec {value}: {err}");
    }
}
