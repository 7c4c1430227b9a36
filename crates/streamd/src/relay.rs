//! Relays (`--relay-from HOST:PORT`): streamd joins another earshot server as a listener and
//! serves what it hears to its own listeners, so one stream reaches past one server's capacity
//! or network.
//!
//! The upstream side is listen's sans-IO [`Session`] (handshake, reports, statistics, repair,
//! decoding, `End`); the downstream side is the ordinary [`crate::endpoint::Endpoint`], whose
//! [`AudioSource`] is a [`RelaySource`]. Audio is forwarded as it arrives, not played out
//! through a jitter buffer: when upstream datagrams arrive the relay ticks at once
//! ([`crate::endpoint::Endpoint::tick_now`]) and sends every frame that is contiguous with what
//! it sent before, re-framed into its own datagrams ([`AudioSource::ready_frames`]). So a relay
//! adds the time to receive, decode and re-send a datagram, not a playout delay. Each hop is a
//! whole earshot hop with its own handshake, capacity, statistics and repair:
//!
//! - A hole (audio missing while later audio has arrived) is waited for [`hole_wait`] (long
//!   enough for the upstream's repair to fill it), then concealed (the codec's concealment, or
//!   a short fade and silence) and those frames sent downstream as ordinary audio: listeners
//!   below see only what was lost on their own hop, and the relay counts the upstream loss
//!   ([`UpstreamStats`]).
//! - When nothing has arrived the tick sends nothing and the media clock owes nothing for it:
//!   frames are never invented for audio that is merely late, so a clean chain is
//!   sample-exact.
//! - The stream description is the upstream's: rate, channels and title; the length is what is
//!   left of it after the relay's join position.
//! - The upstream's `End` is forwarded once what it ends has gone out, with the same reason
//!   (`Finished` or `Shutdown`); an upstream that falls silent or evicts the relay ends it with
//!   `Shutdown`.
//!
//! The tokio side ([`connect`]) runs the handshake before the server binds (an unreachable or
//! foreign upstream is one error line), then one task drives the session over its own UDP
//! socket and wakes the server's loop ([`RelaySource::ready_notify`]) when audio is ready.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use listen::session::{Event as SessionEvent, Phase, Session, SessionConfig};
use listen::stats::ExitReason;
use proto::{EndReason, StreamInfo};

use crate::endpoint::AudioSource;
use crate::source::SourceInfo;

/// How long the upstream may leave the handshake unanswered, and be silent mid-stream, before
/// the relay gives up: a second less than listen's default `--timeout`, so that the relay's
/// `End{Shutdown}` reaches its listeners before they give up on the silence themselves (the
/// relay forwards audio as it arrives, so their silence starts when the relay's does).
pub const UPSTREAM_TIMEOUT: Duration =
    listen::session::DEFAULT_TIMEOUT.saturating_sub(Duration::from_secs(1));

/// The name a relay joins its upstream with: the upstream's log and dashboard show it.
pub const RELAY_NAME: &str = "streamd relay";

/// The session shared between the upstream task (datagrams, timers) and the relay's tick
/// (audio pulls). Both run on the server's one thread; the lock is never contended.
pub type SharedSession = Arc<Mutex<Session>>;

/// Locks the shared session. A panic while it was held leaves a session whose state is still
/// consistent (every call completes its own update), so the poison is ignored.
pub fn lock(session: &SharedSession) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// The session configuration of a relay joining `upstream`: audio is taken out of the
/// session as it arrives ([`Session::ready`], [`Session::pull_now`]), so the jitter buffer's
/// target and lead play no part.
pub fn session_config(upstream: SocketAddr) -> SessionConfig {
    SessionConfig {
        server: upstream,
        latency: Duration::ZERO,
        timeout: UPSTREAM_TIMEOUT,
        sink_lead: Duration::ZERO,
        playout: true,
        name: listen::session::ListenerName::new(RELAY_NAME),
        ..SessionConfig::new(upstream)
    }
}

/// What the relay's listeners are told, from the upstream's `Welcome`: the same rate, channels
/// and title; the length left after the relay's join position.
pub fn source_info(info: &StreamInfo) -> SourceInfo {
    SourceInfo {
        sample_rate: info.sample_rate,
        channels: info.channels,
        total_frames: info.total_frames.map(|t| t.saturating_sub(info.start_ts)),
        codec: "relay".into(),
        title: info.title.clone(),
    }
}

