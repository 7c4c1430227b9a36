//! Native multicast (`--multicast GROUP:PORT [--ttl N]`): each tick's audio is sent once to a
//! group, and the network copies it to every listener that joined the group; listeners still
//! handshake, report and leave by unicast.
//!
//! The pieces here:
//! - [`parse_group`] and [`check_ttl`]: the command line's values, each refusal one line naming
//!   the value (a usage error);
//! - [`Members`]: how each joined listener is served ([`Path`]): a listener that can receive
//!   the group gets unicast audio until its Report says the group arrives, then none; one whose
//!   Report says it does not arrive gets unicast again (sans-IO, keyed by address);
//! - [`GroupSender`]: the socket that sends to the group (TTL, outgoing interface, loopback on),
//!   through the one batch sender ([`crate::fanout`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::fanout::{Fanout, FanoutStats};

/// Default `--ttl` of multicast datagrams: the local network only.
pub const DEFAULT_TTL: u8 = 1;

/// `--multicast GROUP:PORT`: a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8, in
/// brackets) and a port other than 0.
pub fn parse_group(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|_| {
        format!("--multicast {s:?} is not GROUP:PORT (e.g. 239.255.12.1:5000 or [ff15::12]:5000)")
    })?;
    if !a.ip().is_multicast() {
        return Err(format!(
            "--multicast {s}: {} is not a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8)",
            a.ip()
        ));
    }
    if a.port() == 0 {
        return Err(format!("--multicast {s}: the port must not be 0"));
    }
    Ok(a)
}

/// `--ttl N` for multicast: 1..=255 (0 would never leave the host).
pub fn check_ttl(ttl: u32) -> Result<u8, String> {
    match u8::try_from(ttl) {
        Ok(t) if t >= 1 => Ok(t),
        _ => Err(format!("--ttl {ttl} is outside 1..=255")),
    }
}

/// How one multicast-capable listener is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Joined; no Report yet: unicast audio until its Report says the group arrives (so the
    /// audio sent while it joins the group is not lost), and the group is sent for it.
    Waiting,
    /// Its Report says the group arrives: no unicast audio.
    Group,
    /// Its Report says the group does not arrive: unicast audio, and the group is not sent
    /// for it.
    Unicast,
}

/// The joined listeners that announced `FEATURE_MULTICAST`, and how each is served, so the
/// tick's unicast fan-out skips the ones the group reaches (sans-IO, keyed by address).
#[derive(Debug, Default, Clone)]
pub struct Members {
    paths: HashMap<SocketAddr, Path>,
    /// How many are not [`Path::Unicast`]: the group is sent while this is above 0.
    want_group: usize,
}

impl Members {
    /// Nobody joined yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, addr: SocketAddr, path: Option<Path>) {
        let old = match path {
            Some(p) => self.paths.insert(addr, p),
            None => self.paths.remove(&addr),
        };
        let wants = |p: Option<Path>| matches!(p, Some(Path::Waiting | Path::Group));
        if wants(old) {
            self.want_group -= 1;
        }
        if wants(path) {
            self.want_group += 1;
        }
    }

    /// A listener was accepted: one that can receive the group (it said so in its `Join`)
    /// starts [`Path::Waiting`]; one that cannot is served by unicast and not tracked here.
    pub fn joined(&mut self, addr: SocketAddr, multicast_capable: bool) {
        self.set(addr, multicast_capable.then_some(Path::Waiting));
    }

    /// A Report arrived: `fallback` set means the group does not reach the listener (send it
    /// unicast), clear that it does (send it none). Returns the new path when it changed.
    pub fn reported(&mut self, addr: SocketAddr, fallback: bool) -> Option<Path> {
        let old = *self.paths.get(&addr)?;
        let new = if fallback { Path::Unicast } else { Path::Group };
        if old == new {
            return None;
        }
        self.set(addr, Some(new));
        Some(new)
    }

    /// The listener left or was evicted.
    pub fn left(&mut self, addr: SocketAddr) {
        self.set(addr, None);
    }

    /// How `addr` is served; `None` for a listener that cannot receive the group.
    pub fn path(&self, addr: &SocketAddr) -> Option<Path> {
        self.paths.get(addr).copied()
    }

    /// Whether `addr` gets its audio from the group only.
    pub fn is_on_group(&self, addr: &SocketAddr) -> bool {
        self.path(addr) == Some(Path::Group)
    }

    /// Whether the tick must go to the group: some listener receives it or is waiting for it.
    pub fn wants_group(&self) -> bool {
        self.want_group > 0
    }

    /// How many multicast-capable listeners are tracked.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// How many listeners get their audio from the group only.
    pub fn on_group(&self) -> usize {
        self.paths.values().filter(|p| **p == Path::Group).count()
    }

    /// Appends to `out` the addresses of `all` that need the tick by unicast.
    pub fn unicast_of(&self, all: &[SocketAddr], out: &mut Vec<SocketAddr>) {
        out.extend(all.iter().filter(|a| !self.is_on_group(a)));
    }
}

/// The socket that sends each tick once to the group.
#[derive(Debug)]
pub struct GroupSender {
    socket: std::net::UdpSocket,
    group: SocketAddr,
    fanout: Fanout,
}

