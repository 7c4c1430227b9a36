//! A simulated room: one `streamd` [`Endpoint`] and N `listen` [`Session`]s, each with its
//! jitter buffer and a virtual sink, over a simulated network, all on one simulated clock.
//! Deterministic and discrete-event: an hour of stream runs in seconds, and the same seeds give
//! the same run, event for event.
//!
//! ```text
//! let mut room = Room::new(room::server_config(Duration::from_millis(20)), source)
//!     .listener(ListenerSpec::new().join_at(secs(1)).leave_at(secs(30))
//!         .down(lossy).up(Impairment::none()).delay(ms(15), ms(40)).sink(Playback::Hash))
//!     .shutdown_at(secs(60));
//! room.run_to_end();
//! let out = room.outcome();   // per listener: stats, exit, events, played, path reports
//! ```
//!
//! # Time
//! The clock is a base [`Instant`] (read once, in [`Room::new`]; [`Room::with_base`] takes one)
//! plus offsets. Every input to the cores is such an instant; every instant the room reports is
//! a [`Duration`] since the base, so no result depends on the base.
//!
//! # Network
//! Per listener, a downlink (server → listener) and an uplink, each a [`path::Path`]: scripted
//! drops, an optional cut, an [`crate::impair::ImpairedLink`] and a fixed one-way delay (paths
//! may be asymmetric). The downlink impairs `Audio` only unless the [`Impairment`] says
//! `impair_control`, exactly like the proxy; the uplink carries only control datagrams, so it
//! always impairs everything. Each link's engine stream is the listener's index, so listeners
//! sharing a seed are impaired differently yet reproducibly.
//!
//! # The step
//! [`Room::run_until`] repeatedly takes the earliest of: the scripted actions, the endpoint's
//! `poll_timeout`, and per listener its session's `poll_timeout`, its sink's refill instant and
//! both paths' next release or arrival. It advances the clock there and processes, always in
//! this order (ties between listeners in index order):
//!
//! 1. scripted actions due (joins, leaves, cuts, vanishing, shutdown), in the order scheduled;
//! 2. uplink arrivals at the server, listener by listener, each `Endpoint::handle` followed by
//!    draining its transmits into the downlinks and its events into the log;
//! 3. the endpoint's timer, if due (`handle_timeout`, drained the same way);
//! 4. each listener with something due: its downlink lets go what is due and delivers what
//!    arrives (`Session::handle`); then, as listen's shell does on every wake-up,
//!    `handle_timeout`, the events (the sink opens on `Joined`), `feed` the sink, the events
//!    again; then its transmits enter the uplink, which lets go what is due.
//!
//! Something that becomes due at the current instant (a zero delay) is processed by the next
//! step at the same instant.
//!
//! Each listener has its own clock ([`ListenerSpec::clock`]: an offset and a rate, listen's
//! `SimClock`): every instant it sees goes through `Listener::local`, and the instants it asks
//! to be woken at come back through the inverse. Its virtual device runs on that clock.
//!
//! # Extension points
//! - Clock sync: every instant a listener sees goes through `Listener::local`, which applies the
//!   listener's own clock ([`ListenerSpec::clock`]: offset and ppm), and its inverse for the
//!   instants the listener asks to be woken at.
//! - Codecs: the server's datagrams reach a listener only through its downlink (`route`) and
//!   the session; a codec is another [`AudioSource`]/`Endpoint` pairing on one side and the
//!   session's decoder on the other. Not built.
//! - Repair: `Parity` and `Resent` are more datagrams on the same paths, impaired like `Audio`
//!   (media) but never counted in the link's audio report; `Nack`s travel the uplink.
//!   Set `EndpointConfig::repair` to turn it on (`crates/testkit/tests/room_repair.rs`).

pub mod path;
pub mod sink;
pub mod source;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::session::{Phase, Session, SessionConfig};
use listen::simclock::SimClock;
use listen::sink::VIRTUAL_LEAD;
use listen::{Event as ListenEvent, ExitReason, Stats};
use proto::{EndReason, Message, MessageType, StreamInfo};
use streamd::endpoint::{
    AudioSource, Endpoint, EndpointConfig, EndpointStats, Event as ServerEvent, StartMode, Transmit,
};
use streamd::sessions::Event as TableEvent;

