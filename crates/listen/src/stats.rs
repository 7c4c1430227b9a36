//! Reception statistics: sans-IO counters per audio datagram, RFC 3550 interarrival jitter, the
//! JSON contract of `--stats-json` and the table printed at exit.
//!
//! [`Tracker`] sees every audio datagram in arrival order and answers whether it is new or a
//! duplicate; the playout's own counters ([`PlayoutCounters`]) join it in the final [`Stats`].

use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use crate::jitter::{PlayoutCounters, duration_of};

/// How many seqs below the highest one the duplicate detector remembers: 65536 datagrams is
/// minutes of audio at any sane rate, in an 8 KiB bitmap. Older seqs count as duplicates.
pub const SEQ_WINDOW: u64 = 1 << 16;

/// Why a listener's stream ended, as the JSON contract's `end_reason` spells it (lowercase):
/// the server's reasons (`proto::EndReason`) plus the listener's own (timeout, interrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitReason {
    /// The server reached the end of the file.
    Finished,
    /// The server was stopped.
    Shutdown,
    /// The server dropped this listener (`End{Evicted}` or `Error{NotJoined}`).
    Evicted,
    /// The server fell silent past `--timeout`.
    Timeout,
    /// The user pressed Ctrl-C.
    Interrupted,
}

impl ExitReason {
    /// The contract's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Finished => "finished",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Evicted => "evicted",
            ExitReason::Timeout => "timeout",
            ExitReason::Interrupted => "interrupted",
        }
    }
}

impl From<proto::EndReason> for ExitReason {
    fn from(r: proto::EndReason) -> Self {
        match r {
            proto::EndReason::Finished => ExitReason::Finished,
            proto::EndReason::Shutdown => ExitReason::Shutdown,
            proto::EndReason::Evicted | proto::EndReason::Kicked => ExitReason::Evicted,
        }
    }
}

/// Whether an audio datagram was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time this seq was seen: hand it to the jitter buffer.
    New,
    /// Seen before (or too old to tell): drop it.
    Duplicate,
}

/// Per-datagram reception counters of one stream (sans-IO: arrival time is passed in).
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Frames per second: RFC 3550 measures jitter in timestamp units, here frames.
    rate: u32,
    /// Arrival times are measured from here.
    epoch: Instant,
    /// Lowest seq of the stream for this listener (`Welcome.start_seq`, or lower if one came).
    first_seq: u64,
    /// Highest audio seq received, or announced by `End.last_seq`.
    highest: Option<u64>,
    /// Unique audio datagrams.
    received: u64,
    /// Copies of datagrams already received.
    duplicates: u64,
    /// New datagrams whose seq was lower than one already received.
    out_of_order: u64,
    /// Bit `seq % SEQ_WINDOW` is set when that seq (within the window) has been received.
    seen: Vec<u64>,
    /// RFC 3550 A.8 running jitter estimate, in frames.
    jitter: f64,
    /// Frames the server sends in one tick (0: unknown): every datagram of a tick leaves at
    /// the same instant, so transit is measured against the tick's first frame.
    tick_frames: u64,
    /// Transit time of the previous new datagram, in billionths of a frame.
    last_transit: Option<i128>,
    /// Datagrams from the server that did not decode, or made no sense in their place.
    garbage: u64,
    /// Datagrams from addresses other than the server's.
    foreign: u64,
    /// Datagrams played from parity (never counted as received).
    recovered_fec: u64,
    /// Datagrams played from a `Resent` (never counted as received).
    recovered_retransmit: u64,
}

impl Tracker {
    /// A tracker for a stream at `rate` whose first datagram for us is `first_seq`.
    pub fn new(rate: u32, first_seq: u64, epoch: Instant) -> Self {
        Self {
            rate: rate.max(1),
            epoch,
            first_seq,
            highest: None,
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            seen: vec![0; (SEQ_WINDOW / 64) as usize],
            jitter: 0.0,
            tick_frames: 0,
            last_transit: None,
            garbage: 0,
            foreign: 0,
            recovered_fec: 0,
            recovered_retransmit: 0,
        }
    }

