//! The tokio shell: one task that moves datagrams between the socket, the sans-IO cores
//! ([`crate::jitter`], [`crate::stats`]) and a [`Sink`], on three timers (refill, report,
//! silence timeout).
//!
//! Handshake: `Connect` (padded to [`proto::limits::MIN_CONNECT_LEN`]) → `Challenge` → `Join`
//! with the cookie (a fresh `Challenge` answering a `Join` means: join again with the new one) →
//! `Welcome` or `Reject`. The last message is resent with doubling backoff until `--timeout`.
//! Then audio flows into the jitter buffer, the sink pulls from it after every wake-up and at the
//! latest when it asks to be refilled ([`Sink::refill_at`]; no fixed tick, so a WAV sink at a
//! 20 ms server interval wakes the client ~100 times a second, not 250), a `Report` goes out
//! every [`proto::limits::REPORT_INTERVAL`], and the stream ends with `End` (played out first),
//! silence past `--timeout` (at least two server intervals, since the server is silent between
//! bursts), `Error{NotJoined}` (evicted) or the interrupt future (Ctrl-C). `Leave` is sent on
//! every exit after the handshake began.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::limits::{MAX_DATAGRAM, MIN_CONNECT_LEN, REPORT_INTERVAL};
use proto::{
    COOKIE_LEN, Connect, ErrorCode, Join, Message, Packet, RejectReason, SampleFormat, StreamInfo,
};
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

use crate::jitter::{JitterBuffer, duration_of};
use crate::sink::{CpalSink, Sink, SinkError, WavSink};
use crate::stats::{Arrival, EndReason, Stats, Tracker, render_table};

/// Default jitter-buffer target (the contract).
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(100);

/// Default server silence after which the client gives up (the contract).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// First handshake retransmission delay: a few loopback or LAN round trips; it doubles after
/// each silent attempt.
pub const HANDSHAKE_RETRY_FIRST: Duration = Duration::from_millis(250);

/// Cap on the handshake retransmission delay, so a long `--timeout` still retries every 2 s.
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Most datagrams read in one go after a wake-up before timers get a turn: a 2 s burst of
/// 48 kHz stereo is ~400 datagrams; 256 keeps the sink's refill late by well under a millisecond.
pub const RECV_BATCH: usize = 256;

/// Receive buffer asked of the kernel: a whole burst of the longest interval (2 s of 48 kHz
/// stereo is ~400 datagrams, ~0.9 MiB as the kernel accounts them) must fit while the client
/// is busy. The default (~208 KiB) lost 61% of a 2 s-interval stream on loopback. Linux caps
/// the request at `net.core.rmem_max`.
pub const RECV_BUFFER: usize = 8 << 20;

/// How often the live status line is redrawn: smooth to a human, negligible CPU.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(250);

/// Lowest sample rate accepted from a `Welcome`: telephone quality and up.
pub const MIN_RATE: u32 = 4_000;
/// Highest sample rate accepted from a `Welcome`: the highest studio rate in use.
pub const MAX_RATE: u32 = 384_000;
/// Most channels accepted from a `Welcome`: beyond any speaker layout a listener has.
pub const MAX_CHANNELS: u16 = 32;

/// Longest server interval accepted from a `Welcome`; the protocol's design range is 5 ms..2 s,
/// and a far longer one would only make the jitter buffer huge.
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);

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
        }
    }
}

/// How a run that reached the server ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The final statistics (zeros when interrupted before the `Welcome`).
    pub stats: Stats,
    /// Why the stream ended.
    pub end_reason: EndReason,
    /// The stream as the server described it (`None` when interrupted during the handshake).
    pub info: Option<StreamInfo>,
}

