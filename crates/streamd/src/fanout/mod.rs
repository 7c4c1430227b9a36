//! The send path: "send these datagrams to these addresses", without ever waiting.
//!
//! Each tick's datagrams are encoded once (as `Bytes`) before they get here; this module only
//! hands the same bytes to the kernel once per listener, in as few system calls as the kernel
//! allows. Three paths, best first ([`SendPath`]):
//!
//! - **GSO** (Linux 4.18+): one `sendmmsg` carries one message per listener, each message the
//!   tick's datagrams as one UDP GSO super-datagram (`UDP_SEGMENT` = the datagram size; only
//!   the last may be shorter, as GSO requires). The stack walks each listener's tick once and
//!   the kernel cuts it into the same datagrams at the end (on loopback, at the receiver).
//! - **sendmmsg** (Linux): one message per datagram per listener, datagram by datagram, up to
//!   [`MAX_BATCH`] listeners a call.
//! - **per datagram**: one `send_to` per datagram per listener; the only path elsewhere.
//!
//! The best path is detected at run time (`UDP_SEGMENT` readable on the socket) and the send
//! falls back by itself: `EIO` from a GSO send (no checksum offload on the route) or a GSO send
//! refused where the same datagrams sent plainly pass turns GSO off; `ENOSYS` from `sendmmsg`
//! turns it off. [`Fanout::with_path`] forces a path (tests, benchmarks).
//!
//! Never waits, never lets one listener stop the others: every error (a full socket buffer,
//! `EAGAIN`/`ENOBUFS`; `ECONNREFUSED` left by an ICMP port-unreachable; anything else) is
//! counted against that one listener and the send resumes with the next. `sendmmsg` reports an
//! error on a later message by returning the count before it; the next call then starts at
//! the failed message, gets its error, and skips it.
//!
//! Per tick the work is O(listeners × datagrams) for the kernel and O(listeners) for us, with
//! no allocation: the address array is reused (grown only when the table grows) and the kernel
//! header array is preallocated ([`mmsg`]). The server's socket is tokio's (the receive side
//! awaits on it) but sends go straight to the kernel: tokio's `try_send_to` answers
//! `WouldBlock` without asking the kernel until its reactor has seen the socket writable,
//! which would drop datagrams the kernel would have taken. Any [`Socket`] works the same way,
//! so tools on plain threads (the load tool's stand-in server, the floor benchmark) send
//! through this very code with a std `UdpSocket`; give them a non-blocking one (the batched
//! paths never wait anyway, `send_to` would on a blocking socket).

#[cfg(target_os = "linux")]
pub mod mmsg;

use std::io::ErrorKind;
use std::net::SocketAddr;

use bytes::Bytes;

#[cfg(target_os = "linux")]
pub use mmsg::{MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// Most listeners one batched call serves (portable builds have no batching; the constant is
/// kept so that code and docs can name it).
#[cfg(not(target_os = "linux"))]
pub const MAX_BATCH: usize = 1;

/// A socket the fan-out sends on: tokio's `UdpSocket` (the server's) or std's (tools on plain
/// threads); anything with a file descriptor. Every path sends on the descriptor directly.
#[cfg(unix)]
pub trait Socket: std::os::fd::AsFd {}
#[cfg(unix)]
impl<T: std::os::fd::AsFd> Socket for T {}

/// A socket the fan-out sends on: tokio's `UdpSocket` (the server's) or std's (tools on plain
/// threads); anything with a socket handle. Every path sends on the handle directly.
#[cfg(windows)]
pub trait Socket: std::os::windows::io::AsSocket {}
#[cfg(windows)]
impl<T: std::os::windows::io::AsSocket> Socket for T {}

/// How the fan-out hands datagrams to the kernel, best (fewest kernel passes) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SendPath {
    /// `sendmmsg` + UDP GSO: one message per listener per tick.
    Gso,
    /// `sendmmsg`: one message per datagram per listener, many listeners per call.
    Sendmmsg,
    /// `send_to`: one call per datagram per listener (portable).
    PerDatagram,
}

