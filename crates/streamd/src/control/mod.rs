//! The control plane (`streamd --http ADDR:PORT`): a JSON API, Prometheus metrics, a stream of
//! server-sent events and a dashboard, served by [`http`] on its own tokio task.
//!
//! The HTTP side never touches the endpoint nor the send path. The shell publishes a
//! [`Snapshot`] (built by the sans-IO [`build_snapshot`] once a second and at once after a
//! join, a departure or a command) through a `watch` channel, and receives [`Command`]s (kick,
//! capacity) over an `mpsc` channel that its `select!` loop applies to the endpoint between
//! two sends. [`ShellLink`] is the shell's end of both, [`http::State`] the server's.

pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::endpoint::{AudioSource, Endpoint};
use crate::fanout::FanoutStats;

/// How often a snapshot is published when nothing else changes: the dashboard's refresh and
/// the reports' cadence (listeners report once a second).
pub const PUBLISH_PERIOD: Duration = Duration::from_secs(1);

/// Commands queued between the HTTP side and the shell: a handful is plenty, and a full queue
/// answers 503 instead of buffering without bound.
pub const COMMAND_QUEUE: usize = 16;

/// Upper bounds (seconds) of the tick-lateness histogram's buckets: how long after its deadline
/// the endpoint's timer was served, from "on time" to "a whole default interval late" and more.
pub const LATENESS_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
];

/// A cumulative histogram of tick lateness, in the Prometheus sense: `counts[i]` is the number
/// of observations at most `LATENESS_BUCKETS[i]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENESS_BUCKETS`].
    pub counts: [u64; LATENESS_BUCKETS.len()],
    /// Every observation (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation of `late`.
    pub fn observe(&mut self, late: Duration) {
        let s = late.as_secs_f64();
        for (c, le) in self.counts.iter_mut().zip(LATENESS_BUCKETS) {
            if s <= le {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

/// Send-path drops by reason ([`FanoutStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// The socket buffer was full.
    pub buffer_full: u64,
    /// The listener's port was unreachable.
    pub unreachable: u64,
    /// Any other send error.
    pub other: u64,
}

/// Handshake outcomes so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Handshakes {
    /// `Challenge`s sent in answer to `Connect`.
    pub challenged: u64,
    /// Listeners accepted.
    pub accepted: u64,
    /// Joins refused (full, shutting down).
    pub rejected: u64,
    /// Joins with a bad or expired cookie.
    pub bad_cookie: u64,
}

/// The server's counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Distinct Audio datagrams produced.
    pub audio_datagrams: u64,
    /// Datagrams the kernel accepted (every copy to every listener).
    pub datagrams_sent: u64,
    /// Bytes in those datagrams.
    pub bytes_sent: u64,
    /// Datagrams not sent, by reason.
    pub drops: Drops,
    /// Handshakes by outcome.
    pub handshakes: Handshakes,
    /// Listeners that left.
    pub left: u64,
    /// Listeners evicted (silent, or kicked).
    pub evicted: u64,
    /// Datagrams received and ignored.
    pub ignored: u64,
}

/// What `GET /api/status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// The file streamed.
    pub source: String,
    /// Its title (what every `Welcome` says).
    pub title: String,
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// The tick, milliseconds.
    pub interval_ms: f64,
    /// Whether the media clock has started.
    pub started: bool,
    /// Where the stream is, seconds of audio sent.
    pub position_s: f64,
    /// Length of one pass, seconds, if known.
    pub duration_s: Option<f64>,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Listeners joined now.
    pub listeners: usize,
    /// The capacity (`--max-clients`, or as changed live).
    pub capacity: usize,
    /// Why the stream ended, once it is ending (`"Finished"`, `"Shutdown"`).
    pub ending: Option<String>,
    /// Counters since start.
    pub counters: Counters,
}

/// A listener's last `Report` (cumulative counters as it sent them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReportView {
    /// Unique audio datagrams received.
    pub received: u64,
    /// Datagrams expected but not received.
    pub lost: u64,
    /// Datagrams that arrived after their playout deadline.
    pub late: u64,
    /// Datagrams received more than once.
    pub duplicates: u64,
    /// Datagrams that arrived out of order.
    pub out_of_order: u64,
    /// Highest audio seq received.
    pub highest_seq: u64,
    /// Interarrival jitter, microseconds.
    pub jitter_us: u32,
    /// Audio buffered ahead of playout, milliseconds.
    pub buffered_ms: u32,
    /// Datagrams rebuilt from parity.
    pub recovered_fec: u64,
    /// Datagrams recovered by retransmission.
    pub recovered_retransmit: u64,
    /// Audio that reached the speaker missing, milliseconds.
    pub concealed_ms: u64,
    /// The listener's clock minus the server's, microseconds.
    pub clock_offset_us: i64,
    /// The listener's clock rate against the server's, parts per billion.
    pub drift_ppb: i32,
    /// Its playout error (p99 since its previous report), microseconds.
    pub playout_error_us: i32,
    /// Hard resynchronisations.
    pub resyncs: u32,
}

