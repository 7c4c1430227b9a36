//! The server's sans-IO core on simulated time, with synthetic PCM: start on the first
//! listener, real-time pacing, the Welcome after a repeated Join, capacity, eviction timing,
//! `End` ×3 spacing and `last_seq` at end of file, at shutdown and at eviction, answers while
//! shutting down, looping, and a source shorter than announced. No sockets, no tokio.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::{END_REPEAT, END_SPACING, MIN_CONNECT_LEN};
use proto::{
    Connect, End, EndReason, Join, Leave, LeaveReason, Message, Packet, Reject, RejectReason,
    Report, StreamInfo, Timeline, Token,
};
use streamd::endpoint::{
    AudioSource, Endpoint, EndpointConfig, Event, HOUSEKEEPING, StartMode, Transmit,
};
use streamd::source::SourceInfo;

const RATE: u32 = 8000;
const TICK: Duration = Duration::from_millis(20);
/// Frames in one tick at RATE.
const PER_TICK: u64 = 160;

/// Mono PCM whose sample `i` is `i` (wrapping), `len` frames long; `announced` is what its
/// "container" claims.
struct Synth {
    info: SourceInfo,
    len: u64,
    pos: u64,
    rewinds: u64,
}

impl Synth {
    fn new(len: u64, announced: Option<u64>) -> Self {
        Synth {
            info: SourceInfo {
                sample_rate: RATE,
                channels: 1,
                total_frames: announced,
                codec: "synthetic".into(),
                title: "synth".into(),
            },
            len,
            pos: 0,
            rewinds: 0,
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
        self.rewinds += 1;
        Ok(())
    }
}

fn config() -> EndpointConfig {
    EndpointConfig {
        interval: TICK,
        max_clients: 4,
        client_timeout: Duration::from_secs(5),
        start: StartMode::FirstClient,
        looping: false,
        // 28 bytes of overhead + 100 mono frames.
        mtu: 228,
        cookie_key: (1, 2),
        ..EndpointConfig::default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn enc(msg: Message) -> Bytes {
    proto::encode_to_bytes(&Packet::new(0, msg)).unwrap()
}

/// One datagram as the simulated network saw it.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    to: SocketAddr,
    packet: Packet,
}

/// The endpoint on simulated time, with every datagram it sends recorded per destination.
struct Sim {
    ep: Endpoint<Synth>,
    t0: Instant,
    now: Instant,
    sent: Vec<Sent>,
    events: Vec<Event>,
    /// The token of the last Welcome each address got.
    tokens: std::collections::HashMap<SocketAddr, Token>,
}

impl Sim {
    fn new(config: EndpointConfig, source: Synth) -> Self {
        let t0 = Instant::now();
        let mut s = Sim {
            ep: Endpoint::new(t0, config, source),
            t0,
            now: t0,
            sent: Vec::new(),
            events: Vec::new(),
            tokens: std::collections::HashMap::new(),
        };
        s.drain();
        s
    }

    fn drain(&mut self) {
        while let Some(t) = self.ep.poll_transmit(self.now) {
            let (datagrams, dests): (Vec<Bytes>, Vec<SocketAddr>) = match t {
                Transmit::One { dest, datagram } => (vec![datagram], vec![dest]),
                Transmit::Fanout { datagrams, dests } => (datagrams.to_vec(), dests.to_vec()),
            };
            for to in dests {
                for d in &datagrams {
                    self.sent.push(Sent {
                        at: self.now,
                        to,
                        packet: proto::decode(d).unwrap(),
                    });
                }
            }
        }
        while let Some(e) = self.ep.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs every timer up to `t` (ms after t0), exactly when it is due.
    fn run_to(&mut self, ms: u64) {
        let t = self.t0 + Duration::from_millis(ms);
        while let Some(d) = self.ep.poll_timeout() {
            if d > t {
                break;
            }
            self.now = self.now.max(d);
            self.ep.handle_timeout(self.now);
            self.drain();
        }
        self.now = self.now.max(t);
    }

    fn ms(&self) -> u64 {
        self.now.duration_since(self.t0).as_millis() as u64
    }

    fn send(&mut self, from: SocketAddr, msg: Message) {
        let b = enc(msg);
        self.ep.handle(self.now, from, &b);
        self.drain();
    }

    /// What `to` received since index `from` of the log.
    fn to(&self, to: SocketAddr, from: usize) -> Vec<Sent> {
        self.sent[from..]
            .iter()
            .filter(|s| s.to == to)
            .cloned()
            .collect()
    }

    fn connect(&mut self, from: SocketAddr) -> [u8; 16] {
        let mark = self.sent.len();
        self.send(
            from,
            Message::Connect(Connect {
                max_version: proto::VERSION,
                padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
            }),
        );
        match &self.to(from, mark)[..] {
            [s] => match &s.packet.msg {
                Message::Challenge(c) => c.cookie,
                m => panic!("expected Challenge, got {m:?}"),
            },
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    /// Connect + Join; the answer to the Join.
    fn join(&mut self, from: SocketAddr) -> Message {
        let cookie = self.connect(from);
        let mark = self.sent.len();
        self.send(from, Message::Join(Join::new(cookie)));
        let replies = self.to(from, mark);
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies[0].packet.msg.clone()
    }

    fn welcome(&mut self, from: SocketAddr) -> StreamInfo {
        match self.join(from) {
            Message::Welcome(w) => {
                self.tokens.insert(from, w.token);
                w.info
            }
            m => panic!("expected Welcome, got {m:?}"),
        }
    }

    /// The token `from`'s last Welcome carried.
    fn token(&self, from: SocketAddr) -> Token {
        self.tokens[&from]
    }

    /// A keepalive from `from` carrying `token`.
    fn report(&mut self, from: SocketAddr, token: Token) {
        self.send(
            from,
            Message::Report(Report {
                token,
                ..Report::default()
            }),
        );
    }

    /// A Leave from `from` carrying `token`.
    fn leave(&mut self, from: SocketAddr, token: Token) {
        self.send(
            from,
            Message::Leave(Leave {
                token,
                reason: LeaveReason::Interrupted,
            }),
        );
    }
}

/// A token that is not `t`.
fn forged(t: Token) -> Token {
    let mut f = t;
    f[0] ^= 1;
    f
}

/// When frame `f` is due on the server's clock, by `t`, in µs.
fn due_us(t: Timeline, f: u64) -> i128 {
    i128::from(t.server_us) + (i128::from(f) - i128::from(t.ts)) * 1_000_000 / i128::from(RATE)
}

fn audio_seqs(s: &[Sent]) -> Vec<u64> {
    s.iter()
        .filter(|s| matches!(s.packet.msg, Message::Audio(_)))
        .map(|s| s.packet.seq)
        .collect()
}

fn ends(s: &[Sent]) -> Vec<(Instant, u64, End)> {
    s.iter()
        .filter_map(|s| match s.packet.msg {
            Message::End(e) => Some((s.at, s.packet.seq, e)),
            _ => None,
        })
        .collect()
}

/// The End copies are END_REPEAT, END_SPACING apart from `first`, identical, with `end`.
fn assert_end_copies(got: &[(Instant, u64, End)], first: Instant, end: End) {
    assert_eq!(got.len(), END_REPEAT as usize, "{got:?}");
    for (k, (at, seq, e)) in got.iter().enumerate() {
        assert_eq!(*at, first + END_SPACING * k as u32, "copy {k}");
        assert_eq!(*seq, got[0].1, "copies share their seq");
        assert_eq!(*e, end);
    }
}

#[test]
fn nothing_is_sent_before_the_first_listener_then_audio_starts_at_zero() {
    let mut s = Sim::new(config(), Synth::new(100_000, Some(100_000)));
    s.run_to(2000);
    assert!(!s.ep.is_started());
    assert!(s.sent.is_empty());
    assert_eq!(s.ep.live().seq, 0);
    let w = s.welcome(addr(1));
    assert_eq!((w.start_seq, w.start_ts), (0, 0));
    assert_eq!(w.sample_rate, RATE);
    assert_eq!(w.frames_per_packet, 100);
    assert_eq!(w.interval_us, 20_000);
    assert_eq!(w.total_frames, Some(100_000));
    assert!(s.ep.is_started());
    assert!(s.events.contains(&Event::Started));
    s.run_to(2100);
    let audio = s.to(addr(1), 0);
    let first = audio
        .iter()
        .find_map(|x| match &x.packet.msg {
            Message::Audio(a) => Some((x.packet.seq, a.ts)),
            _ => None,
        })
        .unwrap();
    assert_eq!(first, (0, 0));
}

#[test]
fn start_now_streams_without_listeners_and_a_late_joiner_starts_live() {
    let mut cfg = config();
    cfg.start = StartMode::Now;
    let mut s = Sim::new(cfg, Synth::new(100_000, Some(100_000)));
    assert!(s.ep.is_started());
    s.run_to(1000);
    assert!(s.sent.is_empty(), "nobody to send to");
    // 1 s of audio was cut even so: 50 ticks of 160 frames, 2 datagrams each (100 + 60).
    assert_eq!(
        s.ep.live(),
        streamd::sessions::LivePosition { seq: 100, ts: 8000 }
    );
    let w = s.welcome(addr(1));
    assert_eq!((w.start_seq, w.start_ts), (100, 8000));
    let mark = s.sent.len();
    s.run_to(1020);
    let got = s.to(addr(1), mark);
    assert_eq!(audio_seqs(&got), vec![100, 101]);
}

#[test]
fn pacing_sends_exactly_the_media_clock_in_bursts_of_one_interval() {
    let mut cfg = config();
    cfg.client_timeout = Duration::from_secs(3600);
    let mut s = Sim::new(cfg, Synth::new(1_000_000, None));
    s.welcome(addr(1));
    let t_join = s.now;
    s.run_to(10_000);
    // Every tick on the 20 ms grid carries one interval: 160 frames = 2 datagrams (100 + 60).
    let got = s.to(addr(1), 0);
    let mut frames = 0u64;
    let mut per_tick = std::collections::BTreeMap::<Instant, u64>::new();
    for x in &got {
        if let Message::Audio(a) = &x.packet.msg {
            assert_eq!(a.ts, frames, "ts contiguous");
            frames += (a.payload.len() / 2) as u64;
            *per_tick.entry(x.at).or_default() += (a.payload.len() / 2) as u64;
            assert_eq!(
                (x.at - t_join).as_nanos() % TICK.as_nanos(),
                0,
                "on the grid"
            );
        }
    }
    assert_eq!(frames, 10 * u64::from(RATE));
    assert_eq!(per_tick.len(), 500);
    assert!(per_tick.values().all(|&f| f == PER_TICK), "{per_tick:?}");
}

#[test]
fn a_late_timer_catches_up_in_one_burst_and_keeps_the_grid() {
    let mut s = Sim::new(config(), Synth::new(1_000_000, None));
    s.welcome(addr(1));
    s.run_to(100);
    let mark = s.sent.len();
    // The shell oversleeps by 290 ms: one call sends everything due, then the grid resumes.
    s.now += Duration::from_millis(290);
    s.ep.handle_timeout(s.now);
    s.drain();
    let burst: u64 = s.to(addr(1), mark).len() as u64;
    // 3120 − 800 = 2320 frames were due: 23 full datagrams and one of 20 frames.
    assert_eq!(burst, 24);
    assert_eq!(s.ep.live().ts, 390 * 8);
    let next = s.ep.poll_timeout().unwrap();
    assert_eq!(next - s.t0, Duration::from_millis(400));
}

#[test]
fn end_of_file_sends_end_three_times_with_the_last_seq_and_closes() {
    // 1000 frames: 6 full ticks (20..120 ms, 960 frames), then 40 at 140 ms.
    let mut s = Sim::new(config(), Synth::new(1000, Some(1000)));
    s.welcome(addr(1));
    s.run_to(1000);
    assert!(s.ep.is_closed());
    assert_eq!(s.ep.poll_timeout(), None);
    let got = s.to(addr(1), 0);
    let seqs = audio_seqs(&got);
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (0..=last).collect::<Vec<_>>());
    assert_eq!(s.ep.stats().frames, 1000);
    let e = ends(&got);
    // End goes out right behind the last audio, at 140 ms.
    let t_end = s.t0 + Duration::from_millis(140);
    assert_end_copies(
        &e,
        t_end,
        End {
            reason: EndReason::Finished,
            last_seq: Some(last),
        },
    );
    assert_eq!(e[0].1, last + 1, "End's header seq is the next audio seq");
    assert!(
        !s.events
            .iter()
            .any(|e| matches!(e, Event::LengthMismatch { .. }))
    );
    assert!(s.events.contains(&Event::Ending {
        reason: EndReason::Finished,
        seq: last + 1,
        listeners: 1
    }));
}

#[test]
fn a_source_shorter_than_announced_says_so() {
    let mut s = Sim::new(config(), Synth::new(1000, Some(5000)));
    s.welcome(addr(1));
    s.run_to(1000);
    assert!(s.ep.is_closed());
    assert!(
        s.events.contains(&Event::LengthMismatch {
            announced: 5000,
            sent: 1000
        }),
        "{:?}",
        s.events
    );
    let e = ends(&s.to(addr(1), 0));
    assert_eq!(e[0].2.reason, EndReason::Finished);
}

#[test]
fn shutdown_sends_end_three_times_and_answers_joins_with_shutting_down_until_closed() {
    let mut s = Sim::new(config(), Synth::new(1_000_000, None));
    s.welcome(addr(1));
    s.run_to(500);
    let last_audio = *audio_seqs(&s.to(addr(1), 0)).last().unwrap();
    // A validated stranger, ready to join during the shutdown.
    let cookie = s.connect(addr(2));
    let mark = s.sent.len();
    let t_stop = s.now;
    s.ep.shutdown(s.now);
    s.drain();
    s.ep.shutdown(s.now); // a second call changes nothing
    s.drain();
    // During the whole End repetition (0..100 ms), every valid Join is answered.
    let shutting_down = Message::Reject(Reject {
        reason: RejectReason::ShuttingDown,
    });
    for ms in [0, 10, 49, 50, 70, 99] {
        s.run_to(500 + ms);
        assert!(!s.ep.is_closed(), "closed at +{ms} ms");
        for who in [2, 1] {
            let c = if who == 2 { cookie } else { s.connect(addr(1)) };
            let mark = s.sent.len();
            s.send(addr(who), Message::Join(Join::new(c)));
            let r = s.to(addr(who), mark);
            assert_eq!(r.len(), 1, "+{ms} ms, listener {who}: {r:?}");
            assert_eq!(r[0].packet.msg, shutting_down, "+{ms} ms, listener {who}");
        }
        // A Connect still gets its Challenge.
        s.connect(addr(3));
    }
    s.run_to(600);
    assert!(s.ep.is_closed());
    let got = s.to(addr(1), mark);
    assert!(audio_seqs(&got).is_empty(), "no audio after shutdown");
    assert_end_copies(
        &ends(&got),
        t_stop,
        End {
            reason: EndReason::Shutdown,
            last_seq: Some(last_audio),
        },
    );
    assert!(ends(&s.to(addr(2), 0)).is_empty(), "never joined, no End");
    assert_eq!(s.ep.end_reason(), Some(EndReason::Shutdown));
    // Closed: nothing is answered any more.
    let before = s.sent.len();
    s.send(addr(2), Message::Join(Join::new(cookie)));
    assert_eq!(s.sent.len(), before);
}

#[test]
fn shutdown_without_listeners_closes_at_once() {
    let mut s = Sim::new(config(), Synth::new(1_000_000, None));
    s.run_to(300);
    s.ep.shutdown(s.now);
    s.drain();
    assert!(s.ep.is_closed());
    assert!(s.sent.is_empty());
}

#[test]
fn a_listener_that_joined_after_the_last_audio_gets_end_without_last_seq() {
    let mut cfg = config();
    cfg.start = StartMode::Now;
    let mut s = Sim::new(cfg, Synth::new(1_000_000, None));
    s.run_to(200);
    s.welcome(addr(1));
    s.ep.shutdown(s.now);
    s.drain();
    s.run_to(400);
    let e = ends(&s.to(addr(1), 0));
    assert_end_copies(
        &e,
        s.t0 + Duration::from_millis(200),
        End {
            reason: EndReason::Shutdown,
            last_seq: None,
        },
    );
}

#[test]
fn a_silent_listener_is_evicted_after_the_timeout_with_end_three_times() {
    let mut s = Sim::new(config(), Synth::new(10_000_000, None));
    s.welcome(addr(1));
    s.welcome(addr(2));
    let (t1, t2) = (s.token(addr(1)), s.token(addr(2)));
    assert_ne!(t1, t2, "every session has its own token");
    // Listener 2 reports every second; listener 1 never does, but Reports with a wrong token
    // come from its address (a spoofer keeping it alive): they are neither answered nor a
    // keepalive.
    let mut forged_while_joined = 0;
    for sec in 1..=7u64 {
        s.run_to(sec * 1000);
        s.report(addr(2), t2);
        if s.ep.sessions().contains(&addr(1)) {
            let mark = s.sent.len();
            s.report(addr(1), forged(t1));
            s.report(addr(1), t2);
            assert!(
                s.to(addr(1), mark).is_empty(),
                "a Report with a wrong token was answered"
            );
            forged_while_joined += 2;
        }
    }
    // Joined until the eviction after 5 s: forged at 1..=5 s.
    assert_eq!(forged_while_joined, 10);
    assert_eq!(s.ep.stats().sessions.bad_tokens, forged_while_joined);
    let evicted_at = s
        .events
        .iter()
        .position(|e| *e == Event::Evicted { addr: addr(1) })
        .expect("evicted");
    assert!(!s.events.contains(&Event::Evicted { addr: addr(2) }));
    assert_eq!(s.ep.sessions().addrs(), &[addr(2)]);
    let got = s.to(addr(1), 0);
    let e = ends(&got);
    let first = e[0].0;
    // Silent since t0: evicted at the first look after 5 s, within one housekeeping period.
    let after = first - s.t0;
    assert!(
        after > Duration::from_secs(5) && after <= Duration::from_secs(5) + HOUSEKEEPING,
        "evicted {after:?} after its last datagram ({evicted_at})"
    );
    // last_seq is exactly the last audio it was sent, and no audio follows the End.
    let last = got
        .iter()
        .filter(|x| x.at <= first && matches!(x.packet.msg, Message::Audio(_)))
        .map(|x| x.packet.seq)
        .max()
        .unwrap();
    assert_end_copies(
        &e,
        first,
        End {
            reason: EndReason::Evicted,
            last_seq: Some(last),
        },
    );
    assert!(
        got.iter()
            .all(|x| x.at <= first || !matches!(x.packet.msg, Message::Audio(_)))
    );
    // Its Report (with the token it had) now gets Error{NotJoined}.
    let mark = s.sent.len();
    s.report(addr(1), t1);
    let r = s.to(addr(1), mark);
    assert!(
        matches!(r[0].packet.msg, Message::Error(ref e) if e.code == proto::ErrorCode::NotJoined)
    );
}

#[test]
fn capacity_rejects_with_full_and_a_leave_frees_the_slot() {
    let mut cfg = config();
    cfg.max_clients = 2;
    let mut s = Sim::new(cfg, Synth::new(10_000_000, None));
    s.welcome(addr(1));
    s.welcome(addr(2));
    assert_eq!(
        s.join(addr(3)),
        Message::Reject(Reject {
            reason: RejectReason::Full { max_clients: 2 }
        })
    );
    s.run_to(100);
    assert!(
        s.to(addr(3), 0)
            .iter()
            .all(|x| !matches!(x.packet.msg, Message::Audio(_)))
    );
    // A Leave without listener 1's token (spoofed, or listener 2's) frees nothing.
    let (t1, t2) = (s.token(addr(1)), s.token(addr(2)));
    let mark = s.sent.len();
    s.leave(addr(1), forged(t1));
    s.leave(addr(1), t2);
    s.leave(addr(1), [0; proto::TOKEN_LEN]);
    assert_eq!(
        s.sent.len(),
        mark,
        "a Leave with a wrong token was answered"
    );
    assert_eq!(s.ep.sessions().len(), 2);
    assert!(matches!(s.join(addr(3)), Message::Reject(_)));
    assert_eq!(s.ep.stats().sessions.left, 0);
    // Its own token does.
    s.leave(addr(1), t1);
    assert_eq!(s.ep.stats().sessions.left, 1);
    assert!(!s.ep.sessions().contains(&addr(1)));
    assert!(matches!(s.join(addr(3)), Message::Welcome(_)));
    assert_eq!(s.ep.stats().sessions.rejected, 2);
    assert_eq!(s.ep.stats().peak_listeners, 2);
}

#[test]
fn a_repeated_join_gets_the_live_position_while_audio_goes_on_from_the_first() {
    let mut s = Sim::new(config(), Synth::new(10_000_000, None));
    let w1 = s.welcome(addr(1));
    let token = s.token(addr(1));
    assert_eq!((w1.start_seq, w1.start_ts), (0, 0));
    s.run_to(500);
    let live = s.ep.live();
    // Its Welcome was "lost": it joins again.
    let w2 = s.welcome(addr(1));
    assert_eq!(s.token(addr(1)), token, "the same session keeps its token");
    assert_eq!((w2.start_seq, w2.start_ts), (live.seq, live.ts));
    assert!(w2.start_seq > 0);
    // Both Welcomes describe one media timeline: every frame is due at the same instant.
    for f in [0, live.ts, 1_000_000] {
        assert_eq!(due_us(w1.timeline, f), due_us(w2.timeline, f), "frame {f}");
    }
    assert_eq!(
        StreamInfo {
            start_seq: 0,
            start_ts: 0,
            timeline: w1.timeline,
            ..w2.clone()
        },
        w1,
        "the rest of the Welcome is the same"
    );
    s.run_to(1000);
    // Audio never stopped or restarted: contiguous from 0, and the first after the second
    // Welcome is its start_seq.
    let got = s.to(addr(1), 0);
    let seqs = audio_seqs(&got);
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let after: Vec<u64> = got
        .iter()
        .skip_while(|x| !matches!(x.packet.msg, Message::Welcome(ref w) if w.info.start_seq > 0))
        .filter(|x| matches!(x.packet.msg, Message::Audio(_)))
        .map(|x| x.packet.seq)
        .collect();
    assert_eq!(after[0], w2.start_seq);
    assert_eq!(s.ep.stats().sessions.accepted, 1);
}

#[test]
fn loop_keeps_ts_counting_across_passes() {
    let mut cfg = config();
    cfg.looping = true;
    let mut s = Sim::new(cfg, Synth::new(1000, Some(1000)));
    let w = s.welcome(addr(1));
    assert_eq!(w.total_frames, None, "a looping stream has no length");
    s.run_to(1000);
    assert!(!s.ep.is_closed());
    let mut ts = 0;
    let mut samples = Vec::new();
    for x in s.to(addr(1), 0) {
        if let Message::Audio(a) = &x.packet.msg {
            assert_eq!(a.ts, ts);
            ts += (a.payload.len() / 2) as u64;
            samples.extend(
                a.payload
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
        }
    }
    assert_eq!(ts, 8000);
    assert!(
        samples
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (i % 1000) as i16)
    );
    assert_eq!(s.ep.source().rewinds, 7);
    assert_eq!(s.ep.stats().loops, 7);
}

#[test]
fn garbage_is_counted_and_unanswered() {
    let mut s = Sim::new(config(), Synth::new(1000, None));
    for g in [&b""[..], b"junk", &[0xAB; 300]] {
        s.ep.handle(s.now, addr(9), g);
    }
    s.drain();
    assert!(s.sent.is_empty());
    assert_eq!(s.ep.stats().sessions.ignored, 3);
    assert_eq!(s.ms(), 0);
}

#[test]
fn a_kick_sends_end_kicked_three_times_and_frees_the_slot() {
    let mut cfg = config();
    cfg.max_clients = 2;
    let mut s = Sim::new(cfg, Synth::new(10_000_000, None));
    s.welcome(addr(1));
    s.welcome(addr(2));
    s.run_to(500);
    assert!(!s.ep.kick(s.now, addr(9)), "not joined: nothing to kick");
    let at = s.now;
    assert!(s.ep.kick(at, addr(1)));
    s.drain();
    assert!(!s.ep.kick(at, addr(1)), "already gone");
    assert_eq!(s.ep.sessions().addrs(), &[addr(2)]);
    assert_eq!(s.ep.stats().sessions.evicted, 1);
    // Not an eviction for silence: no Evicted event.
    assert!(!s.events.contains(&Event::Evicted { addr: addr(1) }));
    s.run_to(1000);
    let got = s.to(addr(1), 0);
    let last = got
        .iter()
        .filter(|x| x.at <= at && matches!(x.packet.msg, Message::Audio(_)))
        .map(|x| x.packet.seq)
        .max()
        .unwrap();
    assert_end_copies(
        &ends(&got),
        at,
        End {
            reason: EndReason::Kicked,
            last_seq: Some(last),
        },
    );
    assert!(
        got.iter()
            .all(|x| x.at <= at || !matches!(x.packet.msg, Message::Audio(_))),
        "no audio after the kick"
    );
    // The slot is free: a third listener joins a table of capacity 2.
    assert!(matches!(s.join(addr(3)), Message::Welcome(_)));
    // While ending, a kick does nothing.
    s.ep.shutdown(s.now);
    assert!(!s.ep.kick(s.now, addr(2)));
}

#[test]
fn capacity_changes_live_and_keeps_who_is_joined() {
    let mut s = Sim::new(config(), Synth::new(10_000_000, None));
    s.welcome(addr(1));
    s.welcome(addr(2));
    s.ep.set_max_clients(1);
    assert_eq!(s.ep.sessions().max_clients(), 1);
    assert_eq!(
        s.join(addr(3)),
        Message::Reject(Reject {
            reason: RejectReason::Full { max_clients: 1 }
        })
    );
    assert_eq!(s.ep.sessions().len(), 2, "joined listeners stay");
    s.ep.set_max_clients(3);
    assert!(matches!(s.join(addr(3)), Message::Welcome(_)));
}

#[test]
fn the_control_snapshot_shows_the_stream_and_every_listener() {
    use streamd::control::{Histogram, ShellView, build_snapshot};
    use streamd::fanout::FanoutStats;
    let mut s = Sim::new(config(), Synth::new(10_000_000, Some(10_000_000)));
    s.welcome(addr(2));
    s.run_to(1000);
    s.welcome(addr(1));
    // A third listener came and went 100 ms before the snapshot: it shows among the
    // departures, with the reason its Leave gave (not the forged one's).
    s.welcome(addr(3));
    let t3 = s.token(addr(3));
    s.run_to(1400);
    s.leave(addr(3), forged(t3));
    s.send(
        addr(3),
        Message::Leave(Leave {
            token: t3,
            reason: LeaveReason::Terminated,
        }),
    );
    s.run_to(1500);
    let report = Report {
        token: s.token(addr(2)),
        received: 40,
        lost: 3,
        late: 1,
        duplicates: 2,
        out_of_order: 1,
        highest_seq: 42,
        jitter_us: 1500,
        buffered_ms: 120,
        recovered_fec: 4,
        recovered_retransmit: 5,
        concealed_ms: 6,
        clock_offset_us: -7,
        drift_ppb: 8,
        playout_error_us: 9,
        resyncs: 10,
        flags: 0,
    };
    s.send(addr(2), Message::Report(report));
    // The same counters with another token are not listener 2's.
    s.send(
        addr(2),
        Message::Report(Report {
            token: forged(report.token),
            received: 999,
            ..report
        }),
    );
    let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mut lateness = Histogram::default();
    lateness.observe(Duration::from_millis(1));
    let sent = FanoutStats {
        datagrams: 77,
        bytes: 7700,
        dropped_full: 1,
        dropped_unreachable: 2,
        dropped_other: 3,
        syscalls: 9,
    };
    let snap = build_snapshot(
        &s.ep,
        ShellView {
            now: s.now,
            wall,
            started: s.t0,
            source: "synth.wav",
            sent,
            lateness: &lateness,
        },
    );
    let st = &snap.status;
    assert_eq!(st.source, "synth.wav");
    assert_eq!(st.title, "synth");
    assert_eq!((st.sample_rate, st.channels), (RATE, 1));
    assert_eq!(st.interval_ms, 20.0);
    assert!(st.started);
    assert_eq!(st.position_s, s.ep.stats().frames as f64 / f64::from(RATE));
    assert!((1.4..=1.5).contains(&st.position_s), "{}", st.position_s);
    assert_eq!(st.duration_s, Some(10_000_000.0 / f64::from(RATE)));
    assert_eq!(st.uptime_s, 1.5);
    assert_eq!((st.listeners, st.capacity), (2, 4));
    assert_eq!(st.ending, None);
    let c = &st.counters;
    assert_eq!((c.datagrams_sent, c.bytes_sent), (77, 7700));
    assert_eq!(
        (c.drops.buffer_full, c.drops.unreachable, c.drops.other),
        (1, 2, 3)
    );
    assert_eq!((c.handshakes.challenged, c.handshakes.accepted), (3, 3));
    let d = &snap.departures;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].address.as_str(), d[0].reason.as_str()),
        ("127.0.0.1:3", "terminated")
    );
    assert_eq!(d[0].at_ms, 1_000_000_000 - 100);
    assert_eq!(c.audio_datagrams, s.ep.stats().audio_datagrams);
    assert_eq!(snap.lateness, lateness);
    // Sorted by address; join times from the simulated clock mapped onto the wall clock.
    let l = &snap.listeners;
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].address, "127.0.0.1:1");
    assert_eq!(l[0].connected_ms, 500);
    assert_eq!(l[0].joined_at_ms, 1_000_000_000 - 500);
    assert_eq!(l[0].report, None);
    assert_eq!(l[1].address, "127.0.0.1:2");
    assert_eq!(l[1].connected_ms, 1500);
    let r = l[1].report.unwrap();
    assert_eq!(
        (r.received, r.lost, r.late, r.duplicates, r.out_of_order),
        (40, 3, 1, 2, 1)
    );
    assert_eq!((r.highest_seq, r.jitter_us, r.buffered_ms), (42, 1500, 120));
    assert_eq!(
        (r.recovered_fec, r.recovered_retransmit, r.concealed_ms),
        (4, 5, 6)
    );
    assert_eq!(
        (
            r.clock_offset_us,
            r.drift_ppb,
            r.playout_error_us,
            r.resyncs
        ),
        (-7, 8, 9, 10)
    );
    // The JSON has the documented field names.
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["status"]["counters"]["drops"]["unreachable"], 2);
    assert_eq!(json["listeners"][1]["report"]["jitter_us"], 1500);
    assert!(json.get("lateness").is_none());
}
