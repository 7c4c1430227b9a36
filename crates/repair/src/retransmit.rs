//! Selective retransmission: the server's history and per-listener budget, and the
//! listener's planner of what to ask for and when.
//!
//! The listener asks once for each missing seq as soon as the gap is certain (a later seq
//! arrived) or the seq is overdue (it should have arrived by now, judged from how late the
//! recent datagrams came before their deadlines), and only while an answer can still arrive
//! before the seq's playout deadline; it asks again only when the answer is overdue by its
//! round-trip estimate. The server answers
//! from the last second of datagrams, never spending more bytes per second on one listener's
//! resends than the stream itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How far back a server can resend by default: one second of stream.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(1);

/// The most datagrams a history holds whatever the stream's rate, so memory stays bounded
/// (a second of 48 kHz stereo PCM is ~140 datagrams; a 2.5 ms Opus stream 400).
pub const HISTORY_MAX_ENTRIES: usize = 4096;

struct Entry {
    seq: u64,
    ts: u64,
    payload: Bytes,
    at: Instant,
}

/// The server's recent audio datagrams by seq, for answering Nacks.
///
/// Holds what was sent in the last `keep` (and at most [`HISTORY_MAX_ENTRIES`]); payloads are
/// the same `Bytes` the fan-out sent, so keeping them costs no copy.
pub struct History {
    entries: VecDeque<Entry>,
    keep: Duration,
    bytes: usize,
}

impl History {
    /// A history of the last `keep` of stream.
    pub fn new(keep: Duration) -> Self {
        History {
            entries: VecDeque::new(),
            keep,
            bytes: 0,
        }
    }

    /// How far back it answers.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// Records a datagram sent at `now`. Seqs must increase; anything older than `keep` goes.
    pub fn push(&mut self, now: Instant, seq: u64, ts: u64, payload: Bytes) {
        if self.entries.back().is_some_and(|e| e.seq >= seq) {
            return;
        }
        self.bytes += payload.len();
        self.entries.push_back(Entry {
            seq,
            ts,
            payload,
            at: now,
        });
        self.expire(now);
    }

    /// Drops what is older than `keep` (also called by `push`).
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            let old = now.saturating_duration_since(front.at) > self.keep;
            if !old && self.entries.len() <= HISTORY_MAX_ENTRIES {
                break;
            }
            self.bytes -= front.payload.len();
            self.entries.pop_front();
        }
    }

    /// The datagram with `seq` as `(ts, payload)`, if still held.
    pub fn get(&self, seq: u64) -> Option<(u64, &Bytes)> {
        let i = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let e = &self.entries[i];
        Some((e.ts, &e.payload))
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held: the stream's byte count over the last `keep`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A per-listener byte budget for resends: refills at `rate` bytes per second up to `burst`.
///
/// Set to the stream's own byte rate, a listener asking for everything can at most double
/// what it receives, whatever it sends.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Available bytes × 10⁶ (byte-microseconds), so refills are exact integers.
    tokens: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `rate` bytes per second.
    pub fn new(now: Instant, rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: u128::from(burst) * 1_000_000,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_micros();
        self.last = self.last.max(now);
        let cap = u128::from(self.burst) * 1_000_000;
        self.tokens = (self.tokens + dt * u128::from(self.rate)).min(cap);
    }

    /// Takes `bytes` if the budget has them at `now`; otherwise takes nothing.
    pub fn try_take(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        let need = bytes as u128 * 1_000_000;
        if need > self.tokens {
            return false;
        }
        self.tokens -= need;
        true
    }

    /// Bytes available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (self.tokens / 1_000_000) as u64
    }
}

/// One Nack: seq `base` and `base + 1 + i` for every bit i set in `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRequest {
    /// The lowest seq asked for.
    pub base: u64,
    /// Bit i asks for `base + 1 + i`.
    pub mask: u64,
}

impl NackRequest {
    /// The seqs asked for, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.base).chain(
            (0..64u64)
                .filter(|i| self.mask & (1 << i) != 0)
                .map(|i| self.base + 1 + i),
        )
    }
}

/// The planner's tuning.
#[derive(Debug, Clone, Copy)]
pub struct NackConfig {
    /// The most times one seq is asked for.
    pub max_asks: u8,
    /// Round-trip estimate before any sample.
    pub initial_rtt: Duration,
    /// The least time to wait for an answer before asking again.
    pub min_rto: Duration,
    /// The most missing seqs tracked: a longer outage is beyond repair anyway.
    pub max_tracked: usize,
    /// With FEC groups of this many seqs (0: none), a missing seq is asked for only once a
    /// seq of a later group arrived: its group's parity came first, and may have rebuilt it.
    pub fec_group: u8,
    /// Ask for a seq that is overdue even before a later one arrives: a stream that sends one
    /// datagram per tick learns of a loss a whole tick sooner, and a silent link is asked
    /// again while it lasts instead of only after it.
    pub detect_overdue: bool,
    /// The deadline step from one seq to the next as the stream describes it (one datagram's
    /// audio), if known: overdue detection then starts from the first arrival once playout
    /// runs, instead of waiting for a second one to measure the step. A link that goes silent
    /// just as playout starts is asked for at once, not only after it comes back.
    pub step: Option<Duration>,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            max_asks: 12,
            initial_rtt: Duration::from_millis(50),
            min_rto: Duration::from_millis(10),
            max_tracked: 1024,
            fec_group: 0,
            detect_overdue: true,
            step: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    deadline: Instant,
    /// Not asked for before a seq at least this high arrived.
    ready_after: u64,
    /// When it may be asked for (next).
    due: Instant,
    asks: u8,
    first_ask: Option<Instant>,
}

