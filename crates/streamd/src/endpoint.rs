//! The whole server as one sans-IO state machine: [`Endpoint`] decides everything streamd does
//! per datagram and per tick, and the tokio shell ([`crate::server`]) only moves bytes between it,
//! one UDP socket, one timer and the fan-out.
//!
//! It owns the listener table ([`Sessions`]), the media clock ([`MediaClock`]) and an
//! [`AudioSource`] (the decoded file, a live input of [`crate::live`], or synthetic PCM in a
//! test), and decides: when a tick is
//! due and how its frames are encoded ([`audiocodec::Encoder`]: PCM, FLAC or Opus) and cut into
//! `Audio` datagrams (encoded once, as `Bytes`, for every listener); when streaming starts (`--start`); looping; evictions; the `End` of the stream,
//! its three copies 50 ms apart (at end of file, at shutdown, at eviction); the replies to
//! control datagrams, including `Reject{ShuttingDown}` for as long as it is ending; and when it
//! is done.
//!
//! # The drive loop
//!
//! Time is `std::time::Instant`, always passed in; nothing here reads a clock or touches a
//! socket, so the same loop runs on real time (the shell) or simulated time (a test, or a
//! simulated room of listeners):
//!
//! ```text
//! let mut ep = Endpoint::new(now, config, source);
//! loop {
//!     while let Some(t) = ep.poll_transmit(now) { send t }   // after EVERY call below
//!     while let Some(e) = ep.poll_event() { log e }
//!     if ep.is_closed() { break }                             // the last End went out
//!     wait until ep.poll_timeout(), a datagram, or a stop request; then one of:
//!         ep.handle(now, from, &datagram)                     // a datagram arrived
//!         ep.handle_timeout(now)                              // the deadline passed
//!         ep.shutdown(now)                                    // Ctrl-C / SIGTERM
//! }
//! ```
//!
//! Drain [`Endpoint::poll_transmit`] after every `handle*`/`shutdown` call, before feeding the
//! next input: a tick's datagrams go to the listeners joined when the tick was cut, and a reply
//! answers the datagram just handled. Calling `handle_timeout` early or late is harmless: the
//! media clock, not the timer, decides how much audio is due (a late tick catches up, see
//! [`crate::pacing`]), and the tick grid does not drift.
//!
//! # Ending
//!
//! At the end of the file (unless looping) or on [`Endpoint::shutdown`], the endpoint stops
//! ticking and accepting, sends every listener `End` (copy 1 at once, then [`END_REPEAT`] − 1
//! more, [`END_SPACING`] apart; each listener's `last_seq` per [`crate::sessions::end_after`]),
//! and keeps answering: a valid `Join` gets `Reject{ShuttingDown}`, a `Connect` its `Challenge`.
//! It is [closed](Endpoint::is_closed) once the last copy of every `End` (eviction `End`s
//! included) has been handed out.
//!
//! # Private rooms
//!
//! With [`Endpoint::set_room_key`] (docs/PROTOCOL.md §4.12) each tick's `Audio` and `Parity`
//! (and every `Resent`) is sealed once under the current stream key and the same bytes go to
//! every listener; what goes to one listener (`End`, `Error`, `TimeResponse`, `Rekey`) is
//! sealed under its session key. Audio datagrams leave [`seal::wire::SEALED_OVERHEAD`] bytes
//! of the MTU for the envelope. The stream key rotates by [`seal::Rotation`]: `Rekey` to every
//! listener three times across the lead, then the switch.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use audiocodec::{AudioCodec, CodecError, EncodeError, Encoder, Format};
use bytes::{Bytes, BytesMut};
use proto::limits::{AUDIO_OVERHEAD, END_REPEAT, END_SPACING, MAX_PAYLOAD, MAX_TITLE};
use proto::{EndReason, Message, Packet, Repair, StreamInfo, Timeline};

use seal::wire::SEALED_OVERHEAD;
use seal::{RoomKey, Rotation, RotationStep, SealError, StreamKey};

use crate::pacing::{self, MediaClock};
use crate::sessions::{self, LivePosition, Sessions};
use crate::source::{Source, SourceInfo};

/// Bytes of payload an Audio datagram of at most `mtu` bytes holds: what PCM fills and what
/// the other codecs are sized for.
fn payload_room(mtu: usize) -> usize {
    mtu.saturating_sub(AUDIO_OVERHEAD).min(MAX_PAYLOAD)
}

/// Bytes of payload an Audio datagram of at most `mtu` bytes holds in a stream: the MTU less
/// the Audio header, and in a private room (`keyed`) less the sealed envelope too.
pub(crate) fn audio_payload_room(mtu: usize, keyed: bool) -> usize {
    let envelope = if keyed { SEALED_OVERHEAD } else { 0 };
    payload_room(mtu.saturating_sub(envelope))
}

/// How often silent listeners are looked for: a tenth of a second keeps eviction within
/// 100 ms of `--client-timeout` at negligible cost.
pub const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// Listeners whose eviction `End` is being repeated at once; beyond this an evicted listener
/// gets one copy, so a mass eviction cannot queue unbounded work.
pub const MAX_PENDING_ENDS: usize = 256;

/// When streaming starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// When the first listener joins: nobody misses the beginning.
    #[default]
    FirstClient,
    /// At once, like a radio station: listeners join live.
    Now,
}

/// What the endpoint needs to know from the command line (the socket-side options stay in
/// [`crate::server::Config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The tick: each tick sends the audio that became due.
    pub interval: Duration,
    /// Listeners beyond this get `Reject{Full}`.
    pub max_clients: usize,
    /// A listener silent this long is evicted.
    pub client_timeout: Duration,
    /// First listener or now.
    pub start: StartMode,
    /// Repeat the source forever.
    pub looping: bool,
    /// Largest datagram sent, in bytes: sizes the Audio datagrams.
    pub mtu: usize,
    /// Keys of the cookie hash: random in the server ([`Sessions::random_key`]), fixed in tests.
    pub cookie_key: (u64, u64),
    /// The room's playout delay every Welcome states (raised to the interval's minimum).
    pub playout_delay: Duration,
    /// Loss repair offered to listeners (off by default here; `streamd` picks its own).
    pub repair: RepairConfig,
}

