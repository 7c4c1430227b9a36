//! The rejoin policy of `listen --stay`, sans-IO: when a [`crate::Session`] ends for any reason
//! but the user's interrupt, a new one is started after a backoff; the statistics of every
//! session that joined are kept, per session and in total, with the number and length of the
//! outages between them.
//!
//! The shell ([`crate::client`]) tells [`Stay`] what happened ([`Stay::sent`],
//! [`Stay::joined`], [`Stay::ended`]) with its `now`, asks [`Stay::rejoin_at`] when to start the
//! next session, and logs the [`Transition`]s it returns: one line per change of state, never one
//! per retry.
//!
//! The backoff is measured from the last datagram the listener sent (a session's own handshake
//! retries count), so however a session ended the server is asked again at least every
//! [`REJOIN_MAX`]: a server that comes back is found within that time plus one round trip.
//!
//! A listener that found its server by mDNS ([`Stay::with_rediscovery`]) also looks for it
//! again when it may have moved (a new port or address): after [`REDISCOVER_AFTER`] failed
//! rejoins in a row [`Stay::poll_rediscover`] tells the shell to browse, then at growing gaps
//! ([`REDISCOVER_GAP_FIRST`] doubling to [`REDISCOVER_GAP_MAX`]) while rejoining keeps
//! failing; [`Stay::rediscovered`] says what the browse gave. Rejoin attempts at the last known
//! address go on in between.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{ExitReason, Stats};

/// First delay before rejoining: a few LAN round trips, so a server restarted at once (or an
/// eviction by a server that lost its state) costs a quarter of a second of audio.
pub const REJOIN_FIRST: Duration = Duration::from_millis(250);

/// Cap on the rejoin delay: the listener asks at least this often while the server is away, so
/// its return is noticed within 2 s (the same cap as the handshake's own retries), and a server
/// that refuses us is asked no more than once per 2 s.
pub const REJOIN_MAX: Duration = Duration::from_secs(2);

/// Failed rejoins in a row after which a discovered server is looked for again: one, because a
/// failed handshake already means `--timeout` (3 s by default) without an answer after the
/// stream was lost, which a server that merely restarted in place does not cause.
pub const REDISCOVER_AFTER: u32 = 1;

/// Least time between the first two browses of an outage: a server starting up announces
/// itself at once, so a second look soon after the first catches one that was slow to start.
pub const REDISCOVER_GAP_FIRST: Duration = Duration::from_secs(5);

/// Cap on the time between browses while the server stays away: each browse multicasts a
/// query to every host on the link, so a long outage costs one query a minute, and a server
/// back at a new address is found within a minute.
pub const REDISCOVER_GAP_MAX: Duration = Duration::from_secs(60);

/// How a session that [`Stay`] is told about ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    /// The session had joined and its stream ended; its final statistics.
    Stream(Stats),
    /// The handshake failed (no answer, refused, an unplayable stream); a short reason for the
    /// log, such as `no answer`, `server full`.
    Handshake(String),
}

/// A change of state for the shell to log, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The stream was lost for `reason`; the listener keeps trying.
    Lost {
        /// Why the session ended (`timeout`, `evicted`, `finished`, `shutdown`).
        reason: ExitReason,
    },
    /// A handshake failed for a reason other than the previous attempt's.
    Failing {
        /// The reason, as [`SessionEnd::Handshake`] gave it.
        reason: String,
    },
    /// Joined again after an outage of `after`.
    Rejoined {
        /// From the end of the previous stream to this join.
        after: Duration,
    },
}

/// Where the listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A session is handshaking or streaming.
    Running,
    /// Waiting to start the next session.
    Waiting,
    /// The user interrupted: no more sessions.
    Stopped,
}

