//! The socket side of the RTP output, driven by the server's shell: one [`Packetizer`] for the
//! stream, two connected non-blocking UDP sockets per `--rtp` destination (RTP to PORT, RTCP to
//! PORT+1), the `--sdp` file and the `--sap` announcements. Never waits and never fails the
//! stream: a destination that refuses (an ICMP port-unreachable surfaces as `ECONNREFUSED` on a
//! later send of its connected socket) or a full buffer is counted and the send goes on.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::sap::{self, Announcer};
use super::{Packetizer, RtpParams, rtcp, sdp};

/// Default multicast TTL: the local network only.
pub const DEFAULT_TTL: u8 = 1;

/// What the command line says about RTP (`--rtp`, `--ttl`, `--sdp`, `--sap`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RtpConfig {
    /// `--rtp DEST:PORT`, in order; empty means no RTP output.
    pub dests: Vec<SocketAddr>,
    /// `--ttl N`: multicast TTL (hops), [`DEFAULT_TTL`] when not given.
    pub ttl: Option<u8>,
    /// `--sdp PATH`: where to write the description of the first destination.
    pub sdp: Option<PathBuf>,
    /// `--sap`: announce the sessions by SAP.
    pub sap: bool,
}

/// Checks one `--rtp` destination: a unicast or multicast address a datagram can be sent to,
/// and an even port (RTP on PORT, RTCP on PORT+1, RFC 3550 §11). The message names the value.
pub fn check_dest(dest: SocketAddr) -> Result<(), String> {
    let ip = dest.ip();
    if ip.is_unspecified() {
        return Err(format!("--rtp {dest}: {ip} is not a destination address"));
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(format!("--rtp {dest}: broadcast is not supported"));
    }
    if dest.port() == 0 || dest.port() % 2 == 1 {
        return Err(format!(
            "--rtp {dest}: the port must be even and non-zero (RTP on PORT, RTCP on PORT+1)"
        ));
    }
    Ok(())
}

impl RtpConfig {
    /// True when any `--rtp` was given.
    pub fn is_enabled(&self) -> bool {
        !self.dests.is_empty()
    }

    /// The multicast TTL in force.
    pub fn ttl(&self) -> u8 {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    /// Checks the combination; the message names the option and value at fault.
    pub fn validate(&self) -> Result<(), String> {
        for d in &self.dests {
            check_dest(*d)?;
        }
        if let Some(t) = self.ttl {
            if t == 0 {
                return Err("--ttl 0 is outside 1..=255".into());
            }
            if !self.dests.iter().any(|d| d.ip().is_multicast()) {
                return Err(format!(
                    "--ttl {t} applies to multicast destinations only, and no --rtp is multicast"
                ));
            }
        }
        if self.sdp.is_some() && !self.is_enabled() {
            return Err("--sdp needs an --rtp destination to describe".into());
        }
        if self.sap {
            if !self.is_enabled() {
                return Err("--sap needs an --rtp destination to announce".into());
            }
            if let Some(d) = self.dests.iter().find(|d| d.is_ipv6()) {
                return Err(format!(
                    "--sap announces IPv4 sessions only; --rtp {d} is IPv6"
                ));
            }
        }
        Ok(())
    }
}

/// Counters of the RTP output, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputStats {
    /// RTP packets handed to the kernel (over every destination).
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Sends refused by a destination (`ECONNREFUSED`).
    pub refused: u64,
    /// Other failed sends (a full buffer, no route, ...).
    pub failed: u64,
    /// RTCP packets sent.
    pub rtcp: u64,
    /// SAP packets sent.
    pub sap: u64,
}

struct Dest {
    addr: SocketAddr,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

/// The RTP output of one run.
pub struct Output {
    packetizer: Packetizer,
    dests: Vec<Dest>,
    sap: Vec<Announcer>,
    sap_socket: Option<UdpSocket>,
    sdp: String,
    cname: String,
    scratch: Vec<Bytes>,
    stats: OutputStats,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field(
                "dests",
                &self.dests.iter().map(|d| d.addr).collect::<Vec<_>>(),
            )
            .field("params", self.packetizer.params())
            .field("stats", &self.stats)
            .finish()
    }
}