/// How long a relay waits for audio missing upstream (while later audio has arrived) before
/// it conceals it: the upstream's least playout delay (its interval plus 5 ms: reordering
/// within a tick), or, when the upstream repairs loss (FEC, retransmission), the playout
/// delay it budgets for that repair, less one interval, if longer.
pub fn hole_wait(info: &StreamInfo) -> Duration {
    let us = |v: u32| Duration::from_micros(u64::from(v));
    let least = us(info.min_delay_us);
    let repairs = info.repair.fec.is_some() || info.repair.retransmit_ms > 0;
    if repairs {
        least.max(us(info.playout_delay_us).saturating_sub(us(info.interval_us)))
    } else {
        least
    }
}

/// The upstream hop's statistics, with listen's definitions: what the relay's summary logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpstreamStats {
    /// Audio datagrams expected (highest − first seq + 1).
    pub expected: u64,
    /// Unique audio datagrams received.
    pub received: u64,
    /// Audio datagrams lost upstream.
    pub lost: u64,
    /// Datagrams that arrived after their frames had been relayed.
    pub late: u64,
    /// Copies of datagrams already received.
    pub duplicates: u64,
    /// Datagrams with a seq lower than one already received.
    pub out_of_order: u64,
    /// Frames relayed in place of lost audio (a fade, then silence).
    pub concealed_frames: u64,
    /// Frames relayed in all.
    pub relayed_frames: u64,
    /// Times the relay had to conceal audio past the end of what had arrived.
    pub underruns: u64,
    /// How the upstream session ended, once it did.
    pub exit: Option<ExitReason>,
}

impl UpstreamStats {
    /// The counters of `session` now.
    pub fn of(session: &Session) -> Self {
        let t = session.tracker();
        let p = session.playout();
        let r = t.report([0; 16], &p, 0);
        Self {
            expected: t.expected(),
            received: t.received(),
            lost: t.lost(),
            late: p.late,
            duplicates: r.duplicates,
            out_of_order: r.out_of_order,
            concealed_frames: p.concealed_frames,
            relayed_frames: p.played_frames,
            underruns: p.underruns,
            exit: session.exit_reason(),
        }
    }
}

impl std::fmt::Display for UpstreamStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} received {} lost {} late {} duplicates {} out_of_order {}; \
             relayed {} frames, concealed {} of them (lost upstream), underruns {}",
            self.expected,
            self.received,
            self.lost,
            self.late,
            self.duplicates,
            self.out_of_order,
            self.relayed_frames,
            self.concealed_frames,
            self.underruns
        )?;
        if let Some(e) = self.exit {
            write!(f, "; upstream ended: {}", e.as_str())?;
        }
        Ok(())
    }
}

/// The reason the relay's own stream ends with, for an upstream session that ended with `r`.
pub fn end_reason_for(r: Option<ExitReason>) -> EndReason {
    match r {
        Some(ExitReason::Finished) => EndReason::Finished,
        _ => EndReason::Shutdown,
    }
}

/// Something to call after the tick touched the session (it may have queued a `Leave` or
/// events, or moved its deadline): wakes the upstream task.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The [`AudioSource`] of a relay: each tick forwards what has arrived upstream.
pub struct RelaySource {
    info: SourceInfo,
    session: SharedSession,
    upstream: SocketAddr,
    wake: Option<Wake>,
    /// Told by the upstream task when audio is ready: the server's loop ticks at once.
    ready: Arc<tokio::sync::Notify>,
    /// Sends the session's last datagrams (its `Leave`) when the relay is dropped.
    socket: Option<Arc<StdUdpSocket>>,
    now: Option<Instant>,
    /// Frames this tick forwards ([`AudioSource::ready_frames`]), decided at its start.
    due: u64,
    /// Since when the current hole (audio missing before audio that arrived) was seen.
    hole_since: Option<Instant>,
    hole_wait: Duration,
    /// Scratch for the pull that lets a played-out session finish.
    scratch: Vec<i16>,
    holding: bool,
    finished: bool,
    end: EndReason,
}