    /// The server sends `frames` frames per tick, in one burst of datagrams from frame 0 on:
    /// jitter then measures each datagram's transit against the start of its tick, so a
    /// clean path reads near zero however many datagrams a tick takes.
    pub fn set_tick_frames(&mut self, frames: u64) {
        self.tick_frames = frames;
    }

    /// Records what loss repair delivered so far (the network counters stay untouched).
    pub fn set_recovered(&mut self, fec: u64, retransmit: u64) {
        self.recovered_fec = fec;
        self.recovered_retransmit = retransmit;
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Records an audio datagram `seq` carrying frames from `ts`, arrived at `now`.
    pub fn on_audio(&mut self, now: Instant, seq: u64, ts: u64) -> Arrival {
        match self.highest {
            Some(h) if seq <= h => {
                if h - seq >= SEQ_WINDOW {
                    self.duplicates += 1;
                    return Arrival::Duplicate;
                }
                let (w, b) = Self::bit(seq);
                if self.seen[w] & b != 0 {
                    self.duplicates += 1;
                    return Arrival::Duplicate;
                }
                self.seen[w] |= b;
                if seq < h {
                    self.out_of_order += 1;
                }
            }
            _ => {
                // seq is the new highest: forget the seqs that leave the window.
                let from = self.highest.map_or(seq, |h| h + 1);
                if seq - from >= SEQ_WINDOW {
                    self.seen.iter_mut().for_each(|w| *w = 0);
                } else {
                    for s in from..=seq {
                        let (w, b) = Self::bit(s);
                        self.seen[w] &= !b;
                    }
                }
                let (w, b) = Self::bit(seq);
                self.seen[w] |= b;
                self.highest = Some(seq);
            }
        }
        self.first_seq = self.first_seq.min(seq);
        self.received += 1;
        // RFC 3550 A.8: transit = arrival - timestamp (both in timestamp units), D = the change
        // in transit between consecutive packets, J += (|D| - J) / 16.
        // Transit is kept exactly, in billionths of a frame, so a perfectly paced stream has
        // exactly zero jitter.
        let nanos = now.saturating_duration_since(self.epoch).as_nanos() as i128;
        let sent = match self.tick_frames {
            0 => ts,
            f => ts - ts % f,
        };
        let transit = nanos * i128::from(self.rate) - i128::from(sent) * 1_000_000_000;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64 / 1e9;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        Arrival::New
    }

    /// The server's `End.last_seq`: datagrams up to it were sent, so missing ones at the very
    /// end count as lost.
    pub fn on_end(&mut self, last_seq: Option<u64>) {
        if let Some(l) = last_seq {
            self.highest = Some(self.highest.map_or(l, |h| h.max(l)));
            self.first_seq = self.first_seq.min(l);
        }
    }

    /// Counts a datagram from the server that did not decode or was out of place.
    pub fn on_garbage(&mut self) {
        self.garbage += 1;
    }

    /// Counts `n` datagrams from the server that did not decode.
    pub fn count_garbage(&mut self, n: u64) {
        self.garbage += n;
    }

    /// Counts a datagram from an address other than the server's.
    pub fn on_foreign(&mut self) {
        self.foreign += 1;
    }

    /// Adds datagrams counted elsewhere (before this tracker existed) to the garbage and
    /// foreign counts.
    pub fn count_ignored(&mut self, garbage: u64, foreign: u64) {
        self.garbage += garbage;
        self.foreign += foreign;
    }

    /// Datagrams from the server that did not decode or were out of place.
    pub fn garbage(&self) -> u64 {
        self.garbage
    }

    /// Datagrams from addresses other than the server's.
    pub fn foreign(&self) -> u64 {
        self.foreign
    }

    /// Highest audio seq received (or announced by `End`), if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Highest seq minus first seq plus one (0 before any audio).
    pub fn expected(&self) -> u64 {
        self.highest
            .map_or(0, |h| h.saturating_sub(self.first_seq) + 1)
    }

    /// Unique audio datagrams so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether `seq` has been received (within the last [`SEQ_WINDOW`] seqs).
    pub fn has(&self, seq: u64) -> bool {
        match self.highest {
            Some(h) if seq <= h && h - seq < SEQ_WINDOW => {
                let (w, b) = Self::bit(seq);
                self.seen[w] & b != 0
            }
            _ => false,
        }
    }

    /// Expected minus received.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The RFC 3550 jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / f64::from(self.rate) * 1000.0
    }

