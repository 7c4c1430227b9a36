//! Receiving a server's multicast group: joining it on the interface that routes to the server,
//! and [`Fallback`], the sans-IO rule that asks for unicast when the group's audio does not
//! arrive.
//!
//! A listener whose server announces a group joins it and keeps its unicast session (handshake,
//! reports, `Leave`). Its Reports carry the fallback flag ("send me unicast") until group audio
//! arrives; the first group audio sends a Report without it at once, and the server then stops
//! the unicast audio. If no audio arrives from the group within [`Fallback::wait`] of joining,
//! or the group falls silent that long mid-stream, the listener asks the server for unicast
//! for good (its reports carry the flag from then on) and says so once. The wait is
//! `max(`[`GROUP_WAIT`]`, 2 × the server's interval)`, because a server with a long interval is
//! silent between bursts by design.
//!
//! [`GroupPath`] is the session's part: the rule, the one Report sent at once, and the
//! [`OVERLAP`] after the first group audio during which a datagram that already came by the
//! other path is not a duplicate (the server sends both until it has the Report).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long group audio may take to arrive before the listener asks for unicast: a few of the
/// server's bursts at any usual interval, short enough that a listener hears audio within
/// about a second even where the group is not routed.
pub const GROUP_WAIT: Duration = Duration::from_secs(1);

pub use proto::FLAG_UNICAST_FALLBACK;

/// How the listener receives the stream's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Joined the group; no group audio yet.
    Waiting,
    /// Group audio arrives.
    Group,
    /// The group did not reach us: the server sends by unicast.
    Unicast,
}

/// The fallback rule on the caller's clock. See the module documentation.
#[derive(Debug, Clone)]
pub struct Fallback {
    wait: Duration,
    path: Path,
    /// Joined (while waiting) or the last group audio (while receiving).
    since: Instant,
    /// The switch to unicast is reported once by [`Fallback::poll`].
    announced: bool,
}

impl Fallback {
    /// Joined the group at `now`, for a server ticking every `interval`.
    pub fn new(now: Instant, interval: Duration) -> Self {
        Self {
            wait: GROUP_WAIT.max(interval * 2),
            path: Path::Waiting,
            since: now,
            announced: false,
        }
    }

    /// How long group audio may be missing.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Where the audio comes from now.
    pub fn path(&self) -> Path {
        self.path
    }

    /// Group audio arrived at `now`; true when it is the first (the path became
    /// [`Path::Group`]).
    pub fn on_group_audio(&mut self, now: Instant) -> bool {
        if self.path == Path::Unicast {
            return false;
        }
        let first = self.path == Path::Waiting;
        self.path = Path::Group;
        self.since = now;
        first
    }

    /// The group cannot be joined at all (no route, no interface): unicast at once, said once
    /// by the next [`Fallback::poll`].
    pub fn give_up(&mut self, now: Instant) {
        if self.path != Path::Unicast {
            self.path = Path::Unicast;
            self.since = now;
        }
    }

    /// When [`Fallback::poll`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.path {
            Path::Waiting | Path::Group => Some(self.since + self.wait),
            Path::Unicast if !self.announced => Some(self.since),
            Path::Unicast => None,
        }
    }

    /// Applies the rule at `now`; returns `Some(missing)` once, when the listener switches to
    /// unicast (`missing`: how long the group had been silent), for the caller to say so.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        if self.path != Path::Unicast && now >= self.since + self.wait {
            self.path = Path::Unicast;
        }
        if self.path == Path::Unicast && !self.announced {
            self.announced = true;
            return Some(now.saturating_duration_since(self.since));
        }
        None
    }

    /// The report flags this rule asks for: unicast until group audio arrives, and for good
    /// once it fell back.
    pub fn flags(&self) -> u32 {
        if self.path == Path::Group {
            0
        } else {
            FLAG_UNICAST_FALLBACK
        }
    }
}

/// How long after the first group audio a datagram that already came by the other path is
/// not counted as a duplicate: the server sends both until the Report saying the group
/// arrives reaches it (sent at once; one round trip), and a lost one is followed by the next
/// a second later.
pub const OVERLAP: Duration = Duration::from_secs(3);