/// A non-blocking UDP socket connected to `to`, with the multicast TTL set when `to` is
/// multicast.
fn connected(to: SocketAddr, ttl: u8) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
    let any = match to {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    if to.ip().is_multicast() {
        match to {
            SocketAddr::V4(_) => s.set_multicast_ttl_v4(u32::from(ttl))?,
            SocketAddr::V6(_) => s.set_multicast_hops_v6(u32::from(ttl))?,
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&any.into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

impl Output {
    /// Opens the sockets, writes the `--sdp` file and prepares the SAP announcements for a
    /// stream titled `title` sent with `params` ([`RtpParams::random`] for L16,
    /// [`RtpParams::random_opus`] for Opus). The error names the destination or file and the
    /// reason.
    pub fn open(
        config: &RtpConfig,
        title: &str,
        params: RtpParams,
        now: Instant,
    ) -> Result<Output, String> {
        config.validate()?;
        let ttl = config.ttl();
        let mut dests = Vec::new();
        for &addr in &config.dests {
            let rtcp_addr = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
            let rtp = connected(addr, ttl).map_err(|e| format!("--rtp {addr}: {e}"))?;
            let rtcp = connected(rtcp_addr, ttl).map_err(|e| format!("--rtp {addr}: {e}"))?;
            dests.push(Dest { addr, rtp, rtcp });
        }
        let session_id = rtcp::ntp_timestamp(SystemTime::now()) >> 32;
        let describe = |d: &Dest| {
            let origin = d
                .rtp
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let text = sdp::Session {
                session_id,
                version: 1,
                origin,
                title: title.to_string(),
                dest: d.addr,
                ttl,
                rtp: params,
            }
            .build();
            (origin, text)
        };
        let Some(first) = dests.first() else {
            return Err("no --rtp destination".into());
        };
        let (origin, sdp_text) = describe(first);
        if let Some(path) = &config.sdp {
            std::fs::write(path, &sdp_text)
                .map_err(|e| format!("cannot write the SDP to {}: {e}", path.display()))?;
        }
        let (mut sap, mut sap_socket) = (Vec::new(), None);
        if config.sap {
            sap_socket = Some(
                connected(sap::SAP_ADDR, ttl)
                    .map_err(|e| format!("--sap to {}: {e}", sap::SAP_ADDR))?,
            );
            for d in &dests {
                let (o, text) = describe(d);
                sap.push(Announcer::new(now, o, &text));
            }
        }
        Ok(Output {
            packetizer: Packetizer::new(params),
            dests,
            sap,
            sap_socket,
            sdp: sdp_text,
            cname: format!("streamd@{origin}"),
            scratch: Vec::new(),
            stats: OutputStats::default(),
        })
    }

    /// The stream's parameters.
    pub fn params(&self) -> &RtpParams {
        self.packetizer.params()
    }

    /// The SDP of the first destination (what `--sdp` wrote).
    pub fn sdp(&self) -> &str {
        &self.sdp
    }

    /// The destinations, in order.
    pub fn dests(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.dests.iter().map(|d| d.addr)
    }

    /// Counters so far.
    pub fn stats(&self) -> OutputStats {
        self.stats
    }

    /// Sends one tick's audio (the datagrams of a `Transmit::Fanout`) to every destination.
    pub fn tick(&mut self, now: Instant, datagrams: &[Bytes]) {
        let mut packets = std::mem::take(&mut self.scratch);
        packets.clear();
        self.packetizer.tick(now, datagrams, &mut packets);
        for d in &self.dests {
            for p in &packets {
                if count(&mut self.stats, d.rtp.send(p)) {
                    self.stats.packets += 1;
                    self.stats.bytes += p.len() as u64;
                }
            }
        }
        packets.clear();
        self.scratch = packets;
    }

    /// Sends what is due at `now` besides audio: an RTCP sender report, SAP announcements.
    pub fn poll(&mut self, now: Instant, wall: SystemTime) {
        if let Some(sr) = self.packetizer.poll_rtcp(now, wall, &self.cname) {
            self.send_rtcp(&sr);
        }
        if let Some(sock) = &self.sap_socket {
            for a in &mut self.sap {
                while let Some(p) = a.poll(now) {
                    if count(&mut self.stats, sock.send(&p)) {
                        self.stats.sap += 1;
                    }
                }
            }
        }
    }

    /// The end of the stream: an RTCP BYE to every destination and the SAP deletions.
    pub fn finish(&mut self, now: Instant, wall: SystemTime) {
        let bye = self.packetizer.bye(now, wall, &self.cname);
        self.send_rtcp(&bye);
        if let Some(sock) = &self.sap_socket {
            for a in &mut self.sap {
                let p = a.delete();
                if count(&mut self.stats, sock.send(&p)) {
                    self.stats.sap += 1;
                }
            }
        }
    }

    fn send_rtcp(&mut self, p: &[u8]) {
        for d in &self.dests {
            if count(&mut self.stats, d.rtcp.send(p)) {
                self.stats.rtcp += 1;
            }
        }
    }
}

/// Counts a failed send; true if it went out.
fn count(stats: &mut OutputStats, r: std::io::Result<usize>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            stats.refused += 1;
            false
        }
        Err(e) => {
            tracing::trace!("rtp send failed: {e}");
            stats.failed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dests: &[&str]) -> RtpConfig {
        RtpConfig {
            dests: dests.iter().filter_map(|d| d.parse().ok()).collect(),
            ..RtpConfig::default()
        }
    }

    #[test]
    fn destinations() {
        assert!(
            check_dest(
                "127.0.0.1:5004"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0)))
            )
            .is_ok()
        );
        for bad in [
            "0.0.0.0:5004",
            "255.255.255.255:5004",
            "127.0.0.1:5005",
            "127.0.0.1:0",
            "[::]:5004",
        ] {
            let a: SocketAddr = bad.parse().unwrap_or(SocketAddr::from(([0; 4], 0)));
            let e = check_dest(a).err().unwrap_or_default();
            assert!(e.contains(&a.to_string()), "{bad}: {e}");
        }
    }

    /// An Opus output describes `opus/48000/2` with its fmtp, sends one RTP packet per Opus
    /// datagram, and its SAP announcement carries the same description.
    #[test]
    fn opus_output_describes_and_sends_opus() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        // RTP needs an even port: the bound one or the one below (a refusal is counted too).
        let port = sink.local_addr().map(|a| a.port()).unwrap_or(5004) & !1;
        let dest = SocketAddr::from(([127, 0, 0, 1], port));
        let config = RtpConfig {
            dests: vec![dest],
            ..RtpConfig::default()
        };
        let now = Instant::now();
        let mut out = Output::open(&config, "t", RtpParams::random_opus(2, 96_000), now)
            .unwrap_or_else(|e| panic!("{e}"));
        let sdp = out.sdp().to_string();
        assert!(sdp.contains("a=rtpmap:96 opus/48000/2\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=fmtp:96 sprop-stereo=1; stereo=1; maxaveragebitrate=96000\r\n"),
            "{sdp}"
        );
        let mut b = bytes::BytesMut::new();
        proto::encode_audio(0, 0, &[0xfc, 1, 2, 3], &mut b);
        out.tick(now, &[b.freeze()]);
        let st = out.stats();
        assert_eq!(st.packets + st.refused + st.failed, 1, "{st:?}");
        let sap = sap::packet(
            false,
            sap::msg_id_hash(&sdp),
            IpAddr::from([127, 0, 0, 1]),
            &sdp,
        );
        let text = String::from_utf8_lossy(&sap);
        assert!(text.contains("application/sdp\0v=0"), "{text}");
        assert!(text.contains("opus/48000/2"), "{text}");
    }

    #[test]
    fn combinations() {
        assert!(cfg(&["127.0.0.1:5004"]).validate().is_ok());
        let mut c = cfg(&["127.0.0.1:5004"]);
        c.ttl = Some(4);
        assert!(c.validate().err().unwrap_or_default().contains("--ttl 4"));
        c.dests.push(
            "239.1.1.1:5004"
                .parse()
                .unwrap_or(SocketAddr::from(([0; 4], 0))),
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.ttl(), 4);
        c.ttl = Some(0);
        assert!(c.validate().is_err());
        let mut c = cfg(&[]);
        c.sdp = Some("x.sdp".into());
        assert!(c.validate().is_err());
        let mut c = cfg(&[]);
        c.sap = true;
        assert!(c.validate().is_err());
        let mut c = cfg(&["[ff15::1]:5004"]);
        c.sap = true;
        assert!(c.validate().err().unwrap_or_default().contains("IPv6"));
        assert_eq!(cfg(&[]).ttl(), DEFAULT_TTL);
    }
}
