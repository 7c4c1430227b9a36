//! `streamd`: the command line around [`streamd::server`]. Parses flags (usage errors exit 2),
//! sets up logging (stderr, `--log-file`, `RUST_LOG`), binds (errors exit 1 with one line),
//! runs until the end of the file or Ctrl-C/SIGTERM (exit 0 once `End` went out); a second
//! Ctrl-C (or SIGTERM) during the shutdown exits at once (exit 1). The signal handlers exist
//! before the `listening on` line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use audiocodec::AudioCodec;
use clap::{Parser, ValueEnum};
use futures::Stream;
use logfile::LogFile;
use streamd::cli::{
    parse_client_timeout, parse_codec, parse_fec, parse_format, parse_http_token, parse_interval,
    parse_latency, parse_on_off, parse_relay_from, parse_rtp_dest,
};
use streamd::live::{OnIdle as LiveOnIdle, RawFormat};
use streamd::server::{Config, FecChoice, MulticastConfig, Server, StartError, StartMode};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code for a runtime error (file, socket, ...).
const EXIT_RUNTIME: u8 = 1;
/// Log filter without RUST_LOG: our info lines, nothing from the decoders.
const DEFAULT_FILTER: &str = "info,symphonia=off";
/// Exit code for a usage error (what clap uses too).
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Start {
    /// When the first listener joins.
    FirstClient,
    /// At once; listeners join live.
    Now,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnIdle {
    /// Send silence: listeners stay joined and hear nothing.
    Silence,
    /// Send nothing for up to a second, then silence (listeners would time out).
    Pause,
    /// End the stream, as at the end of a file.
    End,
}

/// `--ttl`: 1..=255 ([`streamd::multicast::check_ttl`]).
fn parse_ttl(s: &str) -> Result<u8, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("--ttl {s:?} is not a number (1..=255)"))?;
    streamd::multicast::check_ttl(n)
}

