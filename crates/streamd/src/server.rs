//! The tokio shell around [`crate::endpoint::Endpoint`]: one UDP socket, one timer (the
//! endpoint's [`poll_timeout`](crate::endpoint::Endpoint::poll_timeout)), the fan-out
//! ([`crate::fanout`]) for what the endpoint transmits, stop requests, and logging (with a
//! per-period budget for lines anyone can trigger). One task, one `select!` loop; nothing here
//! decides protocol behaviour.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use audiocodec::AudioCodec;
use futures::{Stream, StreamExt};
use proto::EndReason;
use proto::limits::{MAX_DATAGRAM, MIN_MTU};
use tokio::net::UdpSocket;

use crate::endpoint::{AudioSource, Endpoint, EndpointConfig, Event, RepairConfig, Transmit};
pub use crate::endpoint::{HOUSEKEEPING, MAX_PENDING_ENDS, StartMode};
use crate::fanout::{Fanout, FanoutStats};
use crate::live::{LiveStats, OnIdle, RawFormat};
use crate::multicast::GroupSender;
use crate::rtp::RtpParams;
use crate::rtp::output::{Output as RtpOutput, RtpConfig};
use crate::sessions::{self, Ignored, Sessions};
use crate::source::{Input, InputOptions, SourceError, SourceInfo};

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
/// How often the summary line is logged: frequent enough to watch, rare enough that a long run
/// (or a flood) cannot fill a disk with it.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(10);
/// Connects (and bad-cookie joins) logged one line each per summary period; beyond this they
/// are only counted, because anyone can send them from spoofed addresses.
pub const HANDSHAKE_LOG_BURST: u64 = 20;
/// Kernel send buffer asked for: one tick's burst to many listeners must fit, or datagrams are
/// dropped (counted) instead of sent. The kernel may grant less (net.core.wmem_max).
pub const SEND_BUFFER: usize = 4 << 20;
/// Kernel receive buffer asked for: room for a burst of reports from many listeners.
pub const RECV_BUFFER: usize = 1 << 20;

/// Everything the server is told, one field per command-line option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--file`: the audio file to stream (`-`: stdin; a FIFO is read live).
    pub file: PathBuf,
    /// `--format`: the input is raw PCM of this layout.
    pub format: Option<RawFormat>,
    /// `--on-idle`: what a FIFO without a writer sends.
    pub on_idle: OnIdle,
    /// `--capture [DEVICE]`: record from an input device (`Some(None)`: the default one)
    /// instead of reading `file`.
    pub capture: Option<Option<String>>,
    /// `--bind` and `--port`: where to listen.
    pub bind: SocketAddr,
    /// `--interval`: the tick; each tick sends the audio that became due.
    pub interval: Duration,
    /// `--max-clients`: listeners beyond this get `Reject{Full}`.
    pub max_clients: usize,
    /// `--client-timeout`: a listener silent this long is evicted.
    pub client_timeout: Duration,
    /// `--latency`: the room's playout delay, stated in every Welcome.
    pub playout_delay: Duration,
    /// `--start`: first listener or now.
    pub start: StartMode,
    /// `--loop`: repeat the file forever.
    pub looping: bool,
    /// `--mtu`: largest datagram sent, in bytes.
    pub mtu: usize,
    /// `--codec`: what the Audio datagrams carry (PCM, FLAC or Opus).
    pub codec: AudioCodec,
    /// `--log-file`: also write the log here (used by the binary, not the library).
    pub log_file: Option<PathBuf>,
    /// `--rtp`, `--ttl`, `--sdp`, `--sap`: the RTP output beside the listeners (off when no
    /// destination is given).
    pub rtp: RtpConfig,
    /// `--relay-from HOST:PORT`: relay another earshot server's stream instead of `file`.
    pub relay_from: Option<String>,
    /// `--fec`: parity groups.
    pub fec: FecChoice,
    /// `--retransmit`: answer listeners' Nacks.
    pub retransmit: bool,
    /// The repair the endpoint offers: `fec` and `retransmit` resolved against the stream
    /// when the server binds.
    pub repair: RepairConfig,
    /// `--key-file`: a private room's key (docs/PROTOCOL.md §4.12); `None`: an open room.
    pub room_key: Option<seal::RoomKey>,
    /// `--rekey-interval`: how long each stream key of a private room is used.
    pub rekey_interval: Duration,
    /// `--multicast GROUP:PORT` and its `--ttl`: each tick's audio also goes once to a group.
    pub multicast: Option<MulticastConfig>,
}

/// `--multicast GROUP:PORT [--ttl N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastConfig {
    /// The group and port ([`crate::multicast::parse_group`]).
    pub group: SocketAddr,
    /// Hops the group's datagrams may travel (1: the local network).
    pub ttl: u8,
}

