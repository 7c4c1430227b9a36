//! The server side of the client's loopback tests, on 127.0.0.1:
//!
//! - [`Streamd`]: streamd's real sans-IO core ([`Endpoint`]) in a small tokio shell, streaming
//!   a synthetic source ([`source`]). The shell can impair what the endpoint transmits
//!   ([`Script`]: loss, duplicates, reordering, silence, garbage, a foreign sender, a tampered
//!   cookie) and what it hears (ignored `Connect`s, a listener it stops hearing), and logs what
//!   the listener sent. Protocol behaviour (handshake, `Welcome`, pacing, `End`, eviction,
//!   `Error{NotJoined}`) is the real server's.
//! - [`real_server`]: the production shell ([`streamd::server::Server`]) on a WAV file.
//! - [`responder`]: a few lines that answer the handshake with one hand-built datagram, for the
//!   servers streamd never is (a hostile `Welcome`, a future protocol version).
//!
//! The endpoint's timers run on the real clock, but each expiry is handed to it at the instant
//! it asked for ([`Endpoint::poll_timeout`]), not at the instant the shell woke: the media clock
//! then cuts every tick into exactly `interval × rate` frames, so the datagram count and seqs are
//! the same on every run, however loaded the machine.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::AUDIO_OVERHEAD;
use proto::{
    Challenge, Leave, LeaveReason, Message, Packet, Reject, RejectReason, Report, StreamInfo,
    Token, Welcome,
};
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, Event, StartMode, Transmit};
use streamd::sessions;
use streamd::source::SourceInfo;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Test stream: 48 kHz stereo, 20 ms ticks of 4 datagrams of 240 frames.
pub const RATE: u32 = 48_000;
/// Channels of the test stream.
pub const CH: u16 = 2;
/// Frames per datagram.
pub const FPP: u64 = 240;
/// Server tick.
pub const INTERVAL: Duration = Duration::from_millis(20);
/// The `--mtu` that makes datagrams of exactly [`FPP`] frames.
pub const MTU: usize = FPP as usize * 2 * CH as usize + AUDIO_OVERHEAD;

/// How the server is run, and what the shell does to its traffic.
#[derive(Clone, Debug)]
pub struct Script {
    /// Frames in the whole stream (from frame 0).
    pub total: u64,
    /// Server tick.
    pub interval: Duration,
    /// Announce this stream length in the `Welcome` instead of `total` (a truncated file's
    /// header).
    pub claim_total: Option<u64>,
    /// When the stream starts (`Now`: a listener joins live).
    pub start: StartMode,
    /// `--max-clients`.
    pub max_clients: usize,
    /// `--client-timeout`.
    pub client_timeout: Duration,
    /// Audio seqs never sent.
    pub drop: HashSet<u64>,
    /// Audio seqs sent twice (the copy right after the original).
    pub duplicate: HashSet<u64>,
    /// Send each tick's datagrams in reverse order.
    pub reverse_ticks: bool,
    /// Send nothing at all after this many ticks (the client times out).
    pub stop_after_tick: Option<u64>,
    /// Shut the server down (`End{Shutdown}`) after this many ticks.
    pub shutdown_after_tick: Option<u64>,
    /// After this many ticks, hand the endpoint a `Leave` forged in the listener's name: the
    /// server forgets it and answers its next `Report` with `Error{NotJoined}`.
    pub forget_after_tick: Option<u64>,
    /// Stop hearing the first listener once it joined: the server evicts it.
    pub deaf_after_join: bool,
    /// Drop this many `Connect`s before the endpoint sees them (the client must retry).
    pub ignore_connects: usize,
    /// Flip a byte of the first `Challenge`'s cookie: the `Join` fails and the server
    /// challenges again.
    pub tamper_first_challenge: bool,
    /// Send one undecodable datagram per tick.
    pub garbage: bool,
    /// From another socket, send a copy of every tick's first datagram with wrong samples.
    pub foreign: bool,
}