/// Stream an audio file over UDP to many listeners.
#[derive(Debug, Parser)]
#[command(name = "streamd", version, about)]
struct Cli {
    /// UDP port to listen on (0: any free port; the log says which).
    #[arg(long, required_unless_present = "gen_key")]
    port: Option<u16>,
    /// Audio file to stream (mp3, flac, wav, ogg/vorbis, m4a/aac); `-` reads stdin and a named
    /// pipe (FIFO) is read live.
    #[arg(long, required_unless_present_any = ["capture", "relay_from", "gen_key"], conflicts_with_all = ["capture", "relay_from"])]
    file: Option<PathBuf>,
    /// Relay another earshot server's stream (join it as a listener and serve what it sends)
    /// instead of a file.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_relay_from, conflicts_with_all = ["capture", "format", "looping"])]
    relay_from: Option<String>,
    /// Record from an input device instead of a file: the default one, or DEVICE (a name or id).
    #[arg(long, value_name = "DEVICE", num_args = 0..=1)]
    capture: Option<Option<String>>,
    /// Raw PCM input instead of a container: s16le:RATE:CHANNELS (e.g. s16le:44100:2).
    #[arg(long, value_parser = parse_format, value_name = "s16le:RATE:CHANNELS")]
    format: Option<RawFormat>,
    /// What listeners get while a FIFO has no writer (between tracks).
    #[arg(long, value_enum, default_value_t = OnIdle::Silence)]
    on_idle: OnIdle,
    /// Send tick, 5ms..2s: e.g. 20ms, 0.5s or plain seconds (0.02) [default: 20ms; with
    /// --codec opus 100ms from a file (five 20 ms packets per send; fewer when --latency is
    /// shorter than 105ms), 40ms from a live input (two packets)]
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    interval: Option<Duration>,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Most listeners at once; more get "server full".
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_clients: u32,
    /// Evict a listener silent this long.
    #[arg(long, default_value = "5s", value_parser = parse_client_timeout, value_name = "DURATION")]
    client_timeout: Duration,
    /// The room's playout delay: every listener plays each frame this long after it became
    /// due, 10ms..5s (raised to the interval + 5 ms when shorter) [default: 50ms, or the
    /// interval + 5 ms when longer: 105ms for Opus from a file]
    #[arg(long, value_parser = parse_latency, value_name = "DURATION")]
    latency: Option<Duration>,
    /// Parity for loss repair: K,M sends M Reed-Solomon parity datagrams after every K audio
    /// datagrams (K 1..=32, M 1..=K; K datagrams must fit in --latency), or off
    /// [default: 6,1 when six datagrams fit in --latency, else off].
    #[arg(long, value_name = "K,M|off", value_parser = parse_fec)]
    fec: Option<FecChoice>,
    /// Resend audio listeners ask for again (within each one's share of the stream's rate).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    retransmit: bool,
    /// When streaming starts [default: first-client; now with --rtp].
    #[arg(long, value_enum)]
    start: Option<Start>,
    /// Repeat the file forever.
    #[arg(long = "loop")]
    looping: bool,
    /// Largest datagram in bytes.
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u16).range(576..=8192))]
    mtu: u16,
    /// What the datagrams carry: pcm (s16le), flac (lossless, ~0.6 of PCM) or opus[:BITRATE]
    /// (lossy, 48 kHz, mono or stereo; BITRATE in bit/s, 6000-510000, default 128000).
    #[arg(long, default_value = "pcm", value_parser = parse_codec, value_name = "CODEC")]
    codec: AudioCodec,
    /// Also write the log to this file (SIGHUP reopens it, for log rotation).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Do not announce the server on the local network by mDNS (DNS-SD `_earshot._udp`).
    #[arg(long)]
    no_announce: bool,
    /// Also send the stream as RTP (L16, or Opus with --codec opus) to DEST:PORT (even port;
    /// RTCP goes to PORT+1);
    /// unicast or multicast, may be given more than once.
    #[arg(long, value_name = "DEST:PORT", value_parser = parse_rtp_dest)]
    rtp: Vec<SocketAddr>,
    /// Also send each tick's audio once to this multicast group (e.g. 239.255.12.1:5000 or
    /// [ff15::12]:5000): listeners that receive it get no unicast audio, the others still do.
    #[arg(long, value_name = "GROUP:PORT", value_parser = streamd::multicast::parse_group)]
    multicast: Option<SocketAddr>,
    /// Multicast TTL of --multicast and of the RTP (and SAP) packets, 1..=255 [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_ttl)]
    ttl: Option<u8>,
    /// Write the SDP a player opens (ffmpeg, VLC, GStreamer) for the first --rtp destination.
    #[arg(long, value_name = "PATH")]
    sdp: Option<PathBuf>,
    /// Announce the RTP session by SAP (RFC 2974) to 224.2.127.254:9875.
    #[arg(long)]
    sap: bool,
    /// Serve the control plane (JSON API, /metrics, live dashboard) on this TCP address,
    /// e.g. 127.0.0.1:8080. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<SocketAddr>,
    /// Token for the control plane: actions always need it (Authorization: Bearer TOKEN),
    /// reads too off loopback. Without it a random one is generated and logged.
    #[arg(long, value_name = "TOKEN", requires = "http", value_parser = parse_http_token)]
    http_token: Option<String>,
    /// Write a new random room key to PATH (mode 0600; never overwrites) and exit. Listeners
    /// and the server of a private room all use it with --key-file.
    #[arg(long, value_name = "PATH", exclusive = true)]
    gen_key: Option<PathBuf>,
    /// Make this a private room: only listeners with the same key file (--key-file) join, and
    /// everything after the handshake is encrypted. The file must be readable by its owner only.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// How long each stream key of a private room is used before the next one (announced to
    /// every listener ahead of the switch).
    #[arg(long, default_value = "10m", value_parser = parse_rekey_interval, value_name = "DURATION", requires = "key_file")]
    rekey_interval: Duration,
}

fn parse_rekey_interval(s: &str) -> Result<Duration, String> {
    let d = proto::duration::parse_duration(s)?;
    if d < streamd::server::MIN_REKEY_INTERVAL {
        return Err(format!(
            "{s} is shorter than {:?}",
            streamd::server::MIN_REKEY_INTERVAL
        ));
    }
    Ok(d)
}

