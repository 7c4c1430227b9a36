//! The listener table: stateless cookie handshake, capacity, keepalive, eviction and leave.
//! Sans-IO: [`Sessions::handle`] takes `(now, from, datagram)` and returns the encoded reply
//! (if any) and what happened; [`Sessions::evict_expired`] takes `now`.
//!
//! Handshake (docs/PROTOCOL.md): `Connect` → `Challenge{cookie}` → `Join{cookie}` →
//! `Welcome` | `Reject`. The cookie is a 128-bit keyed SipHash-2-4 of the peer's address and the
//! current epoch (`now / COOKIE_EPOCH`), with a random key chosen at start, so a server keeps
//! nothing for a peer until it proves it receives at its address, and a cookie is valid in its
//! epoch and the next one only.
//!
//! Anti-amplification (RFC 9000 §8): until an address has echoed a valid cookie, no reply to it
//! is larger than the datagram that caused it; see [`Sessions::handle`].
//!
//! Each session has a random 128-bit token, handed out in its `Welcome`: a `Report`, `Leave`,
//! `Nack` or `TimeRequest` counts only when it carries it, so a host that spoofs a listener's
//! address cannot make it leave or keep its session alive.
//!
//! A private room ([`Sessions::set_room_key`], docs/PROTOCOL.md §4.12): a valid `Join` must
//! also carry a Noise message 1 that opens under the room key, or it gets `Reject{BadKey}` and
//! no session; the `Welcome` carries message 2 and the stream key. From then on only `Sealed`
//! datagrams that open under the listener's session key count; its replies are sealed too.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::MAX_NAME;
use proto::limits::{COOKIE_EPOCH, MIN_CONNECT_LEN};
use proto::{
    COOKIE_LEN, Challenge, DecodeError, End, EndReason, ErrorCode, ErrorMsg, Join, LeaveReason,
    Message, MessageType, Nack, Packet, Reject, RejectReason, Report, StreamInfo, TimeResponse,
    Token, Welcome,
};
use seal::{LISTENER_KEY_ID, RoomKey, SERVER_KEY_ID, ServerSession, StreamKey};
use siphasher::sip128::{Hasher128, SipHasher24};

/// The text of the `Error{NotJoined}` that answers a `Report` from an address with no
/// session (its datagram is 49 bytes).
pub const NOT_JOINED_TEXT: &str = "not joined: connect again";

/// Where the stream is now: the `seq`/`ts` of the next `Audio`, which a joining listener gets
/// as its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LivePosition {
    /// seq of the next Audio datagram.
    pub seq: u64,
    /// ts (frame index) of its first frame.
    pub ts: u64,
}

/// Why a datagram got no useful handling; counted, summarised in the periodic log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Did not decode (garbage, truncated, oversized, unknown type, bad body).
    Malformed,
    /// Another protocol version: answered with `Reject` when it is a `Connect`, else dropped.
    WrongVersion,
    /// A `Connect` shorter than `MIN_CONNECT_LEN` (cannot be answered without amplifying).
    ShortConnect,
    /// A message only a server sends (Challenge, Welcome, Audio, ...).
    Unexpected,
    /// `Report`/`Leave`/`Nack`/`TimeRequest` from an address with no session.
    NotJoined,
    /// A listener message from a joined address without that session's token: spoofed, or
    /// from an earlier session; never answered and not a keepalive. In a private room, also
    /// a listener message in the clear from a joined address.
    BadToken,
    /// A private room's `Sealed` from a joined address that did not open under its session
    /// key: forged, tampered, truncated or replayed.
    Forged,
}

/// Why a listener message did not count (see [`Sessions::heard`]).
#[derive(Debug, Clone, Copy)]
enum Heard {
    /// No session at that address.
    NotJoined,
    /// A session, but not that token.
    BadToken,
}

/// What [`Sessions::handle`] did, for the log and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `Connect` was answered with a `Challenge`.
    Challenged,
    /// A `Join` with a bad or expired cookie was answered with a fresh `Challenge`.
    BadCookie,
    /// A new listener was accepted.
    Accepted {
        /// Where it joins the stream.
        start: LivePosition,
        /// The name it gave.
        name: String,
    },
    /// A listener already in the table joined again (its `Welcome` was probably lost).
    Rejoined,
    /// A `Join` was refused.
    Rejected(RejectReason),
    /// A keepalive with the listener's counters.
    Report(Report),
    /// A listener left; its slot is free.
    Left {
        /// Why, as it said.
        reason: LeaveReason,
        /// Its name.
        name: String,
    },
    /// A listener asked for audio to be resent.
    Nack(Nack),
    /// A clock exchange was answered.
    TimeAnswered,
    /// Nothing but a counter.
    Ignored(Ignored),
}

/// Result of handling one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Encoded reply to send back to the sender, if any.
    pub reply: Option<Bytes>,
    /// What happened.
    pub event: Event,
}

/// A listener that has joined.
#[derive(Debug)]
struct Session {
    /// Index of its address in `Sessions::addrs`.
    idx: usize,
    /// Last datagram heard from it: eviction is measured from here.
    last_heard: Instant,
    /// seq of the first Audio it was due to get: decides whether `End.last_seq` is `None`.
    start_seq: u64,
    /// Latest receiver report, for the log.
    last_report: Option<Report>,
    /// When it joined, for the control plane.
    joined: Instant,
    /// The token every later message from it must carry.
    token: Token,
    /// The name it gave in its Join (sanitised).
    name: String,
    /// `FEATURE_*` bits from its Join.
    features: u32,
    /// A private room: its session keys, from the handshake in its Join.
    keys: Option<ServerSession>,
}

/// Departures kept for the control plane: enough for an operator to see who left lately.
pub const DEPARTURES_KEPT: usize = 16;

/// A listener that left the table, and why (for the control plane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// Its address.
    pub addr: SocketAddr,
    /// The name it gave.
    pub name: String,
    /// Why: a `Leave` reason ("interrupted", "terminated", "device error", "timeout", "done"),
    /// "evicted" or "kicked".
    pub reason: &'static str,
    /// When.
    pub at: Instant,
}

/// Counters over the life of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Listeners accepted (a repeated Join is not counted again).
    pub accepted: u64,
    /// Joins refused as full or shutting down.
    pub rejected: u64,
    /// Challenges sent in answer to Connect.
    pub challenges: u64,
    /// Joins with a bad or expired cookie.
    pub bad_cookies: u64,
    /// Listeners that left.
    pub left: u64,
    /// Listeners evicted for silence.
    pub evicted: u64,
    /// Datagrams ignored (malformed, wrong version, short Connect, unexpected, not joined,
    /// bad token).
    pub ignored: u64,
    /// Listener messages dropped for a wrong session token.
    pub bad_tokens: u64,
    /// Private room: joins refused for a Noise message that did not prove the room key.
    pub bad_keys: u64,
    /// Private room: sealed datagrams that did not open (forged, tampered, replayed).
    pub forged: u64,
}

