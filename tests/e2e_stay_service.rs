//! Running as a service: the unit files in `dist/systemd/` pass `systemd-analyze verify` (with
//! ExecStart pointed at the binaries under test), SIGHUP makes both programs reopen their
//! `--log-file` (logrotate's way), and their stderr has no colour codes when it is not a
//! terminal (journald).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn the_unit_files_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir();
    for (unit, program) in [("streamd.service", "streamd"), ("listen.service", "listen")] {
        let text = std::fs::read_to_string(root.join("dist/systemd").join(unit)).unwrap();
        let installed = format!("/usr/local/bin/{program}");
        assert!(text.contains(&installed), "{unit} runs {installed}");
        for key in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "LogsDirectory=",
            "StateDirectory=",
            "RestrictAddressFamilies=",
        ] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
        let text = text.replace(&installed, &bin(program).display().to_string());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("streamd.service"))
        .arg(dir.path().join("listen.service"))
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var("EARSHOT_REQUIRE_SYSTEMD").as_deref() == Ok("1") => {
            panic!("EARSHOT_REQUIRE_SYSTEMD=1 but systemd-analyze cannot run: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: systemd-analyze verify: {e} (install Debian's `systemd`)");
            return;
        }
    };
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Renames the log file away, sends SIGHUP, and checks that a new file of the same name gets
/// the next lines (the one saying so at least) while the old one keeps what it had.
fn check_reopen(p: &Proc, log: &Path) {
    let rotated = log.with_extension("log.1");
    std::fs::rename(log, &rotated).unwrap();
    p.signal("HUP");
    wait_until(
        &format!("a new {} after SIGHUP ({})", log.display(), p.stderr()),
        SLOW,
        || std::fs::read_to_string(log).is_ok_and(|t| t.contains("reopened log file")),
    );
    assert!(!std::fs::read_to_string(&rotated).unwrap().is_empty());
}

#[test]
fn sighup_reopens_the_log_file_of_both_programs() {
    let dir = tempdir();
    let slog = dir.path().join("streamd.log");
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--loop",
        "--file",
        &demo_clip().display().to_string(),
        "--log-file",
        &slog.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Proc::spawn(&bin("streamd"), &args, &[]);
    let line = server.wait_for_line("listening on", SLOW).unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    check_reopen(&server, &slog);

    let llog = dir.path().join("listen.log");
    let l = Listener::start(
        addr.parse().unwrap(),
        dir.path(),
        "l",
        &["--log-file", &llog.display().to_string()],
    );
    wait_for_audio(&l);
    check_reopen(&l.proc, &llog);
    l.proc.signal("INT");
    wait_until("listen to log its statistics", SLOW, || {
        std::fs::read_to_string(&llog).is_ok_and(|t| t.contains("stream statistics"))
    });
}

/// The first stderr line of `program ARGS…` containing `needle`, raw (no escape stripping),
/// with colour allowed by the environment: only the program's own terminal check stops it.
fn raw_line(program: &str, args: &[&str], needle: &str) -> String {
    use std::io::BufRead;
    let mut child = Command::new(bin(program))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut found = None;
    for line in std::io::BufReader::new(err).lines() {
        let line = line.unwrap();
        if line.contains(needle) {
            found = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("{program} never logged {needle:?}"))
}

#[test]
fn stderr_that_is_not_a_terminal_gets_no_colour_codes() {
    let clip = demo_clip().display().to_string();
    let s = raw_line(
        "streamd",
        &["--bind", "127.0.0.1", "--port", "0", "--file", &clip],
        "listening on",
    );
    assert!(!s.contains('\u{1b}'), "streamd: {s:?}");
    let dir = tempdir();
    let wav = dir.path().join("x.wav").display().to_string();
    let l = raw_line(
        "listen",
        &[
            "--server",
            "127.0.0.1:9",
            "--output",
            &wav,
            "--timeout",
            "1s",
        ],
        "connecting to",
    );
    assert!(!l.contains('\u{1b}'), "listen: {l:?}");
}