impl From<proto::Report> for ReportView {
    fn from(r: proto::Report) -> Self {
        Self {
            received: r.received,
            lost: r.lost,
            late: r.late,
            duplicates: r.duplicates,
            out_of_order: r.out_of_order,
            highest_seq: r.highest_seq,
            jitter_us: r.jitter_us,
            buffered_ms: r.buffered_ms,
            recovered_fec: r.recovered_fec,
            recovered_retransmit: r.recovered_retransmit,
            concealed_ms: r.concealed_ms,
            clock_offset_us: r.clock_offset_us,
            drift_ppb: r.drift_ppb,
            playout_error_us: r.playout_error_us,
            resyncs: r.resyncs,
        }
    }
}

/// One row of `GET /api/listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerView {
    /// Its address (`ip:port`, `[ip6]:port`): the `{addr}` of the kick route.
    pub address: String,
    /// The name it gave (`listen --name`).
    pub name: String,
    /// When it joined, milliseconds since the Unix epoch.
    pub joined_at_ms: u64,
    /// How long it has been joined, milliseconds.
    pub connected_ms: u64,
    /// Its last report; `None` until the first one arrives.
    pub report: Option<ReportView>,
}

/// A listener that left lately, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DepartureView {
    /// Its address.
    pub address: String,
    /// The name it gave.
    pub name: String,
    /// Why: what its `Leave` said ("interrupted", "terminated", "device error", "timeout",
    /// "done"), or "evicted" (silent) or "kicked" (by an operator).
    pub reason: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Everything the HTTP side serves, built by the shell (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// The stream and the counters.
    pub status: Status,
    /// Every joined listener, sorted by address.
    pub listeners: Vec<ListenerView>,
    /// The latest listeners to leave, oldest first.
    pub departures: Vec<DepartureView>,
    /// Tick lateness (for `/metrics`).
    #[serde(skip)]
    pub lateness: Histogram,
}

/// What [`build_snapshot`] reads besides the endpoint: the shell's own state.
#[derive(Debug, Clone, Copy)]
pub struct ShellView<'a> {
    /// Now, on the endpoint's clock.
    pub now: Instant,
    /// Now, on the wall clock (for `joined_at_ms`).
    pub wall: SystemTime,
    /// When the server started.
    pub started: Instant,
    /// The file's path as given.
    pub source: &'a str,
    /// The send path's counters.
    pub sent: FanoutStats,
    /// Tick lateness so far.
    pub lateness: &'a Histogram,
}

