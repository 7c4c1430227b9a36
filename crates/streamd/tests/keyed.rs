//! A private room on simulated time (docs/PROTOCOL.md §4.12): streamd's endpoint with a room
//! key and listen's real keyed session, over a wire this test can watch, drop, tamper with
//! and forge on. The right key plays every sample across stream key rotations; a wrong or
//! missing key gets `Reject{BadKey}` (no larger than the Join) and no session; nothing after
//! the `Welcome` travels in the clear; forged, replayed and plaintext listener messages are
//! counted and neither end nor keep alive a session; sealed audio fits the MTU.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::session::{Event as LEvent, Session, SessionConfig};
use listen::stats::ExitReason;
use proto::{LeaveReason, Message, MessageType, Packet, RejectReason};
use seal::RoomKey;
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, StartMode, Transmit};
use streamd::sessions::{Event as SEvent, Ignored};
use streamd::source::SourceInfo;

const RATE: u32 = 8000;
/// Frames pulled per 10 ms of playout.
const PULL: usize = 80;
const MTU: usize = 300;

/// Mono PCM whose sample `i` is `i` (wrapping), `len` frames long.
struct Synth {
    info: SourceInfo,
    len: u64,
    pos: u64,
}

impl Synth {
    fn new(len: u64) -> Self {
        Synth {
            info: SourceInfo {
                sample_rate: RATE,
                channels: 1,
                total_frames: Some(len),
                codec: "synthetic".into(),
                title: "private".into(),
            },
            len,
            pos: 0,
        }
    }
}

impl AudioSource for Synth {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let n = (max_frames as u64).min(self.len - self.pos);
        out.extend((self.pos..self.pos + n).map(|i| i as i16));
        self.pos += n;
        n as usize
    }
    fn is_finished(&self) -> bool {
        self.pos >= self.len
    }
    fn rewind(&mut self) -> Result<(), String> {
        self.pos = 0;
        Ok(())
    }
}

fn server() -> SocketAddr {
    "127.0.0.1:4000".parse().unwrap()
}

fn me() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

fn room() -> RoomKey {
    RoomKey::from_bytes([7; 32])
}

/// One endpoint, one listener, one wire; `mischief` may rewrite or drop each datagram to the
/// listener (index among them, the datagram) before it arrives.
struct Net {
    ep: Endpoint<Synth>,
    ls: Session,
    now: Instant,
    next_pull: Instant,
    /// Every datagram the endpoint sent the listener, as sent.
    down: Vec<Bytes>,
    /// Every datagram the listener sent, as sent.
    up: Vec<Bytes>,
    played: Vec<i16>,
    listener_events: Vec<LEvent>,
    server_events: Vec<SEvent>,
    /// Whether the listener's datagrams reach the server.
    uplink: bool,
    /// When the server last got one of them.
    last_up: Instant,
    mischief: Box<dyn FnMut(usize, Bytes) -> Option<Bytes>>,
}