pub use path::{Delivered, PathReport};
pub use sink::{Playback, Played};
pub use source::{SampleHash, SyntheticSource};

use crate::impair::Impairment;
use path::{Path, peek};
use sink::RoomSink;

/// The server's address in every room.
pub const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000));

/// Port of listener 0; listener `i` is `127.0.0.1:(FIRST_LISTENER_PORT + i)`.
pub const FIRST_LISTENER_PORT: u16 = 10_000;

/// How long [`Room::run_to_end`] runs at most, unless [`Room::horizon`] says otherwise: an
/// endless stream that nobody shuts down stops here.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(48 * 3600);

/// Steps at one instant after which the room concludes a core keeps asking to be woken at an
/// instant it does nothing at, and panics naming it.
const MAX_STEPS_PER_INSTANT: u64 = 1_000_000;

/// The address of listener `index`.
pub fn listener_addr(index: usize) -> SocketAddr {
    let port = u16::try_from(index)
        .ok()
        .and_then(|i| FIRST_LISTENER_PORT.checked_add(i))
        .unwrap_or(u16::MAX);
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn listener_index(addr: SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(a) if *a.ip() == Ipv4Addr::LOCALHOST => {
            a.port().checked_sub(FIRST_LISTENER_PORT).map(usize::from)
        }
        _ => None,
    }
}

/// A server configuration for a room: `interval`, 64 listeners, streamd's default client
/// timeout, start at the first listener, no loop, the default MTU, a fixed cookie key.
pub fn server_config(interval: Duration) -> EndpointConfig {
    EndpointConfig {
        interval,
        max_clients: 64,
        client_timeout: proto::limits::DEFAULT_CLIENT_TIMEOUT,
        start: StartMode::FirstClient,
        looping: false,
        mtu: proto::limits::DEFAULT_MTU,
        cookie_key: (0x5eed, 0xc00c1e),
        ..EndpointConfig::default()
    }
}

/// One simulated listener: when it comes and goes, its network path, its sink, its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    /// When its session starts (sends `Connect`).
    pub join_at: Duration,
    /// When the user interrupts it ([`Session::leave`]), if ever.
    pub leave_at: Option<Duration>,
    /// From when its uplink drops everything, if ever.
    pub cut_uplink_at: Option<Duration>,
    /// When it disappears without a word (no `Leave`, nothing processed after), if ever.
    pub vanish_at: Option<Duration>,
    /// Server → listener impairment.
    pub down: Impairment,
    /// Listener → server impairment (every datagram is impaired).
    pub up: Impairment,
    /// Fixed one-way delay server → listener.
    pub delay_down: Duration,
    /// Fixed one-way delay listener → server.
    pub delay_up: Duration,
    /// What its sink does with the audio.
    pub playback: Playback,
    /// Jitter-buffer target (`--latency`).
    pub latency: Duration,
    /// Handshake and silence timeout (`--timeout`).
    pub timeout: Duration,
    /// Downlink datagrams dropped on purpose: the n-th (from 0) of a type.
    pub drop_down: Vec<(MessageType, u64)>,
    /// Uplink datagrams dropped on purpose: the n-th (from 0) of a type.
    pub drop_up: Vec<(MessageType, u64)>,
    /// Its clock against the room's: ahead by this many ns ...
    pub clock_offset_ns: i64,
    /// ... and this many parts per billion fast (its virtual device with it).
    pub clock_ppb: i64,
    /// Synchronised playout ([`SessionConfig::sync`], `listen --sync on`).
    pub sync: bool,
    /// Keep a playout log ([`Listener::playout`]): when each fed run of frames leaves its
    /// sink, on the room's clock.
    pub playout_log: bool,
}

impl Default for ListenerSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ListenerSpec {
    /// Joins at 0, never leaves, a perfect zero-delay network, listen's default latency and
    /// timeout, a sink that only counts.
    pub fn new() -> Self {
        Self {
            join_at: Duration::ZERO,
            leave_at: None,
            cut_uplink_at: None,
            vanish_at: None,
            down: Impairment::none(),
            up: Impairment::none(),
            delay_down: Duration::ZERO,
            delay_up: Duration::ZERO,
            playback: Playback::Discard,
            latency: listen::session::DEFAULT_LATENCY,
            timeout: listen::session::DEFAULT_TIMEOUT,
            drop_down: Vec::new(),
            drop_up: Vec::new(),
            clock_offset_ns: 0,
            clock_ppb: 0,
            sync: false,
            playout_log: false,
        }
    }

