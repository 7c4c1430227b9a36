//! The loopback demo (`cargo xtask demo`): `streamd` and `listen` in one process on 127.0.0.1,
//! streaming a clip built into this binary. The first listener plays to the default sound
//! device; with none (a headless machine) it writes `loopback.wav` in the current folder and
//! says so. Each listener prints its statistics table at the end. The server's dashboard
//! (`streamd --http`) runs on a free loopback port; its URL is printed first.
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
    /// How many listeners to start (the first plays; the others only count).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LISTENERS)))]
    listeners: u16,
    /// Jitter-buffer target of every listener.
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
    // The other listeners only count; their audio goes to files nobody keeps.
    let scratch = tempfile::Builder::new().prefix("earshot-demo-").tempdir()?;
    let mut listeners = Vec::new();
    for k in 0..args.listeners {
        let mut config = listen::Config::new(target.to_string());
        config.latency = args.latency;
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
    for (k, task) in listeners.into_iter().enumerate() {
        match task.await.context("listener task")? {
            Ok(outcome) => summary.push(format!(
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
            )),
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
