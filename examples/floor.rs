//! The floor: the cheapest a fan-out can be on this machine. A bare loop sends what a 44.1 kHz
//! stereo s16 stream at a 20 ms interval sends (3 datagrams of 1388 B per tick per listener, the
//! same encoded `Audio` bytes to everyone) to N receiving sockets on 127.0.0.1, with no protocol
//! at all, and reports the sender thread's CPU seconds per audio second per listener.
//!
//! ```text
//! cargo run --release --example floor -- --mode gso --listeners 1000 --duration 20s [--json]
//! ```
//! The sender is `streamd`'s own fan-out (`streamd::fanout::Fanout`) on one non-blocking
//! socket, so the floor measures the code the server ships. `--mode gso`: one GSO
//! super-datagram (3 segments) per listener per tick, up to `fanout::MAX_BATCH` listeners per
//! `sendmmsg`; `--mode sendmmsg`: one `sendmmsg` message per datagram per listener; `--mode
//! send-to`: one `send_to` per datagram per listener. Receivers are drained by one separate
//! thread (`--receivers drain`, the default: like real listeners that read) or never read so
//! the kernel drops (`--receivers drop`); either way only the sender thread's CPU
//! (`RUSAGE_THREAD`) is counted. On loopback the kernel's delivery to the receiving socket runs
//! in the sender's system call and is part of the figure, as it is for a real server.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::{Resource, UsageWho, getrlimit, setrlimit};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt, sockopt};
use proto::duration::parse_duration;
use streamd::fanout::{Fanout, FanoutStats, SendPath};
use testkit::load::stats::Quantiles;
use testkit::procfs;

/// Prints to stdout, ignoring a closed pipe (e.g. `| head -1`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Tick of the simulated stream.
const INTERVAL: Duration = Duration::from_millis(20);
/// Datagrams per tick per listener.
const PER_TICK: usize = 3;
/// PCM bytes per datagram: with the 28-byte Audio overhead, 1388 B on the wire (UDP payload).
const PCM: usize = 1360;
/// Longest run: the per-tick timings are kept in memory.
const MAX_DURATION: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// sendmmsg, one message per datagram.
    Sendmmsg,
    /// sendmmsg + UDP_SEGMENT, one 3-segment super-datagram per listener per tick.
    Gso,
    /// send_to, one call per datagram per listener.
    SendTo,
}

