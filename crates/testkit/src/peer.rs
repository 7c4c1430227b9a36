//! A real listener for tests that need to watch the wire: `listen`'s own sans-IO
//! [`Session`] (handshake, retransmission, reports, the end of the stream) driven over a UDP
//! socket on 127.0.0.1 or ::1, playing into a [`MemorySink`], with every datagram the server
//! sends it also kept as it arrived ([`Seen`]).
//!
//! A test reads both sides: what the listener did (its [`Session`]: events, statistics, what it
//! played) and what was on the wire (each `Audio` seq, ts and payload, every copy of `End`, the
//! other control messages, arrival instants). It may also send hand-built datagrams from the
//! listener's own address ([`Listener::send`], [`Listener::send_raw`]) for hostile cases: a
//! repeated `Join`, a `Report` after an eviction.
//!
//! The session runs on its own thread, independent of any async runtime, so the same listener
//! serves a `#[tokio::test]` with the server in-process ([`Listener::wait_async`]) and a plain
//! test against a server process ([`Listener::wait`]).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use listen::session::{Event, Phase, Session, SessionConfig};
use listen::sink::MemorySink;
use listen::stats::ExitReason;
use proto::limits::MAX_DATAGRAM;
use proto::{End, Message, Packet, StreamInfo};

/// Longest the driver thread blocks on its socket before it looks at its commands
/// ([`Listener::leave`], [`Listener::sync`], stop): bounds how late a command takes effect.
pub const COMMAND_POLL: Duration = Duration::from_millis(5);

/// Receive buffer asked of the kernel: a catch-up burst from a stalled server (or a 2 s
/// interval's burst) fits while the driver thread is descheduled.
pub const RECV_BUFFER: usize = 4 << 20;

/// How the listener behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Jitter-buffer target (`listen --latency`).
    pub latency: Duration,
    /// Handshake and mid-stream silence timeout (`listen --timeout`).
    pub timeout: Duration,
    /// Once joined, send nothing more (no `Report`, no `Leave`): a listener that went quiet,
    /// for eviction tests.
    pub mute_after_join: bool,
}

impl Default for PeerConfig {
    /// `listen`'s defaults.
    fn default() -> Self {
        Self {
            latency: listen::session::DEFAULT_LATENCY,
            timeout: listen::session::DEFAULT_TIMEOUT,
            mute_after_join: false,
        }
    }
}

/// One `Audio` datagram as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioIn {
    /// Its seq.
    pub seq: u64,
    /// Its first frame's index.
    pub ts: u64,
    /// Its payload: the stream's codec data (PCM: interleaved s16le samples).
    pub payload: Bytes,
    /// When the driver read it.
    pub at: Instant,
}

/// Everything the listener did and saw so far. Read it with [`Listener::seen`] or wait on it
/// with [`Listener::wait`].
#[derive(Debug)]
pub struct Seen {
    /// The real listener core; its statistics ([`Session::stats`]) once the stream ended.
    pub session: Session,
    /// What the session played, once joined.
    pub sink: Option<MemorySink>,
    /// Every event the session raised, in order.
    pub events: Vec<Event>,
    /// Every `Audio` datagram from the server, in arrival order (duplicates included).
    pub audio: Vec<AudioIn>,
    /// Every copy of `End` from the server, with its seq, in arrival order.
    pub ends: Vec<(u64, End)>,
    /// `audio.len()` when the first `End` arrived: audio after it is `audio[this..]`.
    pub audio_before_end: Option<usize>,
    /// Every other message from the server (Challenge, Welcome, Reject, Error), with its seq.
    pub control: Vec<(u64, Message)>,
    /// `control.len()` when the first `End` arrived: what the server answered while the
    /// listener was joined is `control[..this]`.
    pub control_before_end: Option<usize>,
    /// Datagrams from the server that did not decode.
    pub undecodable: u64,
    /// Datagrams from any other address.
    pub foreign: u64,
    /// The largest datagram received from the server, in bytes.
    pub largest: usize,
}

impl Seen {
    /// The handshake's outcome: the stream once joined, the terminal event if it failed, `None`
    /// while it runs. For [`Listener::wait`].
    pub fn joined(&self) -> Option<Result<StreamInfo, Event>> {
        self.events.iter().find_map(|e| match e {
            Event::Joined(info) => Some(Ok(info.clone())),
            Event::Rejected(_) | Event::Unplayable(_) | Event::NoAnswer { .. } => {
                Some(Err(e.clone()))
            }
            _ => None,
        })
    }

    /// Why the session ended ([`Event::Ended`]), once it did.
    pub fn ended(&self) -> Option<ExitReason> {
        self.session.exit_reason()
    }

    /// The first `End` that arrived, with its seq.
    pub fn end(&self) -> Option<(u64, End)> {
        self.ends.first().cloned()
    }

