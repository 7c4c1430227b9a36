//! `cargo xtask bench-peers`: serve the same audio to N listeners on loopback through the floor
//! (bare sendmmsg / GSO loops), snapserver (Debian's, FLAC over TCP to N `snapclient`s) and
//! GStreamer (`rtpL16pay ! multiudpsink` to N `udpsrc ! rtpjitterbuffer` receivers), and print one
//! table: server CPU seconds per audio second per listener, server RSS, datagrams and bytes per
//! second per listener, loss.
//!
//! `--listeners 0` also runs earshot, earshot-opus and snapserver with no listener: what their
//! stream costs by itself (decoding, encoding, timers). Each N's cost per listener above that
//! is then printed beside the plain ratios, which at small N weigh that fixed cost too.
//!
//! Never part of `cargo xtask test`. Installs the peers with apt-get when missing (as root;
//! otherwise prints the command). Every process it starts is stopped by its PID at the end, also
//! on error (see [`Procs`]). All traffic stays on 127.0.0.1.
//!
//! Hooks: the `earshot` column runs `target/release/streamd` (its command line is
//! [`STREAMD_ARGS`]; the `earshot-opus` column adds `--codec opus`, 128 kbit/s) and the load tool
//! (`target/release/examples/load --json`); the `fake` column runs the load tool's stand-in server
//! (`load --fake-server`) the same way: the same fan-out without streamd's decoding and pacing.
//! The `floor-*` columns run `target/release/examples/floor --json`. `cargo xtask bench-peers`
//! builds them first (`cargo build --release -p streamd -p earshot --bins --examples`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::{install, procfs};

/// Debian packages the peers need.
const PACKAGES: &[&str] = &[
    "snapserver",
    "snapclient",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-ugly",
];

/// streamd's command line for the earshot column; `{port}`, `{file}` and `{max}` are filled in.
pub const STREAMD_ARGS: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--port",
    "{port}",
    "--file",
    "{file}",
    "--max-clients",
    "{max}",
    "--loop",
    "--start",
    "now",
];

/// Seconds of audio in the generated source file (snapserver loops it; GStreamer plays it once,
/// so it must outlast the longest run).
const SOURCE_SECONDS: u32 = 600;

/// `--listeners` when not given: each stream with nobody listening (its own cost, so that
/// every N's cost per listener above it is printed too), one listener, and two rooms.
const DEFAULT_LISTENERS: &[usize] = &[0, 1, 100, 200];

/// Time to let a system settle (clients connected, buffers filled) before measuring.
const WARMUP: Duration = Duration::from_secs(3);

/// Most snapclient processes started without `--force`: each decodes FLAC in its own process;
/// 500 on this 2-core machine drove the load average to 95 and neither side kept real time.
const MAX_SNAPCLIENTS: usize = 300;

/// A run "holds" when its throughput per listener is at least this share of the same system's
/// throughput at the smallest N measured; larger N are then skipped for a system that did not.
const HOLD_SHARE: f64 = 0.9;

/// The systems `--listeners 0` runs: servers that decode (and encode) their stream with no
/// listener, so that run measures the stream's own cost.
const IDLE_PEERS: &[&str] = &["earshot", "earshot-opus", "snapserver"];

/// GStreamer receiver branches per `gst-launch-1.0` process.
const GST_BRANCHES_PER_PROCESS: usize = 100;

