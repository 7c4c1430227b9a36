//! Project automation, the xtask way: `cargo xtask demo` and `cargo xtask test` are the two
//! commands a newcomer needs. Each first makes sure the system packages are there (installing
//! them with apt-get when running as root on Debian/Ubuntu), so a fresh machine needs nothing
//! else. `.ci/run` is exactly `cargo xtask test`.

mod bench_peers;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use testkit::install;

/// What every build needs: cpal links ALSA and the Opus codec links libopus, both found through
/// pkg-config.
const BUILD_PACKAGES: &[&str] = &["libasound2-dev", "libopus-dev", "pkg-config"];

/// What the real-audio tests add: a private PulseAudio that ALSA's default device routes into
/// (see docs/ARCHITECTURE.md, "Testing the real audio path headless").
const AUDIO_TEST_PACKAGES: &[&str] = &["pulseaudio", "pulseaudio-utils", "libasound2-plugins"];

/// What the service and discovery tests add: `systemd-analyze verify` for the unit files in
/// dist/systemd/, and `ip` for the network namespaces of the mDNS test.
const SERVICE_TEST_PACKAGES: &[&str] = &["systemd", "iproute2"];

/// The players the RTP test opens the stream with (tests/e2e_rtp.rs).
const PLAYER_TEST_PACKAGES: &[&str] = &[
    "ffmpeg",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-base",
];

/// What the dashboard test adds: headless chromium and its WebDriver server.
const BROWSER_TEST_PACKAGES: &[&str] = &["chromium", "chromium-driver"];

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo [ARGS...]   run the loopback demo (streamd + listen in one process);
                   ARGS go to the demo, e.g. `cargo xtask demo -- --listeners 3`
                   or `cargo xtask demo -- --codec opus:96000`
  test [--repeat N] every check CI runs: fmt, clippy, the whole test suite; with --repeat,
                   then the real-time tests N more times (a flakiness check)
  bench-peers      compare earshot with snapserver and GStreamer (slow; not part of test)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "demo" => demo(rest),
        "test" => match parse_repeat(rest) {
            Some(n) => test(n),
            None => {
                eprint!("xtask: test takes only `--repeat N`\n{USAGE}");
                Ok(ExitCode::from(2))
            }
        },
        "bench-peers" => bench_peers(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprint!("xtask: unknown command `{other}`\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

fn demo(args: &[String]) -> Result<ExitCode> {
    install::ensure_packages(BUILD_PACKAGES)?;
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--example", "loopback", "--"])
        .args(args);
    Ok(exit_code(status(&mut cmd)?))
}

/// `[]` → 0, `["--repeat", "N"]` → N; anything else is a usage error.
fn parse_repeat(args: &[String]) -> Option<u32> {
    match args {
        [] => Some(0),
        [flag, n] if flag == "--repeat" => n.parse().ok(),
        _ => None,
    }
}

/// The real-time tests (`cargo test` arguments): every test binary that runs over real sockets
/// on the wall clock (the root end-to-end and tool tests, listen's and streamd's loopback and
/// command-line tests, the fan-out and the load tool's stand-in), repeated by `test --repeat N`.
/// Everything else runs on simulated time.
const REAL_TIME_TESTS: [&[&str]; 4] = [
    &[
        "-p",
        "earshot",
        "--test",
        "e2e_*",
        "--test",
        "impair",
        "--test",
        "load_tool",
        "--test",
        "pulse",
    ],
    &["-p", "listen", "--test", "loopback", "--test", "cli"],
    &[
        "-p",
        "streamd",
        "--test",
        "loopback",
        "--test",
        "cli",
        "--test",
        "fanout",
        "--test",
        "log_budget",
    ],
    &["-p", "testkit", "--test", "fake_server"],
];

fn test(repeat: u32) -> Result<ExitCode> {
    let all: Vec<&str> = BUILD_PACKAGES
        .iter()
        .chain(AUDIO_TEST_PACKAGES)
        .chain(SERVICE_TEST_PACKAGES)
        .chain(PLAYER_TEST_PACKAGES)
        .chain(BROWSER_TEST_PACKAGES)
        .copied()
        .collect();
    install::ensure_packages(&all)?;
    install::ensure_rust_components()?;
    let steps: [(&str, &[&str]); 4] = [
        ("format", &["fmt", "--all", "--check"]),
        (
            "lint",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // The end-to-end tests run these binaries; built first, the tests only find them.
        (
            "binaries",
            &["build", "--workspace", "--bins", "--examples"],
        ),
        ("tests", &["test", "--workspace", "--all-targets"]),
    ];
    for (name, args) in steps {
        eprintln!("xtask: == {name}: cargo {}", args.join(" "));
        // PulseAudio is installed by now, so the real-audio tests must run, not skip.
        // So are the unit-file check and, as root, the network-namespace test and the
        // dashboard in chromium.
        let mut cmd = cargo();
        cmd.args(args)
            .env("EARSHOT_REQUIRE_PULSE", "1")
            .env("EARSHOT_REQUIRE_SYSTEMD", "1")
            .env("EARSHOT_REQUIRE_PLAYERS", "1");
        if is_root() {
            cmd.env("EARSHOT_REQUIRE_NETNS", "1")
                .env("EARSHOT_REQUIRE_BROWSER", "1");
        }
        let st = status(&mut cmd)?;
        if !st.success() {
            eprintln!("xtask: {name} failed");
            return Ok(exit_code(st));
        }
    }
    // Doc tests are not part of --all-targets.
    eprintln!("xtask: == doc tests: cargo test --workspace --doc");
    let st = status(cargo().args(["test", "--workspace", "--doc"]))?;
    if !st.success() {
        return Ok(exit_code(st));
    }
    for round in 1..=repeat {
        for args in REAL_TIME_TESTS {
            eprintln!(
                "xtask: == real-time tests, repeat {round}/{repeat}: cargo test {}",
                args.join(" ")
            );
            let st = status(
                cargo()
                    .arg("test")
                    .args(args)
                    .env("EARSHOT_REQUIRE_PULSE", "1"),
            )?;
            if !st.success() {
                eprintln!("xtask: real-time tests failed on repeat {round}/{repeat}");
                return Ok(exit_code(st));
            }
        }
    }
    eprintln!("xtask: all checks passed");
    Ok(ExitCode::SUCCESS)
}

fn bench_peers(args: &[String]) -> Result<ExitCode> {
    install::ensure_packages(BUILD_PACKAGES)?;
    std::env::set_current_dir(workspace_root()).context("cannot enter the workspace root")?;
    let st = status(cargo().args([
        "build",
        "--release",
        "-p",
        "streamd",
        "-p",
        "earshot",
        "--bins",
        "--examples",
    ]))?;
    if !st.success() {
        return Ok(exit_code(st));
    }
    bench_peers::run(args)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether we run as root (the network-namespace test needs it).
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The cargo that runs us, so a toolchain chosen by rustup or `+nightly` is kept.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    if std::env::var_os("CI").is_some() {
        // A CI build is cold and thrown away: incremental artifacts only cost time there.
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

fn workspace_root() -> std::path::PathBuf {
    // crates/xtask → the workspace root.
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

fn status(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not run {cmd:?}"))
}

fn exit_code(st: std::process::ExitStatus) -> ExitCode {
    match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