impl Cli {
    /// True when the audio comes from a file streamd can read ahead (not stdin, a FIFO, a
    /// capture device or a relay).
    fn reads_ahead(&self) -> bool {
        self.file
            .as_deref()
            .is_some_and(|f| streamd::source::live_input(f).is_none())
    }

    fn config(&self) -> Config {
        let file = match (&self.file, &self.relay_from) {
            (Some(f), _) => f.clone(),
            (None, Some(up)) => PathBuf::from(format!("upstream {up}")),
            (None, None) => PathBuf::from("capture"),
        };
        let mut c = Config::new(file, SocketAddr::new(self.bind, self.port.unwrap_or(0)));
        c.capture = self.capture.clone();
        c.interval = self.interval.unwrap_or_else(|| {
            streamd::server::default_interval(self.codec, self.reads_ahead(), self.latency)
        });
        c.max_clients = self.max_clients as usize;
        c.client_timeout = self.client_timeout;
        c.playout_delay = self.latency.unwrap_or_else(|| {
            proto::limits::DEFAULT_PLAYOUT_DELAY
                .max(streamd::endpoint::min_playout_delay(c.interval))
        });
        c.fec = self.fec.unwrap_or_default();
        c.retransmit = self.retransmit;
        // RTP players do not join: with --rtp the stream starts at once unless told otherwise.
        // A relay is live: its upstream is already streaming.
        let start = self
            .start
            .unwrap_or(if self.rtp.is_empty() && self.relay_from.is_none() {
                Start::FirstClient
            } else {
                Start::Now
            });
        c.start = match start {
            Start::FirstClient => StartMode::FirstClient,
            Start::Now => StartMode::Now,
        };
        c.looping = self.looping;
        c.format = self.format;
        c.on_idle = match self.on_idle {
            OnIdle::Silence => LiveOnIdle::Silence,
            OnIdle::Pause => LiveOnIdle::Pause,
            OnIdle::End => LiveOnIdle::End,
        };
        c.mtu = usize::from(self.mtu);
        c.codec = self.codec;
        c.rekey_interval = self.rekey_interval;
        c.log_file = self.log_file.clone();
        c.relay_from = self.relay_from.clone();
        c.multicast = self.multicast.map(|group| MulticastConfig {
            group,
            ttl: self.ttl.unwrap_or(streamd::multicast::DEFAULT_TTL),
        });
        c.rtp = streamd::rtp::output::RtpConfig {
            dests: self.rtp.clone(),
            // With --multicast, --ttl applies to the group; RTP takes it only where it has a
            // multicast destination to use it on.
            ttl: self.ttl.filter(|_| {
                self.multicast.is_none() || self.rtp.iter().any(|d| d.ip().is_multicast())
            }),
            sdp: self.sdp.clone(),
            sap: self.sap,
        };
        c
    }
}

/// Sets up the stderr log (colours only on a terminal, so journald gets plain lines) and the
/// `--log-file`, returned for the SIGHUP handler.
fn init_logging(log_file: Option<&PathBuf>) -> Result<Option<LogFile>, String> {
    // symphonia chats at info (and logs a failed probe as an error, which we report ourselves
    // in one line): quiet by default, RUST_LOG still reaches it.
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let log_file = log_file.map(|p| LogFile::new(p)).transpose()?;
    let file_layer = log_file.as_ref().map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(f.clone())
    });
    tracing_subscriber::registry()
        .with(filter())
        .with(stderr)
        .with(file_layer)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(log_file)
}