    /// The receiver report sent to the server every [`proto::limits::REPORT_INTERVAL`].
    pub fn report(
        &self,
        token: proto::Token,
        playout: &PlayoutCounters,
        buffered_ms: u32,
    ) -> proto::Report {
        proto::Report {
            token,
            received: self.received,
            lost: self.lost(),
            late: playout.late,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            highest_seq: self.highest.unwrap_or(0),
            jitter_us: (self.jitter_ms() * 1000.0).round() as u32,
            buffered_ms,
            concealed_ms: playout.concealed_frames.saturating_mul(1000)
                / u64::from(self.rate.max(1)),
            recovered_fec: self.recovered_fec,
            recovered_retransmit: self.recovered_retransmit,
            ..proto::Report::default()
        }
    }
}

/// The statistics of one run: the `--stats-json` contract (field names are the contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Highest seq − first seq + 1, trailing loss included via `End.last_seq`.
    pub expected: u64,
    /// Unique audio datagrams received (late ones included).
    pub received: u64,
    /// expected − received.
    pub lost: u64,
    /// Datagrams whose seq was lower than one already received.
    pub out_of_order: u64,
    /// Copies of datagrams already received.
    pub duplicates: u64,
    /// Datagrams that arrived after their frames had been played.
    pub late: u64,
    /// RFC 3550 interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Times the buffer ran empty mid-stream and rebuffered.
    pub underruns: u64,
    /// Lost datagrams rebuilt from parity in time to play (not counted as received).
    pub recovered_fec: u64,
    /// Lost datagrams resent on request in time to play (not counted as received).
    pub recovered_retransmit: u64,
    /// Audio that reached the speaker missing (concealed at its deadline), milliseconds.
    pub concealed_ms: u64,
    /// Audio handed to the sink (concealment included), milliseconds.
    pub played_ms: u64,
    /// Why the stream ended.
    pub end_reason: ExitReason,
    /// Datagrams from the server that were not valid where they came (not in the contract).
    pub garbage: u64,
    /// Datagrams from other addresses, ignored (not in the contract).
    pub foreign: u64,
    /// The stream's codec as `--codec` spells it (`pcm`, `flac`, `opus:128000`).
    pub codec: String,
    /// Bytes of every datagram received from the server (UDP payloads, all types).
    pub bytes_received: u64,
    /// Listener minus server clock at the end, ms (0 without clock exchanges).
    pub clock_offset_ms: f64,
    /// How fast the listener's clock ran against the server's, ppm (listener fast: +).
    pub drift_ppm: f64,
    /// p99 of |playout error| against the room's schedule, ms (0 unsynchronised).
    pub sync_error_ms_p99: f64,
    /// Hard resyncs of the synchronised playout (skips or waits past 50 ms).
    pub resyncs: u64,
    /// How the audio came: `unicast`, `multicast` (the server's group) or `unicast-fallback`
    /// (the group did not arrive, the server sent by unicast).
    pub transport: String,
}

