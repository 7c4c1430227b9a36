//! What the kernel says about processes and sockets: CPU seconds and memory of a process from
//! `/proc/PID/stat`, its threads' `schedstat` and `/proc/PID/status`, our own threads' CPU from
//! `getrusage`, and the receive-queue drops of given UDP sockets from `/proc/net/udp`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::{SysconfVar, sysconf};

/// CPU time of a process so far, user + system. `/proc/PID/stat` counts it in clock ticks
/// (10 ms), each of its two fields truncated: ±20 ms on a ten-second run of a server using 1 %
/// of a core is ±20 %. The run time of each live thread (`/proc/PID/task/*/schedstat`) is in
/// nanoseconds but forgets threads that have exited; the larger of the two is kept, so a
/// reading is exact while the threads live on and never below the tick count.
pub fn process_cpu(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu(&stat, clock_ticks())
        .ok_or_else(|| std::io::Error::other(format!("unexpected /proc/{pid}/stat: {stat:.80}")))?;
    Ok(ticks.max(threads_run_time(pid).unwrap_or(Duration::ZERO)))
}

/// The summed run time of a process's live threads, from their `schedstat`s.
fn threads_run_time(pid: u32) -> std::io::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read: it no longer counts.
        if let Some(t) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| parse_schedstat(&s))
        {
            total += t;
        }
    }
    Ok(total)
}

/// The first field of a `schedstat` line: time spent running, in nanoseconds.
pub fn parse_schedstat(line: &str) -> Option<Duration> {
    Some(Duration::from_nanos(
        line.split_whitespace().next()?.parse().ok()?,
    ))
}

/// Clock ticks per second of the `stat` CPU fields (100 on Linux unless configured otherwise).
fn clock_ticks() -> u64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name (field 2) may hold spaces
/// and parentheses, so the fields are counted after its last `)`.
pub fn parse_stat_cpu(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // field 3 (state) is the first after ')'
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks * 1_000_000_000 / ticks_per_s.max(1),
    ))
}

/// A `kB` field (e.g. `VmRSS`, `VmHWM`) of `/proc/PID/status`, in KiB.
pub fn process_status_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, field)
        .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Finds `field:   1234 kB` in a `status` text.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system) of the calling process or thread.
pub fn own_cpu(who: UsageWho) -> Duration {
    match getrusage(who) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(tv.tv_sec().max(0) as u64)
                    + Duration::from_micros(tv.tv_usec().max(0) as u64)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Receive-queue overflow drops of the given local IPv4 UDP addresses, from `/proc/net/udp`'s
/// `drops` column (sockets not found count 0). This is how the load tool proves it kept up:
/// a datagram it was too slow to read would be dropped here, not lost by the server.
pub fn udp_drops(locals: &[SocketAddr]) -> std::io::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/udp")?;
    let drops = parse_udp_drops(&table);
    Ok(locals
        .iter()
        .filter_map(|a| drops.get(&proc_net_key(*a)?))
        .sum())
}

/// `/proc/net/udp`'s form of an IPv4 local address: `0100007F:1F90` for 127.0.0.1:8080 (the
/// address as the kernel's native-endian u32).
pub fn proc_net_key(a: SocketAddr) -> Option<String> {
    match a.ip() {
        IpAddr::V4(ip) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(ip.octets()),
            a.port()
        )),
        IpAddr::V6(_) => None,
    }
}

/// local address → drops, from the text of `/proc/net/udp`.
pub fn parse_udp_drops(table: &str) -> HashMap<String, u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let drops = f.last()?.parse().ok()?;
            Some((local.to_string(), drops))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_the_command() {
        let stat = "4242 (my (odd) cmd) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn status_fields_in_kib() {
        let s = "Name:\tx\nVmHWM:\t  5120 kB\nVmRSS:\t  4096 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(4096));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn udp_table_drops_by_local_address() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                 1: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17\n";
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_key(a).unwrap(), "0100007F:1F90");
            assert_eq!(parse_udp_drops(t).get("0100007F:1F90"), Some(&17));
        }
    }

    #[test]
    fn schedstat_is_nanoseconds_running() {
        assert_eq!(
            parse_schedstat("123456789 2000 17\n"),
            Some(Duration::from_nanos(123_456_789))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn a_process_reading_counts_every_live_thread_to_the_nanosecond() {
        use std::sync::{Arc, Barrier};
        let pid = std::process::id();
        let before = process_cpu(pid).unwrap();
        // Two threads each run 35 ms by their own clock, then wait (alive) until read.
        let (spun, read) = (Arc::new(Barrier::new(3)), Arc::new(Barrier::new(3)));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (spun, read) = (spun.clone(), read.clone());
                std::thread::spawn(move || {
                    let t0 = own_cpu(UsageWho::RUSAGE_THREAD);
                    while own_cpu(UsageWho::RUSAGE_THREAD) - t0 < Duration::from_millis(35) {}
                    spun.wait();
                    read.wait();
                })
            })
            .collect();
        spun.wait();
        let grown = process_cpu(pid).unwrap() - before;
        let live = threads_run_time(pid).unwrap();
        read.wait();
        for t in threads {
            t.join().unwrap();
        }
        assert!(grown >= Duration::from_millis(70), "{grown:?}");
        // Not a whole number of 10 ms clock ticks (a chance of 1 in 10^7 of being one).
        assert_ne!(live.subsec_nanos() % 10_000_000, 0, "{live:?}");
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(process_cpu(pid).is_ok());
    }
}
