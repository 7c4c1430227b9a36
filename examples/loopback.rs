//! The loopback demo (`cargo xtask demo`): `streamd` and two `listen`s in one process on
//! 127.0.0.1, streaming a clip built into this binary, the listeners in step as in one room
//! (`listen --sync`). The first listener plays to the default sound device; with none (a
//! headless machine) it writes `loopback.wav` in the current folder and says so. Each listener
//! prints its statistics table at the end, then the demo prints the spread between them: from
//! their playout logs (`listen --playout-log`), how far apart they played the same frames once
//! their clocks had settled. The server's dashboard (`streamd --http`) runs on a free loopback
//! port; its URL is printed first.
//!
//! ```text
//! cargo run --release --example loopback -- [--file F] [--interval D] [--codec C]
//!     [--listeners N] [--latency D] [--output FILE.wav] [--loss 5%] [--burst 3] [--jitter 30ms] [--reorder 2%]
//!     [--dup 1%] [--seed 7]
//! ```
//! With any impairment flag, the listeners connect through the impairment proxy
//! (`testkit::impair`), which prints what it did, so its numbers can be compared with theirs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use testkit::impair::{ImpairArgs, Proxy};
use tracing_subscriber::EnvFilter;

/// The built-in clip: 8 s of synthesised arpeggio (examples/assets/make-demo-clip.py).
const DEMO_CLIP: &[u8] = include_bytes!("assets/earshot-demo.mp3");

/// Where the first listener's audio goes when there is no sound device.
const DEFAULT_WAV: &str = "loopback.wav";

/// Most listeners the demo starts: a demo, not a load test (see the `load` example for that).
const MAX_LISTENERS: u16 = 64;

