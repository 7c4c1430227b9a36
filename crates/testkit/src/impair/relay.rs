//! The proxy's sans-IO core: the client table, two [`ImpairedLink`]s and two [`Tally`]s per
//! client.
//!
//! The shell tells it what arrived (`handle`) and what it sent (`on_sent`); the core says what
//! to send (`poll_transmit`) and when to wake (`poll_timeout`). Time is always passed in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use proto::Message;

use super::Impairment;
use super::link::{ImpairedLink, Transmit};
use super::report::{ClientReport, ProxyReport, Tally};

/// Most client addresses one proxy relays for: each costs a socket and a task, and a test
/// proxy never needs more; datagrams from further new addresses are refused and counted.
pub const MAX_CLIENTS: usize = 1024;

/// A direction of travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Server → client: the impaired direction.
    Downstream,
    /// Client → server: relayed untouched.
    Upstream,
}

/// One client's state.
#[derive(Debug)]
struct Client {
    /// The listener's address.
    addr: SocketAddr,
    /// Server → client schedule.
    down: ImpairedLink,
    /// Client → server schedule (transparent).
    up: ImpairedLink,
    /// Server → client counters.
    down_tally: Tally,
    /// Client → server counters.
    up_tally: Tally,
}

/// The client table and every link: the whole proxy minus sockets and timers.
#[derive(Debug)]
pub struct ProxyCore {
    /// Where listeners connect (for the report).
    listen: SocketAddr,
    /// The server (for the report).
    upstream: SocketAddr,
    /// The configuration every downstream link uses.
    imp: Impairment,
    /// Clients in order of first contact.
    clients: Vec<Client>,
    /// Address → index into `clients`.
    by_addr: HashMap<SocketAddr, usize>,
    /// Datagrams refused because the table was full.
    refused: u64,
}

/// The `seq` of a datagram if it is a valid `Audio`; anything else is control.
pub(crate) fn audio_seq(datagram: &[u8]) -> Option<u64> {
    match proto::decode(datagram) {
        Ok(p) if matches!(p.msg, Message::Audio(_)) => Some(p.seq),
        _ => None,
    }
}

impl ProxyCore {
    /// An empty table relaying to `upstream` with `imp` on every downstream link.
    pub fn new(listen: SocketAddr, upstream: SocketAddr, imp: Impairment) -> Self {
        Self {
            listen,
            upstream,
            imp,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            refused: 0,
        }
    }

    /// The index of a known client.
    pub fn lookup(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// Adds a client (the shell has opened its upstream socket); `None` when the table is full
    /// (counted as refused).
    pub fn add_client(&mut self, addr: SocketAddr) -> Option<usize> {
        if let Some(i) = self.lookup(addr) {
            return Some(i);
        }
        if self.clients.len() >= MAX_CLIENTS {
            self.refused += 1;
            return None;
        }
        let idx = self.clients.len();
        self.clients.push(Client {
            addr,
            down: ImpairedLink::new(&self.imp, idx as u64),
            up: ImpairedLink::new(&Impairment::none(), idx as u64),
            down_tally: Tally::default(),
            up_tally: Tally::default(),
        });
        self.by_addr.insert(addr, idx);
        Some(idx)
    }

    /// Counts a datagram from a new address that could not be served (e.g. no socket).
    pub fn refuse(&mut self) {
        self.refused += 1;
    }

    /// The address of client `idx`.
    pub fn addr(&self, idx: usize) -> Option<SocketAddr> {
        self.clients.get(idx).map(|c| c.addr)
    }

    /// A datagram for client `idx` arrived at `now` travelling `dir`.
    pub fn handle(&mut self, now: Instant, idx: usize, dir: Dir, bytes: Bytes) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let seq = audio_seq(&bytes);
        let (link, tally) = match dir {
            Dir::Downstream => (&mut c.down, &mut c.down_tally),
            Dir::Upstream => (&mut c.up, &mut c.up_tally),
        };
        tally.on_bytes(&bytes);
        let h = link.handle(now, bytes, seq);
        tally.on_handled(seq, &h);
    }

    /// The next datagram to send at `now`: client index, direction, datagram. Per link the
    /// order is the link's; send in the order given and report each with [`Self::on_sent`].
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(usize, Dir, Transmit)> {
        for (i, c) in self.clients.iter_mut().enumerate() {
            if let Some(t) = c.up.poll_transmit(now) {
                return Some((i, Dir::Upstream, t));
            }
            if let Some(t) = c.down.poll_transmit(now) {
                return Some((i, Dir::Downstream, t));
            }
        }
        None
    }

    /// Records the outcome of sending a datagram `poll_transmit` gave out.
    pub fn on_sent(&mut self, idx: usize, dir: Dir, t: &Transmit, ok: bool) {
        if let Some(c) = self.clients.get_mut(idx) {
            match dir {
                Dir::Downstream => c.down_tally.on_sent(t, ok),
                Dir::Upstream => c.up_tally.on_sent(t, ok),
            }
        }
    }