impl std::fmt::Debug for RelaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySource")
            .field("upstream", &self.upstream)
            .field("info", &self.info)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl RelaySource {
    /// A source over a session that has joined (its `Welcome` is in); `None` before that.
    pub fn new(session: SharedSession) -> Option<Self> {
        let (info, upstream, hole_wait) = {
            let s = lock(&session);
            let up = s.info()?;
            (source_info(up), s.config().server, hole_wait(up))
        };
        Some(Self {
            info,
            session,
            upstream,
            wake: None,
            ready: Arc::new(tokio::sync::Notify::new()),
            socket: None,
            now: None,
            due: 0,
            hole_since: None,
            hole_wait,
            scratch: Vec::new(),
            holding: false,
            finished: false,
            end: EndReason::Finished,
        })
    }

    /// Calls `wake` after every pull (the shell's upstream task re-reads the session).
    pub fn set_wake(&mut self, wake: Wake) {
        self.wake = Some(wake);
    }

    /// Notified when upstream audio (or the upstream's end) is ready to forward: the server's
    /// loop then calls [`crate::endpoint::Endpoint::tick_now`].
    pub fn ready_notify(&self) -> Arc<tokio::sync::Notify> {
        self.ready.clone()
    }

    /// How long a hole is waited for before it is concealed ([`hole_wait`]).
    pub fn hole_wait(&self) -> Duration {
        self.hole_wait
    }

    /// The upstream server.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The upstream hop's statistics so far.
    pub fn stats(&self) -> UpstreamStats {
        UpstreamStats::of(&lock(&self.session))
    }

    /// The shared session (the upstream task drives it).
    pub fn session(&self) -> &SharedSession {
        &self.session
    }

    /// Decides what the tick at `now` forwards: the contiguous audio that has arrived, or a
    /// hole that has been waited for long enough; notices a session that has ended.
    fn plan(&mut self, now: Instant) {
        self.now = Some(now);
        self.due = 0;
        self.holding = false;
        if self.finished {
            return;
        }
        let mut s = lock(&self.session);
        let (ready, hole) = s.ready();
        if ready > 0 {
            self.due = ready;
            self.hole_since = None;
        } else if hole > 0 {
            let since = *self.hole_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.hole_wait {
                // Lost upstream: concealed, and counted by the session.
                self.due = hole;
                self.hole_since = None;
            }
        } else {
            self.hole_since = None;
            if s.end_received() {
                // Everything before the end has gone out: this lets the session finish.
                self.scratch.clear();
                s.pull_now(now, 1, &mut self.scratch);
            }
        }
        if self.due == 0 {
            if s.is_closed() {
                self.finished = true;
                self.end = end_reason_for(s.exit_reason());
            } else {
                self.holding = true;
            }
        }
    }

    /// Hands out up to `max_frames` of the frames this tick forwards into `out`.
    fn pull(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let want = (max_frames as u64).min(self.due) as usize;
        if self.finished || want == 0 {
            return 0;
        }
        let now = self.now.unwrap_or_else(Instant::now);
        let (got, closed, exit) = {
            let mut s = lock(&self.session);
            let got = s.pull_now(now, want, out);
            (got, s.is_closed(), s.exit_reason())
        };
        self.due -= got as u64;
        if got < want && closed {
            self.finished = true;
            self.end = end_reason_for(exit);
        }
        if let Some(w) = &self.wake {
            w();
        }
        got
    }
}

impl AudioSource for RelaySource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.pull(max_frames, out)
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn rewind(&mut self) -> Result<(), String> {
        Err("a relay cannot loop".into())
    }

    fn begin_tick(&mut self, now: Instant) {
        self.plan(now);
    }

    fn ready_frames(&self) -> Option<u64> {
        Some(self.due)
    }

    fn is_holding(&self) -> bool {
        self.holding
    }

    fn end_reason(&self) -> EndReason {
        self.end
    }
}

impl Drop for RelaySource {
    fn drop(&mut self) {
        // The relay stops (Ctrl-C, its own end): leave the upstream now, from this thread, as
        // the upstream task may never run again.
        let mut s = lock(&self.session);
        let now = Instant::now();
        s.leave(now, proto::LeaveReason::Terminated);
        if let Some(sock) = &self.socket {
            while let Some(t) = s.poll_transmit(now) {
                let _ = sock.send_to(&t.contents, t.destination);
            }
        }
        drop(s);
        if let Some(w) = &self.wake {
            w();
        }
    }
}

