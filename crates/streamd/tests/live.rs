//! Live input on simulated time: a scripted feed whose frames arrive at chosen instants,
//! through the real queue ([`streamd::live::channel`]) into the real endpoint. An underrun is
//! filled with silence and counted, an overrun stays bounded (oldest dropped, counted), the
//! endpoint never sends audio before it arrived, and idle time is silence, a pause or the end
//! as configured. No sockets, no tokio, no threads (except the one test of a waiting push).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Connect, EndReason, Join, Message, Packet};
use streamd::endpoint::{Endpoint, EndpointConfig, StartMode, Transmit};
use streamd::live::{self, LiveFeed, LiveSource, OnIdle, PAUSE_QUIET};
use streamd::source::SourceInfo;

const RATE: u32 = 8000;
const TICK: Duration = Duration::from_millis(20);
/// Frames in one tick at RATE.
const PER_TICK: usize = 160;

fn info() -> SourceInfo {
    SourceInfo {
        sample_rate: RATE,
        channels: 1,
        total_frames: Some(1),
        codec: "test".into(),
        title: "live".into(),
    }
}

fn config() -> EndpointConfig {
    EndpointConfig {
        interval: TICK,
        max_clients: 4,
        client_timeout: Duration::from_secs(60),
        start: StartMode::Now,
        looping: false,
        // 28 bytes of overhead + 100 mono frames.
        mtu: 228,
        cookie_key: (1, 2),
        ..EndpointConfig::default()
    }
}

/// Audio frame `i` of the script: never zero, so silence is told apart.
fn frame(i: usize) -> i16 {
    (i % 20_000 + 1) as i16
}

fn frames(from: usize, n: usize) -> Vec<i16> {
    (from..from + n).map(frame).collect()
}

/// The endpoint with one joined listener, on simulated time; every Audio it sends is logged
/// with the instant it was sent.
struct Sim {
    ep: Endpoint<LiveSource>,
    feed: LiveFeed,
    t0: Instant,
    now: Instant,
    /// (sent at, ts, samples).
    audio: Vec<(Instant, u64, Vec<i16>)>,
    ended: Option<EndReason>,
}

impl Sim {
    fn new(capacity: usize, on_idle: OnIdle) -> Sim {
        let (feed, source) = live::channel(info(), capacity, on_idle);
        let t0 = Instant::now();
        let mut s = Sim {
            ep: Endpoint::new(t0, config(), source),
            feed,
            t0,
            now: t0,
            audio: Vec::new(),
            ended: None,
        };
        s.join();
        s
    }

    fn drain(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(t) = self.ep.poll_transmit(self.now) {
            let ds: Vec<Bytes> = match t {
                Transmit::One { datagram, .. } => vec![datagram],
                Transmit::Fanout { datagrams, .. } => datagrams.to_vec(),
            };
            for d in ds {
                let p = proto::decode(&d).unwrap();
                match &p.msg {
                    Message::Audio(a) => {
                        let s = a
                            .payload
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]]))
                            .collect();
                        self.audio.push((self.now, a.ts, s));
                    }
                    Message::End(e) => self.ended = Some(e.reason),
                    _ => {}
                }
                out.push(p);
            }
        }
        while self.ep.poll_event().is_some() {}
        out
    }

    fn join(&mut self) {
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let enc = |m| proto::encode_to_bytes(&Packet::new(0, m)).unwrap();
        let c = enc(Message::Connect(Connect {
            max_version: 1,
            padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
        }));
        self.ep.handle(self.now, from, &c);
        let cookie = self
            .drain()
            .into_iter()
            .find_map(|p| match p.msg {
                Message::Challenge(c) => Some(c.cookie),
                _ => None,
            })
            .unwrap();
        self.ep
            .handle(self.now, from, &enc(Message::Join(Join::new(cookie))));
        self.drain();
    }

    /// Runs every timer up to `ms` after t0.
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

    /// Every sample sent so far, in stream order.
    fn samples(&self) -> Vec<i16> {
        self.audio.iter().flat_map(|a| a.2.clone()).collect()
    }

    /// Samples sent up to and including `t`.
    fn sent_by(&self, t: Instant) -> Vec<i16> {
        self.audio
            .iter()
            .filter(|a| a.0 <= t)
            .flat_map(|a| a.2.clone())
            .collect()
    }

    fn stats(&self) -> live::LiveStats {
        self.ep.source().stats()
    }
}

