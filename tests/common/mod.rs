//! Shared harness of the end-to-end tests: the real `streamd` and `listen` binaries as child
//! processes on 127.0.0.1, driven through their command-line contracts (README "Usage").
//!
//! Every process started here is stopped by its PID when its guard drops, so a failing test
//! leaves nothing running.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod netns;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous ceiling for anything that should take a second on an idle machine: CI is a loaded
/// 2-core box.
pub const SLOW: Duration = Duration::from_secs(30);

/// Source trees the binaries under test are built from (those that exist): a file here newer
/// than a binary means the binary is stale.
const SOURCES: [&str; 7] = [
    "crates/proto/src",
    "crates/repair/src",
    "crates/streamd/src",
    "crates/listen/src",
    "crates/logfile/src",
    "crates/testkit/src",
    "examples/loopback.rs",
];

/// Newest modification time of any file under `path`.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    let mut newest = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        newest = newest.max(newest_mtime(&entry.path()));
    }
    newest
}

/// The folder cargo puts this profile's binaries in: the test executable runs from
/// `<target>/<profile>/deps/`, so `CARGO_TARGET_DIR` and the profile are honoured as cargo
/// applied them.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn artifact(name: &str, example: bool) -> PathBuf {
    if example {
        profile_dir().join("examples").join(name)
    } else {
        profile_dir().join(name)
    }
}

/// Every artifact the end-to-end tests run.
const ARTIFACTS: [(&str, bool); 3] = [("streamd", false), ("listen", false), ("loopback", true)];

/// Whether every artifact exists and is newer than every source file.
fn artifacts_fresh() -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = SOURCES
        .iter()
        .filter_map(|s| newest_mtime(&root.join(s)))
        .max();
    ARTIFACTS.iter().all(|&(name, example)| {
        std::fs::metadata(artifact(name, example))
            .and_then(|m| m.modified())
            .is_ok_and(|built| newest_source.is_none_or(|src| built >= src))
    })
}

/// Returns the path of a workspace binary (`streamd`, `listen`) or, with `example = true`, an
/// example of this package (`loopback`).
///
/// `cargo xtask test` builds them (`cargo build --bins --examples`) before the tests run, so
/// normally this only finds them. When one is missing or older than a source file (a plain
/// `cargo test` after an edit), the first caller in this process builds them once; cargo's own
/// lock makes test processes running in parallel wait for that one build instead of racing it.
pub fn built(name: &str, example: bool) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        if artifacts_fresh() {
            return;
        }
        let st = Command::new(env!("CARGO"))
            .args([
                "build", "--quiet", "-p", "streamd", "-p", "listen", "-p", "earshot",
            ])
            .args(["--bins", "--example", "loopback"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building the binaries under test failed");
    });
    let path = artifact(name, example);
    assert!(
        path.exists(),
        "{} not found after building it",
        path.display()
    );
    path
}

/// Path of a workspace binary (`streamd`, `listen`), built if needed.
pub fn bin(name: &str) -> PathBuf {
    built(name, false)
}

/// A fixture under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The demo clip (8 s mp3): long enough for tests that act mid-stream.
pub fn demo_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/assets/earshot-demo.mp3")
}

/// A fresh temporary folder, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("earshot-e2e-")
        .tempdir()
        .expect("temp dir")
}

/// Lines a child wrote to stderr, shared with the thread that drains the pipe (a full pipe
/// would block the child).
#[derive(Clone, Default)]
struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    fn push(&self, line: String) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().push(line);
        cv.notify_all();
    }
}

/// A child process with its stderr captured line by line and its stdout captured whole.
pub struct Proc {
    /// Which program, for messages.
    pub name: String,
    child: Child,
    stderr: Lines,
    stdout: Arc<Mutex<String>>,
    /// The threads draining stderr and stdout: joined once the child has exited, so its whole
    /// output is in.
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// When the child was started.
    pub started: Instant,
}