/// The statistics of a staying listener: totals over every session, the `--stats-json`
/// contract's fields with their meaning kept, plus the sessions and outages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StayStats {
    /// Sums over the sessions (jitter: their mean weighted by datagrams received;
    /// `end_reason`: why the last one ended).
    #[serde(flatten)]
    pub total: Stats,
    /// Sessions that joined.
    pub session_count: u64,
    /// Times the stream was lost (a session ended other than by the user's interrupt).
    pub outages: u64,
    /// Time without a stream between losing it and joining again (an outage still going on at
    /// exit counts up to then), milliseconds.
    pub outage_ms: u64,
    /// Each session's own statistics, in order.
    pub sessions: Vec<Stats>,
}

impl StayStats {
    /// The JSON object of `--stats-json` with `--stay`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The rejoin policy and the cumulative statistics of `listen --stay`.
#[derive(Debug, Clone)]
pub struct Stay {
    state: State,
    /// The delay after the next failure.
    backoff: Duration,
    /// When the listener last sent a datagram.
    last_sent: Option<Instant>,
    /// When the next session starts (while waiting).
    rejoin_at: Option<Instant>,
    /// Since when there is no stream (the first session has not joined yet, or an outage).
    lost_since: Option<Instant>,
    /// Whether any session joined yet (before, failures are not outages).
    ever_joined: bool,
    /// The reason of the last failed handshake in a row, to log each new one once.
    last_failure: Option<String>,
    /// Completed outages' total.
    outage_total: Duration,
    outages: u64,
    sessions: Vec<Stats>,
    /// Whether the server was found by mDNS and may be looked for again.
    rediscover: bool,
    /// Failed handshakes since the last join (or the start).
    failures: u32,
    /// No browse before this (none yet this outage: `None`).
    next_browse: Option<Instant>,
    /// The gap after the next browse.
    browse_gap: Duration,
}

impl Stay {
    /// A listener whose first session starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: State::Running,
            backoff: REJOIN_FIRST,
            last_sent: None,
            rejoin_at: None,
            lost_since: Some(now),
            ever_joined: false,
            last_failure: None,
            outage_total: Duration::ZERO,
            outages: 0,
            sessions: Vec::new(),
            rediscover: false,
            failures: 0,
            next_browse: None,
            browse_gap: REDISCOVER_GAP_FIRST,
        }
    }

    /// The server was found by mDNS: look for it again when rejoining fails
    /// ([`Self::poll_rediscover`]).
    pub fn with_rediscovery(mut self) -> Self {
        self.rediscover = true;
        self
    }

    /// Whether the shell should browse for the server now, while waiting to rejoin; if so the
    /// browse counts as started at `now` (the next one is due a gap later, after another
    /// failure).
    pub fn poll_rediscover(&mut self, now: Instant) -> bool {
        let due = self.rediscover
            && self.state == State::Waiting
            && self.failures >= REDISCOVER_AFTER
            && self.next_browse.is_none_or(|t| now >= t);
        if due {
            self.next_browse = Some(now + self.browse_gap);
            self.browse_gap = (self.browse_gap * 2).min(REDISCOVER_GAP_MAX);
        }
        due
    }

    /// The browse ended at `now`; `moved` when it found the server at another address, which
    /// the next session joins at once.
    pub fn rediscovered(&mut self, now: Instant, moved: bool) {
        if moved && self.state == State::Waiting {
            self.rejoin_at = Some(now);
            self.backoff = REJOIN_FIRST;
            self.failures = 0;
        }
    }

    /// The shell sent a datagram at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// The running session joined at `now`; the backoff starts over.
    pub fn joined(&mut self, now: Instant) -> Option<Transition> {
        self.backoff = REJOIN_FIRST;
        self.last_failure = None;
        self.failures = 0;
        self.next_browse = None;
        self.browse_gap = REDISCOVER_GAP_FIRST;
        let since = self.lost_since.take();
        let was_lost = std::mem::replace(&mut self.ever_joined, true);
        match since {
            Some(t) if was_lost => {
                let after = now.saturating_duration_since(t);
                self.outage_total += after;
                Some(Transition::Rejoined { after })
            }
            _ => None,
        }
    }

    /// The running session ended at `now` (not by the user's interrupt: see
    /// [`Self::interrupt`]). Returns the transition to log, if any; the next session starts at
    /// [`Self::rejoin_at`].
    pub fn ended(&mut self, now: Instant, end: SessionEnd) -> Option<Transition> {
        if self.state == State::Stopped {
            return None;
        }
        let from = self.last_sent.unwrap_or(now);
        self.rejoin_at = Some((from + self.backoff).max(now));
        self.backoff = (self.backoff * 2).min(REJOIN_MAX);
        self.state = State::Waiting;
        match end {
            SessionEnd::Stream(stats) => {
                let reason = stats.end_reason;
                self.sessions.push(stats);
                self.outages += 1;
                self.lost_since = Some(now);
                self.last_failure = None;
                Some(Transition::Lost { reason })
            }
            SessionEnd::Handshake(reason) => {
                self.failures = self.failures.saturating_add(1);
                if self.last_failure.as_deref() == Some(reason.as_str()) {
                    None
                } else {
                    self.last_failure = Some(reason.clone());
                    Some(Transition::Failing { reason })
                }
            }
        }
    }

    /// The user interrupted at `now`; `last` is the running session's statistics if it had
    /// joined. No session starts after this.
    pub fn interrupt(&mut self, now: Instant, last: Option<Stats>) {
        if self.state == State::Stopped {
            return;
        }
        if let Some(s) = last {
            self.sessions.push(s);
        }
        if self.ever_joined
            && let Some(t) = self.lost_since.take()
        {
            self.outage_total += now.saturating_duration_since(t);
        }
        self.state = State::Stopped;
        self.rejoin_at = None;
    }

    /// When the next session should start, while waiting for it.
    pub fn rejoin_at(&self) -> Option<Instant> {
        (self.state == State::Waiting)
            .then_some(self.rejoin_at)
            .flatten()
    }

    /// Whether the next session is due at `now`; if so the listener counts as running again.
    pub fn poll_rejoin(&mut self, now: Instant) -> bool {
        match self.rejoin_at() {
            Some(at) if now >= at => {
                self.state = State::Running;
                self.rejoin_at = None;
                true
            }
            _ => false,
        }
    }

    /// Whether the user interrupted.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Sessions that joined so far.
    pub fn sessions(&self) -> &[Stats] {
        &self.sessions
    }

    /// The statistics so far: totals, sessions and outages. `end_reason` is the last session's,
    /// or `interrupted` when none joined.
    pub fn stats(&self) -> StayStats {
        let end_reason = if self.state == State::Stopped {
            ExitReason::Interrupted
        } else {
            self.sessions
                .last()
                .map_or(ExitReason::Interrupted, |s| s.end_reason)
        };
        StayStats {
            total: total(&self.sessions, end_reason),
            session_count: self.sessions.len() as u64,
            outages: self.outages,
            outage_ms: self.outage_total.as_millis() as u64,
            sessions: self.sessions.clone(),
        }
    }
}