#[test]
fn a_steady_source_streams_exactly_what_arrived_and_never_ahead_of_it() {
    let mut s = Sim::new(live::buffer_frames(RATE), OnIdle::Silence);
    // 80 frames arrive every 10 ms (exactly the rate), for 2 s; a tick every 20 ms.
    let mut fed = 0;
    for k in 1..=200u64 {
        s.run_to(k * 10);
        // What went out by now is a prefix of what had arrived before now.
        let sent = s.sent_by(s.now);
        let audio: Vec<i16> = sent.iter().copied().filter(|&x| x != 0).collect();
        assert_eq!(audio, frames(0, audio.len()), "at {k}0 ms");
        assert!(
            audio.len() <= fed,
            "at {k}0 ms sent {} of {fed}",
            audio.len()
        );
        s.feed.push(&frames(fed, 80)).unwrap();
        fed += 80;
    }
    s.feed.end();
    s.run_to(3000);
    assert_eq!(s.ended, Some(EndReason::Finished));
    let all: Vec<i16> = s.samples();
    let audio: Vec<i16> = all.iter().copied().filter(|&x| x != 0).collect();
    assert_eq!(audio, frames(0, fed), "every frame exactly once, in order");
    // Silence only where the source was behind the clock: counted, and nothing else.
    let st = s.stats();
    assert_eq!(
        st.underrun_frames as usize,
        all.len() - audio.len(),
        "{st:?}"
    );
    assert_eq!(st.overrun_frames, 0);
    assert_eq!(st.idle_periods, 0);
}

#[test]
fn a_stalled_source_is_covered_by_counted_silence_and_resumes_in_order() {
    let mut s = Sim::new(live::buffer_frames(RATE), OnIdle::Silence);
    // 0.5 s of audio up front (all the queue holds), 0.375 s more at 0.4 s.
    s.feed.push(&frames(0, 4000)).unwrap();
    s.run_to(400);
    s.feed.push(&frames(4000, 3000)).unwrap();
    // Then nothing: the queue runs dry at 0.875 s and the clock keeps going.
    s.run_to(2000);
    let st = s.stats();
    assert_eq!(st.underruns, 1, "{st:?}");
    let total_sent = s.samples().len();
    assert_eq!(
        st.underrun_frames as usize,
        total_sent - 7000,
        "every frame beyond the 7000 that arrived is counted silence: {st:?}"
    );
    // The stream kept time: 2 s of frames went out.
    assert_eq!(total_sent, 2 * RATE as usize);
    // The writer comes back: audio continues where it left off.
    s.feed.push(&frames(7000, 1600)).unwrap();
    s.run_to(2400);
    s.feed.end();
    s.run_to(3000);
    let audio: Vec<i16> = s.samples().into_iter().filter(|&x| x != 0).collect();
    assert_eq!(audio, frames(0, 8600));
    assert_eq!(s.ended, Some(EndReason::Finished));
}

#[test]
fn an_overrun_drops_the_oldest_frames_and_the_queue_stays_bounded() {
    // Capacity 400 frames; nobody takes frames before the first tick.
    let (feed, mut src) = live::channel(info(), 400, OnIdle::Silence);
    assert_eq!(feed.push_dropping(&frames(0, 300)), 0);
    assert_eq!(feed.push_dropping(&frames(300, 300)), 200);
    // More than the capacity at once: the 400 queued and the first 600 new ones go.
    assert_eq!(feed.push_dropping(&frames(600, 1000)), 400 + 600);
    assert_eq!(src.stats().overrun_frames, 200 + 1000);
    let mut out = Vec::new();
    // Only the newest 400 frames are there.
    assert_eq!(src.read_frames(1000, &mut out), 1000);
    assert_eq!(&out[..400], &frames(1200, 400)[..]);
    assert!(out[400..].iter().all(|&x| x == 0));
    assert_eq!(src.stats().underrun_frames, 600);
}

