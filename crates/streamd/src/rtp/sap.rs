//! Session announcement (SAP, RFC 2974): the SDP multicast to 224.2.127.254:9875 every
//! [`SAP_INTERVAL`], so that players browsing SAP (VLC's "Network streams (SAP)") list the
//! stream, and a deletion packet at the end. Sans-IO: [`Announcer::poll`] says what to send
//! when; the shell owns the socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// The SAP address and port for IPv4 global-scope sessions (RFC 2974 §3).
pub const SAP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(224, 2, 127, 254)), 9875);
/// Time between announcements: a few seconds, so a player that starts browsing finds the
/// stream quickly (an SDP of a few hundred bytes every 5 s is far below RFC 2974's 4 kbit/s).
pub const SAP_INTERVAL: Duration = Duration::from_secs(5);
/// The payload type string announcing SDP.
pub const SDP_MIME: &str = "application/sdp";

/// One SAP packet (RFC 2974 §3): V=1, A from `origin`'s family, R=0, T=`delete`, E=0, C=0, no
/// authentication, the message id hash, the originating source, the payload type
/// `application/sdp` and the SDP.
pub fn packet(delete: bool, msg_id_hash: u16, origin: IpAddr, sdp: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(24 + SDP_MIME.len() + sdp.len());
    let a = u8::from(origin.is_ipv6());
    b.put_u8((1 << 5) | (a << 4) | (u8::from(delete) << 2));
    b.put_u8(0); // authentication length
    b.put_u16(msg_id_hash);
    match origin {
        IpAddr::V4(v4) => b.put_slice(&v4.octets()),
        IpAddr::V6(v6) => b.put_slice(&v6.octets()),
    }
    b.put_slice(SDP_MIME.as_bytes());
    b.put_u8(0);
    b.put_slice(sdp.as_bytes());
    b.freeze()
}

/// A 16-bit hash of the SDP (FNV-1a folded), never zero: the message id hash identifies this
/// version of the announcement.
pub fn msg_id_hash(sdp: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &byte in sdp.as_bytes() {
        h ^= u32::from(byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = ((h >> 16) ^ (h & 0xffff)) as u16;
    folded.max(1)
}

/// The announcement schedule of one session.
#[derive(Debug)]
pub struct Announcer {
    announce: Bytes,
    delete: Bytes,
    next: Option<Instant>,
}

impl Announcer {
    /// Announces `sdp` (made by `origin`) from `now` on.
    pub fn new(now: Instant, origin: IpAddr, sdp: &str) -> Self {
        let hash = msg_id_hash(sdp);
        Announcer {
            announce: packet(false, hash, origin, sdp),
            delete: packet(true, hash, origin, sdp),
            next: Some(now),
        }
    }

    /// When the next announcement is due; `None` after [`Announcer::delete`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The announcement if one is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Bytes> {
        let due = self.next?;
        if due > now {
            return None;
        }
        self.next = Some(now + SAP_INTERVAL);
        Some(self.announce.clone())
    }

    /// The deletion packet; no announcement follows it.
    pub fn delete(&mut self) -> Bytes {
        self.next = None;
        self.delete.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Hand-checked against RFC 2974 §3: 0x20 = V=1 A=0 R=0 T=0 E=0 C=0; 0x24 sets T.
    #[test]
    fn golden_packets() {
        let sdp = "v=0\r\n";
        let origin = IpAddr::from([192, 0, 2, 1]);
        let a = packet(false, 0xabcd, origin, sdp);
        let mut want = vec![0x20, 0x00, 0xab, 0xcd, 192, 0, 2, 1];
        want.extend_from_slice(b"application/sdp\0v=0\r\n");
        assert_eq!(&a[..], &want[..]);
        let d = packet(true, 0xabcd, origin, sdp);
        want[0] = 0x24;
        assert_eq!(&d[..], &want[..]);
        let v6 = packet(false, 1, IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), sdp);
        assert_eq!(v6[0], 0x30, "A=1 for an IPv6 origin");
        assert_eq!(
            &v6[4..20],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(&v6[20..36], b"application/sdp\0");
    }

    #[test]
    fn hash_is_stable_and_nonzero() {
        assert_eq!(msg_id_hash("abc"), msg_id_hash("abc"));
        assert_ne!(msg_id_hash("abc"), msg_id_hash("abd"));
        assert_ne!(msg_id_hash(""), 0);
    }

    #[test]
    fn schedule() {
        let t0 = Instant::now();
        let mut a = Announcer::new(t0, IpAddr::from([127, 0, 0, 1]), "v=0\r\n");
        assert_eq!(a.poll(t0).unwrap()[0], 0x20, "at once");
        assert!(
            a.poll(t0 + SAP_INTERVAL - Duration::from_millis(1))
                .is_none()
        );
        assert!(a.poll(t0 + SAP_INTERVAL).is_some());
        assert_eq!(a.delete()[0], 0x24);
        assert_eq!(a.poll_timeout(), None);
        assert!(a.poll(t0 + SAP_INTERVAL * 10).is_none());
    }
}