impl Script {
    /// A clean stream of `total` frames that ends with `End{Finished}`.
    pub fn clean(total: u64) -> Self {
        Self {
            total,
            interval: INTERVAL,
            claim_total: None,
            start: StartMode::FirstClient,
            max_clients: 32,
            client_timeout: proto::limits::DEFAULT_CLIENT_TIMEOUT,
            drop: HashSet::new(),
            duplicate: HashSet::new(),
            reverse_ticks: false,
            stop_after_tick: None,
            shutdown_after_tick: None,
            forget_after_tick: None,
            deaf_after_join: false,
            ignore_connects: 0,
            tamper_first_challenge: false,
            garbage: false,
            foreign: false,
        }
    }

    /// Datagrams in the stream.
    pub fn packets(&self) -> u64 {
        self.total.div_ceil(FPP)
    }
}

/// The source PCM: distinct, deterministic, full-scale-ish samples.
pub fn source(total: u64) -> Vec<i16> {
    let mut x: u32 = 0x1234_5678;
    (0..total * u64::from(CH))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 16) as i16
        })
        .collect()
}

/// [`source`] as the endpoint's [`AudioSource`].
struct Pcm {
    info: SourceInfo,
    samples: Vec<i16>,
    /// Next frame.
    pos: usize,
}

impl Pcm {
    fn new(total: u64, claim: Option<u64>) -> Self {
        Self {
            info: SourceInfo {
                sample_rate: RATE,
                channels: CH,
                total_frames: Some(claim.unwrap_or(total)),
                codec: "pcm".into(),
                title: "synthetic".into(),
            },
            samples: source(total),
            pos: 0,
        }
    }

    fn frames(&self) -> usize {
        self.samples.len() / usize::from(CH)
    }
}

impl AudioSource for Pcm {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let n = max_frames.min(self.frames() - self.pos);
        let ch = usize::from(CH);
        out.extend_from_slice(&self.samples[self.pos * ch..(self.pos + n) * ch]);
        self.pos += n;
        n
    }

    fn is_finished(&self) -> bool {
        self.pos >= self.frames()
    }

    fn rewind(&mut self) -> Result<(), String> {
        self.pos = 0;
        Ok(())
    }
}

/// What the shell heard from the listener and sent it.
#[derive(Debug, Default)]
pub struct Log {
    /// `Connect`s received, with their datagram length (ignored ones included).
    pub connects: Vec<usize>,
    /// `Join`s received.
    pub joins: usize,
    /// `Report`s received.
    pub reports: Vec<Report>,
    /// `Leave`s received that carry the listener's token (a Leave the server acts on).
    pub leaves: usize,
    /// The reason of every `Leave` received, in order (whatever its token).
    pub leave_reasons: Vec<LeaveReason>,
    /// `Report`s and `Leave`s whose token is not the one the listener was welcomed with.
    pub bad_tokens: usize,
    /// The token of the last `Welcome` sent.
    pub token: Option<Token>,
    /// Audio seqs sent, in send order (copies included).
    pub sent: Vec<u64>,
    /// seq of the endpoint's next Audio datagram (its live position).
    pub live_seq: u64,
}

/// streamd's endpoint serving on 127.0.0.1, shaped by a [`Script`].
pub struct Streamd {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it heard and sent.
    pub log: Arc<Mutex<Log>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Streamd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Streamd {
    /// Binds 127.0.0.1:0 and serves `script` in a task.
    pub async fn start(script: Script) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let changed = Arc::new(Notify::new());
        let shell = Shell {
            sock,
            foreign: if script.foreign {
                Some(UdpSocket::bind("127.0.0.1:0").await.unwrap())
            } else {
                None
            },
            script,
            log: log.clone(),
            changed: changed.clone(),
            listener: None,
            ticks: 0,
            silent: false,
            ignored_connects: 0,
            tampered: false,
        };
        let task = tokio::spawn(shell.run());
        Self {
            addr,
            log,
            changed,
            task,
        }
    }