    /// Plays in step with the room ([`SessionConfig::sync`]) and keeps a playout log
    /// ([`Listener::playout`]).
    pub fn synced(mut self) -> Self {
        self.sync = true;
        self.playout_log = true;
        self
    }

    /// Its clock reads `offset_us` ahead of the room's (negative: behind) and runs `ppm`
    /// parts per million fast, like `listen --sim-clock-offset --sim-clock-ppm`.
    pub fn clock(mut self, offset_us: i64, ppm: f64) -> Self {
        self.clock_offset_ns = offset_us.saturating_mul(1_000);
        self.clock_ppb = (ppm * 1e3).round() as i64;
        self
    }

    /// Starts the session at `t`.
    pub fn join_at(mut self, t: Duration) -> Self {
        self.join_at = t;
        self
    }

    /// The user interrupts at `t`.
    pub fn leave_at(mut self, t: Duration) -> Self {
        self.leave_at = Some(t);
        self
    }

    /// The uplink drops everything from `t`.
    pub fn cut_uplink_at(mut self, t: Duration) -> Self {
        self.cut_uplink_at = Some(t);
        self
    }

    /// The listener disappears at `t`.
    pub fn vanish_at(mut self, t: Duration) -> Self {
        self.vanish_at = Some(t);
        self
    }

    /// Server → listener impairment.
    pub fn down(mut self, imp: Impairment) -> Self {
        self.down = imp;
        self
    }

    /// Listener → server impairment.
    pub fn up(mut self, imp: Impairment) -> Self {
        self.up = imp;
        self
    }

    /// Fixed one-way delays, server → listener and listener → server.
    pub fn delay(mut self, down: Duration, up: Duration) -> Self {
        self.delay_down = down;
        self.delay_up = up;
        self
    }

    /// What the sink does with the audio.
    pub fn sink(mut self, playback: Playback) -> Self {
        self.playback = playback;
        self
    }

    /// Jitter-buffer target.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Handshake and silence timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Drops the `nth` (from 0) downlink datagram of type `t`.
    pub fn drop_down(mut self, t: MessageType, nth: u64) -> Self {
        self.drop_down.push((t, nth));
        self
    }

    /// Drops the `nth` (from 0) uplink datagram of type `t`.
    pub fn drop_up(mut self, t: MessageType, nth: u64) -> Self {
        self.drop_up.push((t, nth));
        self
    }
}

/// Whether a listener's session is being driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Before its join.
    Waiting,
    /// Joined or joining (also once closed: its paths still run).
    Active,
    /// Gone without a word: nothing it receives is processed.
    Vanished,
}

/// A scripted action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Join(usize),
    Leave(usize),
    CutUplink(usize),
    Vanish(usize),
    Shutdown,
}

/// What the network says a listener's statistics must be: computed from the audio that
/// reached its session ([`Delivered`]), its `Welcome.start_seq` and the `End.last_seq` it got,
/// by the definitions of listen's `Tracker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetCounts {
    /// `max(highest arrived, End.last_seq) − min(start_seq, lowest arrived) + 1`.
    pub expected: u64,
    /// Distinct seqs arrived.
    pub received: u64,
    /// `expected − received`.
    pub lost: u64,
    /// Repeated arrivals.
    pub duplicates: u64,
    /// First arrivals below an earlier arrival.
    pub out_of_order: u64,
}

impl NetCounts {
    /// The same five numbers from listen's statistics, for `assert_eq!`.
    pub fn of(s: &Stats) -> Self {
        Self {
            expected: s.expected,
            received: s.received,
            lost: s.lost,
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
        }
    }
}