    /// When to call `poll_transmit` next; `None` when nothing waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.clients
            .iter()
            .flat_map(|c| [c.up.poll_timeout(), c.down.poll_timeout()])
            .flatten()
            .min()
    }

    /// Datagrams still waiting, over all links.
    pub fn pending(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.up.pending() + c.down.pending())
            .sum()
    }

    /// The account so far.
    pub fn report(&self) -> ProxyReport {
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| ClientReport {
                client: c.addr,
                index: i as u64,
                downstream: c.down_tally.report().clone(),
                upstream: c.up_tally.report().clone(),
            })
            .collect();
        ProxyReport::new(
            self.listen,
            self.upstream,
            self.imp.clone(),
            self.refused,
            clients,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    use proto::{Audio, End, EndReason, Packet};

    fn audio(seq: u64) -> Bytes {
        proto::encode_to_bytes(&Packet::new(
            seq,
            Message::Audio(Audio {
                ts: seq * 10,
                payload: Bytes::from_static(&[0; 40]),
            }),
        ))
        .unwrap()
    }

    fn end(last: u64) -> Bytes {
        proto::encode_to_bytes(&Packet::new(
            0,
            Message::End(End {
                reason: EndReason::Finished,
                last_seq: Some(last),
            }),
        ))
        .unwrap()
    }

    /// Runs a whole stream through a core in simulated time: one audio datagram every 5 ms,
    /// then `End`, polling every millisecond and finally flushing.
    fn simulate(imp: &Impairment, n: u64) -> (Vec<Transmit>, ProxyReport) {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut core = ProxyCore::new(a, a, imp.clone());
        let c = core.add_client("127.0.0.1:2".parse().unwrap()).unwrap();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let pump = |core: &mut ProxyCore, now: Instant, out: &mut Vec<Transmit>| {
            while let Some((i, d, t)) = core.poll_transmit(now) {
                core.on_sent(i, d, &t, true);
                if d == Dir::Downstream {
                    out.push(t);
                }
            }
        };
        for ms in 0..(n * 5 + 50) {
            let now = t0 + Duration::from_millis(ms);
            if ms % 5 == 0 && ms / 5 < n {
                core.handle(now, c, Dir::Downstream, audio(ms / 5));
            }
            if ms == n * 5 {
                core.handle(now, c, Dir::Downstream, end(n - 1));
            }
            pump(&mut core, now, &mut out);
        }
        pump(&mut core, t0 + Duration::from_secs(3600), &mut out);
        assert_eq!(core.pending(), 0);
        (out, core.report())
    }

    fn heavy() -> Impairment {
        Impairment {
            loss: 0.1,
            burst: Some(3.0),
            jitter: Duration::from_millis(12),
            reorder: 0.05,
            dup: 0.05,
            seed: 7,
            impair_control: false,
        }
    }

    #[test]
    fn simulated_runs_are_identical_and_accounted() {
        let (out1, r1) = simulate(&heavy(), 2000);
        let (out2, r2) = simulate(&heavy(), 2000);
        assert_eq!(out1, out2);
        assert_eq!(r1, r2);
        let d = &r1.clients[0].downstream;
        let a = &d.audio;
        assert_eq!(a.received, 2000);
        assert_eq!(
            a.received,
            a.dropped_seqs.len() as u64 + a.unique_sent,
            "every audio datagram is dropped or sent"
        );
        assert_eq!(a.sent, a.unique_sent + a.duplicates);
        assert_eq!(a.duplicates, a.duplicated_seqs.len() as u64);
        assert!(a.out_of_order > 0, "jitter and hold-backs reorder");
        assert_eq!(d.counts.received, 2001, "audio plus one End");
        // The End came through untouched, after every audio datagram.
        let last = out1.last().unwrap();
        assert_eq!(last.audio_seq, None);
        assert_eq!(last.bytes, end(1999));
    }

    #[test]
    fn end_never_overtakes_audio_whatever_the_seed() {
        for seed in 0..40 {
            let imp = Impairment {
                jitter: Duration::from_millis(40),
                reorder: 0.2,
                seed,
                ..heavy()
            };
            let (out, _) = simulate(&imp, 60);
            assert_eq!(out.last().unwrap().audio_seq, None, "seed {seed}");
        }
    }

    #[test]
    fn transparent_proxy_changes_nothing() {
        let (out, r) = simulate(&Impairment::none(), 300);
        let seqs: Vec<_> = out.iter().filter_map(|t| t.audio_seq).collect();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
        let a = &r.clients[0].downstream.audio;
        assert_eq!((a.out_of_order, a.duplicates, a.lost()), (0, 0, 0));
    }

    #[test]
    fn control_untouched_unless_asked() {
        let all_loss = Impairment {
            loss: 1.0,
            ..Impairment::none()
        };
        let (out, r) = simulate(&all_loss, 50);
        assert_eq!(out.len(), 1, "only End survives");
        assert_eq!(r.clients[0].downstream.audio.dropped_seqs.len(), 50);
        let control_too = Impairment {
            impair_control: true,
            ..all_loss
        };
        let (out, _) = simulate(&control_too, 50);
        assert!(out.is_empty());
    }
}
