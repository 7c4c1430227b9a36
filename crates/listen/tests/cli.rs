//! The `listen` binary against streamd (its real core in tests/common, and the production
//! server): the command line, exit codes, messages, the stats file and Ctrl-C (SIGINT sent to
//! the child by its PID).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Script, Streamd, Tmp, occupy, real_server, silent};

/// Generous: the machine may be busy compiling.
const WAIT: Duration = Duration::from_secs(10);

fn listen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_listen"));
    c.stdin(Stdio::null());
    c
}

/// Runs the binary off the async runtime so the fake server keeps serving.
async fn output(mut c: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[test]
fn usage_errors_exit_2() {
    // Without --server listen browses mDNS (not in a test: no traffic off loopback); --server
    // with the browsing flags is a usage error.
    let o = listen()
        .args(["--server", "127.0.0.1:9", "--discover"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = listen()
        .args(["--server", "127.0.0.1:9", "--latency", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("soon"));
    // Zero, and durations so long the clock arithmetic would overflow.
    for (flag, value) in [
        ("--timeout", "0"),
        ("--timeout", "1e19"),
        ("--latency", "1e19"),
    ] {
        let o = listen()
            .args(["--server", "127.0.0.1:9", flag, value])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_with_bare_seconds_exits_4() {
    let tmp = Tmp::new();
    let (_sock, addr) = silent().await;
    let wav = tmp.path("cli-none.wav");
    let mut c = listen();
    c.args(["--server", &addr.to_string(), "--timeout", "1", "--output"])
        .arg(&wav);
    let t = Instant::now();
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("no answer from {addr} after 1 s")),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(!wav.exists(), "a failed run left a WAV behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_exits_3_with_one_line() {
    let tmp = Tmp::new();
    let mut sc = Script::clean(9600);
    sc.max_clients = 3;
    let srv = Streamd::start(sc).await;
    let _taken = [
        occupy(srv.addr).await,
        occupy(srv.addr).await,
        occupy(srv.addr).await,
    ];
    let mut c = listen();
    c.args(["--server", &srv.addr.to_string(), "--quiet", "--output"])
        .arg(tmp.path("cli-full.wav"));
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("server {} is full (3 listeners)", srv.addr)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_streams_to_wav_and_writes_stats_json() {
    let tmp = Tmp::new();
    // The production server, on a WAV of the test source.
    let (addr, server) = real_server(&tmp, 9600).await;
    let wav = tmp.path("cli-ok.wav");
    let json = tmp.path("cli-ok.json");
    let log = tmp.path("cli-ok.log");
    let mut c = listen();
    c.args([
        "--server",
        &format!("localhost:{}", addr.port()),
        "--latency",
        "0.05",
    ])
    .arg("--output")
    .arg(&wav)
    .arg("--stats-json")
    .arg(&json)
    .arg("--log-file")
    .arg(&log);
    let o = output(c).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("stream statistics"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Every datagram the server sent was expected and received (its datagrams are cut by the
    // wall clock, so their number varies from run to run).
    let summary = server.await.unwrap();
    assert!(summary.audio_datagrams > 0);
    assert_eq!(v["expected"], summary.audio_datagrams);
    assert_eq!(v["received"], summary.audio_datagrams);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["end_reason"], "finished");
    let (_, samples) = common::read_wav(&wav);
    assert!(samples == common::source(9600));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("stream statistics"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_with_exit_0_stats_and_leave() {
    signal_ends_with_exit_0_stats_and_leave("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_with_exit_0_stats_and_leave() {
    signal_ends_with_exit_0_stats_and_leave("TERM").await;
}

async fn signal_ends_with_exit_0_stats_and_leave(signal: &str) {
    let tmp = Tmp::new();
    let srv = Streamd::start(Script::clean(48_000 * 10)).await;
    let json = tmp.path(&format!("cli-{signal}.json"));
    let mut c = listen();
    c.args(["--server", &srv.addr.to_string(), "--quiet"])
        .arg("--output")
        .arg(tmp.path(&format!("cli-{signal}.wav")))
        .arg("--stats-json")
        .arg(&json)
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id().to_string();
    // Interrupted mid-stream: once a few ticks of audio went out.
    assert!(srv.wait(WAIT, |l| l.sent.len() >= 40).await, "no audio");
    let k = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(k.success());
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["end_reason"], "interrupted");
    assert!(srv.wait(WAIT, |l| l.leaves >= 1).await, "no Leave");
    let log = srv.log.lock().unwrap();
    assert_eq!(
        log.bad_tokens, 0,
        "a Report or Leave without the Welcome's token"
    );
    let why = log.leave_reasons.as_slice();
    // SIGTERM may say Terminated (the protocol has the reason) or Interrupted; SIGINT is the
    // user's Ctrl-C.
    let ok = match signal {
        "INT" => why == [proto::LeaveReason::Interrupted],
        _ => matches!(
            why,
            [proto::LeaveReason::Terminated | proto::LeaveReason::Interrupted]
        ),
    };
    assert!(ok, "SIG{signal}: Leave reasons {why:?}");
}

#[test]
fn a_missing_device_is_exactly_one_line_on_stderr_exit_1() {
    let o = listen()
        .args([
            "--server",
            "127.0.0.1:9",
            "--device",
            "no-such-device-anywhere",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().count(),
        1,
        "more than one line (library noise?): {err}"
    );
    assert!(err.contains("--output"), "{err}");
}
