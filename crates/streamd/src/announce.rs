//! Announcing the server on the local network: DNS-SD over mDNS (the `mdns-sd` crate, which
//! runs its own responder thread) for the service type [`SERVICE_TYPE`], so `listen` without
//! `--server` finds it. Announcing is a convenience: where multicast is unavailable, starting
//! it fails with one warning and the server streams on.
//!
//! The TXT keys (what `listen::discover` reads): `title`, `codec` (`pcm`, the wire format),
//! `port` (the UDP port, also in the SRV record), `listeners` (listeners now), `capacity`
//! (`--max-clients`) and `proto` (the protocol version).
//!
//! The listener count is live: the server's shell reports it with [`set_listeners`] (a cheap
//! store, once per wake-up), and the announcer's own thread re-registers the record when it
//! changed, no more often than [`REPUBLISH_MIN`]; that policy is [`Republish`], sans-IO.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The DNS-SD service type earshot servers announce.
pub const SERVICE_TYPE: &str = "_earshot._udp.local.";

/// Longest instance name DNS allows in one label.
pub const MAX_INSTANCE: usize = 63;

/// Longest title put in the TXT record: one TXT string holds 255 bytes, key included.
pub const MAX_TITLE: usize = 200;

/// Least time between two re-registrations for a new listener count: each one multicasts the
/// whole record to every host on the link, so a crowd joining at once costs one packet per 2 s
/// rather than one per join, and `listen --discover` is at most 2 s behind.
pub const REPUBLISH_MIN: Duration = Duration::from_secs(2);

/// How often the announcer's thread looks at the listener count: a change is re-announced
/// within this of [`REPUBLISH_MIN`] allowing it.
pub const CHECK_PERIOD: Duration = Duration::from_millis(250);

/// The listener counts of the announced servers of this process, by bound address: written by
/// the server's shell ([`set_listeners`]), read by each [`Announcer`]'s thread. Only addresses
/// with a running announcer have an entry.
static LISTENERS: Mutex<BTreeMap<SocketAddr, u32>> = Mutex::new(BTreeMap::new());

/// The server bound at `server` has `count` listeners now; its announcement says so within
/// [`REPUBLISH_MIN`] plus [`CHECK_PERIOD`]. A no-op for a server that is not announced.
pub fn set_listeners(server: SocketAddr, count: usize) {
    if let Ok(mut m) = LISTENERS.lock()
        && let Some(n) = m.get_mut(&server)
    {
        *n = u32::try_from(count).unwrap_or(u32::MAX);
    }
}

/// The count [`set_listeners`] last stored for `server`.
fn listeners_of(server: SocketAddr) -> Option<u32> {
    LISTENERS.lock().ok().and_then(|m| m.get(&server).copied())
}

/// When to re-register the record for a new listener count, sans-IO: only when the count
/// differs from the one announced, and at most once per [`REPUBLISH_MIN`].
#[derive(Debug, Clone)]
pub struct Republish {
    /// The count the record carries.
    announced: u32,
    /// When it was registered.
    at: Instant,
}

impl Republish {
    /// The record was registered at `now` with `announced` listeners.
    pub fn new(announced: u32, now: Instant) -> Self {
        Self { announced, at: now }
    }

    /// The count is `count` at `now`: `Some(count)` when the record is to be registered again
    /// with it now (it then counts as announced).
    pub fn poll(&mut self, count: u32, now: Instant) -> Option<u32> {
        if count == self.announced || now.saturating_duration_since(self.at) < REPUBLISH_MIN {
            return None;
        }
        self.announced = count;
        self.at = now;
        Some(count)
    }

    /// The count the record carries.
    pub fn announced(&self) -> u32 {
        self.announced
    }
}

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

    /// The TXT record's entries with `listeners` listeners.
    pub fn txt(&self, listeners: u32) -> Vec<(&'static str, String)> {
        vec![
            ("title", cut(&self.title, MAX_TITLE).to_owned()),
            ("codec", "pcm".to_owned()),
            ("port", self.port.to_string()),
            ("listeners", listeners.to_string()),
            ("capacity", self.capacity.to_string()),
            ("proto", proto::VERSION.to_string()),
        ]
    }
}

/// A running announcement; dropping it withdraws the record and stops the responder.
pub struct Announcer {
    daemon: mdns_sd::ServiceDaemon,
    fullname: String,
    /// The server's address, its key in the listener counts.
    server: SocketAddr,
    /// Stops the re-announcing thread (by being dropped) and its handle.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .finish()
    }
}