/// The listener table.
#[derive(Debug)]
pub struct Sessions {
    /// Keys of the cookie hash, random per process.
    key: (u64, u64),
    /// Epoch 0 starts here.
    origin: Instant,
    /// The server clock's reading at `origin` (µs): see [`Sessions::set_clock_base`].
    clock_base_us: u64,
    /// Refuse joins beyond this many listeners.
    max_clients: usize,
    /// Silence after which a listener is evicted.
    client_timeout: Duration,
    /// Joined listeners by address.
    table: HashMap<SocketAddr, Session>,
    /// The same addresses as a dense slice, for the fan-out (no per-tick allocation).
    addrs: Vec<SocketAddr>,
    /// When false, joins are refused with `ShuttingDown`.
    accepting: bool,
    /// Counter for the `seq` of control messages we send (informational only).
    control_seq: u64,
    /// The latest departures, oldest first, at most [`DEPARTURES_KEPT`].
    departures: VecDeque<Departure>,
    /// Counters.
    stats: SessionStats,
    /// A private room's key and the stream key every `Welcome` hands out.
    room: Option<(RoomKey, StreamKey)>,
    /// Session keys of listeners just evicted or kicked, so their `End` can still be sealed;
    /// emptied by [`Sessions::clear_retired`].
    retired: Vec<(SocketAddr, ServerSession)>,
}

impl Sessions {
    /// An empty table. `key` keys the cookie hash: pass random bits (see
    /// [`Sessions::random_key`]); tests pass fixed ones.
    pub fn new(
        now: Instant,
        key: (u64, u64),
        max_clients: usize,
        client_timeout: Duration,
    ) -> Self {
        Self {
            key,
            origin: now,
            clock_base_us: 0,
            max_clients,
            client_timeout,
            // Reserved for the whole capacity up front: a join never rehashes or moves the
            // table mid-stream, and untouched pages cost no memory.
            table: HashMap::with_capacity(max_clients),
            addrs: Vec::with_capacity(max_clients),
            accepting: true,
            control_seq: 0,
            departures: VecDeque::with_capacity(DEPARTURES_KEPT),
            stats: SessionStats::default(),
            room: None,
            retired: Vec::new(),
        }
    }

    /// Makes this a private room: every later `Join` must prove `room`, and its `Welcome`
    /// hands out `stream`.
    pub fn set_room_key(&mut self, room: RoomKey, stream: StreamKey) {
        self.room = Some((room, stream));
    }

    /// The stream key later `Welcome`s hand out (after a rotation's switch).
    pub fn set_stream_key(&mut self, stream: StreamKey) {
        if let Some((_, s)) = &mut self.room {
            *s = stream;
        }
    }

    /// Whether this is a private room.
    pub fn is_keyed(&self) -> bool {
        self.room.is_some()
    }

    /// `plain` (one encoded datagram) as `addr` must receive it: as is in an open room, sealed
    /// under `addr`'s session key in a private one (also for a listener just evicted or
    /// kicked). `None` when a private room holds no key for `addr`.
    pub fn wrap(&self, addr: &SocketAddr, plain: Bytes) -> Option<Bytes> {
        if self.room.is_none() {
            return Some(plain);
        }
        let keys = match self.table.get(addr).and_then(|s| s.keys.as_ref()) {
            Some(k) => k,
            None => self
                .retired
                .iter()
                .find(|(a, _)| a == addr)
                .map(|(_, k)| k)?,
        };
        seal::wire::seal_datagram(&plain, SERVER_KEY_ID, |t, q, b, o| keys.seal(t, q, b, o))
    }

    /// `msg` to `addr` under the table's control seq, sealed as [`Sessions::wrap`] says (a
    /// `Rekey`).
    pub fn encode_to(&mut self, addr: &SocketAddr, msg: Message) -> Option<Bytes> {
        let plain = self.encode(msg)?;
        self.wrap(addr, plain)
    }

    /// Forgets the keys of listeners evicted or kicked since the last call (their `End`s are
    /// sealed by now).
    pub fn clear_retired(&mut self) {
        self.retired.clear();
    }

    /// A fresh random cookie key: cookies from another process (or run) never validate.
    pub fn random_key() -> (u64, u64) {
        (rand::random(), rand::random())
    }

