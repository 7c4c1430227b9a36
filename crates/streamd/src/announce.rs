//! Announcing the server on the local network: DNS-SD over mDNS (the `mdns-sd` crate, which
//! runs its own responder thread) for the service type [`SERVICE_TYPE`], so `listen` without
//! `--server` finds it. Announcing is a convenience: where multicast is unavailable, starting
//! it fails with one warning and the server streams on.
//!
//! The TXT keys (what `listen::discover` reads): `title`, `codec` (`pcm`, the wire format),
//! `port` (the UDP port, also in the SRV record), `capacity` (`--max-clients`) and `proto`
//! (the protocol version). The record is made once at start: it carries no live listener count.

use std::net::IpAddr;

/// The DNS-SD service type earshot servers announce.
pub const SERVICE_TYPE: &str = "_earshot._udp.local.";

/// Longest instance name DNS allows in one label.
pub const MAX_INSTANCE: usize = 63;

/// Longest title put in the TXT record: one TXT string holds 255 bytes, key included.
pub const MAX_TITLE: usize = 200;

/// What to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The stream's title.
    pub title: String,
    /// The bound address: unspecified announces every interface's addresses.
    pub bind: IpAddr,
    /// The bound UDP port.
    pub port: u16,
    /// `--max-clients`.
    pub capacity: u32,
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// This machine's name, for the instance and host names (`streamd` when unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_else(|| "streamd".to_owned())
}

impl Announcement {
    /// The DNS-SD instance name: `TITLE on HOST port PORT`, within [`MAX_INSTANCE`] bytes (two
    /// servers on one machine differ by port).
    pub fn instance(&self, host: &str) -> String {
        let tail = format!(" on {host} port {}", self.port);
        let room = MAX_INSTANCE.saturating_sub(tail.len());
        let title = cut(self.title.trim(), room);
        cut(&format!("{title}{tail}"), MAX_INSTANCE).to_owned()
    }

    /// The TXT record's entries.
    pub fn txt(&self) -> Vec<(&'static str, String)> {
        vec![
            ("title", cut(&self.title, MAX_TITLE).to_owned()),
            ("codec", "pcm".to_owned()),
            ("port", self.port.to_string()),
            ("capacity", self.capacity.to_string()),
            ("proto", proto::VERSION.to_string()),
        ]
    }
}

/// A running announcement; dropping it withdraws the record and stops the responder.
pub struct Announcer {
    daemon: mdns_sd::ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Announcer {
    /// Starts the responder and registers the record. The error is one line for a warning. A
    /// server bound to a loopback address is not announced (no other machine could reach it);
    /// one bound to a specific address is announced on that address's interface only.
    pub fn start(a: &Announcement) -> Result<Announcer, String> {
        if a.bind.is_loopback() {
            return Err(format!(
                "bound to {}, which no other machine reaches",
                a.bind
            ));
        }
        let host = host_name();
        let instance = a.instance(&host);
        let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
        if !a.bind.is_unspecified() {
            let only = daemon
                .disable_interface(mdns_sd::IfKind::All)
                .and_then(|()| daemon.enable_interface(mdns_sd::IfKind::Addr(a.bind)));
            if let Err(e) = only {
                let _ = daemon.shutdown();
                return Err(format!("mDNS interface of {}: {e}", a.bind));
            }
        }
        let entries = a.txt();
        let txt: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let host_fqdn = format!("{host}-earshot-{}.local.", a.port);
        let info = if a.bind.is_unspecified() {
            mdns_sd::ServiceInfo::new(SERVICE_TYPE, &instance, &host_fqdn, "", a.port, &txt[..])
                .map(mdns_sd::ServiceInfo::enable_addr_auto)
        } else {
            mdns_sd::ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host_fqdn,
                a.bind,
                a.port,
                &txt[..],
            )
        }
        .map_err(|e| format!("mDNS record: {e}"))?;
        let fullname = info.get_fullname().to_owned();
        if let Err(e) = daemon.register(info) {
            let _ = daemon.shutdown();
            return Err(format!("mDNS register: {e}"));
        }
        Ok(Announcer { daemon, fullname })
    }

    /// The full DNS-SD name announced.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Goodbye packets, so listeners forget the server at once; best effort.
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(std::time::Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(title: &str) -> Announcement {
        Announcement {
            title: title.into(),
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 5000,
            capacity: 32,
        }
    }

    #[test]
    fn instance_names_fit_one_dns_label() {
        assert_eq!(a("Jazz").instance("box"), "Jazz on box port 5000");
        let long = a(&"é".repeat(100)).instance("box");
        assert!(long.len() <= MAX_INSTANCE, "{long}");
        assert!(long.ends_with(" on box port 5000"), "{long}");
    }

    #[test]
    fn txt_has_the_keys_listen_reads() {
        let t = a(&"x".repeat(400)).txt();
        let get = |k: &str| t.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        assert_eq!(get("codec").as_deref(), Some("pcm"));
        assert_eq!(get("port").as_deref(), Some("5000"));
        assert_eq!(get("capacity").as_deref(), Some("32"));
        assert_eq!(get("proto"), Some(proto::VERSION.to_string()));
        assert!(get("title").unwrap().len() <= MAX_TITLE);
        for (k, v) in &t {
            assert!(k.len() + v.len() < 255);
        }
    }
}
