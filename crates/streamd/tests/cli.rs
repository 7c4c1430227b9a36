//! The `streamd` binary: exit codes and one-line errors, the first log line, a full run to EOF
//! with a listener, and SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{WAIT, audio, fixture, join};
use listen::ExitReason;
use proto::EndReason;

fn streamd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_streamd"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs to completion, but never longer than WAIT (kills the child it started, by PID).
fn run(args: &[&str]) -> Output {
    let mut child = streamd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > WAIT {
            child.kill().unwrap();
            panic!("streamd {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// A startup error: exit 1, exactly one line, naming `what`, no panic.
fn assert_one_line_error(o: &Output, code: i32, what: &str) {
    let lines = stderr_lines(o);
    assert_eq!(o.status.code(), Some(code), "{lines:?}");
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].contains(what), "{lines:?} should name {what}");
    assert!(!lines[0].contains("panicked"));
}

#[test]
fn missing_file_is_one_line_exit_1() {
    let f = fixture("does-not-exist.mp3");
    let o = run(&[
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, 1, "does-not-exist.mp3");
    assert!(stderr_lines(&o)[0].contains("not found"));
}

#[test]
fn non_audio_file_is_one_line_exit_1() {
    let f = fixture("not-audio.txt");
    let o = run(&[
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, 1, "not-audio.txt");
    assert!(stderr_lines(&o)[0].contains("not an audio file"));
    let f = fixture("empty.mp3");
    let o = run(&[
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, 1, "empty.mp3");
}

#[test]
fn bad_interval_is_a_usage_error_exit_2() {
    let f = fixture("stereo44.mp3");
    for bad in ["1ms", "3s", "fast", "-1"] {
        let arg = format!("--interval={bad}");
        let o = run(&["--port", "0", "--file", f.to_str().unwrap(), &arg]);
        assert_eq!(o.status.code(), Some(2), "--interval {bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--interval"), "{err}");
        assert!(!err.contains("panicked"));
    }
    // Missing required option: also a usage error.
    let o = run(&["--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_repair_options_are_usage_errors_exit_2() {
    let f = fixture("stereo44.mp3");
    for (opt, bad, names) in [
        ("--fec", "0,1", "1..=32"),
        ("--fec", "4,5", "1..=32"),
        ("--fec", "six", "K,M"),
        ("--retransmit", "maybe", "on or off"),
    ] {
        let arg = format!("{opt}={bad}");
        let o = run(&["--port", "0", "--file", f.to_str().unwrap(), &arg]);
        assert_eq!(o.status.code(), Some(2), "{opt} {bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{opt} {bad}")) && err.contains(names),
            "{err}"
        );
        assert!(!err.contains("panicked"));
    }
    // A group that does not fit the playout delay: one line naming the value and the K that
    // fit. Eight 44.1 kHz stereo datagrams (62 ms) do not fit 50 ms; Opus datagrams carry
    // 20 ms each, whatever the MTU, so six (120 ms) do not fit 100 ms.
    let file = f.to_str().unwrap();
    let cases: [(&[&str], &str, &str, &[&str]); 2] = [
        (&[], "8,2", "50ms", &["1..=6"]),
        (&["--codec", "opus"], "6,1", "100ms", &["120 ms", "1..=5"]),
    ];
    for (codec, fec, latency, said) in cases {
        let mut args = vec!["--port", "0", "--file", file];
        args.extend_from_slice(codec);
        args.extend_from_slice(&["--fec", fec, "--latency", latency]);
        let o = run(&args);
        assert_one_line_error(&o, 2, &format!("--fec {fec}"));
        assert!(
            said.iter().all(|s| stderr_lines(&o)[0].contains(s)),
            "{:?}",
            stderr_lines(&o)
        );
    }
}

#[test]
fn port_in_use_is_one_line_exit_1() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let f = fixture("stereo44.mp3");
    let o = run(&[
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, 1, &format!("127.0.0.1:{port}"));
    assert!(stderr_lines(&o)[0].contains("in use"));
}

#[test]
fn help_exits_0() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--client-timeout"));
}

/// Spawns a server on an ephemeral port and returns it with the address from its first line.
fn spawn_server(extra: &[&str]) -> (Child, SocketAddr, BufReader<std::process::ChildStderr>) {
    let f = fixture("stereo44.mp3");
    let mut child = streamd()
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--file",
            f.to_str().unwrap(),
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .rsplit("listening on ")
        .next()
        .and_then(|a| a.parse().ok());
    let Some(addr) = addr.filter(|_| first.contains("listening on ")) else {
        let _ = child.kill();
        panic!("first line should be 'listening on ADDR:PORT', got {first:?}");
    };
    (child, addr, err)
}

fn wait_exit(child: &mut Child) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if t0.elapsed() > WAIT {
            child.kill().unwrap();
            panic!("streamd did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn streams_to_a_listener_and_exits_0_at_eof() {
    let (mut child, addr, err) = spawn_server(&[]);
    let (c, _) = join(addr).await;
    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Finished));
    {
        let seen = c.seen();
        let (_, end) = seen.end().expect("End at EOF");
        assert_eq!(end.reason, EndReason::Finished);
        assert_eq!(end.last_seq, Some(seen.audio.len() as u64 - 1));
    }
    assert_eq!(wait_exit(&mut child), 0);
    let log: Vec<String> = err.lines().map(Result::unwrap).collect();
    let text = log.join("\n");
    assert!(
        text.contains("stereo44.mp3") && text.contains("44100 Hz"),
        "{text}"
    );
    assert!(text.contains("accepted 127.0.0.1:"), "{text}");
    assert!(text.contains("connect from 127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn sigterm_sends_end_and_exits_0() {
    let (mut child, addr, _err) = spawn_server(&["--loop", "--interval", "0.01"]);
    let (c, _) = join(addr).await;
    audio(&c, 1).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (_, end) = c
        .wait_async(WAIT, |s| s.end())
        .await
        .expect("End after SIGTERM");
    assert_eq!(end.reason, EndReason::Shutdown);
    assert_eq!(wait_exit(&mut child), 0);
    let ended = c.wait_async(WAIT, |s| s.ended()).await;
    assert_eq!(ended, Some(ExitReason::Shutdown));
}

#[test]
fn log_file_gets_the_same_lines() {
    let log = std::env::temp_dir().join(format!("streamd-cli-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // spawn_server returns once the `listening on` line is out: the signal handlers exist.
    let (mut child, _addr, _err) = spawn_server(&["--log-file", log.to_str().unwrap()]);
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert_eq!(wait_exit(&mut child), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("listening on 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("stream ended"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes in the file");
}

#[test]
fn sigint_right_after_the_listening_line_is_a_clean_shutdown() {
    // The handlers exist before the line: an immediate SIGINT is a stop request (exit 0, the
    // shutdown logged), never the default action that kills the process.
    let (mut child, _addr, err) = spawn_server(&[]);
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(wait_exit(&mut child), 0);
    let text = err
        .lines()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("shutting down"), "{text}");
}

#[test]
fn a_file_shorter_than_announced_is_streamed_with_a_warning() {
    // A WAV whose header announces more frames than its data holds (cut while being copied).
    let whole = std::fs::read(fixture("stereo44.wav")).unwrap();
    let path = std::env::temp_dir().join(format!("streamd-cut-{}.wav", std::process::id()));
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let o = run(&[
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--start",
        "now",
        "--file",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let text = stderr_lines(&o).join("\n");
    assert_eq!(o.status.code(), Some(0), "{text}");
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("announced as"))
        .unwrap_or_else(|| panic!("no warning:\n{text}"));
    assert!(warning.contains(&*path.to_string_lossy()), "{warning}");
    assert!(warning.contains("88200 frames"), "{warning}");
}

/// The `streaming ... every I (playout delay D) as CODEC` line of a server started with `args`
/// (stdin from `stdin`, when given); the server is killed by its PID once it has said it.
fn start_line(args: &[&str], stdin: Option<std::fs::File>) -> String {
    let mut child = streamd()
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .args(args)
        .stdin(stdin.map_or(Stdio::null(), Stdio::from))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..5 {
        line.clear();
        err.read_line(&mut line).unwrap();
        if line.contains(": streaming ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    line
}

#[test]
fn the_default_tick_and_delay_follow_the_codec_and_the_source() {
    let wav = fixture("stereo44.wav");
    let wav = wav.to_str().unwrap();
    let cases: [(&[&str], bool, &str); 7] = [
        (
            &["--file", wav],
            false,
            "every 20ms (playout delay 50ms) as pcm",
        ),
        // A file is read ahead: five Opus packets a tick, and a room delay the tick allows.
        (
            &["--file", wav, "--codec", "opus"],
            false,
            "every 100ms (playout delay 105ms) as opus",
        ),
        // A shorter --latency keeps its delay: the tick takes as many packets as fit in it.
        (
            &["--file", wav, "--codec", "opus", "--latency", "100ms"],
            false,
            "every 80ms (playout delay 100ms) as opus",
        ),
        (
            &["--file", wav, "--codec", "opus", "--latency", "30ms"],
            false,
            "every 20ms (playout delay 30ms) as opus",
        ),
        // A live input cannot be read ahead: two packets a tick keep the room's 50 ms.
        (
            &["--file", "-", "--codec", "opus"],
            true,
            "every 40ms (playout delay 50ms) as opus",
        ),
        // What is given is kept.
        (
            &["--file", wav, "--codec", "opus", "--interval", "20ms"],
            false,
            "every 20ms (playout delay 50ms) as opus",
        ),
        (
            &["--file", wav, "--codec", "opus", "--latency", "200ms"],
            false,
            "every 100ms (playout delay 200ms) as opus",
        ),
    ];
    for (args, stdin, want) in cases {
        let input = stdin.then(|| std::fs::File::open(fixture("stereo44.wav")).unwrap());
        let line = start_line(args, input);
        assert!(line.contains(want), "{args:?}: want {want:?} in {line:?}");
    }
}
