//! The tokio shell around the sans-IO [`Session`]: one task that reads the clock once per
//! wake-up, feeds datagrams, timer expiries and the interrupt (Ctrl-C) into the session, sends
//! what [`Session::poll_transmit`] gives, reacts to [`Session::poll_event`] (opening the sink
//! once joined, logging) and feeds the [`Sink`] from the session's jitter buffer. It sleeps
//! until the earliest of the session's next timeout ([`Session::poll_timeout`]), the sink's
//! refill instant ([`Sink::refill_at`]; no fixed tick, so a WAV sink at a 20 ms server interval
//! wakes the client ~100 times a second), the next datagram, the interrupt, and the status
//! line's own timer ([`crate::status`]).
//!
//! The protocol itself (handshake and retransmission, `Welcome` checks, reports, `End`, the
//! silence timeout, eviction) lives in [`crate::session`].
//!
//! With `--stay` the shell runs sessions one after another as [`crate::stay`] says; for a
//! server found by mDNS it also browses again when told ([`Stay::poll_rediscover`]), on a
//! thread of its own that the interrupt cancels, and moves to the address found.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::limits::MAX_DATAGRAM;
use proto::{RejectReason, StreamInfo};
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

use crate::discover::{Chosen, REBROWSE_WINDOW};
use crate::jitter::duration_of;
use crate::session::{Event, Session, SessionConfig};
use crate::sink::{CpalSink, DEVICE_LEAD, Sink, SinkError, VIRTUAL_LEAD, WavSink};
use crate::stats::{ExitReason, Stats, render_table};
use crate::status::{STATUS_INTERVAL, StatusLine, fmt_position};
use crate::stay::{REJOIN_MAX, SessionEnd, Stay, StayStats, Transition};

pub use crate::session::{DEFAULT_LATENCY, DEFAULT_TIMEOUT};

/// Most datagrams read in one go after a wake-up before timers get a turn: a 2 s burst of
/// 48 kHz stereo is ~400 datagrams; 256 keeps the sink's refill late by well under a millisecond.
pub const RECV_BATCH: usize = 256;

/// Receive buffer asked of the kernel: a whole burst of the longest interval (2 s of 48 kHz
/// stereo is ~400 datagrams, ~0.9 MiB as the kernel accounts them) must fit while the client
/// is busy. The default (~208 KiB) lost 61% of a 2 s-interval stream on loopback. Linux caps
/// the request at `net.core.rmem_max`.
pub const RECV_BUFFER: usize = 8 << 20;

/// Every option of the `listen` command, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server as the user wrote it, `HOST:PORT`; HOST may be a name.
    pub server: String,
    /// Write the played stream to this WAV file instead of an audio device.
    pub output: Option<PathBuf>,
    /// Play through the output device of this name instead of the default one.
    pub device: Option<String>,
    /// List the output devices and exit (handled by the binary, ignored by [`run`]).
    pub list_devices: bool,
    /// Jitter-buffer target; grows when the server's interval needs more.
    pub latency: Duration,
    /// Server silence (handshake or mid-stream) after which the client gives up.
    pub timeout: Duration,
    /// Write the statistics as JSON to this file at exit.
    pub stats_json: Option<PathBuf>,
    /// Also write the log to this file (set up by the binary, ignored by [`run`]).
    pub log_file: Option<PathBuf>,
    /// No live status line.
    pub quiet: bool,
    /// Rejoin after every end but the interrupt (`--stay`, [`crate::stay`]).
    pub stay: bool,
    /// The server was found by mDNS (no `--server`): with `stay`, it is looked for again when
    /// it may have moved.
    pub discovered: Option<Chosen>,
}

impl Config {
    /// The defaults of the command line for `server`, playing to the default device; tests set
    /// `output` to a WAV file.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            output: None,
            device: None,
            list_devices: false,
            latency: DEFAULT_LATENCY,
            timeout: DEFAULT_TIMEOUT,
            stats_json: None,
            log_file: None,
            quiet: false,
            stay: false,
            discovered: None,
        }
    }
}