impl Proc {
    /// Starts `program args…` with extra environment variables.
    pub fn spawn(program: &Path, args: &[String], envs: &[(String, String)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        let stderr = Lines::default();
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                sink.push(strip_ansi(&line));
            }
        });
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut out_pipe = child.stdout.take().unwrap();
        let out = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            *out.lock().unwrap() = s;
        });
        let name = program.file_name().unwrap().to_string_lossy().into_owned();
        Proc {
            name,
            child,
            stderr,
            stdout,
            readers: vec![err_reader, out_reader],
            status: None,
            started: Instant::now(),
        }
    }

    /// The child's PID, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stderr line contains `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.stderr.0;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.0.0.lock().unwrap().join("\n")
    }

    /// Everything written to stdout (complete once the child has exited).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends a signal (`INT`, `TERM`, `KILL`, `STOP`, `CONT`) to the child by its PID, with
    /// one system call: when it returns, the signal is pending in the child.
    pub fn signal(&self, sig: &str) {
        use nix::sys::signal::{Signal, kill};
        let signal: Signal = format!("SIG{sig}")
            .parse()
            .unwrap_or_else(|e| panic!("no signal SIG{sig}: {e}"));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        kill(pid, signal).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// Waits until `count` stderr lines contain `needle`.
    pub fn wait_for_lines(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.stderr.0;
        let mut lines = m.lock().unwrap();
        loop {
            if lines.iter().filter(|l| l.contains(needle)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.status {
                return Some(st);
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                self.status = Some(st);
                // The pipes close with the child: its output is complete once both are drained.
                for r in self.readers.drain(..) {
                    r.join().expect("output reader panicked");
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and returns the exit code, failing the test with the child's stderr if it
    /// does not exit in time or dies from a signal.
    pub fn exit_code(&mut self, timeout: Duration) -> i32 {
        match self.wait_timeout(timeout) {
            Some(st) => st.code().unwrap_or_else(|| {
                panic!(
                    "{} died from a signal ({st}); stderr:\n{}",
                    self.name,
                    self.stderr()
                )
            }),
            None => panic!(
                "{} still running after {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `streamd` and the address it listens on.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// Where listeners connect (127.0.0.1:ephemeral).
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `streamd --bind 127.0.0.1 --port 0 --file FILE ARGS…` and waits for its
    /// `listening on ADDR:PORT` line.
    pub fn start(file: &Path, args: &[&str]) -> Server {
        Server::start_on("127.0.0.1", file, args)
    }

    /// Starts `streamd --bind BIND --port 0 --file FILE ARGS…` and waits for its
    /// `listening on ADDR:PORT` line.
    pub fn start_on(bind: &str, file: &Path, args: &[&str]) -> Server {
        let file = file.display().to_string();
        let mut all = vec!["--file", file.as_str()];
        all.extend_from_slice(args);
        Server::spawn(bind, &all)
    }

    /// Starts `streamd --bind 127.0.0.1 --port 0 --relay-from UP ARGS…` and waits for its
    /// `listening on ADDR:PORT` line.
    pub fn relay(up: SocketAddr, args: &[&str]) -> Server {
        let up = up.to_string();
        let mut all = vec!["--relay-from", up.as_str()];
        all.extend_from_slice(args);
        Server::spawn("127.0.0.1", &all)
    }

    /// Starts `streamd --bind BIND --port 0 ARGS…` (ARGS name the input) and waits for its
    /// `listening on ADDR:PORT` line.
    pub fn spawn(bind: &str, args: &[&str]) -> Server {
        let mut all: Vec<String> = ["--bind", bind, "--port", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(&bin("streamd"), &all, &[]);
        let line = proc.wait_for_line("listening on", SLOW).unwrap_or_else(|| {
            panic!(
                "streamd never said `listening on`; stderr:\n{}",
                proc.stderr()
            )
        });
        let addr = line
            .split("listening on")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { proc, addr }
    }
}

/// A running `listen` writing a WAV and a stats JSON into a temp folder.
pub struct Listener {
    /// The process.
    pub proc: Proc,
    /// Where its WAV goes.
    pub wav: PathBuf,
    /// Where its statistics JSON goes.
    pub json: PathBuf,
}

impl Listener {
    /// Starts `listen --server ADDR --output DIR/NAME.wav --stats-json DIR/NAME.json --quiet
    /// ARGS…`.
    pub fn start(server: SocketAddr, dir: &Path, name: &str, args: &[&str]) -> Listener {
        let wav = dir.join(format!("{name}.wav"));
        let json = dir.join(format!("{name}.json"));
        let mut all = vec![
            "--server".to_string(),
            server.to_string(),
            "--output".into(),
            wav.display().to_string(),
            "--stats-json".into(),
            json.display().to_string(),
            "--quiet".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        Listener {
            proc: Proc::spawn(&bin("listen"), &all, &[]),
            wav,
            json,
        }
    }

    /// The statistics JSON it wrote at exit.
    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|e| {
            panic!(
                "read {}: {e}; stderr:\n{}",
                self.json.display(),
                self.proc.stderr()
            )
        });
        serde_json::from_str(&text).unwrap()
    }

    /// The samples of the WAV it wrote.
    pub fn samples(&self) -> (hound::WavSpec, Vec<i16>) {
        read_wav(&self.wav)
    }
}

/// Spec and interleaved samples of a 16-bit WAV.
pub fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let spec = r.spec();
    let samples = r.samples::<i16>().collect::<Result<Vec<_>, _>>().unwrap();
    (spec, samples)
}

/// A counter from the statistics JSON.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no integer `{key}`: {stats}"))
}

/// The first index at which two sample streams differ, for readable failures.
pub fn first_difference(a: &[i16], b: &[i16]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Resident memory of a process, from /proc, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Polls `done` every 10 ms until it holds; fails the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a `listen --output` WAV holds audio: the WAV sink writes through a 64 KiB
/// buffer, so a file longer than its header means audio was received, buffered and played.
pub fn wait_for_audio(l: &Listener) {
    wait_until(
        &format!("audio in {} ({})", l.wav.display(), l.proc.stderr()),
        SLOW,
        || std::fs::metadata(&l.wav).is_ok_and(|m| m.len() > 44),
    );
}

/// A real listener on the wire: `listen`'s session joins, reports and leaves like `listen`
/// does ([`testkit::peer`]), and every datagram the server sends it is kept as it arrived, so a
/// test can read `End.last_seq` and count `End` copies off the wire, and time its actions on a
/// datagram's arrival.
pub struct RawListener {
    /// The listener and what it saw.
    pub peer: testkit::peer::Listener,
    /// The stream as the `Welcome` described it.
    pub info: proto::StreamInfo,
}

impl RawListener {
    /// Joins `server` (127.0.0.1 or ::1, as the server's address is), the handshake retrying
    /// until [`SLOW`].
    pub fn join(server: SocketAddr) -> RawListener {
        let config = testkit::peer::PeerConfig {
            timeout: SLOW,
            ..Default::default()
        };
        let peer = testkit::peer::Listener::join(server, config).unwrap();
        let info = match peer.wait(SLOW, testkit::peer::Seen::joined) {
            Some(Ok(info)) => info,
            Some(Err(e)) => panic!("not joined to {server}: {e:?}"),
            None => panic!("no Welcome from {server}"),
        };
        RawListener { peer, info }
    }

    /// Waits until `f` holds of what arrived; panics after [`SLOW`] naming `what`.
    pub fn wait_for<R>(&self, what: &str, f: impl FnMut(&testkit::peer::Seen) -> Option<R>) -> R {
        self.peer
            .wait(SLOW, f)
            .unwrap_or_else(|| panic!("{what}: not after {SLOW:?}"))
    }

    /// Copies of `End` received so far, every datagram already in the socket included.
    pub fn ends(&self) -> Vec<proto::End> {
        self.peer.sync();
        self.peer.seen().ends.iter().map(|(_, e)| *e).collect()
    }
}
