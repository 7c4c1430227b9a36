//! What the proxy did, counted exactly, per client and direction.
//!
//! # Definitions (the contract the end-to-end tests compare `listen`'s statistics with)
//! Counts come from two sources, and each field says which:
//! - *decisions* (exact by construction: the proxy chose them): `received`, `dropped`,
//!   `dropped_seqs`, `reordered`, `delayed`;
//! - *emissions*, in the order the shell really sent datagrams to the client, after each send
//!   returned: `sent`, `duplicated`, `duplicated_seqs`, `duplicates`, `out_of_order`,
//!   `unique_sent`, `lowest_seq`, `highest_seq`, `send_errors`, `unsent_seqs`, `sent_seqs`.
//!   Timers are real, so the emission order may differ from the plan; these fields never use
//!   the plan.
//!
//! For `Audio` datagrams, walking the emissions of one client in order, each datagram with
//! seq `s` is classified exactly once:
//! 1. if `s` was already emitted to this client, it is a **duplicate** (`duplicates += 1`) and
//!    nothing else — a duplicate is never also out of order, whether it is the proxy's own
//!    copy or a repeat that came from upstream;
//! 2. otherwise, if `s` is lower than the highest seq already emitted, it is **out of order**
//!    (`out_of_order += 1`) — "a datagram whose seq is lower than one already received";
//! 3. otherwise it is in order. Cases 2 and 3 count in `unique_sent`.
//!
//! `duplicated`/`duplicated_seqs` list the proxy's own extra copies that were sent (one entry
//! per copy); `duplicates` also counts any repeats the upstream itself sent. With a
//! well-behaved server the two agree. `dropped_seqs` lists audio seqs the proxy chose not to
//! send, in arrival order; `unsent_seqs` those whose send failed (normally empty).
//! [`AudioReport::lost`] is `(highest_seq − lowest_seq + 1) − unique_sent`: what a receiver
//! that got everything sent would count as lost, given it measures from the lowest seq it saw.
//! A receiver that measures from `Welcome.start_seq` to `End.last_seq` (so that loss at either
//! end counts) compares with [`AudioReport::lost_between`] instead.
//!
//! So, for a listener behind the proxy on loopback (no other loss), these hold exactly:
//! `listen.duplicates == duplicates`, `listen.out_of_order == out_of_order`,
//! `listen.received == unique_sent`, and `listen.lost` equals `lost()` or
//! `lost_between(start, last)` depending on which range the listener measures.
//!
//! On shutdown the proxy first flushes every datagram still waiting (delayed or held back), in
//! schedule order and without further waiting, so no decision is left unreported: nothing is
//! "dropped at shutdown".

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use super::Impairment;
use super::link::{Transmit, Treatment};

/// Scalar counters of one direction (also summed over all clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DatagramCounts {
    /// Datagrams that came into the proxy (decision side).
    pub received: u64,
    /// Datagrams actually sent, duplicate copies included (emission side).
    pub sent: u64,
    /// Datagrams the proxy chose to drop (decision side).
    pub dropped: u64,
    /// Extra copies actually sent (emission side).
    pub duplicated: u64,
    /// Datagrams held back for reordering (decision side; whether one came out late is what
    /// `out_of_order` measures).
    pub reordered: u64,
    /// Datagrams given a non-zero extra delay (decision side).
    pub delayed: u64,
    /// Sends that failed: those datagrams did not leave.
    pub send_errors: u64,
    /// Bytes of the `Audio` datagrams that came in (decision side): the stream as the server
    /// sent it, UDP payloads with headers.
    pub audio_bytes: u64,
    /// Bytes of the repair datagrams (`Parity`, `Resent`) that came in (decision side): what
    /// repair cost on top of the stream.
    pub repair_bytes: u64,
}

impl DatagramCounts {
    fn add(&mut self, o: &DatagramCounts) {
        self.received += o.received;
        self.sent += o.sent;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.delayed += o.delayed;
        self.send_errors += o.send_errors;
        self.audio_bytes += o.audio_bytes;
        self.repair_bytes += o.repair_bytes;
    }
}

/// The `Audio` part of one direction, seq by seq; see the module docs for each rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AudioReport {
    /// Audio datagrams that came into the proxy.
    pub received: u64,
    /// Audio datagrams actually sent, copies included.
    pub sent: u64,
    /// Distinct audio seqs sent.
    pub unique_sent: u64,
    /// Sent datagrams whose seq had already been sent (rule 1).
    pub duplicates: u64,
    /// Sent datagrams lower than the highest already sent, first copies only (rule 2).
    pub out_of_order: u64,
    /// Lowest seq sent.
    pub lowest_seq: Option<u64>,
    /// Highest seq sent.
    pub highest_seq: Option<u64>,
    /// Seqs the proxy dropped, in arrival order.
    pub dropped_seqs: Vec<u64>,
    /// Seqs of the proxy's extra copies that were sent, in emission order.
    pub duplicated_seqs: Vec<u64>,
    /// Seqs whose send failed.
    pub unsent_seqs: Vec<u64>,
    /// Every audio seq sent, copies included, in emission order: the log every other audio
    /// field is computed from, for diagnosing a mismatch with a listener.
    pub sent_seqs: Vec<u64>,
}

