//! Relays on simulated time: a server's real endpoint, relays made of listen's real session
//! feeding a [`RelaySource`] under a second real endpoint, and listen sessions below, all on
//! one simulated clock over lossless (or deliberately lossy) links.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::ExitReason;
use listen::session::{Session, SessionConfig};
use listen::sink::MemorySink;
use proto::{EndReason, Message};
use streamd::endpoint::{Endpoint, EndpointConfig, StartMode, Transmit};
use streamd::relay::{self, RelaySource, SharedSession};
use testkit::room::SyntheticSource;

const RATE: u32 = 48_000;
const CHANNELS: u16 = 2;
const FRAMES: u64 = 96_000;
const STEP: Duration = Duration::from_millis(1);
const INTERVAL: Duration = Duration::from_millis(20);

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, host], port))
}

fn config(start: StartMode) -> EndpointConfig {
    EndpointConfig {
        interval: INTERVAL,
        max_clients: 16,
        client_timeout: Duration::from_secs(5),
        start,
        looping: false,
        mtu: 1400,
        cookie_key: (1, 2),
        ..EndpointConfig::default()
    }
}

/// One relay: its upstream session (at `up`, started once its upstream serves) and, once
/// joined, its endpoint (at `down`).
struct Relay {
    up: SocketAddr,
    down: SocketAddr,
    upstream: SocketAddr,
    session: Option<SharedSession>,
    endpoint: Option<Endpoint<RelaySource>>,
}

impl Relay {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        relay::lock(self.session.as_ref().expect("started"))
    }
}

/// A listener on the last relay, started once that relay serves.
struct Listener {
    at: SocketAddr,
    session: Option<Session>,
    sink: Option<MemorySink>,
}

impl Listener {
    fn stats(&self) -> listen::Stats {
        self.session
            .as_ref()
            .and_then(Session::stats)
            .expect("ended")
    }
}

/// The simulated network: a server, a chain of relays, listeners on the last one.
struct World {
    now: Instant,
    server_at: SocketAddr,
    server: Endpoint<SyntheticSource>,
    relays: Vec<Relay>,
    listeners: Vec<Listener>,
    /// In flight: (from, to, datagram), delivered within the step.
    wire: VecDeque<(SocketAddr, SocketAddr, Bytes)>,
    /// Audio seqs the server sends to the relay at `lossy` that are dropped.
    drop_seqs: BTreeSet<u64>,
    lossy: Option<SocketAddr>,
    /// Everything to `lossy` is dropped.
    cut: bool,
    dropped: u64,
    /// Every Audio datagram sent to listeners: (sender, the frame just after it, when).
    sent: Vec<(SocketAddr, u64, Instant)>,
}

impl World {
    fn new(relays: usize, listeners: usize) -> World {
        let now = Instant::now();
        let server_at = addr(1, 4000);
        let server = Endpoint::new(
            now,
            config(StartMode::FirstClient),
            SyntheticSource::new(RATE, CHANNELS, FRAMES),
        );
        let mut relay_list = Vec::new();
        let mut upstream = server_at;
        for i in 0..relays {
            let up = addr(2 + i as u8, 5000);
            let down = addr(2 + i as u8, 4000);
            relay_list.push(Relay {
                up,
                down,
                upstream,
                session: None,
                endpoint: None,
            });
            upstream = down;
        }
        let listeners = (0..listeners)
            .map(|j| Listener {
                at: addr(100, 6000 + j as u16),
                session: None,
                sink: None,
            })
            .collect();
        World {
            now,
            server_at,
            server,
            relays: relay_list,
            listeners,
            wire: VecDeque::new(),
            drop_seqs: BTreeSet::new(),
            lossy: None,
            cut: false,
            dropped: 0,
            sent: Vec::new(),
        }
    }

