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

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::{COOKIE_EPOCH, MIN_CONNECT_LEN};
use proto::{
    COOKIE_LEN, Challenge, DecodeError, End, EndReason, ErrorCode, ErrorMsg, Message, MessageType,
    Packet, Reject, RejectReason, Report, StreamInfo,
};
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
    /// `Report`/`Leave` from an address with no session.
    NotJoined,
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
    },
    /// A listener already in the table joined again (its `Welcome` was probably lost).
    Rejoined,
    /// A `Join` was refused.
    Rejected(RejectReason),
    /// A keepalive with the listener's counters.
    Report(Report),
    /// A listener left; its slot is free.
    Left,
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
#[derive(Debug, Clone)]
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
    /// Datagrams ignored (malformed, wrong version, short Connect, unexpected, not joined).
    pub ignored: u64,
}

/// The listener table.
#[derive(Debug)]
pub struct Sessions {
    /// Keys of the cookie hash, random per process.
    key: (u64, u64),
    /// Epoch 0 starts here.
    origin: Instant,
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
    /// Counters.
    stats: SessionStats,
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
            max_clients,
            client_timeout,
            // Reserved for the whole capacity up front: a join never rehashes or moves the
            // table mid-stream, and untouched pages cost no memory.
            table: HashMap::with_capacity(max_clients),
            addrs: Vec::with_capacity(max_clients),
            accepting: true,
            control_seq: 0,
            stats: SessionStats::default(),
        }
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
    pub fn kick(&mut self, addr: &SocketAddr) -> Option<u64> {
        let start = self.start_seq(addr)?;
        if self.remove(addr) {
            self.stats.evicted += 1;
        }
        Some(start)
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
        if let Some(s) = self.table.get_mut(&from) {
            // Any valid datagram from a listener keeps it alive.
            s.last_heard = now;
        }
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
            Message::Join(j) => self.join(now, from, received, &j.cookie, info, live),
            Message::Report(r) => match self.table.get_mut(&from) {
                Some(s) => {
                    s.last_report = Some(r);
                    Handled {
                        reply: None,
                        event: Event::Report(r),
                    }
                }
                None => self.not_joined(received),
            },
            Message::Leave => {
                if self.remove(&from) {
                    self.stats.left += 1;
                    Handled {
                        reply: None,
                        event: Event::Left,
                    }
                } else {
                    // Never answered: a Leave is a bare 12-byte header, smaller than any
                    // Error, so an answer would amplify (RFC 9000 §8).
                    self.ignored(Ignored::NotJoined)
                }
            }
            _ => self.ignored(Ignored::Unexpected),
        }
    }

    /// The answer to a Report from an address with no session: `Error{NotJoined}` with
    /// [`NOT_JOINED_TEXT`], 49 bytes against the Report's 68.
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
        cookie: &[u8; COOKIE_LEN],
        info: &StreamInfo,
        live: LivePosition,
    ) -> Handled {
        if !self.cookie_valid(now, &from, cookie) {
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
        let welcome = |this: &mut Self| {
            let mut w = info.clone();
            w.start_seq = live.seq;
            w.start_ts = live.ts;
            this.encode(Message::Welcome(w))
        };
        // Once the stream is ending every valid Join is refused, a listener already in the
        // table included: no more audio will come, and its End is on the way.
        if self.accepting && self.table.contains_key(&from) {
            return Handled {
                reply: welcome(self),
                event: Event::Rejoined,
            };
        }
        let reason = if !self.accepting {
            Some(RejectReason::ShuttingDown)
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
        self.stats.accepted += 1;
        self.table.insert(
            from,
            Session {
                idx: self.addrs.len(),
                last_heard: now,
                start_seq: live.seq,
                last_report: None,
                joined: now,
            },
        );
        self.addrs.push(from);
        Handled {
            reply: welcome(self),
            event: Event::Accepted { start: live },
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
        for (a, _) in &out[start..] {
            if self.remove(a) {
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
    use proto::{Connect, Join, SampleFormat};

    const KEY: (u64, u64) = (1, 2);

    fn info() -> StreamInfo {
        StreamInfo {
            sample_rate: 44100,
            channels: 2,
            format: SampleFormat::S16Le,
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
            &enc(Message::Join(Join { cookie: c.cookie })),
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
        assert_eq!(h.event, Event::Accepted { start: live });
        let Message::Welcome(w) = decode(&h.reply) else {
            panic!("expected welcome")
        };
        assert_eq!((w.start_seq, w.start_ts), (17, 5000));
        assert_eq!(w.sample_rate, 44100);
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
        let join = enc(Message::Join(Join { cookie: [7; 16] }));
        let h = s.handle(now, addr(2), &join, &info(), LivePosition::default());
        assert_eq!(h.event, Event::BadCookie);
        assert!(h.reply.as_ref().unwrap().len() <= join.len());
        assert!(matches!(decode(&h.reply), Message::Challenge(_)));
        assert!(s.is_empty());
        // A cookie made for another address does not work either.
        let other = s.cookie(now, &addr(3));
        let join = enc(Message::Join(Join { cookie: other }));
        let h = s.handle(now, addr(2), &join, &info(), LivePosition::default());
        assert_eq!(h.event, Event::BadCookie);
        // Nor one made with another key (another server process).
        let s2 = Sessions::new(now, (9, 9), 4, Duration::from_secs(5));
        let join = enc(Message::Join(Join {
            cookie: s2.cookie(now, &addr(2)),
        }));
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
        let join = enc(Message::Join(Join { cookie }));
        // Next epoch: still valid.
        let later = made + COOKIE_EPOCH;
        let h = s.handle(later, addr(5), &join, &info(), LivePosition::default());
        assert!(matches!(h.event, Event::Accepted { .. }));
        // Two epochs on: expired.
        let cookie = s.cookie(made, &addr(6));
        let join = enc(Message::Join(Join { cookie }));
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
        let h = s.handle(
            now,
            addr(1),
            &enc(Message::Leave),
            &info(),
            LivePosition::default(),
        );
        assert_eq!(h.event, Event::Left);
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
        handshake(&mut s, now, addr(1), LivePosition::default());
        let live = LivePosition { seq: 9, ts: 900 };
        let h = handshake(&mut s, now, addr(1), live);
        assert_eq!(h.event, Event::Rejoined);
        let Message::Welcome(w) = decode(&h.reply) else {
            panic!("expected welcome")
        };
        assert_eq!(w.start_seq, 9);
        assert_eq!(s.len(), 1);
        assert_eq!(s.stats().accepted, 1);
    }

    #[test]
    fn silent_listener_is_evicted_reporting_one_is_not() {
        let t0 = Instant::now();
        let mut s = table(t0, 4);
        handshake(&mut s, t0, addr(1), LivePosition::default());
        handshake(&mut s, t0, addr(2), LivePosition::default());
        let report = enc(Message::Report(Report::default()));
        let mut out = Vec::new();
        for i in 1..=8u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            let h = s.handle(now, addr(2), &report, &info(), LivePosition::default());
            assert_eq!(h.event, Event::Report(Report::default()));
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
        // A Leave is 12 bytes: never answered.
        let leave = enc(Message::Leave);
        let h = s.handle(now, addr(1), &leave, &info(), LivePosition::default());
        assert_eq!(h.event, Event::Ignored(Ignored::NotJoined));
        assert_eq!(h.reply, None);
        // A Report (68 bytes) gets the 49-byte Error with its text.
        let report = enc(Message::Report(Report::default()));
        assert_eq!(report.len(), 68);
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
        c[2] = 2; // version byte
        let h = s.handle(now, addr(1), &c, &info(), LivePosition::default());
        assert_eq!(h.event, Event::Ignored(Ignored::WrongVersion));
        assert_eq!(
            decode(&h.reply),
            Message::Reject(Reject {
                reason: RejectReason::UnsupportedVersion { supported: 1 }
            })
        );
        let reply = h.reply.unwrap();
        assert!(reply.len() <= c.len());
        assert_eq!(reply[2], 1, "the Reject carries a version-1 header");
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
            &[b'E', b'S', 1, 99, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let h = s.handle(now, addr(1), g, &info(), LivePosition::default());
            assert_eq!(h.reply, None);
            assert_eq!(h.event, Event::Ignored(Ignored::Malformed));
        }
        // A server-only message from a peer is ignored too.
        let h = s.handle(
            now,
            addr(1),
            &enc(Message::Welcome(info())),
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
        for p in 1..=5 {
            handshake(&mut s, now, addr(p), LivePosition::default());
        }
        for p in [2, 5, 1] {
            s.handle(
                now,
                addr(p),
                &enc(Message::Leave),
                &info(),
                LivePosition::default(),
            );
        }
        let mut a = s.addrs().to_vec();
        a.sort();
        assert_eq!(a, vec![addr(3), addr(4)]);
        for p in [3, 4] {
            assert_eq!(
                s.handle(
                    now,
                    addr(p),
                    &enc(Message::Leave),
                    &info(),
                    LivePosition::default()
                )
                .event,
                Event::Left
            );
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
            let join = enc(Message::Join(Join {
                cookie: s.cookie(now, &from),
            }));
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
        let join = enc(Message::Join(Join {
            cookie: s.cookie(now, &extra),
        }));
        assert!(matches!(
            s.handle(now, extra, &join, &info(), live).event,
            Event::Rejected(RejectReason::Full {
                max_clients: 10_000
            })
        ));
        // Every third leaves; the rest are still found by address and in the fan-out slice.
        let leave = enc(Message::Leave);
        for i in (0..10_000).step_by(3) {
            assert_eq!(
                s.handle(now, a(i), &leave, &info(), live).event,
                Event::Left
            );
        }
        assert_eq!(s.len(), 10_000 - 3334);
        let mut fan: Vec<SocketAddr> = s.addrs().to_vec();
        fan.sort();
        let mut want: Vec<SocketAddr> = (0..10_000).filter(|i| i % 3 != 0).map(a).collect();
        want.sort();
        assert_eq!(fan, want);
        assert!((0..10_000).all(|i| s.contains(&a(i)) == (i % 3 != 0)));
    }

    proptest::proptest! {
        /// Whatever arrives, from whomever: no panic, and no reply to an address that has not
        /// echoed a cookie is larger than what it sent (RFC 9000 §8).
        #[test]
        fn never_amplifies_to_unvalidated_addresses(
            dgrams in proptest::collection::vec(
                (0u16..4, 0u8..12, 0u8..3, proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
                1..60,
            )
        ) {
            let now = Instant::now();
            let mut s = table(now, 2);
            for (port, ty, ver, body) in dgrams {
                // Mostly well-formed headers (so every message type is reached), with bodies
                // that are random, and sometimes a valid Connect or Join.
                let from = addr(port);
                let version = [1, 1, 2][usize::from(ver)]; // mostly v1, sometimes a future version
                let mut d = vec![b'E', b'S', version, ty];
                d.extend_from_slice(&[0; 8]);
                d.extend_from_slice(&body);
                if ty == 1 && body.len() > 200 {
                    d = connect();
                }
                if ty == 3 && body.len() > 250 {
                    d = enc(Message::Join(Join { cookie: s.cookie(now, &from) }));
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
    }
}
