//! The load tool behind `examples/load.rs`.
//!
//! [`run`] starts N listeners in one process, each `listen`'s own protocol core (a
//! [`listen::session::Session`]: the handshake with its retransmissions, `Report` keepalives
//! every second, the end of the stream, the reception counters) with playout off, on its own
//! UDP socket, spread over 127.0.0.x source addresses when the server is on loopback. A few
//! worker threads (default: one per [`LISTENERS_PER_THREAD`] listeners, at most 2) each poll
//! their share of the sockets with `epoll` and drain them with `recvmmsg`; arrival times come from
//! the kernel, so skew does not depend on when a worker got the CPU. After the duration the tool
//! keeps reading for a short drain, sends `Leave`, and returns a [`LoadReport`].
//!
//! The sessions count received, lost, duplicate and out-of-order datagrams; what only a crowd of
//! listeners shows (fan-out skew, the tool's read lag, its sockets' kernel drops) is counted here
//! and in [`stats`]. [`fake`] is the stand-in server: streamd's own core on a silent source.
//!
//! Evidence that the tool is not the bottleneck is part of the report: its own CPU (per thread),
//! the receive-queue drops of its sockets from `/proc/net/udp` (a datagram it was too slow to read
//! is dropped there, so zero drops means every loss is the server's or the network's), and the lag
//! between the kernel's arrival timestamp and the tool reading the datagram.

pub mod fake;
pub mod stats;
mod worker;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use listen::jitter::PlayoutCounters;
use listen::session::{Session, SessionConfig};
use listen::stats::ExitReason;
use nix::sys::resource::{Resource, UsageWho, getrlimit, setrlimit};
use nix::sys::socket::{setsockopt, sockopt};
use proto::RejectReason;
use serde::Serialize;

pub use worker::audio_seq;

use crate::procfs;
use stats::{Quantiles, SkewTable};
use worker::{Outcome, Slot};

/// Listeners that share one 127.0.0.x source address. A room of machines has one address each;
/// 64 per address keeps the server's view closer to that than one address for everyone, and
/// 63 addresses cover 4,000 listeners.
pub const LISTENERS_PER_ADDRESS: usize = 64;

/// Listeners one worker thread serves by default. Measured: one thread read 1,000 listeners
/// (150,000 datagrams/s) with 33% of a core, read lag p99 4 ms and no drops, and used less CPU
/// in all than two threads did (46%); 1,500 leaves it half idle.
pub const LISTENERS_PER_THREAD: usize = 1_500;

/// Default Connects (and at the end, `Leave`s) per second: fast enough for 1,000 listeners in half
/// a second, slow enough not to overflow a server's receive buffer with handshakes.
pub const DEFAULT_CONNECT_RATE: u32 = 2_000;

/// Default time to keep reading after the run's duration before sending `Leave`: a datagram the
/// server sent before the end and that has not arrived after this is lost.
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(200);

/// How long a listener's handshake may go unanswered, and the server be silent mid-stream,
/// before the listener gives up: as long as streamd waits for a silent listener, so that a
/// server busy welcoming a thousand others is not counted as not answering.
pub const LISTENER_TIMEOUT: Duration = proto::limits::DEFAULT_CLIENT_TIMEOUT;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server to load.
    pub server: SocketAddr,
    /// How many listeners.
    pub listeners: usize,
    /// How long to stay in the stream (handshakes included).
    pub duration: Duration,
    /// The server's process, to report its CPU and memory.
    pub server_pid: Option<u32>,
    /// Worker threads; 0 picks one per [`LISTENERS_PER_THREAD`] listeners, at most 2.
    pub threads: usize,
    /// Connects per second while joining, and `Leave`s per second at the end.
    pub connect_rate: u32,
    /// Reading time after `duration` before `Leave`.
    pub drain: Duration,
    /// A private room's key: every listener joins with it (`listen --key-file`).
    pub room_key: Option<seal::RoomKey>,
}

impl LoadConfig {
    /// A config with the defaults for everything but the essentials.
    pub fn new(server: SocketAddr, listeners: usize, duration: Duration) -> Self {
        Self {
            server,
            listeners,
            duration,
            server_pid: None,
            threads: 0,
            connect_rate: DEFAULT_CONNECT_RATE,
            drain: DEFAULT_DRAIN,
            room_key: None,
        }
    }
}

