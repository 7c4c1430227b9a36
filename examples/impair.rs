//! `impair`: a UDP relay between listeners and a `streamd` that impairs the server's datagrams,
//! deterministically for a seed, and reports exactly what it did.
//!
//! ```text
//! cargo run --example impair -- --listen 127.0.0.1:P --upstream 127.0.0.1:Q \
//!     --loss 5% --burst 3 --jitter 30ms --reorder 2% --dup 1% --seed 7 \
//!     [--report-json FILE] [--impair-control] [--duration D]
//! ```
//! Point `listen` at `--listen`. Stops on Ctrl-C, SIGTERM or after `--duration`, flushes what
//! it still holds, prints the report and writes it as JSON with `--report-json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use proto::duration::parse_duration;
use testkit::impair::{ImpairArgs, Proxy};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Relay UDP between listeners and a streamd, impairing the server's datagrams")]
struct Args {
    /// Address listeners connect to.
    #[arg(long)]
    listen: SocketAddr,
    /// The streamd to relay to.
    #[arg(long)]
    upstream: SocketAddr,
    /// What to do to the server's datagrams.
    #[command(flatten)]
    imp: ImpairArgs,
    /// Stop after this long (e.g. 30s); otherwise run until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Write the report as JSON here at exit.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let imp = args.imp.impairment();
    let proxy = match Proxy::bind(args.listen, args.upstream, imp).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("impair: {e}");
            return ExitCode::from(2);
        }
    };
    match proxy.local_addr() {
        Ok(a) => eprintln!("impair: listening on {a}, relaying to {}", args.upstream),
        Err(e) => eprintln!("impair: relaying to {} ({e})", args.upstream),
    }
    let duration = args.duration;
    let report = proxy
        .run(async move {
            let limit = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = sigterm() => {}
                () = limit => {}
            }
        })
        .await;
    print!("{report}");
    if let Some(path) = args.report_json {
        let json = match serde_json::to_string_pretty(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("impair: cannot serialise the report: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = std::fs::write(&path, json + "\n") {
            eprintln!("impair: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        eprintln!("impair: report written to {}", path.display());
    }
    ExitCode::SUCCESS
}

/// Completes on SIGTERM (never where there is no such signal).
async fn sigterm() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}
