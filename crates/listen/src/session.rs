//! The listener's protocol core, sans-IO: one [`Session`] per connection to a server. No
//! sockets, no clock reads, no tokio; every call takes the caller's `now` (a
//! [`std::time::Instant`], so a simulated clock is a base instant plus offsets).
//!
//! The session owns:
//!
//! - the handshake: `Connect` (padded to [`proto::limits::MIN_CONNECT_LEN`]) → `Challenge` →
//!   `Join` with the cookie (a fresh `Challenge` answering a `Join` means: join again with the new
//!   one) → `Welcome` or `Reject`. The last message is resent after [`HANDSHAKE_RETRY_FIRST`],
//!   the delay doubling up to [`HANDSHAKE_RETRY_MAX`], until the configured timeout
//!   ([`Event::NoAnswer`]);
//! - the checks on the `Welcome` (rate, channels, format, interval, frames per packet within the
//!   `MIN_WELCOME_*`/`MAX_WELCOME_*` bounds, else [`Event::Unplayable`]);
//! - reception: the stats [`Tracker`] and the [`JitterBuffer`], which the caller drains into a
//!   sink with [`Session::pull`] or [`Session::feed`] at its own `now`;
//! - a `Report` every [`proto::limits::REPORT_INTERVAL`] while streaming;
//! - the end: `End` (played out first, with trailing loss of a finished stream concealed only as
//!   far as the missing datagrams reach), `Error{NotJoined}` (evicted), server silence past
//!   `max(timeout, 2 × the server's interval)` (the server is silent between bursts by design),
//!   or [`Session::leave`] (the user's interrupt, a device error). A `Leave` carrying the
//!   session token and the reason is queued on every exit once joined (before the Welcome
//!   there is no token, and nothing to leave).
//!
//! Datagrams from any address other than the server's are counted as foreign and dropped;
//! anything from the server that does not decode, or makes no sense where it comes, is counted
//! as garbage and dropped. Nothing from the network can make the session panic.
//!
//! # Driving a session
//!
//! ```text
//! let mut s = Session::new(config, now);
//! loop {
//!     // 1. input, each with the `now` of this wake-up:
//!     //    s.handle(now, from, datagram) for every datagram received,
//!     //    s.handle_timeout(now) when now >= s.poll_timeout(),
//!     //    s.leave(now, reason) on the user's interrupt or a device error,
//!     //    s.feed(now, &mut sink) (or s.pull(now, n, &mut out)) when the sink wants audio;
//!     // 2. drain until None: s.poll_transmit(now) (send each to its destination),
//!     //    then s.poll_event() (react: open a sink on Joined, stop on a terminal event);
//!     // 3. stop once s.is_closed() and the transmits are drained;
//!     // 4. sleep until the earliest of s.poll_timeout(), the sink's refill instant (returned by
//!     //    feed) and the next datagram.
//! }
//! let stats = s.stats(); // Some once the stream ended (Event::Ended)
//! ```
//!
//! The tokio shell ([`crate::client`]) is exactly this loop over a UDP socket and a real sink; a
//! simulated network runs the same loop on simulated time with a [`crate::sink::NullSink`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use audiocodec::AudioCodec;
use bytes::{Bytes, BytesMut};
use proto::limits::{HEADER_LEN, MAX_PAYLOAD, MIN_CONNECT_LEN, REPORT_INTERVAL};
use proto::{
    COOKIE_LEN, Connect, DecodeError, ErrorCode, ErrorMsg, Join, Leave, LeaveReason, Message,
    MessageType, Packet, RejectReason, StreamInfo, TIME_REQUEST_PAD, TimeRequest, Token,
};

use crate::decode::DecodeStage;
use crate::jitter::{JitterBuffer, PlayoutCounters, State, duration_of};
use crate::schedule::{Fed, Schedule};
use crate::sink::{Sink, SinkError, VIRTUAL_LEAD};
use crate::stats::{Arrival, ExitReason, Stats, Tracker};
use crate::sync::ClockSync;

/// Default jitter-buffer target (`--latency`).
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(100);

/// Default server silence after which the client gives up (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// First handshake retransmission delay: a few loopback or LAN round trips; it doubles after
/// each silent attempt.
pub const HANDSHAKE_RETRY_FIRST: Duration = Duration::from_millis(250);

/// Cap on the handshake retransmission delay, so a long `--timeout` still retries every 2 s.
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Lowest sample rate accepted from a `Welcome`: telephone quality and up.
pub const MIN_WELCOME_RATE: u32 = 4_000;
/// Highest sample rate accepted from a `Welcome`: the highest studio rate in use.
pub const MAX_WELCOME_RATE: u32 = 384_000;
/// Most channels accepted from a `Welcome`: beyond any speaker layout a listener has.
pub const MAX_WELCOME_CHANNELS: u16 = 32;

/// Longest server interval accepted from a `Welcome`; the protocol's design range is 5 ms..2 s,
/// and a far longer one would only make the jitter buffer huge.
pub const MAX_WELCOME_INTERVAL: Duration = Duration::from_secs(10);

/// What a [`Session`] needs to know up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// The server's address: the only one datagrams are accepted from and sent to.
    pub server: SocketAddr,
    /// Jitter-buffer target; grows when the server's interval needs more.
    pub latency: Duration,
    /// How long the handshake may go unanswered, and (at least) how long the server may be
    /// silent mid-stream.
    pub timeout: Duration,
    /// How much audio the sink takes ahead of playing it ([`Sink::lead`]): the jitter buffer
    /// adds it to its start threshold.
    pub sink_lead: Duration,
    /// Whether received audio is buffered for playout. `false`: audio is only counted (the
    /// tracker, the reports), never buffered, so a session nobody pulls from (a load tool's
    /// simulated listener) holds no audio; an `End` then ends the session at once.
    pub playout: bool,
    /// The name the `Join` carries, for the server's operator.
    pub name: ListenerName,
    /// Synchronised playout (`--sync`): exchange clocks with the server and play every frame
    /// at the room's instant ([`crate::sync`]) instead of when the jitter buffer fills.
    pub sync: bool,
    /// What the listener's clock read at the session's creation (µs; [`crate::schedule::Epoch`]):
    /// the real-time clock in the binary, 0 in simulations.
    pub clock_base_us: u64,
}