/// Audio datagram counters, summed or for one listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AudioCounts {
    /// From `start_seq` to the last seq (seen, `End.last_seq`, or the run's cutoff).
    pub expected: u64,
    /// Unique seqs received.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Copies of seqs already received.
    pub duplicates: u64,
    /// Datagrams that arrived after a higher seq.
    pub out_of_order: u64,
    /// The part of `lost` after the listener's own highest seq, up to the run's cutoff (the
    /// highest seq any listener had when the duration ran out): a server running behind real
    /// time at the end, or a listener the server silently stopped serving. `lost -
    /// short_at_end` are gaps.
    pub short_at_end: u64,
}

impl AudioCounts {
    /// Lost as a percentage of expected.
    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.expected as f64
        }
    }
}

/// The listener that lost the most.
#[derive(Debug, Clone, Serialize)]
pub struct Worst {
    /// Its index (0-based, in start order).
    pub index: usize,
    /// Its local address.
    pub local: String,
    /// Its counters.
    pub counts: AudioCounts,
}

/// The server process over the run, from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerProc {
    /// Its pid.
    pub pid: u32,
    /// utime + stime spent during the run.
    pub cpu_s: f64,
    /// `cpu_s` divided by the seconds listeners spent joined, summed over listeners.
    pub cpu_per_audio_s_per_listener: Option<f64>,
    /// `cpu_s` per wall second: the share of one core.
    pub core_fraction: f64,
    /// VmRSS when the run started (before any listener joined).
    pub rss_start_kib: u64,
    /// Largest VmRSS sampled during the run (4 samples a second).
    pub rss_peak_kib: u64,
    /// VmHWM at the end: the peak RSS since the process started.
    pub vm_hwm_kib: u64,
}

/// What the load tool itself cost, and the evidence that it kept up.
#[derive(Debug, Clone, Serialize)]
pub struct ToolStats {
    /// Worker threads.
    pub threads: usize,
    /// CPU seconds of the whole tool process during the run.
    pub cpu_s: f64,
    /// `cpu_s` per wall second.
    pub core_fraction: f64,
    /// The busiest worker thread's CPU per wall second (1.0 would mean it could not keep up).
    pub busiest_thread_fraction: f64,
    /// Datagrams the kernel dropped because a tool socket's receive queue was full.
    pub rx_queue_drops: u64,
    /// Kernel arrival to the tool reading the datagram, sampled, in ms.
    pub read_lag_ms: Quantiles,
    /// Audio datagrams read.
    pub audio_datagrams: u64,
    /// Bytes of every datagram read from the server (UDP payloads, headers included).
    pub bytes_from_server: u64,
    /// `recvmmsg` calls.
    pub recv_calls: u64,
    /// Datagrams from other addresses than the server's, or before the listener started.
    pub foreign: u64,
    /// Datagrams from the server that did not decode or made no sense where they came.
    pub garbage: u64,
    /// Sends that failed.
    pub send_errors: u64,
}

/// Everything a run measured. `Display` is the human summary; `serde_json` gives the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The server address.
    pub server: String,
    /// Listeners started.
    pub listeners: usize,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// Listeners welcomed.
    pub accepted: u64,
    /// Listeners rejected, all reasons.
    pub rejected: u64,
    /// Of those, rejected because the server was full.
    pub rejected_full: u64,
    /// Listeners whose handshake got no answer.
    pub no_answer: u64,
    /// Listeners that got an `End` from the server (or were evicted).
    pub ended: u64,
    /// Listeners that gave up on a server silent mid-stream for [`LISTENER_TIMEOUT`].
    pub timed_out: u64,
    /// Listeners whose `Welcome` described a stream `listen` cannot play.
    pub unplayable: u64,
    /// Seconds listeners spent joined, summed.
    pub listener_seconds: f64,
    /// The stream's codec as the `Welcome` announced it (`pcm`, `flac`, `opus`), if any
    /// listener joined.
    pub codec: Option<String>,
    /// Bytes from the server per listener per second joined (`tool.bytes_from_server` over
    /// `listener_seconds`): what one listener costs the network, headers included.
    pub bytes_per_listener_per_s: f64,
    /// Counters summed over listeners.
    pub totals: AudioCounts,
    /// The listener with the most loss (the first of equals), if any joined.
    pub worst: Option<Worst>,
    /// Fan-out skew per seq (last minus first arrival across listeners), ms.
    pub skew_ms: Quantiles,
    /// The server process, with `--server-pid`.
    pub server_proc: Option<ServerProc>,
    /// The tool's own cost.
    pub tool: ToolStats,
}

