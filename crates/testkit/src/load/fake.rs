//! A minimal protocol-complete stand-in for `streamd`
//! (`cargo run --release --example load -- --fake-server ADDR`): the load tool's counterpart
//! when the server's own costs (decoding, pacing, logging) should not be in the measurement.
//!
//! One thread: answers `Connect` (padded) with `Challenge`, a valid `Join` with `Welcome` or
//! `Reject{Full}`, drops listeners on `Leave` or after [`DEFAULT_CLIENT_TIMEOUT`] of silence, and
//! every 20 ms sends 3 `Audio` datagrams (44.1 kHz stereo s16: 340 + 340 + 202 frames) encoded
//! once, to every listener through `streamd`'s own fan-out ([`Fanout`]). It stops by itself
//! after `duration`, sending `End` 3 times. It is not `streamd`: no file, no pacing policy, no
//! logging.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proto::limits::{DEFAULT_CLIENT_TIMEOUT, END_REPEAT, END_SPACING, MIN_CONNECT_LEN};
use proto::{
    Challenge, End, EndReason, Message, Packet, Reject, RejectReason, SampleFormat, StreamInfo,
};

use streamd::fanout::{Fanout, FanoutStats, SendPath};

/// The tick of the fake stream.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Frames per tick at 44.1 kHz and 20 ms.
const FRAMES_PER_TICK: u64 = 882;

/// Frames per full datagram: 1360 B of stereo s16, 1388 B with the Audio header.
const FRAMES_PER_PACKET: u64 = 340;

/// What the fake server did.
#[derive(Debug, Clone)]
pub struct FakeStats {
    /// Listeners welcomed.
    pub welcomed: u64,
    /// Joins refused because full.
    pub rejected: u64,
    /// Listeners that left.
    pub left: u64,
    /// Listeners evicted for silence.
    pub evicted: u64,
    /// Reports received.
    pub reports: u64,
    /// Audio sends.
    pub sent: FanoutStats,
    /// The send path in use at the end: the one asked for, unless the kernel refused it.
    pub path: SendPath,
}

fn encode(p: &Packet) -> Option<Bytes> {
    proto::encode_to_bytes(p).ok()
}

/// Serves on `sock` for `duration`, at most `max_clients` listeners, sending audio on `path`
/// (or the next one down if this kernel cannot: [`FakeStats::path`] says which was used).
pub fn serve(
    sock: &UdpSocket,
    duration: Duration,
    max_clients: usize,
    path: SendPath,
) -> std::io::Result<FakeStats> {
    sock.set_nonblocking(true)?;
    let key = RandomState::new();
    let cookie = |a: SocketAddr| {
        let mut c = [0u8; proto::COOKIE_LEN];
        for (i, chunk) in c.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&key.hash_one((a, i)).to_le_bytes());
        }
        c
    };
    let mut sender = Fanout::with_path(path);
    sender.detect(sock);
    let mut st = FakeStats {
        welcomed: 0,
        rejected: 0,
        left: 0,
        evicted: 0,
        reports: 0,
        sent: FanoutStats::default(),
        path: sender.path(),
    };
    // Listener → last time we heard from it.
    let mut listeners: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut dests: Vec<SocketAddr> = Vec::new();
    let pcm = Bytes::from(vec![0u8; (FRAMES_PER_PACKET * 4) as usize]);
    let start = Instant::now();
    let mut tick: u64 = 0;
    let mut buf = vec![0u8; proto::limits::MAX_DATAGRAM];
    while start.elapsed() < duration {
        // Control traffic first (all of it, even when the tick is late, so that reports are
        // never starved), then the tick if it is due.
        let due = start + INTERVAL * tick as u32;
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(Duration::from_millis(1)));
                continue;
            };
            let Ok(p) = proto::decode(&buf[..n]) else {
                continue;
            };
            let reply = match p.msg {
                Message::Connect(_) if n >= MIN_CONNECT_LEN => {
                    Some(Message::Challenge(Challenge {
                        cookie: cookie(from),
                    }))
                }
                Message::Join(j) if j.cookie == cookie(from) => {
                    if listeners.contains_key(&from) || listeners.len() < max_clients {
                        if listeners.insert(from, Instant::now()).is_none() {
                            st.welcomed += 1;
                        }
                        let seq = tick * 3;
                        Some(Message::Welcome(StreamInfo {
                            sample_rate: 44_100,
                            channels: 2,
                            format: SampleFormat::S16Le,
                            interval_us: INTERVAL.as_micros() as u32,
                            frames_per_packet: FRAMES_PER_PACKET as u32,
                            total_frames: None,
                            start_seq: seq,
                            start_ts: tick * FRAMES_PER_TICK,
                            title: "earshot fake server".into(),
                        }))
                    } else {
                        st.rejected += 1;
                        Some(Message::Reject(Reject {
                            reason: RejectReason::Full {
                                max_clients: max_clients as u32,
                            },
                        }))
                    }
                }
                Message::Report(_) => {
                    st.reports += 1;
                    if let Some(t) = listeners.get_mut(&from) {
                        *t = Instant::now();
                    }
                    None
                }
                Message::Leave => {
                    if listeners.remove(&from).is_some() {
                        st.left += 1;
                    }
                    None
                }
                _ => None,
            };
            if let Some(m) = reply.and_then(|m| encode(&Packet::new(0, m))) {
                let _ = sock.send_to(&m, from);
            }
        }
        let now = Instant::now();
        let before = listeners.len();
        listeners.retain(|_, t| now.duration_since(*t) < DEFAULT_CLIENT_TIMEOUT);
        st.evicted += (before - listeners.len()) as u64;
        // The tick: encoded once, the same bytes to everyone.
        let ts = tick * FRAMES_PER_TICK;
        let mut d: Vec<Bytes> = Vec::with_capacity(3);
        for (k, frames) in [340u64, 340, 202].into_iter().enumerate() {
            let mut b = BytesMut::with_capacity(28 + pcm.len());
            proto::encode_audio(
                tick * 3 + k as u64,
                ts + k as u64 * 340,
                &pcm[..(frames * 4) as usize],
                &mut b,
            );
            d.push(b.freeze());
        }
        dests.clear();
        dests.extend(listeners.keys().copied());
        sender.send(sock, &d, &dests);
        tick += 1;
    }
    st.sent = sender.stats();
    st.path = sender.path();
    let last = (tick * 3).checked_sub(1);
    for _ in 0..END_REPEAT {
        let end = Message::End(End {
            reason: EndReason::Finished,
            last_seq: last,
        });
        if let Some(b) = encode(&Packet::new(0, end)) {
            for a in listeners.keys() {
                let _ = sock.send_to(&b, a);
            }
        }
        std::thread::sleep(END_SPACING);
    }
    Ok(st)
}