    /// Waits until `f` holds of the log (checked now and at every change), at most `timeout`.
    pub async fn wait(&self, timeout: Duration, mut f: impl FnMut(&Log) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if f(&self.log.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

struct Shell {
    sock: UdpSocket,
    foreign: Option<UdpSocket>,
    script: Script,
    log: Arc<Mutex<Log>>,
    changed: Arc<Notify>,
    /// The first listener accepted.
    listener: Option<SocketAddr>,
    /// Ticks sent (transmits of Audio).
    ticks: u64,
    /// Past `stop_after_tick`: nothing is sent any more.
    silent: bool,
    ignored_connects: usize,
    tampered: bool,
}

fn enc(m: Message) -> Bytes {
    proto::encode_to_bytes(&Packet::new(0, m)).unwrap()
}

impl Shell {
    async fn run(mut self) {
        let t0 = Instant::now();
        let config = EndpointConfig {
            interval: self.script.interval,
            max_clients: self.script.max_clients,
            client_timeout: self.script.client_timeout,
            start: self.script.start,
            looping: false,
            mtu: MTU,
            cookie_key: (7, 9),
            ..EndpointConfig::default()
        };
        let mut ep = Endpoint::new(
            t0,
            config,
            Pcm::new(self.script.total, self.script.claim_total),
        );
        let mut now = t0;
        let mut buf = vec![0u8; 9000];
        loop {
            self.flush(&mut ep, now).await;
            let deadline = ep.poll_timeout();
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline.unwrap_or(t0).into()), if deadline.is_some() => {
                    // The instant asked for, not the instant woken: see the module docs.
                    now = deadline.unwrap_or(now);
                    ep.handle_timeout(now);
                }
                r = self.sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    now = Instant::now();
                    if self.hear(from, &buf[..n]) {
                        ep.handle(now, from, &buf[..n]);
                    }
                }
            }
        }
    }

    /// Logs a datagram from a listener; whether the endpoint gets it.
    fn hear(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        let mut log = self.log.lock().unwrap();
        let msg = proto::decode(datagram).map(|p| p.msg);
        let mut pass = !(self.script.deaf_after_join && self.listener == Some(from));
        match msg {
            Ok(Message::Connect(_)) => {
                log.connects.push(datagram.len());
                if self.ignored_connects < self.script.ignore_connects {
                    self.ignored_connects += 1;
                    pass = false;
                }
            }
            Ok(Message::Join(_)) => log.joins += 1,
            Ok(Message::Report(r)) => {
                if log.token != Some(r.token) {
                    log.bad_tokens += 1;
                }
                log.reports.push(r);
            }
            Ok(Message::Leave(l)) => {
                if log.token == Some(l.token) {
                    log.leaves += 1;
                } else {
                    log.bad_tokens += 1;
                }
                log.leave_reasons.push(l.reason);
            }
            _ => {}
        }
        drop(log);
        self.changed.notify_waiters();
        pass
    }

    /// Sends what the endpoint has to send, as the script shapes it, then applies the script's
    /// tick-counted actions.
    async fn flush(&mut self, ep: &mut Endpoint<Pcm>, now: Instant) {
        loop {
            let (datagrams, dests): (Vec<Bytes>, Vec<SocketAddr>) = match ep.poll_transmit(now) {
                None => break,
                Some(Transmit::One { dest, datagram }) => (vec![datagram], vec![dest]),
                Some(Transmit::Fanout { datagrams, dests }) => (datagrams.to_vec(), dests.to_vec()),
            };
            self.send(datagrams, dests).await;
        }
        while let Some(e) = ep.poll_event() {
            if let Event::Datagram {
                from,
                event: sessions::Event::Accepted { .. },
            } = e
            {
                self.listener.get_or_insert(from);
            }
        }
        let ticks = Some(self.ticks);
        if self.script.shutdown_after_tick.is_some() && self.script.shutdown_after_tick == ticks {
            self.script.shutdown_after_tick = None;
            ep.shutdown(now);
            Box::pin(self.flush(ep, now)).await;
        }
        if self.script.forget_after_tick.is_some()
            && self.script.forget_after_tick == ticks
            && let Some(l) = self.listener
        {
            self.script.forget_after_tick = None;
            // Forged with the listener's token: the server can only take it as the listener's.
            let token = ep.sessions().token(&l).unwrap();
            let leave = Message::Leave(Leave {
                token,
                reason: LeaveReason::Done,
            });
            ep.handle(now, l, &enc(leave));
            assert!(!ep.sessions().contains(&l), "the forged Leave was refused");
            Box::pin(self.flush(ep, now)).await;
        }
        self.log.lock().unwrap().live_seq = ep.live().seq;
        self.changed.notify_waiters();
    }

