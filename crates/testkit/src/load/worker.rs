//! A load-tool worker thread: its share of the simulated listeners, each a real
//! [`listen::session::Session`] (counting audio, not buffering it) on its own UDP socket. One
//! `epoll` over the sockets, each ready socket drained with `recvmmsg` (up to [`RECV_BATCH`]
//! datagrams per system call), arrival times from the kernel (`SO_TIMESTAMPNS`): the session
//! gets each datagram with its arrival instant, and the skew table gets the same instant, so
//! that neither skew, jitter nor loss depends on how promptly this thread gets the CPU.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use listen::session::{Event, Phase, Session, SessionConfig};
use listen::stats::ExitReason;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::UsageWho;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use nix::sys::time::TimeSpec;
use proto::limits::{AUDIO_OVERHEAD, MAX_DATAGRAM};
use proto::{MAGIC, MessageType, RejectReason, VERSION};

use super::stats::SkewTable;
use crate::procfs::own_cpu;

/// Datagrams per `recvmmsg`: a listener gets 3 per 20 ms tick, so 8 drains a socket in one call
/// even after a hiccup of a tick or two.
pub const RECV_BATCH: usize = 8;

/// How often the sessions' timers (connect pacing, retransmissions, reports) are checked.
const SWEEP: Duration = Duration::from_millis(10);

/// `Leave`s sent back to back before a pause.
const LEAVE_CHUNK: u32 = 16;

/// Every how many audio datagrams the read lag (kernel arrival → our processing) is sampled at
/// first.
const LAG_SAMPLE_EVERY: u64 = 64;

/// Most lag samples kept: when full, every other one is dropped and the stride doubles, so a long
/// run keeps an even sample in bounded memory (8 MiB).
const LAG_SAMPLES_MAX: usize = 1 << 20;

/// How one simulated listener's run turned out, from its session's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not started, or still in the handshake.
    Pending,
    /// Welcomed and in the stream.
    Joined,
    /// The server refused.
    Rejected(RejectReason),
    /// The handshake got no answer (also: still unanswered when the run ended).
    NoAnswer,
    /// The `Welcome` described a stream `listen` cannot play.
    Unplayable,
    /// The stream ended: by the server (`End`, eviction), by its silence, or by our `Leave`.
    Ended(ExitReason),
}

/// One simulated listener: its session once its turn to connect came, and what the load tool
/// notes beside it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// When its first `Connect` goes out (connects are paced).
    pub start_at: Instant,
    /// The protocol, from `start_at` on.
    pub session: Option<Session>,
    /// Where it stands.
    pub outcome: Outcome,
    /// When the `Welcome` was handled.
    pub joined_at: Option<Instant>,
    /// When the stream ended for it.
    pub ended_at: Option<Instant>,
}

impl Slot {
    /// A listener that starts connecting at `start_at`.
    pub fn new(start_at: Instant) -> Self {
        Self {
            start_at,
            session: None,
            outcome: Outcome::Pending,
            joined_at: None,
            ended_at: None,
        }
    }

    /// Nothing more will happen to it.
    fn is_done(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_closed)
    }

    /// Sends what the session queued and notes what happened to it.
    fn drain(&mut self, now: Instant, sock: &UdpSocket, send_errors: &mut u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        while let Some(t) = s.poll_transmit(now) {
            if sock.send_to(&t.contents, t.destination).is_err() {
                *send_errors += 1;
            }
        }
        while let Some(e) = s.poll_event() {
            match e {
                Event::Joined(_) => {
                    self.outcome = Outcome::Joined;
                    self.joined_at = Some(now);
                }
                Event::Rejected(r) => self.outcome = Outcome::Rejected(r),
                Event::NoAnswer { .. } => self.outcome = Outcome::NoAnswer,
                Event::Unplayable(_) => self.outcome = Outcome::Unplayable,
                Event::Ended(r) => {
                    self.outcome = Outcome::Ended(r);
                    self.ended_at = Some(now);
                }
                _ => {}
            }
        }
    }
}

/// One worker's share of the run.
pub(crate) struct WorkerSetup {
    /// The listeners' sockets (non-blocking, timestamping on).
    pub sockets: Vec<UdpSocket>,
    /// The listeners, parallel to `sockets`.
    pub slots: Vec<Slot>,
    /// What every listener's session is made with (the server's address among it).
    pub session: SessionConfig,
    /// A private room's key, for every listener's handshake.
    pub room_key: Option<seal::RoomKey>,
    /// When to stop counting and start the drain.
    pub stop_at: Instant,
    /// How long to keep reading after `stop_at` before sending `Leave`.
    pub drain: Duration,
    /// Pause per `Leave` sent: all listeners leaving at once would overflow the server's
    /// receive buffer, and a lost `Leave` keeps the server sending until it evicts.
    pub leave_pace: Duration,
}