/// How a run that reached the server ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The final statistics (zeros when interrupted before the `Welcome`).
    pub stats: Stats,
    /// Why the stream ended.
    pub end_reason: ExitReason,
    /// The stream as the server described it (`None` when interrupted during the handshake);
    /// with `--stay` the last one joined.
    pub info: Option<StreamInfo>,
    /// With `--stay`: the totals (also in `stats`), each session and the outages.
    pub stay: Option<StayStats>,
}

impl Outcome {
    /// The process exit code: 0 finished, shutdown or interrupted; 4 timeout or evicted.
    pub fn exit_code(&self) -> u8 {
        match self.end_reason {
            ExitReason::Finished | ExitReason::Shutdown | ExitReason::Interrupted => 0,
            ExitReason::Timeout | ExitReason::Evicted => 4,
        }
    }
}

/// Why `listen` could not stream. Each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `--server` is not `HOST:PORT` or does not resolve.
    #[error("cannot resolve server {server}: {detail}")]
    Resolve {
        /// As given.
        server: String,
        /// What failed.
        detail: String,
    },
    /// The local UDP socket failed.
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The handshake got no answer within `--timeout`.
    #[error("no answer from {server} after {}", fmt_secs(*.after))]
    NoAnswer {
        /// As given.
        server: String,
        /// The timeout.
        after: Duration,
    },
    /// The server is full.
    #[error("server {server} is full ({max_clients} listeners)")]
    Full {
        /// As given.
        server: String,
        /// The server's capacity.
        max_clients: u32,
    },
    /// The server speaks another protocol version.
    #[error(
        "server {server} speaks protocol version {supported}, this listen speaks {}",
        proto::VERSION
    )]
    Version {
        /// As given.
        server: String,
        /// The server's version.
        supported: u8,
    },
    /// The server is shutting down.
    #[error("server {server} is shutting down and takes no new listeners")]
    ShuttingDown {
        /// As given.
        server: String,
    },
    /// The `Welcome` described a stream this client cannot play.
    #[error("server {server} sent an unusable stream description: {detail}")]
    BadStream {
        /// As given.
        server: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An option value is unusable.
    #[error("{0}")]
    BadOption(String),
    /// The audio device or WAV file failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// `--stats-json` could not be written.
    #[error("cannot write statistics to {path}: {source}")]
    StatsJson {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ListenError {
    /// The process exit code: 3 rejected, 4 no answer, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ListenError::Full { .. }
            | ListenError::Version { .. }
            | ListenError::ShuttingDown { .. } => 3,
            ListenError::NoAnswer { .. } => 4,
            _ => 1,
        }
    }
}

/// `5` → "5 s", `2.5` → "2.5 s".
fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s:.1} s")
    }
}

/// Parses a duration as humantime (`100ms`, `2s`, `1m 30s`) or a bare number of seconds
/// (`5`, `0.25`): the syntax every earshot program shares ([`proto::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    proto::duration::parse_duration(s)
}

async fn resolve(server: &str) -> Result<SocketAddr, ListenError> {
    let err = |detail: String| ListenError::Resolve {
        server: server.to_owned(),
        detail,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| err(format!("{e} (expected HOST:PORT)")))?
        .collect();
    // A name with both families (`localhost`) is tried as IPv4: servers commonly bind
    // 0.0.0.0, and a UDP client cannot tell an unanswered family from a silent server.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| err("the name has no addresses".into()))
}

fn open_sink(config: &Config, info: &StreamInfo) -> Result<Box<dyn Sink>, SinkError> {
    match &config.output {
        Some(p) => Ok(Box::new(WavSink::create(
            p,
            info.sample_rate,
            info.channels,
        )?)),
        None => Ok(Box::new(CpalSink::open(
            config.device.as_deref(),
            info.sample_rate,
            info.channels,
        )?)),
    }
}