impl Outcome {
    /// The process exit code: 0 finished, shutdown or interrupted; 4 timeout or evicted.
    pub fn exit_code(&self) -> u8 {
        match self.end_reason {
            EndReason::Finished | EndReason::Shutdown | EndReason::Interrupted => 0,
            EndReason::Timeout | EndReason::Evicted => 4,
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
/// (`5`, `0.25`), which humantime rejects.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a duration of zero or more seconds"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration ({e}); e.g. 100ms, 2s or 0.5"))
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

/// Counters for datagrams seen before the `Welcome` (carried into the [`Tracker`]).
#[derive(Debug, Default)]
struct Early {
    /// Did not decode or made no sense during the handshake.
    garbage: u64,
    /// From other addresses.
    foreign: u64,
}

/// How the handshake ended when it did not fail.
enum Handshake {
    /// Joined.
    Welcome(StreamInfo),
    /// The user interrupted it.
    Interrupted,
}

/// The socket and the server's address, with the outgoing control counter.
struct Link {
    /// Our socket (unconnected, so datagrams from elsewhere can be counted).
    sock: UdpSocket,
    /// The server.
    server: SocketAddr,
    /// `seq` of our control messages (informational on the wire).
    seq: u64,
    /// Encode buffer.
    buf: BytesMut,
}

impl Link {
    async fn send(&mut self, msg: Message) {
        self.buf.clear();
        let p = Packet::new(self.seq, msg);
        self.seq += 1;
        if proto::encode(&p, &mut self.buf).is_err() {
            tracing::error!("a control message did not fit a datagram");
            return;
        }
        // A lost control datagram is retried or harmless; a send error is logged, not fatal.
        if let Err(e) = self.sock.send_to(&self.buf, self.server).await {
            tracing::debug!("send to {}: {e}", self.server);
        }
    }

    async fn send_connect(&mut self) {
        // Header (12) + max_version (1) + length prefix (8) + padding.
        let pad = MIN_CONNECT_LEN.saturating_sub(proto::limits::HEADER_LEN + 1 + 8);
        let msg = Message::Connect(Connect {
            max_version: proto::VERSION,
            padding: Bytes::from(vec![0u8; pad]),
        });
        self.send(msg).await;
    }
}

async fn handshake(
    link: &mut Link,
    config: &Config,
    early: &mut Early,
    interrupt: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Handshake, ListenError> {
    let server = &config.server;
    let start = tokio::time::Instant::now();
    let deadline = start + config.timeout;
    let mut backoff = HANDSHAKE_RETRY_FIRST;
    let mut cookie: Option<[u8; COOKIE_LEN]> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    link.send_connect().await;
    let mut retry_at = (start + backoff).min(deadline);
    loop {
        tokio::select! {
            () = &mut *interrupt => return Ok(Handshake::Interrupted),
            () = tokio::time::sleep_until(retry_at) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ListenError::NoAnswer { server: server.clone(), after: config.timeout });
                }
                match cookie {
                    Some(c) => link.send(Message::Join(Join { cookie: c })).await,
                    None => link.send_connect().await,
                }
                backoff = (backoff * 2).min(HANDSHAKE_RETRY_MAX);
                retry_at = (tokio::time::Instant::now() + backoff).min(deadline);
            }
            r = link.sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => { tracing::debug!("recv: {e}"); continue; }
                };
                if from != link.server {
                    early.foreign += 1;
                    continue;
                }
                let p = match proto::decode(&buf[..n]) {
                    Ok(p) => p,
                    // A server of another version answering in its own: no point retrying.
                    Err(proto::DecodeError::UnsupportedVersion { version, .. }) => {
                        return Err(ListenError::Version { server: server.clone(), supported: version });
                    }
                    Err(_) => {
                        early.garbage += 1;
                        continue;
                    }
                };
                match p.msg {
                    Message::Challenge(c) => {
                        tracing::debug!("challenge from {server}");
                        cookie = Some(c.cookie);
                        link.send(Message::Join(Join { cookie: c.cookie })).await;
                    }
                    Message::Welcome(info) => return Ok(Handshake::Welcome(info)),
                    Message::Reject(r) => {
                        return Err(match r.reason {
                            RejectReason::Full { max_clients } => ListenError::Full { server: server.clone(), max_clients },
                            RejectReason::UnsupportedVersion { supported } => ListenError::Version { server: server.clone(), supported },
                            RejectReason::ShuttingDown => ListenError::ShuttingDown { server: server.clone() },
                        });
                    }
                    Message::Audio(_) => {} // before our Welcome: cannot be placed; the Welcome will come again.
                    Message::Error(e) => tracing::warn!("server {server} during handshake: {:?}: {}", e.code, e.text),
                    _ => early.garbage += 1,
                }
            }
        }
    }
}

