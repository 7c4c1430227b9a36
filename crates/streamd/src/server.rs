//! The tokio driver: one UDP socket, a tick timer and a housekeeping timer around the sans-IO
//! cores ([`crate::sessions`], [`crate::pacing`], [`crate::source`]) and the send path
//! ([`crate::fanout`]). One task, one `select!` loop; nothing here decides protocol behaviour.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::limits::{END_REPEAT, END_SPACING, MAX_DATAGRAM, MAX_TITLE, MIN_MTU};
use proto::{End, EndReason, Message, Packet, SampleFormat, StreamInfo};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};

use crate::fanout::{Fanout, FanoutStats};
use crate::pacing::{self, MediaClock};
use crate::sessions::{self, Event, Ignored, LivePosition, Sessions};
use crate::source::{Source, SourceError, SourceInfo};

/// Shortest `--interval`: below 5 ms the per-tick overhead dominates and timers on a loaded
/// machine cannot keep the cadence anyway.
pub const MIN_INTERVAL: Duration = Duration::from_millis(5);
/// Longest `--interval`: beyond 2 s a listener would need a multi-second buffer to ride the
/// gap between bursts.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2);
/// Largest `--mtu`: a v1 datagram can be no larger.
pub const MAX_MTU: usize = MAX_DATAGRAM;
/// Largest `--max-clients`: bounds the table's memory (reserved up front; measured RSS under
/// 1 KiB a listener with the fan-out's address array) and one tick's fan-out work (measured on
/// loopback: ~0.45 ms of CPU per listener per second with GSO, so 10,000 listeners take ~4.5
/// cores and 100,000 could only be served by a bigger machine: the limit is the table's, not a
/// promise of the send path's).
pub const MAX_CLIENTS_LIMIT: usize = 100_000;
/// How often silent listeners are looked for: a tenth of a second keeps eviction within
/// 100 ms of `--client-timeout` at negligible cost.
pub const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How often the summary line is logged: frequent enough to watch, rare enough that a long run
/// (or a flood) cannot fill a disk with it.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(10);
/// Connects (and bad-cookie joins) logged one line each per summary period; beyond this they
/// are only counted, because anyone can send them from spoofed addresses.
pub const HANDSHAKE_LOG_BURST: u64 = 20;
/// Eviction `End`s being repeated at once; beyond this an evicted listener gets one copy, so a
/// mass eviction cannot spawn unbounded tasks.
pub const MAX_PENDING_ENDS: usize = 256;
/// Kernel send buffer asked for: one tick's burst to many listeners must fit, or datagrams are
/// dropped (counted) instead of sent. The kernel may grant less (net.core.wmem_max).
pub const SEND_BUFFER: usize = 4 << 20;
/// Kernel receive buffer asked for: room for a burst of reports from many listeners.
pub const RECV_BUFFER: usize = 1 << 20;

/// When streaming starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// When the first listener joins (the original behaviour): nobody misses the beginning.
    #[default]
    FirstClient,
    /// At once, like a radio station: listeners join live.
    Now,
}

/// Everything the server is told, one field per command-line option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--file`: the audio file to stream.
    pub file: PathBuf,
    /// `--bind` and `--port`: where to listen.
    pub bind: SocketAddr,
    /// `--interval`: the tick; each tick sends the audio that became due.
    pub interval: Duration,
    /// `--max-clients`: listeners beyond this get `Reject{Full}`.
    pub max_clients: usize,
    /// `--client-timeout`: a listener silent this long is evicted.
    pub client_timeout: Duration,
    /// `--start`: first listener or now.
    pub start: StartMode,
    /// `--loop`: repeat the file forever.
    pub looping: bool,
    /// `--mtu`: largest datagram sent, in bytes.
    pub mtu: usize,
    /// `--log-file`: also write the log here (used by the binary, not the library).
    pub log_file: Option<PathBuf>,
}

/// Default `--interval`: 50 ticks a second, small bursts, cheap timers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(20);
/// Default `--max-clients`: the original served 3; 32 is a classroom.
pub const DEFAULT_MAX_CLIENTS: usize = 32;