/// A UDP socket for talking to `server`, bound to an ephemeral port of its family, with a
/// receive buffer of [`RECV_BUFFER`] (or what the kernel allows: the shell warns when that is
/// too small for the server's bursts).
fn bind_socket(server: SocketAddr) -> Result<UdpSocket, ListenError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, bind) = if server.is_ipv4() {
        (Domain::IPV4, SocketAddr::from(([0, 0, 0, 0], 0)))
    } else {
        (
            Domain::IPV6,
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        )
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = s.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!("SO_RCVBUF: {e}");
    }
    let got = s.recv_buffer_size().unwrap_or(0);
    tracing::debug!("receive buffer {got} bytes");
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// Checks that `path` can be written without leaving anything behind: an existing file is
/// opened for writing (not truncated), a new one is created and removed again.
fn check_writable(path: &std::path::Path) -> Result<(), SinkError> {
    let res = if path.exists() {
        std::fs::OpenOptions::new().write(true).open(path).map(drop)
    } else {
        std::fs::File::create(path).and_then(|_| std::fs::remove_file(path))
    };
    res.map_err(|source| SinkError::Wav {
        path: path.to_owned(),
        source: hound::Error::IoError(source),
    })
}

/// Why the shell woke up.
enum Wake {
    /// The interrupt future completed.
    Interrupt,
    /// A datagram (or a receive error).
    Datagram(std::io::Result<(usize, SocketAddr)>),
    /// The session's timeout or the sink's refill instant.
    Timer,
    /// Time to redraw the status line.
    Status,
}

/// Sends every datagram the session has queued; whether there was any.
async fn flush(session: &mut Session, sock: &UdpSocket, now: Instant) -> bool {
    let mut sent = false;
    while let Some(t) = session.poll_transmit(now) {
        sent = true;
        // A lost control datagram is retried or harmless; a send error is logged, not fatal.
        if let Err(e) = sock.send_to(&t.contents, t.destination).await {
            tracing::debug!("send to {}: {e}", t.destination);
        }
    }
    sent
}

/// Logs the stream the server described and what the client makes of it (a grown jitter
/// buffer, a raised silence timeout, a receive buffer too small for one burst).
fn log_joined(config: &Config, session: &Session, info: &StreamInfo, sock: &UdpSocket) {
    let interval = Duration::from_micros(u64::from(info.interval_us));
    tracing::info!(
        "joined {}: {:?}, {} Hz, {} ch, interval {interval:?}, {} frames/packet, length {}, from seq {} frame {}",
        config.server,
        info.title,
        info.sample_rate,
        info.channels,
        info.frames_per_packet,
        info.total_frames
            .map_or("unknown".to_owned(), |t| fmt_position(duration_of(
                t,
                info.sample_rate
            ))),
        info.start_seq,
        info.start_ts,
    );
    if let Some(jb) = session.jitter_buffer()
        && let Some(requested) = jb.grown()
    {
        tracing::warn!(
            "--latency {requested:?} is too short for the server's {interval:?} interval; buffering {:?} instead",
            jb.target()
        );
    }
    let burst =
        (interval.as_secs_f64() * f64::from(info.sample_rate)) as usize * info.bytes_per_frame();
    let rcvbuf = socket2::SockRef::from(sock).recv_buffer_size().unwrap_or(0);
    // The kernel charges about twice the payload of a ~1 KiB datagram against the buffer.
    if rcvbuf < 2 * burst {
        tracing::warn!(
            "the UDP receive buffer ({rcvbuf} bytes) may not hold one {interval:?} burst \
             (~{burst} bytes of audio): raise net.core.rmem_max if audio is lost"
        );
    }
    if let Some(silence) = session.silence_timeout()
        && silence > config.timeout
    {
        tracing::warn!(
            "--timeout {:?} is shorter than the server's {interval:?} interval allows; using {silence:?}",
            config.timeout
        );
    }
}

/// The error a terminal handshake event stands for.
fn handshake_error(config: &Config, event: Event) -> Option<ListenError> {
    let server = config.server.clone();
    Some(match event {
        Event::Rejected(RejectReason::Full { max_clients }) => ListenError::Full {
            server,
            max_clients,
        },
        Event::Rejected(RejectReason::UnsupportedVersion { supported }) => {
            ListenError::Version { server, supported }
        }
        Event::Rejected(RejectReason::ShuttingDown) => ListenError::ShuttingDown { server },
        Event::Unplayable(detail) => ListenError::BadStream { server, detail },
        Event::NoAnswer { after } => ListenError::NoAnswer { server, after },
        _ => return None,
    })
}