/// Ctrl-C and SIGTERM as a stream of stop requests (the first ends the stream gracefully, a
/// second exits at once). The handlers are installed here, before the first log line says the
/// server is listening: a signal right after that line is a stop request, never a kill.
fn stop_requests() -> Pin<Box<dyn Stream<Item = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Box::pin(futures::stream::unfold(
                (int, term),
                |(mut int, mut term)| async move {
                    tokio::select! {
                        r = int.recv() => r?,
                        r = term.recv() => r?,
                    }
                    Some(((), (int, term)))
                },
            )),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot install signal handlers ({e}); stop with SIGKILL");
                Box::pin(futures::stream::pending())
            }
        }
    }
    #[cfg(not(unix))]
    {
        Box::pin(futures::stream::unfold((), |()| async {
            tokio::signal::ctrl_c().await.ok()?;
            Some(((), ()))
        }))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // Help and version exit 0, usage errors exit 2, with clap's message.
        Err(e) => e.exit(),
    };
    if let Some(path) = &cli.gen_key {
        return match seal::gen_key(path) {
            Ok(_) => {
                eprintln!("streamd: wrote a new room key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("streamd: error: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    // The key is read before anything starts: a bad file is one line naming it, exit 1.
    let room_key = match &cli.key_file {
        Some(path) => match seal::load_key(path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("streamd: error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
        None => None,
    };
    let log_file = match init_logging(cli.log_file.as_ref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("streamd: error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamd: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(async {
        if let Some(f) = log_file {
            f.reopen_on_sighup();
        }
        let http = cli.http.map(|a| (a, cli.http_token.clone()));
        let mut config = cli.config();
        config.room_key = room_key;
        run(config, !cli.no_announce, http).await
    })
}

async fn run(
    config: Config,
    announce: bool,
    http: Option<(SocketAddr, Option<String>)>,
) -> ExitCode {
    let mut server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("streamd: error: {e}");
            return ExitCode::from(match e {
                StartError::Config(_) => EXIT_USAGE,
                _ => EXIT_RUNTIME,
            });
        }
    };
    if let Some((addr, token)) = http {
        let plane = match streamd::control::http::ControlPlane::bind(addr, token) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("streamd: error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let url = format!("http://{}/", plane.local_addr());
        if plane.token_generated() {
            tracing::info!(
                "control plane on {url} (generated token: {}; reads need it: {})",
                plane.token(),
                plane.reads_need_token()
            );
        } else {
            tracing::info!(
                "control plane on {url} (reads need the token: {})",
                plane.reads_need_token()
            );
        }
        let source = server.config().file.display().to_string();
        server.set_control(plane.start(source));
    }
    let stop = stop_requests();
    tracing::info!("listening on {}", server.local_addr());
    // Held until the end of the run: dropping it withdraws the record.
    let _announcer = if announce {
        let a = streamd::announce::Announcement {
            title: server.source_info().title.clone(),
            bind: server.local_addr().ip(),
            port: server.local_addr().port(),
            capacity: u32::try_from(server.config().max_clients).unwrap_or(u32::MAX),
        };
        match streamd::announce::Announcer::start(&a) {
            Ok(an) => {
                tracing::info!("announced as {:?} by mDNS", an.fullname());
                Some(an)
            }
            Err(e) if a.bind.is_loopback() => {
                tracing::debug!("not announced on the local network: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("not announced on the local network: {e}");
                None
            }
        }
    } else {
        None
    };
    match server.run_until(stop).await {
        Ok(s) if s.aborted => {
            eprintln!("streamd: interrupted again; exiting without finishing");
            ExitCode::from(EXIT_RUNTIME)
        }
        Ok(s) => {
            tracing::info!(
                "done ({:?}): {} listeners served (peak {}), {} audio datagrams, {} datagrams / {} bytes sent, {} dropped, {} ignored, {} corrupt packets skipped",
                s.end_reason,
                s.listeners_served,
                s.peak_listeners,
                s.audio_datagrams,
                s.sent.datagrams,
                s.sent.bytes,
                s.sent.dropped(),
                s.ignored,
                s.corrupt_packets
            );
            if let Some(m) = &s.multicast {
                tracing::info!(
                    "multicast: {} datagrams / {} bytes sent to the group, {} dropped",
                    m.datagrams,
                    m.bytes,
                    m.dropped()
                );
            }
            if let Some(l) = &s.live {
                tracing::info!("live input: {}", streamd::server::live_line(l));
            }
            if let Some(u) = &s.upstream {
                tracing::info!("upstream: {u}");
                if let Some(r @ (listen::ExitReason::Timeout | listen::ExitReason::Evicted)) =
                    u.exit
                {
                    eprintln!("streamd: error: the upstream was lost ({})", r.as_str());
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("streamd: error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