    fn send_endpoint<S: streamd::endpoint::AudioSource>(
        ep: &mut Endpoint<S>,
        from: SocketAddr,
        now: Instant,
        wire: &mut VecDeque<(SocketAddr, SocketAddr, Bytes)>,
        sent: &mut Vec<(SocketAddr, u64, Instant)>,
    ) {
        while let Some(t) = ep.poll_transmit(now) {
            match t {
                Transmit::One { dest, datagram } => wire.push_back((from, dest, datagram)),
                Transmit::Fanout { datagrams, dests } => {
                    for g in datagrams {
                        if let Ok(p) = proto::decode(g)
                            && let Message::Audio(a) = p.msg
                            && !dests.is_empty()
                        {
                            let frames = a.payload.len() as u64 / (2 * u64::from(CHANNELS));
                            sent.push((from, a.ts + frames, now));
                        }
                    }
                    for d in dests {
                        for g in datagrams {
                            wire.push_back((from, *d, g.clone()));
                        }
                    }
                }
            }
        }
        while ep.poll_event().is_some() {}
    }

    fn send_session(
        s: &mut Session,
        from: SocketAddr,
        now: Instant,
        wire: &mut VecDeque<(SocketAddr, SocketAddr, Bytes)>,
    ) -> Vec<listen::Event> {
        while let Some(t) = s.poll_transmit(now) {
            wire.push_back((from, t.destination, t.contents));
        }
        let mut ev = Vec::new();
        while let Some(e) = s.poll_event() {
            ev.push(e);
        }
        ev
    }

    /// Collects everything every node wants to send, then delivers the wire until quiet.
    fn exchange(&mut self) {
        let now = self.now;
        for _ in 0..8 {
            Self::send_endpoint(
                &mut self.server,
                self.server_at,
                now,
                &mut self.wire,
                &mut self.sent,
            );
            for r in &mut self.relays {
                let Some(session) = r.session.clone() else {
                    continue;
                };
                let events =
                    Self::send_session(&mut relay::lock(&session), r.up, now, &mut self.wire);
                let joined = events.iter().any(|e| matches!(e, listen::Event::Joined(_)));
                if joined && r.endpoint.is_none() {
                    let src = RelaySource::new(session).unwrap();
                    r.endpoint = Some(Endpoint::new(now, config(StartMode::Now), src));
                }
                if let Some(ep) = r.endpoint.as_mut() {
                    Self::send_endpoint(ep, r.down, now, &mut self.wire, &mut self.sent);
                }
            }
            for l in &mut self.listeners {
                let Some(session) = l.session.as_mut() else {
                    continue;
                };
                for e in Self::send_session(session, l.at, now, &mut self.wire) {
                    if let listen::Event::Joined(info) = e {
                        l.sink = Some(MemorySink::new(info.sample_rate, info.channels));
                    }
                }
            }
            if self.wire.is_empty() {
                return;
            }
            while let Some((from, to, d)) = self.wire.pop_front() {
                self.deliver(from, to, &d);
            }
        }
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, d: &[u8]) {
        let now = self.now;
        if to == self.server_at {
            self.server.handle(now, from, d);
            return;
        }
        if Some(to) == self.lossy
            && (self.cut
                || proto::decode(d).is_ok_and(|p| {
                    matches!(p.msg, Message::Audio(_)) && self.drop_seqs.contains(&p.seq)
                }))
        {
            self.dropped += 1;
            return;
        }
        for r in &mut self.relays {
            if to == r.up {
                if let Some(s) = &r.session {
                    let mut s = relay::lock(s);
                    s.handle(now, from, d);
                    // The shell's "ready" wake-up: forward at once.
                    let ready = s.ready() != (0, 0) || s.end_received() || s.is_closed();
                    drop(s);
                    if ready && let Some(ep) = r.endpoint.as_mut() {
                        ep.tick_now(now);
                    }
                }
                return;
            }
            if to == r.down {
                if let Some(ep) = r.endpoint.as_mut() {
                    ep.handle(now, from, d);
                }
                return;
            }
        }
        for l in &mut self.listeners {
            if to == l.at {
                if let Some(s) = l.session.as_mut() {
                    s.handle(now, from, d);
                }
                return;
            }
        }
    }

