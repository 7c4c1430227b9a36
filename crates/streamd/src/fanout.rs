//! The send path: "send these datagrams to these addresses", without ever waiting.
//!
//! Each tick's datagrams are encoded once (as `Bytes`) before they get here; this module only
//! hands the same bytes to the kernel once per listener. It never blocks and never lets one
//! listener's failure stop the others: `try_send_to` errors (a full socket buffer
//! (`WouldBlock`, `ENOBUFS`), `ConnectionRefused` left by an ICMP port-unreachable, anything
//! else) are counted and the loop moves on. It allocates nothing.
//!
//! This is the portable implementation and the seam for a faster one: the same signature can
//! be backed by `sendmmsg` (batch across listeners) and UDP GSO (`UDP_SEGMENT`, batch within a
//! listener's tick), which is why the loop is per destination, then per datagram. The socket
//! is tokio's (the receive side awaits on it) but sends go straight to the kernel.

use std::io::ErrorKind;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::UdpSocket;

/// Counters of the send path, for the periodic summary and the final [`crate::server::Summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Datagrams the kernel accepted.
    pub datagrams: u64,
    /// Bytes in those datagrams.
    pub bytes: u64,
    /// Datagrams dropped because the socket buffer was full (`WouldBlock`, `ENOBUFS`).
    pub dropped_full: u64,
    /// Datagrams dropped because a listener's port was unreachable (ICMP, `ConnectionRefused`).
    pub dropped_unreachable: u64,
    /// Datagrams dropped for any other error.
    pub dropped_other: u64,
}

impl FanoutStats {
    /// All datagrams that did not go out.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_unreachable + self.dropped_other
    }
}

/// The send path with its counters.
#[derive(Debug, Default)]
pub struct Fanout {
    /// Counters since start.
    stats: FanoutStats,
}

/// `ENOBUFS` as an `io::Error` raw code: Linux returns it when the interface queue is full,
/// which is the same situation as `WouldBlock` for us.
const ENOBUFS: i32 = libc::ENOBUFS;

impl Fanout {
    /// A send path with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters since start.
    pub fn stats(&self) -> FanoutStats {
        self.stats
    }

    /// Sends every datagram in `datagrams`, in order, to every address in `dests`. Never waits.
    pub fn send(&mut self, sock: &UdpSocket, datagrams: &[Bytes], dests: &[SocketAddr]) {
        for dest in dests {
            for d in datagrams {
                self.send_one(sock, d, *dest);
            }
        }
    }

    /// Sends one datagram to one address. Never waits; a failure is counted.
    ///
    /// The syscall is made directly on the (non-blocking) socket rather than through tokio's
    /// `try_send_to`: tokio answers `WouldBlock` without asking the kernel until its reactor
    /// has seen the socket writable (right after bind, and after any `EAGAIN` until the next
    /// reactor turn), which would drop datagrams the kernel would have taken.
    pub fn send_one(&mut self, sock: &UdpSocket, datagram: &[u8], dest: SocketAddr) -> bool {
        match socket2::SockRef::from(sock).send_to(datagram, &dest.into()) {
            Ok(n) => {
                self.stats.datagrams += 1;
                self.stats.bytes += n as u64;
                true
            }
            Err(e) => {
                match e.kind() {
                    ErrorKind::WouldBlock => self.stats.dropped_full += 1,
                    ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable => self.stats.dropped_unreachable += 1,
                    _ if e.raw_os_error() == Some(ENOBUFS) => self.stats.dropped_full += 1,
                    _ => self.stats.dropped_other += 1,
                }
                false
            }
        }
    }
}