/// The loss repair a server offers: parity groups, and resends from the last
/// [`RETRANSMIT_HISTORY`] of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairConfig {
    /// K audio datagrams per group with M parity shards, sent after each group.
    pub fec: Option<repair::FecParams>,
    /// Answer listeners' Nacks with `Resent`, within each one's budget of the stream's rate.
    pub retransmit: bool,
}

impl std::fmt::Display for RepairConfig {
    /// `FEC 6,1, retransmission on`: what the start-up log says the Welcome offers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fec {
            Some(p) => write!(f, "FEC {},{}", p.k(), p.m())?,
            None => write!(f, "FEC off")?,
        }
        let on = if self.retransmit { "on" } else { "off" };
        write!(f, ", retransmission {on}")
    }
}

/// How far back Nacks are answered: past any playout delay a listener can use.
pub const RETRANSMIT_HISTORY: Duration = repair::retransmit::DEFAULT_HISTORY;

impl Default for EndpointConfig {
    /// streamd's defaults: 20 ms ticks, 64 listeners, 5 s client timeout, start with the
    /// first listener, 1400-byte datagrams, a 50 ms room delay, a fixed cookie key (the
    /// server passes a random one).
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(20),
            max_clients: 64,
            client_timeout: proto::limits::DEFAULT_CLIENT_TIMEOUT,
            start: StartMode::FirstClient,
            looping: false,
            mtu: proto::limits::DEFAULT_MTU,
            cookie_key: (0, 0),
            playout_delay: proto::limits::DEFAULT_PLAYOUT_DELAY,
            repair: RepairConfig::default(),
        }
    }
}

/// The least playout delay a server ticking every `interval` can promise: a frame's datagram
/// leaves up to one interval after the frame became due, and the network needs a little more.
pub fn min_playout_delay(interval: Duration) -> Duration {
    interval + Duration::from_millis(5)
}

/// Where the audio comes from: "give me the next N frames". The server's is the decoded file
/// ([`Source`]); a test or a simulation feeds synthetic PCM without a file.
pub trait AudioSource {
    /// Rate, channels, length and title: what every `Welcome` says.
    fn info(&self) -> &SourceInfo;
    /// Appends up to `max_frames` interleaved s16 frames to `out`; returns how many. Fewer than
    /// asked only at the end; 0 means the source is finished.
    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize;
    /// True once every frame has been handed out.
    fn is_finished(&self) -> bool;
    /// Starts again from the first frame, for `--loop`. An error (the text names the file and
    /// the reason) stops the loop; the stream then ends at the end of this pass.
    fn rewind(&mut self) -> Result<(), String>;
    /// Damaged packets skipped in the current pass, for the log.
    fn corrupt_packets(&self) -> u64 {
        0
    }
    /// The time of the tick about to read: a live source decides pauses on it.
    fn begin_tick(&mut self, _now: Instant) {}
    /// True when the last read stopped short because a live source is paused, not finished:
    /// the tick sends what it got and the media clock forgets the rest.
    fn is_holding(&self) -> bool {
        false
    }
    /// Underrun, overrun and idle counters of a live source, for the log.
    fn live_stats(&self) -> Option<crate::live::LiveStats> {
        None
    }
    /// Why the stream ends once the source is finished: a relay passes on its upstream's
    /// reason; everything else ends at the end of its audio.
    fn end_reason(&self) -> EndReason {
        EndReason::Finished
    }
    /// For a source that delivers audio as it arrives (a relay), the frames it can hand out
    /// now, read after [`AudioSource::begin_tick`]: the tick sends exactly those, whatever the
    /// media clock says, and the clock then follows the source. `None` (the default): the
    /// media clock decides.
    fn ready_frames(&self) -> Option<u64> {
        None
    }
    /// True for a source whose audio exists before it is due (a file): with FLAC or Opus the
    /// server reads it ahead by what the encoder holds back ([`audiocodec::Encoder::lag`]) plus
    /// one interval, so each datagram has left by the time its first frame is due and a
    /// synchronised listener keeps the whole playout delay for repair. A live source cannot
    /// (the default): its timeline is put later instead ([`Endpoint::timeline`]).
    fn reads_ahead(&self) -> bool {
        false
    }
}

impl AudioSource for Source {
    fn info(&self) -> &SourceInfo {
        Source::info(self)
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        Source::read_frames(self, max_frames, out)
    }

    fn is_finished(&self) -> bool {
        Source::is_finished(self)
    }

    fn rewind(&mut self) -> Result<(), String> {
        let path = self.path().to_path_buf();
        let fresh = Source::open(&path).map_err(|e| format!("cannot reopen for --loop: {e}"))?;
        let (old, new) = (self.info(), fresh.info());
        if (old.sample_rate, old.channels) != (new.sample_rate, new.channels) {
            return Err(format!("{}: format changed on disk", path.display()));
        }
        *self = fresh;
        Ok(())
    }

    fn corrupt_packets(&self) -> u64 {
        Source::corrupt_packets(self)
    }

    fn reads_ahead(&self) -> bool {
        true
    }
}

/// What the shell should send now; see [`Endpoint::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// One datagram to one address: a reply to a control datagram, or an eviction `End`.
    One {
        /// Where to.
        dest: SocketAddr,
        /// The encoded datagram.
        datagram: Bytes,
    },
    /// The same datagrams, in this order, to every address in `dests`: a tick's `Audio`
    /// (encoded once), or the `End` of the stream. The fan-out's input.
    Fanout {
        /// Encoded datagrams.
        datagrams: &'a [Bytes],
        /// Every destination.
        dests: &'a [SocketAddr],
    },
}

