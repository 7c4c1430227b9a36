//! The load tool's stand-in server (`cargo run --release --example load -- --fake-server`):
//! streamd's own protocol core ([`Endpoint`]) on a synthetic source, [`Silence`], driven by one
//! plain thread instead of streamd's tokio shell, sending through streamd's fan-out
//! ([`Fanout`]) on the path asked for. What it leaves out is streamd's decoding, tokio and
//! logging, so that a run measures the protocol and the send path alone.
//!
//! The stream is `duration` of 44.1 kHz stereo silence, started at once (as a radio station
//! does: listeners join live) and cut like streamd cuts a file: every 20 ms the frames that
//! became due, in datagrams of the default MTU. At the end of the source every listener gets
//! `End{Finished}` three times and [`serve`] returns.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use proto::MessageType;
use proto::limits::{DEFAULT_CLIENT_TIMEOUT, DEFAULT_MTU, MAX_DATAGRAM};
use streamd::endpoint::{
    AudioSource, Endpoint, EndpointConfig, EndpointStats, StartMode, Transmit,
};
use streamd::fanout::{Fanout, FanoutStats, SendPath};
use streamd::sessions::Sessions;
use streamd::source::SourceInfo;

/// The tick of the stand-in's stream (streamd's default).
pub const INTERVAL: Duration = Duration::from_millis(20);

/// Sample rate of the silence: CD audio, like the demo file.
pub const SAMPLE_RATE: u32 = 44_100;

/// Stereo.
pub const CHANNELS: u16 = 2;

/// A source of `total` frames of stereo silence at [`SAMPLE_RATE`]: the stand-in's file.
#[derive(Debug, Clone)]
pub struct Silence {
    /// What every `Welcome` says.
    info: SourceInfo,
    /// Frames in all.
    total: u64,
    /// Frames handed out.
    pos: u64,
}

impl Silence {
    /// `duration` of silence (rounded down to whole frames).
    pub fn new(duration: Duration) -> Self {
        let total = (duration.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64;
        Self {
            info: SourceInfo {
                sample_rate: SAMPLE_RATE,
                channels: CHANNELS,
                total_frames: Some(total),
                codec: "silence".into(),
                title: "earshot fake server".into(),
            },
            total,
            pos: 0,
        }
    }
}

impl AudioSource for Silence {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let n = (max_frames as u64).min(self.total - self.pos);
        out.resize(out.len() + n as usize * usize::from(CHANNELS), 0);
        self.pos += n;
        n as usize
    }

    fn is_finished(&self) -> bool {
        self.pos >= self.total
    }

    fn rewind(&mut self) -> Result<(), String> {
        self.pos = 0;
        Ok(())
    }
}

/// What the stand-in did.
#[derive(Debug, Clone)]
pub struct FakeStats {
    /// The endpoint's counters: listeners accepted, rejected, left, evicted; datagrams produced.
    pub endpoint: EndpointStats,
    /// Everything the fan-out sent (`Audio`, and the `End`s fanned out at the end).
    pub sent: FanoutStats,
    /// The part of `sent` that was `Audio`.
    pub audio: FanoutStats,
    /// The send path in use at the end: the one asked for, unless the kernel refused it.
    pub path: SendPath,
}

/// `after - before`, field by field: what one send added to the counters.
fn added(before: FanoutStats, after: FanoutStats) -> FanoutStats {
    FanoutStats {
        datagrams: after.datagrams - before.datagrams,
        bytes: after.bytes - before.bytes,
        dropped_full: after.dropped_full - before.dropped_full,
        dropped_unreachable: after.dropped_unreachable - before.dropped_unreachable,
        dropped_other: after.dropped_other - before.dropped_other,
        syscalls: after.syscalls - before.syscalls,
    }
}