/// The record of `a` on `host` with `listeners` listeners.
fn service_info(
    a: &Announcement,
    host: &str,
    listeners: u32,
) -> Result<mdns_sd::ServiceInfo, String> {
    let instance = a.instance(host);
    let entries = a.txt(listeners);
    let txt: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host_fqdn = format!("{host}-earshot-{}.local.", a.port);
    if a.bind.is_unspecified() {
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
    .map_err(|e| format!("mDNS record: {e}"))
}

impl Announcer {
    /// Starts the responder and registers the record (0 listeners), then keeps the count
    /// current ([`set_listeners`]). The error is one line for a warning. A server bound to a
    /// loopback address is not announced (no other machine could reach it); one bound to a
    /// specific address is announced on that address's interface only.
    pub fn start(a: &Announcement) -> Result<Announcer, String> {
        if a.bind.is_loopback() {
            return Err(format!(
                "bound to {}, which no other machine reaches",
                a.bind
            ));
        }
        let host = host_name();
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
        let info = match service_info(a, &host, 0) {
            Ok(i) => i,
            Err(e) => {
                let _ = daemon.shutdown();
                return Err(e);
            }
        };
        let fullname = info.get_fullname().to_owned();
        if let Err(e) = daemon.register(info) {
            let _ = daemon.shutdown();
            return Err(format!("mDNS register: {e}"));
        }
        let server = SocketAddr::new(a.bind, a.port);
        if let Ok(mut m) = LISTENERS.lock() {
            m.insert(server, 0);
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (d, a) = (daemon.clone(), a.clone());
        let thread = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                let mut republish = Republish::new(0, Instant::now());
                // Ends when the announcer drops the sender.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECK_PERIOD)
                {
                    let Some(count) = listeners_of(server) else {
                        continue;
                    };
                    if let Some(n) = republish.poll(count, Instant::now()) {
                        match service_info(&a, &host, n)
                            .and_then(|i| d.register(i).map_err(|e| format!("mDNS register: {e}")))
                        {
                            Ok(()) => tracing::debug!("announced {n} listeners"),
                            Err(e) => tracing::debug!("re-announcing {n} listeners: {e}"),
                        }
                    }
                }
            })
            .map_err(|e| format!("announce thread: {e}"));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // The record stays up with its count at 0.
                tracing::warn!("{e}: the announced listener count stays 0");
                None
            }
        };
        Ok(Announcer {
            daemon,
            fullname,
            server,
            stop: Some(stop),
            thread,
        })
    }

    /// The full DNS-SD name announced.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(mut m) = LISTENERS.lock() {
            m.remove(&self.server);
        }
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
        let t = a(&"x".repeat(400)).txt(7);
        let get = |k: &str| t.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        assert_eq!(get("codec").as_deref(), Some("pcm"));
        assert_eq!(get("port").as_deref(), Some("5000"));
        assert_eq!(get("listeners").as_deref(), Some("7"));
        assert_eq!(get("capacity").as_deref(), Some("32"));
        assert_eq!(get("proto"), Some(proto::VERSION.to_string()));
        assert!(get("title").unwrap().len() <= MAX_TITLE);
        for (k, v) in &t {
            assert!(k.len() + v.len() < 255);
        }
    }

    #[test]
    fn the_count_is_republished_only_when_changed_and_at_most_every_two_seconds() {
        let ms = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut r = Republish::new(0, t0);
        assert_eq!(r.poll(0, t0 + 5000 * ms), None, "unchanged");
        // The first change right after the start waits out REPUBLISH_MIN.
        let mut r = Republish::new(0, t0);
        assert_eq!(r.poll(1, t0 + 1999 * ms), None);
        assert_eq!(r.poll(1, t0 + 2000 * ms), Some(1));
        // A burst of joins and leaves within the window: nothing, then only the last count.
        for (i, n) in [2, 3, 4, 1].into_iter().enumerate() {
            assert_eq!(r.poll(n, t0 + ms * (2100 + 100 * i as u32)), None);
        }
        assert_eq!(r.poll(3, t0 + 4000 * ms), Some(3));
        assert_eq!(r.announced(), 3);
        // Back to what is announced before the window ends: no packet at all.
        assert_eq!(r.poll(3, t0 + 9000 * ms), None);
        assert_eq!(r.poll(0, t0 + 9000 * ms), Some(0));
        assert!(REPUBLISH_MIN >= Duration::from_secs(1));
    }

    #[test]
    fn set_listeners_only_touches_announced_servers() {
        let here = SocketAddr::from(([198, 18, 0, 1], 4999));
        set_listeners(here, 3);
        assert_eq!(listeners_of(here), None, "not announced: no entry");
        LISTENERS.lock().unwrap().insert(here, 0);
        set_listeners(here, 3);
        assert_eq!(listeners_of(here), Some(3));
        LISTENERS.lock().unwrap().remove(&here);
    }
}
