//! Batched UDP sends: many destinations (and several datagrams each) in one `sendmmsg` call,
//! optionally with UDP GSO (`UDP_SEGMENT`) so one listener's datagrams of a tick travel the
//! stack as one super-datagram that the kernel splits at the end.
//!
//! Written for the floor benchmark and the load tool, and meant to be reusable by `streamd`'s
//! fan-out: the caller encodes each datagram once and passes the same [`Bytes`] for every
//! destination. The module holds no socket and keeps only address buffers between calls, so it is
//! `Send` and fits a tokio task (the kernel header array, which holds raw pointers, is built per
//! call: one allocation per `sendmmsg` of up to [`MAX_BATCH`] messages, never one per destination).
//!
//! Failure isolation: an error on one destination (e.g. `EINVAL`, `EMSGSIZE`) skips that
//! destination and the batch goes on; `EAGAIN` on a non-blocking socket stops the batch and counts
//! the rest as `would_block`. If a GSO send fails with `EIO` (no checksum offload on the route),
//! GSO is switched off for this sender and the rest goes out as plain datagrams.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt, sendmmsg, sockopt,
};

/// Most messages one `sendmmsg` call carries: the kernel's `UIO_MAXIOV` cap on `vlen`.
pub const MAX_BATCH: usize = 1024;

/// Most segments one GSO super-datagram carries: Linux's `UDP_MAX_SEGMENTS` (64 before 6.9;
/// the smaller value works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Largest GSO super-datagram payload: the 16-bit IP length less IPv6 and UDP headers.
pub const MAX_GSO_BYTES: usize = 65_000;

/// What the sender was asked to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// `sendmmsg`, one message per datagram.
    Plain,
    /// `sendmmsg` with `UDP_SEGMENT`, one message per destination (falls back to `Plain` when the
    /// kernel lacks GSO).
    Gso,
}

/// Counters of what a batched send did. They add up over calls with `+=`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted (each GSO segment counts as one).
    pub datagrams: u64,
    /// Payload bytes the kernel accepted.
    pub bytes: u64,
    /// `sendmmsg` system calls made.
    pub syscalls: u64,
    /// Datagrams skipped because their destination failed (bad address, too large, ...).
    pub failed: u64,
    /// Datagrams not sent because the (non-blocking) socket buffer was full.
    pub would_block: u64,
}

impl std::ops::AddAssign for SendStats {
    fn add_assign(&mut self, o: Self) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.syscalls += o.syscalls;
        self.failed += o.failed;
        self.would_block += o.would_block;
    }
}

/// Whether the kernel knows `UDP_SEGMENT` for this socket (Linux 4.18+): reading the option
/// succeeds exactly when sending with it can.
pub fn gso_supported(socket: &impl AsFd) -> bool {
    getsockopt(socket, sockopt::UdpGsoSegment).is_ok()
}

/// One kernel message: a run of datagrams for one destination.
#[derive(Debug, Clone, Copy)]
struct Msg {
    /// Index into the caller's items (and our address buffer).
    item: usize,
    /// First and one-past-last datagram of the item in this message.
    from: usize,
    to: usize,
    /// GSO segment size, or 0 for a plain datagram.
    seg: u16,
    /// Payload bytes in the message.
    bytes: usize,
}

/// Sends datagrams to many destinations with as few system calls as the kernel allows.
/// Reuse one per socket: it keeps its buffers between calls.
#[derive(Debug)]
pub struct BatchSender {
    /// GSO is used (requested and supported, and not switched off after an `EIO`).
    gso: bool,
    /// Destination addresses in kernel form, one per item of the current call.
    addrs: Vec<Option<SockaddrStorage>>,
    /// The messages of the current call.
    msgs: Vec<Msg>,
}

impl BatchSender {
    /// A sender for `socket` in `mode`; GSO is used only if the kernel supports it.
    pub fn new(socket: &impl AsFd, mode: SendMode) -> Self {
        let gso = mode == SendMode::Gso && gso_supported(socket);
        Self {
            gso,
            addrs: Vec::new(),
            msgs: Vec::new(),
        }
    }

