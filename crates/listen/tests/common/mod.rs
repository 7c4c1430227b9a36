//! A small scripted fake `streamd` on proto over 127.0.0.1, for the client's loopback tests:
//! handshake with cookies, then audio per tick with scripted loss, duplicates, reordering,
//! silence, garbage, and an `End` (sent 3 times) or an eviction.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::limits::{END_REPEAT, END_SPACING};
use proto::{
    Challenge, End, EndReason, ErrorCode, ErrorMsg, Message, Packet, Reject, RejectReason, Report,
    SampleFormat, StreamInfo,
};
use tokio::net::UdpSocket;

/// Test stream: 48 kHz stereo, 20 ms ticks of 4 datagrams of 240 frames.
pub const RATE: u32 = 48_000;
/// Channels of the test stream.
pub const CH: u16 = 2;
/// Frames per datagram.
pub const FPP: u64 = 240;
/// Server tick.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// What the fake server does.
#[derive(Clone, Debug)]
pub struct Script {
    /// Frames in the whole stream (from frame 0).
    pub total: u64,
    /// Server tick.
    pub interval: Duration,
    /// First datagram index sent to this listener (a late joiner's start).
    pub start_packet: u64,
    /// Datagram seqs never sent.
    pub drop: HashSet<u64>,
    /// Datagram seqs sent twice (the copy right after the original).
    pub duplicate: HashSet<u64>,
    /// Send each tick's datagrams in reverse order.
    pub reverse_ticks: bool,
    /// Stop sending anything after this many ticks (silence: the client times out).
    pub stop_after_tick: Option<u64>,
    /// After the last tick: `End` with this reason, or `Error{NotJoined}` when `None`.
    pub end: Option<EndReason>,
    /// Answer `Join` with this rejection.
    pub reject: Option<RejectReason>,
    /// Answer the first `Join` with a fresh `Challenge` (new cookie).
    pub rechallenge: bool,
    /// Ignore this many `Connect`s (the client must retry).
    pub ignore_connects: usize,
    /// Answer `Connect` with a header of protocol version 2 (a future server).
    pub answer_v2: bool,
    /// Send one undecodable datagram per tick.
    pub garbage: bool,
    /// From another socket, send a copy of every tick's first datagram with wrong samples.
    pub foreign: bool,
    /// Announce this (hostile) sample rate and channel count in the `Welcome` instead.
    pub welcome_format: Option<(u32, u16)>,
    /// Announce this stream length in the `Welcome` instead of `total` (a truncated file's
    /// header, or a lying server).
    pub welcome_total: Option<u64>,
}