/// One simulated listener and everything observed about it.
#[derive(Debug)]
pub struct Listener {
    index: usize,
    addr: SocketAddr,
    spec: ListenerSpec,
    presence: Presence,
    session: Option<Session>,
    sink: Option<RoomSink>,
    /// When the sink wants audio next (armed while the jitter buffer supplies it).
    refill: Option<Instant>,
    events: Vec<(Duration, ListenEvent)>,
    welcome: Option<StreamInfo>,
    end: Option<proto::End>,
    delivered: Delivered,
    down: Path,
    up: Path,
    /// Last instant the server got a datagram from it.
    heard_by_server: Option<Duration>,
    base: Instant,
    /// Its clock.
    clock: SimClock,
    /// What the sink played, when ([`ListenerSpec::playout_log`]).
    playout: Vec<PlayoutPoint>,
    /// [`Listener::next_due`] as last computed; recomputed when `dirty`.
    due: Option<Instant>,
    /// Something changed since `due` was computed.
    dirty: bool,
}

impl Listener {
    fn new(index: usize, spec: ListenerSpec, base: Instant) -> Self {
        let up_imp = Impairment {
            impair_control: true,
            ..spec.up.clone()
        };
        Self {
            index,
            addr: listener_addr(index),
            presence: Presence::Waiting,
            session: None,
            sink: None,
            refill: None,
            events: Vec::new(),
            welcome: None,
            end: None,
            delivered: Delivered::default(),
            down: Path::new(
                &spec.down,
                index as u64,
                spec.delay_down,
                spec.drop_down.clone(),
            ),
            up: Path::new(&up_imp, index as u64, spec.delay_up, spec.drop_up.clone()),
            heard_by_server: None,
            base,
            clock: SimClock::new(base, spec.clock_offset_ns, spec.clock_ppb),
            playout: Vec::new(),
            due: None,
            dirty: true,
            spec,
        }
    }

