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
//! With `--stay`, `crate::staying` runs this loop for one session after another; the typed
//! options, outcome and errors are in [`crate::config`].

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::limits::MAX_DATAGRAM;
use proto::{LeaveReason, RejectReason, StreamInfo};
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

use crate::config::fmt_secs;
use crate::jitter::duration_of;
use crate::playlog::PlayoutLog;
use crate::session::{Event, ListenerName, Session, SessionConfig};
use crate::sink::{CpalSink, DEVICE_LEAD, Sink, SinkError, VIRTUAL_LEAD, WavSink};
use crate::stats::{ExitReason, Stats, render_table};
use crate::status::{STATUS_INTERVAL, StatusLine, fmt_position};
use crate::stay::Stay;
use crate::staying::log_transition;

pub use crate::config::{Config, ListenError, Outcome, parse_duration};
pub use crate::session::{DEFAULT_LATENCY, DEFAULT_TIMEOUT};

/// Most datagrams read in one go after a wake-up before timers get a turn: a 2 s burst of
/// 48 kHz stereo is ~400 datagrams; 256 keeps the sink's refill late by well under a millisecond.
pub const RECV_BATCH: usize = 256;

/// Receive buffer asked of the kernel: a whole burst of the longest interval (2 s of 48 kHz
/// stereo is ~400 datagrams, ~0.9 MiB as the kernel accounts them) must fit while the client
/// is busy. The default (~208 KiB) lost 61% of a 2 s-interval stream on loopback. Linux caps
/// the request at `net.core.rmem_max`.
pub const RECV_BUFFER: usize = 8 << 20;

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
            config.clock,
        )?)),
    }
}

/// A UDP socket for talking to `server`, bound to an ephemeral port of its family, with a
/// receive buffer of [`RECV_BUFFER`] (or what the kernel allows: the shell warns when that is
/// too small for the server's bursts).
pub(crate) fn bind_socket(server: SocketAddr) -> Result<UdpSocket, ListenError> {
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
    /// A datagram on the multicast group's socket (or a receive error).
    Group(std::io::Result<usize>),
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
    if let Some(schedule) = session.sync().schedule() {
        let room = Duration::from_micros(u64::from(info.playout_delay_us));
        let least = Duration::from_micros(u64::from(info.min_delay_us));
        let delay = Duration::from_micros(schedule.playout_delay_us);
        tracing::info!(
            "in step with the room: each frame plays {delay:?} after it is due (the room's \
             delay {room:?}, or --latency with the output's lead if longer)"
        );
        if room == least && config.latency < room {
            tracing::warn!(
                "the server cannot keep a shorter playout delay than {least:?} at its \
                 {interval:?} interval: the room plays each frame {room:?} after it is due"
            );
        }
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
        Event::Rejected(RejectReason::BadKey) => ListenError::BadKey {
            server,
            keyed: config.room_key.is_some(),
        },
        Event::Rejected(RejectReason::CodecUnsupported { codec }) => {
            ListenError::Codec { server, codec }
        }
        Event::Unplayable(detail) => ListenError::BadStream { server, detail },
        Event::NoAnswer { after } => ListenError::NoAnswer { server, after },
        _ => return None,
    })
}