/// What the planner has done, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackStats {
    /// Seqs asked for, counting each ask.
    pub asked: u64,
    /// Seqs given up on: no answer could arrive before the deadline any more.
    pub abandoned: u64,
}

/// Recent original arrivals remembered for the overdue estimate.
const ARRIVALS: usize = 64;

/// Seqs past the highest arrival that overdue detection marks missing at most: a link silent
/// for longer is an outage or the end of the stream, not a loss to repair one seq at a time.
const MAX_OVERDUE: u64 = 64;

/// Extra wait, on top of the expected arrival, before a seq counts as overdue.
const OVERDUE_SLACK: Duration = Duration::from_millis(2);

/// Which of the recent leads (deadline − arrival, sorted ascending) a seq is expected by: the
/// 5th percentile, so one datagram held up far longer than the rest (a hiccup of the listener
/// or the path) does not delay every ask after it, while the everyday spread of arrival does
/// not make asks for seqs still on their way.
const LEAD_QUANTILE: (usize, usize) = (1, 20);

/// One original arrival: its seq, its deadline, and how long before that deadline it came.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    seq: u64,
    deadline: Instant,
    lead: Duration,
}

/// Whether a seq waiting for its group's parity (until a seq from `ready_after` on arrives)
/// need wait no more, given the highest seq that arrived and the highest overdue detection
/// has passed. A later group's seq arrived, or was overdue; or the group's last seq was
/// overdue and has not come: the parity leaves right after it, so it is as late, and waiting
/// for it only leaves fewer asks before the deadline (a burst takes both more often than not).
fn parity_past(high: u64, scanned: u64, ready_after: u64) -> bool {
    let last = ready_after.saturating_sub(1);
    high.max(scanned) >= ready_after || (scanned >= last && high < last)
}

/// The listener side: decides which missing seqs to ask for and when.
///
/// The caller feeds every original audio datagram with its playout deadline (`on_received`),
/// every datagram it got back another way (`on_repaired`: FEC or Resent), and sends what
/// `poll_nack` returns, calling again at `poll_timeout`.
pub struct NackPlanner {
    config: NackConfig,
    /// The stream's first seq, when known: seqs from it up to the first arrival are missing.
    first: Option<u64>,
    highest: Option<(u64, Instant)>,
    missing: BTreeMap<u64, Missing>,
    /// The last [`ARRIVALS`] original arrivals in order, each higher than the one before.
    arrivals: VecDeque<Arrival>,
    /// Deadline step per seq and expected lead, measured from `arrivals`.
    cadence: Option<(Duration, Duration)>,
    /// Whether deadlines follow the stream's timeline (playout has started): only then do
    /// arrivals say when the next seq is due.
    playing: bool,
    /// The newest in-order arrival while playout waited: when playout starts it stands in
    /// for `arrivals` until one comes, so a link silent from then on is noticed.
    waiting: Option<Arrival>,
    /// `arrivals` holds only that stand-in: its deadline is the waiting buffer's estimate,
    /// which a step measured against a playing deadline would get wrong.
    anchored: bool,
    /// The highest seq overdue detection has marked missing (or seen arrive).
    scanned: u64,
    /// Seqs above the highest arrival already repaired (marked overdue, then rebuilt or
    /// resent): the gap a later arrival shows there is not news.
    repaired_ahead: BTreeSet<u64>,
    /// The stream's last seq, once `End` named it: nothing after it is overdue.
    last: Option<u64>,
    srtt: Option<Duration>,
    rttvar: Duration,
    stats: NackStats,
}

impl NackPlanner {
    /// A planner with `config`.
    pub fn new(config: NackConfig) -> Self {
        NackPlanner {
            config,
            first: None,
            highest: None,
            missing: BTreeMap::new(),
            arrivals: VecDeque::with_capacity(ARRIVALS),
            cadence: None,
            playing: false,
            waiting: None,
            anchored: false,
            scanned: 0,
            repaired_ahead: BTreeSet::new(),
            last: None,
            srtt: None,
            rttvar: Duration::ZERO,
            stats: NackStats::default(),
        }
    }