/// What a worker hands back.
pub(crate) struct WorkerResult {
    /// The listeners with their sessions.
    pub slots: Vec<Slot>,
    /// Local addresses of the sockets, parallel to `slots`.
    pub locals: Vec<SocketAddr>,
    /// First/last arrival of each seq among this worker's listeners.
    pub skew: SkewTable,
    /// Highest audio seq any of this worker's listeners had received at `stop_at`.
    pub cutoff: Option<u64>,
    /// CPU time of this thread.
    pub cpu: Duration,
    /// Sampled read lag in milliseconds.
    pub lag_ms: Vec<f64>,
    /// Audio datagrams read from the server.
    pub audio: u64,
    /// Bytes of every datagram read from the server (UDP payloads, headers included).
    pub bytes: u64,
    /// `recvmmsg` calls made.
    pub recv_calls: u64,
    /// Datagrams that reached a listener before its session started.
    pub early: u64,
    /// Packets we failed to send (socket errors).
    pub send_errors: u64,
}

fn realtime_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The seq of a well-formed `Audio` datagram, read without copying the payload: the checks of
/// `proto::decode` (header, length prefix equal to what is there) and a payload the listener's
/// session takes as audio: whole 16-bit samples when `pcm` (the stream's codec is PCM), any
/// payload otherwise (a FLAC frame or an Opus packet has any length; the decoder judges it).
pub fn audio_seq(d: &[u8], pcm: bool) -> Option<u64> {
    if d.len() < AUDIO_OVERHEAD
        || d.len() > MAX_DATAGRAM
        || d[0..2] != MAGIC
        || d[2] != VERSION
        || d[3] != MessageType::Audio as u8
    {
        return None;
    }
    let seq = u64::from_le_bytes(d[4..12].try_into().ok()?);
    let len = u64::from_le_bytes(d[20..28].try_into().ok()?);
    let payload = (d.len() - AUDIO_OVERHEAD) as u64;
    (len == payload && (!pcm || (payload > 0 && payload % 2 == 0))).then_some(seq)
}