/// Default `--rekey-interval`: a listener shut out (kicked, or its key file replaced) hears
/// at most this much more, while a `Rekey` per listener costs next to nothing.
pub const DEFAULT_REKEY_INTERVAL: Duration = Duration::from_secs(600);
/// Shortest `--rekey-interval`: the announcement's lead is at most half the interval, and
/// half a second still leaves room for its three copies and a round trip.
pub const MIN_REKEY_INTERVAL: Duration = Duration::from_secs(1);

/// `--fec`: what parity the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FecChoice {
    /// [`repair::fec::DEFAULT_K`],[`repair::fec::DEFAULT_M`] when that many datagrams fit the
    /// playout delay, else none ([`repair::default_fec`]).
    #[default]
    Default,
    /// No parity.
    Off,
    /// K,M as given; it must fit the playout delay.
    Groups(repair::FecParams),
}

/// Default `--interval`: 50 ticks a second, small bursts, cheap timers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(20);

/// `--interval`'s longest default for an Opus stream from a file: five 20 ms packets a tick.
/// Every listener costs the server one send per tick (a PCM tick's three datagrams, or an Opus
/// tick's packets of one constant size, go as one UDP GSO message), so the longer the tick the
/// fewer sends: against three packets a tick, five take about a quarter off each listener's
/// cost. A file is read ahead by an interval, so each packet still leaves before it is due. The
/// room's playout delay is at least the interval + 5 ms, so this raises the default 50 ms to
/// 105 ms; a `--latency` given shorter gets the longest tick of whole packets that fits it.
pub const OPUS_FILE_INTERVAL: Duration = Duration::from_millis(100);

/// `--interval`'s default for an Opus stream from a live input (stdin, a FIFO, a capture
/// device, a relay): two 20 ms packets a tick. A live input cannot be read ahead, so its tick
/// adds to the delay; 40 ms keeps the room's default 50 ms.
pub const OPUS_LIVE_INTERVAL: Duration = Duration::from_millis(40);

/// One Opus packet's audio (20 ms): a tick of an Opus stream is a whole number of them.
const OPUS_PACKET: Duration = Duration::from_micros(
    audiocodec::opus::FRAMES as u64 * 1_000_000 / audiocodec::opus::RATE as u64,
);

/// The interval when `--interval` is not given: for Opus from a file (`reads_ahead`), the
/// longest tick of whole 20 ms packets up to [`OPUS_FILE_INTERVAL`] whose least playout delay
/// (the tick + 5 ms) fits `latency` when one was given; for Opus from a live input
/// [`OPUS_LIVE_INTERVAL`]; for the other codecs [`DEFAULT_INTERVAL`].
pub fn default_interval(
    codec: AudioCodec,
    reads_ahead: bool,
    latency: Option<Duration>,
) -> Duration {
    match codec {
        AudioCodec::Opus { .. } if reads_ahead => {
            let most = OPUS_FILE_INTERVAL.as_millis() / OPUS_PACKET.as_millis();
            let fit = latency.map_or(most, |l| {
                let room = l.saturating_sub(crate::endpoint::min_playout_delay(Duration::ZERO));
                room.as_millis() / OPUS_PACKET.as_millis()
            });
            let packets = u32::try_from(fit.clamp(1, most)).unwrap_or(1);
            OPUS_PACKET * packets
        }
        AudioCodec::Opus { .. } => OPUS_LIVE_INTERVAL,
        _ => DEFAULT_INTERVAL,
    }
}

/// Default `--max-clients`: the original served 3; 32 is a classroom.
pub const DEFAULT_MAX_CLIENTS: usize = 32;