    /// The current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.srtt.unwrap_or(self.config.initial_rtt)
    }

    /// How long to wait for an answer before asking again (RFC 6298's srtt + 4·rttvar).
    pub fn rto(&self) -> Duration {
        let rto = match self.srtt {
            Some(srtt) => srtt + 4 * self.rttvar,
            None => 2 * self.config.initial_rtt,
        };
        rto.max(self.config.min_rto)
    }

    /// What it has asked and abandoned so far.
    pub fn stats(&self) -> NackStats {
        self.stats
    }

    /// Seqs currently missing and still worth asking for.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Feeds a round-trip sample (a handshake, a time exchange, a Nack answered first time).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The stream starts at `seq` (the `Welcome`'s `start_seq`): when the first datagram to
    /// arrive is a later one, those before it are missing and asked for like any gap.
    pub fn expect_from(&mut self, seq: u64) {
        self.first = Some(seq);
    }

    /// Whether playout runs: before it starts, a deadline is the instant the buffer is
    /// expected to fill, which moves with arrivals rather than with the stream's timestamps,
    /// so overdue detection waits for playout and starts afresh whenever it resumes, from the
    /// newest arrival while it waited (whose deadline and lead are off by the same amount, so
    /// the instant it expects the next seq is not).
    pub fn set_playing(&mut self, playing: bool) {
        if playing && !self.playing {
            self.arrivals.clear();
            self.arrivals.extend(self.waiting.take());
            self.anchored = !self.arrivals.is_empty();
            self.cadence = self.measure_cadence();
        }
        if !playing && self.playing {
            self.waiting = None;
        }
        self.playing = playing;
    }

    /// The stream ended at `last_seq` (`End.last_seq`): seqs after the highest received up to
    /// it are missing, none of them due later than `deadline` (the first one's).
    pub fn on_end(&mut self, now: Instant, last_seq: u64, deadline: Instant) {
        self.last = Some(last_seq);
        self.missing.retain(|&s, _| s <= last_seq);
        let Some((high, _)) = self.highest else {
            return;
        };
        let from = high
            .saturating_add(1)
            .max(last_seq.saturating_sub(self.config.max_tracked as u64));
        for s in from..=last_seq {
            if !self.missing.contains_key(&s) && !self.repaired_ahead.contains(&s) {
                let mut m = self.missing_entry(now, s, deadline);
                // No later group will come to say whether parity rebuilt it.
                m.ready_after = 0;
                self.missing.insert(s, m);
            }
        }
    }

    fn missing_entry(&self, now: Instant, s: u64, deadline: Instant) -> Missing {
        let ready_after = match u64::from(self.config.fec_group) {
            0 => s.saturating_add(1),
            k => (s - s % k).saturating_add(k),
        };
        Missing {
            deadline,
            ready_after,
            due: now,
            asks: 0,
            first_ask: None,
        }
    }

    /// Feeds an original audio datagram that arrived at `now`, with the instant its audio must
    /// be in the buffer (`deadline`). Seqs skipped between the highest one before and this one
    /// become missing, with deadlines interpolated between their neighbours'.
    pub fn on_received(&mut self, now: Instant, seq: u64, deadline: Instant) {
        self.missing.remove(&seq);
        // Only arrivals in order tell how late the link runs: a reordered one is late by
        // however long it was held back.
        let in_order = self.highest.is_none_or(|(h, _)| seq > h);
        if !self.playing && in_order {
            self.waiting = Some(Arrival {
                seq,
                deadline,
                lead: deadline.saturating_duration_since(now),
            });
        }
        if self.playing && in_order {
            if std::mem::take(&mut self.anchored) {
                self.arrivals.clear();
            }
            if self.arrivals.len() == ARRIVALS {
                self.arrivals.pop_front();
            }
            self.arrivals.push_back(Arrival {
                seq,
                deadline,
                lead: deadline.saturating_duration_since(now),
            });
            if self.config.detect_overdue {
                self.cadence = self.measure_cadence();
            }
        }
        self.scanned = self.scanned.max(seq);
        let Some((high, high_deadline)) = self.highest else {
            self.highest = Some((seq, deadline));
            // The stream's first datagrams lost: nothing came before to interpolate from, and
            // they are due before this one, so this one's deadline bounds theirs.
            if let Some(first) = self.first.filter(|&f| f < seq) {
                let from = first.max(seq.saturating_sub(self.config.max_tracked as u64));
                for s in from..seq {
                    self.missing.insert(s, self.missing_entry(now, s, deadline));
                }
            }
            return;
        };
        if seq <= high {
            return;
        }
        self.highest = Some((seq, deadline));
        // Those above `seq` stay ahead; the rest are looked up in the gap below it.
        let above = seq
            .checked_add(1)
            .map_or_else(BTreeSet::new, |next| self.repaired_ahead.split_off(&next));
        let repaired = std::mem::replace(&mut self.repaired_ahead, above);
        let gap = seq - high - 1;
        // Only the newest `max_tracked` of a long gap are worth tracking.
        let first = high + 1 + gap.saturating_sub(self.config.max_tracked as u64);
        let span = deadline.saturating_duration_since(high_deadline);
        for s in first..seq {
            let frac = (s - high) as f64 / (seq - high) as f64;
            let d = high_deadline + span.mul_f64(frac);
            match self.missing.get_mut(&s) {
                // Already marked overdue: the neighbours' deadline is the better estimate.
                Some(m) => m.deadline = d,
                // Marked overdue and repaired since.
                None if repaired.contains(&s) => {}
                None => {
                    let m = self.missing_entry(now, s, d);
                    self.missing.insert(s, m);
                }
            }
        }
        while self.missing.len() > self.config.max_tracked {
            self.missing.pop_first();
            self.stats.abandoned += 1;
        }
    }

    /// Feeds a datagram recovered at `now` by FEC (`resent` false) or by a `Resent`
    /// (`resent` true): it is no longer asked for. A Resent answering a single ask is a
    /// round-trip sample (Karn: an answer to a repeated ask is ambiguous).
    pub fn on_repaired(&mut self, now: Instant, seq: u64, resent: bool) {
        if self.highest.is_some_and(|(h, _)| seq > h)
            && seq <= self.scanned
            && self.repaired_ahead.len() < MAX_OVERDUE as usize
        {
            self.repaired_ahead.insert(seq);
        }
        if let Some(m) = self.missing.remove(&seq)
            && resent
            && m.asks == 1
            && let Some(at) = m.first_ask
        {
            self.on_rtt_sample(now.saturating_duration_since(at));
        }
    }

    /// The deadline step between consecutive seqs and how early before its deadline a seq
    /// can be counted on to arrive (the [`LEAD_QUANTILE`] of the recent in-order arrivals'
    /// leads), once two of them span more than one seq, or from the first one with the
    /// stream's own step ([`NackConfig::step`]).
    fn measure_cadence(&self) -> Option<(Duration, Duration)> {
        let lo = self.arrivals.front()?;
        let hi = self.arrivals.back()?;
        let step = if hi.seq > lo.seq {
            // Seqs come from the network: a span past u32 (or a wrap to 0) gives no cadence.
            let span = u32::try_from(hi.seq - lo.seq).ok().filter(|&n| n > 0)?;
            hi.deadline.saturating_duration_since(lo.deadline) / span
        } else {
            // One arrival: the stream's own step, when it said.
            self.config.step.filter(|s| !s.is_zero())?
        };
        // On the stack: this runs for every arrival.
        let mut leads = [Duration::ZERO; ARRIVALS];
        let n = self.arrivals.len();
        for (slot, a) in leads.iter_mut().zip(&self.arrivals) {
            *slot = a.lead;
        }
        let leads = &mut leads[..n];
        leads.sort_unstable();
        let lead = leads[(n - 1) * LEAD_QUANTILE.0 / LEAD_QUANTILE.1];
        Some((step, lead))
    }

    /// The next seq overdue detection would mark missing, its estimated deadline, and the
    /// instant it becomes overdue: as early before its deadline as the recent arrivals came
    /// ([`LEAD_QUANTILE`]), plus [`OVERDUE_SLACK`].
    fn next_overdue(&self) -> Option<(u64, Instant, Instant)> {
        if !self.config.detect_overdue || !self.playing {
            return None;
        }
        let (high, high_deadline) = self.highest?;
        let s = self.scanned.max(high).checked_add(1)?;
        if s > high.saturating_add(MAX_OVERDUE) || self.last.is_some_and(|l| s > l) {
            return None;
        }
        let (step, lead) = self.cadence?;
        // At most MAX_OVERDUE seqs ahead, so the product stays small.
        let deadline =
            high_deadline.checked_add(step.checked_mul(u32::try_from(s - high).ok()?)?)?;
        let at = deadline.checked_sub(lead)?.checked_add(OVERDUE_SLACK)?;
        Some((s, deadline, at))
    }

    /// Marks every seq overdue at `now` missing, to be asked for at once. Waiting for its
    /// group's parity could cost the group's whole duration, most of the playout delay at
    /// streamd's defaults; the price is a resend that parity might have made unnecessary. A
    /// seq whose answer could no longer arrive in time is left to the gap a later arrival shows
    /// (with a better deadline).
    fn detect_overdue(&mut self, now: Instant) {
        let rtt = self.rtt();
        while let Some((s, deadline, at)) = self.next_overdue() {
            if at > now {
                break;
            }
            self.scanned = s;
            if self.missing.len() < self.config.max_tracked && now + rtt <= deadline {
                let mut m = self.missing_entry(now, s, deadline);
                m.ready_after = 0;
                self.missing.entry(s).or_insert(m);
            }
        }
    }

    /// The next Nack to send at `now`, if any seq is due; call until `None`.
    ///
    /// A seq is due when it has not been asked for yet or its last ask is overdue, and an answer
    /// sent now can still arrive a round trip before its deadline. Seqs that can no longer make
    /// it are dropped.
    pub fn poll_nack(&mut self, now: Instant) -> Option<NackRequest> {
        self.detect_overdue(now);
        let rtt = self.rtt();
        let rto = self.rto();
        let max_asks = self.config.max_asks;
        let mut abandoned = 0;
        self.missing.retain(|_, m| {
            let keep = now + rtt <= m.deadline && m.asks < max_asks;
            if !keep {
                abandoned += 1;
            }
            keep
        });
        self.stats.abandoned += abandoned;
        let mut request: Option<NackRequest> = None;
        let (high, scanned) = (self.highest.map_or(0, |(h, _)| h), self.scanned);
        for (&seq, m) in self.missing.iter_mut() {
            let waits = !parity_past(high, scanned, m.ready_after);
            if m.due > now || (waits && now + rtt + rto < m.deadline) {
                continue;
            }
            match request.as_mut() {
                None => request = Some(NackRequest { base: seq, mask: 0 }),
                Some(r) if seq - r.base <= 64 => r.mask |= 1 << (seq - r.base - 1),
                Some(_) => break,
            }
            m.asks += 1;
            m.first_ask.get_or_insert(now);
            m.due = now + rto;
            self.stats.asked += 1;
        }
        request
    }

    /// When `poll_nack` next has something to do. A seq waiting for its group's end waits
    /// for an arrival (or the group's last seq to be overdue), or at most until only a round
    /// trip and one retry are left before its deadline: then it is asked for anyway.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (high, scanned) = (self.highest.map_or(0, |(h, _)| h), self.scanned);
        let last_chance = self.rtt() + self.rto();
        let overdue = self.next_overdue().map(|(_, _, at)| at);
        self.missing
            .values()
            .map(|m| {
                if parity_past(high, scanned, m.ready_after) {
                    m.due
                } else {
                    m.due
                        .max(m.deadline.checked_sub(last_chance).unwrap_or(m.due))
                }
            })
            .chain(overdue)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn history_keeps_a_window_and_finds_by_seq() {
        let t0 = Instant::now();
        let mut h = History::new(ms(1000));
        for seq in 0..200u64 {
            h.push(
                t0 + ms(seq * 10),
                seq,
                seq * 480,
                Bytes::from(vec![seq as u8; 100]),
            );
        }
        // At 1.99 s the window reaches back to 0.99 s: seqs 99..=199.
        assert_eq!(h.len(), 101);
        assert_eq!(h.bytes(), 101 * 100);
        assert!(h.get(98).is_none());
        let (ts, p) = h.get(150).unwrap();
        assert_eq!((ts, p[0]), (150 * 480, 150));
        assert!(h.get(200).is_none());
        // Out-of-order pushes are ignored.
        h.push(t0 + ms(1990), 5, 0, Bytes::new());
        assert!(h.get(5).is_none());
        h.expire(t0 + ms(5000));
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn history_is_bounded_in_entries() {
        let t0 = Instant::now();
        let mut h = History::new(ms(1000));
        for seq in 0..(HISTORY_MAX_ENTRIES as u64 + 10) {
            h.push(t0, seq, seq, Bytes::from_static(b"x"));
        }
        assert_eq!(h.len(), HISTORY_MAX_ENTRIES);
        assert!(h.get(9).is_none());
        assert!(h.get(10).is_some());
    }

    #[test]
    fn token_bucket_never_exceeds_its_rate() {
        let t0 = Instant::now();
        // 10 kB/s, 1 kB burst; someone asks for 300 B every millisecond for 10 s.
        let mut b = TokenBucket::new(t0, 10_000, 1_000);
        let mut sent = 0u64;
        for i in 0..10_000u64 {
            if b.try_take(t0 + ms(i), 300) {
                sent += 300;
            }
        }
        // At most burst + rate × 10 s, and the budget is actually used.
        assert!(sent <= 1_000 + 10_000 * 10, "{sent}");
        assert!(sent >= 10_000 * 10 - 300, "{sent}");
        assert!(!b.try_take(t0 + ms(9_999), 300));
    }

    #[test]
    fn token_bucket_refuses_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 1_000_000, 500);
        assert!(!b.try_take(t0 + ms(100), 501));
        assert!(b.try_take(t0 + ms(100), 500));
        assert_eq!(b.available(t0 + ms(100)), 0);
    }

    /// A planner that learns of gaps only from later arrivals (overdue detection has its own
    /// tests below).
    fn planner() -> NackPlanner {
        NackPlanner::new(NackConfig {
            initial_rtt: ms(20),
            max_asks: 3,
            detect_overdue: false,
            ..NackConfig::default()
        })
    }

    #[test]
    fn asks_once_as_soon_as_a_gap_is_certain() {
        let t0 = Instant::now();
        let mut p = planner();
        let deadline = |seq: u64| t0 + ms(200 + seq * 10);
        p.on_received(t0, 10, deadline(10));
        assert_eq!(p.poll_nack(t0), None);
        assert_eq!(p.poll_timeout(), None);
        // 11, 12 and 14 lost; 13 and 15 arrive.
        p.on_received(t0 + ms(30), 13, deadline(13));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(30)));
        let n = p.poll_nack(t0 + ms(30)).unwrap();
        assert_eq!(n.seqs().collect::<Vec<_>>(), vec![11, 12]);
        assert_eq!(n, NackRequest { base: 11, mask: 1 });
        assert_eq!(p.poll_nack(t0 + ms(30)), None);
        p.on_received(t0 + ms(50), 15, deadline(15));
        assert_eq!(
            p.poll_nack(t0 + ms(50)).unwrap().seqs().collect::<Vec<_>>(),
            vec![14]
        );
        // Answers: no more asks.
        for s in [11, 12, 14] {
            p.on_repaired(t0 + ms(60), s, true);
        }
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(
            p.stats(),
            NackStats {
                asked: 3,
                abandoned: 0
            }
        );
    }

    #[test]
    fn asks_again_only_when_the_answer_is_overdue() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(500));
        p.on_received(t0, 2, t0 + ms(520));
        assert_eq!(p.poll_nack(t0).unwrap().base, 1);
        // No samples yet: rto = 2 × the initial 20 ms.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(40)));
        assert_eq!(p.poll_nack(t0 + ms(39)), None);
        assert_eq!(p.poll_nack(t0 + ms(40)).unwrap().base, 1);
        assert_eq!(p.poll_nack(t0 + ms(80)).unwrap().base, 1);
        // Three asks is the most (as configured).
        assert_eq!(p.poll_nack(t0 + ms(120)), None);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(
            p.stats(),
            NackStats {
                asked: 3,
                abandoned: 1
            }
        );
    }

    #[test]
    fn never_asks_when_the_answer_would_be_late() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_rtt_sample(ms(100));
        p.on_received(t0, 0, t0 + ms(50));
        p.on_received(t0, 2, t0 + ms(150));
        // 1's deadline interpolates to 100 ms: a 100 ms round trip makes it just in time.
        assert_eq!(p.poll_nack(t0).unwrap().base, 1);
        p.on_received(t0 + ms(10), 4, t0 + ms(150));
        // 3's deadline is 150 ms: 10 + 100 ≤ 150, asked.
        assert_eq!(p.poll_nack(t0 + ms(10)).unwrap().base, 3);
        p.on_received(t0 + ms(60), 6, t0 + ms(150));
        // 5 at 60 ms: 160 > 150, never asked.
        assert_eq!(p.poll_nack(t0 + ms(60)), None);
        assert_eq!(p.stats().asked, 2);
    }

    #[test]
    fn fec_repairs_stop_asks_and_karn_skips_ambiguous_samples() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 3, t0 + ms(1000));
        p.on_repaired(t0, 1, false);
        assert_eq!(p.poll_nack(t0), Some(NackRequest { base: 2, mask: 0 }));
        p.on_repaired(t0 + ms(30), 2, true);
        assert_eq!(p.rtt(), ms(30));
        // Asked twice: no sample.
        p.on_received(t0 + ms(30), 5, t0 + ms(1000));
        p.poll_nack(t0 + ms(30)).unwrap();
        p.poll_nack(t0 + ms(30) + p.rto()).unwrap();
        p.on_repaired(t0 + ms(200), 4, true);
        assert_eq!(p.rtt(), ms(30));
    }

    #[test]
    fn one_nack_covers_65_seqs_and_the_rest_follow() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 101, t0 + ms(1000));
        let a = p.poll_nack(t0).unwrap();
        assert_eq!(
            a,
            NackRequest {
                base: 1,
                mask: u64::MAX
            }
        );
        let b = p.poll_nack(t0).unwrap();
        assert_eq!(b.base, 66);
        assert_eq!(b.seqs().collect::<Vec<_>>(), (66..101).collect::<Vec<_>>());
        assert_eq!(p.poll_nack(t0), None);
    }

    #[test]
    fn a_long_outage_tracks_a_bounded_number() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            max_tracked: 100,
            ..NackConfig::default()
        });
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 1_000_000, t0 + ms(1000));
        assert_eq!(p.missing(), 100);
        assert_eq!(p.poll_nack(t0).unwrap().base, 1_000_000 - 100);
    }

    #[test]
    fn with_fec_asks_only_after_the_group_ended() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            fec_group: 4,
            detect_overdue: false,
            ..NackConfig::default()
        });
        p.on_received(t0, 4, t0 + ms(1000));
        p.on_received(t0, 6, t0 + ms(1000));
        // 5 is missing, but group 4..8 has not ended: its parity may still rebuild it. Unless
        // nothing else arrives: then it is asked for when a round trip and a retry are left
        // (rtt 50 ms, rto 100 ms before the deadline).
        assert_eq!(p.poll_nack(t0), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(850)));
        p.on_received(t0 + ms(5), 7, t0 + ms(1000));
        assert_eq!(p.poll_nack(t0 + ms(5)), None);
        p.on_received(t0 + ms(10), 9, t0 + ms(1000));
        // 8 is missing in the next group, 5's group ended: only 5 is asked for.
        assert_eq!(p.poll_timeout(), Some(t0));
        assert_eq!(
            p.poll_nack(t0 + ms(10)),
            Some(NackRequest { base: 5, mask: 0 })
        );
        assert_eq!(p.poll_nack(t0 + ms(10)), None);
        // 8 at its last chance (5 came back meanwhile).
        p.on_repaired(t0 + ms(20), 5, false);
        assert_eq!(p.poll_nack(t0 + ms(849)), None);
        assert_eq!(
            p.poll_nack(t0 + ms(850)),
            Some(NackRequest { base: 8, mask: 0 })
        );
    }

    #[test]
    fn reordered_arrivals_cancel_their_asks() {
        let t0 = Instant::now();
        let mut p = planner();
        p.on_received(t0, 0, t0 + ms(1000));
        p.on_received(t0, 2, t0 + ms(1000));
        p.on_received(t0, 1, t0 + ms(1000));
        assert_eq!(p.poll_nack(t0), None);
    }

    #[test]
    fn loss_at_the_start_of_the_stream_is_asked_for() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        p.expect_from(100);
        // 100 and 101 lost; 102 is the first to arrive.
        p.on_received(t0, 102, t0 + ms(500));
        let r = p.poll_nack(t0).unwrap();
        assert_eq!((r.base, r.mask), (100, 0b1));
        // Without the start, nothing before the first arrival is known to be missing.
        let mut q = NackPlanner::new(NackConfig::default());
        q.on_received(t0, 102, t0 + ms(500));
        assert!(q.poll_nack(t0).is_none());
    }

    /// Seqs 0..=4 every 20 ms, each 100 ms before its deadline, playout running.
    fn steady_stream(p: &mut NackPlanner, t0: Instant) {
        p.set_playing(true);
        for seq in 0..5u64 {
            p.on_received(t0 + ms(20 * seq), seq, t0 + ms(20 * seq + 100));
        }
    }

    #[test]
    fn a_seq_that_does_not_come_is_asked_for_once_overdue() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            initial_rtt: ms(20),
            ..NackConfig::default()
        });
        steady_stream(&mut p, t0);
        // 5 is due at 200 ms, so expected by 100 ms; overdue 2 ms later.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(102)));
        assert_eq!(p.poll_nack(t0 + ms(101)), None);
        assert_eq!(
            p.poll_nack(t0 + ms(102)),
            Some(NackRequest { base: 5, mask: 0 })
        );
        assert_eq!(p.poll_nack(t0 + ms(102)), None);
        // 6 is overdue at 122 ms; 5 is asked again only at 102 + rto (40 ms).
        assert_eq!(p.poll_timeout(), Some(t0 + ms(122)));
        assert_eq!(
            p.poll_nack(t0 + ms(122)),
            Some(NackRequest { base: 6, mask: 0 })
        );
        // At 142 ms, 5 again and 7 for the first time.
        assert_eq!(
            p.poll_nack(t0 + ms(142)),
            Some(NackRequest {
                base: 5,
                mask: 0b10
            })
        );
        // 6 and 7 were only late: their arrivals cancel them; 5 is still missing.
        p.on_received(t0 + ms(143), 6, t0 + ms(220));
        p.on_received(t0 + ms(144), 7, t0 + ms(240));
        assert_eq!(p.missing(), 1);
        assert_eq!(p.stats().asked, 4);
    }

    #[test]
    fn a_seq_resent_before_the_next_arrives_is_not_asked_for_again() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        steady_stream(&mut p, t0);
        assert_eq!(p.poll_nack(t0 + ms(102)).map(|r| r.base), Some(5));
        p.on_repaired(t0 + ms(103), 5, true);
        // 6 arrives and shows the gap 5 left: it was filled already.
        p.on_received(t0 + ms(120), 6, t0 + ms(220));
        assert_eq!(p.missing(), 0);
        assert_eq!(p.poll_nack(t0 + ms(120)), None);
        assert_eq!(p.stats().asked, 1);
    }

    #[test]
    fn seqs_far_apart_give_no_cadence_and_no_panic() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        p.set_playing(true);
        p.on_received(t0, 0, t0 + ms(100));
        p.on_received(t0 + ms(20), 1 << 32, t0 + ms(120));
        p.on_received(t0 + ms(40), u64::MAX, t0 + ms(140));
        let _ = p.poll_timeout();
        let _ = p.poll_nack(t0 + ms(60));
    }

    #[test]
    fn after_a_pause_a_gap_is_asked_for_again() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            max_asks: 1,
            ..NackConfig::default()
        });
        steady_stream(&mut p, t0);
        // The server pauses for half a second: 5 and on are asked for once and given up on.
        let mut now = t0 + ms(90);
        while let Some(t) = p.poll_timeout() {
            now = now.max(t);
            while p.poll_nack(now).is_some() {}
        }
        // It resumes with 5 (its deadline as late as the pause); 6 is lost, 7 arrives.
        p.on_received(t0 + ms(600), 5, t0 + ms(700));
        p.on_received(t0 + ms(640), 7, t0 + ms(740));
        assert_eq!(
            p.poll_nack(t0 + ms(640)),
            Some(NackRequest { base: 6, mask: 0 })
        );
    }

    #[test]
    fn overdue_detection_stops_while_playout_waits() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        steady_stream(&mut p, t0);
        assert!(p.poll_timeout().is_some());
        p.set_playing(false);
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_nack(t0 + ms(200)), None);
    }

    #[test]
    fn a_stream_on_time_is_never_asked_for() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        p.set_playing(true);
        // Three datagrams per 20 ms tick, sent together, arriving 0-1.5 ms late by turns.
        for seq in 0..3000u64 {
            let tick = seq / 3;
            let late = Duration::from_micros(seq * 7919 % 1500);
            let at = t0 + ms(20 * tick) + late;
            if let Some(t) = p.poll_timeout() {
                assert!(
                    t >= at || p.poll_nack(t).is_none(),
                    "seq {seq}: asked at {t:?}"
                );
            }
            p.on_received(at, seq, t0 + ms(100) + Duration::from_micros(6_667 * seq));
        }
        assert_eq!(p.stats().asked, 0);
    }

    #[test]
    fn overdue_detection_stops_at_the_end_and_after_a_long_silence() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        steady_stream(&mut p, t0);
        p.on_end(t0 + ms(90), 4, t0 + ms(190));
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_nack(t0 + ms(500)), None);
        // Without an End, a silence marks at most 64 seqs missing, however long it lasts.
        let mut q = NackPlanner::new(NackConfig {
            max_asks: 1,
            ..NackConfig::default()
        });
        steady_stream(&mut q, t0);
        let mut asked = Vec::new();
        let mut now = t0 + ms(90);
        while let Some(t) = q.poll_timeout() {
            now = now.max(t);
            while let Some(r) = q.poll_nack(now) {
                asked.extend(r.seqs());
            }
        }
        assert_eq!(asked, (5..5 + 64).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_is_overdue_before_playout_starts() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig::default());
        // While the buffer fills, every deadline is "when it will be full": 120 ms from now.
        for seq in 0..12u64 {
            let at = t0 + ms(20 * (seq / 3));
            p.on_received(at, seq, at + ms(120));
        }
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_nack(t0 + ms(79)), None);
        // Playing: two arrivals in order give the cadence again.
        p.set_playing(true);
        p.on_received(t0 + ms(80), 12, t0 + ms(200));
        assert_eq!(p.poll_timeout(), None);
        p.on_received(t0 + ms(80), 13, t0 + ms(207));
        // 14 is due at 214 ms and expected 120 ms before that, as 12 came; overdue at 96.
        assert_eq!(p.poll_timeout(), Some(t0 + ms(96)));
    }

    #[test]
    fn with_the_streams_step_one_arrival_after_playout_starts_is_enough() {
        let t0 = Instant::now();
        let with = |step| {
            let mut p = NackPlanner::new(NackConfig {
                initial_rtt: ms(2),
                step,
                ..NackConfig::default()
            });
            p.set_playing(true);
            p.on_received(t0, 10, t0 + ms(130));
            p
        };
        // Without the step, one arrival measures nothing: the link could stay silent for the
        // whole delay before anything is asked for.
        assert_eq!(with(None).poll_timeout(), None);
        // With it, 11 is due at 150 ms and expected 130 ms before, as 10 came: overdue at 22.
        let mut p = with(Some(ms(20)));
        assert_eq!(p.poll_timeout(), Some(t0 + ms(22)));
        assert_eq!(p.poll_nack(t0 + ms(21)), None);
        let r = p.poll_nack(t0 + ms(22)).unwrap();
        assert_eq!((r.base, r.mask), (11, 0));
        // A second arrival measures the step: 12 arrives 40 ms after 10 with a deadline 40 ms
        // later, so 13 is expected 20 ms after it.
        p.on_received(t0 + ms(40), 12, t0 + ms(170));
        assert_eq!(
            p.next_overdue().map(|(s, _, at)| (s, at)),
            Some((13, t0 + ms(62)))
        );
        // A zero step from a broken description is no step.
        assert_eq!(with(Some(Duration::ZERO)).poll_timeout(), None);
    }

    #[test]
    fn playout_starting_on_a_silent_link_expects_the_next_seq_after_the_last_arrival() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            initial_rtt: ms(2),
            step: Some(ms(20)),
            ..NackConfig::default()
        });
        // While the buffer fills, each deadline is "when it will be full" plus the seq's place.
        for seq in 0..5u64 {
            let at = t0 + ms(20 * seq);
            p.on_received(at, seq, t0 + ms(200 + 20 * seq));
        }
        assert_eq!(p.poll_timeout(), None);
        // Playout starts at 100 ms and nothing more comes: 5 is expected a step after 4 came.
        p.set_playing(true);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(102)));
        let r = p.poll_nack(t0 + ms(102)).unwrap();
        assert_eq!((r.base, r.mask), (5, 0));
        // 5 does come, with a deadline on the playing timeline, 30 ms earlier than the filling
        // buffer's estimate said: the stand-in goes, so no step is measured across the two and
        // 6 is expected a step after 5, not at once.
        p.on_received(t0 + ms(104), 5, t0 + ms(270));
        assert_eq!(p.poll_nack(t0 + ms(104)), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(126)));
        // A pause forgets the stand-in: playout resuming with nothing new waits for arrivals.
        p.set_playing(false);
        p.set_playing(true);
        assert_eq!(p.next_overdue(), None);
    }

    #[test]
    fn a_seq_waiting_for_parity_is_asked_for_once_its_groups_last_is_overdue() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            initial_rtt: ms(1),
            fec_group: 6,
            ..NackConfig::default()
        });
        p.set_playing(true);
        // Groups of six, one seq every 20 ms, each due 100 ms after it is sent. 8 is lost; 9
        // shows the gap, and 8 waits for its group's parity (sent after 11).
        for seq in [6u64, 7, 9] {
            p.on_received(t0 + ms(20 * seq), seq, t0 + ms(20 * seq + 100));
        }
        let asked_at = |p: &mut NackPlanner, t: u64| {
            let mut seqs = Vec::new();
            while let Some(r) = p.poll_nack(t0 + ms(t)) {
                seqs.extend(r.seqs());
            }
            seqs
        };
        assert_eq!(asked_at(&mut p, 180), Vec::<u64>::new());
        // Then the link goes silent: 10 and 11 are overdue at 202 and 222 ms, and asked for
        // (10 again at 222, its answer overdue).
        assert_eq!(asked_at(&mut p, 202), vec![10]);
        assert!(!asked_at(&mut p, 221).contains(&8));
        // 11, the group's last, is overdue at 222 ms and has not come: the parity, sent right
        // after it, is as late, so 8 is asked for then, 38 ms before its deadline (260 ms), not
        // only at the last chance (a round trip and one timeout before it, 249 ms), when one
        // lost answer loses it.
        assert_eq!(asked_at(&mut p, 222), vec![8, 11]);
    }

    #[test]
    fn a_silent_link_is_asked_again_while_an_answer_can_still_come() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            initial_rtt: ms(2),
            ..NackConfig::default()
        });
        steady_stream(&mut p, t0);
        // Nothing comes after 4: 5 is overdue at 102 ms with its deadline at 200 ms, and is
        // asked for every RTO (10 ms) for as long as an answer can arrive in time: ten asks,
        // within the default's twelve.
        let mut asks = Vec::new();
        let mut now = t0 + ms(90);
        while let Some(t) = p.poll_timeout() {
            now = now.max(t);
            while let Some(r) = p.poll_nack(now) {
                if r.base == 5 {
                    asks.push(now.duration_since(t0).as_millis());
                }
            }
            if now > t0 + ms(400) {
                break;
            }
        }
        assert_eq!(asks, (0..10).map(|i| 102 + 10 * i).collect::<Vec<_>>());
    }

    #[test]
    fn loss_at_the_end_of_the_stream_is_asked_for() {
        let t0 = Instant::now();
        let mut p = NackPlanner::new(NackConfig {
            fec_group: 4,
            ..NackConfig::default()
        });
        p.on_received(t0, 10, t0 + ms(500));
        // 11 and 12 lost, then End says 12 was the last.
        p.on_end(t0, 12, t0 + ms(400));
        let r = p.poll_nack(t0).unwrap();
        assert_eq!((r.base, r.mask), (11, 0b1));
        // Nothing past the end, nothing twice.
        p.on_end(t0, 12, t0 + ms(400));
        assert!(p.poll_nack(t0).is_none());
    }
}