fn check_stream(server: &str, info: &StreamInfo) -> Result<(), ListenError> {
    let bad = |detail: &str| {
        Err(ListenError::BadStream {
            server: server.to_owned(),
            detail: detail.to_owned(),
        })
    };
    // Bounds on what a server may announce: every buffer the client sizes from these (the
    // jitter buffer, concealment, the sink, the WAV header) stays sane however hostile the
    // `Welcome` is.
    if !(MIN_RATE..=MAX_RATE).contains(&info.sample_rate) {
        return bad(&format!(
            "sample rate {} Hz (expected {MIN_RATE}..={MAX_RATE})",
            info.sample_rate
        ));
    }
    if info.channels == 0 || info.channels > MAX_CHANNELS {
        return bad(&format!(
            "{} channels (expected 1..={MAX_CHANNELS})",
            info.channels
        ));
    }
    let max_fpp = proto::limits::MAX_PAYLOAD / info.bytes_per_frame();
    if info.frames_per_packet == 0 || info.frames_per_packet as usize > max_fpp {
        return bad(&format!(
            "{} frames per packet (expected 1..={max_fpp})",
            info.frames_per_packet
        ));
    }
    if info.format != SampleFormat::S16Le {
        return bad("unknown sample format");
    }
    let interval = Duration::from_micros(u64::from(info.interval_us));
    if interval.is_zero() || interval > MAX_INTERVAL {
        return bad(&format!("interval {interval:?}"));
    }
    Ok(())
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
/// receive buffer of [`RECV_BUFFER`] (or what the kernel allows: [`stream`] warns when that is
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

fn fmt_pos(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// Connects to `config.server`, plays the stream until it ends, the server falls silent, or
/// `interrupt` completes (Ctrl-C), and returns the statistics (also printed as a table to
/// stderr and, with `--stats-json`, written as JSON).
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
    let mut link = Link {
        sock,
        server,
        seq: 0,
        buf: BytesMut::with_capacity(256),
    };
    let mut early = Early::default();
    tracing::info!("connecting to {} ({server})", config.server);
    let info = match handshake(&mut link, &config, &mut early, &mut interrupt).await? {
        Handshake::Welcome(info) => info,
        Handshake::Interrupted => {
            link.send(Message::Leave).await;
            let tracker = Tracker::new(1, 0, Instant::now());
            let stats = Stats::new(&tracker, &Default::default(), EndReason::Interrupted);
            return Ok(Outcome {
                stats,
                end_reason: EndReason::Interrupted,
                info: None,
            });
        }
    };
    if let Err(e) = check_stream(&config.server, &info) {
        link.send(Message::Leave).await;
        return Err(e);
    }
    let interval = Duration::from_micros(u64::from(info.interval_us));
    tracing::info!(
        "joined {}: {:?}, {} Hz, {} ch, interval {interval:?}, {} frames/packet, length {}, from seq {} frame {}",
        config.server,
        info.title,
        info.sample_rate,
        info.channels,
        info.frames_per_packet,
        info.total_frames
            .map_or("unknown".to_owned(), |t| fmt_pos(duration_of(
                t,
                info.sample_rate
            ))),
        info.start_seq,
        info.start_ts,
    );
    let mut sink = match open_sink(&config, &info) {
        Ok(s) => s,
        Err(e) => {
            link.send(Message::Leave).await;
            return Err(e.into());
        }
    };
    let (end_reason, tracker, jb, mut failure) = stream(
        &mut link,
        &config,
        &info,
        sink.as_mut(),
        early,
        &mut interrupt,
    )
    .await;
    link.send(Message::Leave).await;
    // Let the sink play what it holds (the device's tail), unless the user wants out now.
    match sink.finish(Instant::now()) {
        Ok(wait) if end_reason != EndReason::Interrupted => tokio::time::sleep(wait).await,
        Ok(_) => {}
        Err(e) => failure = failure.or(Some(e)),
    }
    drop(sink);
    let stats = Stats::new(&tracker, &jb.counters(), end_reason);
    let table = render_table(&stats);
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
        std::fs::write(path, stats.to_json() + "\n").map_err(|source| ListenError::StatsJson {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Outcome {
        stats,
        end_reason,
        info: Some(info),
    })
}

/// The receiving half of the streaming loop: what to do with each datagram.
struct Receiver<'a> {
    /// The server as the user wrote it, for messages.
    server: &'a str,
    /// The server's address: anything else is foreign.
    from: SocketAddr,
    /// The stream's length, to conceal trailing loss of a finished stream.
    total_frames: Option<u64>,
    /// Most frames one datagram holds: bounds how much trailing loss may be concealed.
    frames_per_packet: u64,
    /// Bytes per frame, to count the frames of each datagram.
    bytes_per_frame: usize,
    /// Frames per second, to turn the frames left after `End` into a deadline.
    rate: u32,
    /// One past the last frame received so far.
    received_end: u64,
    /// How long the server may be silent (also the grace after the end has played out).
    silence: Duration,
    /// Set at `End`: the run ends by then even if the sink stops taking audio.
    end_deadline: Option<tokio::time::Instant>,
    /// Reception counters.
    tracker: Tracker,
    /// The playout.
    jb: JitterBuffer,
    /// When the server was last heard (for the silence timeout).
    last_heard: tokio::time::Instant,
    /// Set by the first `End`.
    ended: Option<EndReason>,
}

impl Receiver<'_> {
    /// Takes one datagram; returns a reason when it ends the stream at once (eviction).
    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) -> Option<EndReason> {
        if from != self.from {
            self.tracker.on_foreign();
            return None;
        }
        let now = Instant::now();
        let Ok(p) = proto::decode(data) else {
            self.tracker.on_garbage();
            return None;
        };
        self.last_heard = tokio::time::Instant::now();
        let server = self.server;
        match p.msg {
            // Not a whole number of frames (or none): malformed for this stream (docs/PROTOCOL.md
            // §4.3), counted and dropped before it counts as received.
            Message::Audio(a) if a.pcm.is_empty() || a.pcm.len() % self.bytes_per_frame != 0 => {
                self.tracker.on_garbage();
            }
            Message::Audio(a) => {
                if self.tracker.on_audio(now, p.seq, a.ts) == Arrival::New {
                    let frames = (a.pcm.len() / self.bytes_per_frame) as u64;
                    self.received_end = self.received_end.max(a.ts.saturating_add(frames));
                    self.jb.push(a.ts, a.pcm);
                }
            }
            Message::End(e) if self.ended.is_none() => {
                // Trailing loss of a finished stream is concealed to the end, but never past
                // what the missing datagrams could have held: a truncated file (whose header
                // overstates its length) or a lying server cannot make us play hours of silence.
                let end_ts = match (e.reason, self.tracker.highest(), e.last_seq) {
                    (proto::EndReason::Finished, Some(h), Some(l)) if l > h => {
                        let most = (l - h).saturating_mul(self.frames_per_packet);
                        self.total_frames
                            .map(|t| t.min(self.received_end.saturating_add(most)))
                    }
                    _ => None,
                };
                let left = end_ts
                    .unwrap_or(self.received_end)
                    .saturating_sub(self.jb.position());
                self.end_deadline =
                    Some(tokio::time::Instant::now() + duration_of(left, self.rate) + self.silence);
                self.tracker.on_end(e.last_seq);
                self.jb.end(end_ts);
                let r = EndReason::from(e.reason);
                tracing::info!(
                    "server {server} ended the stream ({}); playing out {:?}",
                    r.as_str(),
                    self.jb.buffered()
                );
                self.ended = Some(r);
            }
            // Repeats of End, or of handshake answers.
            Message::End(_) | Message::Welcome(_) | Message::Challenge(_) => {}
            Message::Error(e) if e.code == ErrorCode::NotJoined => {
                tracing::warn!("server {server} no longer knows this listener: {}", e.text);
                return Some(EndReason::Evicted);
            }
            Message::Error(e) => tracing::warn!("server {server}: {:?}: {}", e.code, e.text),
            _ => self.tracker.on_garbage(),
        }
        None
    }
}

