//! Live input against the real binaries: raw PCM and a wav on stdin, a FIFO whose writer closes
//! and reopens it (the listener stays joined and hears silence in between), a writer that
//! stalls (bounded memory, underruns counted), and the refused inputs with their exit codes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use common::*;

/// The listeners' options: the live input is what these tests check, sample for sample, so
/// the listeners play on their own clock (synchronised playout may drop or repeat single
/// frames on a busy machine; tests/e2e_sync.rs covers it).
const LISTEN: &[&str] = &["--latency", "200ms", "--sync", "off"];

/// Raw s16le bytes of interleaved samples.
fn raw_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// `streamd --bind 127.0.0.1 --port 0 ARGS… < STDIN` through `sh -c 'exec …'` (so the PID is
/// streamd's), and its address from the `listening on` line.
fn start_with_stdin(stdin: &Path, args: &[&str]) -> (Proc, SocketAddr) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = format!(
        "exec {} --bind 127.0.0.1 --port 0 --no-announce",
        quote(&bin("streamd").display().to_string())
    );
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    cmd.push_str(" < ");
    cmd.push_str(&quote(&stdin.display().to_string()));
    let proc = Proc::spawn(Path::new("/bin/sh"), &["-c".into(), cmd], &[]);
    let addr = listening_addr(&proc);
    (proc, addr)
}

fn listening_addr(proc: &Proc) -> SocketAddr {
    let line = proc
        .wait_for_line("listening on", SLOW)
        .unwrap_or_else(|| panic!("no `listening on`; stderr:\n{}", proc.stderr()));
    line.split("listening on")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap()
}

/// The `live input:` counters of streamd's last summary line: (underruns, overrun frames,
/// idle periods).
fn live_counts(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("live input:"))
        .unwrap_or_else(|| panic!("no live input line:\n{stderr}"));
    let num = |before: &str| -> u64 {
        let head = line.split(before).next().unwrap();
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    (
        num(" underrun(s)"),
        num(" frames dropped"),
        num(" idle period(s)"),
    )
}

fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn raw_pcm_on_stdin_arrives_sample_exact() {
    let (info, samples) = streamd::source::decode_all(&fixture("stereo44.wav")).unwrap();
    let dir = tempdir();
    let raw = dir.path().join("in.raw");
    std::fs::write(&raw, raw_bytes(&samples)).unwrap();
    let format = format!("s16le:{}:{}", info.sample_rate, info.channels);
    let (mut server, addr) = start_with_stdin(&raw, &["--file", "-", "--format", &format]);
    let mut listener = Listener::start(addr, dir.path(), "l", LISTEN);
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    let (spec, got) = listener.samples();
    assert_eq!((spec.sample_rate, spec.channels), (44_100, 2));
    assert_eq!(
        first_difference(&got, &samples),
        None,
        "{}",
        server.stderr()
    );
    assert_eq!(listener.stats()["end_reason"], "finished");
    assert_eq!(live_counts(&server.stderr()).0, 0, "no underrun");
}

#[test]
fn a_raw_pcm_file_with_format_streams_like_a_file() {
    let (_, samples) = streamd::source::decode_all(&fixture("mono22.wav")).unwrap();
    let dir = tempdir();
    let raw = dir.path().join("mono.raw");
    std::fs::write(&raw, raw_bytes(&samples)).unwrap();
    let mut server = Server::start(&raw, &["--format", "s16le:22050:1", "--no-announce"]);
    let mut l = Listener::start(server.addr, dir.path(), "l", LISTEN);
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    let (spec, got) = l.samples();
    assert_eq!((spec.sample_rate, spec.channels), (22_050, 1));
    assert_eq!(first_difference(&got, &samples), None);
    assert_eq!(l.stats()["end_reason"], "finished");
    // A file: no live counters.
    assert!(!server.proc.stderr().contains("live input:"));
}

#[test]
fn a_wav_on_stdin_arrives_sample_exact() {
    let (_, samples) = streamd::source::decode_all(&fixture("stereo44.wav")).unwrap();
    let dir = tempdir();
    let (mut server, addr) = start_with_stdin(&fixture("stereo44.wav"), &["--file", "-"]);
    let mut l = Listener::start(addr, dir.path(), "l", LISTEN);
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    let (_, got) = l.samples();
    assert_eq!(first_difference(&got, &samples), None);
}

/// A signal with no zero sample, so silence padding is told apart from it.
fn tone(from: usize, frames: usize) -> Vec<i16> {
    (from..from + frames)
        .flat_map(|i| {
            let v = 2000 + (i % 400) as i16 * 10;
            [v, -v]
        })
        .collect()
}

