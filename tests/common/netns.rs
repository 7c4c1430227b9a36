//! Network namespaces for the end-to-end tests that need a real LAN (multicast, mDNS): a
//! bridge in one namespace and member namespaces joined to it by veth pairs, with addresses
//! from the benchmarking range 198.18.0.0/15 inside the namespaces only (nothing is sent on
//! the machine's own interfaces). Every namespace is deleted when the [`Lan`] drops, also when
//! the test fails.
//!
//! Needs root (`ip netns add`). [`require_netns`] skips a test loudly without it, unless
//! `EARSHOT_REQUIRE_NETNS=1` (as under `cargo xtask test`), which makes it fail instead.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Proc;

/// Runs `ip ARGS…`, failing the test with its stderr; returns its stdout.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Runs `program ARGS…`, failing the test with its stderr; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the namespaces can be built here; the reason when not.
fn netns_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (ip netns add needs it)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("no `ip` command ({e}); install iproute2")),
    }
}

/// True when the namespaces can be built; otherwise skips `what` loudly, or fails it under
/// `EARSHOT_REQUIRE_NETNS=1`.
pub fn require_netns(what: &str) -> bool {
    match netns_unavailable() {
        None => true,
        Some(why) if std::env::var("EARSHOT_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("EARSHOT_REQUIRE_NETNS=1 but network namespaces are unavailable: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: {what}: {why}");
            false
        }
    }
}

/// A bridge namespace and member namespaces on 198.18.77.0/24; every namespace is deleted on
/// drop (their veth pairs go with them). The bridge floods multicast (no IGMP snooping state
/// to wait for).
#[allow(clippy::new_without_default)]
pub struct Lan {
    /// Unique prefix of this run's names.
    prefix: String,
    /// The bridge's namespace.
    bridge: String,
    /// Every namespace made, to delete.
    made: Vec<String>,
    /// Members added so far.
    members: u32,
}

/// One namespace on a [`Lan`].
#[derive(Debug, Clone)]
pub struct Member {
    /// The namespace's name.
    pub ns: String,
    /// Its address on the LAN (`eth0`).
    pub addr: Ipv4Addr,
    /// Its port on the bridge (in the bridge's namespace).
    port: String,
}

impl Lan {
    /// An empty LAN.
    pub fn new() -> Lan {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "es{}x{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("{prefix}br");
        let mut lan = Lan {
            prefix,
            bridge: bridge.clone(),
            made: Vec::new(),
            members: 0,
        };
        ip(&["netns", "add", &bridge]);
        lan.made.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &bridge,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        lan
    }

    /// A new namespace on the bridge with address 198.18.77.N/24 and, with `multicast_route`,
    /// a route for 224.0.0.0/4 (without it a socket must name the interface to join a group).
    pub fn member(&mut self, multicast_route: bool) -> Member {
        self.members += 1;
        let n = self.members;
        let ns = format!("{}m{n}", self.prefix);
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        let port = format!("p{n}");
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge,
        ]);
        ip(&["-n", &self.bridge, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.bridge, "link", "set", &port, "up"]);
        let addr = Ipv4Addr::new(198, 18, 77, u8::try_from(n).unwrap());
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        if multicast_route {
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        Member { ns, addr, port }
    }

    /// The bridge stops passing multicast to `m` (as a switch port that filters it, or a
    /// subnet no multicast router reaches); unicast and broadcast still pass.
    pub fn block_multicast_to(&self, m: &Member) {
        run(
            "bridge",
            &[
                "-n",
                &self.bridge,
                "link",
                "set",
                "dev",
                &m.port,
                "mcast_flood",
                "off",
            ],
        );
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `program ARGS…` inside namespace `ns` (`ip netns exec` execs it: the PID is the program's).
pub fn spawn_in(ns: &str, program: &Path, args: &[&str]) -> Proc {
    let mut all: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
    all.push(program.display().to_string());
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::spawn(Path::new("ip"), &all, &[])
}

/// A UDP socket bound to `port` inside namespace `ns` that has joined `group` on the interface
/// with address `iface`: made on a thread that entered the namespace, it stays there.
pub fn group_socket_in(ns: &str, group: Ipv4Addr, port: u16, iface: Ipv4Addr) -> UdpSocket {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
            sock.join_multicast_v4(&group, &iface).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            sock
        })
        .join()
        .unwrap()
    })
}

/// Bytes sent on `eth0` of namespace `ns` so far.
pub fn tx_bytes(ns: &str) -> u64 {
    let json = ip(&["-n", ns, "-j", "-s", "link", "show", "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx bytes in {json}"))
}