    /// Runs until every listener is closed (or `limit`), calling `script` every step.
    fn run(&mut self, limit: Duration, mut script: impl FnMut(&mut World)) {
        let end = self.now + limit;
        let closed = |l: &Listener| l.session.as_ref().is_some_and(Session::is_closed);
        while self.now < end && !self.listeners.iter().all(closed) {
            let now = self.now;
            script(self);
            // Each hop joins once the hop above serves, as a chain is started.
            let mut serving = Some(self.server_at);
            for r in &mut self.relays {
                if r.session.is_none() && serving == Some(r.upstream) {
                    let c = relay::session_config(r.upstream);
                    r.session = Some(Arc::new(Mutex::new(Session::new(c, now))));
                }
                serving = r.endpoint.as_ref().map(|_| r.down);
            }
            if let Some(last) = serving {
                for l in &mut self.listeners {
                    if l.session.is_none() {
                        l.session = Some(Session::new(SessionConfig::new(last), now));
                    }
                }
            }
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                self.server.handle_timeout(now);
            }
            for r in &mut self.relays {
                if let Some(session) = &r.session {
                    let mut s = relay::lock(session);
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
                if let Some(ep) = r.endpoint.as_mut()
                    && ep.poll_timeout().is_some_and(|t| t <= now)
                {
                    ep.handle_timeout(now);
                }
            }
            for l in &mut self.listeners {
                let Some(session) = l.session.as_mut() else {
                    continue;
                };
                if session.poll_timeout().is_some_and(|t| t <= now) {
                    session.handle_timeout(now);
                }
                if let Some(sink) = l.sink.as_mut() {
                    session.feed(now, sink).unwrap();
                }
            }
            self.exchange();
            self.now += STEP;
        }
    }
}

impl World {
    /// Where each relay's stream starts in the server's: the sum of the join positions down
    /// to it (a relay forwards from the moment it joins, so one joining a relay that already
    /// serves starts a little later).
    fn offsets(&self) -> Vec<u64> {
        let mut offset = 0;
        self.relays
            .iter()
            .map(|r| {
                offset += r.session().info().unwrap().start_ts;
                offset
            })
            .collect()
    }
}

/// Asserts that `got` is the tail of `expected`, missing at most the first 20 ms (a late join).
fn assert_tail(what: &str, got: &[i16], expected: &[i16]) {
    let ch = usize::from(CHANNELS);
    assert!(got.len() <= expected.len(), "{what}: too long");
    assert!(
        got.len() + (RATE as usize / 50) * ch >= expected.len(),
        "{what}: {} of {} samples",
        got.len(),
        expected.len()
    );
    assert!(
        got == &expected[expected.len() - got.len()..],
        "{what} differs"
    );
}

#[test]
fn a_chain_of_two_relays_is_sample_exact_for_every_listener() {
    let mut w = World::new(2, 3);
    w.run(Duration::from_secs(30), |_| {});
    let expected = SyntheticSource::samples(CHANNELS, 0..FRAMES);
    for l in &w.listeners {
        let st = l.stats();
        assert_eq!(st.end_reason, ExitReason::Finished);
        assert_eq!(st.lost, 0);
        assert_eq!(st.concealed_ms, 0);
        let got = l.sink.as_ref().unwrap().samples();
        assert_tail(&format!("listener {}", l.at), got, &expected);
    }
    for (r, off) in w.relays.iter().zip(w.offsets()) {
        let st = relay::UpstreamStats::of(&r.session());
        assert_eq!((st.lost, st.concealed_frames), (0, 0), "{st}");
        assert_eq!(st.relayed_frames, FRAMES - off, "{st}");
        assert_eq!(st.exit, Some(ExitReason::Finished));
        let ep = r.endpoint.as_ref().unwrap();
        assert_eq!(ep.end_reason(), Some(EndReason::Finished));
        assert_eq!(ep.stats().frames, FRAMES - off);
    }
}