/// The codecs this listener decodes (PCM, FLAC, Opus), as `Join.codecs` bits.
pub const SUPPORTED_CODECS: u32 = audiocodec::DECODABLE;

/// What this listener can do besides playing, as `Join.features` bits.
pub const SUPPORTED_FEATURES: u32 = proto::FEATURE_FEC | proto::FEATURE_RETRANSMIT;

/// A listener's name, at most [`proto::limits::MAX_NAME`] bytes, held inline so that a
/// [`SessionConfig`] stays `Copy` (a staying listener makes a session per rejoin).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ListenerName {
    bytes: [u8; proto::limits::MAX_NAME],
    len: u8,
}

impl ListenerName {
    /// `name`, cut at a character boundary to fit.
    pub fn new(name: &str) -> Self {
        let mut cut = name.len().min(proto::limits::MAX_NAME);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = [0u8; proto::limits::MAX_NAME];
        bytes[..cut].copy_from_slice(&name.as_bytes()[..cut]);
        Self {
            bytes,
            len: cut as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Built from a `&str` cut at a char boundary, so always UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Default for ListenerName {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::fmt::Debug for ListenerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl SessionConfig {
    /// The command line's defaults for `server`, with a virtual sink's lead.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            latency: DEFAULT_LATENCY,
            timeout: DEFAULT_TIMEOUT,
            sink_lead: VIRTUAL_LEAD,
            playout: true,
            name: ListenerName::default(),
            sync: false,
            clock_base_us: 0,
        }
    }
}

/// One datagram for the caller to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it (always the server).
    pub destination: SocketAddr,
    /// The encoded datagram.
    pub contents: Bytes,
}

/// Where a [`Session`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, or joining with a cookie; no `Welcome` yet.
    Handshake,
    /// Joined: audio flows into the jitter buffer, reports go out.
    Streaming,
    /// The server sent `End`: playing out what is buffered.
    PlayingOut,
    /// Nothing more will happen (see [`Session::exit_reason`]); only queued transmits and events
    /// are left to drain.
    Closed,
}

/// Something the caller should know or act on, from [`Session::poll_event`]. Events marked
/// terminal close the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server answered with a `Challenge`; a `Join` is queued.
    Challenged,
    /// The server accepted us and described the stream, which is playable: open the sink.
    Joined(StreamInfo),
    /// The jitter buffer started handing out audio, holding `buffered` ahead.
    Playing {
        /// Audio buffered when playout started.
        buffered: Duration,
    },
    /// The jitter buffer ran empty mid-stream and rebuffers.
    Underrun {
        /// Stream position where it ran empty.
        at: Duration,
        /// The target it refills to before playing again.
        target: Duration,
    },
    /// The server ended the stream; what is buffered plays out before [`Event::Ended`].
    EndReceived {
        /// The server's reason.
        reason: ExitReason,
        /// Audio left to play out.
        buffered: Duration,
    },
    /// The server sent an `Error` that does not end the session.
    ServerError(ErrorMsg),
    /// The server sent `Error{NotJoined}` mid-stream: it no longer knows us. [`Event::Ended`]
    /// with [`ExitReason::Evicted`] follows.
    Evicted(ErrorMsg),
    /// The server was silent for `silence`. [`Event::Ended`] with [`ExitReason::Timeout`]
    /// follows.
    TimedOut {
        /// The silence timeout in effect.
        silence: Duration,
    },
    /// The end of the stream did not play out in time (the sink stopped taking audio).
    /// [`Event::Ended`] follows.
    EndOverdue,
    /// Synchronised playout was asked for, but the server answered no clock exchange within
    /// [`crate::sync::FIRST_ANSWER_TIMEOUT`]: the listener plays on its own clock.
    Unsynchronised,
    /// Terminal: the stream is over; [`Session::stats`] has the final numbers. A `Leave` is
    /// queued.
    Ended(ExitReason),
    /// Terminal: the server refused us (or answered in another protocol version).
    Rejected(RejectReason),
    /// Terminal: the `Welcome` described a stream this client cannot play. A `Leave` is queued.
    Unplayable(String),
    /// Terminal: the handshake got no answer within the timeout.
    NoAnswer {
        /// The timeout.
        after: Duration,
    },
}

/// Handshake state: what to resend and when.
#[derive(Debug)]
struct Handshake {
    /// The cookie of the last `Challenge`: `Join` is resent with it; `None`: `Connect` is.
    cookie: Option<[u8; COOKIE_LEN]>,
    /// Delay before the next retransmission but one.
    backoff: Duration,
    /// When the last message is resent (or the handshake gives up, at `deadline`).
    retry_at: Instant,
    /// The handshake gives up here.
    deadline: Instant,
    /// The message awaiting its answer and when it was sent; `None` once it was sent again,
    /// since an answer could then be to either copy (Karn's rule).
    asked: Option<(Asked, Instant)>,
    /// The shortest round trip the handshake measured: loss repair's first estimate of how
    /// soon a resend can come, before any Nack was answered.
    rtt: Option<Duration>,
}

/// A handshake message that gets an answer: `Connect` a `Challenge`, `Join` a `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Connect,
    Join,
}

impl Handshake {
    /// The answer to `what` arrived at `now`: a round trip, if `what` was sent once.
    fn answered(&mut self, what: Asked, now: Instant) {
        if let Some((asked, at)) = self.asked
            && asked == what
        {
            self.asked = None;
            let rtt = now.saturating_duration_since(at);
            self.rtt = Some(self.rtt.map_or(rtt, |r| r.min(rtt)));
        }
    }
}

/// Reception state after a playable `Welcome`.
#[derive(Debug)]
struct Stream {
    /// The stream as the server described it.
    info: StreamInfo,
    /// Payloads to PCM, and the codec's concealment.
    decode: DecodeStage,
    /// The session token every message to the server carries.
    token: Token,
    /// The playout.
    jb: JitterBuffer,
    /// How long the server may be silent (also the grace after the end has played out).
    silence: Duration,
    /// One past the last frame received so far.
    received_end: u64,
    /// When the server was last heard.
    last_heard: Instant,
    /// When the next `Report` is due.
    next_report: Instant,
    /// Set by the first `End`: its reason, and the instant the session ends even if the sink
    /// stops taking audio.
    end: Option<(ExitReason, Instant)>,
    /// Audio has been handed out (for [`Event::Playing`]).
    playing: bool,
    /// Underruns already reported as events.
    underruns: u64,
    /// Loss repair: parity, Nacks, each seq to the jitter buffer once.
    repair: repair::Receiver,
    /// Reused for what one datagram delivers.
    deliveries: Vec<repair::Delivery>,
    /// When audio last left the jitter buffer, and the position it left it at: the instant
    /// the position stood still from, for deadlines that do not move between pulls.
    last_pull: Option<(Instant, u64)>,
}