/// The sink of a run and the stream format it was opened for: with `--stay` it outlives the
/// sessions, so the WAV file keeps growing and the device stays open.
pub(crate) struct OpenSink {
    /// The sink itself.
    pub(crate) sink: Box<dyn Sink>,
    /// Sample rate and channels it was opened with.
    format: (u32, u16),
    /// `--playout-log`: when each frame written to it left the output.
    pub(crate) log: Option<PlayoutLog>,
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
    let log = match sink.take().and_then(|s| s.log) {
        Some(log) => Some(log),
        None => match &config.playout_log {
            Some(path) => {
                Some(
                    PlayoutLog::create(path).map_err(|source| ListenError::PlayoutLog {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        },
    };
    let s = open_sink(config, info)?;
    *sink = Some(OpenSink {
        sink: s,
        format,
        log,
    });
    Ok(())
}

/// Runs one session until it is closed: the drive loop of [`crate::session`]. Returns an error
/// for a failed handshake or a sink that cannot be opened (the session is closed then too);
/// a sink that fails while playing leaves the session (`failure`). With `stay`, the sends are
/// reported to it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive_session(
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
    let mut now = config.clock.now();
    let mut joined = false;
    // `--multicast`: the socket that joined the server's group, while the group is wanted.
    let mut group = GroupSocket::default();
    let mut gbuf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        if joined
            && let Some(s) = sink.as_mut()
            && !session.is_closed()
        {
            let fed = session.feed(now, s.sink.as_mut());
            if let (Some(log), Some(f), Some(info)) =
                (s.log.as_mut(), session.take_fed(), session.info())
                && let Err(e) = log.played(&config.clock, info.sample_rate, f.first, f.frames, f.at)
            {
                tracing::warn!("--playout-log: {e}; no longer written");
                s.log = None;
            }
            match fed {
                Ok(Some(at)) => {
                    let at = tokio::time::Instant::from_std(config.clock.real(at));
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
                    session.leave(now, LeaveReason::DeviceError);
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
                            session.leave(now, LeaveReason::DeviceError);
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
                Event::Unsynchronised => tracing::warn!(
                    "{server_name} answered no clock exchange in {:?}: playing on this \
                     listener's own clock, not in step with the room",
                    crate::sync::FIRST_ANSWER_TIMEOUT
                ),
                other => error = error.or(handshake_error(config, other)),
            }
        }
        group.follow(session, now);
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
            let at = tokio::time::Instant::from_std(config.clock.real(at));
            if timer.deadline() != at {
                timer.set(tokio::time::sleep_until(at));
            }
        }
        let wake = tokio::select! {
            () = interrupt.as_mut(), if !*interrupted => Wake::Interrupt,
            r = sock.recv_from(&mut buf) => Wake::Datagram(r),
            r = group.recv(&mut gbuf) => Wake::Group(r),
            () = &mut timer, if session.poll_timeout().is_some() => Wake::Timer,
            () = &mut refill, if refill_armed => Wake::Timer,
            _ = status_tick.tick(), if status.is_on() => Wake::Status,
        };
        // Read when the wake-up's first datagram is in hand (and again for each one drained
        // after it): a datagram is never stamped before it arrived, which the clock exchange
        // relies on (a `TimeResponse` stamped early looks faster than the network and pulls
        // the estimate by the difference).
        now = config.clock.now();
        match wake {
            Wake::Interrupt => {
                *interrupted = true;
                session.leave(now, LeaveReason::Interrupted);
            }
            Wake::Datagram(r) => {
                match r {
                    Ok((n, from)) => session.handle(now, from, &buf[..n]),
                    Err(e) => tracing::debug!("recv: {e}"),
                }
                // Drain what else is queued without going back through the select: a server
                // with a long interval sends a whole burst at once, and the socket buffer must
                // not overflow while timers are polled between datagrams.
                if let Some(t) = drain(
                    &mut buf,
                    |b| sock.try_recv_from(b).ok(),
                    || config.clock.now(),
                    |t, from, d| session.handle(t, from, d),
                ) {
                    now = t;
                }
            }
            Wake::Group(r) => {
                match r {
                    Ok(n) => session.handle_group(now, &gbuf[..n]),
                    Err(e) => tracing::debug!("recv (group): {e}"),
                }
                if let Some(t) = drain(
                    &mut buf,
                    |b| group.try_recv(b).map(|n| (n, ())),
                    || config.clock.now(),
                    |t, _, d| session.handle_group(t, d),
                ) {
                    now = t;
                }
            }
            Wake::Timer => {}
            Wake::Status => status.draw(session),
        }
        session.handle_timeout(now);
    }
}

/// Hands `handle` the datagrams already queued (at most [`RECV_BATCH`]: `recv` answers `None`
/// when there are no more), each with a clock read taken after it was received; returns the
/// last read. A datagram stamped before it arrived would look faster than the network: a
/// `TimeResponse` drained after a busy wake-up would pull the clock estimate by the
/// difference.
fn drain<From>(
    buf: &mut [u8],
    mut recv: impl FnMut(&mut [u8]) -> Option<(usize, From)>,
    mut clock: impl FnMut() -> Instant,
    mut handle: impl FnMut(Instant, From, &[u8]),
) -> Option<Instant> {
    let mut last = None;
    for _ in 0..RECV_BATCH {
        let Some((n, from)) = recv(buf) else { break };
        let now = clock();
        handle(now, from, &buf[..n]);
        last = Some(now);
    }
    last
}

/// The multicast group's socket of one session: joined when the session names a group, left
/// (dropped) when it no longer wants it; says once on stderr when the listener falls back to
/// unicast.
#[derive(Default)]
struct GroupSocket {
    socket: Option<UdpSocket>,
    /// The group was joined (or tried): never joined twice in one session.
    tried: bool,
    /// The fallback was said.
    said: bool,
}

impl GroupSocket {
    /// Joins or leaves as the session wants, at `now`.
    fn follow(&mut self, session: &mut Session, now: Instant) {
        let server = session.config().server;
        match session.multicast_group() {
            Some(g) if !self.tried => {
                self.tried = true;
                let joined = crate::multicast::join_group(g, server).and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                });
                match joined {
                    Ok(s) => {
                        tracing::info!("joined multicast group {g}");
                        self.socket = Some(s);
                    }
                    Err(e) => {
                        tracing::debug!("cannot join multicast group {g}: {e}");
                        session.group_unavailable(now);
                    }
                }
            }
            Some(_) => {}
            None => self.socket = None,
        }
        if !self.said && session.transport() == crate::multicast::Transport::UnicastFallback {
            self.said = true;
            self.socket = None;
            let group = session
                .info()
                .and_then(|i| i.multicast)
                .map(|g| g.socket_addr().to_string())
                .unwrap_or_default();
            tracing::warn!(
                "no audio from multicast group {group}: the server sends by unicast instead"
            );
        }
    }