    /// The samples of every `Audio` datagram in arrival order, as sent (before the jitter
    /// buffer).
    pub fn wire_samples(&self) -> Vec<i16> {
        self.audio
            .iter()
            .flat_map(|a| a.payload.chunks_exact(2))
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    /// What the session played so far.
    pub fn played(&self) -> &[i16] {
        self.sink.as_ref().map_or(&[], |s| s.samples())
    }

    /// The cookie of the last `Challenge` received, for a hand-built `Join`.
    pub fn cookie(&self) -> Option<[u8; proto::COOKIE_LEN]> {
        self.control.iter().rev().find_map(|(_, m)| match m {
            Message::Challenge(c) => Some(c.cookie),
            _ => None,
        })
    }

    /// The session token of the last `Welcome` received, for a hand-built `Report` or `Leave`
    /// that the server should take as this listener's.
    pub fn token(&self) -> Option<proto::Token> {
        self.control.iter().rev().find_map(|(_, m)| match m {
            Message::Welcome(w) => Some(w.token),
            _ => None,
        })
    }

    /// `Welcome`s received (a repeated `Join` is welcomed again).
    pub fn welcomes(&self) -> usize {
        self.control
            .iter()
            .filter(|(_, m)| matches!(m, Message::Welcome(_)))
            .count()
    }
}

/// What the test asks of the driver thread.
enum Command {
    Leave,
    /// Read everything already in the socket, then answer.
    Sync(Sender<()>),
}

struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        // A panicking test thread must not hide what the listener saw.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running listener; dropping it stops the driver and closes the socket without a `Leave`
/// (a listener that vanished).
pub struct Listener {
    server: SocketAddr,
    local: SocketAddr,
    /// A handle on the driver's socket, for hand-built datagrams from the same address.
    sock: UdpSocket,
    shared: Arc<Shared>,
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds a socket on the loopback address of `server`'s family and starts the session: the
    /// first `Connect` goes out at once. Wait for the `Welcome` with [`Seen::joined`].
    pub fn join(server: SocketAddr, config: PeerConfig) -> std::io::Result<Listener> {
        let local: SocketAddr = if server.is_ipv6() {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        };
        let sock = UdpSocket::bind(local)?;
        // An optimisation: the kernel may grant less (net.core.rmem_max).
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &RECV_BUFFER);
        let local = sock.local_addr()?;
        let mut session_config = SessionConfig::new(server);
        session_config.latency = config.latency;
        session_config.timeout = config.timeout;
        session_config.sink_lead = listen::sink::VIRTUAL_LEAD;
        let session = Session::new(session_config, Instant::now());
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen {
                session,
                sink: None,
                events: Vec::new(),
                audio: Vec::new(),
                ends: Vec::new(),
                audio_before_end: None,
                control: Vec::new(),
                control_before_end: None,
                undecodable: 0,
                foreign: 0,
                largest: 0,
            }),
            changed: Condvar::new(),
        });
        let (tx, rx) = channel();
        let driver = Driver {
            sock: sock.try_clone()?,
            server,
            mute: config.mute_after_join,
            shared: shared.clone(),
            commands: rx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("peer {local}"))
            .spawn(move || driver.run())?;
        Ok(Listener {
            server,
            local,
            sock,
            shared,
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// The listener's own address (what the server sees).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server it talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// What it did and saw so far (the driver waits while this is held).
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.shared.lock()
    }

    /// Blocks until `f` returns `Some` (checked now and after every change), or `timeout`.
    pub fn wait<R>(&self, timeout: Duration, f: impl FnMut(&Seen) -> Option<R>) -> Option<R> {
        wait_on(&self.shared, timeout, f)
    }

    /// [`Listener::wait`] for async tests: blocks a thread of tokio's blocking pool, not the
    /// runtime (an in-process server keeps running).
    pub async fn wait_async<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnMut(&Seen) -> Option<R> + Send + 'static,
    ) -> Option<R> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || wait_on(&shared, timeout, f))
            .await
            .ok()
            .flatten()
    }

    /// The user's interrupt: the session ends ([`ExitReason::Interrupted`]) and sends `Leave`.
    pub fn leave(&self) {
        self.command(Command::Leave);
    }

    /// Returns once every datagram already in the socket has been read and handled: after the
    /// server stopped sending, [`Seen`] then holds everything it sent. `false` if the driver is
    /// gone.
    pub fn sync(&self) -> bool {
        let (tx, rx) = channel();
        self.command(Command::Sync(tx));
        rx.recv().is_ok()
    }

    /// [`Listener::sync`] for async tests.
    pub async fn sync_async(&self) -> bool {
        let (tx, rx) = channel();
        self.command(Command::Sync(tx));
        tokio::task::spawn_blocking(move || rx.recv().is_ok())
            .await
            .unwrap_or(false)
    }

    /// Sends `msg` (seq 0) from the listener's address, outside the session.
    pub fn send(&self, msg: Message) -> std::io::Result<()> {
        let b = proto::encode_to_bytes(&Packet::new(0, msg))
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        self.send_raw(&b)
    }

    /// Sends `datagram` as it is from the listener's address, outside the session.
    pub fn send_raw(&self, datagram: &[u8]) -> std::io::Result<()> {
        self.sock.send_to(datagram, self.server).map(|_| ())
    }

    fn command(&self, c: Command) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(c);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Closing the channel stops the driver within COMMAND_POLL; its socket closes with it.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_on<R>(
    shared: &Shared,
    timeout: Duration,
    mut f: impl FnMut(&Seen) -> Option<R>,
) -> Option<R> {
    let deadline = Instant::now() + timeout;
    let mut seen = shared.lock();
    loop {
        if let Some(r) = f(&seen) {
            return Some(r);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        seen = shared
            .changed
            .wait_timeout(seen, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The listener's thread: `listen`'s client loop ([`listen::client`]) on a blocking socket.
struct Driver {
    sock: UdpSocket,
    server: SocketAddr,
    mute: bool,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
}

impl Driver {
    fn run(self) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let now = Instant::now();
            let refill = {
                let mut seen = self.shared.lock();
                loop {
                    match self.commands.try_recv() {
                        Ok(Command::Leave) => {
                            seen.session.leave(now, proto::LeaveReason::Interrupted)
                        }
                        Ok(Command::Sync(done)) => {
                            self.drain(&mut seen, &mut buf);
                            let _ = done.send(());
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
                if seen.session.poll_timeout().is_some_and(|t| t <= now) {
                    seen.session.handle_timeout(now);
                }
                let refill = self.step(&mut seen, now);
                self.shared.changed.notify_all();
                refill
            };
            let wake = {
                let seen = self.shared.lock();
                [seen.session.poll_timeout(), refill]
                    .into_iter()
                    .flatten()
                    .min()
            };
            let now = Instant::now();
            let wait = wake
                .map_or(COMMAND_POLL, |w| w.saturating_duration_since(now))
                .clamp(Duration::from_micros(100), COMMAND_POLL);
            if self.sock.set_read_timeout(Some(wait)).is_err() {
                return;
            }
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let mut seen = self.shared.lock();
                self.record(&mut seen, Instant::now(), from, &buf[..n]);
                // Whatever else is already queued, in the same wake-up (a burst).
                self.drain(&mut seen, &mut buf);
            }
        }
    }

    /// Reads and handles every datagram already in the socket.
    fn drain(&self, seen: &mut Seen, buf: &mut [u8]) {
        if self.sock.set_nonblocking(true).is_err() {
            return;
        }
        while let Ok((n, from)) = self.sock.recv_from(buf) {
            self.record(seen, Instant::now(), from, &buf[..n]);
        }
        let _ = self.sock.set_nonblocking(false);
        let now = Instant::now();
        self.step(seen, now);
        self.shared.changed.notify_all();
    }

    /// Keeps what arrived, then hands it to the session.
    fn record(&self, seen: &mut Seen, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if from != self.server {
            seen.foreign += 1;
        } else {
            seen.largest = seen.largest.max(datagram.len());
            match proto::decode(datagram) {
                Ok(Packet {
                    seq,
                    msg: Message::Audio(a),
                }) => seen.audio.push(AudioIn {
                    seq,
                    ts: a.ts,
                    payload: a.payload,
                    at: now,
                }),
                Ok(Packet {
                    seq,
                    msg: Message::End(e),
                }) => {
                    seen.audio_before_end.get_or_insert(seen.audio.len());
                    seen.control_before_end.get_or_insert(seen.control.len());
                    seen.ends.push((seq, e));
                }
                Ok(Packet { seq, msg }) => seen.control.push((seq, msg)),
                Err(_) => seen.undecodable += 1,
            }
        }
        seen.session.handle(now, from, datagram);
    }

    /// Sends what the session has to send, takes its events (opening the sink on `Joined`) and
    /// feeds the sink; returns when the sink wants feeding again.
    fn step(&self, seen: &mut Seen, now: Instant) -> Option<Instant> {
        let joined = seen.sink.is_some();
        while let Some(t) = seen.session.poll_transmit(now) {
            if !(self.mute && joined) {
                let _ = self.sock.send_to(&t.contents, t.destination);
            }
        }
        while let Some(e) = seen.session.poll_event() {
            if let Event::Joined(info) = &e {
                seen.sink = Some(MemorySink::new(info.sample_rate, info.channels));
            }
            seen.events.push(e);
        }
        let Seen { session, sink, .. } = seen;
        let sink = sink.as_mut()?;
        if session.phase() == Phase::Closed {
            return None;
        }
        match session.feed(now, sink) {
            Ok(next) => {
                // Playing out may have closed the session: its Leave and events now.
                self.flush_after_feed(seen, now);
                next
            }
            Err(_) => None,
        }
    }

    fn flush_after_feed(&self, seen: &mut Seen, now: Instant) {
        while let Some(t) = seen.session.poll_transmit(now) {
            if !self.mute {
                let _ = self.sock.send_to(&t.contents, t.destination);
            }
        }
        while let Some(e) = seen.session.poll_event() {
            seen.events.push(e);
        }
    }
}