impl Mode {
    fn path(self) -> SendPath {
        match self {
            Mode::Sendmmsg => SendPath::Sendmmsg,
            Mode::Gso => SendPath::Gso,
            Mode::SendTo => SendPath::PerDatagram,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Sendmmsg => "sendmmsg",
            Mode::Gso => "gso",
            Mode::SendTo => "send-to",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Receivers {
    /// One thread reads and discards everything (recvmmsg).
    Drain,
    /// Nobody reads; tiny receive buffers; the kernel drops.
    Drop,
}

/// Send a stream's bytes to N loopback sockets at its pace, with no protocol, and report CPU.
#[derive(Parser, Debug)]
struct Args {
    /// How to send.
    #[arg(long, value_enum, default_value = "gso")]
    mode: Mode,
    /// Receiving sockets.
    #[arg(long, default_value_t = 100)]
    listeners: usize,
    /// How long to send: "20s", or plain seconds; at most an hour.
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    duration: Duration,
    /// What the receiving side does.
    #[arg(long, value_enum, default_value = "drain")]
    receivers: Receivers,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Reads and discards until told to stop; stores how many datagrams it read in `count`.
fn drain(socks: Vec<UdpSocket>, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> nix::Result<()> {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, s) in socks.iter().enumerate() {
        ep.add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let mut events = vec![EpollEvent::empty(); 256];
    let mut bufs = Box::new([[0u8; 2048]; 16]);
    let mut hdrs: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(16, None);
    let mut n_read = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, 50u16).unwrap_or(0);
        for ev in &events[..n] {
            let Some(s) = socks.get(ev.data() as usize) else {
                continue;
            };
            loop {
                let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
                let got = match recvmmsg(
                    s.as_raw_fd(),
                    &mut hdrs,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(r) => r.count(),
                    Err(_) => 0,
                };
                n_read += got as u64;
                if got < 16 {
                    break;
                }
            }
        }
    }
    count.store(n_read, Ordering::Relaxed);
    Ok(())
}

struct Outcome {
    stats: FanoutStats,
    /// Wall time of each tick's batched send, ms: the lower bound of fan-out skew.
    tick_ms: Quantiles,
    cpu: Duration,
    ticks: u64,
    late_ticks: u64,
    /// The path in use at the end: the one asked for unless the kernel refused it.
    path: SendPath,
}

/// The sender thread: paced ticks, one batched send per tick.
fn send_loop(tx: UdpSocket, dests: Vec<SocketAddr>, path: SendPath, duration: Duration) -> Outcome {
    let mut sender = Fanout::with_path(path);
    sender.detect(&tx);
    let cpu0 = procfs::own_cpu(UsageWho::RUSAGE_THREAD);
    let start = Instant::now();
    let ticks_total = (duration.as_secs_f64() / INTERVAL.as_secs_f64()).round() as u64;
    let pcm = vec![0u8; PCM];
    let mut late_ticks = 0;
    let mut tick_ms = Vec::with_capacity(ticks_total as usize);
    for tick in 0..ticks_total {
        let due = start + INTERVAL * tick as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else if now > due + INTERVAL {
            late_ticks += 1;
        }
        // Encoded once per tick; the same bytes go to every listener.
        let dgrams: [Bytes; PER_TICK] = std::array::from_fn(|k| {
            let mut b = BytesMut::with_capacity(PCM + 28);
            proto::encode_audio(
                tick * 3 + k as u64,
                (tick * 3 + k as u64) * 340,
                &pcm,
                &mut b,
            );
            b.freeze()
        });
        let t = Instant::now();
        sender.send(&tx, &dgrams, &dests);
        tick_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Outcome {
        stats: sender.stats(),
        tick_ms: Quantiles::of(&mut tick_ms),
        cpu: procfs::own_cpu(UsageWho::RUSAGE_THREAD).saturating_sub(cpu0),
        ticks: ticks_total,
        late_ticks,
        path: sender.path(),
    }
}

fn run(a: &Args) -> anyhow::Result<()> {
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        anyhow::bail!(
            "--duration must be more than zero and at most {} s",
            MAX_DURATION.as_secs()
        );
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = a.listeners as u64 + 256;
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard)?;
    }
    let rx: Vec<UdpSocket> = (0..a.listeners)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let dests: Vec<SocketAddr> = rx
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    if a.receivers == Receivers::Drop {
        for s in &rx {
            setsockopt(s, sockopt::RcvBuf, &4096)?;
        }
    }
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    // Non-blocking, as the server's: a full socket buffer drops (counted), never waits.
    tx.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let drainer = if a.receivers == Receivers::Drain {
        for s in &rx {
            s.set_nonblocking(true)?;
        }
        let socks: Vec<UdpSocket> = rx
            .iter()
            .map(|s| s.try_clone())
            .collect::<std::io::Result<_>>()?;
        let (stop2, read2) = (stop.clone(), read.clone());
        Some(std::thread::spawn(move || drain(socks, stop2, read2)))
    } else {
        None
    };
    let (path, duration) = (a.mode.path(), a.duration);
    let sender = std::thread::spawn(move || send_loop(tx, dests, path, duration));
    let out = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    if let Some(d) = drainer {
        d.join()
            .map_err(|_| anyhow::anyhow!("the drain thread panicked"))??;
    }
    let locals: Vec<SocketAddr> = rx.iter().filter_map(|s| s.local_addr().ok()).collect();
    let drops = procfs::udp_drops(&locals).unwrap_or(0);
    let audio_s = out.ticks as f64 * INTERVAL.as_secs_f64();
    let per = out.cpu.as_secs_f64() / audio_s / a.listeners as f64;
    // Says so when the kernel refused the path asked for, e.g. "gso-unavailable(sendmmsg)".
    let mode_name = if out.path == path {
        a.mode.name().to_string()
    } else {
        format!("{}-unavailable({})", a.mode.name(), out.path.name())
    };
    let failed = out.stats.dropped_unreachable + out.stats.dropped_other;
    if a.json {
        let j = serde_json::json!({
            "mode": mode_name,
            "listeners": a.listeners,
            "audio_s": audio_s,
            "receivers": format!("{:?}", a.receivers).to_lowercase(),
            "cpu_s": out.cpu.as_secs_f64(),
            "cpu_per_audio_s_per_listener": per,
            "datagrams": out.stats.datagrams,
            "bytes": out.stats.bytes,
            "syscalls": out.stats.syscalls,
            "failed": failed,
            "would_block": out.stats.dropped_full,
            "late_ticks": out.late_ticks,
            "tick_send_ms": out.tick_ms,
            "received": read.load(Ordering::Relaxed),
            "rx_queue_drops": drops,
        });
        out!("{j}");
    } else {
        out!(
            "floor {mode_name}: N={} for {audio_s:.1} audio s: sender cpu {:.3} s = {per:.7} s per audio s per listener",
            a.listeners,
            out.cpu.as_secs_f64()
        );
        out!(
            "  sent {} datagrams ({} B) in {} send calls; failed {} would-block {}; late ticks {}; \
             received {}; receiver queue drops {}",
            out.stats.datagrams,
            out.stats.bytes,
            out.stats.syscalls,
            failed,
            out.stats.dropped_full,
            out.late_ticks,
            read.load(Ordering::Relaxed),
            drops
        );
        out!(
            "  one tick's send (the floor of fan-out skew): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            out.tick_ms.p50,
            out.tick_ms.p99,
            out.tick_ms.max
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