    async fn send(&mut self, mut datagrams: Vec<Bytes>, dests: Vec<SocketAddr>) {
        let audio_seq = |d: &Bytes| match proto::decode(d) {
            Ok(Packet {
                seq,
                msg: Message::Audio(a),
            }) => Some((seq, a)),
            _ => None,
        };
        let is_audio = datagrams.first().and_then(audio_seq).is_some();
        if is_audio {
            if self.script.stop_after_tick == Some(self.ticks) {
                self.silent = true;
            }
            if !self.silent {
                self.ticks += 1;
            }
            if self.script.reverse_ticks {
                datagrams.reverse();
            }
        }
        if self.silent {
            return;
        }
        for dest in dests {
            for (i, d) in datagrams.iter().enumerate() {
                let Some((seq, a)) = audio_seq(d) else {
                    if let Ok(Packet {
                        msg: Message::Welcome(w),
                        ..
                    }) = proto::decode(d)
                    {
                        self.log.lock().unwrap().token = Some(w.token);
                    }
                    let d = self.tamper(d);
                    self.sock.send_to(&d, dest).await.unwrap();
                    continue;
                };
                if self.script.drop.contains(&seq) {
                    continue;
                }
                let copies = if self.script.duplicate.contains(&seq) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    self.sock.send_to(d, dest).await.unwrap();
                    self.log.lock().unwrap().sent.push(seq);
                }
                if i == 0
                    && let Some(f) = &self.foreign
                {
                    let mut out = bytes::BytesMut::new();
                    proto::encode_audio(seq, a.ts, &vec![0x55u8; a.payload.len()], &mut out);
                    f.send_to(&out, dest).await.unwrap();
                }
            }
            if is_audio && self.script.garbage {
                self.sock
                    .send_to(b"ES\x02\x06garbage!", dest)
                    .await
                    .unwrap();
            }
        }
    }

    /// The first `Challenge` with a damaged cookie, if the script says so.
    fn tamper(&mut self, d: &Bytes) -> Bytes {
        if !self.script.tamper_first_challenge || self.tampered {
            return d.clone();
        }
        match proto::decode(d) {
            Ok(Packet {
                seq,
                msg: Message::Challenge(Challenge { mut cookie }),
            }) => {
                self.tampered = true;
                cookie[0] ^= 0xFF;
                proto::encode_to_bytes(&Packet::new(seq, Message::Challenge(Challenge { cookie })))
                    .unwrap()
            }
            _ => d.clone(),
        }
    }
}

/// Takes a listener slot of the server at `addr` with a hand-built handshake (a script, not a
/// listener: it never reports); keep the socket while the slot should stay taken.
pub async fn occupy(addr: SocketAddr) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let connect = Message::Connect(proto::Connect {
        max_version: proto::VERSION,
        padding: Bytes::from(vec![0u8; proto::limits::MIN_CONNECT_LEN]),
    });
    sock.send_to(&enc(connect), addr).await.unwrap();
    let mut buf = vec![0u8; 9000];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("no answer while taking a slot")
            .unwrap();
        match proto::decode(&buf[..n]).unwrap().msg {
            Message::Challenge(c) => {
                let join = Message::Join(proto::Join::new(c.cookie));
                sock.send_to(&enc(join), addr).await.unwrap();
            }
            Message::Welcome(_) => return sock,
            Message::Audio(_) => {}
            m => panic!("not welcomed while taking a slot: {m:?}"),
        }
    }
}