/// Playback left out of the spread at the start: the listeners' clock estimates settle over
/// their first 20 fast exchanges (2 s), and the servo works off what is left.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(about = "streamd + listen in one process on 127.0.0.1 with a built-in clip")]
struct Args {
    /// Stream this audio file instead of the built-in clip.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Server send interval, e.g. 20ms, 0.5s or 0.02.
    #[arg(long, default_value = "20ms", value_parser = proto::duration::parse_duration)]
    interval: Duration,
    /// What the datagrams carry: pcm, flac or opus[:BITRATE] (bit/s, 6000-510000).
    #[arg(long, default_value = "pcm", value_parser = streamd::cli::parse_codec)]
    codec: audiocodec::AudioCodec,
    /// How many listeners to start, in step (the first plays; the others write files nobody
    /// keeps); with two or more, the spread between them is printed.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LISTENERS)))]
    listeners: u16,
    /// Playout delay of every listener (the jitter buffer's target).
    #[arg(long, default_value = "100ms", value_parser = proto::duration::parse_duration)]
    latency: Duration,
    /// Write the first listener's audio to this WAV instead of the sound device.
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    impair: ImpairArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopback: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopback: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // The built-in clip goes to a temporary file for the server to open; it lives until the end.
    let clip_file;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => {
            clip_file = tempfile::Builder::new()
                .prefix("earshot-demo-")
                .suffix(".mp3")
                .tempfile()
                .context("cannot write the built-in clip to a temporary file")?;
            std::fs::write(clip_file.path(), DEMO_CLIP)
                .context("cannot write the built-in clip to a temporary file")?;
            clip_file.path().to_path_buf()
        }
    };

    let mut config = streamd::server::Config::new(&file, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.interval = args.interval;
    config.codec = args.codec;
    config.max_clients = config.max_clients.max(usize::from(args.listeners));
    config.validate().map_err(|e| anyhow!(e))?;
    let mut server = streamd::server::Server::bind(config).await?;
    let server_addr = server.local_addr();
    // The control plane's dashboard on a free loopback port, for as long as the demo runs.
    let plane =
        streamd::control::http::ControlPlane::bind(SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
    println!(
        "dashboard: http://{}/ (token for the actions: {})",
        plane.local_addr(),
        plane.token()
    );
    server.set_control(plane.start(file.display().to_string()));
    let server_task = tokio::spawn(server.run(async {
        // Ctrl-C ends the stream the proper way: End to every listener, then the server returns.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }));

    // With impairment, everyone connects through one proxy (it gives each a distinct upstream).
    let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let (target, proxy_task) = if args.impair.is_active() {
        let proxy = Proxy::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            server_addr,
            args.impair.impairment(),
        )
        .await
        .context("impairment proxy")?;
        let addr = proxy.local_addr()?;
        let task = tokio::spawn(proxy.run(async {
            let _ = proxy_stopped.await;
        }));
        (addr, Some(task))
    } else {
        (server_addr, None)
    };

    let first_output = match &args.output {
        Some(p) => Some(p.clone()),
        None => match listen::sink::CpalSink::probe(None) {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!("no sound device: {e}");
                println!("no sound device here: writing what it would play to {DEFAULT_WAV}");
                Some(PathBuf::from(DEFAULT_WAV))
            }
        },
    };
    // The other listeners' audio goes to files nobody keeps; every listener's playout log too.
    let scratch = tempfile::Builder::new().prefix("earshot-demo-").tempdir()?;
    let log_of = |k: u16| scratch.path().join(format!("playout-{k}.csv"));
    let mut listeners = Vec::new();
    for k in 0..args.listeners {
        let mut config = listen::Config::new(target.to_string());
        config.latency = args.latency;
        config.sync = true;
        config.playout_log = Some(log_of(k));
        config.quiet = k > 0;
        config.output = if k == 0 {
            first_output.clone()
        } else {
            Some(scratch.path().join(format!("listener-{k}.wav")))
        };
        listeners.push(tokio::spawn(listen::run(
            config,
            std::future::pending::<()>(),
        )));
    }

    let mut summary = Vec::new();
    let mut failed = 0;
    let mut rate = None;
    for (k, task) in listeners.into_iter().enumerate() {
        match task.await.context("listener task")? {
            Ok(outcome) => {
                rate = rate.or(outcome.info.as_ref().map(|i| i.sample_rate));
                summary.push(format!(
                    "listener {}: {} of {} datagrams, {} lost, {} out of order, {} duplicates, \
                 {} late, jitter {:.2} ms, ended: {}",
                    k + 1,
                    outcome.stats.received,
                    outcome.stats.expected,
                    outcome.stats.lost,
                    outcome.stats.out_of_order,
                    outcome.stats.duplicates,
                    outcome.stats.late,
                    outcome.stats.jitter_ms,
                    outcome.stats.end_reason.as_str()
                ))
            }
            Err(e) => {
                failed += 1;
                summary.push(format!("listener {}: {e}", k + 1));
            }
        }
    }
    let served = server_task.await.context("server task")??;
    tracing::debug!("server summary: {served:?}");
    if let Some(task) = proxy_task {
        let _ = stop_proxy.send(());
        let report = task.await.context("proxy task")?;
        println!("\nimpairment proxy:\n{report}");
    }
    if args.listeners > 1 {
        println!();
        for line in &summary {
            println!("{line}");
        }
        if let Some(rate) = rate {
            println!();
            for k in 1..args.listeners {
                println!("{}", spread_line(&log_of(0), &log_of(k), k + 1, rate));
            }
        }
    }
    if let Some(path) = &first_output {
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        println!("\nwrote {}", shown.display());
    }
    if failed > 0 {
        return Err(anyhow!("{failed} listener(s) failed"));
    }
    Ok(())
}

/// The demo's account of how far listener `k` played from the first: the spread between their
/// playout logs after [`SETTLE`] (or, for a clip too short for that, after the first half of
/// what both played), or why there is none.
fn spread_line(first: &std::path::Path, other: &std::path::Path, k: u16, rate: u32) -> String {
    use testkit::playout::{read_log, spread};
    let head = format!("spread between listener 1 and listener {k}");
    let (a, b) = match read_log(first).and_then(|a| Ok((a, read_log(other)?))) {
        Ok(logs) => logs,
        Err(e) => return format!("{head}: no playout log: {e}"),
    };
    let both = match (a.first(), a.last(), b.first(), b.last()) {
        (Some(a0), Some(a1), Some(b0), Some(b1)) => a1.0.min(b1.0) - a0.0.max(b0.0),
        _ => 0,
    };
    let settle = SETTLE.min(Duration::from_nanos(both.max(0) as u64 / 2));
    let head = format!(
        "{head} (the same frames, after the first {:.1} s)",
        settle.as_secs_f64()
    );
    match spread(&a, &b, rate, settle) {
        Some(s) => format!("{head}: {s}"),
        None => format!("{head}: no frames played by both"),
    }
}