impl AudioReport {
    /// What a receiver that got every sent datagram counts as lost, measuring from the lowest
    /// seq it saw to the highest: `(highest − lowest + 1) − unique_sent`.
    pub fn lost(&self) -> u64 {
        match (self.lowest_seq, self.highest_seq) {
            (Some(lo), Some(hi)) => (hi - lo + 1).saturating_sub(self.unique_sent),
            _ => 0,
        }
    }

    /// Seqs in `first..=last` the proxy dropped or failed to send, each counted once: what a
    /// receiver that measures from `Welcome.start_seq` to `End.last_seq` counts as lost,
    /// assuming the server sent every seq of that range once (as `streamd` does).
    pub fn lost_between(&self, first: u64, last: u64) -> u64 {
        let mut gone: Vec<u64> = self
            .dropped_seqs
            .iter()
            .chain(&self.unsent_seqs)
            .copied()
            .filter(|s| (first..=last).contains(s))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        gone.len() as u64
    }
}

/// Everything about one direction of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionReport {
    /// All datagrams.
    #[serde(flatten)]
    pub counts: DatagramCounts,
    /// Audio datagrams, seq by seq.
    pub audio: AudioReport,
}

/// One client address and both its directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientReport {
    /// The listener's address as the proxy saw it.
    pub client: SocketAddr,
    /// Order of first contact, from 0: also the engine's stream number for this client.
    pub index: u64,
    /// Server → client: the impaired direction.
    pub downstream: DirectionReport,
    /// Client → server: relayed untouched.
    pub upstream: DirectionReport,
}

/// The proxy's whole account, printed at exit and written by `--report-json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyReport {
    /// Where listeners connected.
    pub listen: SocketAddr,
    /// The server.
    pub upstream: SocketAddr,
    /// What was configured.
    pub impairment: Impairment,
    /// Server → client counts summed over clients.
    pub downstream: DatagramCounts,
    /// Client → server counts summed over clients.
    pub upstream_counts: DatagramCounts,
    /// Datagrams from new addresses refused because the client table was full.
    pub refused: u64,
    /// Per client, in order of first contact.
    pub clients: Vec<ClientReport>,
}

impl ProxyReport {
    /// Builds the totals from the per-client reports.
    pub fn new(
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
        refused: u64,
        clients: Vec<ClientReport>,
    ) -> Self {
        let mut down = DatagramCounts::default();
        let mut up = DatagramCounts::default();
        for c in &clients {
            down.add(&c.downstream.counts);
            up.add(&c.upstream.counts);
        }
        Self {
            listen,
            upstream,
            impairment,
            downstream: down,
            upstream_counts: up,
            refused,
            clients,
        }
    }

    /// The report of the client at `addr`, for tests that know their listener's address.
    pub fn client(&self, addr: SocketAddr) -> Option<&ClientReport> {
        self.clients.iter().find(|c| c.client == addr)
    }
}

impl fmt::Display for ProxyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.impairment;
        writeln!(
            f,
            "impair {} -> {}: loss {:.2}% burst {} jitter {:?} reorder {:.2}% dup {:.2}% seed {}{}",
            self.listen,
            self.upstream,
            i.loss * 100.0,
            i.burst.map_or("-".to_string(), |b| b.to_string()),
            i.jitter,
            i.reorder * 100.0,
            i.dup * 100.0,
            i.seed,
            if i.impair_control {
                " (control too)"
            } else {
                ""
            }
        )?;
        let d = &self.downstream;
        writeln!(
            f,
            "server->clients: received {} sent {} dropped {} duplicated {} reordered {} \
             delayed {} send_errors {} audio_bytes {} repair_bytes {}",
            d.received,
            d.sent,
            d.dropped,
            d.duplicated,
            d.reordered,
            d.delayed,
            d.send_errors,
            d.audio_bytes,
            d.repair_bytes
        )?;
        let u = &self.upstream_counts;
        writeln!(
            f,
            "clients->server: received {} sent {} send_errors {}",
            u.received, u.sent, u.send_errors
        )?;
        if self.refused > 0 {
            writeln!(f, "refused (client table full): {}", self.refused)?;
        }
        for c in &self.clients {
            let a = &c.downstream.audio;
            writeln!(
                f,
                "  client {} {}: audio received {} sent {} dropped {} duplicated {} \
                 out_of_order {} lost {}",
                c.index,
                c.client,
                a.received,
                a.sent,
                a.dropped_seqs.len(),
                a.duplicated_seqs.len(),
                a.out_of_order,
                a.lost()
            )?;
        }
        Ok(())
    }
}

/// Running counters of one direction: decisions via [`Tally::on_handled`], emissions via
/// [`Tally::on_sent`]. Pure, so the shell's bookkeeping is tested without sockets.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The report so far.
    report: DirectionReport,
    /// Audio seqs already sent: the duplicate rule.
    seen: HashSet<u64>,
}