/// Why a relay could not join its upstream. Each message names the upstream.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The name does not resolve.
    #[error("upstream {0}: cannot resolve: {1}")]
    Resolve(String, String),
    /// No socket could be opened.
    #[error("upstream {0}: cannot open a socket: {1}")]
    Socket(String, std::io::Error),
    /// Nothing answered in earshot's protocol.
    #[error("upstream {0}: no earshot server answered within {1:?}")]
    NoAnswer(String, Duration),
    /// The upstream refused the relay.
    #[error("upstream {0}: refused: {1}")]
    Rejected(String, String),
    /// The upstream's stream cannot be relayed.
    #[error("upstream {0}: unplayable stream: {1}")]
    Unplayable(String, String),
}

/// Resolves `upstream` (HOST:PORT), joins it and starts the task that drives the session; the
/// source is ready for the relay's endpoint.
pub async fn connect(upstream: &str) -> Result<RelaySource, RelayError> {
    let name = upstream.to_string();
    let addr = tokio::net::lookup_host(upstream)
        .await
        .map_err(|e| RelayError::Resolve(name.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| RelayError::Resolve(name.clone(), "no address".into()))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock_err = |e| RelayError::Socket(name.clone(), e);
    let std_sock = open_socket(bind).map_err(sock_err)?;
    let recv = tokio::net::UdpSocket::from_std(std_sock.try_clone().map_err(sock_err)?)
        .map_err(sock_err)?;
    let send = Arc::new(std_sock);
    let session: SharedSession = Arc::new(Mutex::new(Session::new(
        session_config(addr),
        Instant::now(),
    )));
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut buf = vec![0u8; proto::limits::MAX_DATAGRAM + 1];
    // The handshake, before anything is served.
    loop {
        let (events, deadline) = flush(&session, &send);
        for e in events {
            match e {
                SessionEvent::Joined(info) => {
                    tracing::info!(
                        "joined upstream {addr}: {:?}, {} Hz, {} ch, every {} us, from ts {}",
                        info.title,
                        info.sample_rate,
                        info.channels,
                        info.interval_us,
                        info.start_ts
                    );
                }
                SessionEvent::NoAnswer { after } => {
                    return Err(RelayError::NoAnswer(name, after));
                }
                SessionEvent::Rejected(r) => {
                    return Err(RelayError::Rejected(name, format!("{r:?}")));
                }
                SessionEvent::Unplayable(why) => return Err(RelayError::Unplayable(name, why)),
                _ => {}
            }
        }
        if lock(&session).phase() != Phase::Handshake {
            break;
        }
        step(&session, &recv, &mut buf, deadline, &notify).await;
    }
    let Some(mut source) = RelaySource::new(session.clone()) else {
        return Err(RelayError::NoAnswer(name, UPSTREAM_TIMEOUT));
    };
    source.socket = Some(send.clone());
    let n = notify.clone();
    source.set_wake(Arc::new(move || n.notify_one()));
    tokio::spawn(drive(
        session,
        send,
        recv,
        notify,
        source.ready_notify(),
        buf,
    ));
    Ok(source)
}

fn open_socket(bind: SocketAddr) -> std::io::Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // A burst of a long upstream interval must fit; a kernel that refuses still works.
    if let Err(e) = s.set_recv_buffer_size(crate::server::RECV_BUFFER * 8) {
        tracing::debug!("upstream SO_RCVBUF not raised: {e}");
    }
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(s.into())
}

/// Sends what the session has to send (straight to the kernel) and returns its events and its
/// next deadline.
fn flush(session: &SharedSession, send: &StdUdpSocket) -> (Vec<SessionEvent>, Option<Instant>) {
    let mut s = lock(session);
    let now = Instant::now();
    while let Some(t) = s.poll_transmit(now) {
        if let Err(e) = send.send_to(&t.contents, t.destination) {
            tracing::debug!("upstream send failed: {e}");
        }
    }
    let mut events = Vec::new();
    while let Some(e) = s.poll_event() {
        events.push(e);
    }
    (events, s.poll_timeout())
}

/// Most datagrams taken from the socket in one wake-up (a tick's burst) before the relay
/// forwards them.
const RECV_BATCH: usize = 64;