/// How a run is configured.
#[derive(Debug, Clone)]
struct Opts {
    listeners: Vec<usize>,
    duration: Duration,
    peers: Vec<String>,
    install: bool,
    force: bool,
    out: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
struct Row {
    system: String,
    n: usize,
    cpu_per_listener: Option<f64>,
    /// Server CPU s per audio s (the share of a core) with no listener; N = 0 rows only.
    idle_cores: Option<f64>,
    rss_mib: Option<f64>,
    dgrams_per_s: Option<f64>,
    bytes_per_s: Option<f64>,
    loss: String,
    note: String,
}

impl Row {
    /// The server's whole CPU s per audio s at this N (per listener × N, or the idle figure).
    fn cores(&self) -> Option<f64> {
        if self.n == 0 {
            self.idle_cores
        } else {
            Some(self.cpu_per_listener? * self.n as f64)
        }
    }
}

/// Child processes, stopped by PID (SIGTERM, then SIGKILL after a grace) when dropped.
#[derive(Default)]
pub struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, cmd: &mut Command) -> anyhow::Result<u32> {
        let c = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let pid = c.id();
        self.0.push(c);
        Ok(pid)
    }

    fn stop_all(&mut self) {
        for c in &self.0 {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill(); // SIGKILL to this child's PID
                let _ = c.wait();
            }
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn usage() -> &'static str {
    "cargo xtask bench-peers [--listeners 0,1,100,200] [--duration SECS] \
     [--peers floor,fake,earshot,earshot-opus,snapserver,gstreamer] [--no-install] [--force] \
     [--out DIR]"
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        listeners: DEFAULT_LISTENERS.to_vec(),
        duration: Duration::from_secs(10),
        peers: [
            "floor",
            "fake",
            "earshot",
            "earshot-opus",
            "snapserver",
            "gstreamer",
        ]
        .map(String::from)
        .to_vec(),
        install: true,
        force: false,
        out: PathBuf::from("target/bench-peers"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value; usage: {}", usage()))
        };
        match a.as_str() {
            "--listeners" => {
                o.listeners = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--listeners takes numbers like 1,100,1000")?;
                if o.listeners.iter().any(|&n| n > 10_000) {
                    bail!("--listeners must be between 0 and 10000");
                }
            }
            "--duration" => {
                let s: f64 = val()?.parse().context("--duration takes seconds")?;
                if !(1.0..=600.0).contains(&s) {
                    bail!("--duration must be 1..600 seconds");
                }
                o.duration = Duration::from_secs_f64(s);
            }
            "--peers" => o.peers = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--no-install" => o.install = false,
            "--force" => o.force = true,
            "--out" => o.out = PathBuf::from(val()?),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; usage: {}", usage()),
        }
    }
    Ok(o)
}

/// Entry point for `cargo xtask bench-peers ARGS...`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let wants = |p: &str| o.peers.iter().any(|x| x == p);
    if (wants("snapserver") || wants("gstreamer")) && o.install {
        // Without them those columns fail and say so; the others still run.
        if let Err(e) = install::ensure_packages(PACKAGES) {
            eprintln!("bench-peers: {e:#}");
        }
    }
    let (wav, raw) = write_source(&o.out)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut listeners = o.listeners.clone();
    listeners.sort_unstable();
    // system → bytes/s per listener at its smallest N (the real-time reference).
    let mut baseline: std::collections::HashMap<String, f64> = Default::default();
    let mut gave_up: std::collections::HashMap<String, usize> = Default::default();
    for &n in &listeners {
        for peer in &o.peers {
            if let Some(&at) = gave_up.get(peer) {
                rows.push(Row {
                    system: peer.clone(),
                    n,
                    loss: "-".into(),
                    note: format!("skipped: did not hold at N={at}"),
                    ..Row::default()
                });
                continue;
            }
            if n == 0 && !IDLE_PEERS.contains(&peer.as_str()) {
                // The floor, the fake server and GStreamer's sender have no stream of their
                // own to cost anything without a listener.
                continue;
            }
            if peer == "snapserver" && n > MAX_SNAPCLIENTS && !o.force {
                rows.push(Row {
                    system: peer.clone(),
                    n,
                    loss: "-".into(),
                    note: format!("skipped: over {MAX_SNAPCLIENTS} snapclient processes (--force)"),
                    ..Row::default()
                });
                continue;
            }
            eprintln!(
                "bench-peers: {peer} with {n} listeners for {:?} ...",
                o.duration
            );
            let res = match peer.as_str() {
                "floor" => floor(n, &o),
                "fake" => earshot_like(n, &o, None).map(|r| vec![r]),
                "earshot" => earshot_like(n, &o, Some((&wav, "pcm"))).map(|r| vec![r]),
                "earshot-opus" => earshot_like(n, &o, Some((&wav, "opus"))).map(|r| vec![r]),
                "snapserver" => snapserver(n, &o, &raw).map(|r| vec![r]),
                "gstreamer" => gstreamer(n, &o, &wav).map(|r| vec![r]),
                other => bail!("unknown peer {other}; usage: {}", usage()),
            };
            match res {
                Ok(r) => {
                    for row in &r {
                        eprintln!("{}", render_row(row));
                        let Some(b) = row.bytes_per_s else { continue };
                        let base = *baseline.entry(row.system.clone()).or_insert(b);
                        if b < HOLD_SHARE * base {
                            gave_up.insert(peer.clone(), n);
                        }
                    }
                    rows.extend(r);
                }
                Err(e) => rows.push(Row {
                    system: peer.clone(),
                    n,
                    loss: "-".into(),
                    note: format!("failed: {e:#}"),
                    ..Row::default()
                }),
            }
        }
    }
    let table = render(&rows, o.duration);
    print!("{table}");
    let path = o.out.join("table.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench-peers: table written to {}", path.display());
    Ok(())
}