    /// Whether sends currently use GSO.
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Sends every datagram of every item to that item's address, in order. Never blocks longer
    /// than the socket does; see the module doc for how errors are isolated.
    pub fn send_batch(
        &mut self,
        socket: &impl AsFd,
        items: &[(SocketAddr, &[Bytes])],
    ) -> SendStats {
        self.addrs.clear();
        self.addrs
            .extend(items.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))));
        self.plan(items);
        let mut stats = SendStats::default();
        let mut i = 0;
        while i < self.msgs.len() {
            // One call carries consecutive messages with the same segment size (the control
            // message is shared by the whole call).
            let seg = self.msgs[i].seg;
            let mut end = i + 1;
            while end < self.msgs.len() && end - i < MAX_BATCH && self.msgs[end].seg == seg {
                end += 1;
            }
            match send_run(
                socket,
                items,
                &self.addrs,
                &self.msgs[i..end],
                seg,
                &mut stats,
            ) {
                Ok(sent) if sent == end - i => i = end,
                // The next call reports the error of message `i + sent`.
                Ok(sent) if sent > 0 => i += sent,
                Ok(_) => {
                    // Nothing taken and no error: count the message as failed rather than spin.
                    let m = self.msgs[i];
                    stats.failed += (m.to - m.from) as u64;
                    i += 1;
                }
                Err(Errno::EAGAIN) => {
                    stats.would_block += self.msgs[i..]
                        .iter()
                        .map(|m| (m.to - m.from) as u64)
                        .sum::<u64>();
                    break;
                }
                Err(Errno::EIO) if seg != 0 => {
                    // No GSO on this route: re-plan the rest as plain datagrams.
                    self.gso = false;
                    let rest: Vec<Msg> = self.msgs.drain(i..).collect();
                    for m in rest {
                        for d in m.from..m.to {
                            let bytes = items[m.item].1[d].len();
                            self.msgs.push(Msg {
                                item: m.item,
                                from: d,
                                to: d + 1,
                                seg: 0,
                                bytes,
                            });
                        }
                    }
                }
                Err(_) => {
                    let m = self.msgs[i];
                    stats.failed += (m.to - m.from) as u64;
                    i += 1;
                }
            }
        }
        stats
    }

    /// Splits the items into kernel messages: one per datagram, or with GSO one per run of
    /// equal-sized datagrams (the last of a run may be shorter), within the kernel's limits.
    fn plan(&mut self, items: &[(SocketAddr, &[Bytes])]) {
        self.msgs.clear();
        for (item, (_, dgrams)) in items.iter().enumerate() {
            let mut d = 0;
            while d < dgrams.len() {
                let first = dgrams[d].len();
                let mut to = d + 1;
                let mut bytes = first;
                if self.gso && first > 0 && first <= usize::from(u16::MAX) {
                    while to < dgrams.len()
                        && to - d < MAX_GSO_SEGMENTS
                        && dgrams[to].len() <= first
                        && !dgrams[to].is_empty()
                        && bytes + dgrams[to].len() <= MAX_GSO_BYTES
                    {
                        bytes += dgrams[to].len();
                        to += 1;
                        if dgrams[to - 1].len() < first {
                            break; // only the last segment may be short
                        }
                    }
                }
                let seg = if to - d > 1 { first as u16 } else { 0 };
                self.msgs.push(Msg {
                    item,
                    from: d,
                    to,
                    seg,
                    bytes,
                });
                d = to;
            }
        }
    }
}