/// `a + b`, field by field.
fn sum(a: FanoutStats, b: FanoutStats) -> FanoutStats {
    FanoutStats {
        datagrams: a.datagrams + b.datagrams,
        bytes: a.bytes + b.bytes,
        dropped_full: a.dropped_full + b.dropped_full,
        dropped_unreachable: a.dropped_unreachable + b.dropped_unreachable,
        dropped_other: a.dropped_other + b.dropped_other,
        syscalls: a.syscalls + b.syscalls,
    }
}

/// Sends everything the endpoint has ready, counting the `Audio` fan-outs apart.
fn flush(
    ep: &mut Endpoint<Silence>,
    fanout: &mut Fanout,
    sock: &UdpSocket,
    audio: &mut FanoutStats,
    now: Instant,
) {
    while let Some(t) = ep.poll_transmit(now) {
        match t {
            Transmit::One { dest, datagram } => {
                fanout.send_one(sock, &datagram, dest);
            }
            Transmit::Fanout { datagrams, dests } => {
                let before = fanout.stats();
                fanout.send(sock, datagrams, dests);
                if datagrams
                    .first()
                    .is_some_and(|d| d.get(3) == Some(&(MessageType::Audio as u8)))
                {
                    *audio = sum(*audio, added(before, fanout.stats()));
                }
            }
        }
    }
    // The shell has nothing to log.
    while ep.poll_event().is_some() {}
}

/// Serves `duration` of silence on `sock` to at most `max_clients` listeners, sending audio on
/// `path` (or the next one down if this kernel cannot: [`FakeStats::path`] says which was used),
/// and returns once the last `End` went out.
pub fn serve(
    sock: &UdpSocket,
    duration: Duration,
    max_clients: usize,
    path: SendPath,
) -> std::io::Result<FakeStats> {
    sock.set_nonblocking(true)?;
    let mut fanout = Fanout::with_path(path);
    fanout.detect(sock);
    let config = EndpointConfig {
        interval: INTERVAL,
        max_clients,
        client_timeout: DEFAULT_CLIENT_TIMEOUT,
        start: StartMode::Now,
        looping: false,
        mtu: DEFAULT_MTU,
        cookie_key: Sessions::random_key(),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(Instant::now(), config, Silence::new(duration));
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(sock, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    let mut events = [EpollEvent::empty(); 1];
    let mut audio = FanoutStats::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        flush(&mut ep, &mut fanout, sock, &mut audio, Instant::now());
        if ep.is_closed() {
            break;
        }
        // Control traffic first, all of it (reports are never starved by a late tick), then
        // the timers.
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    ep.handle(now, from, &buf[..n]);
                    flush(&mut ep, &mut fanout, sock, &mut audio, now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors of listeners that closed their socket, interrupted calls: the
                // error is consumed, read on.
                Err(_) => {}
            }
        }
        let now = Instant::now();
        let Some(deadline) = ep.poll_timeout() else {
            continue;
        };
        if deadline <= now {
            ep.handle_timeout(now);
            continue;
        }
        // Wait for a datagram or the deadline, rounded up to the next millisecond.
        let wait = (deadline - now).as_micros().div_ceil(1000).min(100) as u16;
        match epoll.wait(&mut events, wait) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(FakeStats {
        endpoint: ep.stats(),
        sent: fanout.stats(),
        audio,
        path: fanout.path(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_as_long_as_asked_in_frames() {
        let mut s = Silence::new(Duration::from_millis(30));
        assert_eq!(s.info().total_frames, Some(1323));
        let mut out = vec![7i16];
        assert_eq!(s.read_frames(1000, &mut out), 1000);
        assert_eq!(s.read_frames(1000, &mut out), 323);
        assert_eq!(out.len(), 1 + 2 * 1323);
        assert!(out[1..].iter().all(|&x| x == 0));
        assert!(s.is_finished());
        assert_eq!(s.read_frames(1000, &mut out), 0);
        assert_eq!(s.rewind(), Ok(()));
        assert!(!s.is_finished());
    }
}
