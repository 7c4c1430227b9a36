//! The `listen` command: flags → [`listen::Config`], Ctrl-C → the interrupt future, the result
//! → an exit code (0 ended or Ctrl-C, 1 error, 2 usage, 3 rejected, 4 no answer / timeout /
//! evicted). Logs go to stderr (human-readable, `RUST_LOG` filters) and to `--log-file`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use logfile::LogFile;
use proto::duration::{Lower, parse_within};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Plays an earshot stream and reports how the transmission went.
#[derive(Debug, Parser)]
#[command(name = "listen", version)]
struct Cli {
    /// The server, HOST:PORT (HOST may be a name). Without it, servers are found on the local
    /// network by mDNS (DNS-SD `_earshot._udp`): the only one, or the one --name-of-server names.
    #[arg(long, value_name = "HOST:PORT")]
    server: Option<String>,
    /// Without --server: join the server of this instance name or title (case-insensitive).
    #[arg(long, value_name = "NAME", conflicts_with = "server")]
    name_of_server: Option<String>,
    /// List the servers found on the local network by mDNS (address, name, title,
    /// listeners/capacity) for --timeout, then exit (4 when none).
    #[arg(long, conflicts_with = "server")]
    discover: bool,
    /// Write the stream to this WAV file (16-bit, the stream's rate and channels) instead of
    /// playing it.
    #[arg(long, value_name = "FILE.wav")]
    output: Option<PathBuf>,
    /// Play through this output device instead of the default one (see --list-devices).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// List the output devices and their formats, then exit.
    #[arg(long)]
    list_devices: bool,
    /// Jitter-buffer target (e.g. 100ms, 0.2); grows when the server's interval needs more.
    #[arg(long, value_name = "D", default_value = "100ms", value_parser = parse_latency)]
    latency: Duration,
    /// Give up when the server is silent this long (e.g. 3s, 5).
    #[arg(long, value_name = "D", default_value = "3s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Write the statistics as JSON to this file at exit.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Also write the log to this file.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// No live status line; only warnings in the stderr log.
    #[arg(long)]
    quiet: bool,
    /// This listener's name in the server's log, listener list and dashboard (at most 64
    /// bytes, no control characters) [default: the host name].
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
    /// Join a private room: the room key file the server uses (written by streamd --gen-key;
    /// readable by its owner only).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Stay on: rejoin after a server restart, an eviction, an outage or the end of the stream,
    /// until Ctrl-C or SIGTERM; the statistics cover every session.
    #[arg(long)]
    stay: bool,
    /// Test knob: this listener's clock reads D ahead of the real one (e.g. 400ms, -0.3s;
    /// within ±10 s).
    #[arg(long, value_name = "D", allow_hyphen_values = true, value_parser = listen::simclock::parse_offset)]
    sim_clock_offset: Option<i64>,
    /// Test knob: this listener's clock, and with it a WAV or null output's playback rate,
    /// runs X parts per million fast (negative: slow; within ±500).
    #[arg(long, value_name = "X", allow_hyphen_values = true, value_parser = listen::simclock::parse_ppm)]
    sim_clock_ppm: Option<i64>,
    /// Write CSV `realtime_ns,frame` to this file: the CLOCK_REALTIME instant at which the
    /// output plays each stream frame, a line at least every 5 ms of playback.
    #[arg(long, value_name = "FILE")]
    playout_log: Option<PathBuf>,
    /// Play in step with the room: exchange clocks with the server and play every frame at
    /// the room's instant (its playout delay, or this listener's latency if longer), with
    /// drift compensated to within a frame; off: play as the jitter buffer fills, on this
    /// listener's own clock.
    #[arg(long, value_name = "on|off", default_value = "on", default_missing_value = "on",
          num_args = 0..=1, require_equals = false, value_parser = listen::config::parse_on_off,
          action = clap::ArgAction::Set)]
    sync: bool,
    /// Never receive the server's multicast group (`streamd --multicast`): take the audio by
    /// unicast only.
    #[arg(long)]
    no_multicast: bool,
}

/// Longest `--timeout`: a day. Longer is no use to anyone and, near `Duration::MAX`, would
/// overflow the clock arithmetic.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Longest `--latency`: a jitter buffer of a minute is already absurd; more only delays the start
/// for ever.
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// `--timeout`: longer than zero, at most [`MAX_TIMEOUT`].
fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_within(
        s,
        "--timeout",
        Lower::Exclusive(Duration::ZERO),
        MAX_TIMEOUT,
    )
}

/// `--name`: printable, at most `MAX_NAME` bytes.
fn parse_name(s: &str) -> Result<String, String> {
    listen::config::check_name(s).map(str::to_owned)
}

/// `--latency`: at most [`MAX_LATENCY`].
fn parse_latency(s: &str) -> Result<Duration, String> {
    parse_within(
        s,
        "--latency",
        Lower::Inclusive(Duration::ZERO),
        MAX_LATENCY,
    )
}