/// Source address for listener `i` when the server is at `server`.
pub fn bind_ip(server: IpAddr, i: usize) -> IpAddr {
    match server {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let k = i / LISTENERS_PER_ADDRESS;
            IpAddr::V4(Ipv4Addr::new(127, 0, (k / 254) as u8, (1 + k % 254) as u8))
        }
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Lets this process open `n` more sockets if the hard limit allows it.
fn raise_fd_limit(n: usize) -> anyhow::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = (n as u64).saturating_add(256);
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        bail!(
            "{n} listeners need {want} file descriptors but the hard limit is {hard} (ulimit -Hn)"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    Ok(())
}

fn open_socket(server: SocketAddr, i: usize) -> anyhow::Result<UdpSocket> {
    let ip = bind_ip(server.ip(), i);
    let s =
        UdpSocket::bind((ip, 0)).with_context(|| format!("binding a listener socket on {ip}"))?;
    s.set_nonblocking(true)?;
    // Kernel arrival timestamps: skew and lag measured where the datagram landed.
    setsockopt(&s, sockopt::ReceiveTimestampns, &true)?;
    Ok(s)
}

/// Runs the load and returns what it measured. Blocks for about `duration + drain`.
pub fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    if cfg.listeners == 0 {
        bail!("--listeners must be at least 1");
    }
    raise_fd_limit(cfg.listeners)?;
    let threads = match cfg.threads {
        0 => cfg.listeners.div_ceil(LISTENERS_PER_THREAD).clamp(1, 2),
        t => t.min(cfg.listeners),
    };
    let sockets = (0..cfg.listeners)
        .map(|i| open_socket(cfg.server, i))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let server_start = match cfg.server_pid {
        Some(pid) => Some((
            procfs::process_cpu(pid).with_context(|| format!("reading /proc/{pid}/stat"))?,
            procfs::process_status_kib(pid, "VmRSS")?,
        )),
        None => None,
    };
    let tool_cpu0 = procfs::own_cpu(UsageWho::RUSAGE_SELF);
    let start = Instant::now();
    let stop_at = start + cfg.duration;
    let rate = f64::from(cfg.connect_rate.max(1));
    let mut session = SessionConfig::new(cfg.server);
    session.timeout = LISTENER_TIMEOUT;
    session.playout = false;

    // Listener i goes to worker i % threads, so every worker joins at the same pace.
    let mut setups: Vec<worker::WorkerSetup> = (0..threads)
        .map(|_| worker::WorkerSetup {
            sockets: Vec::new(),
            slots: Vec::new(),
            session,
            room_key: cfg.room_key,
            stop_at,
            drain: cfg.drain,
            leave_pace: Duration::from_secs_f64(threads as f64 / rate),
        })
        .collect();
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for (i, s) in sockets.into_iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        let w = &mut setups[i % threads];
        w.sockets.push(s);
        w.slots.push(Slot::new(at));
        order[i % threads].push(i);
    }
    let handles = setups
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            std::thread::Builder::new()
                .name(format!("load-{k}"))
                .spawn(move || worker::run(s))
        })
        .collect::<std::io::Result<Vec<_>>>()?;

    let mut rss_peak = server_start.map_or(0, |s| s.1);
    while !handles.iter().all(|h| h.is_finished()) {
        if let Some(pid) = cfg.server_pid
            && let Ok(rss) = procfs::process_status_kib(pid, "VmRSS")
        {
            rss_peak = rss_peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let wall = start.elapsed();
    let tool_cpu = procfs::own_cpu(UsageWho::RUSAGE_SELF).saturating_sub(tool_cpu0);
    let server_proc = match (cfg.server_pid, server_start) {
        (Some(pid), Some((cpu0, rss0))) => Some((pid, cpu0, rss0)),
        _ => None,
    };
    let server_end = server_proc.map(|(pid, cpu0, rss0)| {
        let cpu = procfs::process_cpu(pid).map_or(Duration::ZERO, |c| c.saturating_sub(cpu0));
        let hwm = procfs::process_status_kib(pid, "VmHWM").unwrap_or(0);
        (pid, cpu, rss0, hwm)
    });

    let mut results = Vec::with_capacity(threads);
    for h in handles {
        match h.join() {
            Ok(r) => results.push(r?),
            Err(_) => bail!("a load worker thread panicked"),
        }
    }
    let locals: Vec<SocketAddr> = results
        .iter()
        .flat_map(|r| r.locals.iter().copied())
        .collect();
    let rx_queue_drops = procfs::udp_drops(&locals).unwrap_or(0);
    let cutoff = results.iter().filter_map(|r| r.cutoff).max();

    let mut skew = SkewTable::default();
    let mut lag = Vec::new();
    let mut rep = LoadReport {
        server: cfg.server.to_string(),
        listeners: cfg.listeners,
        duration_s: wall.as_secs_f64(),
        accepted: 0,
        rejected: 0,
        rejected_full: 0,
        no_answer: 0,
        ended: 0,
        timed_out: 0,
        unplayable: 0,
        listener_seconds: 0.0,
        codec: None,
        bytes_per_listener_per_s: 0.0,
        totals: AudioCounts::default(),
        worst: None,
        skew_ms: Quantiles::default(),
        server_proc: None,
        tool: ToolStats {
            threads,
            cpu_s: tool_cpu.as_secs_f64(),
            core_fraction: tool_cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
            busiest_thread_fraction: 0.0,
            rx_queue_drops,
            read_lag_ms: Quantiles::default(),
            audio_datagrams: 0,
            bytes_from_server: 0,
            recv_calls: 0,
            foreign: 0,
            garbage: 0,
            send_errors: 0,
        },
    };
    let end_of_run = start + wall;
    for (k, r) in results.iter().enumerate() {
        skew.merge(&r.skew);
        lag.extend_from_slice(&r.lag_ms);
        let t = &mut rep.tool;
        t.busiest_thread_fraction = t
            .busiest_thread_fraction
            .max(r.cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9));
        t.audio_datagrams += r.audio;
        t.bytes_from_server += r.bytes;
        t.recv_calls += r.recv_calls;
        t.foreign += r.early;
        t.send_errors += r.send_errors;
        for (j, slot) in r.slots.iter().enumerate() {
            let ended_by_server = match slot.outcome {
                Outcome::Rejected(reason) => {
                    rep.rejected += 1;
                    if matches!(reason, RejectReason::Full { .. }) {
                        rep.rejected_full += 1;
                    }
                    false
                }
                Outcome::NoAnswer | Outcome::Pending => {
                    rep.no_answer += 1;
                    false
                }
                Outcome::Unplayable => {
                    rep.unplayable += 1;
                    false
                }
                Outcome::Ended(
                    ExitReason::Finished | ExitReason::Shutdown | ExitReason::Evicted,
                ) => {
                    rep.ended += 1;
                    true
                }
                Outcome::Ended(ExitReason::Timeout) => {
                    rep.timed_out += 1;
                    false
                }
                Outcome::Ended(ExitReason::Interrupted) | Outcome::Joined => false,
            };
            let Some(session) = &slot.session else {
                continue;
            };
            t.foreign += session.tracker().foreign();
            t.garbage += session.tracker().garbage();
            let Some(j0) = slot.joined_at else { continue };
            rep.accepted += 1;
            if rep.codec.is_none() {
                rep.codec = session.info().map(|i| i.codec.name().to_string());
            }
            rep.listener_seconds += slot
                .ended_at
                .unwrap_or(end_of_run)
                .saturating_duration_since(j0)
                .as_secs_f64();
            let c = audio_counts(session, ended_by_server, cutoff);
            let tot = &mut rep.totals;
            tot.expected += c.expected;
            tot.received += c.received;
            tot.lost += c.lost;
            tot.duplicates += c.duplicates;
            tot.out_of_order += c.out_of_order;
            tot.short_at_end += c.short_at_end;
            if rep.worst.as_ref().is_none_or(|w| c.lost > w.counts.lost) {
                rep.worst = Some(Worst {
                    index: order[k][j],
                    local: r.locals[j].to_string(),
                    counts: c,
                });
            }
        }
    }
    rep.bytes_per_listener_per_s = if rep.listener_seconds > 0.0 {
        rep.tool.bytes_from_server as f64 / rep.listener_seconds
    } else {
        0.0
    };
    rep.skew_ms = Quantiles::of(&mut skew.skews_ms());
    rep.tool.read_lag_ms = Quantiles::of(&mut lag);
    rep.server_proc = server_end.map(|(pid, cpu, rss0, hwm)| ServerProc {
        pid,
        cpu_s: cpu.as_secs_f64(),
        cpu_per_audio_s_per_listener: (rep.listener_seconds > 0.0)
            .then(|| cpu.as_secs_f64() / rep.listener_seconds),
        core_fraction: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        rss_start_kib: rss0,
        rss_peak_kib: rss_peak,
        vm_hwm_kib: hwm,
    });
    Ok(rep)
}