#[test]
fn a_fifo_writer_that_closes_and_reopens_keeps_the_listener_with_silence_between() {
    let dir = tempdir();
    let fifo = dir.path().join("mpd.fifo");
    mkfifo(&fifo);
    let mut server = Server::start(
        &fifo,
        &[
            "--format",
            "s16le:44100:2",
            "--no-announce",
            "--start",
            "now",
        ],
    );
    let mut l = Listener::start(server.addr, dir.path(), "l", LISTEN);
    // The first part goes out as soon as it is written: the listener must have joined.
    assert!(
        server.proc.wait_for_line("accepted", SLOW).is_some(),
        "{}",
        server.proc.stderr()
    );
    // Three "tracks" of 0.5 s, the FIFO closed after each.
    let parts = [tone(0, 22_050), tone(22_050, 22_050), tone(44_100, 22_050)];
    let wav_len = |l: &Listener| std::fs::metadata(&l.wav).map_or(0, |m| m.len());
    for (k, part) in parts.iter().enumerate() {
        let before = wav_len(&l);
        // Opening for writing waits for streamd's reader to open the FIFO again.
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(&raw_bytes(part)).unwrap();
        drop(w);
        assert!(
            server.proc.wait_for_lines("writer closed", k + 1, SLOW),
            "{}",
            server.proc.stderr()
        );
        assert!(
            l.proc.wait_timeout(std::time::Duration::ZERO).is_none(),
            "listener left"
        );
        // Wait until the part and 0.5 s of idle silence after it were played: the WAV grew by
        // that much beyond the 64 KiB the WAV sink may hold back.
        let grown = before + 65_536 + 4 * 22_050 + 2 * 22_050;
        wait_until("the part and idle silence in the WAV", SLOW, || {
            wav_len(&l) > grown
        });
    }
    server.proc.signal("INT");
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    let s = l.stats();
    assert_eq!(s["end_reason"], "shutdown", "{s}");
    assert_eq!(stat(&s, "lost"), 0, "{s}");
    let (_, got) = l.samples();
    // The audio is exact; silence only before, between and after the parts.
    let audio: Vec<i16> = got.iter().copied().filter(|&x| x != 0).collect();
    let fed: Vec<i16> = parts.concat();
    assert_eq!(first_difference(&audio, &fed), None);
    let is_audio: Vec<bool> = got.chunks_exact(2).map(|f| f[0] != 0).collect();
    let runs = (0..is_audio.len())
        .filter(|&i| is_audio[i] && (i == 0 || !is_audio[i - 1]))
        .count();
    assert_eq!(runs, 3, "three parts separated by silence");
    let (_, overruns, idle) = live_counts(&server.proc.stderr());
    assert_eq!(overruns, 0);
    assert!(idle >= 3, "idle periods {idle}");
}

#[test]
fn a_stalled_writer_costs_counted_underruns_and_no_memory() {
    let dir = tempdir();
    let fifo = dir.path().join("stall.fifo");
    mkfifo(&fifo);
    let mut server = Server::start(
        &fifo,
        &[
            "--format",
            "s16le:44100:2",
            "--no-announce",
            "--on-idle",
            "end",
        ],
    );
    let mut l = Listener::start(server.addr, dir.path(), "l", LISTEN);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&raw_bytes(&tone(0, 22_050))).unwrap();
    // The writer stalls with the FIFO open: the listener keeps getting (silent) audio. Wait
    // until the WAV holds 2 s more than was written.
    wait_until("silence during the stall", SLOW, || {
        std::fs::metadata(&l.wav).is_ok_and(|m| m.len() > 44 + 4 * 22_050 + 4 * 88_200)
    });
    let rss = rss_kib(server.proc.pid());
    assert!(rss < 64 * 1024, "streamd RSS {rss} KiB during a stall");
    w.write_all(&raw_bytes(&tone(22_050, 22_050))).unwrap();
    drop(w);
    // --on-idle end: the writer's close ends the stream.
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    let (underruns, overruns, _) = live_counts(&server.proc.stderr());
    assert!(underruns >= 1, "{}", server.proc.stderr());
    assert_eq!(overruns, 0);
    let (_, got) = l.samples();
    let audio: Vec<i16> = got.iter().copied().filter(|&x| x != 0).collect();
    assert_eq!(first_difference(&audio, &tone(0, 44_100)), None);
    assert_eq!(l.stats()["end_reason"], "finished");
}

/// streamd's own error lines (the tests run with `RUST_LOG=info`, which also lets the decoder
/// library log its probe).
fn error_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.starts_with("streamd: error"))
        .count()
}