    /// The next datagram of the group; pending for ever without one.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &self.socket {
            Some(s) => s.recv(buf).await,
            None => std::future::pending().await,
        }
    }

    /// A datagram already queued, if any.
    fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        self.socket.as_ref()?.try_recv(buf).ok()
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

/// The session `config` asks for: a private room's keys (`--key-file`), else the multicast
/// group when the server names one (`--no-multicast` turns that off; private rooms are served
/// by unicast only).
pub(crate) fn new_session(
    config: &Config,
    server: SocketAddr,
    now: Instant,
) -> Result<Session, ListenError> {
    let session = Session::new(
        SessionConfig {
            server,
            latency: config.latency,
            timeout: config.timeout,
            sink_lead: sink_lead(config),
            playout: true,
            name: ListenerName::new(&config.name),
            sync: config.sync,
            clock_base_us: config.clock.realtime_us(),
        },
        now,
    );
    match &config.room_key {
        Some(k) => session
            .with_room_key(k)
            .map_err(|e| ListenError::Handshake(e.to_string())),
        None if config.multicast => Ok(session.with_multicast()),
        None => Ok(session),
    }
}

/// Prints the table, logs the statistics and writes `--stats-json`.
pub(crate) fn report(config: &Config, stats: &Stats, json: String) -> Result<(), ListenError> {
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
    if let Some(p) = &config.playout_log {
        std::fs::File::create(p).map_err(|source| ListenError::PlayoutLog {
            path: p.clone(),
            source,
        })?;
    }
    let server = resolve(&config.server).await?;
    let sock = bind_socket(server)?;
    tracing::info!("connecting to {} ({server})", config.server);
    if config.stay {
        return crate::staying::run_staying(&config, server, sock, &mut interrupt).await;
    }
    let mut session = new_session(&config, server, config.clock.now())?;
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
    if let Some(log) = sink.log.as_mut()
        && let Err(source) = log.flush()
    {
        return Err(ListenError::PlayoutLog {
            path: config.playout_log.clone().unwrap_or_default(),
            source,
        });
    }
    match sink.sink.finish(config.clock.now()) {
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

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    use super::*;

    /// Datagrams that arrive while earlier ones are handled are each stamped no earlier than
    /// they arrived, and the drain ends with the queue.
    #[test]
    fn each_drained_datagram_is_stamped_after_it_arrived() {
        let t0 = Instant::now();
        let time = Cell::new(t0);
        let arrived = RefCell::new(Vec::new());
        let stamped = RefCell::new(Vec::new());
        let mut queued = 5u8;
        let mut buf = [0u8; 16];
        let last = drain(
            &mut buf,
            |b| {
                if queued == 0 {
                    return None;
                }
                queued -= 1;
                // The next datagram arrives 0.5 ms after the previous one was handled.
                time.set(time.get() + Duration::from_micros(500));
                arrived.borrow_mut().push(time.get());
                b[0] = queued;
                Some((1, queued))
            },
            || time.get(),
            |now, from, d| {
                assert_eq!(d, [from]);
                stamped.borrow_mut().push(now);
                // Handling one takes 2 ms.
                time.set(time.get() + Duration::from_millis(2));
            },
        );
        let (arrived, stamped) = (arrived.into_inner(), stamped.into_inner());
        assert_eq!(stamped.len(), 5);
        for (a, s) in arrived.iter().zip(&stamped) {
            assert!(
                s >= a,
                "stamped {:?} before it arrived",
                a.duration_since(*s)
            );
        }
        assert_eq!(last, stamped.last().copied());
    }

    /// An empty queue hands nothing on; a queue that never empties is cut at [`RECV_BATCH`].
    #[test]
    fn the_drain_stops_when_the_queue_is_empty_or_the_batch_full() {
        let now = Instant::now();
        let mut buf = [0u8; 4];
        let mut handled = 0;
        let none = drain(
            &mut buf,
            |_| None::<(usize, ())>,
            || now,
            |_, _, _| handled += 1,
        );
        assert_eq!((none, handled), (None, 0));
        let full = drain(&mut buf, |_| Some((0, ())), || now, |_, _, _| handled += 1);
        assert_eq!((full, handled), (Some(now), RECV_BATCH));
    }
}