impl Stream {
    /// When the frame `ts` must be in the jitter buffer: the sink takes it once the playout
    /// position reaches it, which waits while the buffer fills (the stream's first datagrams
    /// lost are still worth asking for then).
    ///
    /// While playing, it counts from the last pull rather than from `now`: the position moves
    /// only when the sink takes audio, so counting from `now` would push every deadline later
    /// the longer ago that was (by up to one refill), and a Nack would wait for an answer
    /// that comes too late.
    fn deadline(&self, now: Instant, ts: u64) -> Instant {
        let position = self.jb.position();
        let ahead = duration_of(ts.saturating_sub(position), self.info.sample_rate);
        match self.last_pull {
            Some((at, p)) if p == position && self.jb.state() == State::Playing => at + ahead,
            _ => now + self.jb.start_wait() + ahead,
        }
    }

    /// Notes that audio left the jitter buffer at `now`.
    fn pulled(&mut self, now: Instant) {
        self.last_pull = Some((now, self.jb.position()));
        // Playout may start (or resume) while the link is silent: repair learns of it here,
        // not only at the next arrival.
        self.repair.set_playing(self.jb.state() == State::Playing);
    }

    /// Hands what repair delivered to the jitter buffer (a rebuilt or resent payload that is
    /// not whole frames is malformed for this stream and dropped by the buffer).
    /// Decodes each audio datagram repair hands over (in the order it does) into the jitter
    /// buffer; returns how many did not decode (garbage, counted by the caller).
    fn deliver(&mut self, out: &mut Vec<repair::Delivery>) -> u64 {
        let bpf = self.info.bytes_per_frame().max(1);
        let mut bad = 0;
        for d in out.drain(..) {
            let frames = match self.decode.codec() {
                AudioCodec::Pcm => (d.payload.len() / bpf) as u64,
                _ => u64::from(self.info.frames_per_packet),
            };
            self.received_end = self.received_end.max(d.ts.saturating_add(frames));
            match self.decode.decode(d.ts, Bytes::from(d.payload)) {
                Ok(Some(pcm)) => {
                    self.jb.push(d.ts, pcm);
                }
                Ok(None) => {}
                Err(_) => bad += 1,
            }
        }
        bad
    }
}

/// One listener's connection to a server, sans-IO. See the module docs.
#[derive(Debug)]
pub struct Session {
    /// As given.
    config: SessionConfig,
    /// Where the session is.
    phase: Phase,
    /// Retransmission state (meaningful in [`Phase::Handshake`]).
    handshake: Handshake,
    /// Set by a playable `Welcome`.
    stream: Option<Box<Stream>>,
    /// Reception counters; before the `Welcome` it only counts garbage and foreign datagrams.
    tracker: Tracker,
    /// Why the stream ended, once it did.
    exit: Option<ExitReason>,
    /// Control messages to send, oldest first.
    transmits: VecDeque<Message>,
    /// Events for the caller, oldest first.
    events: VecDeque<Event>,
    /// `seq` of our next control message (informational on the wire).
    seq: u64,
    /// Encode buffer.
    buf: BytesMut,
    /// Frames pulled for [`Session::feed`] (reused).
    scratch: Vec<i16>,
    /// Bytes of every datagram from the server (all types, UDP payload).
    bytes_received: u64,
    /// Clock synchronisation and the synchronised playout ([`crate::sync`]).
    sync: ClockSync,
    /// What the last [`Session::feed`] played, for `--playout-log`.
    fed: Option<Fed>,
    /// What the `Leave` says when the session closes.
    leave_reason: Option<LeaveReason>,
    /// A private room's keys ([`Session::with_room_key`]); `Open` without a key.
    keys: Keys,
    /// The server's multicast group ([`Session::with_multicast`]): whether to ask for it, and
    /// the path once a `Welcome` named one.
    multicast: Multicast,
}

/// A session's part in `--multicast` ([`crate::multicast`]).
#[derive(Debug, Default)]
struct Multicast {
    /// The `Join` announces `FEATURE_MULTICAST`.
    capable: bool,
    /// Set by a `Welcome` naming a group.
    path: Option<crate::multicast::GroupPath>,
}

/// How long a replaced stream key stays accepted once its successor has been in use: covers
/// reordered and retransmitted audio sealed before the switch.
pub const STREAM_KEY_OVERLAP: Duration = Duration::from_secs(2);

/// Where a private room's handshake is (docs/PROTOCOL.md §4.12).
enum Keys {
    /// No room key: nothing is sealed.
    Open,
    /// Noise message 1 sent in every `Join`; the `Welcome` finishes it.
    Handshake {
        initiator: Option<Box<seal::Initiator>>,
        msg1: Bytes,
    },
    /// Joined: every datagram after the `Welcome` is sealed.
    Joined(seal::ListenerKeys),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keys::Open => "Open",
            Keys::Handshake { .. } => "Handshake",
            Keys::Joined(_) => "Joined",
        })
    }
}