/// Runs streamd to its exit; (code, stderr).
fn refused(args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = ["--bind", "127.0.0.1", "--port", "0", "--no-announce"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let mut p = Proc::spawn(&bin("streamd"), &all, &[]);
    let code = p.exit_code(SLOW);
    (code, p.stderr())
}

#[test]
fn bad_live_inputs_are_refused_with_one_line() {
    let (code, err) = refused(&["--file", "-", "--format", "s16le:44100"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--format"), "{err}");

    let (code, err) = refused(&["--capture", "no-such-device"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-device"), "{err}");
    assert_eq!(error_lines(&err), 1, "{err}");
    assert!(
        !err.contains("ALSA lib"),
        "alsa-lib's chatter is kept off stderr: {err}"
    );

    let dir = tempdir();
    let missing = dir.path().join("no-such.fifo");
    let (code, err) = refused(&[
        "--file",
        missing.to_str().unwrap(),
        "--format",
        "s16le:8000:1",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such.fifo"), "{err}");
    assert_eq!(error_lines(&err), 1, "{err}");

    let mut p = Proc::spawn(
        Path::new("/bin/sh"),
        &[
            "-c".into(),
            format!(
                "exec '{}' --bind 127.0.0.1 --port 0 --no-announce --file - < '{}'",
                bin("streamd").display(),
                fixture("not-audio.txt").display()
            ),
        ],
        &[],
    );
    let code = p.exit_code(SLOW);
    let err = p.stderr();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stdin") && err.contains("not an audio"),
        "{err}"
    );
    assert_eq!(error_lines(&err), 1, "{err}");
}

/// A 440 Hz tone at amplitude 9000, the same on every channel, never exactly zero.
fn sine(rate: u32, channels: u16, frames: usize) -> Vec<i16> {
    (0..frames)
        .flat_map(|n| {
            let t = n as f64 / f64::from(rate);
            let v = (9000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()).round() as i16;
            std::iter::repeat_n(if v == 0 { 1 } else { v }, usize::from(channels))
        })
        .collect()
}

#[test]
fn a_tone_played_into_the_capture_source_reaches_a_listener() {
    use testkit::pulse::{Pulse, SINK_NAME, pulse_available};
    if let Err(why) = pulse_available() {
        assert!(
            std::env::var_os("EARSHOT_REQUIRE_PULSE").is_none(),
            "EARSHOT_REQUIRE_PULSE is set but PulseAudio is unavailable: {why}"
        );
        eprintln!("\n!!!!! SKIPPED capture test: no PulseAudio here: {why} !!!!!\n");
        return;
    }
    let pulse = Pulse::start(48_000, 2).unwrap();
    // The default source of this private daemon: the monitor of its pipe sink, so what pacat
    // plays into the sink is what streamd records.
    let mut envs: Vec<(String, String)> = pulse
        .env()
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
    envs.push(("PULSE_SOURCE".into(), format!("{SINK_NAME}.monitor")));
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--no-announce",
        "--start",
        "now",
        "--capture",
        "pulse",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Proc::spawn(&bin("streamd"), &args, &envs);
    let addr = listening_addr(&server);
    let line = server.wait_for_line("streaming", SLOW).unwrap();
    let rate: u32 = line
        .split(" Hz")
        .next()
        .and_then(|h| h.split_whitespace().last())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {line:?}"));
    let dir = tempdir();
    let l = Listener::start(addr, dir.path(), "l", LISTEN);
    wait_for_audio(&l);
    let tone = sine(48_000, 2, 96_000);
    let raw = pulse.dir().join("tone.raw");
    std::fs::write(&raw, raw_bytes(&tone)).unwrap();
    let before = std::fs::metadata(&l.wav).unwrap().len();
    let st = pulse
        .command("pacat")
        .args(["--playback", "--raw", "--format=s16le", "--rate=48000"])
        .args(["--channels=2", &format!("--device={SINK_NAME}")])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success(), "pacat: {}", pulse.log_tail());
    // The tone and 1 s more reached the WAV (beyond the 64 KiB its sink may hold back).
    let bytes_per_sec = u64::from(rate) * 4;
    wait_until("the tone in the WAV", SLOW, || {
        std::fs::metadata(&l.wav).is_ok_and(|m| m.len() > before + 65_536 + 3 * bytes_per_sec)
    });
    server.signal("INT");
    assert_eq!(server.exit_code(SLOW), 0, "{}", server.stderr());
    let mut lp = l;
    assert_eq!(lp.proc.exit_code(SLOW), 0, "{}", lp.proc.stderr());
    let (spec, got) = lp.samples();
    assert_eq!(spec.sample_rate, rate);
    let ch = usize::from(spec.channels);
    let left: Vec<f64> = got.iter().step_by(ch).map(|&s| f64::from(s)).collect();
    // The loudest second: the tone.
    let win = rate as usize;
    let energy = |i: usize| left[i..i + win].iter().map(|x| x * x).sum::<f64>();
    let start = (0..left.len().saturating_sub(win))
        .step_by(win / 10)
        .max_by(|&a, &b| energy(a).total_cmp(&energy(b)))
        .unwrap();
    let seg = &left[start..start + win];
    let rms = (seg.iter().map(|x| x * x).sum::<f64>() / win as f64).sqrt();
    let crossings = seg.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    eprintln!("captured tone: {crossings} Hz, RMS {rms:.0}, at {rate} Hz");
    // 440 Hz over one second, amplitude 9000 (RMS 6364), within what resampling may change.
    assert!((430..=450).contains(&crossings), "frequency {crossings} Hz");
    assert!((5700.0..7000.0).contains(&rms), "RMS {rms}");
}