    /// Addresses of every joined listener: where each tick's audio goes.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Listeners joined now.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// No listener joined.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Whether `addr` has a session.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.table.contains_key(addr)
    }

    /// seq of the first Audio `addr` was due to get, if joined: the server gives
    /// `End.last_seq = None` to a listener that joined after the last Audio.
    pub fn start_seq(&self, addr: &SocketAddr) -> Option<u64> {
        self.table.get(addr).map(|s| s.start_seq)
    }

    /// Latest receiver report from `addr`.
    pub fn last_report(&self, addr: &SocketAddr) -> Option<Report> {
        self.table.get(addr).and_then(|s| s.last_report)
    }

    /// When `addr` joined, if it is joined.
    pub fn joined_at(&self, addr: &SocketAddr) -> Option<Instant> {
        self.table.get(addr).map(|s| s.joined)
    }

    /// The name `addr` gave when it joined.
    pub fn name(&self, addr: &SocketAddr) -> Option<&str> {
        self.table.get(addr).map(|s| s.name.as_str())
    }

    /// The `FEATURE_*` bits `addr` announced when it joined.
    pub fn features(&self, addr: &SocketAddr) -> Option<u32> {
        self.table.get(addr).map(|s| s.features)
    }

    /// The session token of `addr`.
    pub fn token(&self, addr: &SocketAddr) -> Option<Token> {
        self.table.get(addr).map(|s| s.token)
    }

    /// Microseconds on the server clock of the clock exchange and of the media timeline: the
    /// clock base ([`Self::set_clock_base`]) plus the time since this table was made.
    pub fn server_us(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(self.origin).as_micros())
            .unwrap_or(u64::MAX);
        self.clock_base_us.saturating_add(since)
    }

    /// Sets what the server clock read when this table was made (µs). The shell passes the
    /// machine's real-time clock (µs since the Unix epoch), so that a listener's clock offset
    /// is the real difference between two machines' clocks; a simulation leaves it at 0.
    pub fn set_clock_base(&mut self, base_us: u64) {
        self.clock_base_us = base_us;
    }

    /// The capacity: joins beyond it get `Reject{Full}`.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Changes the capacity live (the control plane). Listeners already joined beyond a lower
    /// capacity stay; only new joins are refused.
    pub fn set_max_clients(&mut self, max_clients: usize) {
        self.max_clients = max_clients;
    }

    /// Removes `addr` at an operator's request (counted as evicted) and returns its start seq,
    /// or `None` if it is not joined.
    pub fn kick(&mut self, now: Instant, addr: &SocketAddr) -> Option<u64> {
        let start = self.start_seq(addr)?;
        if self.depart(now, addr, "kicked") {
            self.stats.evicted += 1;
        }
        Some(start)
    }

    /// The latest departures, oldest first.
    pub fn departures(&self) -> impl Iterator<Item = &Departure> {
        self.departures.iter()
    }

    /// Removes `addr` and records why. The keys of a listener evicted or kicked are kept
    /// until [`Sessions::clear_retired`], for its `End`.
    fn depart(&mut self, now: Instant, addr: &SocketAddr, reason: &'static str) -> bool {
        let name = match self.table.get_mut(addr) {
            Some(s) => {
                if reason == "evicted" || reason == "kicked" {
                    if let Some(k) = s.keys.take() {
                        self.retired.push((*addr, k));
                    }
                }
                std::mem::take(&mut s.name)
            }
            None => return false,
        };
        if self.departures.len() == DEPARTURES_KEPT {
            self.departures.pop_front();
        }
        self.departures.push_back(Departure {
            addr: *addr,
            name,
            reason,
            at: now,
        });
        self.remove(addr)
    }

    /// Stop accepting: later joins get `Reject{ShuttingDown}`.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    fn epoch(&self, now: Instant) -> u64 {
        let e = now.saturating_duration_since(self.origin).as_nanos() / COOKIE_EPOCH.as_nanos();
        u64::try_from(e).unwrap_or(u64::MAX)
    }

    fn cookie_for(&self, addr: &SocketAddr, epoch: u64) -> [u8; COOKIE_LEN] {
        let mut h = SipHasher24::new_with_keys(self.key.0, self.key.1);
        match addr.ip() {
            IpAddr::V4(ip) => {
                h.write_u8(4);
                h.write(&ip.octets());
            }
            IpAddr::V6(ip) => {
                h.write_u8(6);
                h.write(&ip.octets());
            }
        }
        h.write_u16(addr.port());
        h.write_u64(epoch);
        h.finish128().as_bytes()
    }

    /// A cookie for `addr` valid from `now` for one to two epochs.
    pub fn cookie(&self, now: Instant, addr: &SocketAddr) -> [u8; COOKIE_LEN] {
        self.cookie_for(addr, self.epoch(now))
    }

    /// Valid if made for this address in the current or the previous epoch. Compared without
    /// early exit, so timing says nothing about how much of a forged cookie was right.
    fn cookie_valid(&self, now: Instant, addr: &SocketAddr, cookie: &[u8; COOKIE_LEN]) -> bool {
        let e = self.epoch(now);
        let eq =
            |a: &[u8; COOKIE_LEN]| a.iter().zip(cookie).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        let cur = eq(&self.cookie_for(addr, e));
        let prev = e > 0 && eq(&self.cookie_for(addr, e - 1));
        cur | prev
    }

    /// A new session's token: a keyed hash of the address and the count of sessions so far,
    /// unpredictable without the process's random key (and reproducible in tests).
    fn token_for(&self, addr: &SocketAddr) -> Token {
        let mut h = SipHasher24::new_with_keys(self.key.1, self.key.0);
        h.write(b"token");
        h.write(addr.to_string().as_bytes());
        h.write_u64(self.stats.accepted);
        h.finish128().as_bytes()
    }

    /// The session of `from` if `token` is its token (compared without early exit).
    fn authentic(&mut self, from: &SocketAddr, token: &Token) -> Option<&mut Session> {
        let s = self.table.get_mut(from)?;
        let same = s
            .token
            .iter()
            .zip(token)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
        same.then_some(s)
    }

    fn next_seq(&mut self) -> u64 {
        self.control_seq += 1;
        self.control_seq
    }

    fn encode(&mut self, msg: Message) -> Option<Bytes> {
        let seq = self.next_seq();
        proto::encode_to_bytes(&Packet::new(seq, msg)).ok()
    }

    fn ignored(&mut self, why: Ignored) -> Handled {
        self.stats.ignored += 1;
        Handled {
            reply: None,
            event: Event::Ignored(why),
        }
    }

    /// Handles one datagram from `from`. `info` is the stream description a `Welcome` carries
    /// (its `start_seq`/`start_ts` are replaced by `live`).
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        info: &StreamInfo,
        live: LivePosition,
    ) -> Handled {
        let received = datagram.len();
        let packet = match proto::decode(datagram) {
            Ok(p) => p,
            Err(DecodeError::UnsupportedVersion { msg_type, .. })
                if msg_type == MessageType::Connect as u8 =>
            {
                self.stats.ignored += 1;
                let reply = self.encode(Message::Reject(Reject {
                    reason: RejectReason::UnsupportedVersion {
                        supported: proto::VERSION,
                    },
                }));
                // Anti-amplification (RFC 9000 §8): never more bytes than we were sent.
                let reply = reply.filter(|r| r.len() <= received);
                return Handled {
                    reply,
                    event: Event::Ignored(Ignored::WrongVersion),
                };
            }
            Err(DecodeError::UnsupportedVersion { .. }) => {
                return self.ignored(Ignored::WrongVersion);
            }
            Err(_) => return self.ignored(Ignored::Malformed),
        };
        if self.room.is_some() {
            match &packet.msg {
                Message::Sealed(sealed) => {
                    return self.handle_sealed(now, from, received, packet.seq, sealed, info, live);
                }
                // A joined listener of a private room seals everything it sends.
                Message::Report(_)
                | Message::Leave(_)
                | Message::Nack(_)
                | Message::TimeRequest(_)
                    if self.table.contains_key(&from) =>
                {
                    return self.bad_token();
                }
                _ => {}
            }
        }
        self.dispatch(now, from, received, packet, info, live)
    }

    /// A private room's `Sealed` from `from`: opened under its session key, the inner
    /// listener message handled as in an open room, the reply sealed back.
    #[allow(clippy::too_many_arguments)]
    fn handle_sealed(
        &mut self,
        now: Instant,
        from: SocketAddr,
        received: usize,
        seq: u64,
        sealed: &proto::Sealed,
        info: &StreamInfo,
        live: LivePosition,
    ) -> Handled {
        let Some(keys) = self.table.get_mut(&from).and_then(|s| s.keys.as_mut()) else {
            return self.ignored(Ignored::NotJoined);
        };
        let opened = if sealed.key_id == LISTENER_KEY_ID {
            seal::wire::open_datagram(seq, sealed, |_, t, q, c, o| keys.open(t, q, c, o)).ok()
        } else {
            None
        };
        let Some(inner) = opened else {
            self.stats.forged += 1;
            return self.ignored(Ignored::Forged);
        };
        if !matches!(
            inner.msg,
            Message::Report(_) | Message::Leave(_) | Message::Nack(_) | Message::TimeRequest(_)
        ) {
            return self.ignored(Ignored::Unexpected);
        }
        let mut h = self.dispatch(now, from, received, inner, info, live);
        // Sealed under the keys of the session it answers (a Leave's has none left).
        h.reply = h.reply.and_then(|r| self.wrap(&from, r));
        h
    }

    /// Handles one decoded datagram (in a private room, the opened inner message).
    fn dispatch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        received: usize,
        packet: Packet,
        info: &StreamInfo,
        live: LivePosition,
    ) -> Handled {
        // A message carrying the session's token keeps it alive (below, per message); so does
        // a Join with a valid cookie (in `join`). Nothing else does: an address is easy to
        // spoof, a token is not.
        match packet.msg {
            Message::Connect(_) => {
                if received < MIN_CONNECT_LEN {
                    return self.ignored(Ignored::ShortConnect);
                }
                self.stats.challenges += 1;
                let cookie = self.cookie(now, &from);
                let reply = self.encode(Message::Challenge(Challenge { cookie }));
                // Anti-amplification (RFC 9000 §8): never more bytes than we were sent.
                let reply = reply.filter(|r| r.len() <= received);
                Handled {
                    reply,
                    event: Event::Challenged,
                }
            }
            Message::Join(j) => self.join(now, from, received, &j, info, live),
            Message::Report(r) => match self.heard(now, &from, &r.token) {
                Ok(s) => {
                    s.last_report = Some(r);
                    Handled {
                        reply: None,
                        event: Event::Report(r),
                    }
                }
                Err(Heard::NotJoined) => self.not_joined(received),
                Err(Heard::BadToken) => self.bad_token(),
            },
            // Never answered, whatever it carries: a Leave is smaller than any Error, so an
            // answer would amplify (RFC 9000 §8).
            Message::Leave(l) => match self.heard(now, &from, &l.token) {
                Ok(s) => {
                    let name = s.name.clone();
                    self.depart(now, &from, l.reason.name());
                    self.stats.left += 1;
                    Handled {
                        reply: None,
                        event: Event::Left {
                            reason: l.reason,
                            name,
                        },
                    }
                }
                Err(why) => self.refused(why),
            },
            Message::Nack(n) => match self.heard(now, &from, &n.token) {
                Ok(_) => Handled {
                    reply: None,
                    event: Event::Nack(n),
                },
                Err(why) => self.refused(why),
            },
            Message::TimeRequest(t) => {
                if let Err(why) = self.heard(now, &from, &t.token) {
                    return self.refused(why);
                }
                let t2 = self.server_us(now);
                let reply = self.encode(Message::TimeResponse(TimeResponse {
                    t1: t.t1,
                    t2,
                    t3: t2,
                    timeline: info.timeline,
                }));
                // Never more than the request (§5.2), though the address is validated.
                let reply = reply.filter(|r| r.len() <= received);
                Handled {
                    reply,
                    event: Event::TimeAnswered,
                }
            }
            _ => self.ignored(Ignored::Unexpected),
        }
    }

    /// The session of `from` if `token` is its token, now heard from (a keepalive); else why
    /// not.
    fn heard(
        &mut self,
        now: Instant,
        from: &SocketAddr,
        token: &Token,
    ) -> Result<&mut Session, Heard> {
        if !self.table.contains_key(from) {
            return Err(Heard::NotJoined);
        }
        let s = self.authentic(from, token).ok_or(Heard::BadToken)?;
        s.last_heard = now;
        Ok(s)
    }

    /// A listener message that [`Sessions::heard`] refused, dropped unanswered.
    fn refused(&mut self, why: Heard) -> Handled {
        match why {
            Heard::NotJoined => self.ignored(Ignored::NotJoined),
            Heard::BadToken => self.bad_token(),
        }
    }

    fn bad_token(&mut self) -> Handled {
        self.stats.bad_tokens += 1;
        self.ignored(Ignored::BadToken)
    }

    /// The answer to a Report from an address with no session: `Error{NotJoined}` with
    /// [`NOT_JOINED_TEXT`], 49 bytes against the Report's 132.
    fn not_joined(&mut self, received: usize) -> Handled {
        self.stats.ignored += 1;
        let reply = self.encode(Message::Error(ErrorMsg {
            code: ErrorCode::NotJoined,
            text: NOT_JOINED_TEXT.into(),
        }));
        // Anti-amplification (RFC 9000 §8): never more bytes than we were sent.
        let reply = reply.filter(|r| r.len() <= received);
        Handled {
            reply,
            event: Event::Ignored(Ignored::NotJoined),
        }
    }

    fn join(
        &mut self,
        now: Instant,
        from: SocketAddr,
        received: usize,
        join: &Join,
        info: &StreamInfo,
        live: LivePosition,
    ) -> Handled {
        if !self.cookie_valid(now, &from, &join.cookie) {
            self.stats.bad_cookies += 1;
            let cookie = self.cookie(now, &from);
            let reply = self.encode(Message::Challenge(Challenge { cookie }));
            // Anti-amplification (RFC 9000 §8): never more bytes than we were sent.
            let reply = reply.filter(|r| r.len() <= received);
            return Handled {
                reply,
                event: Event::BadCookie,
            };
        }
        // From here the address is validated: it echoed our cookie.
        let welcome = |this: &mut Self, token: Token, noise: Bytes| {
            let mut w = info.clone();
            w.start_seq = live.seq;
            w.start_ts = live.ts;
            this.encode(Message::Welcome(Welcome {
                token,
                noise,
                info: w,
            }))
        };
        // Once the stream is ending every valid Join is refused, a listener already in the
        // table included: no more audio will come, and its End is on the way.
        if self.accepting
            && let Some(s) = self.table.get_mut(&from)
        {
            let token = s.token;
            let noise = match (&self.room, s.keys.as_ref()) {
                (None, _) => Bytes::new(),
                // Its Welcome was lost: the same message 2, so it ends with the keys we kept.
                (Some(_), Some(k)) if k.is_same_handshake(&join.noise) => {
                    Bytes::copy_from_slice(k.welcome_noise())
                }
                // A new handshake replaces the session's keys once it has succeeded.
                (Some((room, stream)), _) => match ServerSession::accept(room, &join.noise, stream)
                {
                    Ok(k) => {
                        let noise = Bytes::copy_from_slice(k.welcome_noise());
                        s.keys = Some(k);
                        noise
                    }
                    Err(_) => return self.bad_key(received),
                },
            };
            if let Some(s) = self.table.get_mut(&from) {
                s.last_heard = now;
            }
            return Handled {
                reply: welcome(self, token, noise),
                event: Event::Rejoined,
            };
        }
        if !self.accepting {
            self.stats.rejected += 1;
            let reason = RejectReason::ShuttingDown;
            return Handled {
                reply: self.encode(Message::Reject(Reject { reason })),
                event: Event::Rejected(reason),
            };
        }
        // A private room: the Join must prove the room key before anything else is looked at.
        let keys = match &self.room {
            None => None,
            Some((room, stream)) => match ServerSession::accept(room, &join.noise, stream) {
                Ok(k) => Some(k),
                Err(_) => return self.bad_key(received),
            },
        };
        let reason = if join.codecs & info.codec.bit() == 0 {
            Some(RejectReason::CodecUnsupported {
                codec: info.codec.index(),
            })
        } else if self.addrs.len() >= self.max_clients {
            Some(RejectReason::Full {
                max_clients: u32::try_from(self.max_clients).unwrap_or(u32::MAX),
            })
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.rejected += 1;
            return Handled {
                reply: self.encode(Message::Reject(Reject { reason })),
                event: Event::Rejected(reason),
            };
        }
        let token = self.token_for(&from);
        let name = sanitise_name(&join.name);
        self.stats.accepted += 1;
        self.table.insert(
            from,
            Session {
                idx: self.addrs.len(),
                last_heard: now,
                start_seq: live.seq,
                last_report: None,
                joined: now,
                token,
                name: name.clone(),
                features: join.features,
                keys: None,
            },
        );
        self.addrs.push(from);
        let noise = match keys {
            Some(k) => {
                let noise = Bytes::copy_from_slice(k.welcome_noise());
                if let Some(s) = self.table.get_mut(&from) {
                    s.keys = Some(k);
                }
                noise
            }
            None => Bytes::new(),
        };
        Handled {
            reply: welcome(self, token, noise),
            event: Event::Accepted { start: live, name },
        }
    }

    /// `Reject{BadKey}` to a validated address whose Join did not prove the room key: no
    /// session, and never more bytes than the Join.
    fn bad_key(&mut self, received: usize) -> Handled {
        self.stats.rejected += 1;
        self.stats.bad_keys += 1;
        let reason = RejectReason::BadKey;
        let reply = self.encode(Message::Reject(Reject { reason }));
        Handled {
            reply: reply.filter(|r| r.len() <= received),
            event: Event::Rejected(reason),
        }
    }

    fn remove(&mut self, addr: &SocketAddr) -> bool {
        let Some(s) = self.table.remove(addr) else {
            return false;
        };
        self.addrs.swap_remove(s.idx);
        if let Some(moved) = self.addrs.get(s.idx)
            && let Some(m) = self.table.get_mut(moved)
        {
            m.idx = s.idx;
        }
        true
    }

    /// Removes every listener silent for longer than the client timeout and appends each one's
    /// address and start seq to `out`, in address order (the server sends each `End{Evicted}`,
    /// whose `last_seq` is `None` if nothing was sent since that start).
    pub fn evict_expired(&mut self, now: Instant, out: &mut Vec<(SocketAddr, u64)>) {
        let timeout = self.client_timeout;
        let start = out.len();
        out.extend(
            self.table
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.last_heard) > timeout)
                .map(|(a, s)| (*a, s.start_seq)),
        );
        // The table iterates in a random order (per-process hash keys): sorted, the removals
        // (which reorder `addrs`) and the caller's evictions are the same in every run.
        out[start..].sort_unstable();
        for &(a, _) in &out[start..] {
            if self.depart(now, &a, "evicted") {
                self.stats.evicted += 1;
            }
        }
    }

    /// The `End` for `addr` with `reason`: `last_seq` is the last Audio sent, or `None` if
    /// none was sent since it joined.
    pub fn end_for(&self, addr: &SocketAddr, reason: EndReason, last_audio: Option<u64>) -> End {
        end_after(self.start_seq(addr).unwrap_or(0), reason, last_audio)
    }
}