impl Session {
    /// A session that starts connecting at `now`: the first `Connect` is queued.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let mut s = Self {
            config,
            phase: Phase::Handshake,
            handshake: Handshake {
                cookie: None,
                backoff: HANDSHAKE_RETRY_FIRST,
                retry_at: (now + HANDSHAKE_RETRY_FIRST).min(now + config.timeout),
                deadline: now + config.timeout,
                asked: Some((Asked::Connect, now)),
                rtt: None,
            },
            stream: None,
            tracker: Tracker::new(1, 0, now),
            exit: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            seq: 0,
            buf: BytesMut::with_capacity(256),
            scratch: Vec::new(),
            bytes_received: 0,
            sync: ClockSync::new(now, config.clock_base_us),
            fed: None,
            leave_reason: None,
            keys: Keys::Open,
            multicast: Multicast::default(),
        };
        s.queue_connect();
        s
    }

    /// Makes this a private room's session: the `Join` carries a Noise handshake under `key`,
    /// and everything after the `Welcome` is sealed. Call before handling any datagram.
    pub fn with_room_key(mut self, key: &seal::RoomKey) -> Result<Self, seal::SealError> {
        let (initiator, msg1) = seal::Initiator::start(key)?;
        self.keys = Keys::Handshake {
            initiator: Some(Box::new(initiator)),
            msg1: Bytes::from(msg1),
        };
        Ok(self)
    }

    /// Makes this session receive the server's multicast group when its `Welcome` names one:
    /// the `Join` announces `FEATURE_MULTICAST`, the caller joins [`Session::multicast_group`]
    /// and hands its datagrams to [`Session::handle_group`] ([`crate::multicast`] has the rule).
    pub fn with_multicast(mut self) -> Self {
        self.multicast.capable = true;
        self
    }

    /// The group to receive, once joined, while it is wanted.
    pub fn multicast_group(&self) -> Option<SocketAddr> {
        self.multicast.path.as_ref().and_then(|p| p.group())
    }

    /// How the audio comes (unicast, the group, or unicast after the group did not arrive).
    pub fn transport(&self) -> crate::multicast::Transport {
        self.multicast
            .path
            .as_ref()
            .map_or(crate::multicast::Transport::Unicast, |p| p.transport())
    }

    /// The group cannot be joined (no route, no interface): ask for unicast at once.
    pub fn group_unavailable(&mut self, now: Instant) {
        if let Some(p) = self.multicast.path.as_mut() {
            p.give_up(now);
            self.report_soon(now);
        }
    }

    /// A datagram that arrived at `now` on the group's socket: Audio and Parity are taken
    /// (the group carries nothing else) while the group is wanted; a copy of what already
    /// came by unicast during the switch is dropped uncounted.
    pub fn handle_group(&mut self, now: Instant, datagram: &[u8]) {
        if !matches!(self.phase, Phase::Streaming | Phase::PlayingOut) {
            return;
        }
        let Some(path) = self.multicast.path.as_mut() else {
            return;
        };
        let seq = match proto::decode(datagram) {
            Ok(Packet {
                seq,
                msg: Message::Audio(_),
            }) => Some(seq),
            Ok(Packet {
                msg: Message::Parity(_),
                ..
            }) => None,
            _ => {
                self.tracker.on_garbage();
                return;
            }
        };
        if !path.on_group_audio(now) {
            return;
        }
        if path.take_report_now() {
            self.report_soon(now);
        }
        if self.is_copy(now, seq) {
            return;
        }
        self.bytes_received += datagram.len() as u64;
        self.handle_stream(now, datagram);
    }

    /// Whether Audio `seq` already came by the other path while both paths carry the audio.
    fn is_copy(&self, now: Instant, seq: Option<u64>) -> bool {
        match (seq, self.multicast.path.as_ref()) {
            (Some(seq), Some(p)) => p.in_overlap(now) && self.tracker.has(seq),
            _ => false,
        }
    }

    /// Sends a Report at `now` rather than at its usual time (the multicast path changed).
    fn report_soon(&mut self, now: Instant) {
        if let Some(s) = self.stream.as_deref_mut() {
            s.next_report = s.next_report.min(now);
        }
    }

    /// Clock synchronisation and the synchronised playout.
    pub fn sync(&self) -> &ClockSync {
        &self.sync
    }

    /// What the last [`Self::feed`] played (first stream frame, frames, when the first leaves
    /// the output), once: for `--playout-log`.
    pub fn take_fed(&mut self) -> Option<Fed> {
        self.fed.take()
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once nothing more will happen; queued transmits and events may remain.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The stream as the server described it, once joined.
    pub fn info(&self) -> Option<&StreamInfo> {
        self.stream.as_ref().map(|s| &s.info)
    }

    /// The reception counters so far.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The jitter buffer, once joined.
    pub fn jitter_buffer(&self) -> Option<&JitterBuffer> {
        self.stream.as_ref().map(|s| &s.jb)
    }

    /// The playout counters so far (zeros before the `Welcome`).
    pub fn playout(&self) -> PlayoutCounters {
        self.stream
            .as_ref()
            .map_or_else(PlayoutCounters::default, |s| s.jb.counters())
    }

    /// The mid-stream silence timeout in effect, once joined: `max(timeout, 2 × interval)`.
    pub fn silence_timeout(&self) -> Option<Duration> {
        self.stream.as_ref().map(|s| s.silence)
    }

    /// Why the stream ended ([`Event::Ended`]), once it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit
    }

    /// The final statistics, once the stream ended ([`Event::Ended`]); `None` while it runs and
    /// after a failed handshake.
    pub fn stats(&self) -> Option<Stats> {
        self.exit.map(|r| {
            let mut st =
                Stats::new(&self.tracker, &self.playout(), r).with_sync(self.sync.summary());
            st.bytes_received = self.bytes_received;
            if let Some(s) = self.stream.as_deref() {
                st.codec = audiocodec::codec_label(s.decode.codec());
            }
            st.transport = self.transport().as_str().to_owned();
            st
        })
    }

    /// Takes one datagram that arrived at `now` from `from`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        if from != self.config.server {
            self.tracker.on_foreign();
            return;
        }
        if self.multicast.path.is_some() && self.is_copy(now, audio_seq(datagram)) {
            return;
        }
        self.bytes_received += datagram.len() as u64;
        if self.stream.is_some() {
            self.handle_stream(now, datagram);
        } else {
            self.handle_handshake(now, datagram);
        }
    }

    fn handle_handshake(&mut self, now: Instant, datagram: &[u8]) {
        let p = match proto::decode(datagram) {
            Ok(p) => p,
            // A server of another version answering in its own: no point retrying.
            Err(DecodeError::UnsupportedVersion { version, .. }) => {
                self.fail(Event::Rejected(RejectReason::UnsupportedVersion {
                    supported: version,
                }));
                return;
            }
            Err(_) => {
                self.tracker.on_garbage();
                return;
            }
        };
        match p.msg {
            Message::Challenge(c) => {
                self.handshake.answered(Asked::Connect, now);
                // A second Challenge (to a resent Connect) sends the Join again: its Welcome
                // could then answer either copy.
                self.handshake.asked = match self.handshake.cookie {
                    None => Some((Asked::Join, now)),
                    Some(_) => None,
                };
                self.handshake.cookie = Some(c.cookie);
                let join = self.join(c.cookie);
                self.transmits.push_back(join);
                self.events.push_back(Event::Challenged);
            }
            Message::Welcome(w) => {
                self.handshake.answered(Asked::Join, now);
                if self.finish_handshake(&w.noise) {
                    self.welcome(now, w.token, w.info);
                }
            }
            Message::Reject(r) => self.fail(Event::Rejected(r.reason)),
            // Before our Welcome audio cannot be placed; the Welcome will come again.
            Message::Audio(_) => {}
            Message::Error(e) => self.events.push_back(Event::ServerError(e)),
            _ => self.tracker.on_garbage(),
        }
    }

    fn join(&self, cookie: [u8; COOKIE_LEN]) -> Message {
        Message::Join(Join {
            cookie,
            name: self.config.name.as_str().to_owned(),
            codecs: SUPPORTED_CODECS,
            features: SUPPORTED_FEATURES
                | if self.config.sync {
                    proto::FEATURE_SYNC
                } else {
                    0
                }
                | if self.multicast.capable {
                    proto::FEATURE_MULTICAST
                } else {
                    0
                },
            noise: match &self.keys {
                Keys::Handshake { msg1, .. } => msg1.clone(),
                _ => Bytes::new(),
            },
        })
    }

    /// A private room's handshake ends with the `Welcome`'s Noise message 2; a key that does not
    /// match, or a key on one side only, ends the session as `Reject{BadKey}` would. True when
    /// the `Welcome` may be used.
    fn finish_handshake(&mut self, noise: &[u8]) -> bool {
        let finished = match &mut self.keys {
            Keys::Open => noise.is_empty(),
            Keys::Handshake { initiator, .. } => match initiator.take() {
                Some(i) => match i.finish(noise) {
                    Ok((session, stream)) => {
                        self.keys = Keys::Joined(seal::ListenerKeys::new(
                            session,
                            stream,
                            STREAM_KEY_OVERLAP,
                        ));
                        true
                    }
                    Err(_) => false,
                },
                None => false,
            },
            Keys::Joined(_) => false,
        };
        if !finished {
            self.fail(Event::Rejected(RejectReason::BadKey));
        }
        finished
    }

    fn welcome(&mut self, now: Instant, token: Token, info: StreamInfo) {
        if let Err(detail) = check_welcome(&info) {
            self.transmits.push_back(Message::Leave(Leave {
                token,
                reason: LeaveReason::Done,
            }));
            self.fail(Event::Unplayable(detail));
            return;
        }
        let format = audiocodec::Format {
            sample_rate: info.sample_rate,
            channels: info.channels,
        };
        let decode = match DecodeStage::new(
            info.codec,
            format,
            info.frames_per_packet,
            info.total_frames,
        ) {
            Ok(d) => d,
            Err(e) => {
                self.transmits.push_back(Message::Leave(Leave {
                    token,
                    reason: LeaveReason::Done,
                }));
                self.fail(Event::Unplayable(e.to_string()));
                return;
            }
        };
        let jb = JitterBuffer::new(&info, self.config.latency, self.config.sink_lead);
        // Repair only feeds a playout: a session that only counts asks for nothing.
        let mut repair = repair::Receiver::new(
            info.repair
                .fec
                .filter(|_| self.config.playout)
                .and_then(|f| repair::FecParams::new(f.k, f.m).ok()),
            self.config.playout && info.repair.retransmit_ms > 0,
            repair::NackConfig {
                step: Some(duration_of(
                    u64::from(info.frames_per_packet),
                    info.sample_rate,
                )),
                ..repair::NackConfig::default()
            },
        );
        repair.expect_from(info.start_seq);
        if let Some(rtt) = self.handshake.rtt {
            repair.on_rtt_sample(rtt);
        }
        let interval = Duration::from_micros(u64::from(info.interval_us));
        let mut tracker = Tracker::new(info.sample_rate, info.start_seq, now);
        tracker
            .set_tick_frames(u64::from(info.interval_us) * u64::from(info.sample_rate) / 1_000_000);
        tracker.count_ignored(self.tracker.garbage(), self.tracker.foreign());
        self.tracker = tracker;
        self.stream = Some(Box::new(Stream {
            token,
            received_end: info.start_ts,
            info: info.clone(),
            decode,
            jb,
            silence: self.config.timeout.max(interval * 2),
            last_heard: now,
            next_report: now + REPORT_INTERVAL,
            end: None,
            playing: false,
            underruns: 0,
            repair,
            deliveries: Vec::new(),
            last_pull: None,
        }));
        if self.config.playout && self.config.sync && info.playout_delay_us > 0 {
            // Every listener plays frame F at due(F) + the room's delay; one that asked for more
            // buffering than that (its latency and its sink's lead) plays that much later.
            let target = self
                .stream
                .as_ref()
                .map_or(self.config.latency, |s| s.jb.target());
            let own = (target + self.config.sink_lead).as_micros();
            let delay = u64::from(info.playout_delay_us).max(own as u64);
            self.sync.start(
                now,
                Schedule {
                    ts: info.timeline.ts,
                    server_us: info.timeline.server_us,
                    rate: info.sample_rate,
                    playout_delay_us: delay,
                },
                info.channels,
            );
        }
        if self.multicast.capable
            && let Some(g) = info.multicast
        {
            self.multicast.path = Some(crate::multicast::GroupPath::new(
                now,
                g.socket_addr(),
                interval,
            ));
        }
        self.phase = Phase::Streaming;
        self.events.push_back(Event::Joined(info));
    }

    fn handle_stream(&mut self, now: Instant, datagram: &[u8]) {
        let Ok(mut p) = proto::decode(datagram) else {
            self.tracker.on_garbage();
            return;
        };
        if let Keys::Joined(keys) = &mut self.keys {
            // A private room: only what opens under our keys counts, or even keeps us waiting.
            let opened = match &p.msg {
                Message::Sealed(sealed) => {
                    match seal::wire::open_datagram(p.seq, sealed, |k, t, q, c, o| {
                        keys.open(now, k, t, q, c, o)
                    }) {
                        Ok(inner) => Some(inner),
                        // The copies of one End share their seq (§4.7), and a seq asked for
                        // again before the first answer arrived is resent twice: authentic
                        // repeats (a tampered copy is Forged), not replay attacks; the first
                        // copy that opened already counted.
                        Err(seal::SealError::Replayed(_))
                            if sealed.inner_type == MessageType::End as u8
                                || sealed.inner_type == MessageType::Resent as u8 =>
                        {
                            return;
                        }
                        Err(_) => None,
                    }
                }
                // Repeats of the handshake's answers, in the clear by design.
                Message::Welcome(_) | Message::Challenge(_) => return,
                _ => None,
            };
            match opened {
                Some(Packet {
                    msg: Message::Rekey(r),
                    ..
                }) => {
                    keys.rekey(r.key_id, r.key);
                    if let Some(s) = self.stream.as_deref_mut() {
                        s.last_heard = now;
                    }
                    return;
                }
                Some(inner) => p = inner,
                None => {
                    self.tracker.on_garbage();
                    return;
                }
            }
        }
        let Some(s) = self.stream.as_deref_mut() else {
            return;
        };
        s.last_heard = now;
        match p.msg {
            // PCM that is not a whole number of frames (or none): malformed for this stream
            // (docs/PROTOCOL.md §4.3), counted and dropped before it counts as received.
            Message::Audio(a)
                if s.decode.codec() == AudioCodec::Pcm
                    && (a.payload.is_empty()
                        || a.payload.len() % s.info.bytes_per_frame().max(1) != 0) =>
            {
                self.tracker.on_garbage();
            }
            Message::Audio(a) => {
                if self.tracker.on_audio(now, p.seq, a.ts) == Arrival::New {
                    let frames = match s.decode.codec() {
                        AudioCodec::Pcm => {
                            (a.payload.len() / s.info.bytes_per_frame().max(1)) as u64
                        }
                        _ => u64::from(s.info.frames_per_packet),
                    };
                    s.received_end = s.received_end.max(a.ts.saturating_add(frames));
                    if self.config.playout {
                        let deadline = s.deadline(now, a.ts);
                        s.repair.set_playing(s.jb.state() == State::Playing);
                        let mut out = std::mem::take(&mut s.deliveries);
                        s.repair
                            .on_audio(now, p.seq, a.ts, &a.payload, deadline, &mut out);
                        let bad = s.deliver(&mut out);
                        self.tracker.count_garbage(bad);
                        s.deliveries = out;
                    }
                }
            }
            // A resent Audio: played if still missing, never counted as received.
            Message::Resent(a)
                if self.config.playout
                    && !a.payload.is_empty()
                    && (s.decode.codec() != AudioCodec::Pcm
                        || a.payload.len() % s.info.bytes_per_frame().max(1) == 0) =>
            {
                let mut out = std::mem::take(&mut s.deliveries);
                s.repair.on_resent(now, p.seq, a.ts, &a.payload, &mut out);
                let bad = s.deliver(&mut out);
                self.tracker.count_garbage(bad);
                s.deliveries = out;
            }
            Message::Parity(par) if self.config.playout => {
                let mut out = std::mem::take(&mut s.deliveries);
                let _ = s.repair.on_parity(
                    now,
                    par.group_seq,
                    par.k,
                    par.m,
                    par.index,
                    &par.shard,
                    &mut out,
                );
                let bad = s.deliver(&mut out);
                self.tracker.count_garbage(bad);
                s.deliveries = out;
            }
            Message::Resent(_) | Message::Parity(_) => {}
            Message::TimeResponse(r) => {
                // An answer to no request of ours (forged, stale, duplicated) is dropped; a
                // taken one is a round trip for loss repair too.
                if let Ok(rtt) = self.sync.on_response(now, r.t1, r.t2, r.t3) {
                    s.repair.on_rtt_sample(rtt);
                }
            }
            Message::End(e) if s.end.is_none() => {
                // Trailing loss of a finished stream is concealed to the end, but never past
                // what the missing datagrams could have held: a truncated file (whose header
                // overstates its length) or a lying server cannot make us play hours of silence.
                let end_ts = match (e.reason, self.tracker.highest(), e.last_seq) {
                    (proto::EndReason::Finished, Some(h), Some(l)) if l > h => {
                        let most = (l - h).saturating_mul(u64::from(s.info.frames_per_packet));
                        s.info
                            .total_frames
                            .map(|t| t.min(s.received_end.saturating_add(most)))
                    }
                    _ => None,
                };
                let left = end_ts
                    .unwrap_or(s.received_end)
                    .saturating_sub(s.jb.position());
                let reason = ExitReason::from(e.reason);
                s.end = Some((
                    reason,
                    now + duration_of(left, s.info.sample_rate) + s.silence,
                ));
                self.tracker.on_end(e.last_seq);
                self.phase = Phase::PlayingOut;
                if !self.config.playout {
                    // Nothing buffered, nothing to play out.
                    self.events.push_back(Event::EndReceived {
                        reason,
                        buffered: Duration::ZERO,
                    });
                    self.close(reason);
                    return;
                }
                if let Some(l) = e.last_seq {
                    // Trailing loss is still worth asking for while the buffer plays out.
                    let deadline = s.deadline(now, s.received_end);
                    s.repair.on_end(now, l, deadline);
                }
                s.jb.end(end_ts);
                self.events.push_back(Event::EndReceived {
                    reason,
                    buffered: s.jb.buffered(),
                });
            }
            // Repeats of End, or of handshake answers.
            Message::End(_) | Message::Welcome(_) | Message::Challenge(_) => {}
            Message::Error(e) if e.code == ErrorCode::NotJoined => {
                self.events.push_back(Event::Evicted(e));
                self.close(ExitReason::Evicted);
            }
            Message::Error(e) => self.events.push_back(Event::ServerError(e)),
            _ => self.tracker.on_garbage(),
        }
        self.repair_step(now);
    }

    /// Queues the Nacks due at `now` and brings the repair counters up to date.
    fn repair_step(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(s) = self.stream.as_deref_mut() else {
            return;
        };
        while let Some(n) = s.repair.poll_nack(now) {
            self.transmits.push_back(Message::Nack(proto::Nack {
                token: s.token,
                base: n.base,
                mask: n.mask,
            }));
        }
        let r = s.repair.stats();
        self.tracker
            .set_recovered(r.recovered_fec, r.recovered_retransmit);
    }

    /// When [`Self::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.phase, self.stream.as_deref()) {
            (Phase::Handshake, _) => Some(self.handshake.retry_at),
            (Phase::Streaming, Some(s)) => {
                let t = (s.last_heard + s.silence).min(s.next_report);
                let t = match self.multicast.path.as_ref().and_then(|p| p.poll_timeout()) {
                    Some(g) => t.min(g),
                    None => t,
                };
                let t = if self.sync.is_synchronised() {
                    t.min(self.sync.next_request_at())
                } else {
                    t
                };
                Some(s.repair.poll_timeout().map_or(t, |r| r.min(t)))
            }
            (Phase::PlayingOut, Some(s)) => {
                let t = s.end.map(|(_, at)| at);
                match (t, s.repair.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        }
    }

    /// Runs the timers due at `now` (retransmission, reports, silence, the end's deadline,
    /// Nacks). Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.repair_step(now);
        match self.phase {
            Phase::Handshake => {
                let h = &mut self.handshake;
                if now < h.retry_at {
                    return;
                }
                if now >= h.deadline {
                    self.fail(Event::NoAnswer {
                        after: self.config.timeout,
                    });
                    return;
                }
                h.backoff = (h.backoff * 2).min(HANDSHAKE_RETRY_MAX);
                h.retry_at = (now + h.backoff).min(h.deadline);
                h.asked = None;
                match h.cookie {
                    Some(cookie) => {
                        let join = self.join(cookie);
                        self.transmits.push_back(join);
                    }
                    None => self.queue_connect(),
                }
            }
            Phase::Streaming => {
                let Some(s) = self.stream.as_deref_mut() else {
                    return;
                };
                if now >= s.last_heard + s.silence {
                    let silence = s.silence;
                    self.events.push_back(Event::TimedOut { silence });
                    self.close(ExitReason::Timeout);
                    return;
                }
                let mut flags = 0;
                if let Some(p) = self.multicast.path.as_mut() {
                    p.poll(now);
                    if p.take_report_now() {
                        s.next_report = s.next_report.min(now);
                    }
                    flags = p.flags();
                }
                if self.sync.is_synchronised()
                    && let Some(t1) = self.sync.poll_request(now)
                {
                    self.transmits.push_back(Message::TimeRequest(TimeRequest {
                        token: s.token,
                        t1,
                        pad: [0; TIME_REQUEST_PAD],
                    }));
                }
                if now >= s.next_report {
                    s.next_report = now + REPORT_INTERVAL;
                    let buffered_ms = s.jb.buffered().as_millis().min(u128::from(u32::MAX)) as u32;
                    let mut r = self.tracker.report(s.token, &s.jb.counters(), buffered_ms);
                    let sync = self.sync.report();
                    r.clock_offset_us = sync.clock_offset_us;
                    r.drift_ppb = sync.drift_ppb;
                    r.playout_error_us = sync.playout_error_us;
                    r.resyncs = sync.resyncs;
                    r.flags = flags;
                    self.transmits.push_back(Message::Report(r));
                }
            }
            Phase::PlayingOut => {
                if let Some((reason, at)) = self.stream.as_deref().and_then(|s| s.end)
                    && now >= at
                {
                    self.events.push_back(Event::EndOverdue);
                    self.close(reason);
                }
            }
            Phase::Closed => {}
        }
    }

    /// The listener stops at `now` for `why` (Ctrl-C, SIGTERM, a device error): the session
    /// ends ([`ExitReason::Interrupted`]) and a `Leave` saying `why` is queued. Does nothing
    /// once closed.
    pub fn leave(&mut self, _now: Instant, why: LeaveReason) {
        if self.phase != Phase::Closed {
            self.leave_reason = Some(why);
            self.close(ExitReason::Interrupted);
        }
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        while let Some(msg) = self.transmits.pop_front() {
            self.buf.clear();
            let p = Packet::new(self.seq, msg);
            self.seq += 1;
            // Our control messages are small; one that did not fit would be skipped, not sent.
            if proto::encode(&p, &mut self.buf).is_ok() {
                let plain = self.buf.split().freeze();
                let contents = match &self.keys {
                    Keys::Joined(keys) => {
                        match seal::wire::seal_datagram(
                            &plain,
                            seal::LISTENER_KEY_ID,
                            |t, q, b, o| keys.seal(t, q, b, o),
                        ) {
                            Some(sealed) => sealed,
                            None => continue,
                        }
                    }
                    _ => plain,
                };
                return Some(Transmit {
                    destination: self.config.server,
                    contents,
                });
            }
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Hands out up to `max_frames` frames of playout (interleaved i16, appended to `out`) that
    /// the sink wants at `now`; returns how many. Fewer (often 0) while buffering, before the
    /// `Welcome` and once closed. When the end has played out, the session ends here.
    pub fn pull(&mut self, now: Instant, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.pull_inner(now, max_frames, out, false)
    }

    /// What a relay can forward now: the jitter buffer's [`JitterBuffer::ready`] (contiguous
    /// frames, then the hole after them); `(0, 0)` before the `Welcome` and once closed.
    pub fn ready(&self) -> (u64, u64) {
        match (self.phase, self.stream.as_deref()) {
            (Phase::Closed, _) | (_, None) => (0, 0),
            (_, Some(s)) => s.jb.ready(),
        }
    }

    /// True once the server's `End` has arrived (the rest is being played out).
    pub fn end_received(&self) -> bool {
        self.stream.as_deref().is_some_and(|s| s.end.is_some())
    }

    /// Hands out exactly `max_frames` frames now, whatever the buffer holds (missing audio
    /// concealed by the codec or faded): for a relay that forwards audio as it arrives and
    /// decides itself when a hole is lost ([`Self::ready`]). Fewer only once the stream has
    /// finished; the session ends here when the end has played out, as with [`Self::pull`].
    pub fn pull_now(&mut self, now: Instant, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.pull_inner(now, max_frames, out, true)
    }

    fn pull_inner(
        &mut self,
        now: Instant,
        max_frames: usize,
        out: &mut Vec<i16>,
        due: bool,
    ) -> usize {
        if self.phase == Phase::Closed || max_frames == 0 {
            return 0;
        }
        let Some(s) = self.stream.as_deref_mut() else {
            return 0;
        };
        let got = if due {
            s.jb.pull_due_with(max_frames, out, &mut s.decode)
        } else {
            s.jb.pull_with(max_frames, out, &mut s.decode)
        };
        if got > 0 {
            s.pulled(now);
        }
        self.after_pull(got > 0);
        got
    }

    /// What follows audio leaving the jitter buffer: `Playing` at the first output, `Underrun`
    /// for a new underrun, and the close once an ended stream has played out.
    fn after_pull(&mut self, played: bool) {
        let Some(s) = self.stream.as_deref_mut() else {
            return;
        };
        if played && !s.playing {
            s.playing = true;
            self.events.push_back(Event::Playing {
                buffered: s.jb.buffered(),
            });
        }
        let u = s.jb.counters().underruns;
        if u > s.underruns {
            s.underruns = u;
            self.events.push_back(Event::Underrun {
                at: duration_of(s.jb.position(), s.info.sample_rate),
                target: s.jb.target(),
            });
        }
        if let Some((reason, _)) = s.end
            && s.jb.is_finished()
        {
            self.close(reason);
        }
    }

    /// Gives `sink` what it asks for at `now` ([`Sink::demand`], [`Self::pull`], [`Sink::write`]).
    /// Returns when to do so again at the latest ([`Sink::refill_at`]), or `None` when the
    /// jitter buffer could not supply it all (buffering, finished): only arriving audio (or
    /// `End`) changes that.
    pub fn feed(
        &mut self,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> Result<Option<Instant>, SinkError> {
        if self.sync.give_up_unanswered(now) {
            self.events.push_back(Event::Unsynchronised);
        }
        if self.sync.is_synchronised() {
            return self.feed_synced(now, sink);
        }
        let want = sink.demand(now);
        let mut got = 0;
        let first = self.stream.as_ref().map(|s| s.jb.position());
        let at = sink.output_at(now);
        if want > 0 {
            let mut out = std::mem::take(&mut self.scratch);
            out.clear();
            got = self.pull(now, want, &mut out);
            let written = if got > 0 {
                sink.write(now, &out)
            } else {
                Ok(())
            };
            self.scratch = out;
            written?;
        }
        if let Some(first) = first
            && got > 0
        {
            self.fed = Some(Fed {
                first,
                frames: got as u64,
                at,
            });
        }
        Ok((got == want).then(|| sink.refill_at(now)))
    }

    /// [`Self::feed`] on the room's schedule ([`crate::schedule`]).
    fn feed_synced(
        &mut self,
        now: Instant,
        sink: &mut dyn Sink,
    ) -> Result<Option<Instant>, SinkError> {
        if self.phase == Phase::Closed {
            return Ok(None);
        }
        let Some(s) = self.stream.as_deref_mut() else {
            return Ok(None);
        };
        let Some(result) = self.sync.feed(now, &mut s.jb, sink) else {
            return Ok(None);
        };
        let (next, fed) = result?;
        let played = fed.is_some();
        if played {
            s.pulled(now);
        }
        if let Some(f) = fed {
            self.fed = Some(f);
        }
        self.after_pull(played);
        Ok(next)
    }

    /// Ends the stream for `reason`: queues `Leave` (when joined) and [`Event::Ended`].
    fn close(&mut self, reason: ExitReason) {
        self.phase = Phase::Closed;
        self.exit = Some(reason);
        if let Some(s) = self.stream.as_deref() {
            let why = self.leave_reason.unwrap_or(match reason {
                ExitReason::Timeout => LeaveReason::Timeout,
                ExitReason::Interrupted => LeaveReason::Interrupted,
                _ => LeaveReason::Done,
            });
            self.transmits.push_back(Message::Leave(Leave {
                token: s.token,
                reason: why,
            }));
        }
        self.events.push_back(Event::Ended(reason));
    }

    /// Ends a handshake that failed with the terminal `event`.
    fn fail(&mut self, event: Event) {
        self.phase = Phase::Closed;
        self.events.push_back(event);
    }

    fn queue_connect(&mut self) {
        // Header + max_version (1) + the padding's length prefix (8) + the padding.
        let pad = MIN_CONNECT_LEN.saturating_sub(HEADER_LEN + 1 + 8);
        self.transmits.push_back(Message::Connect(Connect {
            max_version: proto::VERSION,
            padding: Bytes::from(vec![0u8; pad]),
        }));
    }
}

/// The header seq of an Audio datagram, read without decoding the body (`None` for any other).
fn audio_seq(datagram: &[u8]) -> Option<u64> {
    let header = datagram.get(..proto::limits::HEADER_LEN)?;
    if header[..2] != proto::MAGIC
        || header[2] != proto::VERSION
        || header[3] != proto::MessageType::Audio as u8
    {
        return None;
    }
    Some(u64::from_le_bytes(header.get(4..12)?.try_into().ok()?))
}

/// Checks that a `Welcome` describes a stream this client can play: every buffer sized from it
/// (the jitter buffer, concealment, the sink, the WAV header) stays sane however hostile the
/// server is. The error says what is wrong, for the user.
pub fn check_welcome(info: &StreamInfo) -> Result<(), String> {
    if !(MIN_WELCOME_RATE..=MAX_WELCOME_RATE).contains(&info.sample_rate) {
        return Err(format!(
            "sample rate {} Hz (expected {MIN_WELCOME_RATE}..={MAX_WELCOME_RATE})",
            info.sample_rate
        ));
    }
    if info.channels == 0 || info.channels > MAX_WELCOME_CHANNELS {
        return Err(format!(
            "{} channels (expected 1..={MAX_WELCOME_CHANNELS})",
            info.channels
        ));
    }
    let max_fpp = MAX_PAYLOAD / info.bytes_per_frame();
    if info.frames_per_packet == 0 || info.frames_per_packet as usize > max_fpp {
        return Err(format!(
            "{} frames per packet (expected 1..={max_fpp})",
            info.frames_per_packet
        ));
    }
    if info.codec.bit() & SUPPORTED_CODECS == 0 {
        return Err(format!(
            "codec {} is not one this listener decodes",
            info.codec.name()
        ));
    }
    let interval = Duration::from_micros(u64::from(info.interval_us));
    if interval.is_zero() || interval > MAX_WELCOME_INTERVAL {
        return Err(format!("interval {interval:?}"));
    }
    Ok(())
}