/// Something the shell may want to log; see [`Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A datagram was handled (answered, counted or ignored): what the table did with it.
    Datagram {
        /// Its sender.
        from: SocketAddr,
        /// What happened.
        event: sessions::Event,
    },
    /// The media clock started: audio flows from now on.
    Started,
    /// A silent listener was evicted and sent `End{Evicted}`.
    Evicted {
        /// Its address.
        addr: SocketAddr,
    },
    /// The source started again from its first frame (`--loop`).
    Looped {
        /// Passes completed so far.
        loops: u64,
    },
    /// `--loop` could not go on (the message names the file and why); the stream ends at the
    /// end of this pass.
    LoopStopped(String),
    /// The codec failed on the audio of a tick (that audio is lost to every listener).
    EncodeFailed(EncodeError),
    /// More damaged packets were skipped in the source.
    Corrupt {
        /// Skipped so far, over every pass.
        total: u64,
    },
    /// The source ended with another length than the `Welcome` announced (a file truncated or
    /// changed while being streamed, or a container that misstates its length).
    LengthMismatch {
        /// `total_frames` of the `Welcome`.
        announced: u64,
        /// Frames actually streamed.
        sent: u64,
    },
    /// A private room's audio is sealed under a new stream key from now.
    Rekeyed {
        /// The new key's id.
        key_id: u32,
    },
    /// A private room could not make its next stream key (no randomness); the current one
    /// stays in use.
    RekeyFailed(String),
    /// The stream ended; `End` is being sent to every listener.
    Ending {
        /// Why.
        reason: EndReason,
        /// seq of the next Audio datagram that will now never be sent (= datagrams produced).
        seq: u64,
        /// Listeners told.
        listeners: usize,
    },
    /// A listener's Report changed how it gets the audio (`--multicast`).
    PathChanged {
        /// Its address.
        addr: SocketAddr,
        /// From the group only, or by unicast.
        path: crate::multicast::Path,
    },
}

/// A transmit waiting in a queue (owned), or handed out last (kept so the borrow can point at
/// it).
#[derive(Debug)]
enum Queued {
    One(SocketAddr, Bytes),
    Many(Vec<Bytes>, Vec<SocketAddr>),
}

/// The lifecycle of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first tick (`--start first-client` with nobody joined yet) or streaming.
    Running,
    /// End has been sent; the last copies are due by `until`.
    Ending { reason: EndReason, until: Instant },
    /// Nothing left to do.
    Closed { reason: EndReason },
}

/// The server's protocol state machine; see the module documentation for the drive loop.
#[derive(Debug)]
pub struct Endpoint<S> {
    config: EndpointConfig,
    source: S,
    /// Welcome template (start_seq/start_ts filled per join).
    info: StreamInfo,
    sessions: Sessions,
    clock: MediaClock,
    /// Source frames read (and PCM frames sent) per Audio datagram.
    fpp: usize,
    /// The stream's codec: each tick's frames are encoded once, for every listener.
    encoder: Encoder,
    /// seq of the next Audio datagram.
    next_seq: u64,
    phase: Phase,
    /// Tick grid: ticks fall on `tick_origin + k × interval`; `None` until started.
    tick_origin: Option<Instant>,
    next_tick: Option<Instant>,
    next_housekeeping: Instant,
    /// Transmits ready now, in order.
    queue: VecDeque<Queued>,
    /// Transmits due later (copies of `End`), by time then insertion order.
    scheduled: BTreeMap<(Instant, u64), Queued>,
    scheduled_count: u64,
    /// Scheduled eviction-End repeats (bounded by MAX_PENDING_ENDS).
    eviction_repeats: usize,
    /// The transmit handed out last (the returned borrow points into it).
    sending: Option<Queued>,
    /// Vectors of a past tick, reused so that a tick allocates nothing in the steady state.
    spare: Option<(Vec<Bytes>, Vec<SocketAddr>)>,
    events: VecDeque<Event>,
    /// Reused buffers: PCM samples, the datagram encoder's output.
    pcm: Vec<i16>,
    out: BytesMut,
    /// Reused by eviction.
    evicted: Vec<(SocketAddr, u64)>,
    peak_listeners: usize,
    /// Corrupt packets in earlier passes (--loop), and the total last reported.
    corrupt_seen: u64,
    corrupt_reported: u64,
    loops: u64,
    /// Hand out every tick's Audio even with no listener ([`Endpoint::set_emit_always`]).
    emit_always: bool,
    /// Parity and resends, when repair is on.
    repair: repair::Sender<SocketAddr>,
    /// Header seq of the next `Parity`: the server's own parity counter.
    parity_seq: u64,
    /// Reused for each Nack's answer.
    resends: Vec<repair::Resend>,
    /// `--multicast`: the group each tick also goes to, and how each listener is served.
    multicast: Option<(SocketAddr, crate::multicast::Members)>,
    /// A private room's stream keys over time; `None` in an open room.
    rotation: Option<Rotation>,
}

/// How long before a stream key is used its `Rekey` goes out (three copies across it): well
/// past a lost copy and a round trip, well inside the listener's overlap.
pub const REKEY_LEAD: Duration = Duration::from_secs(1);

/// `plain` (one encoded datagram) sealed under the stream key `key`; `None` only if it could
/// not be encoded (never for a datagram that fits).
fn seal_stream(key: &StreamKey, plain: &[u8]) -> Option<Bytes> {
    seal::wire::seal_datagram(plain, key.id(), |t, q, b, o| key.seal(t, q, b, o))
}

impl<S: AudioSource> Endpoint<S> {
    /// Sets the server clock's reading at the endpoint's creation (µs; see
    /// [`Sessions::set_clock_base`]): the clock of the clock exchange and the media timeline.
    pub fn set_clock_base(&mut self, base_us: u64) {
        self.sessions.set_clock_base(base_us);
    }