impl SendPath {
    /// The best path this build can try; the kernel may still refuse it at run time.
    pub const fn best() -> Self {
        if cfg!(target_os = "linux") {
            SendPath::Gso
        } else {
            SendPath::PerDatagram
        }
    }

    /// Lower-case name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            SendPath::Gso => "sendmmsg+gso",
            SendPath::Sendmmsg => "sendmmsg",
            SendPath::PerDatagram => "send_to",
        }
    }
}

/// Counters of the send path, for the periodic summary and the final [`crate::server::Summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Datagrams the kernel accepted (each GSO segment counts as one).
    pub datagrams: u64,
    /// Bytes in those datagrams.
    pub bytes: u64,
    /// Datagrams dropped because the socket buffer was full (`WouldBlock`, `ENOBUFS`).
    pub dropped_full: u64,
    /// Datagrams dropped because a listener's port was unreachable (ICMP, `ConnectionRefused`).
    pub dropped_unreachable: u64,
    /// Datagrams dropped for any other error.
    pub dropped_other: u64,
    /// Send system calls made (`sendmmsg` and `send_to`), to see the batching work.
    pub syscalls: u64,
}

impl FanoutStats {
    /// All datagrams that did not go out.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_unreachable + self.dropped_other
    }
}

/// The send path with its counters and reused buffers.
#[derive(Debug)]
pub struct Fanout {
    /// Counters since start.
    stats: FanoutStats,
    /// The path in use: starts at the one asked for, only ever moves down.
    path: SendPath,
    /// Whether the socket has been checked for GSO support yet.
    probed: bool,
    /// The destinations in kernel form, reused every tick (no allocation once grown).
    #[cfg(target_os = "linux")]
    dests: Vec<Option<nix::sys::socket::SockaddrStorage>>,
    /// Test hook: the next batched call fails with this error instead of reaching the kernel.
    #[cfg(all(test, target_os = "linux"))]
    inject: Option<nix::errno::Errno>,
}

impl Default for Fanout {
    fn default() -> Self {
        Self::new()
    }
}

/// `ENOBUFS` as an `io::Error` raw code: Linux returns it when the interface queue is full,
/// which is the same situation as `WouldBlock` for us.
const ENOBUFS: i32 = libc::ENOBUFS;

/// Why a datagram was dropped, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropKind {
    Full,
    Unreachable,
    Other,
}

fn classify(e: &std::io::Error) -> DropKind {
    match e.kind() {
        ErrorKind::WouldBlock => DropKind::Full,
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable => DropKind::Unreachable,
        _ if e.raw_os_error() == Some(ENOBUFS) => DropKind::Full,
        _ => DropKind::Other,
    }
}

impl Fanout {
    /// A send path with zeroed counters that uses the best path the kernel takes.
    pub fn new() -> Self {
        Self::with_path(SendPath::best())
    }