impl GroupSender {
    /// A socket for `group` leaving through the interface of `bind` (the server's `--bind`;
    /// unspecified: the kernel's route for the group), with `ttl`; multicast loopback is on,
    /// so listeners on this host receive the group too.
    pub fn open(group: SocketAddr, bind: IpAddr, ttl: u8) -> std::io::Result<GroupSender> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP))?;
        match (group.ip(), bind) {
            (IpAddr::V4(_), IpAddr::V4(b)) => {
                s.set_multicast_ttl_v4(u32::from(ttl))?;
                s.set_multicast_loop_v4(true)?;
                if !b.is_unspecified() {
                    s.set_multicast_if_v4(&b)?;
                }
                s.bind(&SocketAddr::new(bind, 0).into())?;
            }
            (IpAddr::V6(_), _) => {
                s.set_multicast_hops_v6(u32::from(ttl))?;
                s.set_multicast_loop_v6(true)?;
                let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
                s.bind(
                    &(if bind.is_ipv6() {
                        SocketAddr::new(bind, 0)
                    } else {
                        any
                    })
                    .into(),
                )?;
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an IPv4 group needs an IPv4 --bind",
                ));
            }
        }
        if let Err(e) = s.set_send_buffer_size(crate::server::SEND_BUFFER) {
            tracing::debug!("multicast SO_SNDBUF not raised: {e}");
        }
        s.set_nonblocking(true)?;
        let socket: std::net::UdpSocket = s.into();
        let mut fanout = Fanout::new();
        fanout.detect(&socket);
        Ok(GroupSender {
            socket,
            group,
            fanout,
        })
    }

    /// The group.
    pub fn group(&self) -> SocketAddr {
        self.group
    }

    /// Sends one tick's datagrams to the group, once.
    pub fn send(&mut self, datagrams: &[Bytes]) {
        self.fanout
            .send(&self.socket, datagrams, std::slice::from_ref(&self.group));
    }

    /// What was sent so far.
    pub fn stats(&self) -> FanoutStats {
        self.fanout.stats()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    use super::*;

    #[test]
    fn group_values() {
        assert_eq!(
            parse_group("239.255.12.1:5000"),
            Ok(SocketAddr::from(([239, 255, 12, 1], 5000)))
        );
        assert!(parse_group("[ff15::12]:5000").is_ok());
        for (bad, why) in [
            ("192.168.1.10:5000", "not a multicast address"),
            ("[2001:db8::1]:5000", "not a multicast address"),
            ("239.1.1.1:0", "port"),
            ("239.1.1.1", "GROUP:PORT"),
            ("group:5000", "GROUP:PORT"),
        ] {
            let e = parse_group(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn ttl_range() {
        assert_eq!(check_ttl(1), Ok(1));
        assert_eq!(check_ttl(255), Ok(255));
        for bad in [0, 256, 1000] {
            let e = check_ttl(bad).unwrap_err();
            assert!(e.contains(&bad.to_string()), "{e}");
        }
    }

    #[test]
    fn members_are_unicast_until_their_report_says_the_group_arrives() {
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 2));
        let c = SocketAddr::from(([10, 0, 0, 3], 3));
        let mut m = Members::new();
        assert!(!m.wants_group());
        m.joined(a, true);
        m.joined(b, true);
        m.joined(c, false);
        assert!(m.wants_group(), "sent for the listeners that wait for it");
        let mut out = Vec::new();
        m.unicast_of(&[a, b, c], &mut out);
        assert_eq!(out, [a, b, c], "nobody confirmed the group yet");
        assert_eq!(m.reported(a, false), Some(Path::Group));
        assert_eq!(m.reported(a, false), None, "only a change is returned");
        assert_eq!(m.reported(b, true), Some(Path::Unicast));
        assert_eq!(m.reported(c, false), None, "c cannot receive the group");
        out.clear();
        m.unicast_of(&[a, b, c], &mut out);
        assert_eq!(out, [b, c]);
        assert_eq!(m.on_group(), 1);
        // a falls back mid-stream: nobody wants the group any more.
        assert_eq!(m.reported(a, true), Some(Path::Unicast));
        assert!(!m.wants_group());
        assert_eq!(m.reported(a, false), Some(Path::Group));
        assert!(m.wants_group());
        m.left(a);
        m.left(b);
        assert!(m.is_empty() && !m.wants_group());
        // A listener that joins again without multicast is served by unicast.
        m.joined(a, true);
        m.joined(a, false);
        assert_eq!(m.path(&a), None);
        assert!(!m.wants_group());
    }

    #[test]
    fn the_group_sender_sends_each_datagram_once_to_the_group() {
        // A group on loopback: a receiver on this host joined on 127.0.0.1.
        let group = Ipv4Addr::new(239, 255, 77, 9);
        let rx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = rx.local_addr().unwrap().port();
        if rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).is_err() {
            // No multicast on loopback here: the namespace tests cover the path.
            eprintln!("SKIPPED: loopback multicast unavailable");
            return;
        }
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tx = GroupSender::open(
            SocketAddr::from((group, port)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            1,
        )
        .unwrap();
        let datagrams = [Bytes::from_static(b"one"), Bytes::from_static(b"two")];
        tx.send(&datagrams);
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"two"] {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
        assert_eq!(tx.stats().datagrams, 2);
    }
}