    /// A server for `source` as `config` says, at `now`: with `StartMode::Now` the stream
    /// starts here.
    pub fn new(now: Instant, config: EndpointConfig, source: S) -> Self {
        let si = source.info().clone();
        let fpp = pacing::frames_per_packet(config.mtu, si.bytes_per_frame());
        let mut title = si.title.clone();
        if title.len() > MAX_TITLE {
            let mut cut = MAX_TITLE;
            while !title.is_char_boundary(cut) {
                cut -= 1;
            }
            title.truncate(cut);
        }
        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let min_delay = min_playout_delay(config.interval);
        let info = StreamInfo {
            sample_rate: si.sample_rate,
            channels: si.channels,
            codec: AudioCodec::Pcm,
            interval_us: u32::try_from(config.interval.as_micros()).unwrap_or(u32::MAX),
            frames_per_packet: u32::try_from(fpp).unwrap_or(u32::MAX),
            total_frames: if config.looping {
                None
            } else {
                si.total_frames
            },
            start_seq: 0,
            start_ts: 0,
            timeline: Timeline::default(),
            playout_delay_us: us(config.playout_delay.max(min_delay)),
            min_delay_us: us(min_delay),
            repair: Repair {
                fec: config.repair.fec.map(|f| proto::Fec { k: f.k(), m: f.m() }),
                retransmit_ms: if config.repair.retransmit {
                    us(RETRANSMIT_HISTORY) / 1000
                } else {
                    0
                },
            },
            multicast: None,
            title,
        };
        let repair = repair::Sender::new(repair::SenderConfig {
            fec: config.repair.fec,
            retransmit: if config.repair.retransmit {
                RETRANSMIT_HISTORY
            } else {
                Duration::ZERO
            },
            // Resends never exceed the stream's own byte rate, datagram overhead included.
            byte_rate: u64::from(si.sample_rate) * si.bytes_per_frame() as u64
                + (u64::from(si.sample_rate) / fpp.max(1) as u64 + 1)
                    * proto::limits::AUDIO_OVERHEAD as u64,
        });
        let encoder = Encoder::pcm(
            Format {
                sample_rate: si.sample_rate,
                channels: si.channels,
            },
            payload_room(config.mtu),
        );
        let sessions = Sessions::new(
            now,
            config.cookie_key,
            config.max_clients,
            config.client_timeout,
        );
        let mut ep = Endpoint {
            clock: MediaClock::new(si.sample_rate, config.interval),
            source,
            info,
            sessions,
            fpp,
            encoder,
            next_seq: 0,
            phase: Phase::Running,
            tick_origin: None,
            next_tick: None,
            next_housekeeping: now + HOUSEKEEPING,
            queue: VecDeque::new(),
            scheduled: BTreeMap::new(),
            scheduled_count: 0,
            eviction_repeats: 0,
            sending: None,
            spare: None,
            events: VecDeque::new(),
            pcm: Vec::new(),
            out: BytesMut::new(),
            evicted: Vec::new(),
            peak_listeners: 0,
            corrupt_seen: 0,
            corrupt_reported: 0,
            loops: 0,
            emit_always: false,
            repair,
            parity_seq: 0,
            resends: Vec::new(),
            multicast: None,
            rotation: None,
            config,
        };
        if ep.config.start == StartMode::Now {
            ep.start(now);
        }
        ep
    }

    /// Sends the stream as `codec` (PCM until this is called): what every `Welcome` announces
    /// changes with it (Opus: 48 kHz, 960 frames per datagram). Call it before the first tick.
    /// Fails, changing nothing, when the codec cannot carry the source (Opus and 6 channels).
    pub fn set_codec(&mut self, codec: AudioCodec) -> Result<(), CodecError> {
        let si = self.source.info();
        let source = Format {
            sample_rate: si.sample_rate,
            channels: si.channels,
        };
        let encoder = Encoder::new(codec, source, self.payload_room())?;
        let stream = encoder.stream_format();
        self.info.codec = codec;
        self.info.sample_rate = stream.sample_rate;
        self.info.frames_per_packet = encoder.frames_per_packet();
        self.info.total_frames = match (self.config.looping, si.total_frames) {
            (false, Some(t)) => Some(encoder.stream_frames(t)),
            _ => None,
        };
        self.encoder = encoder;
        self.clock.set_lead(self.read_ahead());
        Ok(())
    }

    /// Source frames a file is read ahead of its media clock: nothing for PCM, which is cut
    /// as it becomes due; for a codec that gives out whole packets (FLAC, Opus), what the
    /// encoder holds back plus one interval, so every packet has left by the time its first
    /// frame is due, however many packets a tick carries. A live source: nothing.
    fn read_ahead(&self) -> u64 {
        let lag = self.encoder.lag();
        if !self.source.reads_ahead() || lag == 0 {
            return 0;
        }
        let rate = self.encoder.source_format().sample_rate;
        lag.saturating_add(pacing::frames_in(self.config.interval, rate))
    }

    /// Bytes of payload an Audio datagram holds ([`audio_payload_room`]).
    fn payload_room(&self) -> usize {
        audio_payload_room(self.config.mtu, self.rotation.is_some())
    }