/// Writes the source: `SOURCE_SECONDS` of 44.1 kHz stereo s16le (a quiet tone with a little
/// noise, so FLAC cannot compress it to nothing) as `source.wav` and headerless `source.raw`.
fn write_source(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let wav = dir.join("source.wav");
    let raw = dir.join("source.raw");
    let frames = 44_100 * SOURCE_SECONDS;
    let data_len = frames * 4;
    if std::fs::metadata(&wav).is_ok_and(|m| m.len() == u64::from(data_len) + 44)
        && std::fs::metadata(&raw).is_ok_and(|m| m.len() == u64::from(data_len))
    {
        return Ok((wav, raw));
    }
    let mut pcm = Vec::with_capacity(data_len as usize);
    let mut x: u32 = 1;
    for i in 0..frames {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let t = f64::from(i) / 44_100.0;
        let s = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            + ((x % 512) as i16 - 256);
        pcm.extend_from_slice(&s.to_le_bytes());
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&2u16.to_le_bytes()); // channels
    h.extend_from_slice(&44_100u32.to_le_bytes());
    h.extend_from_slice(&(44_100u32 * 4).to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    let mut f = std::fs::File::create(&wav)?;
    f.write_all(&h)?;
    f.write_all(&pcm)?;
    std::fs::write(&raw, &pcm)?;
    Ok((wav, raw))
}

/// Free local UDP (and, by luck of the draw, TCP) port on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn exe(name: &str) -> anyhow::Result<PathBuf> {
    let p = PathBuf::from("target/release/examples").join(name);
    if !p.exists() {
        bail!(
            "{} not built: run `cargo build --release --examples`",
            p.display()
        );
    }
    Ok(p)
}

fn json_f64(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    let mut v = v;
    for k in path {
        v = v.get(k)?;
    }
    v.as_f64()
}