/// The sink of a run and the stream format it was opened for: with `--stay` it outlives the
/// sessions, so the WAV file keeps growing and the device stays open.
struct OpenSink {
    sink: Box<dyn Sink>,
    /// Sample rate and channels it was opened with.
    format: (u32, u16),
}

/// Gives the session a sink for the stream it joined: the open one when the format is the same,
/// else a new one (a device is reopened; a WAV file holds one format, so a change is an error).
fn sink_for(
    config: &Config,
    sink: &mut Option<OpenSink>,
    info: &StreamInfo,
) -> Result<(), ListenError> {
    let format = (info.sample_rate, info.channels);
    match sink {
        Some(s) if s.format == format => return Ok(()),
        Some(s) if config.output.is_some() => {
            return Err(ListenError::BadStream {
                server: config.server.clone(),
                detail: format!(
                    "the stream changed from {} Hz {} ch to {} Hz {} ch, and {} holds one format",
                    s.format.0,
                    s.format.1,
                    format.0,
                    format.1,
                    config
                        .output
                        .as_deref()
                        .map_or(String::new(), |p| p.display().to_string())
                ),
            });
        }
        Some(_) => tracing::info!("the stream's format changed: reopening the audio device"),
        None => {}
    }
    *sink = None;
    let s = open_sink(config, info)?;
    *sink = Some(OpenSink { sink: s, format });
    Ok(())
}

/// Runs one session until it is closed: the drive loop of [`crate::session`]. Returns an error
/// for a failed handshake or a sink that cannot be opened (the session is closed then too);
/// a sink that fails while playing leaves the session (`failure`). With `stay`, the sends are
/// reported to it.
#[allow(clippy::too_many_arguments)]
async fn drive_session(
    config: &Config,
    session: &mut Session,
    sock: &UdpSocket,
    sink: &mut Option<OpenSink>,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    interrupted: &mut bool,
    failure: &mut Option<SinkError>,
    mut stay: Option<&mut Stay>,
) -> Result<(), ListenError> {
    let server_name = config.server.as_str();
    let mut status = StatusLine::new(!config.quiet && std::io::stderr().is_terminal());
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The sink is fed after every wake-up and otherwise at the instant it asks for; while the
    // jitter buffer cannot supply it (buffering, finished) only arriving audio changes that, so
    // this timer is off.
    let refill = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(refill);
    let mut refill_armed = false;
    // The session's next timeout; a new timer only when it moves.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut now = Instant::now();
    let mut joined = false;
    loop {
        if joined
            && let Some(s) = sink.as_mut()
            && !session.is_closed()
        {
            match session.feed(now, s.sink.as_mut()) {
                Ok(Some(at)) => {
                    let at = tokio::time::Instant::from_std(at);
                    if !refill_armed || refill.deadline() != at {
                        // A new timer rather than `reset`: tokio moves a timer to a later
                        // deadline lazily, leaving its old slot to wake the runtime for nothing.
                        refill.set(tokio::time::sleep_until(at));
                    }
                    refill_armed = true;
                }
                Ok(None) => refill_armed = false,
                Err(e) => {
                    // The listener cannot go on: it stopped, as if interrupted.
                    *failure = Some(e);
                    session.leave(now);
                }
            }
        }
        let mut error = None;
        while let Some(event) = session.poll_event() {
            match event {
                Event::Challenged => tracing::debug!("challenge from {server_name}"),
                Event::Joined(info) => {
                    if let Some(st) = stay.as_deref_mut()
                        && let Some(t) = st.joined(now)
                    {
                        log_transition(config, &t);
                    }
                    log_joined(config, session, &info, sock);
                    match sink_for(config, sink, &info) {
                        Ok(()) => {
                            joined = true;
                            if let Some(s) = sink.as_ref() {
                                debug_assert_eq!(
                                    s.sink.lead(),
                                    session.config().sink_lead,
                                    "the session's sink lead"
                                );
                            }
                        }
                        Err(e) => {
                            session.leave(now);
                            error = Some(e);
                        }
                    }
                }
                Event::Playing { buffered } => {
                    tracing::info!("playing, {buffered:?} buffered");
                }
                Event::Underrun { at, target } => tracing::warn!(
                    "buffer ran empty at {}: rebuffering to {target:?}",
                    fmt_position(at)
                ),
                Event::EndReceived { reason, buffered } => tracing::info!(
                    "server {server_name} ended the stream ({}); playing out {buffered:?}",
                    reason.as_str()
                ),
                Event::ServerError(e) if session.info().is_none() => tracing::warn!(
                    "server {server_name} during handshake: {:?}: {}",
                    e.code,
                    e.text
                ),
                Event::ServerError(e) => {
                    tracing::warn!("server {server_name}: {:?}: {}", e.code, e.text);
                }
                Event::Evicted(e) => tracing::warn!(
                    "server {server_name} no longer knows this listener: {}",
                    e.text
                ),
                Event::TimedOut { silence } => {
                    tracing::warn!("server {server_name} silent for {}", fmt_secs(silence));
                }
                Event::EndOverdue => {
                    tracing::warn!("the end of the stream did not play out in time; stopping");
                }
                Event::Ended(_) => {}
                other => error = error.or(handshake_error(config, other)),
            }
        }
        let sent = flush(session, sock, now).await;
        if sent && let Some(st) = stay.as_deref_mut() {
            st.sent(now);
        }
        if let Some(e) = error {
            status.clear();
            return Err(e);
        }
        if session.is_closed() {
            status.clear();
            return Ok(());
        }
        if let Some(at) = session.poll_timeout() {
            let at = tokio::time::Instant::from_std(at);
            if timer.deadline() != at {
                timer.set(tokio::time::sleep_until(at));
            }
        }
        let wake = tokio::select! {
            () = interrupt.as_mut(), if !*interrupted => Wake::Interrupt,
            r = sock.recv_from(&mut buf) => Wake::Datagram(r),
            () = &mut timer, if session.poll_timeout().is_some() => Wake::Timer,
            () = &mut refill, if refill_armed => Wake::Timer,
            _ = status_tick.tick(), if status.is_on() => Wake::Status,
        };
        // The one clock read of this wake-up.
        now = Instant::now();
        match wake {
            Wake::Interrupt => {
                *interrupted = true;
                session.leave(now);
            }
            Wake::Datagram(r) => {
                match r {
                    Ok((n, from)) => session.handle(now, from, &buf[..n]),
                    Err(e) => tracing::debug!("recv: {e}"),
                }
                // Drain what else is queued without going back through the select: a server
                // with a long interval sends a whole burst at once, and the socket buffer must
                // not overflow while timers are polled between datagrams.
                for _ in 0..RECV_BATCH {
                    match sock.try_recv_from(&mut buf) {
                        Ok((n, from)) => session.handle(now, from, &buf[..n]),
                        Err(_) => break,
                    }
                }
            }
            Wake::Timer => {}
            Wake::Status => status.draw(session),
        }
        session.handle_timeout(now);
    }
}