impl Tally {
    /// Records the decision about one incoming datagram.
    pub fn on_handled(&mut self, audio_seq: Option<u64>, h: &Treatment) {
        let c = &mut self.report.counts;
        c.received += 1;
        if let Some(s) = audio_seq {
            self.report.audio.received += 1;
            if h.decision.drop {
                self.report.audio.dropped_seqs.push(s);
            }
        }
        if h.decision.drop {
            c.dropped += 1;
        }
        if h.decision.hold {
            c.reordered += 1;
        }
        if !h.decision.delay.is_zero() {
            c.delayed += 1;
        }
    }

    /// Counts the bytes of one incoming datagram as stream (`Audio`) or repair (`Parity`,
    /// `Resent`); anything else is neither.
    pub fn on_bytes(&mut self, datagram: &[u8]) {
        let c = &mut self.report.counts;
        if super::link::is_repair(datagram) {
            c.repair_bytes += datagram.len() as u64;
        } else if datagram.len() >= proto::limits::HEADER_LEN
            && datagram[..2] == proto::MAGIC
            && datagram[3] == proto::MessageType::Audio as u8
        {
            c.audio_bytes += datagram.len() as u64;
        }
    }

    /// Records one send attempt, in the order the shell made them.
    pub fn on_sent(&mut self, t: &Transmit, ok: bool) {
        let c = &mut self.report.counts;
        let a = &mut self.report.audio;
        if !ok {
            c.send_errors += 1;
            if let Some(s) = t.audio_seq {
                a.unsent_seqs.push(s);
            }
            return;
        }
        c.sent += 1;
        if t.copy {
            c.duplicated += 1;
        }
        let Some(s) = t.audio_seq else { return };
        a.sent += 1;
        a.sent_seqs.push(s);
        if t.copy {
            a.duplicated_seqs.push(s);
        }
        if !self.seen.insert(s) {
            a.duplicates += 1;
            return;
        }
        a.unique_sent += 1;
        if a.highest_seq.is_some_and(|h| s < h) {
            a.out_of_order += 1;
        }
        a.highest_seq = Some(a.highest_seq.map_or(s, |h| h.max(s)));
        a.lowest_seq = Some(a.lowest_seq.map_or(s, |l| l.min(s)));
    }

    /// The report so far.
    pub fn report(&self) -> &DirectionReport {
        &self.report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn sent(t: &mut Tally, seq: u64, copy: bool) {
        t.on_sent(
            &Transmit {
                bytes: Bytes::new(),
                audio_seq: Some(seq),
                copy,
            },
            true,
        );
    }

    #[test]
    fn duplicates_are_never_out_of_order() {
        let mut t = Tally::default();
        for (s, copy) in [
            (0, false),
            (2, false),
            (1, false),
            (2, true),
            (1, true),
            (3, false),
            (0, false),
        ] {
            sent(&mut t, s, copy);
        }
        let a = &t.report().audio;
        assert_eq!(a.out_of_order, 1, "only the first 1 is out of order");
        assert_eq!(a.duplicates, 3, "copies of 2 and 1, and the repeated 0");
        assert_eq!(a.duplicated_seqs, vec![2, 1]);
        assert_eq!(a.sent_seqs, vec![0, 2, 1, 2, 1, 3, 0]);
        assert_eq!(a.unique_sent, 4);
        assert_eq!((a.lowest_seq, a.highest_seq), (Some(0), Some(3)));
        assert_eq!(a.lost(), 0);
        assert_eq!(t.report().counts.sent, 7);
        assert_eq!(t.report().counts.duplicated, 2);
    }

    #[test]
    fn bytes_split_into_stream_and_repair() {
        let mut t = Tally::default();
        let mut a = bytes::BytesMut::new();
        proto::encode_audio(1, 0, &[0u8; 100], &mut a);
        let mut r = bytes::BytesMut::new();
        proto::encode_resent(1, 0, &[0u8; 100], &mut r);
        t.on_bytes(&a);
        t.on_bytes(&a);
        t.on_bytes(&r);
        t.on_bytes(b"not ours at all");
        let c = t.report().counts;
        assert_eq!(c.audio_bytes, 2 * a.len() as u64);
        assert_eq!(c.repair_bytes, r.len() as u64);
    }

    #[test]
    fn gaps_are_lost_and_failed_sends_are_not_sent() {
        let mut t = Tally::default();
        sent(&mut t, 10, false);
        sent(&mut t, 13, false);
        t.on_sent(
            &Transmit {
                bytes: Bytes::new(),
                audio_seq: Some(14),
                copy: false,
            },
            false,
        );
        let a = &t.report().audio;
        assert_eq!(a.lost(), 2);
        assert_eq!(
            a.lost_between(10, 14),
            1,
            "only the failed 14 is known to the proxy"
        );
        assert_eq!(a.unsent_seqs, vec![14]);
        assert_eq!(t.report().counts.send_errors, 1);
    }
}