impl Config {
    /// The defaults for `file` on `bind` (tests pass `127.0.0.1:0`).
    pub fn new(file: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        Self {
            file: file.into(),
            bind,
            interval: DEFAULT_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
            client_timeout: proto::limits::DEFAULT_CLIENT_TIMEOUT,
            start: StartMode::FirstClient,
            looping: false,
            mtu: proto::limits::DEFAULT_MTU,
            log_file: None,
        }
    }

    /// Checks every value against its documented range; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(format!(
                "--interval {:?} is outside {:?}..={:?}",
                self.interval, MIN_INTERVAL, MAX_INTERVAL
            ));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(format!(
                "--mtu {} is outside {MIN_MTU}..={MAX_MTU}",
                self.mtu
            ));
        }
        if !(1..=MAX_CLIENTS_LIMIT).contains(&self.max_clients) {
            return Err(format!(
                "--max-clients {} is outside 1..={MAX_CLIENTS_LIMIT}",
                self.max_clients
            ));
        }
        if self.client_timeout.is_zero() {
            return Err("--client-timeout must be more than zero".into());
        }
        Ok(())
    }
}

/// Why the server could not start. Each message names the file or address and the reason.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value out of range (the CLI checks these first).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The file cannot be streamed.
    #[error("cannot stream {0}")]
    Source(#[from] SourceError),
    /// The socket cannot be bound.
    #[error("cannot bind {addr}: {}", bind_reason(.source))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::AddrInUse => {
            "address already in use (another server? choose another --port)".into()
        }
        ErrorKind::AddrNotAvailable => "address not available on this host (check --bind)".into(),
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        _ => e.to_string(),
    }
}

/// What a run did, returned when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Why streaming ended (`Finished` at EOF, `Shutdown` on the shutdown future).
    pub end_reason: EndReason,
    /// Distinct Audio datagrams produced (= the next seq).
    pub audio_datagrams: u64,
    /// Frames streamed.
    pub frames: u64,
    /// Datagrams and bytes handed to the kernel, and sends dropped.
    pub sent: FanoutStats,
    /// Listeners accepted over the run (a repeated Join counts once).
    pub listeners_served: u64,
    /// Most listeners at once.
    pub peak_listeners: usize,
    /// Joins refused (full or shutting down).
    pub rejected: u64,
    /// Listeners evicted for silence.
    pub evicted: u64,
    /// Listeners that left.
    pub left: u64,
    /// Datagrams received and ignored (malformed, wrong version, short connect, ...).
    pub ignored: u64,
    /// Receive errors (e.g. ICMP-induced `ConnectionRefused`), survived.
    pub recv_errors: u64,
    /// Corrupt packets skipped in the file.
    pub corrupt_packets: u64,
    /// Time the media clock gave up to stalls longer than [`pacing::MAX_CATCH_UP`].
    pub slipped: Duration,
}

/// A bound server with its file open, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    /// The configuration it was started with.
    config: Config,
    /// The bound socket (shared with the tasks that repeat eviction `End`s).
    socket: Arc<UdpSocket>,
    /// The actual bound address (the port is real even for `--port 0`).
    local_addr: SocketAddr,
    /// The open file.
    source: Source,
}

impl Server {
    /// Validates `config`, opens and probes the file, and binds the socket: every error a user
    /// can fix shows here, before anything is streamed.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let source = Source::open(&config.file)?;
        let socket = bind_socket(config.bind).map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        Ok(Server {
            config,
            socket: Arc::new(socket),
            local_addr,
            source,
        })
    }

    /// Where the server listens (with the real port when `--port 0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the file is.
    pub fn source_info(&self) -> &SourceInfo {
        self.source.info()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Streams until the end of the file (unless `--loop`) or until `shutdown` completes, then
    /// sends `End` to every listener ([`END_REPEAT`] times, [`END_SPACING`] apart) and returns
    /// what happened.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
        let mut d = Driver::new(self);
        d.log_start();
        let reason = d.main_loop(shutdown).await;
        d.finish(reason).await;
        Ok(d.summary(reason))
    }
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Bigger buffers are an optimisation; a kernel that refuses them still works.
    if let Err(e) = s.set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!("SO_SNDBUF not raised: {e}");
    }
    if let Err(e) = s.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!("SO_RCVBUF not raised: {e}");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Counters of ignored datagrams by kind, for the periodic line.