/// A relay forwards each upstream datagram's audio when it arrives: on a link without delay
/// every frame leaves each relay in the same simulated millisecond it left the server, not a
/// jitter buffer's target later.
#[test]
fn relays_forward_audio_as_it_arrives() {
    let mut w = World::new(2, 1);
    w.run(Duration::from_secs(30), |_| {});
    let when = |node: SocketAddr, end: u64| {
        // The first datagram from `node` that completes frame `end - 1`.
        w.sent
            .iter()
            .find(|(n, e, _)| *n == node && *e >= end)
            .map(|(_, _, t)| *t)
    };
    let offsets = w.offsets();
    let mut checked = 0;
    for &(node, end, _) in w.sent.iter().filter(|(n, _, _)| *n == w.server_at) {
        let at = when(node, end).unwrap();
        if end <= offsets[offsets.len() - 1] {
            continue;
        }
        for (r, off) in w.relays.iter().zip(&offsets) {
            let relayed = when(r.down, end - off)
                .unwrap_or_else(|| panic!("frame {end} not relayed by {}", r.down));
            assert!(
                relayed.duration_since(at) <= STEP,
                "frames up to {end} left {} {:?} after the server",
                r.down,
                relayed.duration_since(at)
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
    assert_eq!(w.listeners[0].stats().lost, 0);
}

#[test]
fn loss_on_a_hop_is_counted_by_the_relay_below_it_and_nowhere_else() {
    let mut w = World::new(2, 3);
    // The hop between the two relays loses a burst and a few single datagrams.
    w.lossy = Some(w.relays[1].up);
    w.drop_seqs = [40, 41, 42, 90, 150, 151, 230].into_iter().collect();
    w.run(Duration::from_secs(30), |_| {});
    assert_eq!(w.dropped, 7);
    let above = relay::UpstreamStats::of(&w.relays[0].session());
    let below = relay::UpstreamStats::of(&w.relays[1].session());
    assert_eq!(above.lost, 0, "{above}");
    assert_eq!(below.lost, 7, "{below}");
    assert!(below.concealed_frames > 0, "{below}");
    // The lost audio went on as concealment frames: the stream keeps its length.
    let offsets = w.offsets();
    assert_eq!(below.relayed_frames, FRAMES - offsets[1], "{below}");
    let expected = SyntheticSource::samples(CHANNELS, 0..FRAMES);
    let ch = usize::from(CHANNELS);
    for l in &w.listeners {
        let st = l.stats();
        assert_eq!((st.lost, st.concealed_ms), (0, 0), "listener {}", l.at);
        let got = l.sink.as_ref().unwrap().samples();
        assert!(got.len() + RATE as usize / 50 * ch >= expected.len());
        let tail = &expected[expected.len() - got.len()..];
        let differing = got
            .chunks(ch)
            .zip(tail.chunks(ch))
            .filter(|(a, b)| a != b)
            .count() as u64;
        // Only the concealed frames differ (a fade can match the source by chance, never
        // more).
        assert!(differing > 0 && differing <= below.concealed_frames);
    }
}

#[test]
fn an_upstream_shutdown_ends_the_relayed_stream_with_shutdown() {
    let mut w = World::new(1, 2);
    let mut stopped = false;
    let t0 = w.now;
    w.run(Duration::from_secs(30), |w| {
        if !stopped && w.now >= t0 + Duration::from_millis(700) {
            stopped = true;
            let now = w.now;
            w.server.shutdown(now);
        }
    });
    assert!(stopped);
    for l in &w.listeners {
        let st = l.stats();
        assert_eq!(st.end_reason, ExitReason::Shutdown);
        assert_eq!(st.lost, 0);
        assert!(st.played_ms > 300 && st.played_ms < 1000, "{st:?}");
    }
    let ep = w.relays[0].endpoint.as_ref().unwrap();
    assert_eq!(ep.end_reason(), Some(EndReason::Shutdown));
}

#[test]
fn a_silent_upstream_ends_the_relayed_stream_with_shutdown() {
    let mut w = World::new(1, 1);
    let t0 = w.now;
    let up = w.relays[0].up;
    w.run(Duration::from_secs(30), |w| {
        if w.now >= t0 + Duration::from_millis(500) {
            // Everything to the relay's upstream socket is lost from here on.
            w.lossy = Some(up);
            w.cut = true;
        }
    });
    let st = relay::UpstreamStats::of(&w.relays[0].session());
    assert_eq!(st.exit, Some(ExitReason::Timeout), "{st}");
    let l = w.listeners[0].stats();
    assert_eq!(l.end_reason, ExitReason::Shutdown);
    assert_eq!(l.lost, 0);
}