    /// A send path that uses `path` or, if this build or kernel cannot, the next one down.
    /// For tests and benchmarks: every path delivers the same bytes in the same order.
    pub fn with_path(path: SendPath) -> Self {
        Self {
            stats: FanoutStats::default(),
            path: path.max(SendPath::best()),
            probed: false,
            #[cfg(target_os = "linux")]
            dests: Vec::new(),
            #[cfg(all(test, target_os = "linux"))]
            inject: None,
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> FanoutStats {
        self.stats
    }

    /// The path in use now (after detection and any fallback; before the first send, the one
    /// that will be tried).
    pub fn path(&self) -> SendPath {
        self.path
    }

    /// Checks `sock` for GSO now (rather than on the first send) and says which path will
    /// be used, for the start-up log.
    pub fn detect(&mut self, sock: &impl Socket) -> SendPath {
        self.probe(sock);
        self.path
    }

    /// Checks once, on the first send, whether the socket takes GSO.
    fn probe(&mut self, sock: &impl Socket) {
        if self.probed {
            return;
        }
        self.probed = true;
        #[cfg(target_os = "linux")]
        if self.path == SendPath::Gso && !mmsg::gso_supported(sock) {
            tracing::info!("UDP GSO not supported by this kernel; fan-out uses plain sendmmsg");
            self.path = SendPath::Sendmmsg;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = sock;
    }

    fn count_drop(&mut self, why: DropKind, datagrams: u64) {
        match why {
            DropKind::Full => self.stats.dropped_full += datagrams,
            DropKind::Unreachable => self.stats.dropped_unreachable += datagrams,
            DropKind::Other => self.stats.dropped_other += datagrams,
        }
    }

    /// Sends every datagram in `datagrams`, in order, to every address in `dests`. Never waits.
    /// Each address gets exactly the bytes of `datagrams`, in that order, whatever the path.
    pub fn send(&mut self, sock: &impl Socket, datagrams: &[Bytes], dests: &[SocketAddr]) {
        if datagrams.is_empty() || dests.is_empty() {
            return;
        }
        self.probe(sock);
        #[cfg(target_os = "linux")]
        if self.path != SendPath::PerDatagram {
            self.send_batched(sock, datagrams, dests);
            return;
        }
        self.send_each(sock, datagrams, dests);
    }

    /// The portable path: one `send_to` per datagram per listener.
    fn send_each(&mut self, sock: &impl Socket, datagrams: &[Bytes], dests: &[SocketAddr]) {
        for dest in dests {
            for d in datagrams {
                self.send_one(sock, d, *dest);
            }
        }
    }

    /// Sends one datagram to one address. Never waits; a failure is counted.
    ///
    /// The syscall is made directly on the (non-blocking) socket rather than through tokio's
    /// `try_send_to` (see the module doc).
    pub fn send_one(&mut self, sock: &impl Socket, datagram: &[u8], dest: SocketAddr) -> bool {
        self.stats.syscalls += 1;
        match socket2::SockRef::from(sock).send_to(datagram, &dest.into()) {
            Ok(n) => {
                self.stats.datagrams += 1;
                self.stats.bytes += n as u64;
                true
            }
            Err(e) => {
                self.count_drop(classify(&e), 1);
                false
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! The batched paths (sendmmsg, sendmmsg + GSO) and their fallbacks.

    use std::io::IoSlice;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use nix::errno::Errno;
    use nix::sys::socket::SockaddrStorage;

    use super::mmsg::{self, MAX_BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
    use super::{Fanout, SendPath, Socket, classify};

    /// The GSO shape of a tick: `Some((segment size, datagrams per super-datagram))` when every
    /// datagram but the last has the first one's size, the last is no larger, and at least two
    /// fit in one super-datagram; `None` when the tick must go out as plain datagrams.
    pub(super) fn gso_shape(datagrams: &[Bytes]) -> Option<(u16, usize)> {
        let (last, rest) = datagrams.split_last()?;
        let seg = datagrams[0].len();
        if datagrams.len() < 2
            || seg == 0
            || last.is_empty()
            || last.len() > seg
            || rest.iter().any(|d| d.len() != seg)
        {
            return None;
        }
        let per = (MAX_GSO_BYTES / seg).min(MAX_GSO_SEGMENTS);
        let seg = u16::try_from(seg).ok()?;
        (per >= 2).then_some((seg, per))
    }

    impl Fanout {
        /// The batched paths. Datagram-major with sendmmsg (seq n goes to everyone before
        /// seq n+1: the least skew), listener-major within a GSO super-datagram.
        pub(super) fn send_batched(
            &mut self,
            sock: &impl Socket,
            datagrams: &[Bytes],
            dests: &[SocketAddr],
        ) {
            self.dests.clear();
            self.dests
                .extend(dests.iter().map(|a| Some(SockaddrStorage::from(*a))));
            let shape = if self.path == SendPath::Gso {
                gso_shape(datagrams)
            } else {
                None
            };
            match shape {
                Some((seg, per)) => {
                    for chunk in datagrams.chunks(per) {
                        self.send_msg(sock, chunk, Some(seg), dests, 0);
                    }
                }
                None => {
                    for d in datagrams {
                        self.send_msg(sock, std::slice::from_ref(d), None, dests, 0);
                    }
                }
            }
        }

        /// Sends `msg` (one datagram, or with `seg` one GSO super-datagram of these
        /// datagrams) to `dests[from..]`, `self.dests` holding the same addresses in kernel
        /// form. Handles every error here; falls back to a lower path when the kernel says so.
        fn send_msg(
            &mut self,
            sock: &impl Socket,
            msg: &[Bytes],
            seg: Option<u16>,
            dests: &[SocketAddr],
            from: usize,
        ) {
            // GSO path downgraded since the chunk was planned: send its datagrams plainly.
            if (seg.is_some() && self.path != SendPath::Gso) || self.path == SendPath::PerDatagram {
                self.plain_rest(sock, msg, dests, from);
                return;
            }
            let mut iov = [IoSlice::new(&[]); MAX_GSO_SEGMENTS];
            for (slot, d) in iov.iter_mut().zip(msg) {
                *slot = IoSlice::new(d);
            }
            let iov = &iov[..msg.len().min(MAX_GSO_SEGMENTS)];
            let count = iov.len() as u64;
            let bytes: u64 = iov.iter().map(|s| s.len() as u64).sum();
            let mut i = from;
            while i < dests.len() {
                let end = (i + MAX_BATCH).min(dests.len());
                self.stats.syscalls += 1;
                let r = self.call(sock, iov, i, end, seg);
                match r {
                    Ok(0) => {
                        // Nothing taken and no error: count it rather than spin.
                        self.count_drop(super::DropKind::Other, count);
                        i += 1;
                    }
                    Ok(n) => {
                        self.stats.datagrams += n as u64 * count;
                        self.stats.bytes += n as u64 * bytes;
                        i += n;
                    }
                    Err(Errno::ENOSYS) => {
                        tracing::warn!("sendmmsg not available; fan-out sends one datagram a call");
                        self.path = SendPath::PerDatagram;
                        self.plain_rest(sock, msg, dests, i);
                        return;
                    }
                    Err(Errno::EIO) if seg.is_some() => {
                        tracing::warn!(
                            "UDP GSO refused on this route (EIO); fan-out uses plain sendmmsg"
                        );
                        self.path = SendPath::Sendmmsg;
                        self.plain_rest(sock, msg, dests, i);
                        return;
                    }
                    Err(e @ (Errno::EINVAL | Errno::EMSGSIZE)) if seg.is_some() => {
                        // Either this address is bad or the route will not take GSO: the same
                        // datagrams sent plainly tell which.
                        let before = self.stats.dropped();
                        for d in msg {
                            self.send_one(sock, d, dests[i]);
                        }
                        i += 1;
                        if self.stats.dropped() == before {
                            tracing::warn!(
                                "UDP GSO refused on this route ({e}); fan-out uses plain sendmmsg"
                            );
                            self.path = SendPath::Sendmmsg;
                            self.plain_rest(sock, msg, dests, i);
                            return;
                        }
                    }
                    Err(e) => {
                        let why = classify(&std::io::Error::from(e));
                        self.count_drop(why, count);
                        i += 1;
                    }
                }
            }
        }

        /// `msg`'s datagrams one by one (in order) to `dests[from..]`, on the current path.
        fn plain_rest(
            &mut self,
            sock: &impl Socket,
            msg: &[Bytes],
            dests: &[SocketAddr],
            from: usize,
        ) {
            if from >= dests.len() {
                return;
            }
            if self.path == SendPath::PerDatagram {
                self.send_each(sock, msg, &dests[from..]);
                return;
            }
            for d in msg {
                self.send_msg(sock, std::slice::from_ref(d), None, dests, from);
            }
        }

        /// One `sendmmsg` of `iov` to `self.dests[i..end]`.
        fn call(
            &mut self,
            sock: &impl Socket,
            iov: &[IoSlice<'_>],
            i: usize,
            end: usize,
            seg: Option<u16>,
        ) -> Result<usize, Errno> {
            #[cfg(test)]
            if let Some(e) = self.inject.take() {
                return Err(e);
            }
            mmsg::send_same(sock, iov, &self.dests[i..end], seg)
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nix::errno::Errno;
    use std::time::Duration;
    use tokio::net::UdpSocket;

    fn dgrams(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8 + 1; n]))
            .collect()
    }

    #[test]
    fn gso_shape_takes_uniform_ticks_with_a_short_last() {
        use linux::gso_shape;
        assert_eq!(gso_shape(&dgrams(&[1388, 1388, 812])), Some((1388, 46)));
        assert_eq!(gso_shape(&dgrams(&[1388, 1388])), Some((1388, 46)));
        assert_eq!(gso_shape(&dgrams(&[100; 200])), Some((100, 64)));
        // One datagram: nothing to segment.
        assert_eq!(gso_shape(&dgrams(&[1388])), None);
        // A short one before the last, a longer last, an empty one: not GSO-shaped.
        assert_eq!(gso_shape(&dgrams(&[1388, 800, 1388])), None);
        assert_eq!(gso_shape(&dgrams(&[800, 1388])), None);
        assert_eq!(gso_shape(&dgrams(&[800, 0])), None);
        // Segments too big for two in one super-datagram.
        assert_eq!(gso_shape(&dgrams(&[40_000, 40_000])), None);
    }

    async fn recv_n(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        for _ in 0..n {
            let k = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            out.push(buf[..k].to_vec());
        }
        out
    }

    /// An injected `EIO` on the first GSO call turns GSO off and the tick still arrives whole,
    /// in order, at every listener.
    #[tokio::test]
    async fn gso_eio_falls_back_to_sendmmsg_without_loss() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rx = Vec::new();
        for _ in 0..5 {
            rx.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        let dests: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr().unwrap()).collect();
        let d = dgrams(&[1000, 1000, 300]);
        let mut f = Fanout::with_path(SendPath::Gso);
        f.probe(&tx);
        if f.path() != SendPath::Gso {
            eprintln!("no GSO on this kernel: nothing to fall back from");
            return;
        }
        f.inject = Some(Errno::EIO);
        f.send(&tx, &d, &dests);
        assert_eq!(f.path(), SendPath::Sendmmsg);
        f.send(&tx, &d, &dests);
        for r in &rx {
            let got = recv_n(r, 6).await;
            let want: Vec<Vec<u8>> = d.iter().chain(&d).map(|b| b.to_vec()).collect();
            assert_eq!(got, want);
        }
        assert_eq!(f.stats().datagrams, 30);
        assert_eq!(f.stats().dropped(), 0);
    }

    /// An injected `ENOSYS` turns sendmmsg off; the per-datagram path finishes the tick.
    #[tokio::test]
    async fn enosys_falls_back_to_send_to_without_loss() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dests = [r1.local_addr().unwrap(), r2.local_addr().unwrap()];
        let d = dgrams(&[500, 500, 200]);
        let mut f = Fanout::with_path(SendPath::Sendmmsg);
        f.inject = Some(Errno::ENOSYS);
        f.send(&tx, &d, &dests);
        assert_eq!(f.path(), SendPath::PerDatagram);
        for r in [&r1, &r2] {
            let got = recv_n(r, 3).await;
            assert_eq!(got, d.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
        }
        assert_eq!(f.stats().datagrams, 6);
    }

    /// An error on one destination is counted once per datagram and the batch resumes after it.
    #[tokio::test]
    async fn an_error_skips_only_that_destination() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dests = [r1.local_addr().unwrap(); 3];
        let d = dgrams(&[100, 100]);
        for path in [SendPath::Gso, SendPath::Sendmmsg] {
            let mut f = Fanout::with_path(path);
            f.inject = Some(Errno::ECONNREFUSED);
            f.send(&tx, &d, &dests);
            let s = f.stats();
            // GSO drops that listener's whole tick (2 datagrams), sendmmsg one datagram.
            let want = if f.path() == SendPath::Gso { 2 } else { 1 };
            assert_eq!(s.dropped_unreachable, want, "{path:?} {s:?}");
            assert_eq!(s.datagrams, 6 - s.dropped_unreachable, "{path:?} {s:?}");
            recv_n(&r1, s.datagrams as usize).await;
        }
    }
}
