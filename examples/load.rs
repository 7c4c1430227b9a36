//! The load tool: N protocol-complete listeners against a running `streamd`.
//!
//! ```text
//! cargo run --release --example load -- --server 127.0.0.1:5004 --listeners 1000 --duration 60s \
//!     [--server-pid PID] [--json] [--threads N]
//! ```
//! Prints a summary, or with `--json` one JSON object (see `testkit::load::LoadReport`).
//!
//! Each listener is `listen`'s own protocol core (`listen::session::Session`) with playout off.
//!
//! `--fake-server` serves a stand-in for `streamd` at `--server` for `--duration` instead
//! (`testkit::load::fake`: streamd's endpoint on synthetic silence, without decoding or tokio),
//! sending through streamd's fan-out; run it in its own process so that the two sides' CPU are
//! measured apart.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use proto::duration::parse_duration;
use streamd::fanout::SendPath;
use testkit::load::{self, LoadConfig};

/// Prints to stdout, ignoring a closed pipe (e.g. `| head -1`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Like `out!` without the newline.
macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Load a streamd server with many listeners and report loss, skew and CPU.
#[derive(Parser, Debug)]
struct Args {
    /// Server address, e.g. 127.0.0.1:5004.
    #[arg(long)]
    server: SocketAddr,
    /// Number of listeners.
    #[arg(long, default_value_t = 100)]
    listeners: usize,
    /// How long to stay in the stream: "60s", "2m", or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// The server's pid: report its CPU seconds and peak RSS over the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: 1 per 1,500 listeners, at most 2).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Serve the stand-in server (streamd's core on silence) at --server for --duration
    /// instead of loading one.
    #[arg(long)]
    fake_server: bool,
    /// With --fake-server: most listeners to welcome.
    #[arg(long, default_value_t = 10_000)]
    max_clients: usize,
    /// With --fake-server: send with plain sendmmsg instead of sendmmsg + UDP GSO.
    #[arg(long)]
    no_gso: bool,
    /// Connects per second while the listeners join.
    #[arg(long, default_value_t = load::DEFAULT_CONNECT_RATE)]
    connect_rate: u32,
    /// Join a private room: every listener uses this room key file (as `listen --key-file`).
    #[arg(long, value_name = "PATH")]
    key_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.duration.is_zero() {
        eprintln!("error: --duration must be more than zero");
        return ExitCode::from(2);
    }
    if a.fake_server {
        let path = if a.no_gso {
            SendPath::Sendmmsg
        } else {
            SendPath::Gso
        };
        let res = std::net::UdpSocket::bind(a.server)
            .and_then(|s| load::fake::serve(&s, a.duration, a.max_clients, path));
        return match res {
            Ok(st) => {
                out!("fake server: {st:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: fake server on {}: {e}", a.server);
                ExitCode::from(2)
            }
        };
    }
    let mut cfg = LoadConfig::new(a.server, a.listeners, a.duration);
    cfg.server_pid = a.server_pid;
    cfg.threads = a.threads;
    cfg.connect_rate = a.connect_rate;
    if let Some(path) = &a.key_file {
        match seal::load_key(path) {
            Ok(k) => cfg.room_key = Some(k),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match load::run(&cfg) {
        Ok(rep) => {
            if a.json {
                match serde_json::to_string(&rep) {
                    Ok(j) => out!("{j}"),
                    Err(e) => {
                        eprintln!("error: cannot serialise the report: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                out_raw!("{rep}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
