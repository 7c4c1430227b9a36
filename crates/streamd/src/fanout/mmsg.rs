//! Linux only: one `sendmmsg` call that sends the same datagram (or the same GSO
//! super-datagram) to up to [`MAX_BATCH`] destinations, through nix's safe wrappers.
//!
//! The kernel header array (`mmsghdr`s and their control-message space) is allocated once per
//! thread and reused by every call, so a tick allocates nothing. It lives in a thread-local
//! rather than in [`super::Fanout`] because nix's `MultiHeaders` holds raw pointers and is not
//! `Send`, and the server's driver must stay `Send` (it runs in a tokio task that may move
//! between worker threads; each worker keeps at most one set, a few tens of kB).
//!
//! Every message of one call carries the same iovec (the tick's bytes, encoded once) and the
//! same control message (`UDP_SEGMENT` = the segment size, or none), which is exactly the shape
//! of a fan-out: one call = one datagram (or one listener's whole tick) × many listeners.
//!
//! Known wart, kept on purpose: nix reports how many messages were sent only through its
//! `MultiResults` iterator, which copies each header's (unused, for a send) address slot; the
//! count is taken with `Iterator::count`, a few nanoseconds a message.

use std::cell::RefCell;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, getsockopt, sendmmsg, sockopt,
};

/// Most messages one `sendmmsg` call carries. The kernel takes up to `UIO_MAXIOV` (1024), but
/// past a few hundred the per-call cost (one syscall entry, ~0.1% of the per-message work) is
/// already negligible, while the header array (~220 bytes a message with the address and
/// control space) grows with it: 256 keeps it near 55 kB per worker thread.
pub const MAX_BATCH: usize = 256;

/// Most segments one GSO super-datagram may carry: Linux's `UDP_MAX_SEGMENTS` (64 before 6.9,
/// 128 after; the smaller works everywhere).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Largest GSO super-datagram payload: under IPv4's 65,507-byte UDP payload limit (the 16-bit
/// IP total length less the IP and UDP headers), with room to spare for IP options.
pub const MAX_GSO_BYTES: usize = 65_000;

/// The reusable kernel headers of this thread: one set without control-message space (plain
/// datagrams) and one with room for one `UDP_SEGMENT` (GSO). Two sets, because a header
/// prepared with control space would carry the previous call's control message into a call
/// that has none.
#[derive(Default)]
struct Scratch {
    plain: Option<MultiHeaders<SockaddrStorage>>,
    gso: Option<MultiHeaders<SockaddrStorage>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Whether the kernel knows `UDP_SEGMENT` on this socket (Linux 4.18+): reading the option
/// works exactly when sending with it can. A route without checksum offload can still refuse
/// a GSO send (`EIO`); the caller falls back then.
pub fn gso_supported(socket: &impl AsFd) -> bool {
    getsockopt(socket, sockopt::UdpGsoSegment).is_ok()
}

/// Sends `iov` (one datagram, or with `segment` one super-datagram that the kernel cuts into
/// `segment`-byte datagrams, the last possibly shorter) to each of `dests` (at most
/// [`MAX_BATCH`] are used) in one `sendmmsg`, without waiting (`MSG_DONTWAIT`).
///
/// Returns how many leading destinations the kernel took. `Err` is the error of the first
/// destination; when a later one fails the kernel returns the count before it (and drops the
/// error), so the caller resumes there and sees that destination's error on the next call.
pub fn send_same(
    socket: &impl AsFd,
    iov: &[IoSlice<'_>],
    dests: &[Option<SockaddrStorage>],
    segment: Option<u16>,
) -> Result<usize, Errno> {
    let dests = &dests[..dests.len().min(MAX_BATCH)];
    let n = dests.len();
    if n == 0 || iov.is_empty() {
        return Ok(0);
    }
    let fd = socket.as_fd().as_raw_fd();
    SCRATCH.with_borrow_mut(|s| {
        let seg = segment.unwrap_or(0);
        let gso_cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        let (headers, cmsgs): (_, &[ControlMessage<'_>]) = match segment {
            Some(_) => (
                s.gso.get_or_insert_with(|| {
                    MultiHeaders::preallocate(MAX_BATCH, Some(nix::cmsg_space!(u16)))
                }),
                &gso_cmsg,
            ),
            None => (
                s.plain
                    .get_or_insert_with(|| MultiHeaders::preallocate(MAX_BATCH, None)),
                &[],
            ),
        };
        let sent = sendmmsg(
            fd,
            headers,
            std::iter::repeat_n(&iov, n),
            dests,
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )?
        .count();
        Ok(sent)
    })
}