/// A kernel socket address as a std one (IPv4 or IPv6).
fn to_std(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Runs one worker to the end of the run.
pub(crate) fn run(setup: WorkerSetup) -> std::io::Result<WorkerResult> {
    let WorkerSetup {
        sockets,
        mut slots,
        session,
        room_key,
        stop_at,
        drain,
        leave_pace,
    } = setup;
    let server = session.server;
    let locals = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<Vec<_>>>()?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, s) in sockets.iter().enumerate() {
        epoll.add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let mut events = vec![EpollEvent::empty(); 256];
    let mut bufs: Box<[[u8; MAX_DATAGRAM]; RECV_BATCH]> = Box::new([[0; MAX_DATAGRAM]; RECV_BATCH]);
    let mut hdrs: MultiHeaders<SockaddrStorage> =
        MultiHeaders::preallocate(RECV_BATCH, Some(nix::cmsg_space!(TimeSpec)));
    let mut r = WorkerResult {
        slots: Vec::new(),
        locals: Vec::new(),
        skew: SkewTable::default(),
        cutoff: None,
        cpu: Duration::ZERO,
        lag_ms: Vec::new(),
        audio: 0,
        bytes: 0,
        recv_calls: 0,
        early: 0,
        send_errors: 0,
    };
    let mut max_seen: Option<u64> = None;
    let mut lag_stride = LAG_SAMPLE_EVERY;
    let mut draining_until: Option<Instant> = None;
    let mut next_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_sweep {
            for (slot, sock) in slots.iter_mut().zip(&sockets) {
                match slot.session.as_mut() {
                    None if now >= slot.start_at && draining_until.is_none() => {
                        let s = Session::new(session, now);
                        slot.session = Some(match &room_key {
                            Some(k) => match s.with_room_key(k) {
                                Ok(s) => s,
                                // No randomness now: this listener tries at the next sweep.
                                Err(_) => continue,
                            },
                            None => s,
                        });
                    }
                    Some(s) if s.poll_timeout().is_some_and(|t| t <= now) => {
                        s.handle_timeout(now);
                    }
                    _ => continue,
                }
                slot.drain(now, sock, &mut r.send_errors);
            }
            next_sweep = now + SWEEP;
            if slots.iter().all(Slot::is_done) {
                break;
            }
        }
        if draining_until.is_none() && now >= stop_at {
            r.cutoff = max_seen;
            draining_until = Some(now + drain);
        }
        if draining_until.is_some_and(|t| now >= t) {
            let mut sent = 0u32;
            for (slot, sock) in slots.iter_mut().zip(&sockets) {
                match slot.session.as_mut() {
                    Some(s) if matches!(s.phase(), Phase::Streaming | Phase::PlayingOut) => {
                        s.leave(now, proto::LeaveReason::Done);
                        slot.drain(now, sock, &mut r.send_errors);
                        sent += 1;
                        if sent % LEAVE_CHUNK == 0 {
                            std::thread::sleep(leave_pace * LEAVE_CHUNK);
                        }
                    }
                    // Never got in: its handshake is dropped without a word.
                    None => slot.outcome = Outcome::NoAnswer,
                    Some(s) if s.phase() == Phase::Handshake => slot.outcome = Outcome::NoAnswer,
                    Some(_) => {}
                }
            }
            break;
        }
        let wait = next_sweep
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 100) as u16;
        let n = match epoll.wait(&mut events, wait) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let (Some(sock), Some(slot)) = (sockets.get(i), slots.get_mut(i)) else {
                continue;
            };
            // Drain this socket: repeat while a call fills the whole batch.
            loop {
                let mut meta = [(0usize, None, 0i64); RECV_BATCH];
                let got = {
                    let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
                    let res = recvmmsg(
                        sock.as_raw_fd(),
                        &mut hdrs,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    );
                    r.recv_calls += 1;
                    let Ok(res) = res else { break };
                    let mut got = 0;
                    for (m, msg) in meta.iter_mut().zip(res) {
                        let mut t = 0;
                        if let Ok(cm) = msg.cmsgs() {
                            for c in cm {
                                if let ControlMessageOwned::ScmTimestampns(ts) = c {
                                    t = ts.tv_sec() * 1_000_000_000 + ts.tv_nsec();
                                }
                            }
                        }
                        *m = (msg.bytes, msg.address.and_then(to_std), t);
                        got += 1;
                    }
                    got
                };
                // The kernel stamps arrivals on the realtime clock; the session takes Instants.
                let (now, real_now) = (Instant::now(), realtime_ns());
                let Some(s) = slot.session.as_mut() else {
                    r.early += got as u64;
                    break;
                };
                for (k, &(len, from, t)) in meta[..got].iter().enumerate() {
                    let Some(from) = from else {
                        continue;
                    };
                    let d = &bufs[k][..len.min(MAX_DATAGRAM)];
                    let t = if t == 0 { real_now } else { t };
                    let ago = Duration::from_nanos(real_now.saturating_sub(t).max(0) as u64);
                    let arrived = now.checked_sub(ago).unwrap_or(now);
                    let before = s.tracker().received();
                    s.handle(arrived, from, d);
                    if from != server {
                        continue;
                    }
                    r.bytes += d.len() as u64;
                    let pcm = s
                        .info()
                        .is_none_or(|i| matches!(i.codec, proto::AudioCodec::Pcm));
                    let Some(seq) = audio_seq(d, pcm) else {
                        continue;
                    };
                    r.audio += 1;
                    if s.tracker().received() > before {
                        r.skew.record(seq, t);
                        if draining_until.is_none() {
                            max_seen = max_seen.max(Some(seq));
                        }
                    }
                    if r.audio % lag_stride == 0 {
                        r.lag_ms.push((real_now - t) as f64 / 1e6);
                        if r.lag_ms.len() >= LAG_SAMPLES_MAX {
                            let mut k = 0;
                            r.lag_ms.retain(|_| {
                                k += 1;
                                k % 2 == 0
                            });
                            lag_stride *= 2;
                        }
                    }
                }
                slot.drain(now, sock, &mut r.send_errors);
                if got < RECV_BATCH {
                    break;
                }
            }
        }
    }
    r.cpu = own_cpu(UsageWho::RUSAGE_THREAD);
    r.slots = slots;
    r.locals = locals;
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn audio_fast_path_agrees_with_decode() {
        let mut b = BytesMut::new();
        proto::encode_audio(77, 1000, &[1u8; 1360], &mut b);
        assert_eq!(b.len(), 1388);
        assert_eq!(audio_seq(&b, true), Some(77));
        assert_eq!(audio_seq(&b, false), Some(77));
        assert!(proto::decode(&b).is_ok());
        // Truncated, another version, wrong type: neither path accepts them.
        assert_eq!(audio_seq(&b[..1387], false), None);
        assert!(proto::decode(&b[..1387]).is_err());
        let mut v1 = b.to_vec();
        v1[2] = 1;
        assert_eq!(audio_seq(&v1, false), None);
        assert!(proto::decode(&v1).is_err());
        assert_eq!(
            audio_seq(b"ES\x02\x07garbage-garbage-garbage-garbage", false),
            None
        );
        // An odd payload is a valid datagram (codec data) but not whole PCM samples: the fast
        // path, like the session, takes it as audio of a FLAC or Opus stream only.
        let mut odd = BytesMut::new();
        proto::encode_audio(1, 0, &[1u8; 3], &mut odd);
        assert_eq!(audio_seq(&odd, true), None);
        assert_eq!(audio_seq(&odd, false), Some(1));
        assert!(proto::decode(&odd).is_ok());
        // An empty payload is no PCM.
        let mut empty = BytesMut::new();
        proto::encode_audio(2, 0, &[], &mut empty);
        assert_eq!(audio_seq(&empty, true), None);
    }
}