impl Config {
    /// The command line's defaults for `file` on `bind` (tests pass `127.0.0.1:0`).
    pub fn new(file: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        Self {
            file: file.into(),
            format: None,
            on_idle: OnIdle::Silence,
            capture: None,
            bind,
            interval: DEFAULT_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
            client_timeout: proto::limits::DEFAULT_CLIENT_TIMEOUT,
            playout_delay: proto::limits::DEFAULT_PLAYOUT_DELAY,
            start: StartMode::FirstClient,
            looping: false,
            mtu: proto::limits::DEFAULT_MTU,
            codec: AudioCodec::Pcm,
            log_file: None,
            rtp: RtpConfig::default(),
            fec: FecChoice::Default,
            retransmit: true,
            repair: RepairConfig::default(),
            relay_from: None,
            multicast: None,
            room_key: None,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }

    /// Resolves `--fec` and `--retransmit` for the stream `encoder` makes: a group of its
    /// datagrams (a PCM datagram's room, one FLAC frame, one 20 ms Opus packet) must fit the
    /// playout delay (the error names the value and the K that fit).
    pub fn resolve_repair(&self, encoder: &audiocodec::Encoder) -> Result<RepairConfig, String> {
        let fpp = u64::from(encoder.frames_per_packet());
        let rate = u64::from(encoder.stream_format().sample_rate.max(1));
        let packet = Duration::from_nanos(fpp * 1_000_000_000 / rate);
        let playout = self
            .playout_delay
            .max(crate::endpoint::min_playout_delay(self.interval));
        let fec = match self.fec {
            FecChoice::Default => repair::default_fec(packet, playout),
            FecChoice::Off => None,
            FecChoice::Groups(p) => {
                repair::check_fits(p, packet, playout)?;
                Some(p)
            }
        };
        Ok(RepairConfig {
            fec,
            retransmit: self.retransmit,
        })
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
        self.rtp.validate()?;
        if self.relay_from.is_some() && self.start == StartMode::FirstClient {
            return Err("--relay-from streams live: --start first-client cannot be used".into());
        }
        if let AudioCodec::Opus { bitrate } = self.codec
            && !audiocodec::OPUS_BITRATES.contains(&bitrate)
        {
            return Err(audiocodec::CodecError::OpusBitrate(bitrate).to_string());
        }
        if let Some(m) = &self.multicast {
            if !m.group.ip().is_multicast() {
                return Err(format!(
                    "--multicast {}: {} is not a multicast address",
                    m.group,
                    m.group.ip()
                ));
            }
            if m.ttl == 0 {
                return Err("--ttl 0 is outside 1..=255".into());
            }
            if m.group.is_ipv4() && self.bind.is_ipv6() {
                return Err(format!(
                    "--multicast {} is IPv4 but --bind {} is IPv6",
                    m.group,
                    self.bind.ip()
                ));
            }
        }
        if self.room_key.is_some() && self.multicast.is_some() {
            return Err(
                "--multicast with --key-file: a private room is served by unicast only".into(),
            );
        }
        if self.room_key.is_some() && !self.rtp.dests.is_empty() {
            return Err(
                "--rtp sends the audio in the clear: it cannot serve a private room (--key-file)"
                    .into(),
            );
        }
        if self.rekey_interval < MIN_REKEY_INTERVAL {
            return Err(format!(
                "--rekey-interval {:?} is shorter than {MIN_REKEY_INTERVAL:?}",
                self.rekey_interval
            ));
        }
        if matches!(self.codec, AudioCodec::Flac) && !self.rtp.dests.is_empty() {
            return Err(format!(
                "--rtp sends L16 PCM or Opus, so it needs --codec pcm or opus, not {}",
                audiocodec::codec_label(self.codec)
            ));
        }
        Ok(())
    }

    /// What the endpoint needs of this configuration, with a fresh random cookie key.
    pub fn endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            interval: self.interval,
            max_clients: self.max_clients,
            client_timeout: self.client_timeout,
            start: self.start,
            looping: self.looping,
            mtu: self.mtu,
            cookie_key: Sessions::random_key(),
            playout_delay: self.playout_delay,
            repair: self.repair,
        }
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
    /// The capture device cannot record.
    #[error("cannot record: {0}")]
    Capture(#[from] crate::capture::CaptureError),
    /// The socket cannot be bound.
    #[error("cannot bind {addr}: {}", bind_reason(.source))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The RTP output cannot be set up (a socket, the `--sdp` file).
    #[error("cannot start the RTP output: {0}")]
    Rtp(String),
    /// `--relay-from`: the upstream cannot be joined.
    #[error("cannot relay: {0}")]
    Upstream(#[from] crate::relay::RelayError),
    /// `--multicast`: the group's socket cannot be set up.
    #[error("cannot send to --multicast {group}: {source}")]
    Multicast {
        /// The group asked for.
        group: SocketAddr,
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
    /// Time the media clock gave up to stalls longer than [`crate::pacing::MAX_CATCH_UP`].
    pub slipped: Duration,
    /// A second stop request cut the shutdown short: not every copy of `End` went out.
    pub aborted: bool,
    /// A live input's underrun, overrun and idle counters.
    pub live: Option<LiveStats>,
    /// A relay's upstream hop (`--relay-from`): what it received, lost and concealed.
    pub upstream: Option<crate::relay::UpstreamStats>,
    /// `--multicast`: what was sent to the group (not part of `sent`).
    pub multicast: Option<FanoutStats>,
}

/// A bound server with its file open, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    /// The configuration it was started with.
    config: Config,
    /// The bound socket.
    socket: UdpSocket,
    /// The actual bound address (the port is real even for `--port 0`).
    local_addr: SocketAddr,
    /// The open file or live input.
    source: Input,
    /// The RTP output, when `--rtp` was given.
    rtp: Option<RtpOutput>,
    /// The control plane's end, when `--http` is on.
    control: Option<crate::control::ShellLink>,
    /// `--multicast`: the socket that sends to the group.
    group: Option<GroupSender>,
}

impl Server {
    /// Validates `config`, opens and probes the file, and binds the socket: every error a user
    /// can fix shows here, before anything is streamed.
    pub async fn bind(mut config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let source = match (&config.relay_from, &config.capture) {
            (Some(up), _) => Input::Relay(crate::relay::connect(up).await?),
            (None, Some(device)) => {
                Input::Live(crate::capture::open(device.as_deref(), config.on_idle)?)
            }
            (None, None) => Input::open(
                &config.file,
                InputOptions {
                    format: config.format,
                    on_idle: config.on_idle,
                },
            )?,
        };
        // The codec must carry the source (Opus: mono or stereo): refused here, in one line.
        // Sized like the endpoint's own (less the sealed envelope in a private room), so the
        // default FEC group is chosen for the datagrams the stream really sends.
        let si = source.info();
        let encoder = audiocodec::Encoder::new(
            config.codec,
            audiocodec::Format {
                sample_rate: si.sample_rate,
                channels: si.channels,
            },
            crate::endpoint::audio_payload_room(config.mtu, config.room_key.is_some()),
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        config.repair = config
            .resolve_repair(&encoder)
            .map_err(StartError::Config)?;
        if config.looping && source.is_live() {
            return Err(StartError::Config(format!(
                "--loop needs a file; {} is a live input",
                config.file.display()
            )));
        }
        let socket = bind_socket(config.bind).map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let rtp = open_rtp(&config, source.info()).map_err(StartError::Rtp)?;
        let group = config
            .multicast
            .map(|m| {
                GroupSender::open(m.group, config.bind.ip(), m.ttl).map_err(|source| {
                    StartError::Multicast {
                        group: m.group,
                        source,
                    }
                })
            })
            .transpose()?;
        Ok(Server {
            config,
            socket,
            local_addr,
            source,
            rtp,
            control: None,
            group,
        })
    }

    /// Attaches the control plane (`--http`): the run publishes snapshots to it and applies
    /// its commands ([`crate::control`]).
    pub fn set_control(&mut self, link: crate::control::ShellLink) {
        self.control = Some(link);
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

    /// The RTP output's description (what `--sdp` writes), when `--rtp` was given.
    pub fn rtp_sdp(&self) -> Option<&str> {
        self.rtp.as_ref().map(RtpOutput::sdp)
    }

    /// Streams until the end of the file (unless `--loop`) or until `shutdown` completes, then
    /// sends `End` to every listener ([`proto::limits::END_REPEAT`] times,
    /// [`proto::limits::END_SPACING`] apart), answering `Reject{ShuttingDown}` meanwhile, and
    /// returns what happened.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
        let once = futures::stream::once(shutdown).chain(futures::stream::pending());
        self.run_until(Box::pin(once)).await
    }

    /// [`Server::run`] driven by a stream of stop requests: the first ends the stream
    /// gracefully; a second one while `End` is still being repeated returns at once, with
    /// [`Summary::aborted`] set (a second Ctrl-C).
    pub async fn run_until(self, stop: impl Stream<Item = ()> + Unpin) -> anyhow::Result<Summary> {
        let now = Instant::now();
        let mut fanout = Fanout::new();
        fanout.detect(&self.socket);
        let relay_ready = match &self.source {
            Input::Relay(r) => Some(r.ready_notify()),
            _ => None,
        };
        let mut endpoint = Endpoint::new(now, self.config.endpoint(), self.source);
        endpoint.set_clock_base(realtime_us());
        endpoint
            .set_codec(self.config.codec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(key) = self.config.room_key {
            endpoint
                .set_room_key(now, key, self.config.rekey_interval)
                .map_err(|e| anyhow::anyhow!("cannot make the stream key: {e}"))?;
        }
        // RTP is fed from the tick's Audio datagrams, with or without native listeners.
        endpoint.set_emit_always(self.rtp.is_some());
        if let Some(g) = &self.group {
            endpoint.set_multicast(g.group());
        }
        let mut shell = Shell {
            config: self.config,
            socket: self.socket,
            local_addr: self.local_addr,
            endpoint,
            fanout,
            recv_errors: 0,
            ignored_period: IgnoredCounts::default(),
            handshake_logged: 0,
            handshake_unlogged: 0,
            rtp: self.rtp,
            control: self.control,
            group: self.group,
            relay_ready,
        };
        shell.log_start();
        let least = crate::endpoint::min_playout_delay(shell.config.interval);
        if shell.config.playout_delay < least {
            tracing::warn!(
                "--latency {:?} is shorter than a {:?} interval allows: the room plays each \
                 frame {least:?} after it is due (the Welcome says so)",
                shell.config.playout_delay,
                shell.config.interval
            );
        }
        tracing::info!("loss repair: {}", shell.config.repair);
        if shell.config.room_key.is_some() {
            tracing::info!(
                "private room: joins must prove the room key (--key-file); the stream key rotates every {:?}",
                shell.config.rekey_interval
            );
        }
        shell.log_rtp_start();
        let aborted = shell.main_loop(stop).await;
        shell.finish_rtp();
        shell.log_summary();
        Ok(shell.summary(aborted))
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

/// The next control-plane command; pending forever without `--http`.
async fn control_command(
    control: &mut Option<crate::control::ShellLink>,
) -> crate::control::Command {
    match control {
        Some(c) => c.next_command().await,
        None => std::future::pending().await,
    }
}

/// Counters of ignored datagrams by kind, for the periodic line.
#[derive(Debug, Default, Clone, Copy)]
struct IgnoredCounts {
    malformed: u64,
    wrong_version: u64,
    short_connect: u64,
    unexpected: u64,
    not_joined: u64,
    bad_token: u64,
    forged: u64,
}

impl IgnoredCounts {
    fn add(&mut self, why: Ignored) {
        match why {
            Ignored::Malformed => self.malformed += 1,
            Ignored::WrongVersion => self.wrong_version += 1,
            Ignored::ShortConnect => self.short_connect += 1,
            Ignored::Unexpected => self.unexpected += 1,
            Ignored::NotJoined => self.not_joined += 1,
            Ignored::BadToken => self.bad_token += 1,
            Ignored::Forged => self.forged += 1,
        }
    }

    fn total(&self) -> u64 {
        self.malformed
            + self.wrong_version
            + self.short_connect
            + self.unexpected
            + self.not_joined
            + self.bad_token
            + self.forged
    }
}

/// The shell of one run: the socket, the endpoint, the fan-out and the log's counters.
struct Shell {
    config: Config,
    socket: UdpSocket,
    /// For the start line.
    local_addr: SocketAddr,
    endpoint: Endpoint<Input>,
    /// The send path and its counters.
    fanout: Fanout,
    /// Receive errors survived, for the summary.
    recv_errors: u64,
    /// Ignored datagrams by kind since the last summary line (totals are in the endpoint).
    ignored_period: IgnoredCounts,
    /// Handshake lines logged this summary period (capped at HANDSHAKE_LOG_BURST), and the
    /// ones only counted.
    handshake_logged: u64,
    handshake_unlogged: u64,
    /// The RTP output (see the RTP section at the end of this file).
    rtp: Option<RtpOutput>,
    /// The control plane (`--http`), if on.
    control: Option<crate::control::ShellLink>,
    /// `--multicast`: the group's socket.
    group: Option<GroupSender>,
    /// A relay's "upstream audio is ready": the loop ticks at once to forward it.
    relay_ready: Option<Arc<tokio::sync::Notify>>,
}

/// Waits for a relay's upstream audio; pending forever when the input is not a relay.
async fn relay_ready(ready: Option<&tokio::sync::Notify>) {
    match ready {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

impl Shell {
    fn log_start(&self) {
        let si = self.endpoint.source().info();
        let duration = si
            .duration()
            .map(|d| format!("{:.3}s", d.as_secs_f64()))
            .unwrap_or_else(|| "unknown".into());
        tracing::info!(
            "on {}: streaming {} ({}, {} Hz, {} ch, {}) every {:?} (playout delay {:?}) as {} in datagrams of <= {} bytes ({} frames), \
             max {} listeners, client timeout {:?}, start {}, loop {}, fan-out by {}",
            self.local_addr,
            self.config.file.display(),
            si.codec,
            si.sample_rate,
            si.channels,
            duration,
            self.config.interval,
            Duration::from_micros(u64::from(self.endpoint.stream_info().playout_delay_us)),
            audiocodec::codec_label(self.endpoint.codec()),
            self.config.mtu,
            self.endpoint.frames_per_packet(),
            self.config.max_clients,
            self.config.client_timeout,
            match self.config.start {
                StartMode::FirstClient => "at first listener",
                StartMode::Now => "now",
            },
            self.config.looping,
            self.fanout.path().name(),
        );
        if let (Some(g), Some(m)) = (&self.group, &self.config.multicast) {
            tracing::info!(
                "multicast: each tick goes once to {} (ttl {}); listeners that receive it get no unicast audio",
                g.group(),
                m.ttl
            );
        }
    }

    /// Runs the endpoint until it closes; true if a second stop request cut it short.
    async fn main_loop(&mut self, mut stop: impl Stream<Item = ()> + Unpin) -> bool {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut stops = 0u32;
        let summary = tokio::time::sleep(SUMMARY_PERIOD);
        tokio::pin!(summary);
        // One timer, moved to the endpoint's deadline when it changes (not re-created per
        // datagram: a flood would otherwise churn the timer wheel).
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let ready = self.relay_ready.clone();
        loop {
            self.flush();
            if self.endpoint.is_closed() {
                return false;
            }
            let deadline = self.endpoint.poll_timeout();
            if deadline != armed {
                armed = deadline;
                let at = deadline.map_or_else(far, tokio::time::Instant::from_std);
                timer.as_mut().reset(at);
            }
            // Biased, in this order: stop requests, then the endpoint's timer (audio is never
            // late because of incoming traffic, and evictions still happen under a flood), then
            // the summary line, then one received datagram. The timers are ready only now and
            // then, so the receive side is not starved either.
            tokio::select! {
                biased;
                r = stop.next(), if stops < 2 => {
                    if r.is_none() {
                        // The requests' source is gone: no more can come.
                        stops = 2;
                        continue;
                    }
                    stops += 1;
                    if stops >= 2 && !self.endpoint.is_closed() {
                        tracing::warn!("interrupted again: exiting without finishing");
                        return true;
                    }
                    tracing::info!(
                        "shutting down: sending End to every listener (Ctrl-C again to exit at once)"
                    );
                    self.endpoint.shutdown(Instant::now());
                }
                () = &mut timer, if armed.is_some() => {
                    let now = Instant::now();
                    if let (Some(c), Some(due)) = (self.control.as_mut(), armed) {
                        c.observe_tick(due, now);
                    }
                    armed = None;
                    self.endpoint.handle_timeout(now);
                }
                // A relay forwards upstream audio as it arrives, off the tick grid.
                () = relay_ready(ready.as_deref()) => {
                    self.endpoint.tick_now(Instant::now());
                }
                // The control plane's commands (kick, capacity), applied between two sends.
                cmd = control_command(&mut self.control) => {
                    if let Some(c) = self.control.as_mut() {
                        c.apply(Instant::now(), &mut self.endpoint, cmd);
                    }
                }
                () = &mut summary => {
                    summary.as_mut().reset(tokio::time::Instant::now() + SUMMARY_PERIOD);
                    self.log_summary();
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        self.endpoint.handle(now, from, &buf[..n]);
                    }
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

    /// Sends everything the endpoint has to send, then logs what it did.
    fn flush(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.endpoint.poll_transmit(now) {
            match t {
                Transmit::One { dest, datagram } => {
                    self.fanout.send_one(&self.socket, &datagram, dest);
                }
                // The tick to the group (`--multicast`): once, from the group's socket.
                Transmit::Fanout { datagrams, dests }
                    if let Some(g) = self.group.as_mut()
                        && dests == [g.group()] =>
                {
                    g.send(datagrams);
                }
                Transmit::Fanout { datagrams, dests } => {
                    if !dests.is_empty() {
                        self.fanout.send(&self.socket, datagrams, dests);
                    }
                    if let Some(rtp) = &mut self.rtp {
                        rtp.tick(now, datagrams);
                    }
                }
            }
        }
        self.poll_rtp(now);
        while let Some(e) = self.endpoint.poll_event() {
            self.log_event(e);
        }
        // The mDNS announcement's live count (a no-op when not announced).
        crate::announce::set_listeners(self.local_addr, self.endpoint.sessions().len());
        if let Some(c) = self.control.as_mut() {
            c.maybe_publish(now, &self.endpoint, self.fanout.stats());
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

    fn log_event(&mut self, e: Event) {
        let listeners = self.endpoint.sessions().len();
        let file = self.config.file.display();
        match e {
            Event::Datagram { from, event } => self.log_datagram(from, event),
            Event::Started => tracing::info!("streaming started"),
            Event::Evicted { addr } => tracing::info!(
                "evicted {addr}: silent for more than {:?} ({listeners} listeners)",
                self.config.client_timeout,
            ),
            Event::Looped { loops } => {
                tracing::debug!(loops, "looping to the start of the file");
            }
            Event::LoopStopped(why) => tracing::error!("{why}; stopping the loop"),
            Event::Rekeyed { key_id } => tracing::debug!("audio sealed under stream key {key_id}"),
            Event::RekeyFailed(why) => {
                tracing::error!("no new stream key ({why}); keeping the current one");
            }
            Event::EncodeFailed(e) => tracing::error!("{e}; that audio is lost"),
            Event::Corrupt { total } => {
                tracing::warn!("{file}: skipped {total} corrupt packet(s) so far");
            }
            Event::LengthMismatch { announced, sent } => tracing::warn!(
                "{file}: the stream was announced as {announced} frames but {sent} were sent \
                 (file truncated or changed while streaming?)"
            ),
            Event::Ending {
                reason,
                seq,
                listeners,
            } => tracing::info!(
                "stream ended ({reason:?}) at seq {seq}; sending End to {listeners} listener(s)"
            ),
            Event::PathChanged { addr, path } => match path {
                crate::multicast::Path::Group => {
                    tracing::info!("{addr} receives the group: no unicast audio");
                }
                _ => tracing::info!("{addr} does not receive the group: unicast audio"),
            },
        }
    }

    fn log_datagram(&mut self, from: SocketAddr, event: sessions::Event) {
        use sessions::Event as E;
        match event {
            E::Challenged => self.log_handshake(format_args!("connect from {from}")),
            E::BadCookie => self.log_handshake(format_args!(
                "join from {from} with an invalid or expired cookie; challenged again"
            )),
            E::Accepted { start, name } => tracing::info!(
                "accepted {from} \"{name}\" at seq {} ts {} ({} of {} listeners)",
                start.seq,
                start.ts,
                self.endpoint.sessions().len(),
                self.config.max_clients
            ),
            // A validated host can replay its own Join as fast as it likes for the cookie's
            // lifetime: these lines share the handshake budget, so it cannot flood the log.
            E::Rejoined => {
                self.log_handshake(format_args!("{from} joined again; welcomed again"));
            }
            E::Rejected(proto::RejectReason::BadKey) => {
                self.log_handshake(format_args!(
                    "rejected {from}: BadKey, its Join did not prove the room key"
                ));
            }
            E::Rejected(reason) => {
                self.log_handshake(format_args!("rejected {from}: {reason:?}"));
            }
            E::Report(r) => tracing::debug!(
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
            E::Left { reason, name } => tracing::info!(
                "{from} \"{name}\" left: {} ({} listeners)",
                reason.name(),
                self.endpoint.sessions().len()
            ),
            E::Nack(_) | E::TimeAnswered => {}
            E::Ignored(why) => self.ignored_period.add(why),
        }
    }

    fn log_summary(&mut self) {
        let f = self.fanout.stats();
        let ig = self.ignored_period;
        tracing::info!(
            "summary: {} listeners, sent {} datagrams / {} bytes ({} dropped) in {} calls by {}, audio seq {}, \
             ignored {} since the last summary (malformed {}, wrong version {}, short connect {}, \
             unexpected {}, not joined {}, bad token {}, forged {}), {} handshakes not logged",
            self.endpoint.sessions().len(),
            f.datagrams,
            f.bytes,
            f.dropped(),
            f.syscalls,
            self.fanout.path().name(),
            self.endpoint.live().seq,
            ig.total(),
            ig.malformed,
            ig.wrong_version,
            ig.short_connect,
            ig.unexpected,
            ig.not_joined,
            ig.bad_token,
            ig.forged,
            self.handshake_unlogged,
        );
        self.log_rtp("rtp");
        let sessions = self.endpoint.sessions();
        let synced = sessions
            .addrs()
            .iter()
            .map(|a| (sessions.features(a).unwrap_or(0), sessions.last_report(a)));
        if let Some(room) = crate::roomsync::RoomSync::of(synced) {
            tracing::info!("room sync: {room}");
        }
        if let (Some(g), Some(m)) = (&self.group, self.endpoint.multicast_members()) {
            let st = g.stats();
            tracing::info!(
                "multicast {}: sent {} datagrams / {} bytes ({} dropped); {} listener(s) on the group only, {} able to receive it",
                g.group(),
                st.datagrams,
                st.bytes,
                st.dropped(),
                m.on_group(),
                m.len()
            );
        }
        if let Some(l) = self.endpoint.source().live_stats() {
            tracing::info!("live input: {}", live_line(&l));
        }
        if let Input::Relay(r) = self.endpoint.source() {
            tracing::info!("upstream {}: {}", r.upstream(), r.stats());
        }
        self.ignored_period = IgnoredCounts::default();
        self.handshake_logged = 0;
        self.handshake_unlogged = 0;
    }

    fn summary(&self, aborted: bool) -> Summary {
        let st = self.endpoint.stats();
        Summary {
            end_reason: self.endpoint.end_reason().unwrap_or(EndReason::Shutdown),
            audio_datagrams: st.audio_datagrams,
            frames: st.frames,
            sent: self.fanout.stats(),
            listeners_served: st.sessions.accepted,
            peak_listeners: st.peak_listeners,
            rejected: st.sessions.rejected,
            evicted: st.sessions.evicted,
            left: st.sessions.left,
            ignored: st.sessions.ignored,
            recv_errors: self.recv_errors,
            corrupt_packets: st.corrupt_packets,
            slipped: st.slipped,
            aborted,
            live: st.live,
            upstream: match self.endpoint.source() {
                Input::Relay(r) => Some(r.stats()),
                _ => None,
            },
            multicast: self.group.as_ref().map(GroupSender::stats),
        }
    }
}

/// A live input's counters in words, for the summary lines.
pub fn live_line(l: &LiveStats) -> String {
    format!(
        "{} underrun(s) filled with {} frames of silence, {} frames dropped on overrun, \
         {} idle period(s) ({} frames of silence)",
        l.underruns, l.underrun_frames, l.overrun_frames, l.idle_periods, l.idle_frames
    )
}

// ---- RTP output (`--rtp`, `--sdp`, `--sap`): fed from the endpoint's tick datagrams in
// `Shell::flush`; the protocol work is in `crate::rtp`, the sockets in `crate::rtp::output`.

/// Opens the RTP output `config` asks for (none without `--rtp`).
fn open_rtp(config: &Config, info: &SourceInfo) -> Result<Option<RtpOutput>, String> {
    if !config.rtp.is_enabled() {
        return Ok(None);
    }
    let params = match config.codec {
        AudioCodec::Opus { bitrate } => RtpParams::random_opus(info.channels, bitrate),
        _ => RtpParams::random(info.sample_rate, info.channels, config.mtu),
    };
    RtpOutput::open(&config.rtp, &info.title, params, Instant::now()).map(Some)
}

impl Shell {
    /// Sends what the RTP output has due besides audio (RTCP reports, SAP announcements); the
    /// shell wakes at least every [`HOUSEKEEPING`] while streaming, often enough for both.
    fn poll_rtp(&mut self, now: Instant) {
        if let Some(rtp) = &mut self.rtp {
            rtp.poll(now, SystemTime::now());
        }
    }

    /// The end of the RTP stream: the RTCP BYE and the SAP deletions, then the final counts.
    fn finish_rtp(&mut self) {
        if let Some(rtp) = &mut self.rtp {
            rtp.finish(Instant::now(), SystemTime::now());
            let p = *rtp.params();
            tracing::info!(
                "rtp: BYE sent (SSRC {:#010x}, payload type {})",
                p.ssrc,
                p.payload_type
            );
        }
    }

    fn log_rtp_start(&self) {
        if let Some(rtp) = &self.rtp {
            let p = rtp.params();
            let dests: Vec<String> = rtp.dests().map(|d| d.to_string()).collect();
            tracing::info!(
                "rtp: sending {} (payload type {}, SSRC {:#010x}, <= {} frames a packet) to {}{}{}",
                p.rtpmap(),
                p.payload_type,
                p.ssrc,
                p.frames_per_packet,
                dests.join(", "),
                self.config
                    .rtp
                    .sdp
                    .as_ref()
                    .map(|s| format!("; SDP written to {}", s.display()))
                    .unwrap_or_default(),
                if self.config.rtp.sap {
                    "; announced by SAP"
                } else {
                    ""
                },
            );
        }
    }

    fn log_rtp(&self, what: &str) {
        if let Some(rtp) = &self.rtp {
            let st = rtp.stats();
            tracing::info!(
                "{what}: sent {} packets / {} bytes, {} refused, {} failed, {} RTCP, {} SAP",
                st.packets,
                st.bytes,
                st.refused,
                st.failed,
                st.rtcp,
                st.sap
            );
        }
    }
}

/// The machine's real-time clock in µs since the Unix epoch (0 if it is set before 1970).
fn realtime_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_opus_file_ticks_with_as_many_packets_as_the_latency_leaves_room_for() {
        let opus = AudioCodec::Opus { bitrate: 128_000 };
        for (latency, tick) in [
            (None, 100),
            (Some(500), 100),
            (Some(105), 100),
            (Some(104), 80),
            (Some(100), 80),
            (Some(65), 60),
            (Some(50), 40),
            (Some(44), 20),
            (Some(10), 20),
        ] {
            assert_eq!(
                default_interval(opus, true, latency.map(ms)),
                ms(tick),
                "--latency {latency:?}"
            );
        }
        // A live input cannot be read ahead; the other codecs keep the common tick.
        assert_eq!(default_interval(opus, false, None), OPUS_LIVE_INTERVAL);
        assert_eq!(
            default_interval(opus, false, Some(ms(500))),
            OPUS_LIVE_INTERVAL
        );
        assert_eq!(
            default_interval(AudioCodec::Pcm, true, Some(ms(500))),
            DEFAULT_INTERVAL
        );
    }
}