/// How a listener receives the stream, for the log and `--stats-json` (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The server named no group (or the listener does not use multicast).
    Unicast,
    /// The group was joined: waiting for it, or receiving it.
    Multicast,
    /// The group did not arrive: the server sends by unicast.
    UnicastFallback,
}

impl Transport {
    /// As `--stats-json` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Unicast => "unicast",
            Transport::Multicast => "multicast",
            Transport::UnicastFallback => "unicast-fallback",
        }
    }
}

/// A session's group: the [`Fallback`] rule, the Report it asks for at once, and the overlap
/// during which copies by both paths are expected.
#[derive(Debug, Clone)]
pub struct GroupPath {
    group: SocketAddr,
    fallback: Fallback,
    /// Copies that came by both paths are expected until here.
    overlap_until: Option<Instant>,
    /// A Report is due at once (the path changed).
    report_now: bool,
}

impl GroupPath {
    /// The session joined the stream at `now`; the server's `group`, ticking every `interval`.
    pub fn new(now: Instant, group: SocketAddr, interval: Duration) -> Self {
        Self {
            group,
            fallback: Fallback::new(now, interval),
            overlap_until: None,
            report_now: false,
        }
    }

    /// The group to receive, while it is wanted (`None` once fallen back).
    pub fn group(&self) -> Option<SocketAddr> {
        (self.fallback.path() != Path::Unicast).then_some(self.group)
    }

    /// Where the audio comes from now.
    pub fn transport(&self) -> Transport {
        match self.fallback.path() {
            Path::Unicast => Transport::UnicastFallback,
            _ => Transport::Multicast,
        }
    }

    /// Group audio arrived at `now`: false when the listener no longer takes the group.
    pub fn on_group_audio(&mut self, now: Instant) -> bool {
        if self.fallback.path() == Path::Unicast {
            return false;
        }
        if self.fallback.on_group_audio(now) {
            self.overlap_until = Some(now + OVERLAP);
            self.report_now = true;
        }
        true
    }

    /// Whether a datagram that already arrived by the other path is expected at `now` (not a
    /// duplicate).
    pub fn in_overlap(&self, now: Instant) -> bool {
        self.overlap_until.is_some_and(|t| now < t)
    }

    /// The group cannot be joined: unicast at once.
    pub fn give_up(&mut self, now: Instant) {
        self.fallback.give_up(now);
        self.report_now = true;
    }

    /// When [`GroupPath::poll`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.fallback.poll_timeout()
    }

    /// Applies the rule at `now`: `Some(missing)` once, when the listener falls back.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        let fell = self.fallback.poll(now);
        if fell.is_some() {
            self.report_now = true;
        }
        fell
    }

    /// True once per change of path: a Report is due at once.
    pub fn take_report_now(&mut self) -> bool {
        std::mem::take(&mut self.report_now)
    }

    /// The report flags.
    pub fn flags(&self) -> u32 {
        self.fallback.flags()
    }
}

/// The local address of the interface that routes to `server` (a connected UDP socket sends
/// nothing; the kernel only picks the route).
pub fn route_to(server: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}