    /// Makes this a private room from `now` (docs/PROTOCOL.md §4.12): joins must prove `room`,
    /// everything after the `Welcome` is sealed, and the stream key rotates every `rekey`
    /// (announced [`REKEY_LEAD`] ahead, at most half of it). Audio datagrams shrink by
    /// [`SEALED_OVERHEAD`] so the sealed ones keep to the MTU. Call it before the first tick
    /// (before or after [`Endpoint::set_codec`]). Fails only when the system has no randomness.
    pub fn set_room_key(
        &mut self,
        now: Instant,
        room: RoomKey,
        rekey: Duration,
    ) -> Result<(), SealError> {
        let rotation = Rotation::new(now, rekey, REKEY_LEAD)?;
        self.sessions.set_room_key(room, rotation.current().clone());
        self.rotation = Some(rotation);
        let bpf = self.source.info().bytes_per_frame();
        self.fpp = pacing::frames_per_packet(self.config.mtu.saturating_sub(SEALED_OVERHEAD), bpf);
        // The same codec, sized for the smaller payload.
        if self.set_codec(self.encoder.codec()).is_err() {
            // The codec already carried this source; only the size changed. PCM always fits.
            self.set_codec(AudioCodec::Pcm)
                .map_err(|e| SealError::Noise(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether this is a private room.
    pub fn is_keyed(&self) -> bool {
        self.rotation.is_some()
    }

    /// The id of the stream key audio is sealed under now (private rooms).
    pub fn stream_key_id(&self) -> Option<u32> {
        self.rotation.as_ref().map(|r| r.current().id())
    }

    /// The stream's codec.
    pub fn codec(&self) -> AudioCodec {
        self.encoder.codec()
    }

    /// With `on`, every tick's Audio datagrams are handed out as a `Transmit::Fanout` even when
    /// no listener is joined (its `dests` then empty): for an output beside the listeners (RTP)
    /// that the shell feeds from the same datagrams.
    pub fn set_emit_always(&mut self, on: bool) {
        self.emit_always = on;
    }

    /// Sends each tick's Audio and Parity once to `group` as well (`--multicast`), named in
    /// every `Welcome`: a listener that joined with `FEATURE_MULTICAST` gets unicast audio
    /// until its Report says the group arrives, then none, and unicast again once a Report
    /// says it does not. The group's transmit is a `Transmit::Fanout` whose only destination is
    /// `group`. Call it before the first listener joins.
    pub fn set_multicast(&mut self, group: SocketAddr) {
        self.info.multicast = Some(proto::Group::from_socket_addr(group));
        self.multicast = Some((group, crate::multicast::Members::new()));
    }

    /// The group of [`Endpoint::set_multicast`], if any.
    pub fn multicast_group(&self) -> Option<SocketAddr> {
        self.multicast.as_ref().map(|(g, _)| *g)
    }

    /// How each multicast-capable listener is served (`None` without a group).
    pub fn multicast_members(&self) -> Option<&crate::multicast::Members> {
        self.multicast.as_ref().map(|(_, m)| m)
    }

    /// Keeps the group's members in step with what the table did with a datagram from `from`.
    fn track_multicast(&mut self, from: SocketAddr, event: &sessions::Event) {
        let Some((_, members)) = self.multicast.as_mut() else {
            return;
        };
        match event {
            sessions::Event::Accepted { .. } => {
                let features = self.sessions.features(&from).unwrap_or(0);
                members.joined(from, features & proto::FEATURE_MULTICAST != 0);
            }
            sessions::Event::Report(r) => {
                if let Some(path) =
                    members.reported(from, r.flags & proto::FLAG_UNICAST_FALLBACK != 0)
                {
                    self.events
                        .push_back(Event::PathChanged { addr: from, path });
                }
            }
            sessions::Event::Left { .. } => members.left(from),
            _ => {}
        }
    }

    /// Queues one tick's `datagrams` (its Audio, or its Parity) to the group when a listener
    /// needs it, and to the listeners of `dests` served by unicast when there are any (or
    /// always, with `all`).
    fn queue_tick(&mut self, datagrams: Vec<Bytes>, mut dests: Vec<SocketAddr>, all: bool) {
        if let Some((group, members)) = &self.multicast {
            if members.wants_group() {
                self.queue
                    .push_back(Queued::Many(datagrams.clone(), vec![*group]));
            }
            let mut unicast = Vec::with_capacity(dests.len());
            members.unicast_of(&dests, &mut unicast);
            dests = unicast;
        }
        if all || !dests.is_empty() {
            self.queue.push_back(Queued::Many(datagrams, dests));
        }
    }

    /// Handles one datagram from `from` that arrived at `now`: replies are queued for
    /// [`Endpoint::poll_transmit`], what happened for [`Endpoint::poll_event`].
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if matches!(self.phase, Phase::Closed { .. }) {
            return;
        }
        let live = self.live();
        self.info.timeline = self.timeline(now);
        let h = self.sessions.handle(now, from, datagram, &self.info, live);
        if let Some(reply) = h.reply {
            self.queue.push_back(Queued::One(from, reply));
        }
        self.track_multicast(from, &h.event);
        match &h.event {
            sessions::Event::Nack(n) => self.answer_nack(now, from, n.base, n.mask),
            sessions::Event::Left { .. } => self.repair.forget(&from),
            _ => {}
        }
        if matches!(h.event, sessions::Event::Accepted { .. }) {
            // A key announced but not used yet: the newcomer needs it too.
            if let Some(next) = self.rotation.as_ref().and_then(Rotation::next) {
                let rekey = Message::Rekey(proto::Rekey {
                    key_id: next.id(),
                    key: *next.bytes(),
                });
                if let Some(b) = self.sessions.encode_to(&from, rekey) {
                    self.queue.push_back(Queued::One(from, b));
                }
            }
            self.peak_listeners = self.peak_listeners.max(self.sessions.len());
            if self.config.start == StartMode::FirstClient {
                self.start(now);
            }
        }
        self.events.push_back(Event::Datagram {
            from,
            event: h.event,
        });
    }

    /// The next instant at which [`Endpoint::handle_timeout`] has work (a tick, a look for
    /// silent listeners, a copy of `End`, closing); `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first_scheduled = self.scheduled.keys().next().map(|(t, _)| *t);
        let timers = match self.phase {
            Phase::Running => [self.next_tick, Some(self.next_housekeeping)],
            Phase::Ending { until, .. } => [Some(until), None],
            Phase::Closed { .. } => return None,
        };
        let rekey = match self.phase {
            Phase::Running => self.rotation.as_ref().map(Rotation::poll_timeout),
            _ => None,
        };
        timers
            .into_iter()
            .chain([first_scheduled, rekey])
            .flatten()
            .min()
    }

    /// Does whatever is due at `now`: the tick (audio that became due, end of file), evictions,
    /// copies of `End`, closing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Running
            && let Some(t) = self.next_tick
            && t <= now
        {
            self.next_tick = self.tick_after(now);
            self.tick(now);
        }
        if self.phase == Phase::Running {
            self.rotate(now);
        }
        if self.phase == Phase::Running && self.next_housekeeping <= now {
            // Delay, not burst: the next look is a period after this one.
            self.next_housekeeping = now + HOUSEKEEPING;
            self.evict(now);
        }
        self.release_scheduled(now);
        if let Phase::Ending { reason, until } = self.phase
            && now >= until
            && self.scheduled.is_empty()
        {
            self.phase = Phase::Closed { reason };
        }
    }

    /// Ticks at `now`, off the grid: a source that delivers audio as it arrives (a relay,
    /// [`AudioSource::ready_frames`]) has some, and it goes out at once instead of waiting up
    /// to an interval for the next grid tick. The grid's own ticks go on as before. Does
    /// nothing before the stream starts or once it is ending.
    pub fn tick_now(&mut self, now: Instant) {
        if self.phase == Phase::Running && self.clock.is_started() {
            self.tick(now);
        }
    }

    /// Stops the stream at `now` (Ctrl-C, SIGTERM): `End{Shutdown}` to every listener, three
    /// times, and `Reject{ShuttingDown}` to every valid `Join` until closed. Does nothing if
    /// the stream is already ending.
    pub fn shutdown(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            self.begin_end(now, EndReason::Shutdown);
        }
    }