/// The production server ([`streamd::server::Server`]) on a WAV of `source(total)` written in
/// `tmp`, on 127.0.0.1; its summary when the stream has ended.
pub async fn real_server(
    tmp: &Tmp,
    total: u64,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<streamd::server::Summary>,
) {
    let path = tmp.path("source.wav");
    let spec = hound::WavSpec {
        channels: CH,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for s in source(total) {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let config = streamd::server::Config::new(path, "127.0.0.1:0".parse().unwrap());
    let server = streamd::server::Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let run = tokio::spawn(async move { server.run(std::future::pending()).await.unwrap() });
    (addr, run)
}

/// The servers streamd never is, scripted: each answers `Connect` with a `Challenge` (or, for
/// [`Answer::FutureVersion`], with a header of version 3) and `Join` with one hand-built datagram.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A `Welcome` with this (hostile) sample rate and channel count.
    Welcome {
        /// Its `sample_rate`.
        rate: u32,
        /// Its `channels`.
        channels: u16,
    },
    /// A `Reject` streamd would not send (another protocol version).
    Reject(RejectReason),
    /// A server of protocol version 3 answering in its own version.
    FutureVersion,
}

/// Starts the scripted responder for `answer` on 127.0.0.1 (a script, not a server: no
/// cookies, no audio); it answers until the test's runtime ends.
pub async fn responder(answer: Answer) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 9000];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let reply = match (proto::decode(&buf[..n]).map(|p| p.msg), &answer) {
                (Ok(Message::Connect(_)), Answer::FutureVersion) => {
                    Bytes::from_static(b"ES\x03\x05\0\0\0\0\0\0\0\0future")
                }
                (Ok(Message::Connect(_)), _) => {
                    enc(Message::Challenge(Challenge { cookie: [7; 16] }))
                }
                (Ok(Message::Join(_)), Answer::Welcome { rate, channels }) => {
                    enc(Message::Welcome(Welcome {
                        token: [0x77; proto::TOKEN_LEN],
                        noise: Bytes::new(),
                        info: StreamInfo {
                            sample_rate: *rate,
                            channels: *channels,
                            codec: proto::AudioCodec::Pcm,
                            timeline: proto::Timeline::default(),
                            playout_delay_us: 50_000,
                            min_delay_us: 25_000,
                            repair: proto::Repair::default(),
                            multicast: None,
                            interval_us: 20_000,
                            frames_per_packet: FPP as u32,
                            total_frames: Some(48_000),
                            start_seq: 0,
                            start_ts: 0,
                            title: "hostile".into(),
                        },
                    }))
                }
                (Ok(Message::Join(_)), Answer::Reject(reason)) => {
                    enc(Message::Reject(Reject { reason: *reason }))
                }
                _ => continue,
            };
            let _ = sock.send_to(&reply, from).await;
        }
    });
    addr
}

/// A socket that never answers: a server that is not there.
pub async fn silent() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// A temporary folder for one test's files, removed (with them) when dropped.
pub struct Tmp(tempfile::TempDir);

impl Tmp {
    /// A fresh folder under the system's temp dir.
    pub fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("listen-test-")
                .tempdir()
                .unwrap(),
        )
    }

    /// The path of `name` in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// The samples of a 16-bit WAV, with its spec.
pub fn read_wav(p: &std::path::Path) -> (hound::WavSpec, Vec<i16>) {
    let mut r = hound::WavReader::open(p).unwrap();
    let spec = r.spec();
    let s = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (spec, s)
}

/// `out_of_order` by its definition, from the order datagrams were sent (loopback keeps it).
pub fn out_of_order(sent: &[u64]) -> u64 {
    let mut seen = HashSet::new();
    let mut highest = None;
    let mut n = 0;
    for &s in sent {
        if !seen.insert(s) {
            continue;
        }
        if highest.is_some_and(|h| s < h) {
            n += 1;
        }
        highest = Some(highest.map_or(s, |h: u64| h.max(s)));
    }
    n
}