/// Moves audio from the jitter buffer to the sink.
struct Feeder {
    /// Pulled frames (reused).
    out: Vec<i16>,
    /// Audio has been handed to the sink (for the "playing" log line).
    playing: bool,
    /// Underruns already reported.
    underruns: u64,
    /// The stream's rate, for messages.
    rate: u32,
}

impl Feeder {
    /// Gives the sink what it asks for now. Returns when to do so again at the latest, or
    /// `None` when the jitter buffer could not supply it all (buffering, or finished): only
    /// arriving audio (or `End`) changes that.
    fn feed(
        &mut self,
        jb: &mut JitterBuffer,
        sink: &mut dyn Sink,
    ) -> Result<Option<Instant>, SinkError> {
        let now = Instant::now();
        let want = sink.demand(now);
        let mut got = 0;
        if want > 0 {
            self.out.clear();
            got = jb.pull(want, &mut self.out);
            if got > 0 {
                if !self.playing {
                    self.playing = true;
                    tracing::info!("playing, {:?} buffered", jb.buffered());
                }
                sink.write(now, &self.out)?;
            }
        }
        let u = jb.counters().underruns;
        if u > self.underruns {
            self.underruns = u;
            tracing::warn!(
                "buffer ran empty at {}: rebuffering to {:?}",
                fmt_pos(duration_of(jb.position(), self.rate)),
                jb.target()
            );
        }
        Ok((got == want).then(|| sink.refill_at(now)))
    }
}

