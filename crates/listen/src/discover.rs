//! Finding servers on the local network: DNS-SD over mDNS (the `mdns-sd` crate) for the
//! service type [`SERVICE_TYPE`], which `streamd` announces unless `--no-announce`.
//!
//! What a record says is checked here, sans-IO, before anything trusts it ([`parse`]): a record
//! of another service type, a TXT record too long or not in `key=value` form, a missing port or
//! no address is ignored and counted ([`Ignored`]), never a panic. [`select`] picks the server
//! to join; [`Chosen::rematch`] finds the same server again after it moved (a new port or
//! address: `listen --stay` browses again when rejoining fails); [`browse`] is the thin shell
//! over the mDNS daemon.
//!
//! The TXT keys: `title` (the stream's title), `codec` (`pcm`), `port` (the UDP port, the same
//! as the SRV record's), `listeners` and `capacity` (`--max-clients`), `proto` (the protocol
//! version the server speaks).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The DNS-SD service type earshot servers announce.
pub const SERVICE_TYPE: &str = "_earshot._udp.local.";

/// How long a staying listener browses for its server again: a responder answers a query
/// within ~120 ms, so this is many answers' worth; the browse ends as soon as the server shows.
pub const REBROWSE_WINDOW: Duration = Duration::from_secs(3);

/// How often a browse looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Longest TXT value accepted: a DNS character-string holds at most 255 bytes, so anything
/// longer is not from a well-formed record.
pub const MAX_TXT_VALUE: usize = 255;

/// Most TXT entries accepted in one record: ours has six; a record with far more is not ours.
pub const MAX_TXT_ENTRIES: usize = 32;

/// One server found on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The DNS-SD instance name (what `--name-of-server` matches, as does `title`).
    pub instance: String,
    /// Where to send the `Connect`.
    pub addr: SocketAddr,
    /// The stream's title (empty when the record has none).
    pub title: String,
    /// Listeners when the record was made, if it says.
    pub listeners: Option<u32>,
    /// The server's capacity, if it says.
    pub capacity: Option<u32>,
    /// The protocol version it speaks, if it says.
    pub version: Option<u8>,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<u32>| v.map_or("?".to_owned(), |v| v.to_string());
        write!(
            f,
            "{}  {:?}  {:?}  listeners {}/{}",
            self.addr,
            self.instance,
            self.title,
            n(self.listeners),
            n(self.capacity)
        )
    }
}

/// Why a record was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Another service type.
    WrongService,
    /// No port, port 0, or a TXT port that disagrees with the SRV record.
    MissingPort,
    /// No address.
    NoAddress,
    /// A TXT record too long, too many entries, not UTF-8 or a number that is not one.
    Malformed(String),
}

/// Checks one resolved record: `ty` its service type, `instance` its instance name, `port` the
/// SRV record's, `addrs` its addresses, `txt` its entries (key, value). An IPv4 address is
/// preferred (servers commonly bind `0.0.0.0`).
pub fn parse(
    ty: &str,
    instance: &str,
    port: u16,
    addrs: &[IpAddr],
    txt: &[(String, Option<Vec<u8>>)],
) -> Result<Found, Ignored> {
    if !ty.eq_ignore_ascii_case(SERVICE_TYPE) {
        return Err(Ignored::WrongService);
    }
    if txt.len() > MAX_TXT_ENTRIES {
        return Err(Ignored::Malformed(format!("{} TXT entries", txt.len())));
    }
    let mut kv = BTreeMap::new();
    for (k, v) in txt {
        let v = v.as_deref().unwrap_or_default();
        if k.len() + v.len() + 1 > MAX_TXT_VALUE {
            return Err(Ignored::Malformed(format!("TXT entry {k:?} too long")));
        }
        let v = std::str::from_utf8(v)
            .map_err(|_| Ignored::Malformed(format!("TXT entry {k:?} is not UTF-8")))?;
        kv.insert(k.to_ascii_lowercase(), v);
    }
    let num = |k: &str| -> Result<Option<u32>, Ignored> {
        kv.get(k)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| Ignored::Malformed(format!("TXT {k}={v:?} is not a number")))
            })
            .transpose()
    };
    if port == 0 {
        return Err(Ignored::MissingPort);
    }
    if let Some(p) = num("port")?
        && p != u32::from(port)
    {
        return Err(Ignored::MissingPort);
    }
    let ip = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or(Ignored::NoAddress)?;
    let version = match num("proto")? {
        Some(v) => Some(
            u8::try_from(v).map_err(|_| Ignored::Malformed(format!("TXT proto={v} too big")))?,
        ),
        None => None,
    };
    Ok(Found {
        instance: instance.to_owned(),
        addr: SocketAddr::new(ip, port),
        title: kv.get("title").copied().unwrap_or_default().to_owned(),
        listeners: num("listeners")?,
        capacity: num("capacity")?,
        version,
    })
}