#[derive(Debug, Default, Clone, Copy)]
struct IgnoredCounts {
    malformed: u64,
    wrong_version: u64,
    short_connect: u64,
    unexpected: u64,
    not_joined: u64,
}

impl IgnoredCounts {
    fn add(&mut self, why: Ignored) {
        match why {
            Ignored::Malformed => self.malformed += 1,
            Ignored::WrongVersion => self.wrong_version += 1,
            Ignored::ShortConnect => self.short_connect += 1,
            Ignored::Unexpected => self.unexpected += 1,
            Ignored::NotJoined => self.not_joined += 1,
        }
    }

    fn total(&self) -> u64 {
        self.malformed + self.wrong_version + self.short_connect + self.unexpected + self.not_joined
    }
}

/// The state of one run: the cores, the buffers reused every tick, and counters.
struct Driver {
    /// What we were told (`looping` is cleared if the file cannot be reopened).
    config: Config,
    /// Shared with the tasks that repeat eviction `End`s.
    socket: Arc<UdpSocket>,
    /// For the start line.
    local_addr: SocketAddr,
    /// The file being played (replaced by a fresh pass with `--loop`).
    source: Source,
    /// Welcome template (start_seq/start_ts filled per join).
    info: StreamInfo,
    /// Who listens (sans-IO).
    sessions: Sessions,
    /// What is due (sans-IO).
    clock: MediaClock,
    /// The send path and its counters.
    fanout: Fanout,
    /// Frames per Audio datagram.
    fpp: usize,
    /// seq of the next Audio datagram.
    next_seq: u64,
    /// Reused buffers: PCM samples, their bytes, encoded datagrams, this tick's datagrams.
    pcm: Vec<i16>,
    pcm_bytes: Vec<u8>,
    out: BytesMut,
    tick_datagrams: Vec<Bytes>,
    /// The tick timer, once streaming has started.
    tick: Option<Interval>,
    /// Repeats of eviction `End`s in flight (at most MAX_PENDING_ENDS).
    end_tasks: JoinSet<()>,
    /// Most listeners at once, for the summary.
    peak_listeners: usize,
    /// Receive errors survived, for the summary.
    recv_errors: u64,
    /// Corrupt packets in earlier passes of the file (--loop), and the count last logged.
    corrupt_seen: u64,
    corrupt_logged: u64,
    /// Ignored datagrams by kind since the last summary line (totals are in `sessions`).
    ignored_period: IgnoredCounts,
    /// Handshake lines logged this summary period (capped at HANDSHAKE_LOG_BURST), and the
    /// ones only counted.
    handshake_logged: u64,
    handshake_unlogged: u64,
    /// File passes completed (for --loop).
    loops: u64,
}

