//! The session description (SDP, RFC 8866) a player opens to receive the RTP stream: written to
//! `--sdp PATH` and carried by SAP. A pure text builder.

use std::net::{IpAddr, SocketAddr};

use super::RtpParams;

/// Everything the description says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `o=` session id: unique per session (numeric).
    pub session_id: u64,
    /// `o=` version: changes when the description does.
    pub version: u64,
    /// `o=` unicast address of the machine that made the session.
    pub origin: IpAddr,
    /// `s=`: the stream's title.
    pub title: String,
    /// `c=` and `m=`: where the RTP goes.
    pub dest: SocketAddr,
    /// The multicast TTL written after an IPv4 multicast `c=` address.
    pub ttl: u8,
    /// `m=` payload type, `a=rtpmap`, `a=ptime`.
    pub rtp: RtpParams,
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// A single line of text for `s=`: line breaks and other control characters become spaces, and
/// an empty title a single space (RFC 8866 §5.3).
fn one_line(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if t.trim().is_empty() { " ".into() } else { t }
}

impl Session {
    /// The description, CRLF line endings, fields in RFC 8866's order.
    pub fn build(&self) -> String {
        let dest_ip = self.dest.ip();
        let c_addr = match dest_ip {
            // IPv4 multicast carries its TTL; IPv6 has none in SDP (§5.7).
            IpAddr::V4(v4) if v4.is_multicast() => format!("{v4}/{}", self.ttl),
            ip => ip.to_string(),
        };
        let p = &self.rtp;
        let lines = [
            "v=0".to_string(),
            format!(
                "o=- {} {} IN {} {}",
                self.session_id,
                self.version,
                addr_type(self.origin),
                self.origin
            ),
            format!("s={}", one_line(&self.title)),
            format!("c=IN {} {c_addr}", addr_type(dest_ip)),
            "t=0 0".to_string(),
            format!("m=audio {} RTP/AVP {}", self.dest.port(), p.payload_type),
            format!("a=rtpmap:{} {}", p.payload_type, p.rtpmap()),
        ];
        let fmtp = p.fmtp().map(|f| format!("a=fmtp:{} {f}", p.payload_type));
        let tail = [
            format!("a=ptime:{}", p.ptime_ms()),
            "a=recvonly".to_string(),
        ];
        let lines: Vec<String> = lines.into_iter().chain(fmtp).chain(tail).collect();
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: u32, ch: u16) -> RtpParams {
        RtpParams {
            encoding: super::super::Encoding::L16,
            sample_rate: rate,
            channels: ch,
            payload_type: super::super::payload_type(rate, ch),
            ssrc: 1,
            ts_offset: 0,
            first_seq: 0,
            frames_per_packet: super::super::frames_per_packet(1400, rate, ch),
        }
    }

    #[test]
    fn golden_unicast() {
        let s = Session {
            session_id: 3_900_000_000,
            version: 1,
            origin: "127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            title: "Night\r\nTrain".into(),
            dest: SocketAddr::from(([127, 0, 0, 1], 5004)),
            ttl: 1,
            rtp: params(44_100, 2),
        };
        assert_eq!(
            s.build(),
            "v=0\r\no=- 3900000000 1 IN IP4 127.0.0.1\r\ns=Night  Train\r\n\
             c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 10\r\n\
             a=rtpmap:10 L16/44100/2\r\na=ptime:8\r\na=recvonly\r\n"
        );
    }

    #[test]
    fn golden_multicast_dynamic() {
        let s = Session {
            session_id: 7,
            version: 2,
            origin: IpAddr::from([192, 0, 2, 10]),
            title: String::new(),
            dest: SocketAddr::from(([239, 1, 2, 3], 5006)),
            ttl: 16,
            rtp: params(48_000, 2),
        };
        assert_eq!(
            s.build(),
            "v=0\r\no=- 7 2 IN IP4 192.0.2.10\r\ns= \r\nc=IN IP4 239.1.2.3/16\r\nt=0 0\r\n\
             m=audio 5006 RTP/AVP 96\r\na=rtpmap:96 L16/48000/2\r\na=ptime:7\r\na=recvonly\r\n"
        );
    }

    /// RFC 7587 §7: `opus/48000/2` in every case, mono or stereo told by `sprop-stereo`.
    #[test]
    fn golden_opus() {
        let mut rtp = RtpParams::random_opus(2, 128_000);
        rtp.ssrc = 1;
        let s = Session {
            session_id: 9,
            version: 1,
            origin: IpAddr::from([127, 0, 0, 1]),
            title: "t".into(),
            dest: SocketAddr::from(([127, 0, 0, 1], 5004)),
            ttl: 1,
            rtp,
        };
        assert_eq!(
            s.build(),
            "v=0\r\no=- 9 1 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n\
             a=fmtp:96 sprop-stereo=1; stereo=1; maxaveragebitrate=128000\r\n\
             a=ptime:20\r\na=recvonly\r\n"
        );
        let mono = Session {
            rtp: RtpParams::random_opus(1, 64_000),
            ..s
        }
        .build();
        assert!(
            mono.contains("a=rtpmap:96 opus/48000/2\r\na=fmtp:96 sprop-stereo=0; stereo=0; maxaveragebitrate=64000\r\n"),
            "{mono}"
        );
    }

    #[test]
    fn ipv6_multicast_has_no_ttl() {
        let s = Session {
            session_id: 1,
            version: 1,
            origin: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            title: "x".into(),
            dest: SocketAddr::new(IpAddr::from([0xff15u16, 0, 0, 0, 0, 0, 0, 1]), 5004),
            ttl: 5,
            rtp: params(22_050, 1),
        };
        let t = s.build();
        assert!(t.contains("o=- 1 1 IN IP6 ::1\r\n"), "{t}");
        assert!(t.contains("c=IN IP6 ff15::1\r\n"), "{t}");
        assert!(
            t.contains("a=rtpmap:96 L16/22050/1\r\na=ptime:20\r\n"),
            "{t}"
        );
    }
}