#[test]
fn a_waiting_push_is_released_by_the_reader_and_nothing_is_lost() {
    let (feed, mut src) = live::channel(info(), 100, OnIdle::Silence);
    let writer = std::thread::spawn(move || {
        for k in 0..10 {
            feed.push(&frames(k * 100, 100)).unwrap();
        }
        feed.end();
    });
    let mut out = Vec::new();
    while !src.is_finished() {
        src.read_frames(10, &mut out);
        // The queue never holds more than its capacity, so a reader never sees more than that
        // at once; silence is fine (the writer may be slower than this loop).
    }
    writer.join().unwrap();
    let audio: Vec<i16> = out.into_iter().filter(|&x| x != 0).collect();
    assert_eq!(audio, frames(0, 1000));
}

/// Feeds 0.2 s, goes idle for `idle_ms`, then feeds 0.2 s more and ends.
fn idle_script(on_idle: OnIdle, idle_ms: u64) -> Sim {
    let mut s = Sim::new(live::buffer_frames(RATE), on_idle);
    s.feed.push(&frames(0, 1600)).unwrap();
    s.feed.idle();
    s.run_to(200 + idle_ms);
    s.feed.push(&frames(1600, 1600)).unwrap();
    s.feed.end();
    s.run_to(1000 + idle_ms);
    s
}

#[test]
fn idle_silence_keeps_time_and_counts_it() {
    let s = idle_script(OnIdle::Silence, 500);
    let all = s.samples();
    let audio: Vec<i16> = all.iter().copied().filter(|&x| x != 0).collect();
    assert_eq!(audio, frames(0, 3200));
    let st = s.stats();
    assert_eq!((st.idle_periods, st.underruns), (1, 0), "{st:?}");
    assert_eq!(st.idle_frames as usize, all.len() - 3200);
    // 0.5 s of silence, to within one tick.
    assert!(
        (st.idle_frames as usize).abs_diff(4000) <= PER_TICK,
        "{st:?}"
    );
    assert_eq!(s.ended, Some(EndReason::Finished));
}

#[test]
fn a_short_pause_sends_nothing_and_resumes_without_a_burst() {
    let s = idle_script(OnIdle::Pause, 500);
    let all = s.samples();
    assert_eq!(all, frames(0, 3200), "no silence at all in a short pause");
    let st = s.stats();
    assert_eq!(
        (st.idle_periods, st.idle_frames, st.underrun_frames),
        (1, 0, 0)
    );
    // Nothing was sent during the pause, and no tick after it sent more than one tick's worth.
    let t_pause = s.t0 + Duration::from_millis(220);
    let t_resume = s.t0 + Duration::from_millis(700);
    assert!(
        !s.audio.iter().any(|a| a.0 > t_pause && a.0 < t_resume),
        "audio during the pause"
    );
    let mut per_tick = std::collections::BTreeMap::<Instant, usize>::new();
    for a in &s.audio {
        *per_tick.entry(a.0).or_default() += a.2.len();
    }
    assert!(per_tick.values().all(|&n| n <= PER_TICK), "{per_tick:?}");
}

#[test]
fn a_long_pause_turns_into_silence_so_listeners_stay_joined() {
    let s = idle_script(OnIdle::Pause, 3000);
    let all = s.samples();
    let audio: Vec<i16> = all.iter().copied().filter(|&x| x != 0).collect();
    assert_eq!(audio, frames(0, 3200));
    // No gap between datagrams longer than PAUSE_QUIET plus one tick.
    let gaps = s.audio.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(gaps <= PAUSE_QUIET + TICK, "longest gap {gaps:?}");
    let st = s.stats();
    // 3 s idle minus the quiet second is silence, to within a tick.
    assert!(
        (st.idle_frames as usize).abs_diff(2 * RATE as usize) <= PER_TICK,
        "{st:?}"
    );
}

#[test]
fn idle_end_ends_the_stream_after_what_arrived() {
    let mut s = Sim::new(live::buffer_frames(RATE), OnIdle::End);
    s.feed.push(&frames(0, 1600)).unwrap();
    s.feed.idle();
    s.run_to(1000);
    assert_eq!(s.ended, Some(EndReason::Finished));
    assert_eq!(s.samples(), frames(0, 1600));
    assert!(s.ep.source().is_finished());
}

#[test]
fn a_live_welcome_has_no_length() {
    let s = Sim::new(100, OnIdle::Silence);
    assert_eq!(s.ep.stream_info().total_frames, None);
    assert_eq!(s.ep.source().info().total_frames, None);
}