async fn next_tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Driver {
    fn new(s: Server) -> Self {
        let si = s.source.info().clone();
        let fpp = pacing::frames_per_packet(s.config.mtu, si.bytes_per_frame());
        let mut title = si.title.clone();
        if title.len() > MAX_TITLE {
            let mut cut = MAX_TITLE;
            while !title.is_char_boundary(cut) {
                cut -= 1;
            }
            title.truncate(cut);
        }
        let info = StreamInfo {
            sample_rate: si.sample_rate,
            channels: si.channels,
            format: SampleFormat::S16Le,
            interval_us: u32::try_from(s.config.interval.as_micros()).unwrap_or(u32::MAX),
            frames_per_packet: u32::try_from(fpp).unwrap_or(u32::MAX),
            total_frames: if s.config.looping {
                None
            } else {
                si.total_frames
            },
            start_seq: 0,
            start_ts: 0,
            title,
        };
        let now = Instant::now();
        let sessions = Sessions::new(
            now,
            Sessions::random_key(),
            s.config.max_clients,
            s.config.client_timeout,
        );
        let mut fanout = Fanout::new();
        fanout.detect(&s.socket);
        Driver {
            clock: MediaClock::new(si.sample_rate, s.config.interval),
            config: s.config,
            socket: s.socket,
            local_addr: s.local_addr,
            source: s.source,
            info,
            sessions,
            fanout,
            fpp,
            next_seq: 0,
            pcm: Vec::new(),
            pcm_bytes: Vec::new(),
            out: BytesMut::new(),
            tick_datagrams: Vec::new(),
            tick: None,
            end_tasks: JoinSet::new(),
            peak_listeners: 0,
            recv_errors: 0,
            corrupt_seen: 0,
            corrupt_logged: 0,
            ignored_period: IgnoredCounts::default(),
            handshake_logged: 0,
            handshake_unlogged: 0,
            loops: 0,
        }
    }

    fn log_start(&self) {
        let si = self.source.info();
        let duration = si
            .duration()
            .map(|d| format!("{:.3}s", d.as_secs_f64()))
            .unwrap_or_else(|| "unknown".into());
        tracing::info!(
            "on {}: streaming {} ({}, {} Hz, {} ch, {}) every {:?} in datagrams of <= {} bytes ({} frames), \
             max {} listeners, client timeout {:?}, start {}, loop {}, fan-out by {}",
            self.local_addr,
            self.config.file.display(),
            si.codec,
            si.sample_rate,
            si.channels,
            duration,
            self.config.interval,
            self.config.mtu,
            self.fpp,
            self.config.max_clients,
            self.config.client_timeout,
            match self.config.start {
                StartMode::FirstClient => "at first listener",
                StartMode::Now => "now",
            },
            self.config.looping,
            self.fanout.path().name(),
        );
    }

    fn start_streaming(&mut self) {
        if self.clock.is_started() {
            return;
        }
        self.clock.start(Instant::now());
        let mut t = tokio::time::interval(self.config.interval);
        // Skip: a late tick is followed by ticks on the original grid, not by a burst of
        // back-to-back ticks (Burst) nor a shifted grid (Delay). The media clock already makes
        // the first late tick send everything that became due, so Burst would only add empty
        // ticks, and Delay would make the cadence wander.
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        self.tick = Some(t);
        tracing::info!("streaming started");
    }

    fn live(&self) -> LivePosition {
        LivePosition {
            seq: self.next_seq,
            ts: self.clock.frames_sent(),
        }
    }

    async fn main_loop(&mut self, shutdown: impl Future<Output = ()>) -> EndReason {
        tokio::pin!(shutdown);
        if self.config.start == StartMode::Now {
            self.start_streaming();
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_summary = Instant::now();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let socket = Arc::clone(&self.socket);
        loop {
            // Biased, in this order: shutdown, then the tick (audio is never late because of
            // incoming traffic), then housekeeping (evictions and the summary still happen under a
            // flood), then one received datagram. The timers are ready only now and then, so the
            // receive side is not starved either.
            tokio::select! {
                biased;
                () = &mut shutdown => return EndReason::Shutdown,
                () = next_tick(&mut self.tick) => {
                    if self.on_tick() {
                        return EndReason::Finished;
                    }
                }
                _ = housekeeping.tick() => {
                    self.on_housekeeping();
                    if last_summary.elapsed() >= SUMMARY_PERIOD {
                        last_summary = Instant::now();
                        self.log_summary();
                    }
                }
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(from, &buf[..n]),
                    Err(e) => {
                        // Never fatal: on Linux an ICMP port-unreachable from a departed
                        // listener surfaces here as ConnectionRefused.
                        self.recv_errors += 1;
                        tracing::trace!("receive error (ignored): {e}");
                    }
                },
            }
        }
    }

    /// Reads up to `n` frames into `self.pcm`, across the loop boundary with `--loop`.
    fn read_frames(&mut self, n: usize) -> usize {
        let mut got = self.source.read_frames(n, &mut self.pcm);
        while got < n && self.config.looping {
            match Source::open(&self.config.file) {
                Ok(s)
                    if s.info().sample_rate == self.info.sample_rate
                        && s.info().channels == self.info.channels =>
                {
                    self.corrupt_seen += self.source.corrupt_packets();
                    self.source = s;
                    self.loops += 1;
                    tracing::debug!(loops = self.loops, "looping to the start of the file");
                }
                Ok(_) => {
                    tracing::error!(
                        "{}: format changed on disk; stopping the loop",
                        self.config.file.display()
                    );
                    self.config.looping = false;
                    break;
                }
                Err(e) => {
                    tracing::error!("cannot reopen for --loop: {e}; stopping");
                    self.config.looping = false;
                    break;
                }
            }
            let more = self.source.read_frames(n - got, &mut self.pcm);
            if more == 0 {
                // An empty pass would loop forever without producing audio.
                self.config.looping = false;
                break;
            }
            got += more;
        }
        got
    }

    /// One tick: send everything the media clock says is due. Returns true at the end of file.
    fn on_tick(&mut self) -> bool {
        let due = self.clock.due(Instant::now());
        self.tick_datagrams.clear();
        let mut produced = 0u64;
        let mut eof = false;
        for n in pacing::split(due, self.fpp) {
            self.pcm.clear();
            let got = self.read_frames(n);
            if got > 0 {
                self.pcm_bytes.clear();
                for s in &self.pcm {
                    self.pcm_bytes.extend_from_slice(&s.to_le_bytes());
                }
                let ts = self.clock.frames_sent() + produced;
                proto::encode_audio(self.next_seq, ts, &self.pcm_bytes, &mut self.out);
                self.tick_datagrams.push(self.out.split().freeze());
                self.next_seq += 1;
                produced += got as u64;
            }
            if got < n {
                eof = true;
                break;
            }
        }
        self.clock.sent(produced);
        self.fanout
            .send(&self.socket, &self.tick_datagrams, self.sessions.addrs());
        self.note_corrupt();
        eof || (!self.config.looping && self.source.is_finished())
    }

    fn note_corrupt(&mut self) {
        let c = self.corrupt_seen + self.source.corrupt_packets();
        if c > self.corrupt_logged {
            tracing::warn!(
                "{}: skipped {} corrupt packet(s) so far",
                self.config.file.display(),
                c
            );
            self.corrupt_logged = c;
        }
    }

    fn log_handshake(&mut self, line: std::fmt::Arguments<'_>) {
        if self.handshake_logged < HANDSHAKE_LOG_BURST {
            self.handshake_logged += 1;
            tracing::info!("{line}");
        } else {
            self.handshake_unlogged += 1;
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        let now = Instant::now();
        let live = self.live();
        let h = self.sessions.handle(now, from, datagram, &self.info, live);
        if let Some(reply) = &h.reply {
            self.fanout.send_one(&self.socket, reply, from);
        }
        match h.event {
            Event::Challenged => self.log_handshake(format_args!("connect from {from}")),
            Event::BadCookie => self.log_handshake(format_args!(
                "join from {from} with an invalid or expired cookie; challenged again"
            )),
            Event::Accepted { start } => {
                self.peak_listeners = self.peak_listeners.max(self.sessions.len());
                tracing::info!(
                    "accepted {from} at seq {} ts {} ({} of {} listeners)",
                    start.seq,
                    start.ts,
                    self.sessions.len(),
                    self.config.max_clients
                );
                if self.config.start == StartMode::FirstClient {
                    self.start_streaming();
                }
            }
            // A validated host can replay its own Join as fast as it likes for the cookie's
            // lifetime: these lines share the handshake budget, so it cannot flood the log.
            Event::Rejoined => {
                self.log_handshake(format_args!("{from} joined again; welcomed again"));
            }
            Event::Rejected(reason) => {
                self.log_handshake(format_args!("rejected {from}: {reason:?}"));
            }
            Event::Report(r) => tracing::debug!(
                "report from {from}: received {} lost {} late {} dup {} ooo {} highest {} jitter {} us buffered {} ms",
                r.received,
                r.lost,
                r.late,
                r.duplicates,
                r.out_of_order,
                r.highest_seq,
                r.jitter_us,
                r.buffered_ms
            ),
            Event::Left => tracing::info!("{from} left ({} listeners)", self.sessions.len()),
            Event::Ignored(why) => self.ignored_period.add(why),
        }
    }

    fn last_audio(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }

    fn end_bytes(&self, addr: &SocketAddr, reason: EndReason) -> Option<Bytes> {
        let end: End = self.sessions.end_for(addr, reason, self.last_audio());
        // One seq for every copy of one End (proto: the copies share their seq).
        proto::encode_to_bytes(&Packet::new(self.next_seq, Message::End(end))).ok()
    }

    fn on_housekeeping(&mut self) {
        while self.end_tasks.try_join_next().is_some() {}
        let mut evicted = Vec::new();
        self.sessions.evict_expired(Instant::now(), &mut evicted);
        for (addr, start_seq) in evicted {
            tracing::info!(
                "evicted {addr}: silent for more than {:?} ({} listeners)",
                self.config.client_timeout,
                self.sessions.len()
            );
            let end = sessions::end_after(start_seq, EndReason::Evicted, self.last_audio());
            let Ok(bytes) = proto::encode_to_bytes(&Packet::new(self.next_seq, Message::End(end)))
            else {
                continue;
            };
            self.fanout.send_one(&self.socket, &bytes, addr);
            if self.end_tasks.len() < MAX_PENDING_ENDS {
                let sock = Arc::clone(&self.socket);
                self.end_tasks.spawn(async move {
                    for _ in 1..END_REPEAT {
                        tokio::time::sleep(END_SPACING).await;
                        // Best effort, like every datagram (straight to the kernel, as in
                        // the fan-out).
                        let _ = socket2::SockRef::from(&*sock).send_to(&bytes, &addr.into());
                    }
                });
            }
        }
    }

    fn log_summary(&mut self) {
        let f = self.fanout.stats();
        let ig = self.ignored_period;
        tracing::info!(
            "summary: {} listeners, sent {} datagrams / {} bytes ({} dropped) in {} calls by {}, audio seq {}, \
             ignored {} since the last summary (malformed {}, wrong version {}, short connect {}, \
             unexpected {}, not joined {}), {} handshakes not logged",
            self.sessions.len(),
            f.datagrams,
            f.bytes,
            f.dropped(),
            f.syscalls,
            self.fanout.path().name(),
            self.next_seq,
            ig.total(),
            ig.malformed,
            ig.wrong_version,
            ig.short_connect,
            ig.unexpected,
            ig.not_joined,
            self.handshake_unlogged,
        );
        self.ignored_period = IgnoredCounts::default();
        self.handshake_logged = 0;
        self.handshake_unlogged = 0;
    }

    /// Sends `End` to every listener, END_REPEAT times, END_SPACING apart.
    async fn finish(&mut self, reason: EndReason) {
        self.sessions.stop_accepting();
        let addrs: Vec<SocketAddr> = self.sessions.addrs().to_vec();
        let ends: Vec<(SocketAddr, Bytes)> = addrs
            .iter()
            .filter_map(|a| self.end_bytes(a, reason).map(|b| (*a, b)))
            .collect();
        tracing::info!(
            "stream ended ({reason:?}) at seq {}; sending End to {} listener(s)",
            self.next_seq,
            ends.len()
        );
        for i in 0..END_REPEAT {
            for (addr, bytes) in &ends {
                self.fanout.send_one(&self.socket, bytes, *addr);
            }
            if i + 1 < END_REPEAT && !ends.is_empty() {
                tokio::time::sleep(END_SPACING).await;
            }
        }
        // Let eviction Ends in flight finish their repeats (they take at most this long).
        let _ = tokio::time::timeout(END_SPACING * END_REPEAT, async {
            while self.end_tasks.join_next().await.is_some() {}
        })
        .await;
        self.log_summary();
    }

    fn summary(&self, reason: EndReason) -> Summary {
        let st = self.sessions.stats();
        Summary {
            end_reason: reason,
            audio_datagrams: self.next_seq,
            frames: self.clock.frames_sent(),
            sent: self.fanout.stats(),
            listeners_served: st.accepted,
            peak_listeners: self.peak_listeners,
            rejected: st.rejected,
            evicted: st.evicted,
            left: st.left,
            ignored: st.ignored,
            recv_errors: self.recv_errors,
            corrupt_packets: self.corrupt_seen + self.source.corrupt_packets(),
            slipped: self.clock.slipped(),
        }
    }
}