/// A listener's name as the log, the API and the dashboard show it: at most [`MAX_NAME`] bytes,
/// control characters replaced, so a hostile name cannot forge log lines or break a terminal.
pub fn sanitise_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(MAX_NAME));
    for c in name.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        out.push(c);
    }
    out
}

/// The `End` for a listener that joined at `start_seq`: `last_seq` is the last Audio sent, or
/// `None` when none was sent since it joined. Also for a listener already gone from the table
/// (eviction), which is why it takes the start rather than the address.
pub fn end_after(start_seq: u64, reason: EndReason, last_audio: Option<u64>) -> End {
    End {
        reason,
        last_seq: last_audio.filter(|&l| l >= start_seq),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proto::Connect;

    const KEY: (u64, u64) = (1, 2);

    fn info() -> StreamInfo {
        StreamInfo {
            sample_rate: 44100,
            channels: 2,
            codec: proto::AudioCodec::Pcm,
            timeline: proto::Timeline::default(),
            playout_delay_us: 50_000,
            min_delay_us: 25_000,
            repair: proto::Repair::default(),
            multicast: None,
            interval_us: 20_000,
            frames_per_packet: 343,
            total_frames: Some(88200),
            start_seq: 0,
            start_ts: 0,
            title: "test".into(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn enc(msg: Message) -> Vec<u8> {
        proto::encode_to_bytes(&Packet::new(0, msg))
            .unwrap()
            .to_vec()
    }

    fn connect() -> Vec<u8> {
        let pad = MIN_CONNECT_LEN; // more than enough to reach the minimum
        enc(Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0u8; pad]),
        }))
    }

    fn decode(b: &Option<Bytes>) -> Message {
        proto::decode(b.as_ref().unwrap()).unwrap().msg
    }

    fn table(now: Instant, max: usize) -> Sessions {
        Sessions::new(now, KEY, max, Duration::from_secs(5))
    }

    /// Connect + Join, and the token of the Welcome.
    fn join(s: &mut Sessions, now: Instant, from: SocketAddr) -> Token {
        let h = handshake(s, now, from, LivePosition::default());
        let Message::Welcome(w) = decode(&h.reply) else {
            panic!("expected welcome, got {:?}", h.event)
        };
        w.token
    }

    fn leave(token: Token) -> Vec<u8> {
        enc(Message::Leave(proto::Leave {
            token,
            reason: LeaveReason::Interrupted,
        }))
    }

    fn report(token: Token) -> Vec<u8> {
        enc(Message::Report(Report {
            token,
            ..Report::default()
        }))
    }

    /// Connect + Join; returns the Join's result.
    fn handshake(s: &mut Sessions, now: Instant, from: SocketAddr, live: LivePosition) -> Handled {
        let h = s.handle(now, from, &connect(), &info(), live);
        assert_eq!(h.event, Event::Challenged);
        let Message::Challenge(c) = decode(&h.reply) else {
            panic!("expected challenge")
        };
        s.handle(
            now,
            from,
            &enc(Message::Join(Join::new(c.cookie))),
            &info(),
            live,
        )
    }

    #[test]
    fn handshake_accepts_and_welcome_starts_live() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let live = LivePosition { seq: 17, ts: 5000 };
        let h = handshake(&mut s, now, addr(1000), live);
        assert_eq!(
            h.event,
            Event::Accepted {
                start: live,
                name: String::new()
            }
        );
        let Message::Welcome(w) = decode(&h.reply) else {
            panic!("expected welcome")
        };
        assert_eq!((w.info.start_seq, w.info.start_ts), (17, 5000));
        assert_eq!(w.info.sample_rate, 44100);
        assert_eq!(s.token(&addr(1000)), Some(w.token));
        assert_ne!(w.token, [0; 16]);
        assert_eq!(s.addrs(), &[addr(1000)]);
        assert_eq!(s.stats().accepted, 1);
    }

    #[test]
    fn connect_keeps_no_state_and_never_amplifies() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let c = connect();
        let h = s.handle(now, addr(1), &c, &info(), LivePosition::default());
        assert!(h.reply.as_ref().unwrap().len() <= c.len());
        assert!(s.is_empty());
        // A Connect shorter than MIN_CONNECT_LEN gets nothing.
        let short = enc(Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::new(),
        }));
        assert!(short.len() < MIN_CONNECT_LEN);
        let h = s.handle(now, addr(1), &short, &info(), LivePosition::default());
        assert_eq!(h.reply, None);
        assert_eq!(h.event, Event::Ignored(Ignored::ShortConnect));
    }

    #[test]
    fn forged_cookie_gets_a_fresh_challenge_no_bigger_than_the_join() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let join = enc(Message::Join(Join::new([7; 16])));
        let h = s.handle(now, addr(2), &join, &info(), LivePosition::default());
        assert_eq!(h.event, Event::BadCookie);
        assert!(h.reply.as_ref().unwrap().len() <= join.len());
        assert!(matches!(decode(&h.reply), Message::Challenge(_)));
        assert!(s.is_empty());
        // A cookie made for another address does not work either.
        let other = s.cookie(now, &addr(3));
        let join = enc(Message::Join(Join::new(other)));
        let h = s.handle(now, addr(2), &join, &info(), LivePosition::default());
        assert_eq!(h.event, Event::BadCookie);
        // Nor one made with another key (another server process).
        let s2 = Sessions::new(now, (9, 9), 4, Duration::from_secs(5));
        let join = enc(Message::Join(Join::new(s2.cookie(now, &addr(2)))));
        let h = s.handle(now, addr(2), &join, &info(), LivePosition::default());
        assert_eq!(h.event, Event::BadCookie);
        assert_eq!(s.stats().bad_cookies, 3);
    }

    #[test]
    fn cookie_valid_for_current_and_previous_epoch_only() {
        let t0 = Instant::now();
        let mut s = table(t0, 8);
        let made = t0 + COOKIE_EPOCH / 2;
        let cookie = s.cookie(made, &addr(5));
        let join = enc(Message::Join(Join::new(cookie)));
        // Next epoch: still valid.
        let later = made + COOKIE_EPOCH;
        let h = s.handle(later, addr(5), &join, &info(), LivePosition::default());
        assert!(matches!(h.event, Event::Accepted { .. }));
        // Two epochs on: expired.
        let cookie = s.cookie(made, &addr(6));
        let join = enc(Message::Join(Join::new(cookie)));
        let h = s.handle(
            made + 2 * COOKIE_EPOCH,
            addr(6),
            &join,
            &info(),
            LivePosition::default(),
        );
        assert_eq!(h.event, Event::BadCookie);
        assert!(!s.contains(&addr(6)));
    }

    #[test]
    fn capacity_rejects_with_full() {
        let now = Instant::now();
        let mut s = table(now, 2);
        for p in 1..=2 {
            assert!(matches!(
                handshake(&mut s, now, addr(p), LivePosition::default()).event,
                Event::Accepted { .. }
            ));
        }
        let h = handshake(&mut s, now, addr(3), LivePosition::default());
        let full = RejectReason::Full { max_clients: 2 };
        assert_eq!(h.event, Event::Rejected(full));
        assert_eq!(decode(&h.reply), Message::Reject(Reject { reason: full }));
        assert_eq!(s.len(), 2);
        // Leaving frees the slot at once.
        let token = s.token(&addr(1)).unwrap();
        let h = s.handle(
            now,
            addr(1),
            &leave(token),
            &info(),
            LivePosition::default(),
        );
        assert_eq!(
            h.event,
            Event::Left {
                reason: LeaveReason::Interrupted,
                name: String::new()
            }
        );
        assert!(matches!(
            handshake(&mut s, now, addr(3), LivePosition::default()).event,
            Event::Accepted { .. }
        ));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn duplicate_join_is_welcomed_again_not_counted_twice() {
        let now = Instant::now();
        let mut s = table(now, 1);
        let token = join(&mut s, now, addr(1));
        let live = LivePosition { seq: 9, ts: 900 };
        let h = handshake(&mut s, now, addr(1), live);
        assert_eq!(h.event, Event::Rejoined);
        let Message::Welcome(w) = decode(&h.reply) else {
            panic!("expected welcome")
        };
        assert_eq!(w.info.start_seq, 9);
        assert_eq!(w.token, token, "the same session, the same token");
        assert_eq!(s.len(), 1);
        assert_eq!(s.stats().accepted, 1);
    }

    #[test]
    fn silent_listener_is_evicted_reporting_one_is_not() {
        let t0 = Instant::now();
        let mut s = table(t0, 4);
        let t1 = join(&mut s, t0, addr(1));
        let t2 = join(&mut s, t0, addr(2));
        assert_ne!(t1, t2);
        let report = report(t2);
        let mut out = Vec::new();
        for i in 1..=8u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            let h = s.handle(now, addr(2), &report, &info(), LivePosition::default());
            assert!(matches!(h.event, Event::Report(r) if r.token == t2));
            s.evict_expired(now, &mut out);
        }
        assert_eq!(out, vec![(addr(1), 0)]);
        assert_eq!(s.addrs(), &[addr(2)]);
        assert_eq!(s.stats().evicted, 1);
        // Its reports now get Error{NotJoined}.
        let h = s.handle(
            t0 + Duration::from_secs(9),
            addr(1),
            &report,
            &info(),
            LivePosition::default(),
        );
        assert_eq!(h.event, Event::Ignored(Ignored::NotJoined));
        assert!(matches!(
            decode(&h.reply),
            Message::Error(ErrorMsg {
                code: ErrorCode::NotJoined,
                ..
            })
        ));
    }

    #[test]
    fn simultaneous_evictions_come_out_in_address_order() {
        let t0 = Instant::now();
        let mut s = table(t0, 16);
        let ports = [9, 3, 12, 1, 7, 5, 11, 2];
        for p in ports {
            handshake(&mut s, t0, addr(p), LivePosition::default());
        }
        let mut out = vec![(addr(99), 0)];
        s.evict_expired(t0 + Duration::from_secs(6), &mut out);
        let mut want: Vec<_> = ports.iter().map(|&p| (addr(p), 0)).collect();
        want.sort_unstable();
        assert_eq!(out[0], (addr(99), 0), "what was there stays first");
        assert_eq!(out[1..], want[..]);
        assert!(s.is_empty());
    }

    #[test]
    fn not_joined_error_never_exceeds_the_request() {
        let now = Instant::now();
        let mut s = table(now, 4);
        // A Leave (32 bytes) is never answered.
        let leave = leave([3; 16]);
        assert_eq!(leave.len(), 32);
        let h = s.handle(now, addr(1), &leave, &info(), LivePosition::default());
        assert_eq!(h.event, Event::Ignored(Ignored::NotJoined));
        assert_eq!(h.reply, None);
        // A Report (132 bytes) gets the 49-byte Error with its text.
        let report = report([3; 16]);
        assert_eq!(report.len(), 132);
        let h = s.handle(now, addr(1), &report, &info(), LivePosition::default());
        let reply = h.reply.unwrap();
        assert_eq!(reply.len(), 49);
        assert_eq!(
            proto::decode(&reply).unwrap().msg,
            Message::Error(ErrorMsg {
                code: ErrorCode::NotJoined,
                text: NOT_JOINED_TEXT.into()
            })
        );
    }

    #[test]
    fn other_version_connect_gets_unsupported_version_if_it_fits() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let mut c = connect();
        c[2] = 1; // version byte: a v1 listener
        let h = s.handle(now, addr(1), &c, &info(), LivePosition::default());
        assert_eq!(h.event, Event::Ignored(Ignored::WrongVersion));
        assert_eq!(
            decode(&h.reply),
            Message::Reject(Reject {
                reason: RejectReason::UnsupportedVersion { supported: 2 }
            })
        );
        let reply = h.reply.unwrap();
        assert!(reply.len() <= c.len());
        assert_eq!(
            reply[2], 2,
            "the Reject carries the server's version-2 header"
        );
        // A bare 12-byte header of another version: the Reject would not fit.
        let h = s.handle(now, addr(1), &c[..12], &info(), LivePosition::default());
        assert_eq!(h.reply, None);
        // Another type of another version: dropped.
        c[3] = 7;
        let h = s.handle(now, addr(1), &c, &info(), LivePosition::default());
        assert_eq!(h.reply, None);
    }

    #[test]
    fn a_v1_connect_is_challenged_whatever_its_max_version() {
        let now = Instant::now();
        let mut s = table(now, 4);
        for max_version in [0, 1, 2, 255] {
            let c = enc(Message::Connect(Connect {
                max_version,
                padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
            }));
            let h = s.handle(now, addr(1), &c, &info(), LivePosition::default());
            assert_eq!(h.event, Event::Challenged, "max_version {max_version}");
            assert!(matches!(decode(&h.reply), Message::Challenge(_)));
        }
    }

    #[test]
    fn garbage_is_counted_and_unanswered() {
        let now = Instant::now();
        let mut s = table(now, 4);
        for g in [
            &b""[..],
            b"hello",
            &[0xff; 300],
            &[b'E', b'S', 2, 99, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let h = s.handle(now, addr(1), g, &info(), LivePosition::default());
            assert_eq!(h.reply, None);
            assert_eq!(h.event, Event::Ignored(Ignored::Malformed));
        }
        // A server-only message from a peer is ignored too.
        let h = s.handle(
            now,
            addr(1),
            &enc(Message::Welcome(Welcome {
                token: [0; 16],
                noise: Bytes::new(),
                info: info(),
            })),
            &info(),
            LivePosition::default(),
        );
        assert_eq!(h.event, Event::Ignored(Ignored::Unexpected));
        assert_eq!(s.stats().ignored, 5);
        assert!(s.is_empty());
    }

    #[test]
    fn shutting_down_rejects_joins() {
        let now = Instant::now();
        let mut s = table(now, 4);
        handshake(&mut s, now, addr(2), LivePosition::default());
        s.stop_accepting();
        let h = handshake(&mut s, now, addr(1), LivePosition::default());
        assert_eq!(h.event, Event::Rejected(RejectReason::ShuttingDown));
        // A listener already joined is refused too: its End is on the way.
        let h = handshake(&mut s, now, addr(2), LivePosition::default());
        assert_eq!(h.event, Event::Rejected(RejectReason::ShuttingDown));
        assert_eq!(
            decode(&h.reply),
            Message::Reject(Reject {
                reason: RejectReason::ShuttingDown
            })
        );
    }

    #[test]
    fn end_last_seq_is_none_for_a_listener_that_got_no_audio() {
        let now = Instant::now();
        let mut s = table(now, 4);
        handshake(&mut s, now, addr(1), LivePosition { seq: 10, ts: 0 });
        let e = s.end_for(&addr(1), EndReason::Finished, Some(9));
        assert_eq!(e.last_seq, None);
        let e = s.end_for(&addr(1), EndReason::Finished, Some(12));
        assert_eq!(e.last_seq, Some(12));
    }

    #[test]
    fn removal_keeps_the_address_slice_consistent() {
        let now = Instant::now();
        let mut s = table(now, 8);
        let mut tokens = HashMap::new();
        for p in 1..=5 {
            tokens.insert(p, join(&mut s, now, addr(p)));
        }
        for p in [2, 5, 1] {
            s.handle(
                now,
                addr(p),
                &leave(tokens[&p]),
                &info(),
                LivePosition::default(),
            );
        }
        let mut a = s.addrs().to_vec();
        a.sort();
        assert_eq!(a, vec![addr(3), addr(4)]);
        for p in [3, 4] {
            assert!(matches!(
                s.handle(
                    now,
                    addr(p),
                    &leave(tokens[&p]),
                    &info(),
                    LivePosition::default()
                )
                .event,
                Event::Left { .. }
            ));
        }
        assert!(s.is_empty());
    }

    #[test]
    fn ten_thousand_listeners_join_leave_and_stay_consistent() {
        let now = Instant::now();
        let mut s = table(now, 10_000);
        let live = LivePosition::default();
        let a = |i: u32| SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 40_000));
        for i in 0..10_000 {
            let from = a(i);
            let join = enc(Message::Join(Join::new(s.cookie(now, &from))));
            let h = s.handle(now, from, &join, &info(), live);
            assert!(
                matches!(h.event, Event::Accepted { .. }),
                "{i}: {:?}",
                h.event
            );
        }
        assert_eq!(s.len(), 10_000);
        // Full at exactly --max-clients.
        let extra = SocketAddr::from(([127, 1, 0, 1], 1));
        let join = enc(Message::Join(Join::new(s.cookie(now, &extra))));
        assert!(matches!(
            s.handle(now, extra, &join, &info(), live).event,
            Event::Rejected(RejectReason::Full {
                max_clients: 10_000
            })
        ));
        // Every third leaves; the rest are still found by address and in the fan-out slice.
        for i in (0..10_000).step_by(3) {
            let l = leave(s.token(&a(i)).unwrap());
            assert!(matches!(
                s.handle(now, a(i), &l, &info(), live).event,
                Event::Left { .. }
            ));
        }
        assert_eq!(s.len(), 10_000 - 3334);
        let mut fan: Vec<SocketAddr> = s.addrs().to_vec();
        fan.sort();
        let mut want: Vec<SocketAddr> = (0..10_000).filter(|i| i % 3 != 0).map(a).collect();
        want.sort();
        assert_eq!(fan, want);
        assert!((0..10_000).all(|i| s.contains(&a(i)) == (i % 3 != 0)));
    }

    #[test]
    fn a_wrong_token_neither_ends_nor_keeps_alive_a_session() {
        let t0 = Instant::now();
        let mut s = table(t0, 4);
        let token = join(&mut s, t0, addr(1));
        let mut forged = token;
        forged[0] ^= 1;
        // A spoofed Leave from the victim's own address: counted, unanswered, no effect.
        let h = s.handle(
            t0,
            addr(1),
            &leave(forged),
            &info(),
            LivePosition::default(),
        );
        assert_eq!(h.event, Event::Ignored(Ignored::BadToken));
        assert_eq!(h.reply, None);
        assert!(s.contains(&addr(1)));
        // Spoofed Reports do not keep it alive: it is evicted on time.
        let mut out = Vec::new();
        for i in 1..=6u64 {
            let now = t0 + Duration::from_secs(i);
            let h = s.handle(
                now,
                addr(1),
                &report(forged),
                &info(),
                LivePosition::default(),
            );
            assert_eq!(h.event, Event::Ignored(Ignored::BadToken));
            assert_eq!(h.reply, None);
            s.evict_expired(now, &mut out);
        }
        assert_eq!(out, vec![(addr(1), 0)]);
        assert_eq!(s.stats().bad_tokens, 7);
        // The departure says why.
        let d: Vec<_> = s.departures().collect();
        assert_eq!((d.len(), d[0].reason), (1, "evicted"));
    }

    #[test]
    fn time_requests_are_answered_for_the_token_only_and_never_larger() {
        let t0 = Instant::now();
        let mut s = table(t0, 4);
        let token = join(&mut s, t0, addr(1));
        let mut i = info();
        i.timeline = proto::Timeline {
            ts: 441,
            server_us: 1234,
        };
        let req = |token| {
            enc(Message::TimeRequest(proto::TimeRequest {
                token,
                t1: 99,
                pad: [0; proto::TIME_REQUEST_PAD],
            }))
        };
        let at = t0 + Duration::from_micros(2_500_000);
        let h = s.handle(at, addr(1), &req(token), &i, LivePosition::default());
        assert_eq!(h.event, Event::TimeAnswered);
        let r = h.reply.unwrap();
        assert!(r.len() <= req(token).len(), "{} bytes", r.len());
        assert_eq!(
            proto::decode(&r).unwrap().msg,
            Message::TimeResponse(proto::TimeResponse {
                t1: 99,
                t2: 2_500_000,
                t3: 2_500_000,
                timeline: i.timeline
            })
        );
        // Wrong token, or no session: no answer.
        let h = s.handle(at, addr(1), &req([0; 16]), &i, LivePosition::default());
        assert_eq!(
            (h.event, h.reply),
            (Event::Ignored(Ignored::BadToken), None)
        );
        let h = s.handle(at, addr(2), &req(token), &i, LivePosition::default());
        assert_eq!(
            (h.event, h.reply),
            (Event::Ignored(Ignored::NotJoined), None)
        );
    }

    #[test]
    fn names_are_kept_sanitised_and_leaves_recorded_with_their_reason() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let mut j = Join::new(s.cookie(now, &addr(1)));
        j.name = format!("kitchen\u{1b}[31m{}", "x".repeat(100));
        let h = s.handle(
            now,
            addr(1),
            &enc(Message::Join(j)),
            &info(),
            LivePosition::default(),
        );
        let Event::Accepted { name, .. } = h.event else {
            panic!("{:?}", h.event)
        };
        assert!(name.starts_with("kitchen?[31m"), "{name}");
        assert_eq!(name.len(), proto::limits::MAX_NAME);
        assert_eq!(s.name(&addr(1)), Some(name.as_str()));
        let token = s.token(&addr(1)).unwrap();
        let l = enc(Message::Leave(proto::Leave {
            token,
            reason: LeaveReason::DeviceError,
        }));
        s.handle(now, addr(1), &l, &info(), LivePosition::default());
        let d: Vec<_> = s.departures().collect();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].name.as_str(), d[0].reason),
            (name.as_str(), "device error")
        );
    }

    #[test]
    fn a_listener_that_cannot_decode_the_codec_is_refused() {
        let now = Instant::now();
        let mut s = table(now, 4);
        let mut j = Join::new(s.cookie(now, &addr(1)));
        j.codecs = proto::AudioCodec::Flac.bit();
        let h = s.handle(
            now,
            addr(1),
            &enc(Message::Join(j)),
            &info(),
            LivePosition::default(),
        );
        let want = RejectReason::CodecUnsupported { codec: 0 };
        assert_eq!(h.event, Event::Rejected(want));
        assert_eq!(decode(&h.reply), Message::Reject(Reject { reason: want }));
        assert!(s.is_empty());
    }

    proptest::proptest! {
        /// Whatever arrives, from whomever: no panic, and no reply to an address that has not
        /// echoed a cookie is larger than what it sent (RFC 9000 §8).
        #[test]
        fn never_amplifies_to_unvalidated_addresses(
            dgrams in proptest::collection::vec(
                (0u16..4, 0u8..70, 0u8..3, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                1..60,
            )
        ) {
            let now = Instant::now();
            let mut s = table(now, 2);
            for (port, ty, ver, body) in dgrams {
                // Mostly well-formed headers (so every message type is reached), with bodies
                // that are random, and sometimes a valid Connect or Join.
                let from = addr(port);
                let version = [2, 2, 3][usize::from(ver)]; // mostly v2, sometimes a future version
                let mut d = vec![b'E', b'S', version, ty];
                d.extend_from_slice(&[0; 8]);
                d.extend_from_slice(&body);
                if ty == 1 && body.len() > 200 {
                    d = connect();
                }
                if ty == 3 && body.len() > 250 {
                    d = enc(Message::Join(Join::new(s.cookie(now, &from))));
                }
                let joined_before = s.contains(&from);
                let h = s.handle(now, from, &d, &info(), LivePosition::default());
                let validated = joined_before || matches!(h.event, Event::Accepted { .. } | Event::Rejoined | Event::Rejected(_));
                if let Some(r) = &h.reply {
                    proptest::prop_assert!(validated || r.len() <= d.len(), "{:?} -> {} bytes", h.event, r.len());
                }
                proptest::prop_assert!(s.len() <= 2);
            }
        }

        /// A private room, whatever arrives (Sealed included): nobody without the room key
        /// joins, and no reply, a `Reject{BadKey}` to a valid Join included, is larger than
        /// the datagram it answers.
        #[test]
        fn a_private_room_admits_nobody_without_the_key_and_never_amplifies(
            dgrams in proptest::collection::vec(
                (0u16..4, 0u8..70, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                1..60,
            )
        ) {
            let now = Instant::now();
            let mut s = table(now, 2);
            s.set_room_key(RoomKey::from_bytes([5; 32]), StreamKey::from_bytes(0, [6; 32]));
            for (port, ty, body) in dgrams {
                let from = addr(port);
                let mut d = vec![b'E', b'S', 2, ty];
                d.extend_from_slice(&[0; 8]);
                d.extend_from_slice(&body);
                if ty == 1 && body.len() > 200 {
                    d = connect();
                }
                if ty == 3 && body.len() > 150 {
                    let mut j = Join::new(s.cookie(now, &from));
                    // Sometimes a Noise-sized message 1 of random bytes.
                    if body.len() > 250 {
                        j.noise = Bytes::copy_from_slice(&body[..seal::MSG1_LEN]);
                    }
                    d = enc(Message::Join(j));
                }
                let h = s.handle(now, from, &d, &info(), LivePosition::default());
                if let Some(r) = &h.reply {
                    proptest::prop_assert!(r.len() <= d.len(), "{:?} -> {} bytes", h.event, r.len());
                }
                proptest::prop_assert!(s.is_empty(), "{:?}", h.event);
            }
        }
    }
}