/// Why no server could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Nothing found.
    #[error("no earshot server found on the network (mDNS {SERVICE_TYPE})")]
    None,
    /// `--name-of-server` matched nothing.
    #[error("no server named {name:?} found; seen: {seen}")]
    NotFound {
        /// As given.
        name: String,
        /// The instance names seen.
        seen: String,
    },
    /// Several servers and no `--name-of-server`.
    #[error("{count} servers found ({seen}): choose one with --name-of-server NAME")]
    Several {
        /// How many.
        count: usize,
        /// Their instance names.
        seen: String,
    },
}

/// Picks the server to join: the one whose instance name or title is `name` (case-insensitive),
/// or the only one found.
pub fn select<'a>(found: &'a [Found], name: Option<&str>) -> Result<&'a Found, SelectError> {
    let seen = || {
        found
            .iter()
            .map(|f| format!("{:?}", f.instance))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (name, found) {
        (_, []) => Err(SelectError::None),
        (Some(n), _) => found
            .iter()
            .find(|f| f.instance.eq_ignore_ascii_case(n) || f.title.eq_ignore_ascii_case(n))
            .ok_or_else(|| SelectError::NotFound {
                name: n.to_owned(),
                seen: seen(),
            }),
        (None, [one]) => Ok(one),
        (None, many) => Err(SelectError::Several {
            count: many.len(),
            seen: seen(),
        }),
    }
}

/// The server a listener found by discovery and how it chose it, so that it can find the same
/// server again when it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The record joined (last seen).
    pub found: Found,
    /// `--name-of-server`, if given.
    pub name: Option<String>,
}

impl Chosen {
    /// The server among `found` that is the one chosen before: the same instance name; else
    /// the `--name-of-server` choice; else the same title (the instance name carries the port,
    /// so a server back on a new port has a new one), the one at the same address when several
    /// share it. `None` when none matches or the match is ambiguous.
    pub fn rematch<'a>(&self, found: &'a [Found]) -> Option<&'a Found> {
        if let Some(f) = found
            .iter()
            .find(|f| f.instance.eq_ignore_ascii_case(&self.found.instance))
        {
            return Some(f);
        }
        if let Some(n) = &self.name
            && let Ok(f) = select(found, Some(n))
        {
            return Some(f);
        }
        let titled: Vec<&Found> = found
            .iter()
            .filter(|f| !f.title.is_empty() && f.title.eq_ignore_ascii_case(&self.found.title))
            .collect();
        match titled.as_slice() {
            [one] => Some(one),
            many => {
                let here: Vec<&&Found> = many
                    .iter()
                    .filter(|f| f.addr.ip() == self.found.addr.ip())
                    .collect();
                match here.as_slice() {
                    [one] => Some(one),
                    _ => None,
                }
            }
        }
    }
}

/// What a browse saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Browse {
    /// Valid servers, one per instance name, in the order found.
    pub found: Vec<Found>,
    /// Records ignored (foreign, malformed), with why.
    pub ignored: Vec<Ignored>,
}

/// The instance name from a full DNS-SD name (`Name._earshot._udp.local.` → `Name`).
fn instance_of(fullname: &str, ty: &str) -> String {
    let lower = fullname.to_ascii_lowercase();
    let cut = lower
        .rfind(&format!(".{}", ty.to_ascii_lowercase()))
        .unwrap_or(fullname.len());
    fullname[..cut].replace("\\.", ".").replace("\\\\", "\\")
}