/// A joined listener's counters, from its session's tracker. One the server ended is owed up
/// to `End.last_seq`, which the tracker already counts; one still in the stream when the run
/// stopped is also owed everything up to `cutoff` (the highest seq any listener had then).
fn audio_counts(session: &Session, ended_by_server: bool, cutoff: Option<u64>) -> AudioCounts {
    let t = session.tracker();
    let r = t.report(proto::Token::default(), &PlayoutCounters::default(), 0);
    let short_at_end = match (ended_by_server, cutoff, t.highest()) {
        (false, Some(c), Some(h)) => c.saturating_sub(h),
        (false, Some(c), None) => session
            .info()
            .map_or(0, |i| (c + 1).saturating_sub(i.start_seq)),
        _ => 0,
    };
    AudioCounts {
        expected: t.expected() + short_at_end,
        received: r.received,
        lost: r.lost + short_at_end,
        duplicates: r.duplicates,
        out_of_order: r.out_of_order,
        short_at_end,
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.totals;
        writeln!(
            f,
            "load: {} listeners → {} for {:.1} s",
            self.listeners, self.server, self.duration_s
        )?;
        write!(
            f,
            "  listeners   accepted {}  rejected {} (full {})  no answer {}  ended by server {}  \
             timed out {}",
            self.accepted,
            self.rejected,
            self.rejected_full,
            self.no_answer,
            self.ended,
            self.timed_out
        )?;
        if self.unplayable > 0 {
            write!(f, "  unplayable {}", self.unplayable)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  audio       expected {}  received {}  lost {} ({:.3}%, of which {} short at the end)  \
             duplicates {}  out of order {}",
            t.expected,
            t.received,
            t.lost,
            t.loss_pct(),
            t.short_at_end,
            t.duplicates,
            t.out_of_order
        )?;
        writeln!(
            f,
            "  stream      codec {}  {:.0} bytes per listener per second",
            self.codec.as_deref().unwrap_or("-"),
            self.bytes_per_listener_per_s
        )?;
        if let Some(w) = &self.worst {
            writeln!(
                f,
                "  worst       listener #{} ({}): expected {}  received {}  lost {} ({:.3}%)",
                w.index,
                w.local,
                w.counts.expected,
                w.counts.received,
                w.counts.lost,
                w.counts.loss_pct()
            )?;
        }
        let s = &self.skew_ms;
        writeln!(
            f,
            "  skew (ms)   p50 {:.3}  p99 {:.3}  max {:.3}  over {} seqs",
            s.p50, s.p99, s.max, s.count
        )?;
        if let Some(p) = &self.server_proc {
            writeln!(
                f,
                "  server      pid {}  cpu {:.2} s ({:.1}% of a core)  per listener per audio s {}",
                p.pid,
                p.cpu_s,
                100.0 * p.core_fraction,
                p.cpu_per_audio_s_per_listener
                    .map_or("n/a".to_string(), |v| format!("{v:.6}"))
            )?;
            writeln!(
                f,
                "              RSS start {} KiB  peak {} KiB  VmHWM {} KiB",
                p.rss_start_kib, p.rss_peak_kib, p.vm_hwm_kib
            )?;
        }
        let tl = &self.tool;
        writeln!(
            f,
            "  load tool   {} threads  cpu {:.2} s ({:.1}% of a core, busiest thread {:.1}%)  \
             rx-queue drops {}  read lag p99 {:.2} ms max {:.2} ms  {:.1} datagrams/recvmmsg",
            tl.threads,
            tl.cpu_s,
            100.0 * tl.core_fraction,
            100.0 * tl.busiest_thread_fraction,
            tl.rx_queue_drops,
            tl.read_lag_ms.p99,
            tl.read_lag_ms.max,
            tl.audio_datagrams as f64 / tl.recv_calls.max(1) as f64
        )?;
        if tl.foreign + tl.garbage + tl.send_errors > 0 {
            writeln!(
                f,
                "              foreign {}  garbage {}  send errors {}",
                tl.foreign, tl.garbage, tl.send_errors
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listeners_spread_over_loopback_addresses() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(bind_ip(lo, 0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            bind_ip(lo, LISTENERS_PER_ADDRESS - 1),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))
        );
        assert_eq!(
            bind_ip(lo, LISTENERS_PER_ADDRESS),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
        );
        assert_eq!(
            bind_ip(lo, 254 * LISTENERS_PER_ADDRESS),
            IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))
        );
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(bind_ip(remote, 5000), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            bind_ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 9),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    /// A session joined at `start_seq` 100 that received `seqs`, then `end` (an `End.last_seq`)
    /// if any.
    fn session_with(seqs: &[u64], end: Option<Option<u64>>) -> Session {
        use proto::{Challenge, End, EndReason, Message, Packet, StreamInfo, Welcome};
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut cfg = SessionConfig::new(server);
        cfg.playout = false;
        let t0 = Instant::now();
        let mut s = Session::new(cfg, t0);
        let enc = |m: Message| proto::encode_to_bytes(&Packet::new(0, m)).unwrap();
        s.handle(
            t0,
            server,
            &enc(Message::Challenge(Challenge { cookie: [1; 16] })),
        );
        let info = StreamInfo {
            sample_rate: 44_100,
            channels: 2,
            codec: proto::AudioCodec::Pcm,
            timeline: proto::Timeline::default(),
            playout_delay_us: 50_000,
            min_delay_us: 25_000,
            repair: proto::Repair::default(),
            multicast: None,
            interval_us: 20_000,
            frames_per_packet: 10,
            total_frames: None,
            start_seq: 100,
            start_ts: 0,
            title: "t".into(),
        };
        let welcome = Welcome {
            token: [9; proto::TOKEN_LEN],
            noise: bytes::Bytes::new(),
            info,
        };
        s.handle(t0, server, &enc(Message::Welcome(welcome)));
        for &q in seqs {
            let mut b = bytes::BytesMut::new();
            proto::encode_audio(q, (q - 100) * 10, &[0u8; 40], &mut b);
            s.handle(t0, server, &b);
        }
        if let Some(last_seq) = end {
            let e = End {
                reason: EndReason::Finished,
                last_seq,
            };
            s.handle(t0, server, &enc(Message::End(e)));
            assert!(s.is_closed());
        }
        s
    }

    #[test]
    fn counts_come_from_the_session_with_the_cutoff_for_those_still_in() {
        // 100..=105 without 102, 104 twice, 103 after 104.
        let got = [100, 101, 104, 103, 104, 105];
        let s = session_with(&got, None);
        let c = audio_counts(&s, false, Some(108));
        assert_eq!(
            (c.expected, c.received, c.lost, c.short_at_end),
            (9, 5, 4, 3)
        );
        assert_eq!((c.duplicates, c.out_of_order), (1, 1));
        // A cutoff below what it has changes nothing.
        assert_eq!(audio_counts(&s, false, Some(101)).lost, 1);
        // Nothing received yet: owed everything from its start up to the cutoff.
        let none = session_with(&[], None);
        let c = audio_counts(&none, false, Some(104));
        assert_eq!((c.expected, c.lost, c.short_at_end), (5, 5, 5));
        assert_eq!(audio_counts(&none, false, Some(99)).expected, 0);
        // Ended by the server: End.last_seq, not the cutoff, is the tail.
        let ended = session_with(&got, Some(Some(106)));
        let c = audio_counts(&ended, true, Some(200));
        assert_eq!(
            (c.expected, c.received, c.lost, c.short_at_end),
            (7, 5, 2, 0)
        );
    }

    #[test]
    fn zero_listeners_is_an_error() {
        let cfg = LoadConfig::new("127.0.0.1:9".parse().unwrap(), 0, Duration::from_secs(1));
        assert!(run(&cfg).is_err());
    }
}