    /// The next datagram(s) to send, in order; `None` when nothing is ready. Drain it after
    /// every `handle`, `handle_timeout` and `shutdown`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        self.release_scheduled(now);
        if let Some(Queued::Many(mut d, mut a)) = self.sending.take()
            && self.spare.is_none()
        {
            d.clear();
            a.clear();
            self.spare = Some((d, a));
        }
        self.sending = Some(self.queue.pop_front()?);
        match self.sending.as_ref()? {
            Queued::One(dest, datagram) => Some(Transmit::One {
                dest: *dest,
                datagram: datagram.clone(),
            }),
            Queued::Many(datagrams, dests) => Some(Transmit::Fanout { datagrams, dests }),
        }
    }

    /// What happened since the last call, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// True once the stream has ended and the last copy of every `End` has been handed out:
    /// the shell may exit.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
    }

    /// Why the stream ended (or is ending); `None` while it runs.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.phase {
            Phase::Running => None,
            Phase::Ending { reason, .. } | Phase::Closed { reason } => Some(reason),
        }
    }

    /// Whether the media clock has started (audio is flowing or has flowed).
    pub fn is_started(&self) -> bool {
        self.clock.is_started()
    }

    /// The stream description every `Welcome` carries (with the live position filled in).
    pub fn stream_info(&self) -> &StreamInfo {
        &self.info
    }

    /// The listener table (addresses, counters).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The source being streamed.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Stream frames per Audio datagram (PCM: at most; FLAC and Opus: exactly).
    pub fn frames_per_packet(&self) -> usize {
        self.encoder.frames_per_packet() as usize
    }

    /// The media timeline at `now`: the server-clock instant at which a frame is due. Before
    /// the stream starts, the next frame is due now (a Join that starts the stream starts it
    /// at this instant). A source that cannot be read ahead (live) has its frames due when the
    /// encoder can give them out: its timeline is later than its media clock by what the
    /// encoder holds back, so that every datagram, live or not, leaves when it is due and the
    /// playout delay is all the network's.
    pub fn timeline(&self, now: Instant) -> Timeline {
        let (at, ts) = self
            .clock
            .anchor()
            .unwrap_or((now, self.clock.frames_sent()));
        let held_us = if self.source.reads_ahead() {
            0
        } else {
            let rate = u64::from(self.encoder.source_format().sample_rate.max(1));
            self.encoder.lag().saturating_mul(1_000_000).div_ceil(rate)
        };
        Timeline {
            // The media clock counts source frames; the stream's may run at another rate (Opus).
            ts: self.encoder.stream_frames(ts),
            server_us: self.sessions.server_us(at).saturating_add(held_us),
        }
    }

    /// Where the stream is: seq and ts of the next Audio datagram.
    pub fn live(&self) -> LivePosition {
        LivePosition {
            seq: self.next_seq,
            ts: self.encoder.next_ts(),
        }
    }

    /// Counters for the log and the final summary.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            audio_datagrams: self.next_seq,
            frames: self.clock.frames_sent(),
            peak_listeners: self.peak_listeners,
            loops: self.loops,
            corrupt_packets: self.corrupt_seen + self.source.corrupt_packets(),
            slipped: self.clock.slipped(),
            sessions: self.sessions.stats(),
            live: self.source.live_stats(),
        }
    }

    fn start(&mut self, now: Instant) {
        if self.clock.is_started() || self.phase != Phase::Running {
            return;
        }
        self.clock.start(now);
        self.tick_origin = Some(now);
        // The first tick is at once (nothing is due yet; it fixes the grid).
        self.next_tick = Some(now);
        self.events.push_back(Event::Started);
    }

    /// The first grid instant after `now`: a late tick is followed by ticks on the original
    /// grid, not by a burst of back-to-back ticks nor a shifted grid (the media clock already
    /// makes the late tick send everything due).
    fn tick_after(&self, now: Instant) -> Option<Instant> {
        let origin = self.tick_origin?;
        let iv = self.config.interval.as_nanos().max(1);
        let k = now.saturating_duration_since(origin).as_nanos() / iv + 1;
        let offset = Duration::from_nanos(u64::try_from(k * iv).unwrap_or(u64::MAX));
        origin.checked_add(offset)
    }

    /// Reads up to `n` frames into `self.pcm`, across the loop boundary with `--loop`.
    fn read_frames(&mut self, n: usize) -> usize {
        let mut got = self.source.read_frames(n, &mut self.pcm);
        while got < n && self.config.looping {
            let corrupt = self.source.corrupt_packets();
            match self.source.rewind() {
                Ok(()) => {
                    self.corrupt_seen += corrupt;
                    self.loops += 1;
                    self.events.push_back(Event::Looped { loops: self.loops });
                }
                Err(e) => {
                    self.config.looping = false;
                    self.events.push_back(Event::LoopStopped(e));
                    break;
                }
            }
            let more = self.source.read_frames(n - got, &mut self.pcm);
            if more == 0 {
                // An empty pass would loop forever without producing audio.
                self.config.looping = false;
                self.events
                    .push_back(Event::LoopStopped("the source yields no frames".into()));
                break;
            }
            got += more;
        }
        got
    }

    /// One tick: encode everything the media clock says is due into Audio datagrams, queue
    /// them for every listener, and end the stream at the end of the source.
    fn tick(&mut self, now: Instant) {
        self.source.begin_tick(now);
        let pushed = self.source.ready_frames();
        let due = match pushed {
            Some(n) => n,
            None => self.clock.due(now),
        };
        let (mut datagrams, mut dests) = self.spare.take().unwrap_or_default();
        let mut produced = 0u64;
        let mut eof = false;
        let mut held = false;
        // Parity goes out after the tick's audio, as its own batch: audio datagrams keep one
        // size (one GSO super-datagram per listener), and parity is a little larger.
        let mut parity_out = Vec::new();
        let mut failed = None;
        for n in pacing::split(due, self.fpp) {
            self.pcm.clear();
            let got = self.read_frames(n);
            if got > 0 {
                if let Err(e) = self.encode(&mut datagrams, false) {
                    failed = Some(e);
                }
                produced += got as u64;
            }
            if got < n {
                // A paused live source has nothing now but is not finished.
                held = self.source.is_holding();
                eof = !held;
                break;
            }
        }
        self.clock.sent(produced);
        if held || pushed.is_some() {
            // Nothing is owed for the pause: no burst when the source comes back. A source
            // that pushes its audio owes nothing either: the clock follows what it sent.
            self.clock.hold(now);
        }
        let ending = eof || (!self.config.looping && self.source.is_finished());
        if ending && let Err(e) = self.encode(&mut datagrams, true) {
            failed = Some(e);
        }
        if let Some(e) = failed {
            self.events.push_back(Event::EncodeFailed(e));
        }
        // Parity over the tick's audio, once for every listener.
        for d in &datagrams {
            let (Some(seq), Some(ts)) = (le_u64(d, 4), le_u64(d, 12)) else {
                continue;
            };
            let payload = d.slice(proto::limits::AUDIO_OVERHEAD.min(d.len())..);
            for shard in self.repair.on_audio(now, seq, ts, &payload) {
                let parity = Message::Parity(proto::Parity {
                    group_seq: shard.group_seq,
                    k: shard.k,
                    m: shard.m,
                    index: shard.index,
                    shard: Bytes::from(shard.shard),
                });
                if let Ok(b) = proto::encode_to_bytes(&Packet::new(self.parity_seq, parity)) {
                    parity_out.push(b);
                    self.parity_seq += 1;
                }
            }
        }
        // A private room: each datagram sealed once, the same bytes for every listener.
        if let Some(r) = &self.rotation {
            let key = r.current();
            for d in datagrams.iter_mut().chain(parity_out.iter_mut()) {
                if let Some(sealed) = seal_stream(key, d) {
                    *d = sealed;
                }
            }
        }
        if !datagrams.is_empty() && (self.emit_always || !self.sessions.is_empty()) {
            dests.extend_from_slice(self.sessions.addrs());
            if self.multicast.is_some() {
                let parity_dests = dests.clone();
                self.queue_tick(datagrams, dests, self.emit_always);
                if !parity_out.is_empty() && !parity_dests.is_empty() {
                    self.queue_tick(parity_out, parity_dests, false);
                }
            } else if !parity_out.is_empty() && !dests.is_empty() {
                let parity_dests = dests.clone();
                self.queue.push_back(Queued::Many(datagrams, dests));
                self.queue.push_back(Queued::Many(parity_out, parity_dests));
            } else {
                self.queue.push_back(Queued::Many(datagrams, dests));
            }
        } else {
            datagrams.clear();
            self.spare = Some((datagrams, dests));
        }
        let corrupt = self.corrupt_seen + self.source.corrupt_packets();
        if corrupt > self.corrupt_reported {
            self.corrupt_reported = corrupt;
            self.events.push_back(Event::Corrupt { total: corrupt });
        }
        if ending {
            if let Some(announced) = self.source.info().total_frames
                && self.info.total_frames.is_some()
                && announced != self.clock.frames_sent()
            {
                self.events.push_back(Event::LengthMismatch {
                    announced,
                    sent: self.clock.frames_sent(),
                });
            }
            let reason = self.source.end_reason();
            self.begin_end(now, reason);
        }
    }

    /// Answers a joined listener's Nack: each datagram still held goes back as `Resent`
    /// under its original seq, as far as the listener's budget allows.
    fn answer_nack(&mut self, now: Instant, from: SocketAddr, base: u64, mask: u64) {
        let mut resends = std::mem::take(&mut self.resends);
        resends.clear();
        self.repair
            .on_nack(now, &from, repair::NackRequest { base, mask }, &mut resends);
        for r in resends.drain(..) {
            proto::encode_resent(r.seq, r.ts, &r.payload, &mut self.out);
            let plain = self.out.split().freeze();
            let datagram = match &self.rotation {
                Some(rot) => match seal_stream(rot.current(), &plain) {
                    Some(d) => d,
                    None => continue,
                },
                None => plain,
            };
            self.queue.push_back(Queued::One(from, datagram));
        }
        self.resends = resends;
    }

    /// What repair has sent: parity shards (to every listener) and resends.
    pub fn repair_stats(&self) -> repair::SenderStats {
        self.repair.stats()
    }

    /// Encodes the frames in `self.pcm` (or, with `finish`, what the codec still holds, padded
    /// to whole packets) into Audio datagrams appended to `datagrams`.
    fn encode(&mut self, datagrams: &mut Vec<Bytes>, finish: bool) -> Result<(), EncodeError> {
        let (out, seq) = (&mut self.out, &mut self.next_seq);
        let mut emit = |ts: u64, payload: &[u8]| {
            proto::encode_audio(*seq, ts, payload, out);
            datagrams.push(out.split().freeze());
            *seq += 1;
        };
        if finish {
            self.encoder.finish(&mut emit)
        } else {
            self.encoder.encode(&self.pcm, &mut emit)
        }
    }

    /// A private room's key schedule: `Rekey` to every listener when the next key is
    /// announced, and the switch (later `Welcome`s hand out the new key).
    fn rotate(&mut self, now: Instant) {
        let Some(rotation) = self.rotation.as_mut() else {
            return;
        };
        loop {
            match rotation.poll(now) {
                Ok(Some(RotationStep::Announce)) => {
                    let Some(next) = rotation.next() else {
                        continue;
                    };
                    let rekey = Message::Rekey(proto::Rekey {
                        key_id: next.id(),
                        key: *next.bytes(),
                    });
                    for i in 0..self.sessions.len() {
                        let addr = self.sessions.addrs()[i];
                        if let Some(b) = self.sessions.encode_to(&addr, rekey.clone()) {
                            self.queue.push_back(Queued::One(addr, b));
                        }
                    }
                }
                Ok(Some(RotationStep::Switch)) => {
                    self.sessions.set_stream_key(rotation.current().clone());
                    self.events.push_back(Event::Rekeyed {
                        key_id: rotation.current().id(),
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    // No randomness for a new key: keep the current one and try again later.
                    self.events.push_back(Event::RekeyFailed(e.to_string()));
                    break;
                }
            }
        }
    }

    fn last_audio(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }

    fn encode_end(&self, end: proto::End) -> Option<Bytes> {
        // One seq for every copy of one End (the copies share their seq).
        proto::encode_to_bytes(&Packet::new(self.next_seq, Message::End(end))).ok()
    }

    fn schedule(&mut self, at: Instant, q: Queued) {
        self.scheduled_count += 1;
        self.scheduled.insert((at, self.scheduled_count), q);
    }

    fn release_scheduled(&mut self, now: Instant) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let q = entry.remove();
            if matches!(q, Queued::One(..)) {
                self.eviction_repeats = self.eviction_repeats.saturating_sub(1);
            }
            self.queue.push_back(q);
        }
    }

    /// Removes `addr` at an operator's request (the control plane's kick), at `now`: it gets
    /// `End{Kicked}` (three copies, like an eviction), and its slot is free at once. False if `addr`
    /// is not joined or the stream is already ending.
    pub fn kick(&mut self, now: Instant, addr: SocketAddr) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        let Some(start_seq) = self.sessions.kick(now, &addr) else {
            return false;
        };
        // A private room: the kicked listener cannot follow the stream past the next switch.
        if let Some(r) = &mut self.rotation {
            r.rotate_soon(now);
        }
        let mut evicted = std::mem::take(&mut self.evicted);
        evicted.clear();
        evicted.push((addr, start_seq));
        self.send_evictions(now, evicted, EndReason::Kicked);
        true
    }

    /// Changes the capacity live: joins beyond `max_clients` get `Reject{Full}`; listeners
    /// already joined stay.
    pub fn set_max_clients(&mut self, max_clients: usize) {
        self.config.max_clients = max_clients;
        self.sessions.set_max_clients(max_clients);
    }

    /// Evicts listeners silent past the client timeout, each with `End{Evicted}` ×3.
    fn evict(&mut self, now: Instant) {
        let mut evicted = std::mem::take(&mut self.evicted);
        evicted.clear();
        self.sessions.evict_expired(now, &mut evicted);
        self.send_evictions(now, evicted, EndReason::Evicted);
    }

    /// `End{reason}` ×3 to each of `evicted` (removed from the table already); for
    /// `Evicted`, an [`Event::Evicted`] each (a kick is logged by whoever asked for it).
    fn send_evictions(&mut self, now: Instant, evicted: Vec<(SocketAddr, u64)>, reason: EndReason) {
        let cap = MAX_PENDING_ENDS * (END_REPEAT as usize).saturating_sub(1);
        for &(addr, start_seq) in &evicted {
            if let Some((_, members)) = self.multicast.as_mut() {
                members.left(addr);
            }
            if reason == EndReason::Evicted {
                self.events.push_back(Event::Evicted { addr });
            }
            let end = sessions::end_after(start_seq, reason, self.last_audio());
            // Sealed once: the copies are the same message under the same seq.
            let Some(bytes) = self
                .encode_end(end)
                .and_then(|b| self.sessions.wrap(&addr, b))
            else {
                continue;
            };
            self.queue.push_back(Queued::One(addr, bytes.clone()));
            if self.eviction_repeats < cap {
                for k in 1..END_REPEAT {
                    self.eviction_repeats += 1;
                    self.schedule(now + END_SPACING * k, Queued::One(addr, bytes.clone()));
                }
            }
        }
        self.sessions.clear_retired();
        self.evicted = evicted;
    }

    /// The end of the stream: stop ticking and accepting, `End` to every listener now and
    /// END_REPEAT − 1 more times, END_SPACING apart.
    fn begin_end(&mut self, now: Instant, reason: EndReason) {
        self.sessions.stop_accepting();
        self.next_tick = None;
        let last = self.last_audio();
        // Every listener's End is one of two: it got audio (last_seq = the last Audio) or it
        // joined after the last Audio (none). One datagram each, fanned out.
        let (mut got_audio, mut got_none) = (Vec::new(), Vec::new());
        for addr in self.sessions.addrs() {
            match self.sessions.end_for(addr, reason, last).last_seq {
                Some(_) => got_audio.push(*addr),
                None => got_none.push(*addr),
            }
        }
        let listeners = self.sessions.len();
        for (dests, last_seq) in [(got_audio, last), (got_none, None)] {
            if dests.is_empty() {
                continue;
            }
            let Some(bytes) = self.encode_end(proto::End { reason, last_seq }) else {
                continue;
            };
            if self.sessions.is_keyed() {
                // Each listener's copy under its own session key: sent one by one.
                for addr in dests {
                    let Some(sealed) = self.sessions.wrap(&addr, bytes.clone()) else {
                        continue;
                    };
                    for k in 1..END_REPEAT {
                        self.schedule(now + END_SPACING * k, Queued::One(addr, sealed.clone()));
                    }
                    self.queue.push_back(Queued::One(addr, sealed));
                }
                continue;
            }
            for k in 1..END_REPEAT {
                self.schedule(
                    now + END_SPACING * k,
                    Queued::Many(vec![bytes.clone()], dests.clone()),
                );
            }
            self.queue.push_back(Queued::Many(vec![bytes], dests));
        }
        // Done once the last copy of every End, eviction Ends included, is out. Evictions stop
        // here, so nothing is scheduled later than what is already known.
        let mut until = if listeners == 0 {
            now
        } else {
            now + END_SPACING * END_REPEAT.saturating_sub(1)
        };
        if let Some(&(last_copy, _)) = self.scheduled.keys().next_back() {
            until = until.max(last_copy);
        }
        self.phase = if until <= now && self.scheduled.is_empty() {
            Phase::Closed { reason }
        } else {
            Phase::Ending { reason, until }
        };
        self.events.push_back(Event::Ending {
            reason,
            seq: self.next_seq,
            listeners,
        });
    }
}

/// Counters of an [`Endpoint`], for the periodic log line and the final summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointStats {
    /// Distinct Audio datagrams produced (= the next seq).
    pub audio_datagrams: u64,
    /// Frames streamed.
    pub frames: u64,
    /// Most listeners at once.
    pub peak_listeners: usize,
    /// Passes of the source completed (`--loop`).
    pub loops: u64,
    /// Damaged packets skipped in the source, over every pass.
    pub corrupt_packets: u64,
    /// Time the media clock gave up to stalls longer than [`pacing::MAX_CATCH_UP`].
    pub slipped: Duration,
    /// The listener table's counters.
    pub sessions: sessions::SessionStats,
    /// A live source's underrun, overrun and idle counters.
    pub live: Option<crate::live::LiveStats>,
}

/// The little-endian u64 at `at` in an encoded datagram (its header's seq at 4, an Audio's ts
/// at 12).
fn le_u64(d: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = d.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}