/// One wake-up: datagrams (every one already queued, up to [`RECV_BATCH`]), the session's
/// deadline, or a pull by the tick. True when datagrams arrived.
async fn step(
    session: &SharedSession,
    recv: &tokio::net::UdpSocket,
    buf: &mut [u8],
    deadline: Option<Instant>,
    notify: &tokio::sync::Notify,
) -> bool {
    let far = Instant::now() + Duration::from_secs(86_400);
    let at = tokio::time::Instant::from_std(deadline.unwrap_or(far));
    tokio::select! {
        r = recv.recv_from(buf) => {
            let mut next = r;
            for _ in 0..RECV_BATCH {
                match next {
                    Ok((n, from)) => lock(session).handle(Instant::now(), from, &buf[..n]),
                    // An ICMP error from the upstream surfaces here; the silence timeout
                    // decides.
                    Err(e) => tracing::trace!("upstream receive error (ignored): {e}"),
                }
                next = recv.try_recv_from(buf);
                if matches!(&next, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                    break;
                }
            }
            true
        }
        () = tokio::time::sleep_until(at) => {
            lock(session).handle_timeout(Instant::now());
            false
        }
        () = notify.notified() => false,
    }
}

/// The upstream task: drives the session until it closes, logging what happens, and tells
/// the server's loop (`ready`) when there is audio, a hole or an end to act on.
async fn drive(
    session: SharedSession,
    send: Arc<StdUdpSocket>,
    recv: tokio::net::UdpSocket,
    notify: Arc<tokio::sync::Notify>,
    ready: Arc<tokio::sync::Notify>,
    mut buf: Vec<u8>,
) {
    let upstream = lock(&session).config().server;
    loop {
        let (events, deadline) = flush(&session, &send);
        for e in events {
            log_event(upstream, e);
        }
        if lock(&session).is_closed() {
            // The tick notices and ends the relay's stream.
            ready.notify_one();
            return;
        }
        if step(&session, &recv, &mut buf, deadline, &notify).await {
            let s = lock(&session);
            if s.ready() != (0, 0) || s.end_received() || s.is_closed() {
                ready.notify_one();
            }
        }
    }
}

fn log_event(upstream: SocketAddr, e: SessionEvent) {
    match e {
        SessionEvent::Playing { buffered } => {
            tracing::info!("relaying from {upstream} ({buffered:?} buffered)");
        }
        SessionEvent::Underrun { at, target } => {
            tracing::warn!("upstream {upstream} ran dry at {at:?}; waiting for {target:?} of audio")
        }
        SessionEvent::EndReceived { reason, buffered } => tracing::info!(
            "upstream {upstream} ended the stream ({}); relaying the last {buffered:?}",
            reason.as_str()
        ),
        SessionEvent::TimedOut { silence } => {
            tracing::error!("upstream {upstream} silent for {silence:?}; ending the stream");
        }
        SessionEvent::Evicted(e) => {
            tracing::error!(
                "upstream {upstream} dropped the relay ({}); ending the stream",
                e.text
            );
        }
        SessionEvent::ServerError(e) => tracing::warn!("upstream {upstream} error: {}", e.text),
        SessionEvent::EndOverdue => {
            tracing::warn!("upstream {upstream}: the end did not play out in time");
        }
        SessionEvent::Ended(r) => tracing::info!("left upstream {upstream} ({})", r.as_str()),
        other => tracing::debug!("upstream {upstream}: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(interval_ms: u32, playout_ms: u32, fec: bool, retransmit_ms: u32) -> StreamInfo {
        StreamInfo {
            sample_rate: 48_000,
            channels: 2,
            codec: proto::AudioCodec::Pcm,
            timeline: proto::Timeline::default(),
            playout_delay_us: playout_ms * 1000,
            min_delay_us: (interval_ms + 5) * 1000,
            repair: proto::Repair {
                fec: fec.then_some(proto::Fec { k: 8, m: 2 }),
                retransmit_ms,
            },
            multicast: None,
            interval_us: interval_ms * 1000,
            frames_per_packet: 343,
            total_frames: None,
            start_seq: 0,
            start_ts: 0,
            title: "t".into(),
        }
    }

    /// Without repair a hole is lost after the upstream's least delay (its interval + 5 ms);
    /// with repair, after the playout delay the upstream budgets for it, less one interval.
    #[test]
    fn hole_wait_follows_the_upstreams_repair() {
        let ms = Duration::from_millis;
        assert_eq!(hole_wait(&info(20, 50, false, 0)), ms(25));
        assert_eq!(hole_wait(&info(20, 50, true, 0)), ms(30));
        assert_eq!(hole_wait(&info(20, 200, false, 1000)), ms(180));
        // A playout delay shorter than the least one never shortens the wait below it.
        assert_eq!(hole_wait(&info(20, 25, true, 0)), ms(25));
    }
}