/// Logs a change of a staying listener's state (once per change, never per retry).
fn log_transition(config: &Config, t: &Transition) {
    let server = &config.server;
    match t {
        Transition::Lost { reason } => tracing::warn!(
            "lost the stream from {server} ({}); rejoining (--stay)",
            reason.as_str()
        ),
        Transition::Failing { reason } => {
            tracing::warn!("{reason}; still trying every {}", fmt_secs(REJOIN_MAX));
        }
        Transition::Rejoined { after } => tracing::info!(
            "rejoined {server} after an outage of {:.1} s",
            after.as_secs_f64()
        ),
    }
}

/// The sink lead of the sink [`open_sink`] opens for `config`: the session sizes its jitter
/// buffer with it when the Welcome comes.
fn sink_lead(config: &Config) -> Duration {
    if config.output.is_some() {
        VIRTUAL_LEAD
    } else {
        DEVICE_LEAD
    }
}

fn new_session(config: &Config, server: SocketAddr, now: Instant) -> Session {
    Session::new(
        SessionConfig {
            server,
            latency: config.latency,
            timeout: config.timeout,
            sink_lead: sink_lead(config),
            playout: true,
        },
        now,
    )
}

/// Prints the table, logs the statistics and writes `--stats-json`.
fn report(config: &Config, stats: &Stats, json: String) -> Result<(), ListenError> {
    let table = render_table(stats);
    eprint!("{table}");
    tracing::info!(
        expected = stats.expected,
        received = stats.received,
        lost = stats.lost,
        out_of_order = stats.out_of_order,
        duplicates = stats.duplicates,
        late = stats.late,
        jitter_ms = stats.jitter_ms,
        underruns = stats.underruns,
        concealed_ms = stats.concealed_ms,
        played_ms = stats.played_ms,
        end_reason = stats.end_reason.as_str(),
        "stream statistics"
    );
    if let Some(path) = &config.stats_json {
        std::fs::write(path, json + "\n").map_err(|source| ListenError::StatsJson {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Connects to `config.server`, plays the stream until it ends, the server falls silent, or
/// `interrupt` completes (Ctrl-C), and returns the statistics (also printed as a table to
/// stderr and, with `--stats-json`, written as JSON). With `config.stay` it rejoins after every
/// end but the interrupt ([`crate::stay`]).
pub async fn run(
    config: Config,
    interrupt: impl Future<Output = ()>,
) -> Result<Outcome, ListenError> {
    let mut interrupt = std::pin::pin!(interrupt);
    if config.timeout.is_zero() {
        return Err(ListenError::BadOption(
            "--timeout must be longer than 0".into(),
        ));
    }
    // Fail before bothering the server when there is nowhere to play.
    match &config.output {
        Some(p) => check_writable(p)?,
        None => CpalSink::probe(config.device.as_deref())?,
    }
    let server = resolve(&config.server).await?;
    let sock = bind_socket(server)?;
    tracing::info!("connecting to {} ({server})", config.server);
    if config.stay {
        return run_staying(&config, server, sock, &mut interrupt).await;
    }
    let mut session = new_session(&config, server, Instant::now());
    let mut sink: Option<OpenSink> = None;
    let mut failure: Option<SinkError> = None;
    let mut interrupted = false;
    drive_session(
        &config,
        &mut session,
        &sock,
        &mut sink,
        &mut interrupt,
        &mut interrupted,
        &mut failure,
        None,
    )
    .await?;
    let end_reason = session.exit_reason().unwrap_or(ExitReason::Interrupted);
    let stats = session
        .stats()
        .unwrap_or_else(|| Stats::new(session.tracker(), &session.playout(), end_reason));
    let Some(mut sink) = sink else {
        // Interrupted during the handshake: nothing was played, nothing to report.
        return Ok(Outcome {
            stats,
            end_reason,
            info: None,
            stay: None,
        });
    };
    // Let the sink play what it holds (the device's tail), unless the user wants out now.
    match sink.sink.finish(Instant::now()) {
        Ok(wait) if end_reason != ExitReason::Interrupted => tokio::time::sleep(wait).await,
        Ok(_) => {}
        Err(e) => failure = failure.or(Some(e)),
    }
    drop(sink);
    report(&config, &stats, stats.to_json())?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Outcome {
        stats,
        end_reason,
        info: session.info().cloned(),
        stay: None,
    })
}

/// `--stay`: sessions one after another into the same sink until the interrupt; see
/// [`crate::stay`]. No silence is written for an outage: the WAV file (or the device) gets the
/// audio that was received, and the statistics say how long the outages were.
async fn run_staying(
    config: &Config,
    mut server: SocketAddr,
    mut sock: UdpSocket,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Outcome, ListenError> {
    // The server joined can move (rediscovery): the logs name the address in use.
    let mut config = config.clone();
    let config = &mut config;
    let mut stay = Stay::new(Instant::now());
    if config.discovered.is_some() {
        stay = stay.with_rediscovery();
    }
    let mut sink: Option<OpenSink> = None;
    let mut failure: Option<SinkError> = None;
    let mut interrupted = false;
    let mut info = None;
    let mut fatal = None;
    while !interrupted {
        let mut session = new_session(config, server, Instant::now());
        let res = drive_session(
            config,
            &mut session,
            &sock,
            &mut sink,
            interrupt,
            &mut interrupted,
            &mut failure,
            Some(&mut stay),
        )
        .await;
        let now = Instant::now();
        if session.info().is_some() {
            info = session.info().cloned();
        }
        let stats = session.stats().filter(|_| session.info().is_some());
        if interrupted || failure.is_some() {
            stay.interrupt(now, stats);
            break;
        }
        let end = match res {
            // A sink that cannot be opened for this stream stops the listener.
            Err(e @ (ListenError::Sink(_) | ListenError::BadStream { .. }))
                if session.info().is_some() =>
            {
                stay.interrupt(now, None);
                fatal = Some(e);
                break;
            }
            Err(e) => SessionEnd::Handshake(e.to_string()),
            Ok(()) => match stats {
                Some(s) => SessionEnd::Stream(s),
                None => SessionEnd::Handshake("the handshake ended".into()),
            },
        };
        if let Some(t) = stay.ended(now, end) {
            log_transition(config, &t);
        }
        if stay.poll_rediscover(now)
            && let Some(chosen) = config.discovered.clone()
        {
            let Some(found) = browse_again(&chosen, interrupt).await else {
                stay.interrupt(Instant::now(), None);
                break;
            };
            let mut moved = false;
            match found {
                Some(f) if f.addr != server => {
                    tracing::info!(
                        "found {:?} ({:?}) again by mDNS, now at {}; joining it there",
                        f.instance,
                        f.title,
                        f.addr
                    );
                    // A socket of the new address's family, when it changed.
                    let rebound = if f.addr.is_ipv4() == server.is_ipv4() {
                        Ok(None)
                    } else {
                        bind_socket(f.addr).map(Some)
                    };
                    match rebound {
                        Ok(new_sock) => {
                            if let Some(s) = new_sock {
                                sock = s;
                            }
                            moved = true;
                            server = f.addr;
                            config.server = f.addr.to_string();
                            config.discovered = Some(Chosen {
                                found: f,
                                name: chosen.name,
                            });
                        }
                        Err(e) => tracing::warn!("cannot follow it to {}: {e}", f.addr),
                    }
                }
                Some(_) => tracing::debug!("mDNS: {server} is still where it was"),
                None => tracing::debug!("mDNS: {:?} not found", chosen.found.instance),
            }
            stay.rediscovered(Instant::now(), moved);
        }
        // Wait for the rejoin, or the interrupt.
        let Some(at) = stay.rejoin_at() else { break };
        tokio::select! {
            () = interrupt.as_mut() => {
                interrupted = true;
                stay.interrupt(Instant::now(), None);
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                stay.poll_rejoin(Instant::now().max(at));
            }
        }
    }
    let all = stay.stats();
    let config = &*config;
    if let Some(mut s) = sink {
        if let Err(e) = s.sink.finish(Instant::now()) {
            failure = failure.or(Some(e));
        }
    }
    tracing::info!(
        "{} sessions, {} outages ({:.1} s without a stream)",
        all.session_count,
        all.outages,
        all.outage_ms as f64 / 1000.0
    );
    report(config, &all.total, all.to_json())?;
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Outcome {
        stats: all.total.clone(),
        end_reason: all.total.end_reason,
        info,
        stay: Some(all),
    })
}

/// Browses for the server `chosen` (at most [`REBROWSE_WINDOW`], less once it shows) on a
/// thread of its own: `Some(found)` with what matched, if anything; `None` when interrupted
/// (the browse is cancelled).
async fn browse_again(
    chosen: &Chosen,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Option<crate::discover::Found>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (c, flag) = (chosen.clone(), cancel.clone());
    let started = std::thread::Builder::new()
        .name("browse".into())
        .spawn(move || {
            let r = crate::discover::browse_until(
                REBROWSE_WINDOW,
                |f| c.rematch(std::slice::from_ref(f)).is_some(),
                &flag,
            );
            let _ = tx.send(r);
        });
    if let Err(e) = started {
        tracing::warn!("cannot browse for the server again: {e}");
        return Some(None);
    }
    tokio::select! {
        () = interrupt.as_mut() => {
            cancel.store(true, Ordering::Relaxed);
            None
        }
        r = rx => Some(match r {
            Ok(Ok(b)) => chosen.rematch(&b.found).cloned(),
            Ok(Err(e)) => {
                tracing::warn!("cannot browse for the server again: {e}");
                None
            }
            Err(_) => None,
        }),
    }
}