/// The floor columns: `examples/floor --json` in both modes.
fn floor(n: usize, o: &Opts) -> anyhow::Result<Vec<Row>> {
    let bin = exe("floor")?;
    let mut rows = Vec::new();
    for mode in ["gso", "sendmmsg"] {
        let out = Command::new(&bin)
            .args(["--mode", mode, "--listeners", &n.to_string(), "--json"])
            .args(["--duration", &o.duration.as_secs_f64().to_string()])
            .output()?;
        if !out.status.success() {
            bail!("floor failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let audio_s = json_f64(&j, &["audio_s"]).unwrap_or(1.0);
        let per = |k: &str| json_f64(&j, &[k]).map(|v| v / audio_s / n as f64);
        rows.push(Row {
            system: format!("floor-{mode}"),
            n,
            cpu_per_listener: json_f64(&j, &["cpu_per_audio_s_per_listener"]),
            idle_cores: None,
            rss_mib: None,
            dgrams_per_s: per("datagrams"),
            bytes_per_s: per("bytes"),
            loss: format!(
                "{} dropped",
                json_f64(&j, &["rx_queue_drops"]).unwrap_or(0.0)
            ),
            note: format!(
                "tick send p99 {:.1} ms",
                json_f64(&j, &["tick_send_ms", "p99"]).unwrap_or(0.0)
            ),
        });
    }
    Ok(rows)
}

/// The earshot columns (`stream` = Some((file, codec)): target/release/streamd `--codec codec`)
/// or the fake-server column (`stream` = None: `load --fake-server`), all measured by the load
/// tool.
fn earshot_like(n: usize, o: &Opts, stream: Option<(&Path, &str)>) -> anyhow::Result<Row> {
    let load = exe("load")?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut procs = Procs::default();
    let total = o.duration + WARMUP + Duration::from_secs(10);
    let (system, pid) = match stream {
        None => (
            "earshot-fake",
            procs.spawn(
                Command::new(&load)
                    .args(["--fake-server", "--server", &addr])
                    .args(["--duration", &total.as_secs_f64().to_string()])
                    .stdout(Stdio::null()),
            )?,
        ),
        Some((f, codec)) => {
            let bin = PathBuf::from("target/release/streamd");
            if !bin.exists() {
                bail!("target/release/streamd not built (cargo build --release -p streamd)");
            }
            let args: Vec<String> = STREAMD_ARGS
                .iter()
                .map(|a| {
                    a.replace("{port}", &port.to_string())
                        .replace("{file}", &f.display().to_string())
                        .replace("{max}", &(n + 10).to_string())
                })
                .collect();
            let system = if codec == "pcm" {
                "earshot"
            } else {
                "earshot-opus"
            };
            (
                system,
                procs.spawn(
                    Command::new(bin)
                        .args(&args)
                        .args(["--codec", codec])
                        .stdout(Stdio::null()),
                )?,
            )
        }
    };
    if n == 0 {
        // No listener: the stream's own cost (decoding, encoding, the timer), read like
        // snapserver's and GStreamer's.
        std::thread::sleep(WARMUP);
        let (cpu, rss) = measure(pid, o)?;
        procs.stop_all();
        return Ok(idle_row(system, cpu, rss, o));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(&load)
        .args(["--server", &addr, "--listeners", &n.to_string(), "--json"])
        .args(["--duration", &o.duration.as_secs_f64().to_string()])
        .args(["--server-pid", &pid.to_string()])
        .output()?;
    procs.stop_all();
    if !out.status.success() {
        bail!("load tool failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ls = json_f64(&j, &["listener_seconds"]).unwrap_or(0.0).max(1e-9);
    let received = json_f64(&j, &["totals", "received"]).unwrap_or(0.0);
    Ok(Row {
        system: system.into(),
        n,
        cpu_per_listener: json_f64(&j, &["server_proc", "cpu_per_audio_s_per_listener"]),
        idle_cores: None,
        rss_mib: json_f64(&j, &["server_proc", "rss_peak_kib"]).map(|k| k / 1024.0),
        dgrams_per_s: Some(received / ls),
        // Every datagram from the server (audio and parity), UDP payloads with headers.
        bytes_per_s: json_f64(&j, &["bytes_per_listener_per_s"]),
        loss: format!(
            "{} of {} (worst {})",
            json_f64(&j, &["totals", "lost"]).unwrap_or(0.0),
            json_f64(&j, &["totals", "expected"]).unwrap_or(0.0),
            json_f64(&j, &["worst", "counts", "lost"]).unwrap_or(0.0)
        ),
        note: format!(
            "accepted {}; skew p99 {:.1} ms; load tool {:.0}% core, rx drops {}",
            json_f64(&j, &["accepted"]).unwrap_or(0.0),
            json_f64(&j, &["skew_ms", "p99"]).unwrap_or(0.0),
            100.0 * json_f64(&j, &["tool", "core_fraction"]).unwrap_or(0.0),
            json_f64(&j, &["tool", "rx_queue_drops"]).unwrap_or(0.0)
        ),
    })
}

/// The row of a run with no listener: `cpu` s over `o.duration`.
fn idle_row(system: &str, cpu: f64, rss_mib: f64, o: &Opts) -> Row {
    let cores = cpu / o.duration.as_secs_f64();
    Row {
        system: system.into(),
        n: 0,
        idle_cores: Some(cores),
        rss_mib: Some(rss_mib),
        loss: "-".into(),
        note: format!("no listener: {:.2} % of a core", cores * 100.0),
        ..Row::default()
    }
}

/// Measures a server process over `o.duration` from now: CPU s and peak RSS.
fn measure(pid: u32, o: &Opts) -> anyhow::Result<(f64, f64)> {
    let cpu = || procfs::process_cpu(pid).with_context(|| format!("process {pid} is gone"));
    let cpu0 = cpu()?;
    let end = Instant::now() + o.duration;
    let mut rss_kib = 0;
    while Instant::now() < end {
        rss_kib = rss_kib.max(procfs::process_status_kib(pid, "VmRSS").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok((
        cpu()?.saturating_sub(cpu0).as_secs_f64(),
        rss_kib as f64 / 1024.0,
    ))
}

/// Sums `key:VALUE` fields of `ss -tin` for established TCP connections from `port`.
fn ss_sum(port: u16, key: &str) -> f64 {
    let Ok(out) = Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
    else {
        return 0.0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix(':')?.parse::<f64>().ok())
        .sum()
}

/// snapserver with the raw file as a `file://` source (looped), FLAC (its default codec) over
/// TCP to `n` snapclients with the null file player.
fn snapserver(n: usize, o: &Opts, raw: &Path) -> anyhow::Result<Row> {
    let dir = o.out.join(format!("snap-{n}"));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("snapserver.conf");
    std::fs::write(&conf, "")?;
    let (port, ctl, http) = (free_port()?, free_port()?, free_port()?);
    let mut procs = Procs::default();
    let src = format!(
        "file://{}?name=bench&sampleformat=44100:16:2",
        std::fs::canonicalize(raw)?.display()
    );
    let pid = procs.spawn(
        Command::new("snapserver")
            .arg("-c")
            .arg(&conf)
            .args(["--stream.source", &src])
            .args(["--stream.bind_to_address", "127.0.0.1"])
            .args(["--stream.port", &port.to_string()])
            .args([
                "--tcp.bind_to_address",
                "127.0.0.1",
                "--tcp.port",
                &ctl.to_string(),
            ])
            .args(["--http.enabled", "false", "--http.port", &http.to_string()])
            .arg(format!("--server.datadir={}", dir.display()))
            .args(["--logging.sink", "null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..n {
        procs.spawn(
            Command::new("snapclient")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["--hostID", &format!("bench-{i}")])
                .args(["--player", "file:filename=null", "--logsink", "null"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
    }
    std::thread::sleep(WARMUP);
    let b0 = ss_sum(port, "bytes_acked");
    let s0 = ss_sum(port, "segs_out");
    let (cpu, rss) = measure(pid, o)?;
    let bytes = ss_sum(port, "bytes_acked") - b0;
    let segs = ss_sum(port, "segs_out") - s0;
    let conns = count_conns(port);
    procs.stop_all();
    if n == 0 {
        return Ok(idle_row("snapserver", cpu, rss, o));
    }
    let span = o.duration.as_secs_f64();
    Ok(Row {
        system: "snapserver".into(),
        n,
        cpu_per_listener: Some(cpu / o.duration.as_secs_f64() / n as f64),
        idle_cores: None,
        rss_mib: Some(rss),
        dgrams_per_s: Some(segs / span / n as f64),
        bytes_per_s: Some(bytes / span / n as f64),
        loss: "n/a (TCP)".into(),
        note: format!("FLAC over TCP; {conns} of {n} clients connected; segs/s for datagrams"),
    })
}

fn count_conns(port: u16) -> usize {
    Command::new("ss")
        .args([
            "-tnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

/// GStreamer: `filesrc ! decodebin ! audioconvert ! audioresample ! rtpL16pay ! multiudpsink` to
/// n - 1 `udpsrc ! rtpjitterbuffer ! rtpL16depay ! fakesink` branches (in processes of up to
/// [`GST_BRANCHES_PER_PROCESS`]) plus one probe socket here that counts RTP packets, bytes and
/// sequence gaps (loss); receive-queue drops of every receiver socket come from /proc/net/udp.
fn gstreamer(n: usize, o: &Opts, wav: &Path) -> anyhow::Result<Row> {
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.set_read_timeout(Some(Duration::from_millis(50)))?;
    let probe_port = probe.local_addr()?.port();
    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    seen.insert(probe_port);
    while ports.len() + 1 < n {
        let p = free_port()?;
        if seen.insert(p) {
            ports.push(p);
        }
    }
    let mut procs = Procs::default();
    let caps =
        "application/x-rtp,media=audio,clock-rate=44100,encoding-name=L16,channels=2,payload=96";
    for chunk in ports.chunks(GST_BRANCHES_PER_PROCESS) {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q");
        for p in chunk {
            cmd.args([
                "udpsrc",
                &format!("port={p}"),
                &format!("caps={caps}"),
                "!",
                "rtpjitterbuffer",
                "latency=200",
                "!",
                "rtpL16depay",
                "!",
                "fakesink",
                "sync=false",
            ]);
        }
        procs.spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let clients: Vec<String> = std::iter::once(probe_port)
        .chain(ports.iter().copied())
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let pid = procs.spawn(
        Command::new("gst-launch-1.0")
            .arg("-q")
            .arg("filesrc")
            .arg(format!("location={}", wav.display()))
            .args([
                "!",
                "decodebin",
                "!",
                "audioconvert",
                "!",
                "audioresample",
                "!",
            ])
            .arg("audio/x-raw,rate=44100,channels=2")
            .args(["!", "rtpL16pay", "mtu=1400", "!", "multiudpsink"])
            .arg(format!("clients={}", clients.join(",")))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    // Probe: counts on its own thread while `measure` samples the server.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dur = o.duration;
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut pkts, mut bytes, mut lost) = (0u64, 0u64, 0u64);
        let mut last: Option<u16> = None;
        let mut t_start: Option<Instant> = None;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(len) = probe.recv(&mut buf) else {
                continue;
            };
            let now = Instant::now();
            // Count only inside the measured window (after the warm-up).
            if t_start.is_none() {
                t_start = Some(now + WARMUP);
            }
            if t_start.is_some_and(|t| now < t || now > t + dur) || len < 12 {
                continue;
            }
            let seq = u16::from_be_bytes([buf[2], buf[3]]);
            if let Some(l) = last {
                lost += u64::from(seq.wrapping_sub(l).wrapping_sub(1)).min(1000);
            }
            last = Some(seq);
            pkts += 1;
            bytes += len as u64;
        }
        (pkts, bytes, lost)
    });
    std::thread::sleep(WARMUP);
    let (cpu, rss) = measure(pid, o)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pkts, bytes, lost) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
    let locals: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|&p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let drops = procfs::udp_drops(&locals).unwrap_or(0);
    let alive = procs.0.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)));
    procs.stop_all();
    let secs = o.duration.as_secs_f64();
    let mut note = String::from("RTP L16 over UDP; loss = probe seq gaps, + receiver queue drops");
    if !alive {
        let _ = write!(note, "; a gst process exited early");
    }
    Ok(Row {
        system: "gstreamer".into(),
        n,
        cpu_per_listener: Some(cpu / secs / n as f64),
        idle_cores: None,
        rss_mib: Some(rss),
        dgrams_per_s: Some(pkts as f64 / secs),
        bytes_per_s: Some(bytes as f64 / secs),
        loss: format!("{lost} of {} at probe; {drops} queue drops", pkts + lost),
        note,
    })
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn render(rows: &[Row], d: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nbench-peers: {} s measured per run, loopback, 44.1 kHz stereo s16\n",
        d.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| system | N | server CPU s / audio s / listener | server RSS MiB | datagrams/s/listener | bytes/s/listener | loss | notes |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        let _ = writeln!(s, "{}", render_row(r));
    }
    let mut ratios = ratios(rows);
    ratios.extend(above_idle(rows));
    ratios.extend(marginal(rows));
    if !ratios.is_empty() {
        let _ = writeln!(s);
        for line in ratios {
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

/// `other / ours N ×` for each earshot column (`ours`) against each other system, from a cost
/// per listener `cost(system)`: how many times cheaper earshot is.
fn ratio_parts(cost: impl Fn(&str) -> Option<f64>) -> Vec<String> {
    let mut parts = Vec::new();
    for ours in ["earshot", "earshot-opus"] {
        let Some(e) = cost(ours).filter(|&c| c > 0.0) else {
            continue;
        };
        for other in ["earshot", "snapserver", "gstreamer"] {
            if other == ours {
                continue;
            }
            if let Some(c) = cost(other).filter(|&c| c > 0.0) {
                parts.push(format!("{other} / {ours} {:.2} ×", c / e));
            }
        }
    }
    parts
}

/// Server CPU per listener of each system over each earshot column's, per N where both were
/// measured in this run: how many times cheaper earshot is per listener.
fn ratios(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for n in sorted_ns(rows) {
        let parts = ratio_parts(|system| {
            rows.iter()
                .find(|r| r.system == system && r.n == n)
                .and_then(|r| r.cpu_per_listener)
        });
        if !parts.is_empty() {
            out.push(format!(
                "N = {n}: server CPU per listener, {}",
                parts.join(", ")
            ));
        }
    }
    out
}

/// The N measured, in order, each once.
fn sorted_ns(rows: &[Row]) -> Vec<usize> {
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    ns.dedup();
    ns
}

/// Per N, each system's server CPU per listener above its own with no listener (an N = 0 run
/// in the same table), `(cpu(N) − cpu(0)) / N`, and the ratios of those: the fan-out compared
/// without the stream's fixed cost, from two direct measurements instead of a fit.
fn above_idle(rows: &[Row]) -> Vec<String> {
    let cores = |system: &str, n: usize| {
        rows.iter()
            .find(|r| r.system == system && r.n == n)
            .and_then(Row::cores)
    };
    let mut out = Vec::new();
    for n in sorted_ns(rows).into_iter().filter(|&n| n > 0) {
        let per = |system: &str| Some((cores(system, n)? - cores(system, 0)?) / n as f64);
        let mut parts: Vec<String> = ["earshot", "earshot-opus", "snapserver"]
            .iter()
            .filter_map(|&s| {
                let v = per(s)?;
                // At small N one listener's cost is below the runs' noise: say so rather than
                // print a negative cost.
                Some(if v < 0.0 {
                    format!("{s} within the noise of its N = 0 run")
                } else {
                    format!("{s} {v:.6}")
                })
            })
            .collect();
        parts.extend(ratio_parts(per));
        if !parts.is_empty() {
            out.push(format!(
                "N = {n}: server CPU per listener above the same system with none (N = 0), {}",
                parts.join(", ")
            ));
        }
    }
    out
}

/// A system's server CPU (cores) against N, fitted as `fixed + per_listener × N` by least
/// squares over the N it was measured at: the cost of one more listener, apart from what the
/// stream costs with none (decoding, encoding, timers). `None` below two distinct N.
fn fit(rows: &[Row], system: &str) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.system == system)
        .filter_map(|r| Some((r.n as f64, r.cores()?)))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let k = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / k;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let per = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    Some((my - per * mx, per))
}

/// The fitted cost of one more listener of each system, and its ratios to each earshot
/// column's: the fan-out compared without the fixed cost, which weighs on a small N.
fn marginal(rows: &[Row]) -> Vec<String> {
    let systems = ["earshot", "earshot-opus", "snapserver", "gstreamer"];
    let fits: Vec<(&str, (f64, f64))> = systems
        .iter()
        .filter_map(|&sys| Some((sys, fit(rows, sys)?)))
        .collect();
    if fits.is_empty() {
        return Vec::new();
    }
    let mut parts: Vec<String> = fits
        .iter()
        .map(|(sys, (fixed, per))| {
            format!("{sys} {per:.6} (fixed {:.2} % of a core)", fixed * 100.0)
        })
        .collect();
    parts.extend(ratio_parts(|system| {
        fits.iter()
            .find(|(s, _)| *s == system)
            .map(|(_, (_, per))| *per)
    }));
    vec![format!(
        "N = {}: server CPU per added listener (least squares over N), {}",
        sorted_ns(rows)
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        parts.join(", ")
    )]
}

fn render_row(r: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        r.system,
        r.n,
        fmt_opt(r.cpu_per_listener, 6),
        fmt_opt(r.rss_mib, 1),
        fmt_opt(r.dgrams_per_s, 1),
        fmt_opt(r.bytes_per_s, 0),
        r.loss,
        r.note
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn args_parse_and_reject() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&a(&[
            "--listeners",
            "1,100",
            "--duration",
            "5",
            "--no-install",
        ]))
        .unwrap();
        assert_eq!(o.listeners, vec![1, 100]);
        assert_eq!(o.duration, Duration::from_secs(5));
        assert!(!o.install);
        assert_eq!(
            parse(&a(&["--listeners", "0,200"])).unwrap().listeners,
            vec![0, 200]
        );
        assert_eq!(parse(&[]).unwrap().listeners, vec![0, 1, 100, 200]);
        assert!(parse(&a(&["--listeners", "10001"])).is_err());
        assert!(parse(&a(&["--duration"])).is_err());
        assert!(parse(&a(&["--bogus"])).is_err());
    }

    #[test]
    fn table_has_a_row_per_result() {
        let r = Row {
            system: "x".into(),
            n: 3,
            cpu_per_listener: Some(0.0005),
            loss: "0".into(),
            ..Row::default()
        };
        let t = render(&[r.clone(), r], Duration::from_secs(1));
        assert_eq!(t.matches("| x | 3 | 0.000500 |").count(), 2);
    }

    #[test]
    fn ratios_compare_each_system_with_each_earshot_column() {
        let row = |system: &str, n: usize, cpu: Option<f64>| Row {
            system: system.into(),
            n,
            cpu_per_listener: cpu,
            ..Row::default()
        };
        let rows = [
            row("earshot", 100, Some(0.0004)),
            row("earshot-opus", 100, Some(0.0001)),
            row("snapserver", 100, Some(0.0012)),
            row("earshot-opus", 250, Some(0.0001)),
            row("snapserver", 250, None),
        ];
        let r = ratios(&rows);
        assert_eq!(
            r,
            vec![
                "N = 100: server CPU per listener, snapserver / earshot 3.00 ×, \
                 earshot / earshot-opus 4.00 ×, snapserver / earshot-opus 12.00 ×"
                    .to_string()
            ]
        );
        assert!(render(&rows, Duration::from_secs(1)).contains("snapserver / earshot-opus 12.00"));
    }

    #[test]
    fn the_fit_separates_the_fixed_cost_from_each_added_listener() {
        // earshot-opus: 1 % of a core with no listener, 0.00004 per listener; snapserver:
        // 0.3 %, 0.0003 per listener. Per listener at N = 100 that is 0.00014 against 0.000303
        // (2.2 ×), but each added listener costs 7.5 × less.
        let row = |system: &str, n: usize, fixed: f64, per: f64| Row {
            system: system.into(),
            n,
            cpu_per_listener: Some(fixed / n as f64 + per),
            ..Row::default()
        };
        let rows = [
            row("earshot-opus", 100, 0.01, 0.00004),
            row("earshot-opus", 200, 0.01, 0.00004),
            row("earshot-opus", 250, 0.01, 0.00004),
            row("snapserver", 100, 0.003, 0.0003),
            row("snapserver", 250, 0.003, 0.0003),
            row("earshot", 100, 0.003, 0.00013),
        ];
        let (fixed, per) = fit(&rows, "earshot-opus").unwrap();
        assert!((fixed - 0.01).abs() < 1e-9 && (per - 0.00004).abs() < 1e-12);
        assert_eq!(fit(&rows, "earshot"), None, "one N is no slope");
        assert_eq!(
            marginal(&rows),
            vec![
                "N = 100, 200, 250: server CPU per added listener (least squares over N), \
                 earshot-opus 0.000040 (fixed 1.00 % of a core), snapserver 0.000300 (fixed \
                 0.30 % of a core), snapserver / earshot-opus 7.50 ×"
                    .to_string()
            ]
        );
        assert!(marginal(&rows[..1]).is_empty());
    }

    #[test]
    fn a_run_with_no_listener_gives_each_listeners_cost_above_the_stream() {
        // earshot-opus: 0.8 % of a core with none, 1.6 % at N = 200 (0.00004 per listener
        // above it); earshot: 0.3 % and 3.1 % (0.00014); snapserver: 0.5 % and 8.5 % (0.0004).
        let at = |system: &str, n: usize, cores: f64| Row {
            system: system.into(),
            n,
            cpu_per_listener: (n > 0).then(|| cores / n as f64),
            idle_cores: (n == 0).then_some(cores),
            ..Row::default()
        };
        let rows = [
            at("earshot", 0, 0.003),
            at("earshot-opus", 0, 0.008),
            at("snapserver", 0, 0.005),
            at("earshot", 200, 0.031),
            at("earshot-opus", 200, 0.016),
            at("snapserver", 200, 0.085),
            at("earshot-opus", 300, 0.02),
        ];
        assert_eq!(
            above_idle(&rows),
            vec![
                "N = 200: server CPU per listener above the same system with none (N = 0), \
                 earshot 0.000140, earshot-opus 0.000040, snapserver 0.000400, snapserver / \
                 earshot 2.86 ×, earshot / earshot-opus 3.50 ×, snapserver / earshot-opus \
                 10.00 ×"
                    .to_string(),
                "N = 300: server CPU per listener above the same system with none (N = 0), \
                 earshot-opus 0.000040"
                    .to_string()
            ]
        );
        // The N = 0 rows feed the fit as measured fixed costs, and stay out of the ratios.
        let (fixed, per) = fit(&rows, "earshot-opus").unwrap();
        assert!((fixed - 0.008).abs() < 1e-9 && (per - 0.00004).abs() < 1e-12);
        assert!(ratios(&rows).iter().all(|l| !l.starts_with("N = 0")));
        let table = render(&rows, Duration::from_secs(1));
        assert!(table.contains("| earshot-opus | 0 | - |"), "{table}");
        assert!(above_idle(&rows[3..]).is_empty(), "no N = 0 run, no line");
        // One listener costing less than the idle run's noise is said to, not printed negative.
        let one = [at("earshot", 0, 0.004), at("earshot", 1, 0.0035)];
        assert_eq!(
            above_idle(&one),
            vec![
                "N = 1: server CPU per listener above the same system with none (N = 0), \
                 earshot within the noise of its N = 0 run"
                    .to_string()
            ]
        );
    }
}