impl Net {
    fn new(server_key: Option<RoomKey>, listener_key: Option<RoomKey>, len: u64) -> Self {
        let t0 = Instant::now();
        let config = EndpointConfig {
            interval: Duration::from_millis(20),
            start: StartMode::FirstClient,
            mtu: MTU,
            cookie_key: (1, 2),
            ..EndpointConfig::default()
        };
        let mut ep = Endpoint::new(t0, config, Synth::new(len));
        if let Some(k) = server_key {
            ep.set_room_key(t0, k, Duration::from_secs(3)).unwrap();
        }
        let mut ls = Session::new(SessionConfig::new(server()), t0);
        if let Some(k) = listener_key {
            ls = ls.with_room_key(&k).unwrap();
        }
        Net {
            ep,
            ls,
            now: t0,
            next_pull: t0,
            down: Vec::new(),
            up: Vec::new(),
            played: Vec::new(),
            listener_events: Vec::new(),
            server_events: Vec::new(),
            uplink: true,
            last_up: t0,
            mischief: Box::new(|_, d| Some(d)),
        }
    }

    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            let mut to_listener = Vec::new();
            while let Some(t) = self.ep.poll_transmit(self.now) {
                match t {
                    Transmit::One { dest, datagram } if dest == me() => to_listener.push(datagram),
                    Transmit::One { .. } => {}
                    Transmit::Fanout { datagrams, dests } => {
                        if dests.contains(&me()) {
                            to_listener.extend(datagrams.iter().cloned());
                        }
                    }
                }
            }
            for d in to_listener {
                moved = true;
                let i = self.down.len();
                self.down.push(d.clone());
                if let Some(d) = (self.mischief)(i, d) {
                    self.ls.handle(self.now, server(), &d);
                }
            }
            while let Some(t) = self.ls.poll_transmit(self.now) {
                moved = true;
                self.up.push(t.contents.clone());
                if self.uplink {
                    self.last_up = self.now;
                    self.ep.handle(self.now, me(), &t.contents);
                }
            }
            while let Some(e) = self.ep.poll_event() {
                if let streamd::endpoint::Event::Datagram { event, .. } = e {
                    self.server_events.push(event);
                }
            }
            while let Some(e) = self.ls.poll_event() {
                self.listener_events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs until `until` or until both sides are done.
    fn run(&mut self, until: Instant) {
        let mut buf = Vec::new();
        self.exchange();
        while self.now < until && !(self.ls.is_closed() && self.ep.is_closed()) {
            let next = [
                self.ep.poll_timeout(),
                self.ls.poll_timeout(),
                Some(self.next_pull),
                Some(until),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
            self.now = next.max(self.now);
            if self.ep.poll_timeout().is_some_and(|t| t <= self.now) {
                self.ep.handle_timeout(self.now);
            }
            if self.ls.poll_timeout().is_some_and(|t| t <= self.now) {
                self.ls.handle_timeout(self.now);
            }
            if self.next_pull <= self.now {
                self.next_pull = self.now + Duration::from_millis(10);
                buf.clear();
                self.ls.pull(self.now, PULL, &mut buf);
                self.played.extend_from_slice(&buf);
            }
            self.exchange();
        }
    }

    fn rejected(&self) -> Option<RejectReason> {
        self.listener_events.iter().find_map(|e| match e {
            LEvent::Rejected(r) => Some(*r),
            _ => None,
        })
    }
}

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

fn msg_type(d: &[u8]) -> u8 {
    d[3]
}

#[test]
fn the_right_key_plays_every_sample_across_rotations_and_nothing_after_the_welcome_is_clear() {
    // 8 s with a 3 s rotation: two switches mid-stream.
    let len = u64::from(RATE) * 8;
    let mut net = Net::new(Some(room()), Some(room()), len);
    let t0 = net.now;
    net.run(t0 + secs(12.0));
    assert_eq!(net.ls.exit_reason(), Some(ExitReason::Finished));
    let want: Vec<i16> = (0..len).map(|i| i as i16).collect();
    assert_eq!(net.played.len(), want.len(), "played length");
    assert!(net.played == want, "the audio differs from the source");
    let st = net.ls.stats().unwrap();
    assert_eq!((st.lost, st.concealed_ms), (0, 0), "{st:?}");
    assert_eq!(net.ls.tracker().garbage(), 0);

    // Nothing after the Welcome travels in the clear, and every datagram fits the MTU.
    let welcome = net
        .down
        .iter()
        .position(|d| msg_type(d) == MessageType::Welcome as u8)
        .unwrap();
    assert!(
        net.down[..welcome]
            .iter()
            .all(|d| msg_type(d) == MessageType::Challenge as u8)
    );
    assert!(
        net.down[welcome + 1..]
            .iter()
            .all(|d| msg_type(d) == MessageType::Sealed as u8)
    );
    assert!(net.down.iter().all(|d| d.len() <= MTU));
    let joined = net
        .up
        .iter()
        .position(|d| msg_type(d) == MessageType::Join as u8)
        .unwrap();
    assert!(
        net.up[joined + 1..]
            .iter()
            .all(|d| msg_type(d) == MessageType::Sealed as u8)
    );
    // Full datagrams: the payload is the MTU less the Audio header and the envelope.
    let fpp = net.ls.info().unwrap().frames_per_packet as usize;
    assert_eq!(fpp, (MTU - 28 - seal::wire::SEALED_OVERHEAD) / 2);

    // Three stream keys were used (0, then two rotations), each announced by Rekey.
    let mut key_ids: Vec<u32> = net.down[welcome + 1..]
        .iter()
        .filter_map(|d| match proto::decode(d).unwrap().msg {
            Message::Sealed(s) if s.inner_type == MessageType::Audio as u8 => Some(s.key_id),
            _ => None,
        })
        .collect();
    key_ids.dedup();
    assert_eq!(key_ids, vec![0, 1, 2]);
    // The End arrived sealed under the session key.
    assert!(net.down.iter().any(|d| matches!(
        proto::decode(d).unwrap().msg,
        Message::Sealed(s) if s.inner_type == MessageType::End as u8 && s.key_id == seal::SERVER_KEY_ID
    )));
}

fn join_bytes(net: &Net) -> usize {
    net.up
        .iter()
        .filter(|d| msg_type(d) == MessageType::Join as u8)
        .map(|d| d.len())
        .min()
        .unwrap()
}

#[test]
fn a_wrong_or_missing_key_gets_bad_key_no_larger_than_the_join_and_no_session() {
    for listener_key in [Some(RoomKey::from_bytes([8; 32])), None] {
        let mut net = Net::new(Some(room()), listener_key, u64::from(RATE));
        let t0 = net.now;
        net.run(t0 + secs(2.0));
        assert_eq!(
            net.rejected(),
            Some(RejectReason::BadKey),
            "{listener_key:?}"
        );
        assert!(net.ep.sessions().is_empty());
        assert_eq!(net.ep.stats().sessions.bad_keys, 1);
        assert!(
            net.server_events
                .contains(&SEvent::Rejected(RejectReason::BadKey))
        );
        let reject = net
            .down
            .iter()
            .find(|d| msg_type(d) == MessageType::Reject as u8)
            .unwrap();
        assert!(reject.len() <= join_bytes(&net));
        // Not a single Audio datagram was sent: the stream never started.
        assert_eq!(net.ep.stats().audio_datagrams, 0);
    }
}

#[test]
fn a_keyed_listener_against_an_open_server_fails_as_bad_key() {
    let mut net = Net::new(None, Some(room()), u64::from(RATE));
    let t0 = net.now;
    net.run(t0 + secs(2.0));
    assert_eq!(net.rejected(), Some(RejectReason::BadKey));
}

/// The listener's token, from its Welcome on the wire (in the clear: an on-path host has it).
fn token(net: &Net) -> proto::Token {
    net.down
        .iter()
        .find_map(|d| match proto::decode(d).unwrap().msg {
            Message::Welcome(w) => Some(w.token),
            _ => None,
        })
        .unwrap()
}

#[test]
fn spoofed_forged_and_replayed_listener_messages_neither_end_nor_extend_a_session() {
    let mut net = Net::new(Some(room()), Some(room()), u64::from(RATE) * 60);
    let t0 = net.now;
    net.run(t0 + secs(1.5));
    assert_eq!(net.ep.sessions().len(), 1);
    let token = token(&net);
    let before = net.ep.stats().sessions;

    // A plaintext Leave and Report with the right token: dropped as a bad token.
    let leave = Message::Leave(proto::Leave {
        token,
        reason: LeaveReason::Done,
    });
    let plain_leave = proto::encode_to_bytes(&Packet::new(99, leave)).unwrap();
    net.ep.handle(net.now, me(), &plain_leave);
    assert_eq!(
        net.ep.sessions().len(),
        1,
        "a plaintext Leave ended the session"
    );
    // The listener's own last sealed Report, replayed, and a tampered copy: forged.
    let last_sealed = net
        .up
        .iter()
        .rev()
        .find(|d| msg_type(d) == MessageType::Sealed as u8)
        .unwrap()
        .clone();
    net.ep.handle(net.now, me(), &last_sealed);
    let mut tampered = last_sealed.to_vec();
    let n = tampered.len();
    tampered[n - 1] ^= 1;
    net.ep.handle(net.now, me(), &tampered);
    // Truncated: one byte short of its tag.
    net.ep.handle(net.now, me(), &last_sealed[..n - 1]);
    let after = net.ep.stats().sessions;
    assert_eq!(after.bad_tokens, before.bad_tokens + 1);
    assert_eq!(after.forged, before.forged + 2, "replayed and tampered");
    assert_eq!(after.ignored, before.ignored + 4);
    assert_eq!(net.ep.sessions().len(), 1);

    // The listener falls silent; an attacker keeps sending plaintext Reports with its token,
    // replays and forgeries: the session is evicted on time all the same.
    net.uplink = false;
    let silent_from = net.now;
    let report = Message::Report(proto::Report {
        token,
        ..Default::default()
    });
    let plain_report = proto::encode_to_bytes(&Packet::new(100, report)).unwrap();
    let mut evicted_at = None;
    while net.now < silent_from + secs(8.0) {
        let at = net.now + Duration::from_millis(250);
        net.run(at);
        net.ep.handle(net.now, me(), &plain_report);
        net.ep.handle(net.now, me(), &last_sealed);
        net.ep.handle(net.now, me(), &tampered);
        if net.ep.sessions().is_empty() {
            evicted_at = Some(net.now);
            break;
        }
    }
    let evicted_at = evicted_at.expect("the spoofed keepalives kept the session");
    // Evicted 5 s (the client timeout) after the listener's own last datagram, within the
    // housekeeping period and this loop's step.
    let silence = evicted_at - net.last_up;
    assert!(silence > secs(5.0) && silence <= secs(5.4), "{silence:?}");
    assert!(
        net.server_events
            .contains(&SEvent::Ignored(Ignored::Forged))
    );
    assert!(
        net.server_events
            .contains(&SEvent::Ignored(Ignored::BadToken))
    );
}

#[test]
fn tampered_truncated_and_replayed_audio_is_dropped_counted_and_concealed() {
    let len = u64::from(RATE) * 3;
    let mut net = Net::new(Some(room()), Some(room()), len);
    let mut audio_seen = 0usize;
    let mut replay: Option<Bytes> = None;
    net.mischief = Box::new(move |_, d| {
        if msg_type(&d) != MessageType::Sealed as u8 {
            return Some(d);
        }
        let Message::Sealed(s) = proto::decode(&d).unwrap().msg else {
            return Some(d);
        };
        if s.inner_type != MessageType::Audio as u8 {
            return Some(d);
        }
        audio_seen += 1;
        match audio_seen {
            // Tampered: a bit of the ciphertext flipped.
            20 => {
                let mut t = d.to_vec();
                t[30] ^= 0x40;
                Some(Bytes::from(t))
            }
            // Truncated by a byte (the length prefix then claims more than is there), and
            // truncated consistently (the prefix rewritten): neither opens.
            40 => Some(d.slice(..d.len() - 1)),
            60 => {
                let mut t = d.to_vec();
                t.truncate(t.len() - 4);
                let l = (s.ciphertext.len() - 4) as u64;
                t[17..25].copy_from_slice(&l.to_le_bytes());
                Some(Bytes::from(t))
            }
            // Keep one to replay later in place of another.
            70 => {
                replay = Some(d.clone());
                Some(d)
            }
            80 => replay.clone(),
            _ => Some(d),
        }
    });
    let t0 = net.now;
    net.run(t0 + secs(6.0));
    assert_eq!(net.ls.exit_reason(), Some(ExitReason::Finished));
    // Four datagrams never opened: counted as garbage, their audio concealed, the rest exact.
    assert_eq!(net.ls.tracker().garbage(), 4);
    let st = net.ls.stats().unwrap();
    assert_eq!(st.lost, 4, "{st:?}");
    assert_eq!(net.played.len() as u64, len);
    let want: Vec<i16> = (0..len).map(|i| i as i16).collect();
    // Only the four lost datagrams' frames differ (concealed), nothing else: at most four
    // runs of differing frames, none longer than a datagram.
    let fpp = net.ls.info().unwrap().frames_per_packet as usize;
    let differing: Vec<usize> = (0..want.len())
        .filter(|&i| net.played[i] != want[i])
        .collect();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &i in &differing {
        match runs.last_mut() {
            Some((_, end)) if i - *end <= fpp => *end = i,
            _ => runs.push((i, i)),
        }
    }
    assert!(!runs.is_empty() && runs.len() <= 4, "{runs:?}");
    assert!(runs.iter().all(|(a, b)| b - a < fpp), "{runs:?}");
}

#[test]
fn a_listener_joining_during_an_announcement_gets_the_next_key() {
    // The rotation is 3 s with a 1 s lead: announced at 2 s. Join at 2.5 s with start now.
    let t0 = Instant::now();
    let config = EndpointConfig {
        start: StartMode::Now,
        mtu: MTU,
        cookie_key: (1, 2),
        ..EndpointConfig::default()
    };
    let mut net = Net::new(None, Some(room()), u64::from(RATE) * 8);
    net.ep = Endpoint::new(t0, config, Synth::new(u64::from(RATE) * 8));
    net.ep.set_room_key(t0, room(), secs(3.0)).unwrap();
    net.now = t0;
    net.ls = Session::new(SessionConfig::new(server()), t0 + secs(2.5))
        .with_room_key(&room())
        .unwrap();
    // Hold the listener back until 2.5 s.
    net.uplink = false;
    net.run(t0 + secs(2.5));
    net.uplink = true;
    net.down.clear();
    net.run(t0 + secs(5.0));
    assert_eq!(net.ls.exit_reason(), None);
    assert_eq!(net.ls.tracker().garbage(), 0);
    let st = net.ls.tracker();
    assert!(st.received() > 100, "{}", st.received());
    // Audio under key 1 after the switch at 3 s opened.
    let key1 = net
        .down
        .iter()
        .filter(|d| {
            matches!(proto::decode(d).unwrap().msg,
            Message::Sealed(s) if s.inner_type == MessageType::Audio as u8 && s.key_id == 1)
        })
        .count();
    assert!(key1 > 50, "{key1}");
}

/// A keyed endpoint with `repair` and a 3 s rotation, and a keyed listener.
fn net_with(repair: streamd::endpoint::RepairConfig, len: u64) -> Net {
    let mut net = Net::new(Some(room()), Some(room()), len);
    let t0 = net.now;
    let config = EndpointConfig {
        mtu: MTU,
        cookie_key: (1, 2),
        repair,
        ..EndpointConfig::default()
    };
    net.ep = Endpoint::new(t0, config, Synth::new(len));
    net.ep.set_room_key(t0, room(), secs(3.0)).unwrap();
    net
}

#[test]
fn a_lost_datagram_is_asked_for_sealed_and_resent_sealed() {
    let len = u64::from(RATE) * 2;
    let repair = streamd::endpoint::RepairConfig {
        fec: None,
        retransmit: true,
    };
    let mut net = net_with(repair, len);
    let mut audio_seen = 0usize;
    net.mischief = Box::new(move |_, d| {
        if let Ok(Packet {
            msg: Message::Sealed(s),
            ..
        }) = proto::decode(&d)
            && s.inner_type == MessageType::Audio as u8
        {
            audio_seen += 1;
            if audio_seen == 30 {
                return None;
            }
        }
        Some(d)
    });
    let t0 = net.now;
    net.run(t0 + secs(5.0));
    assert_eq!(net.ls.exit_reason(), Some(ExitReason::Finished));
    let st = net.ls.stats().unwrap();
    assert_eq!((st.lost, st.recovered_retransmit), (1, 1), "{st:?}");
    assert_eq!(st.concealed_ms, 0, "{st:?}");
    let want: Vec<i16> = (0..len).map(|i| i as i16).collect();
    assert!(net.played == want, "the audio differs from the source");
    // The Resent went out sealed under a stream key, like the audio.
    assert!(net.down.iter().any(|d| matches!(
        proto::decode(d).unwrap().msg,
        Message::Sealed(s) if s.inner_type == MessageType::Resent as u8 && s.key_id < seal::STREAM_KEY_IDS
    )));
    assert_eq!(net.ls.tracker().garbage(), 0);
}

#[test]
fn a_kicked_listener_gets_its_end_sealed_and_the_stream_key_rotates_soon() {
    let mut net = net_with(
        streamd::endpoint::RepairConfig::default(),
        u64::from(RATE) * 20,
    );
    let t0 = net.now;
    net.run(t0 + secs(0.5));
    assert_eq!(net.ep.stream_key_id(), Some(0));
    assert!(net.ep.kick(net.now, me()));
    net.exchange();
    // The End{Kicked} opened under the listener's session key: it ends as evicted.
    net.run(t0 + secs(1.0));
    assert!(
        net.listener_events.iter().any(|e| matches!(
            e,
            LEvent::EndReceived {
                reason: ExitReason::Evicted,
                ..
            }
        )),
        "{:?}",
        net.listener_events
    );
    // The switch comes a lead after the kick, not at the 3 s schedule.
    let kicked = net.now;
    net.run(t0 + secs(2.0));
    assert_eq!(
        net.ep.stream_key_id(),
        Some(1),
        "no switch {:?} after the kick",
        net.now - kicked
    );
}