/// stderr for the log, clearing the live status line first when one may be on screen, so a
/// log line never lands in the middle of it (the status line is redrawn on its next tick).
struct LogStderr {
    /// stderr is a terminal and the status line is on.
    clear: bool,
}

/// One log event's writer: the clearing sequence goes before its first byte.
struct ClearingWriter {
    /// Still to write the clearing sequence.
    pending: bool,
}

impl std::io::Write for ClearingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut e = std::io::stderr().lock();
        if self.pending {
            self.pending = false;
            e.write_all(b"\r\x1b[K")?;
        }
        e.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogStderr {
    type Writer = ClearingWriter;
    fn make_writer(&'a self) -> ClearingWriter {
        ClearingWriter {
            pending: self.clear,
        }
    }
}

/// Sets up the stderr log (colours only on a terminal, so journald gets plain lines) and the
/// `--log-file`, returned for the SIGHUP handler.
fn init_logging(cli: &Cli) -> Result<Option<LogFile>, String> {
    let default = if cli.quiet { "warn" } else { "info" };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(LogStderr {
            clear: !cli.quiet && std::io::stderr().is_terminal(),
        })
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter());
    let log_file = cli.log_file.as_deref().map(LogFile::new).transpose()?;
    let file = match &log_file {
        Some(f) => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(f.clone())
                    .with_ansi(false)
                    .with_filter(filter),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(log_file)
}

/// `--discover`: lists what mDNS finds within `--timeout`; exit 4 when nothing.
fn discover(cli: &Cli) -> ExitCode {
    let b = match listen::discover::browse(cli.timeout, None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("listen: {e}");
            return ExitCode::from(1);
        }
    };
    if !b.ignored.is_empty() {
        eprintln!(
            "listen: ignored {} malformed or foreign mDNS records",
            b.ignored.len()
        );
    }
    if b.found.is_empty() {
        eprintln!("listen: {}", listen::discover::SelectError::None);
        return ExitCode::from(4);
    }
    for f in &b.found {
        println!("{f}");
    }
    ExitCode::SUCCESS
}

/// No `--server`: the server mDNS finds within `--timeout` (the only one, or the one
/// `--name-of-server` names), as `IP:PORT`, and how it was chosen; the chosen one is said on stderr.
fn find_server(cli: &Cli) -> Result<(String, listen::discover::Chosen), ExitCode> {
    let b = listen::discover::browse(cli.timeout, cli.name_of_server.as_deref()).map_err(|e| {
        eprintln!("listen: {e}");
        ExitCode::from(1)
    })?;
    match listen::discover::select(&b.found, cli.name_of_server.as_deref()) {
        Ok(f) => {
            eprintln!(
                "listen: found {:?} ({:?}) at {} by mDNS; joining it",
                f.instance, f.title, f.addr
            );
            let chosen = listen::discover::Chosen {
                found: f.clone(),
                name: cli.name_of_server.clone(),
            };
            Ok((f.addr.to_string(), chosen))
        }
        Err(e) => {
            eprintln!("listen: {e}");
            Err(ExitCode::from(match e {
                listen::discover::SelectError::Several { .. } => 2,
                _ => 4,
            }))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_file = match init_logging(&cli) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("listen: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.list_devices {
        return match listen::sink::list_devices() {
            Ok(lines) if lines.is_empty() => {
                println!("no output devices");
                ExitCode::SUCCESS
            }
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("listen: {e}");
                ExitCode::from(1)
            }
        };
    }
    if cli.discover {
        return discover(&cli);
    }
    let (server, discovered) = match cli.server.clone() {
        Some(s) => (s, None),
        None => match find_server(&cli) {
            Ok((s, chosen)) => (s, Some(chosen)),
            Err(code) => return code,
        },
    };
    // A bad key file is one line naming it, exit 1, before anything else happens.
    let room_key = match &cli.key_file {
        Some(path) => match seal::load_key(path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("listen: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let config = listen::Config {
        room_key,
        server,
        output: cli.output.clone(),
        device: cli.device.clone(),
        list_devices: false,
        latency: cli.latency,
        timeout: cli.timeout,
        stats_json: cli.stats_json.clone(),
        log_file: cli.log_file.clone(),
        quiet: cli.quiet,
        stay: cli.stay,
        discovered,
        clock: listen::simclock::SimClock::new(
            std::time::Instant::now(),
            cli.sim_clock_offset.unwrap_or(0),
            cli.sim_clock_ppm.unwrap_or(0),
        ),
        playout_log: cli.playout_log.clone(),
        sync: cli.sync,
        name: cli.name.clone().unwrap_or_else(listen::config::host_name),
        multicast: !cli.no_multicast,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("listen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Ctrl-C and SIGTERM (a service manager, `timeout`, `kill`) both end the run the proper
    // way: Leave to the server, statistics printed and written.
    let interrupt = async {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handler: never interrupt rather than interrupt at once.
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    };
    let run = async {
        if let Some(f) = log_file {
            f.reopen_on_sighup();
        }
        listen::run(config, interrupt).await
    };
    match rt.block_on(run) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            tracing::debug!("{e:?}");
            eprintln!("listen: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