/// The snapshot of `ep` at `view.now`; pure, so it is unit tested on simulated time.
pub fn build_snapshot<S: AudioSource>(ep: &Endpoint<S>, view: ShellView<'_>) -> Snapshot {
    let info = ep.stream_info();
    let st = ep.stats();
    let sessions = ep.sessions();
    let rate = f64::from(info.sample_rate.max(1));
    let ss = st.sessions;
    let mut listeners: Vec<ListenerView> = sessions
        .addrs()
        .iter()
        .map(|a| {
            let connected = sessions
                .joined_at(a)
                .map(|j| view.now.saturating_duration_since(j))
                .unwrap_or_default();
            let joined_wall = view.wall.checked_sub(connected).unwrap_or(view.wall);
            ListenerView {
                address: a.to_string(),
                name: sessions.name(a).unwrap_or_default().to_string(),
                joined_at_ms: millis(joined_wall.duration_since(UNIX_EPOCH).unwrap_or_default()),
                connected_ms: millis(connected),
                report: sessions.last_report(a).map(ReportView::from),
            }
        })
        .collect();
    listeners.sort_by(|a, b| a.address.cmp(&b.address));
    let departures = sessions
        .departures()
        .map(|d| {
            let ago = view.now.saturating_duration_since(d.at);
            let wall = view.wall.checked_sub(ago).unwrap_or(view.wall);
            DepartureView {
                address: d.addr.to_string(),
                name: d.name.clone(),
                reason: d.reason.to_string(),
                at_ms: millis(wall.duration_since(UNIX_EPOCH).unwrap_or_default()),
            }
        })
        .collect();
    Snapshot {
        status: Status {
            source: view.source.to_string(),
            title: info.title.clone(),
            sample_rate: info.sample_rate,
            channels: info.channels,
            interval_ms: f64::from(info.interval_us) / 1000.0,
            started: ep.is_started(),
            position_s: st.frames as f64 / rate,
            duration_s: ep.source().info().total_frames.map(|f| f as f64 / rate),
            uptime_s: view
                .now
                .saturating_duration_since(view.started)
                .as_secs_f64(),
            listeners: sessions.len(),
            capacity: sessions.max_clients(),
            ending: ep.end_reason().map(|r| format!("{r:?}")),
            counters: Counters {
                audio_datagrams: st.audio_datagrams,
                datagrams_sent: view.sent.datagrams,
                bytes_sent: view.sent.bytes,
                drops: Drops {
                    buffer_full: view.sent.dropped_full,
                    unreachable: view.sent.dropped_unreachable,
                    other: view.sent.dropped_other,
                },
                handshakes: Handshakes {
                    challenged: ss.challenges,
                    accepted: ss.accepted,
                    rejected: ss.rejected,
                    bad_cookie: ss.bad_cookies,
                },
                left: ss.left,
                evicted: ss.evicted,
                ignored: ss.ignored,
            },
        },
        listeners,
        departures,
        lateness: view.lateness.clone(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the HTTP side asks the shell to do; each carries where to send the outcome.
#[derive(Debug)]
pub enum Command {
    /// Evict this listener now (`End{Evicted}`); answers whether it was joined.
    Kick {
        /// The listener.
        addr: SocketAddr,
        /// True if it was joined and is now gone.
        reply: oneshot::Sender<bool>,
    },
    /// Change the capacity (already range-checked); answers when applied.
    SetMaxClients {
        /// The new capacity.
        max_clients: usize,
        /// Answered once applied.
        reply: oneshot::Sender<()>,
    },
}

/// The shell's end of the control plane: publishes snapshots, receives commands, and keeps
/// the tick-lateness histogram.
#[derive(Debug)]
pub struct ShellLink {
    snapshots: watch::Sender<Arc<Snapshot>>,
    commands: mpsc::Receiver<Command>,
    lateness: Histogram,
    started: Instant,
    next_publish: Option<Instant>,
    /// Joins + departures seen at the last publish: a change publishes at once.
    last_churn: u64,
    source: String,
}

impl ShellLink {
    /// Records that the endpoint's timer, due at `deadline`, was served at `now`.
    pub fn observe_tick(&mut self, deadline: Instant, now: Instant) {
        self.lateness
            .observe(now.saturating_duration_since(deadline));
    }

    /// The next command from the HTTP side (pending forever once every sender is gone).
    pub async fn next_command(&mut self) -> Command {
        match self.commands.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    /// Applies `cmd` to `ep` at `now` and publishes at the next [`ShellLink::maybe_publish`].
    pub fn apply<S: AudioSource>(&mut self, now: Instant, ep: &mut Endpoint<S>, cmd: Command) {
        match cmd {
            Command::Kick { addr, reply } => {
                let kicked = ep.kick(now, addr);
                if kicked {
                    tracing::info!(
                        "kicked {addr} on request ({} listeners)",
                        ep.sessions().len()
                    );
                }
                let _ = reply.send(kicked);
            }
            Command::SetMaxClients { max_clients, reply } => {
                ep.set_max_clients(max_clients);
                tracing::info!("capacity set to {max_clients} listeners on request");
                let _ = reply.send(());
            }
        }
        self.next_publish = None;
    }

    /// Publishes a snapshot if a second has passed, listeners joined or left, or a command was
    /// applied since the last one; cheap otherwise (called after every send batch).
    pub fn maybe_publish<S: AudioSource>(
        &mut self,
        now: Instant,
        ep: &Endpoint<S>,
        sent: FanoutStats,
    ) {
        let s = ep.stats().sessions;
        let churn = s.accepted + s.left + s.evicted;
        if churn == self.last_churn && self.next_publish.is_some_and(|t| now < t) {
            return;
        }
        self.last_churn = churn;
        self.next_publish = Some(now + PUBLISH_PERIOD);
        let snap = build_snapshot(
            ep,
            ShellView {
                now,
                wall: SystemTime::now(),
                started: self.started,
                source: &self.source,
                sent,
                lateness: &self.lateness,
            },
        );
        self.snapshots.send_replace(Arc::new(snap));
    }
}

/// Makes both ends of the control plane for a server streaming `source`, started at `started`.
pub fn channel(
    source: String,
    started: Instant,
) -> (
    ShellLink,
    watch::Receiver<Arc<Snapshot>>,
    mpsc::Sender<Command>,
) {
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    (
        ShellLink {
            snapshots: snap_tx,
            commands: cmd_rx,
            lateness: Histogram::default(),
            started,
            next_publish: None,
            last_churn: 0,
            source,
        },
        snap_rx,
        cmd_tx,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::SocketAddr;

    use proto::{Join, Message, Packet};

    use super::*;
    use crate::endpoint::{EndpointConfig, StartMode};
    use crate::source::SourceInfo;

    /// Silence forever, 8 kHz mono.
    struct Silence(SourceInfo);

    impl AudioSource for Silence {
        fn info(&self) -> &SourceInfo {
            &self.0
        }
        fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
            out.resize(out.len() + max_frames, 0);
            max_frames
        }
        fn is_finished(&self) -> bool {
            false
        }
        fn rewind(&mut self) -> Result<(), String> {
            Ok(())
        }
    }

    fn endpoint(now: Instant) -> Endpoint<Silence> {
        let info = SourceInfo {
            sample_rate: 8000,
            channels: 1,
            total_frames: None,
            codec: "silence".into(),
            title: "quiet".into(),
        };
        let config = EndpointConfig {
            interval: Duration::from_millis(20),
            max_clients: 4,
            client_timeout: Duration::from_secs(5),
            start: StartMode::Now,
            looping: false,
            mtu: 1400,
            cookie_key: (1, 2),
            ..EndpointConfig::default()
        };
        Endpoint::new(now, config, Silence(info))
    }

    fn join(ep: &mut Endpoint<Silence>, now: Instant, from: SocketAddr) {
        let cookie = ep.sessions().cookie(now, &from);
        let d = proto::encode_to_bytes(&Packet::new(0, Message::Join(Join::new(cookie)))).unwrap();
        ep.handle(now, from, &d);
        assert!(ep.sessions().contains(&from));
    }

    #[test]
    fn publishes_once_a_second_and_at_once_on_churn_or_a_command() {
        let t0 = Instant::now();
        let mut ep = endpoint(t0);
        let (mut link, mut rx, _tx) = channel("quiet.wav".into(), t0);
        let sent = FanoutStats::default();
        let ms = |n| t0 + Duration::from_millis(n);

        link.maybe_publish(t0, &ep, sent);
        assert!(rx.has_changed().unwrap(), "the first call publishes");
        assert_eq!(rx.borrow_and_update().status.source, "quiet.wav");
        link.maybe_publish(ms(500), &ep, sent);
        assert!(!rx.has_changed().unwrap(), "nothing new within the second");
        link.maybe_publish(ms(1000), &ep, sent);
        assert!(rx.has_changed().unwrap(), "a second later");
        assert_eq!(rx.borrow_and_update().status.uptime_s, 1.0);

        // A join publishes at once.
        let a = SocketAddr::from(([127, 0, 0, 1], 7000));
        join(&mut ep, ms(1100), a);
        link.maybe_publish(ms(1100), &ep, sent);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().listeners[0].address, a.to_string());

        // A kick: answered, applied, published at once.
        let (reply, answer) = oneshot::channel();
        link.apply(ms(1200), &mut ep, Command::Kick { addr: a, reply });
        assert!(answer.blocking_recv().unwrap());
        link.maybe_publish(ms(1200), &ep, sent);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().listeners.is_empty());
        let (reply, answer) = oneshot::channel();
        link.apply(ms(1300), &mut ep, Command::Kick { addr: a, reply });
        assert!(!answer.blocking_recv().unwrap(), "gone already");

        let (reply, answer) = oneshot::channel();
        link.apply(
            ms(1400),
            &mut ep,
            Command::SetMaxClients {
                max_clients: 1,
                reply,
            },
        );
        answer.blocking_recv().unwrap();
        link.maybe_publish(ms(1400), &ep, sent);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().status.capacity, 1);
    }

    #[test]
    fn tick_lateness_lands_in_cumulative_buckets() {
        let t0 = Instant::now();
        let (mut link, _rx, _tx) = channel(String::new(), t0);
        link.observe_tick(t0, t0 + Duration::from_micros(300));
        link.observe_tick(t0, t0 + Duration::from_millis(30));
        link.observe_tick(t0 + Duration::from_secs(1), t0);
        let h = &link.lateness;
        assert_eq!(h.count, 3);
        // An early serve counts as on time (0 s).
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 2);
        assert_eq!(h.counts[6], 2, "<= 20 ms");
        assert_eq!(h.counts[7], 3, "<= 50 ms");
        assert!((h.sum - 0.0303).abs() < 1e-9);
    }
}