impl Stats {
    /// The final numbers from the tracker and the playout.
    pub fn new(tracker: &Tracker, playout: &PlayoutCounters, end_reason: ExitReason) -> Self {
        let ms = |f: u64| duration_of(f, tracker.rate).as_millis() as u64;
        Self {
            expected: tracker.expected(),
            received: tracker.received,
            lost: tracker.lost(),
            out_of_order: tracker.out_of_order,
            duplicates: tracker.duplicates,
            late: playout.late,
            jitter_ms: (tracker.jitter_ms() * 1000.0).round() / 1000.0,
            underruns: playout.underruns,
            recovered_fec: tracker.recovered_fec,
            recovered_retransmit: tracker.recovered_retransmit,
            concealed_ms: ms(playout.concealed_frames),
            played_ms: ms(playout.played_frames),
            end_reason,
            garbage: tracker.garbage + playout.malformed,
            foreign: tracker.foreign,
            codec: String::new(),
            bytes_received: 0,
            clock_offset_ms: 0.0,
            drift_ppm: 0.0,
            sync_error_ms_p99: 0.0,
            resyncs: 0,
            transport: "unicast".to_owned(),
        }
    }

    /// These statistics with the clock synchronisation's summary: offset (ms), drift (ppm),
    /// p99 playout error (ms), resyncs.
    pub fn with_sync(
        mut self,
        (offset_ms, drift_ppm, p99_ms, resyncs): (f64, f64, f64, u64),
    ) -> Self {
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        self.clock_offset_ms = r3(offset_ms);
        self.drift_ppm = r3(drift_ppm);
        self.sync_error_ms_p99 = r3(p99_ms);
        self.resyncs = resyncs;
        self
    }

    /// The JSON object of `--stats-json`.
    pub fn to_json(&self) -> String {
        // Serializing plain numbers and a unit enum cannot fail; fall back to `{}` regardless.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The table printed at exit (and logged): counts with percentages of what they are part of.
pub fn render_table(s: &Stats) -> String {
    let rows: [(&str, String, String); 13] = [
        ("expected", s.expected.to_string(), String::new()),
        (
            "received",
            s.received.to_string(),
            pct(s.received, s.expected),
        ),
        ("lost", s.lost.to_string(), pct(s.lost, s.expected)),
        (
            "out of order",
            s.out_of_order.to_string(),
            pct(s.out_of_order, s.received),
        ),
        (
            "duplicates",
            s.duplicates.to_string(),
            pct(s.duplicates, s.received),
        ),
        ("late", s.late.to_string(), pct(s.late, s.received)),
        ("jitter", format!("{:.3} ms", s.jitter_ms), String::new()),
        ("underruns", s.underruns.to_string(), String::new()),
        (
            "fec rebuilt",
            s.recovered_fec.to_string(),
            pct(s.recovered_fec, s.expected),
        ),
        (
            "resent",
            s.recovered_retransmit.to_string(),
            pct(s.recovered_retransmit, s.expected),
        ),
        (
            "concealed",
            format!("{} ms", s.concealed_ms),
            pct(s.concealed_ms, s.played_ms),
        ),
        ("played", format!("{} ms", s.played_ms), String::new()),
        ("end", s.end_reason.as_str().to_owned(), String::new()),
    ];
    let mut t = String::from("stream statistics\n");
    for (name, value, share) in rows {
        let _ = writeln!(t, "  {name:<13}{value:>14}  {share:>8}");
    }
    // Synchronised playout ([`Stats::with_sync`]): how this listener kept the room's time.
    if s.clock_offset_ms != 0.0 || s.drift_ppm != 0.0 || s.resyncs > 0 {
        for (name, value) in [
            ("clock offset", format!("{:+.3} ms", s.clock_offset_ms)),
            ("drift", format!("{:+.3} ppm", s.drift_ppm)),
            ("sync err p99", format!("{:.3} ms", s.sync_error_ms_p99)),
            ("resyncs", s.resyncs.to_string()),
        ] {
            let _ = writeln!(t, "  {name:<13}{value:>14}");
        }
    }
    if s.garbage + s.foreign > 0 {
        let _ = writeln!(
            t,
            "  ignored      {:>14}  (garbage {}, other senders {})",
            s.garbage + s.foreign,
            s.garbage,
            s.foreign
        );
    }
    t
}