/// One `sendmmsg` over `msgs` (all with segment size `seg`). Returns how many messages the kernel
/// took; counts them into `stats`.
fn send_run(
    socket: &impl AsFd,
    items: &[(SocketAddr, &[Bytes])],
    addrs: &[Option<SockaddrStorage>],
    msgs: &[Msg],
    seg: u16,
    stats: &mut SendStats,
) -> Result<usize, Errno> {
    let iovs: Vec<IoSlice<'_>> = msgs
        .iter()
        .flat_map(|m| {
            items[m.item].1[m.from..m.to]
                .iter()
                .map(|b| IoSlice::new(b))
        })
        .collect();
    let mut slices: Vec<&[IoSlice<'_>]> = Vec::with_capacity(msgs.len());
    let mut at = 0;
    for m in msgs {
        let n = m.to - m.from;
        slices.push(&iovs[at..at + n]);
        at += n;
    }
    let dests: Vec<Option<SockaddrStorage>> = msgs.iter().map(|m| addrs[m.item]).collect();
    let seg_size = seg;
    let cmsg_gso = [ControlMessage::UdpGsoSegments(&seg_size)];
    let cmsgs: &[ControlMessage<'_>] = if seg != 0 { &cmsg_gso } else { &[] };
    let mut hdrs: MultiHeaders<SockaddrStorage> =
        MultiHeaders::preallocate(msgs.len(), (seg != 0).then(|| nix::cmsg_space!(u16)));
    stats.syscalls += 1;
    let res = sendmmsg(
        socket.as_fd().as_raw_fd(),
        &mut hdrs,
        &slices,
        &dests,
        cmsgs,
        MsgFlags::empty(),
    )?;
    let sent = res.count();
    for m in &msgs[..sent] {
        stats.datagrams += (m.to - m.from) as u64;
        stats.bytes += m.bytes as u64;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn recv_all(s: &UdpSocket) -> Vec<usize> {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 70_000];
        let mut lens = Vec::new();
        while let Ok(n) = s.recv(&mut buf) {
            lens.push(n);
        }
        lens
    }

    fn check(mode: SendMode) {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let d = [
            Bytes::from(vec![1u8; 1388]),
            Bytes::from(vec![2u8; 1388]),
            Bytes::from(vec![3u8; 1000]),
        ];
        let items: Vec<(SocketAddr, &[Bytes])> = rx
            .iter()
            .map(|r| (r.local_addr().unwrap(), &d[..]))
            .collect();
        let mut s = BatchSender::new(&tx, mode);
        let st = s.send_batch(&tx, &items);
        assert_eq!(st.datagrams, 9);
        assert_eq!(st.bytes, 3 * (1388 + 1388 + 1000));
        assert_eq!(st.failed + st.would_block, 0);
        if s.gso_enabled() {
            assert_eq!(st.syscalls, 1);
        }
        for r in &rx {
            // GSO segments arrive as separate datagrams, in order.
            assert_eq!(recv_all(r), vec![1388, 1388, 1000]);
        }
    }

    #[test]
    fn the_sender_can_live_in_a_tokio_task() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<BatchSender>();
    }

    #[test]
    fn plain_delivers_every_datagram() {
        check(SendMode::Plain);
    }

    #[test]
    fn gso_delivers_every_datagram_as_segments() {
        check(SendMode::Gso);
    }

    #[test]
    fn a_bad_destination_does_not_stop_the_others() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = [Bytes::from_static(b"hello")];
        // Port 0 is not a valid destination: the kernel refuses that one message.
        let bad: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let items = [(bad, &d[..]), (rx.local_addr().unwrap(), &d[..])];
        let st = BatchSender::new(&tx, SendMode::Plain).send_batch(&tx, &items);
        assert_eq!(st.failed, 1);
        assert_eq!(st.datagrams, 1);
        assert_eq!(recv_all(&rx), vec![5]);
    }

    #[test]
    fn plan_splits_unequal_datagrams_into_runs() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = BatchSender::new(&tx, SendMode::Gso);
        if !s.gso_enabled() {
            return; // nothing to plan without GSO
        }
        let d = [
            Bytes::from(vec![0u8; 100]),
            Bytes::from(vec![0u8; 100]),
            Bytes::from(vec![0u8; 50]),
            Bytes::from(vec![0u8; 200]),
        ];
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        s.plan(&[(a, &d[..])]);
        let runs: Vec<(usize, usize, u16)> = s.msgs.iter().map(|m| (m.from, m.to, m.seg)).collect();
        assert_eq!(runs, vec![(0, 3, 100), (3, 4, 0)]);
    }
}