    /// The listener's view of the room's instant `now`: its own clock
    /// ([`ListenerSpec::clock`]).
    fn local(&self, now: Instant) -> Instant {
        self.clock.local(now)
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.base)
    }

    /// Its index in the room.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its playout log ([`ListenerSpec::playout_log`]): the room instant at which the first
    /// frame of each run fed to its sink left it, in order.
    pub fn playout(&self) -> &[PlayoutPoint] {
        &self.playout
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How it was specified.
    pub fn spec(&self) -> &ListenerSpec {
        &self.spec
    }

    /// Its session, once it joined.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Its final statistics, once its stream ended.
    pub fn stats(&self) -> Option<Stats> {
        self.session.as_ref().and_then(Session::stats)
    }

    /// Why its stream ended, once it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.session.as_ref().and_then(Session::exit_reason)
    }

    /// Every event its session gave, with the instant (since the room's start).
    pub fn events(&self) -> &[(Duration, ListenEvent)] {
        &self.events
    }

    /// The `Welcome` it joined with.
    pub fn welcome(&self) -> Option<&StreamInfo> {
        self.welcome.as_ref()
    }

    /// The first `End` that reached its session while streaming.
    pub fn end(&self) -> Option<proto::End> {
        self.end
    }

    /// What it played.
    pub fn played(&self) -> Played {
        self.sink.as_ref().map(RoomSink::played).unwrap_or_default()
    }

    /// The audio that reached its session while it counted audio.
    pub fn delivered(&self) -> &Delivered {
        &self.delivered
    }

    /// Its downlink's account.
    pub fn down(&self) -> PathReport {
        self.down.report()
    }

    /// Its uplink's account.
    pub fn up(&self) -> PathReport {
        self.up.report()
    }

    /// When the server last got a datagram from it (since the room's start).
    pub fn heard_by_server(&self) -> Option<Duration> {
        self.heard_by_server
    }

    /// Whether it vanished.
    pub fn vanished(&self) -> bool {
        self.presence == Presence::Vanished
    }

    /// What its statistics must be by the network's account; `None` before a `Welcome`.
    pub fn net_counts(&self) -> Option<NetCounts> {
        let start = self.welcome.as_ref()?.start_seq;
        let d = &self.delivered;
        let first = d.lowest.map_or(start, |l| l.min(start));
        let highest = match (d.highest, self.end.and_then(|e| e.last_seq)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let expected = highest.map_or(0, |h| h.saturating_sub(first) + 1);
        Some(NetCounts {
            expected,
            received: d.unique,
            lost: expected.saturating_sub(d.unique),
            duplicates: d.duplicates,
            out_of_order: d.out_of_order,
        })
    }

    /// When the first event matching `f` happened.
    pub fn event_time(&self, f: impl Fn(&ListenEvent) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
    }

    /// The instant it joined (`Event::Joined`).
    pub fn joined_at(&self) -> Option<Duration> {
        self.event_time(|e| matches!(e, ListenEvent::Joined(_)))
    }

    /// A snapshot of everything observed.
    pub fn outcome(&self) -> ListenerOutcome {
        ListenerOutcome {
            addr: self.addr,
            welcome: self.welcome.clone(),
            events: self.events.clone(),
            stats: self.stats(),
            exit: self.exit_reason(),
            end: self.end,
            played: self.played(),
            delivered: self.delivered.clone(),
            net: self.net_counts(),
            down: self.down(),
            up: self.up(),
            heard_by_server: self.heard_by_server,
            vanished: self.vanished(),
        }
    }

    /// [`Listener::next_due`], computed again only after something changed: the room asks
    /// every listener at every step.
    fn due(&mut self) -> Option<Instant> {
        if self.dirty {
            self.due = self.next_due();
            self.dirty = false;
        }
        self.due
    }

    /// When something is next due for it, the network included.
    fn next_due(&self) -> Option<Instant> {
        let mut t = min_opt(self.down.next_due(), self.up.next_due());
        if self.presence == Presence::Active
            && let Some(s) = &self.session
            && !s.is_closed()
        {
            let due = min_opt(s.poll_timeout(), self.refill);
            t = min_opt(t, due.map(|d| self.clock.real(d)));
        }
        t
    }

    /// Starts its session at `now`.
    fn join(&mut self, now: Instant) {
        self.dirty = true;
        if self.presence != Presence::Waiting {
            return;
        }
        self.presence = Presence::Active;
        let mut config = SessionConfig::new(SERVER);
        config.latency = self.spec.latency;
        config.timeout = self.spec.timeout;
        config.sink_lead = VIRTUAL_LEAD;
        config.sync = self.spec.sync;
        self.session = Some(Session::new(config, self.local(now)));
        self.drain(now);
    }

    /// The user interrupts at `now`.
    fn leave(&mut self, now: Instant) {
        self.dirty = true;
        if self.presence != Presence::Active {
            return;
        }
        let local = self.local(now);
        if let Some(s) = self.session.as_mut() {
            s.leave(local, proto::LeaveReason::Interrupted);
        }
        self.drain(now);
    }

    /// Everything due for it at `now` (step 4 of the module docs).
    fn step(&mut self, now: Instant) {
        self.dirty = true;
        self.down.release(now);
        let local = self.local(now);
        let mut woke = false;
        while let Some(bytes) = self.down.arrival(now) {
            woke = true;
            self.deliver(local, &bytes);
        }
        if self.presence == Presence::Active
            && let Some(s) = self.session.as_mut()
            && !s.is_closed()
        {
            woke |= s.poll_timeout().is_some_and(|t| t <= local)
                || self.refill.is_some_and(|t| t <= local);
            if woke {
                s.handle_timeout(local);
                self.drain_events(now);
                self.feed(now);
                self.drain_events(now);
            }
        }
        self.drain(now);
        self.up.release(now);
    }

    /// One datagram arrives from the server.
    fn deliver(&mut self, local: Instant, bytes: &Bytes) {
        if self.presence != Presence::Active {
            return;
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let phase = s.phase();
        if matches!(phase, Phase::Streaming | Phase::PlayingOut) {
            match peek(bytes) {
                Some((MessageType::Audio, seq)) => self.delivered.on_audio(seq),
                Some((MessageType::End, _)) if phase == Phase::Streaming && self.end.is_none() => {
                    if let Ok(p) = proto::decode(bytes)
                        && let Message::End(e) = p.msg
                    {
                        self.end = Some(e);
                    }
                }
                _ => {}
            }
        }
        s.handle(local, SERVER, bytes);
    }

    /// Gives the sink what it wants, as listen's shell does on every wake-up.
    fn feed(&mut self, now: Instant) {
        let local = self.local(now);
        let (Some(s), Some(sink)) = (self.session.as_mut(), self.sink.as_mut()) else {
            return;
        };
        if s.is_closed() {
            self.refill = None;
            return;
        }
        let fed = s.feed(local, sink);
        if let Some(f) = s.take_fed()
            && self.spec.playout_log
        {
            let buffered = s.jitter_buffer().map_or(Duration::ZERO, |jb| jb.buffered());
            self.playout.push(PlayoutPoint {
                frame: f.first,
                at: self.clock.real(f.at).saturating_duration_since(self.base),
                buffered,
            });
        }
        match fed {
            Ok(at) => self.refill = at,
            Err(_) => {
                // The room's sink never fails; a failure would stop the listener, as in listen.
                self.refill = None;
                s.leave(local, proto::LeaveReason::DeviceError);
            }
        }
    }

    /// Records the session's events, opening the sink on `Joined`.
    fn drain_events(&mut self, now: Instant) {
        let t = self.since(now);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        while let Some(e) = s.poll_event() {
            if let ListenEvent::Joined(info) = &e {
                self.welcome = Some(info.clone());
                self.sink = Some(RoomSink::new(
                    info.sample_rate,
                    info.channels,
                    self.spec.playback,
                ));
            }
            self.events.push((t, e));
        }
    }

    /// Events, then transmits into the uplink.
    fn drain(&mut self, now: Instant) {
        self.drain_events(now);
        if self.presence != Presence::Active {
            return;
        }
        let local = self.local(now);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        while let Some(t) = s.poll_transmit(local) {
            self.up.send(now, t.contents);
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Everything observed about one listener, comparable (`PartialEq`) for determinism checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerOutcome {
    /// Its address.
    pub addr: SocketAddr,
    /// The `Welcome` it joined with.
    pub welcome: Option<StreamInfo>,
    /// Its session's events with their instants.
    pub events: Vec<(Duration, ListenEvent)>,
    /// Its final statistics, once its stream ended.
    pub stats: Option<Stats>,
    /// Why its stream ended.
    pub exit: Option<ExitReason>,
    /// The first `End` it got while streaming.
    pub end: Option<proto::End>,
    /// What it played.
    pub played: Played,
    /// The audio that reached its session while it counted audio.
    pub delivered: Delivered,
    /// What its statistics must be by the network's account.
    pub net: Option<NetCounts>,
    /// Its downlink's account.
    pub down: PathReport,
    /// Its uplink's account.
    pub up: PathReport,
    /// When the server last got a datagram from it.
    pub heard_by_server: Option<Duration>,
    /// Whether it vanished.
    pub vanished: bool,
}

/// Everything observed about the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOutcome {
    /// Its counters.
    pub stats: EndpointStats,
    /// Its events with their instants, except `Report`s (counted in `reports`).
    pub events: Vec<(Duration, ServerEvent)>,
    /// `Report`s it handled.
    pub reports: u64,
    /// Why the stream ended, once it did.
    pub end_reason: Option<EndReason>,
    /// When it closed.
    pub closed_at: Option<Duration>,
}

/// A snapshot of the whole room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomOutcome {
    /// The room's clock (since its start).
    pub now: Duration,
    /// The server.
    pub server: ServerOutcome,
    /// Every listener, by index.
    pub listeners: Vec<ListenerOutcome>,
}

/// The server's side of the room: the endpoint and its log.
#[derive(Debug)]
struct Server<S> {
    endpoint: Endpoint<S>,
    events: Vec<(Duration, ServerEvent)>,
    reports: u64,
    closed_at: Option<Duration>,
    /// Datagrams for addresses that are no listener of the room (never expected).
    stray: u64,
}

impl<S: AudioSource> Server<S> {
    /// Drains transmits into the listeners' downlinks and events into the log.
    fn drain(&mut self, now: Instant, base: Instant, listeners: &mut [Listener]) {
        while let Some(t) = self.endpoint.poll_transmit(now) {
            match t {
                Transmit::One { dest, datagram } => {
                    match listener_index(dest).and_then(|i| listeners.get_mut(i)) {
                        Some(l) => route(l, now, datagram),
                        None => self.stray += 1,
                    }
                }
                Transmit::Fanout { datagrams, dests } => {
                    for dest in dests {
                        match listener_index(*dest).and_then(|i| listeners.get_mut(i)) {
                            Some(l) => {
                                for d in datagrams {
                                    route(l, now, d.clone());
                                }
                            }
                            None => self.stray += 1,
                        }
                    }
                }
            }
        }
        let t = now.saturating_duration_since(base);
        while let Some(e) = self.endpoint.poll_event() {
            if matches!(
                e,
                ServerEvent::Datagram {
                    event: TableEvent::Report(_),
                    ..
                }
            ) {
                self.reports += 1;
            } else {
                self.events.push((t, e));
            }
        }
        if self.closed_at.is_none() && self.endpoint.is_closed() {
            self.closed_at = Some(t);
        }
    }
}

/// A server datagram enters listener `l`'s downlink. EXTENSION POINT (codecs, repair): the
/// one place server traffic reaches a listener's path.
fn route(l: &mut Listener, now: Instant, datagram: Bytes) {
    l.dirty = true;
    l.down.send(now, datagram);
}

/// The simulated room; see the module docs.
#[derive(Debug)]
pub struct Room<S> {
    base: Instant,
    now: Instant,
    server: Server<S>,
    listeners: Vec<Listener>,
    actions: BTreeMap<(Instant, u64), Action>,
    scheduled: u64,
    horizon: Duration,
}

impl<S: AudioSource> Room<S> {
    /// A room whose server streams `source` as `config` says, its clock at 0.
    pub fn new(config: EndpointConfig, source: S) -> Self {
        Self::with_base(Instant::now(), config, source)
    }

    /// [`Room::new`] with the clock's base instant given.
    pub fn with_base(base: Instant, config: EndpointConfig, source: S) -> Self {
        let mut room = Self {
            base,
            now: base,
            server: Server {
                endpoint: Endpoint::new(base, config, source),
                events: Vec::new(),
                reports: 0,
                closed_at: None,
                stray: 0,
            },
            listeners: Vec::new(),
            actions: BTreeMap::new(),
            scheduled: 0,
            horizon: DEFAULT_HORIZON,
        };
        room.server.drain(base, base, &mut room.listeners);
        room
    }

    /// Adds a listener (builder form of [`Room::add_listener`]).
    pub fn listener(mut self, spec: ListenerSpec) -> Self {
        self.add_listener(spec);
        self
    }

    /// Adds a listener; returns its index. Scripted instants already past happen at once.
    pub fn add_listener(&mut self, spec: ListenerSpec) -> usize {
        let i = self.listeners.len();
        self.schedule(spec.join_at, Action::Join(i));
        if let Some(t) = spec.leave_at {
            self.schedule(t, Action::Leave(i));
        }
        if let Some(t) = spec.cut_uplink_at {
            self.schedule(t, Action::CutUplink(i));
        }
        if let Some(t) = spec.vanish_at {
            self.schedule(t, Action::Vanish(i));
        }
        self.listeners.push(Listener::new(i, spec, self.base));
        i
    }

    /// Shuts the server down at `t` (builder form of [`Room::schedule_shutdown`]).
    pub fn shutdown_at(mut self, t: Duration) -> Self {
        self.schedule_shutdown(t);
        self
    }

    /// Shuts the server down at `t` (Ctrl-C).
    pub fn schedule_shutdown(&mut self, t: Duration) {
        self.schedule(t, Action::Shutdown);
    }

    /// The longest [`Room::run_to_end`] runs (default [`DEFAULT_HORIZON`]).
    pub fn horizon(mut self, t: Duration) -> Self {
        self.horizon = t;
        self
    }

    fn schedule(&mut self, t: Duration, a: Action) {
        let at = (self.base + t).max(self.now);
        self.scheduled += 1;
        self.actions.insert((at, self.scheduled), a);
    }

    /// The room's clock, since its start.
    pub fn now(&self) -> Duration {
        self.now.saturating_duration_since(self.base)
    }

    /// The base instant every core was given offsets of.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// The server.
    pub fn endpoint(&self) -> &Endpoint<S> {
        &self.server.endpoint
    }

    /// The server, to set it up before the first tick ([`Endpoint::set_codec`]).
    pub fn endpoint_mut(&mut self) -> &mut Endpoint<S> {
        &mut self.server.endpoint
    }

    /// The server's events with their instants, except `Report`s.
    pub fn server_events(&self) -> &[(Duration, ServerEvent)] {
        &self.server.events
    }

    /// The listeners, by index.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Listener `i`.
    pub fn listener_at(&self, i: usize) -> Option<&Listener> {
        self.listeners.get(i)
    }

    /// Datagrams the server sent to addresses that are no listener (a routing bug if not 0).
    pub fn stray(&self) -> u64 {
        self.server.stray
    }

    /// A snapshot of everything observed.
    pub fn outcome(&self) -> RoomOutcome {
        let ep = &self.server.endpoint;
        RoomOutcome {
            now: self.now(),
            server: ServerOutcome {
                stats: ep.stats(),
                events: self.server.events.clone(),
                reports: self.server.reports,
                end_reason: ep.end_reason(),
                closed_at: self.server.closed_at,
            },
            listeners: self.listeners.iter().map(Listener::outcome).collect(),
        }
    }

    /// The earliest instant anything is due.
    fn next_instant(&mut self) -> Option<Instant> {
        let mut t = self.actions.keys().next().map(|(t, _)| *t);
        t = min_opt(t, self.server.endpoint.poll_timeout());
        for l in &mut self.listeners {
            t = min_opt(t, l.due());
        }
        t
    }

    /// Runs every step due up to `t` (since the start), then sets the clock to `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = self.base + t;
        self.run(end);
        self.now = self.now.max(end);
    }

    /// Runs until nothing is due any more (the server closed, every session ended, the
    /// network drained) or the horizon; returns the clock then (the last step's instant, or
    /// the horizon).
    pub fn run_to_end(&mut self) -> Duration {
        let horizon = self.base + self.horizon;
        self.run(horizon);
        if self.next_instant().is_some() {
            self.now = self.now.max(horizon);
        }
        self.now()
    }

    /// Every step due up to `end`; the clock stays at the last step.
    fn run(&mut self, end: Instant) {
        let mut last = self.now;
        let mut same = 0u64;
        while let Some(next) = self.next_instant() {
            if next > end {
                break;
            }
            let next = next.max(self.now);
            if next == last {
                same += 1;
                assert!(
                    same < MAX_STEPS_PER_INSTANT,
                    "the room is stuck at {:?}: something keeps asking to be woken there",
                    next.saturating_duration_since(self.base)
                );
            } else {
                same = 0;
                last = next;
            }
            self.step(next);
        }
    }

    /// One step at `now`; see the module docs for the order.
    fn step(&mut self, now: Instant) {
        self.now = now;
        let base = self.base;
        while let Some(entry) = self.actions.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let a = entry.remove();
            self.apply(now, a);
        }
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if !l.up.arriving(now) {
                continue;
            }
            let addr = l.addr;
            l.dirty = true;
            while let Some(bytes) = self.listeners[i].up.arrival(now) {
                self.listeners[i].heard_by_server = Some(now.saturating_duration_since(base));
                self.server.endpoint.handle(now, addr, &bytes);
                self.server.drain(now, base, &mut self.listeners);
            }
        }
        if self
            .server
            .endpoint
            .poll_timeout()
            .is_some_and(|t| t <= now)
        {
            self.server.endpoint.handle_timeout(now);
            self.server.drain(now, base, &mut self.listeners);
        }
        for l in &mut self.listeners {
            if l.due().is_some_and(|t| t <= now) {
                l.step(now);
            }
        }
    }

    fn apply(&mut self, now: Instant, a: Action) {
        match a {
            Action::Join(i) => self.listeners[i].join(now),
            Action::Leave(i) => self.listeners[i].leave(now),
            Action::CutUplink(i) => self.listeners[i].up.cut(),
            Action::Vanish(i) => {
                self.listeners[i].presence = Presence::Vanished;
                self.listeners[i].dirty = true;
            }
            Action::Shutdown => {
                self.server.endpoint.shutdown(now);
                self.server.drain(now, self.base, &mut self.listeners);
            }
        }
        if let Action::Join(i) | Action::Leave(i) = a {
            self.listeners[i].dirty = true;
            self.listeners[i].up.release(now);
        }
    }
}

/// One line of a simulated listener's playout log: stream frame `frame` left the sink at room
/// time `at` (`listen --playout-log`, on the room's clock instead of `CLOCK_REALTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutPoint {
    /// The stream frame.
    pub frame: u64,
    /// When it left the sink, since the room's start.
    pub at: Duration,
    /// What the jitter buffer held right after the feed.
    pub buffered: Duration,
}