/// Sums the sessions' counters; jitter is their mean weighted by datagrams received.
fn total(sessions: &[Stats], end_reason: ExitReason) -> Stats {
    let mut t = Stats {
        expected: 0,
        received: 0,
        lost: 0,
        out_of_order: 0,
        duplicates: 0,
        late: 0,
        jitter_ms: 0.0,
        underruns: 0,
        recovered_fec: 0,
        recovered_retransmit: 0,
        concealed_ms: 0,
        played_ms: 0,
        end_reason,
        garbage: 0,
        foreign: 0,
        codec: sessions.last().map(|s| s.codec.clone()).unwrap_or_default(),
        bytes_received: 0,
        clock_offset_ms: 0.0,
        drift_ppm: 0.0,
        sync_error_ms_p99: 0.0,
        resyncs: 0,
        transport: sessions
            .last()
            .map(|s| s.transport.clone())
            .unwrap_or_else(|| "unicast".to_owned()),
    };
    let mut weighted = 0.0;
    for s in sessions {
        t.clock_offset_ms = s.clock_offset_ms;
        t.drift_ppm = s.drift_ppm;
        t.sync_error_ms_p99 = t.sync_error_ms_p99.max(s.sync_error_ms_p99);
        t.resyncs += s.resyncs;
        t.expected += s.expected;
        t.received += s.received;
        t.lost += s.lost;
        t.out_of_order += s.out_of_order;
        t.duplicates += s.duplicates;
        t.late += s.late;
        t.underruns += s.underruns;
        t.recovered_fec += s.recovered_fec;
        t.recovered_retransmit += s.recovered_retransmit;
        t.concealed_ms += s.concealed_ms;
        t.played_ms += s.played_ms;
        t.garbage += s.garbage;
        t.foreign += s.foreign;
        t.bytes_received += s.bytes_received;
        weighted += s.jitter_ms * s.received as f64;
    }
    if t.received > 0 {
        t.jitter_ms = (weighted / t.received as f64 * 1000.0).round() / 1000.0;
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stats(received: u64, jitter_ms: f64, end: ExitReason) -> Stats {
        Stats {
            expected: received + 1,
            received,
            lost: 1,
            out_of_order: 0,
            duplicates: 2,
            late: 0,
            jitter_ms,
            underruns: 1,
            recovered_fec: 0,
            recovered_retransmit: 0,
            concealed_ms: 20,
            played_ms: received * 20,
            end_reason: end,
            garbage: 0,
            foreign: 3,
            codec: "pcm".into(),
            bytes_received: received * 100,
            clock_offset_ms: 0.0,
            drift_ppm: 0.0,
            sync_error_ms_p99: 0.0,
            resyncs: 0,
            transport: "unicast".into(),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_the_last_send_and_is_capped() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            s.sent(now);
            // The handshake gave up 3 s after its last send.
            now += 3000 * MS;
            s.ended(now, SessionEnd::Handshake("no answer".into()));
            let at = s.rejoin_at().unwrap();
            delays.push(at - (now - 3000 * MS));
            assert!(!s.poll_rejoin(at - MS));
            assert!(s.poll_rejoin(at));
            now = at;
        }
        // Measured from the last send, which was long enough ago: rejoin at once.
        assert!(delays.iter().all(|d| *d == 3000 * MS), "{delays:?}");
        // A failure right after a send waits the backoff: 250, 500, 1000, 2000, 2000 ms.
        let mut s = Stay::new(t0);
        let mut now = t0;
        let mut got = Vec::new();
        for _ in 0..5 {
            s.sent(now);
            s.ended(now, SessionEnd::Handshake("server full".into()));
            let at = s.rejoin_at().unwrap();
            got.push((at - now).as_millis());
            assert!(s.poll_rejoin(at));
            now = at;
        }
        assert_eq!(got, [250, 500, 1000, 2000, 2000]);
        assert!(REJOIN_MAX <= Duration::from_secs(3));
    }

    #[test]
    fn a_join_resets_the_backoff_and_ends_the_outage() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0);
        assert_eq!(s.joined(t0 + 10 * MS), None, "the first join is no rejoin");
        let lost_at = t0 + 5000 * MS;
        s.sent(lost_at);
        assert_eq!(
            s.ended(
                lost_at,
                SessionEnd::Stream(stats(100, 1.0, ExitReason::Evicted))
            ),
            Some(Transition::Lost {
                reason: ExitReason::Evicted
            })
        );
        assert_eq!(s.rejoin_at(), Some(lost_at + 250 * MS));
        let mut now = lost_at;
        // Failures in a row: logged once.
        let mut logged = 0;
        for _ in 0..4 {
            assert!(s.poll_rejoin(s.rejoin_at().unwrap()));
            now = s.rejoin_at.unwrap_or(now).max(now + 250 * MS);
            s.sent(now);
            now += 3000 * MS;
            if s.ended(now, SessionEnd::Handshake("no answer".into()))
                .is_some()
            {
                logged += 1;
            }
        }
        assert_eq!(logged, 1);
        assert!(s.poll_rejoin(s.rejoin_at().unwrap()));
        let back = now + 100 * MS;
        assert_eq!(
            s.joined(back),
            Some(Transition::Rejoined {
                after: back - lost_at
            })
        );
        s.sent(back + 1000 * MS);
        s.ended(
            back + 1000 * MS,
            SessionEnd::Stream(stats(50, 4.0, ExitReason::Timeout)),
        );
        // The backoff started over.
        assert_eq!(s.rejoin_at(), Some(back + 1250 * MS));
        let st = s.stats();
        assert_eq!(st.session_count, 2);
        assert_eq!(st.outages, 2);
        assert_eq!(
            st.outage_ms,
            (back - lost_at).as_millis() as u64,
            "the running outage is not counted before the exit"
        );
        assert_eq!(st.total.received, 150);
        assert_eq!(st.total.expected, 152);
        assert_eq!(st.total.lost, 2);
        assert_eq!(st.total.foreign, 6);
        assert_eq!(st.total.played_ms, 3000);
        assert_eq!(st.total.jitter_ms, 2.0, "weighted: (100*1 + 50*4) / 150");
        assert_eq!(st.total.end_reason, ExitReason::Timeout);
        assert_eq!(st.sessions.len(), 2);
    }

    #[test]
    fn interrupt_stops_and_closes_the_running_outage() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0);
        s.joined(t0);
        s.ended(
            t0 + 1000 * MS,
            SessionEnd::Stream(stats(10, 0.5, ExitReason::Shutdown)),
        );
        s.interrupt(t0 + 4000 * MS, None);
        assert!(s.is_stopped());
        assert_eq!(s.rejoin_at(), None);
        assert!(!s.poll_rejoin(t0 + 10_000 * MS));
        let st = s.stats();
        assert_eq!(st.outage_ms, 3000);
        assert_eq!(st.total.end_reason, ExitReason::Interrupted);
        // Interrupted while streaming: the last session is recorded.
        let mut s = Stay::new(t0);
        s.joined(t0);
        s.interrupt(t0 + MS, Some(stats(7, 0.0, ExitReason::Interrupted)));
        let st = s.stats();
        assert_eq!((st.session_count, st.outages, st.outage_ms), (1, 0, 0));
        assert_eq!(st.total.received, 7);
    }

    #[test]
    fn json_keeps_the_contract_fields_at_the_top() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0);
        s.joined(t0);
        s.ended(t0, SessionEnd::Stream(stats(10, 0.5, ExitReason::Finished)));
        s.interrupt(t0 + MS, None);
        let v: serde_json::Value = serde_json::from_str(&s.stats().to_json()).unwrap();
        for k in [
            "expected",
            "received",
            "lost",
            "out_of_order",
            "duplicates",
            "late",
            "jitter_ms",
            "underruns",
            "concealed_ms",
            "played_ms",
            "session_count",
            "outages",
            "outage_ms",
        ] {
            assert!(v[k].is_number(), "{k}: {v}");
        }
        assert_eq!(v["end_reason"], "interrupted");
        assert_eq!(v["sessions"][0]["end_reason"], "finished");
        assert_eq!(v["sessions"].as_array().unwrap().len(), 1);
    }

    /// A handshake attempt from `now` that got no answer for 3 s; returns when it ended.
    fn fail(s: &mut Stay, now: Instant) -> Instant {
        s.sent(now);
        let end = now + 3000 * MS;
        s.ended(end, SessionEnd::Handshake("no answer".into()));
        end
    }

    #[test]
    fn a_discovered_server_is_looked_for_after_a_failed_rejoin_then_at_growing_gaps() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0).with_rediscovery();
        s.joined(t0);
        let lost = t0 + 10_000 * MS;
        s.sent(lost);
        s.ended(
            lost,
            SessionEnd::Stream(stats(10, 0.0, ExitReason::Timeout)),
        );
        assert!(
            !s.poll_rediscover(lost),
            "losing the stream is no failed rejoin"
        );
        assert!(s.poll_rejoin(s.rejoin_at().unwrap()));
        assert!(
            !s.poll_rediscover(lost + 300 * MS),
            "not while a session runs"
        );
        let mut now = fail(&mut s, lost + 250 * MS);
        let mut browses = Vec::new();
        for _ in 0..1000 {
            if browses.len() == 7 {
                break;
            }
            if s.poll_rediscover(now) {
                browses.push(now);
                // Nothing found: the rejoin at the old address goes on.
                s.rediscovered(now + 3000 * MS, false);
                now += 3000 * MS;
            }
            let at = s.rejoin_at().unwrap().max(now);
            assert!(s.poll_rejoin(at));
            now = fail(&mut s, at);
        }
        assert_eq!(
            browses[0],
            lost + 3250 * MS,
            "right after the first failed rejoin"
        );
        let gaps: Vec<u64> = browses
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        // Each gap is at least the policy's (5, 10, 20, 40, 60, 60 s) and no more than one
        // failed attempt (3 s) and its backoff (2 s) later.
        let want = [5, 10, 20, 40, 60, 60];
        assert!(gaps.len() >= want.len(), "{gaps:?}");
        for (got, min) in gaps.iter().zip(want) {
            assert!((min..=min + 8).contains(got), "{gaps:?}");
        }
        // A join starts the policy over.
        s.poll_rejoin(s.rejoin_at().unwrap());
        s.joined(now);
        s.sent(now);
        s.ended(now, SessionEnd::Stream(stats(1, 0.0, ExitReason::Timeout)));
        assert!(s.poll_rejoin(s.rejoin_at().unwrap()));
        let end = fail(&mut s, now + 250 * MS);
        assert!(s.poll_rediscover(end), "the gap started over");
    }

    #[test]
    fn a_server_found_elsewhere_is_joined_at_once() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0).with_rediscovery();
        s.joined(t0);
        s.sent(t0);
        s.ended(t0, SessionEnd::Stream(stats(1, 0.0, ExitReason::Timeout)));
        assert!(s.poll_rejoin(s.rejoin_at().unwrap()));
        // Failures push the backoff up.
        let mut now = fail(&mut s, t0 + 250 * MS);
        for _ in 0..3 {
            s.poll_rediscover(now);
            let at = s.rejoin_at().unwrap().max(now);
            assert!(s.poll_rejoin(at));
            // Right after the send, so the backoff shows.
            s.sent(at);
            s.ended(at, SessionEnd::Handshake("no answer".into()));
            now = at;
        }
        assert!(s.rejoin_at().unwrap() > now + 1000 * MS);
        // A browse says the server moved: rejoin now, with the backoff reset.
        s.rediscovered(now + 100 * MS, true);
        assert_eq!(s.rejoin_at(), Some(now + 100 * MS));
        assert!(s.poll_rejoin(now + 100 * MS));
        s.sent(now + 100 * MS);
        s.ended(now + 100 * MS, SessionEnd::Handshake("server full".into()));
        assert_eq!(s.rejoin_at(), Some(now + 350 * MS));
    }

    #[test]
    fn a_listener_given_its_server_never_browses() {
        let t0 = Instant::now();
        let mut s = Stay::new(t0);
        let mut now = t0;
        for _ in 0..10 {
            now = fail(&mut s, now);
            assert!(!s.poll_rediscover(now));
            assert!(s.poll_rejoin(s.rejoin_at().unwrap().max(now)));
        }
    }
}