/// A socket bound to the group's port that has joined `group` on the interface routing to
/// `server` (IPv6: the kernel's default interface for the group). Address reuse is on, so
/// several listeners on one host can join the same group.
pub fn join_group(group: SocketAddr, server: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    match group.ip() {
        IpAddr::V4(g) => {
            let iface = match route_to(server)? {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())?;
            s.join_multicast_v4(&g, &iface)?;
        }
        IpAddr::V6(g) => {
            s.set_only_v6(true)?;
            s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, group.port())).into())?;
            s.join_multicast_v6(&g, 0)?;
        }
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn group_audio_in_time_keeps_the_group() {
        let t0 = Instant::now();
        let mut f = Fallback::new(t0, 20 * MS);
        assert_eq!(f.wait(), GROUP_WAIT);
        assert_eq!(f.path(), Path::Waiting);
        assert_eq!(
            f.flags(),
            FLAG_UNICAST_FALLBACK,
            "unicast until the group arrives"
        );
        assert!(f.on_group_audio(t0 + 300 * MS), "the first group audio");
        // Audio every 20 ms for 10 s: never falls back.
        for i in 0..500u32 {
            let now = t0 + 300 * MS + 20 * MS * i;
            assert!(!f.on_group_audio(now));
            assert_eq!(f.poll(now), None);
        }
        assert_eq!((f.path(), f.flags()), (Path::Group, 0));
    }

    #[test]
    fn no_group_audio_within_a_second_falls_back_once() {
        let t0 = Instant::now();
        let mut f = Fallback::new(t0, 20 * MS);
        assert_eq!(f.poll_timeout(), Some(t0 + GROUP_WAIT));
        assert_eq!(f.poll(t0 + 999 * MS), None);
        assert_eq!(f.poll(t0 + GROUP_WAIT), Some(GROUP_WAIT));
        assert_eq!(
            (f.path(), f.flags()),
            (Path::Unicast, FLAG_UNICAST_FALLBACK)
        );
        assert_eq!(f.poll(t0 + 2 * GROUP_WAIT), None, "said once");
        assert_eq!(f.poll_timeout(), None);
        // Late group audio does not switch back: the server already sends by unicast.
        assert!(!f.on_group_audio(t0 + 3 * GROUP_WAIT));
        assert_eq!(f.path(), Path::Unicast);
    }

    #[test]
    fn a_group_that_falls_silent_mid_stream_falls_back() {
        let t0 = Instant::now();
        let mut f = Fallback::new(t0, 20 * MS);
        f.on_group_audio(t0 + 100 * MS);
        assert_eq!(f.poll(t0 + 1099 * MS), None);
        assert_eq!(f.poll(t0 + 1100 * MS), Some(GROUP_WAIT));
        assert_eq!(f.flags(), FLAG_UNICAST_FALLBACK);
    }

    #[test]
    fn a_long_interval_waits_two_intervals() {
        let t0 = Instant::now();
        let mut f = Fallback::new(t0, Duration::from_secs(2));
        assert_eq!(f.wait(), Duration::from_secs(4));
        assert_eq!(f.poll(t0 + Duration::from_secs(3)), None);
        assert!(f.poll(t0 + Duration::from_secs(4)).is_some());
    }

    #[test]
    fn the_group_path_reports_at_once_on_each_change_and_expects_copies_for_a_while() {
        let t0 = Instant::now();
        let g = SocketAddr::from(([239, 1, 2, 3], 5004));
        let mut p = GroupPath::new(t0, g, 20 * MS);
        assert_eq!((p.group(), p.transport()), (Some(g), Transport::Multicast));
        assert!(!p.take_report_now());
        assert!(!p.in_overlap(t0));
        assert!(p.on_group_audio(t0 + 50 * MS));
        assert!(
            p.take_report_now(),
            "the first group audio is reported at once"
        );
        assert!(!p.take_report_now(), "once");
        assert_eq!(p.flags(), 0);
        assert!(p.in_overlap(t0 + 50 * MS + OVERLAP - MS));
        assert!(!p.in_overlap(t0 + 50 * MS + OVERLAP));
        // The group falls silent: unicast for good, reported at once.
        assert_eq!(p.poll(t0 + 50 * MS + GROUP_WAIT), Some(GROUP_WAIT));
        assert!(p.take_report_now());
        assert_eq!(p.flags(), FLAG_UNICAST_FALLBACK);
        assert_eq!(
            (p.group(), p.transport()),
            (None, Transport::UnicastFallback)
        );
        assert!(
            !p.on_group_audio(t0 + 2 * GROUP_WAIT),
            "the group is no longer taken"
        );
        assert_eq!(Transport::UnicastFallback.as_str(), "unicast-fallback");
    }

    #[test]
    fn a_group_that_cannot_be_joined_falls_back_at_once() {
        let t0 = Instant::now();
        let mut p = GroupPath::new(t0, SocketAddr::from(([239, 1, 2, 3], 5004)), 20 * MS);
        p.give_up(t0);
        assert!(p.take_report_now());
        assert_eq!(p.poll_timeout(), Some(t0));
        assert_eq!(p.poll(t0), Some(Duration::ZERO));
        assert_eq!(p.transport(), Transport::UnicastFallback);
    }

    #[test]
    fn the_route_to_loopback_is_loopback() {
        let ip = route_to(SocketAddr::from(([127, 0, 0, 1], 9))).unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }
}