/// Browses for `window`, or until a server named `stop_at` shows up, and returns what it saw.
/// Blocking (the mDNS daemon runs on its own thread): call it off the async runtime.
pub fn browse(window: Duration, stop_at: Option<&str>) -> Result<Browse, String> {
    let hit = |f: &Found| {
        stop_at
            .is_some_and(|n| f.instance.eq_ignore_ascii_case(n) || f.title.eq_ignore_ascii_case(n))
    };
    browse_until(window, hit, &AtomicBool::new(false))
}

/// Browses for `window`, or until a server for which `stop` is true shows up, or until
/// `cancel` is set (looked at every 100 ms), and returns what it saw. Blocking, like
/// [`browse`].
pub fn browse_until(
    window: Duration,
    stop: impl Fn(&Found) -> bool,
    cancel: &AtomicBool,
) -> Result<Browse, String> {
    let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| format!("mDNS: {e}"))?;
    let rx = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| format!("mDNS browse: {e}"))?;
    let deadline = Instant::now() + window;
    let mut out = Browse::default();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let event = match rx.recv_timeout(left.min(CANCEL_POLL)) {
            Ok(e) => e,
            Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        };
        let mdns_sd::ServiceEvent::ServiceResolved(r) = event else {
            continue;
        };
        let addrs: Vec<IpAddr> = r.addresses.iter().map(|a| a.to_ip_addr()).collect();
        let txt: Vec<(String, Option<Vec<u8>>)> = r
            .txt_properties
            .iter()
            .map(|p| (p.key().to_owned(), p.val().map(<[u8]>::to_vec)))
            .collect();
        let instance = instance_of(&r.fullname, &r.ty_domain);
        match parse(&r.ty_domain, &instance, r.port, &addrs, &txt) {
            Ok(f) => {
                let hit = stop(&f);
                if let Some(old) = out.found.iter_mut().find(|o| o.instance == f.instance) {
                    *old = f;
                } else {
                    out.found.push(f);
                }
                if hit {
                    break;
                }
            }
            Err(why) => {
                tracing::debug!("ignored mDNS record {:?}: {why:?}", r.fullname);
                out.ignored.push(why);
            }
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    let _ = daemon.shutdown();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn txt(entries: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    fn ours() -> Vec<(String, Option<Vec<u8>>)> {
        txt(&[
            ("title", "Morning"),
            ("codec", "pcm"),
            ("port", "5000"),
            ("listeners", "3"),
            ("capacity", "32"),
            ("proto", "1"),
        ])
    }

    const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3));
    const V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

    #[test]
    fn a_good_record_parses_preferring_ipv4() {
        let f = parse(SERVICE_TYPE, "box", 5000, &[V6, V4], &ours()).unwrap();
        assert_eq!(f.addr, SocketAddr::new(V4, 5000));
        assert_eq!(f.title, "Morning");
        assert_eq!(
            (f.listeners, f.capacity, f.version),
            (Some(3), Some(32), Some(1))
        );
        assert_eq!(
            parse(SERVICE_TYPE, "box", 5000, &[V6], &ours())
                .unwrap()
                .addr,
            SocketAddr::new(V6, 5000)
        );
        // Missing optional keys are fine.
        let f = parse(SERVICE_TYPE, "bare", 7, &[V4], &[]).unwrap();
        assert_eq!((f.title.as_str(), f.capacity), ("", None));
    }

    #[test]
    fn hostile_and_foreign_records_are_ignored() {
        assert_eq!(
            parse("_http._tcp.local.", "x", 80, &[V4], &ours()),
            Err(Ignored::WrongService)
        );
        assert_eq!(
            parse(SERVICE_TYPE, "x", 0, &[V4], &ours()),
            Err(Ignored::MissingPort)
        );
        assert_eq!(
            parse(SERVICE_TYPE, "x", 5001, &[V4], &ours()),
            Err(Ignored::MissingPort),
            "TXT port disagrees with SRV"
        );
        assert_eq!(
            parse(SERVICE_TYPE, "x", 5000, &[], &ours()),
            Err(Ignored::NoAddress)
        );
        let long = "a".repeat(300);
        for bad in [
            txt(&[("title", long.as_str())]),
            txt(&[("capacity", "lots")]),
            txt(&[("listeners", "-1")]),
            txt(&[("proto", "256")]),
            vec![("title".to_string(), Some(vec![0xff, 0xfe]))],
            (0..40).map(|i| (format!("k{i}"), None)).collect(),
        ] {
            assert!(
                matches!(
                    parse(SERVICE_TYPE, "x", 5000, &[V4], &bad),
                    Err(Ignored::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn selection_by_name_or_the_only_one() {
        let a = parse(SERVICE_TYPE, "alpha", 1, &[V4], &txt(&[("title", "Jazz")])).unwrap();
        let b = parse(SERVICE_TYPE, "beta", 2, &[V4], &[]).unwrap();
        assert_eq!(select(&[], None), Err(SelectError::None));
        assert_eq!(select(std::slice::from_ref(&a), None), Ok(&a));
        let both = [a.clone(), b.clone()];
        assert!(matches!(
            select(&both, None),
            Err(SelectError::Several { count: 2, .. })
        ));
        assert_eq!(select(&both, Some("BETA")), Ok(&b));
        assert_eq!(select(&both, Some("jazz")), Ok(&a));
        assert!(matches!(
            select(&both, Some("gamma")),
            Err(SelectError::NotFound { .. })
        ));
    }

    #[test]
    fn instance_names_are_unescaped() {
        assert_eq!(
            instance_of("My\\.Box._earshot._udp.local.", SERVICE_TYPE),
            "My.Box"
        );
        assert_eq!(instance_of("weird", SERVICE_TYPE), "weird");
    }

    #[test]
    fn a_moved_server_is_found_again_by_instance_name_or_title() {
        let at = |ip: [u8; 4], port: u16, instance: &str, title: &str| Found {
            instance: instance.into(),
            addr: SocketAddr::from((ip, port)),
            title: title.into(),
            listeners: None,
            capacity: None,
            version: None,
        };
        let before = at([10, 0, 0, 1], 5000, "Jazz on a port 5000", "Jazz");
        let chosen = Chosen {
            found: before.clone(),
            name: None,
        };
        // Same instance on a new address.
        let moved = at([10, 0, 0, 9], 5000, "JAZZ on a port 5000", "Jazz");
        let other = at([10, 0, 0, 2], 6000, "Rock on b port 6000", "Rock");
        assert_eq!(
            chosen.rematch(&[other.clone(), moved.clone()]),
            Some(&moved)
        );
        // A new port: a new instance name, the same title.
        let new_port = at([10, 0, 0, 1], 5003, "Jazz on a port 5003", "Jazz");
        assert_eq!(
            chosen.rematch(&[other.clone(), new_port.clone()]),
            Some(&new_port)
        );
        // Two of that title: the one at the same address, else none.
        let elsewhere = at([10, 0, 0, 7], 5000, "Jazz on c port 5000", "Jazz");
        assert_eq!(
            chosen.rematch(&[elsewhere.clone(), new_port.clone()]),
            Some(&new_port)
        );
        let far = at([10, 0, 0, 8], 5000, "Jazz on d port 5000", "Jazz");
        assert_eq!(chosen.rematch(&[elsewhere.clone(), far.clone()]), None);
        assert_eq!(chosen.rematch(std::slice::from_ref(&other)), None);
        assert_eq!(chosen.rematch(&[]), None);
        // An untitled server is not matched by its (empty) title.
        let untitled = Chosen {
            found: at([10, 0, 0, 1], 5000, "x on a port 5000", ""),
            name: None,
        };
        assert_eq!(
            untitled.rematch(&[at([10, 0, 0, 1], 5001, "y on a port 5001", "")]),
            None
        );
        // The --name-of-server choice comes before the title.
        let named = Chosen {
            found: before,
            name: Some("rock".into()),
        };
        assert_eq!(
            named.rematch(&[new_port.clone(), other.clone()]),
            Some(&other)
        );
    }
}