impl Script {
    /// A clean stream of `total` frames that ends with `End{Finished}`.
    pub fn clean(total: u64) -> Self {
        Self {
            total,
            interval: INTERVAL,
            start_packet: 0,
            drop: HashSet::new(),
            duplicate: HashSet::new(),
            reverse_ticks: false,
            stop_after_tick: None,
            end: Some(EndReason::Finished),
            reject: None,
            rechallenge: false,
            ignore_connects: 0,
            answer_v2: false,
            garbage: false,
            foreign: false,
            welcome_format: None,
            welcome_total: None,
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

/// What the fake server saw.
#[derive(Debug, Default)]
pub struct Log {
    /// `Connect`s received, with their datagram length.
    pub connects: Vec<usize>,
    /// `Join`s received.
    pub joins: usize,
    /// `Report`s received.
    pub reports: Vec<Report>,
    /// `Leave`s received.
    pub leaves: usize,
    /// Audio seqs sent, in send order (copies included).
    pub sent: Vec<u64>,
    /// The last audio seq sent.
    pub last_seq: Option<u64>,
}

/// A running fake server.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub log: Arc<Mutex<Log>>,
    /// The script's task.
    task: tokio::task::JoinHandle<()>,
}

fn enc(p: &Packet) -> Bytes {
    proto::encode_to_bytes(p).unwrap()
}

impl FakeServer {
    /// Binds 127.0.0.1:0 and runs `script` in a task.
    pub async fn start(script: Script) -> Self {
        Self::start_on(0, script).await
    }

    /// Binds 127.0.0.1:`port` and runs `script` in a task.
    pub async fn start_on(port: u16, script: Script) -> Self {
        let sock = Arc::new(UdpSocket::bind(("127.0.0.1", port)).await.unwrap());
        let addr = sock.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let task = tokio::spawn(serve(sock, script, log.clone()));
        Self { addr, log, task }
    }

    /// Waits until the script has sent its `End`.
    pub async fn done(self) {
        let _ = self.task.await;
    }

    /// A socket that never answers: a server that is not there.
    pub async fn silent() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }
}

async fn serve(sock: Arc<UdpSocket>, script: Script, log: Arc<Mutex<Log>>) {
    let mut buf = vec![0u8; 9000];
    let mut cookie = [7u8; 16];
    let mut rechallenged = false;
    let mut ignored = 0;
    let mut ctl_seq = 0u64;
    let start_seq = 1000 + script.start_packet;
    let start_ts = script.start_packet * FPP;
    // Handshake.
    let client = loop {
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        let Ok(p) = proto::decode(&buf[..n]) else {
            continue;
        };
        match p.msg {
            Message::Connect(_) => {
                log.lock().unwrap().connects.push(n);
                if ignored < script.ignore_connects {
                    ignored += 1;
                    continue;
                }
                if script.answer_v2 {
                    sock.send_to(b"ES\x02\x05\0\0\0\0\0\0\0\0future", from)
                        .await
                        .unwrap();
                    continue;
                }
                let c = Packet::new(ctl_seq, Message::Challenge(Challenge { cookie }));
                sock.send_to(&enc(&c), from).await.unwrap();
            }
            Message::Join(j) => {
                log.lock().unwrap().joins += 1;
                if j.cookie != cookie {
                    continue;
                }
                if script.rechallenge && !rechallenged {
                    rechallenged = true;
                    cookie = [9u8; 16];
                    let c = Packet::new(ctl_seq, Message::Challenge(Challenge { cookie }));
                    sock.send_to(&enc(&c), from).await.unwrap();
                    continue;
                }
                if let Some(reason) = script.reject {
                    let r = Packet::new(ctl_seq, Message::Reject(Reject { reason }));
                    sock.send_to(&enc(&r), from).await.unwrap();
                    continue;
                }
                let (sample_rate, channels) = script.welcome_format.unwrap_or((RATE, CH));
                let info = StreamInfo {
                    sample_rate,
                    channels,
                    format: SampleFormat::S16Le,
                    interval_us: script.interval.as_micros() as u32,
                    frames_per_packet: FPP as u32,
                    total_frames: Some(script.welcome_total.unwrap_or(script.total)),
                    start_seq,
                    start_ts,
                    title: "fake".into(),
                };
                let w = Packet::new(ctl_seq, Message::Welcome(info));
                sock.send_to(&enc(&w), from).await.unwrap();
                break from;
            }
            _ => {}
        }
        ctl_seq += 1;
    };
    // Listen for reports and leaves while streaming.
    {
        let sock = sock.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 9000];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                match proto::decode(&buf[..n]).map(|p| p.msg) {
                    Ok(Message::Report(r)) => log.lock().unwrap().reports.push(r),
                    Ok(Message::Leave) => log.lock().unwrap().leaves += 1,
                    _ => {}
                }
            }
        });
    }
    let foreign = if script.foreign {
        Some(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let pcm = source(script.total);
    let bpf = usize::from(CH) * 2;
    let per_tick = u64::from(RATE) * script.interval.as_micros() as u64 / 1_000_000;
    let mut ticker = tokio::time::interval(script.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ts = start_ts;
    let mut seq = start_seq;
    let mut tick = 0u64;
    let mut out = BytesMut::new();
    while ts < script.total {
        ticker.tick().await;
        if script.stop_after_tick == Some(tick) {
            // Fall silent for good.
            std::future::pending::<()>().await;
        }
        let tick_end = (ts - ts % per_tick + per_tick).min(script.total);
        let mut batch = Vec::new();
        while ts < tick_end {
            let frames = FPP.min(tick_end - ts);
            let bytes: Vec<u8> = pcm
                [(ts as usize) * usize::from(CH)..(ts + frames) as usize * usize::from(CH)]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            debug_assert_eq!(bytes.len(), frames as usize * bpf);
            batch.push((seq, ts, bytes));
            ts += frames;
            seq += 1;
        }
        if script.reverse_ticks {
            batch.reverse();
        }
        for (i, (s, t, bytes)) in batch.iter().enumerate() {
            if script.drop.contains(s) {
                continue;
            }
            out.clear();
            proto::encode_audio(*s, *t, bytes, &mut out);
            let copies = if script.duplicate.contains(s) { 2 } else { 1 };
            for _ in 0..copies {
                sock.send_to(&out, client).await.unwrap();
                log.lock().unwrap().sent.push(*s);
            }
            if i == 0
                && let Some(f) = &foreign
            {
                out.clear();
                proto::encode_audio(*s, *t, &vec![0x55u8; bytes.len()], &mut out);
                f.send_to(&out, client).await.unwrap();
            }
        }
        if script.garbage {
            sock.send_to(b"ES\x01\x06garbage!", client).await.unwrap();
        }
        tick += 1;
    }
    let last_seq = seq - 1;
    log.lock().unwrap().last_seq = Some(last_seq);
    ticker.tick().await;
    match script.end {
        Some(reason) => {
            let e = Packet::new(
                ctl_seq,
                Message::End(End {
                    reason,
                    last_seq: Some(last_seq),
                }),
            );
            for _ in 0..END_REPEAT {
                sock.send_to(&enc(&e), client).await.unwrap();
                tokio::time::sleep(END_SPACING).await;
            }
        }
        None => {
            let e = Packet::new(
                ctl_seq,
                Message::Error(ErrorMsg {
                    code: ErrorCode::NotJoined,
                    text: "who are you".into(),
                }),
            );
            sock.send_to(&enc(&e), client).await.unwrap();
        }
    }
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