/// The streaming loop: returns why it ended, the two cores for the statistics, and the sink's
/// error if writing failed.
async fn stream(
    link: &mut Link,
    config: &Config,
    info: &StreamInfo,
    sink: &mut dyn Sink,
    early: Early,
    interrupt: &mut (impl Future<Output = ()> + Unpin),
) -> (EndReason, Tracker, JitterBuffer, Option<SinkError>) {
    let server = config.server.as_str();
    let rate = info.sample_rate;
    let mut tracker = Tracker::new(rate, info.start_seq, Instant::now());
    for _ in 0..early.garbage {
        tracker.on_garbage();
    }
    for _ in 0..early.foreign {
        tracker.on_foreign();
    }
    let jb = JitterBuffer::new(info, config.latency, sink.lead());
    if let Some(requested) = jb.grown() {
        tracing::warn!(
            "--latency {requested:?} is too short for the server's {:?} interval; buffering {:?} instead",
            Duration::from_micros(u64::from(info.interval_us)),
            jb.target()
        );
    }
    let interval = Duration::from_micros(u64::from(info.interval_us));
    let burst = (interval.as_secs_f64() * f64::from(rate)) as usize * info.bytes_per_frame();
    let rcvbuf = socket2::SockRef::from(&link.sock)
        .recv_buffer_size()
        .unwrap_or(0);
    // The kernel charges about twice the payload of a ~1 KiB datagram against the buffer.
    if rcvbuf < 2 * burst {
        tracing::warn!(
            "the UDP receive buffer ({rcvbuf} bytes) may not hold one {interval:?} burst \
             (~{burst} bytes of audio): raise net.core.rmem_max if audio is lost"
        );
    }
    // Between bursts the server is silent for a whole interval by design.
    let silence = config.timeout.max(interval * 2);
    if silence > config.timeout {
        tracing::warn!(
            "--timeout {:?} is shorter than the server's {interval:?} interval allows; using {silence:?}",
            config.timeout
        );
    }
    let mut rx = Receiver {
        server,
        from: link.server,
        total_frames: info.total_frames,
        frames_per_packet: u64::from(info.frames_per_packet),
        bytes_per_frame: info.bytes_per_frame(),
        rate,
        received_end: info.start_ts,
        silence,
        end_deadline: None,
        tracker,
        jb,
        last_heard: tokio::time::Instant::now(),
        ended: None,
    };
    let status_on = !config.quiet && std::io::stderr().is_terminal();
    // The sink is fed after every wake-up (audio arrived, a timer fired) and otherwise at the
    // instant it asks for ([`Sink::refill_at`]); while the jitter buffer cannot supply it
    // (buffering, finished) only arriving audio changes that, so this timer is off.
    let refill = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(refill);
    let mut refill_armed = false;
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + REPORT_INTERVAL,
        REPORT_INTERVAL,
    );
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One timer for the silence timeout, moved on only when it fires: re-arming it for every
    // datagram would cost a timer-wheel update each.
    let silent = tokio::time::sleep_until(rx.last_heard + silence);
    tokio::pin!(silent);
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    status.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut feeder = Feeder {
        out: Vec::new(),
        playing: false,
        underruns: 0,
        rate,
    };
    let mut failure = None;
    let reason = 'run: loop {
        tokio::select! {
            () = &mut *interrupt => break EndReason::Interrupted,
            r = link.sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => { tracing::debug!("recv: {e}"); continue; }
                };
                if let Some(r) = rx.on_datagram(&buf[..n], from) {
                    break r;
                }
                // Drain what else is queued without going back through the select: a server
                // with a long interval sends a whole burst at once, and the socket buffer must
                // not overflow while timers are polled between datagrams.
                for _ in 0..RECV_BATCH {
                    match link.sock.try_recv_from(&mut buf) {
                        Ok((n, from)) => {
                            if let Some(r) = rx.on_datagram(&buf[..n], from) {
                                break 'run r;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            () = &mut refill, if refill_armed => {}
            _ = report.tick(), if rx.ended.is_none() => {
                let buffered_ms = rx.jb.buffered().as_millis().min(u128::from(u32::MAX)) as u32;
                let r = rx.tracker.report(&rx.jb.counters(), buffered_ms);
                link.send(Message::Report(r)).await;
            }
            () = tokio::time::sleep_until(rx.end_deadline.unwrap_or(rx.last_heard)),
                if rx.end_deadline.is_some() =>
            {
                tracing::warn!("the end of the stream did not play out in time; stopping");
                break rx.ended.unwrap_or(EndReason::Finished);
            }
            () = &mut silent, if rx.ended.is_none() => {
                let deadline = rx.last_heard + silence;
                if tokio::time::Instant::now() < deadline {
                    silent.as_mut().reset(deadline);
                } else {
                    tracing::warn!("server {server} silent for {}", fmt_secs(silence));
                    break EndReason::Timeout;
                }
            }
            _ = status.tick(), if status_on => {
                let pos = fmt_pos(duration_of(rx.jb.position(), rate));
                let total = info
                    .total_frames
                    .map_or("live".to_owned(), |t| fmt_pos(duration_of(t, rate)));
                let t = &rx.tracker;
                let loss = if t.expected() > 0 {
                    t.lost() as f64 * 100.0 / t.expected() as f64
                } else {
                    0.0
                };
                eprint!(
                    "\r\x1b[K{pos} / {total}  buffer {} ms  loss {loss:.1}%  jitter {:.1} ms",
                    rx.jb.buffered().as_millis(),
                    t.jitter_ms()
                );
            }
        }
        match feeder.feed(&mut rx.jb, sink) {
            Ok(Some(at)) => {
                let at = tokio::time::Instant::from_std(at);
                if !refill_armed || refill.deadline() != at {
                    // A new timer rather than `reset`: tokio moves a timer to a later deadline
                    // lazily, leaving its old slot to wake the runtime for nothing.
                    refill.set(tokio::time::sleep_until(at));
                }
                refill_armed = true;
            }
            Ok(None) => refill_armed = false,
            Err(e) => {
                // The listener cannot go on: it stopped, as if interrupted.
                failure = Some(e);
                break EndReason::Interrupted;
            }
        }
        if let Some(r) = rx.ended
            && rx.jb.is_finished()
        {
            break r;
        }
    };
    if status_on {
        eprint!("\r\x1b[K");
    }
    (reason, rx.tracker, rx.jb, failure)
}
