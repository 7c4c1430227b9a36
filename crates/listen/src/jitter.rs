//! The jitter buffer and playout schedule: sans-IO, no clock of its own.
//!
//! Audio datagrams go in with [`JitterBuffer::push`] in any order; the sink's demand comes out
//! with [`JitterBuffer::pull`]. The buffer works in stream frames (`ts` is the index of a
//! datagram's first frame), so reordering, holes and lateness are questions about positions:
//!
//! - It starts (and, after an underrun, restarts) once the audio it holds ahead of the playout
//!   position reaches the start threshold: the target latency plus the sink's lead.
//! - A hole at the playout position while later audio is already buffered is missing at its
//!   deadline: it is concealed and counted, by the codec when it can (Opus packet-loss
//!   concealment, through [`Conceal`]), otherwise with a short fade from the last frame, then
//!   silence.
//! - With nothing buffered at all the buffer underruns: it stops handing out frames (the sink
//!   plays silence that is not part of the stream) until it holds the threshold again. Nothing is
//!   skipped, so a stream that loses nothing plays every frame exactly once.
//! - A datagram whose frames are already behind the playout position is late: counted, dropped.
//!
//! The server sends a whole interval of audio at once, so right before each burst the buffer
//! holds the start threshold minus one interval. The target therefore grows to at least
//! `interval + `[`MIN_MARGIN`] (see [`JitterBuffer::grown`]), which makes every interval from
//! 5 ms to 2 s play without gaps.
//!
//! Time enters only through the caller's sequence of `push`/`pull` calls: the sink decides when
//! frames are due, so a device clock and a simulated clock drive it the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proto::StreamInfo;

/// The least audio the buffer should still hold right before a server burst arrives: absorbs
/// network jitter plus scheduling delays of both processes on a loaded machine (tokio timers on
/// a busy 2-core box slip by several milliseconds).
pub const MIN_MARGIN: Duration = Duration::from_millis(50);

/// Length of the fade from the last good frame to silence when audio is concealed: long enough
/// to avoid a click, short enough that no stale sound is invented.
pub const FADE: Duration = Duration::from_millis(5);

/// Audio further ahead of the playout position than this is dropped (and counted as overflow):
/// bounds memory against a confused or hostile server. The largest legitimate lead is a 2 s
/// burst on top of a grown 2 s target.
pub const MAX_AHEAD: Duration = Duration::from_secs(10);

/// Frames in `d` at `rate`, rounded down.
pub fn frames_in(d: Duration, rate: u32) -> u64 {
    (d.as_nanos() * u128::from(rate) / 1_000_000_000) as u64
}

/// Duration of `frames` at `rate`.
pub fn duration_of(frames: u64, rate: u32) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((u128::from(frames) * 1_000_000_000 / u128::from(rate)) as u64)
}

/// What the playout did so far; merged into [`crate::stats::Stats`] at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutCounters {
    /// Stream frames handed to the sink, received and concealed alike.
    pub played_frames: u64,
    /// Frames of those that were concealed (missing at their deadline).
    pub concealed_frames: u64,
    /// Times the buffer ran empty mid-stream and had to rebuffer.
    pub underruns: u64,
    /// Datagrams that arrived after their frames had been played.
    pub late: u64,
    /// Datagrams dropped because they lay more than [`MAX_AHEAD`] ahead.
    pub overflow: u64,
    /// Datagrams whose payload was not a whole number of frames.
    pub malformed: u64,
}

/// What [`JitterBuffer::push`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for playout (possibly trimmed of an already-played head).
    Buffered,
    /// Entirely behind the playout position: counted as late and dropped.
    Late,
    /// Too far ahead: dropped.
    Overflow,
    /// Not a whole number of frames, or empty: dropped.
    Malformed,
}

/// Where the playout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to hold the start threshold (at the start, or after an underrun).
    Buffering,
    /// Handing out frames.
    Playing,
    /// The stream ended and everything buffered has been played.
    Finished,
}

/// The jitter buffer for one stream. See the module docs.
#[derive(Debug)]
pub struct JitterBuffer {
    /// Frames per second of the stream.
    rate: u32,
    /// Interleaved channels per frame.
    channels: usize,
    /// Effective target latency (after growing for the interval).
    target: Duration,
    /// The requested target, when it had to grow (for the "says so" log line).
    grown_from: Option<Duration>,
    /// Frames that must be buffered ahead of `play_ts` to (re)start: target + sink lead.
    start_frames: u64,
    /// Frames ahead of `play_ts` beyond which datagrams are dropped.
    max_ahead_frames: u64,
    /// Frames the fade-out lasts.
    fade_frames: u64,
    /// Received, not yet (fully) played datagrams by `ts`.
    packets: BTreeMap<u64, Bytes>,
    /// The next stream frame to hand out.
    play_ts: u64,
    /// One past the last frame of any buffered datagram (at least `play_ts`).
    max_end: u64,
    /// Playing, buffering or done.
    state: State,
    /// The server said no more audio will come.
    ended: bool,
    /// After `End`: conceal up to this frame (trailing loss of a stream of known length).
    end_ts: Option<u64>,
    /// The last frame handed out, the starting point of a fade.
    last_frame: Vec<i16>,
    /// Frames into the current concealment (0 after real audio).
    fade_pos: u64,
    /// Counters for the statistics.
    counters: PlayoutCounters,
}

impl JitterBuffer {
    /// A buffer for the stream `info` describes, starting at its `start_ts` (late joiners start
    /// live), with the requested `latency` and the sink's `lead` (audio the sink takes ahead of
    /// playing it, which the buffer no longer holds).
    pub fn new(info: &StreamInfo, latency: Duration, lead: Duration) -> Self {
        let interval = Duration::from_micros(u64::from(info.interval_us));
        let needed = interval + MIN_MARGIN;
        let (target, grown_from) = if latency < needed {
            (needed, Some(latency))
        } else {
            (latency, None)
        };
        let rate = info.sample_rate;
        let channels = usize::from(info.channels.max(1));
        Self {
            rate,
            channels,
            target,
            grown_from,
            start_frames: frames_in(target + lead, rate).max(1),
            max_ahead_frames: frames_in(MAX_AHEAD + target + lead, rate),
            fade_frames: frames_in(FADE, rate).max(1),
            packets: BTreeMap::new(),
            play_ts: info.start_ts,
            max_end: info.start_ts,
            state: State::Buffering,
            ended: false,
            end_ts: None,
            last_frame: vec![0; channels],
            fade_pos: 0,
            counters: PlayoutCounters::default(),
        }
    }

    /// The target latency in effect.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// `Some(requested)` when the requested latency was too short for the server's interval and
    /// the target grew to [`Self::target`]: the caller tells the user.
    pub fn grown(&self) -> Option<Duration> {
        self.grown_from
    }

    /// Playing, buffering or finished.
    pub fn state(&self) -> State {
        self.state
    }

    /// The next stream frame to be handed out (the playout position).
    pub fn position(&self) -> u64 {
        self.play_ts
    }

    /// Frames buffered ahead of the playout position (holes included).
    pub fn buffered_frames(&self) -> u64 {
        self.max_end.saturating_sub(self.play_ts)
    }

    /// How long playout waits before the position moves again, at the pace audio arrives:
    /// while buffering, the audio still missing to the start threshold; zero while playing.
    /// A frame's deadline is this plus its distance from the position.
    pub fn start_wait(&self) -> Duration {
        match self.state {
            State::Buffering => duration_of(
                self.start_frames.saturating_sub(self.buffered_frames()),
                self.rate,
            ),
            _ => Duration::ZERO,
        }
    }

    /// [`Self::buffered_frames`] as a duration.
    pub fn buffered(&self) -> Duration {
        duration_of(self.buffered_frames(), self.rate)
    }

    /// Counters so far.
    pub fn counters(&self) -> PlayoutCounters {
        self.counters
    }

    /// True once the stream ended and everything has been handed out.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Takes one new (not duplicate) audio datagram: `ts` is its first frame, `pcm` interleaved
    /// s16le. Duplicates are the caller's job ([`crate::stats::Tracker`] knows the seqs).
    pub fn push(&mut self, ts: u64, pcm: Bytes) -> PushOutcome {
        let bpf = self.channels * 2;
        if pcm.is_empty() || pcm.len() % bpf != 0 {
            self.counters.malformed += 1;
            return PushOutcome::Malformed;
        }
        let frames = (pcm.len() / bpf) as u64;
        let end = ts.saturating_add(frames);
        if end <= self.play_ts || self.state == State::Finished {
            self.counters.late += 1;
            return PushOutcome::Late;
        }
        if end - self.play_ts > self.max_ahead_frames {
            self.counters.overflow += 1;
            return PushOutcome::Overflow;
        }
        let (ts, pcm) = if ts < self.play_ts {
            // The head was already played (concealed): keep the part still ahead, but the
            // datagram missed its deadline all the same.
            self.counters.late += 1;
            let skip = (self.play_ts - ts) as usize * bpf;
            (self.play_ts, pcm.slice(skip..))
        } else {
            (ts, pcm)
        };
        self.max_end = self.max_end.max(end);
        self.packets.insert(ts, pcm);
        PushOutcome::Buffered
    }

    /// The server ended the stream: play out what is buffered, then finish. `end_ts`, when
    /// given, is the stream's end frame: audio lost at the very end is concealed up to it, so
    /// the output keeps the stream's length.
    pub fn end(&mut self, end_ts: Option<u64>) {
        self.ended = true;
        self.end_ts = end_ts.filter(|&e| e > self.play_ts);
        if let Some(e) = self.end_ts {
            self.max_end = self.max_end.max(e);
        }
    }

    /// Hands out up to `max_frames` frames (interleaved i16, appended to `out`) that the sink
    /// wants now; returns how many. Returns fewer (often 0) while buffering or when finished.
    /// Missing audio fades out.
    pub fn pull(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.pull_with(max_frames, out, &mut Fade)
    }

    /// [`Self::pull`], with missing audio concealed by `codec` when it can (Opus PLC), else
    /// faded out.
    pub fn pull_with(
        &mut self,
        max_frames: usize,
        out: &mut Vec<i16>,
        codec: &mut dyn Conceal,
    ) -> usize {
        if self.state == State::Buffering {
            if self.ended || self.buffered_frames() >= self.start_frames {
                self.state = State::Playing;
            } else {
                return 0;
            }
        }
        self.pull_playing(max_frames, out, false, codec)
    }

    /// Synchronised playout ([`crate::schedule`]): the room's schedule, not the buffer's
    /// fill, decides when frames play. Hands out exactly `max_frames` frames (fewer only once
    /// the stream has finished): audio missing now is concealed, never waited for, so the
    /// output keeps the schedule; running empty counts one underrun per gap.
    pub fn pull_due(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.pull_due_with(max_frames, out, &mut Fade)
    }

    /// [`Self::pull_due`], with missing audio concealed by `codec` when it can (Opus PLC).
    pub fn pull_due_with(
        &mut self,
        max_frames: usize,
        out: &mut Vec<i16>,
        codec: &mut dyn Conceal,
    ) -> usize {
        if self.state == State::Buffering {
            self.state = State::Playing;
        }
        self.pull_playing(max_frames, out, true, codec)
    }

    /// What can be handed out now without waiting, for a relay that forwards audio as it
    /// arrives: `(ready, hole)`, the frames of contiguous audio from the playout position on
    /// (once the stream ended: everything left, holes and trailing loss included, as nothing
    /// more will come), and the frames missing right after them when later audio is buffered
    /// (0 when none is). Both 0 once finished.
    pub fn ready(&self) -> (u64, u64) {
        if self.state == State::Finished {
            return (0, 0);
        }
        if self.ended {
            return (self.max_end.saturating_sub(self.play_ts), 0);
        }
        let bpf = (self.channels * 2) as u64;
        let mut pos = self.play_ts;
        for (&ts, pcm) in &self.packets {
            let end = ts + pcm.len() as u64 / bpf;
            if end <= pos {
                continue;
            }
            if ts > pos {
                return (pos - self.play_ts, ts - pos);
            }
            pos = end;
        }
        (pos - self.play_ts, 0)
    }

    /// Synchronised playout: drops the next `frames` frames unplayed (the output is that far
    /// behind the schedule).
    pub fn skip(&mut self, frames: u64) {
        if self.state == State::Finished {
            return;
        }
        self.play_ts += frames;
        self.max_end = self.max_end.max(self.play_ts);
        while let Some((&ts, pcm)) = self.packets.first_key_value() {
            if ts + (pcm.len() / (self.channels * 2)) as u64 > self.play_ts {
                break;
            }
            self.packets.pop_first();
        }
    }

    fn pull_playing(
        &mut self,
        max_frames: usize,
        out: &mut Vec<i16>,
        live: bool,
        codec: &mut dyn Conceal,
    ) -> usize {
        let mut produced = 0usize;
        while produced < max_frames && self.state == State::Playing {
            let want = (max_frames - produced) as u64;
            let Some((&ts, pcm)) = self.packets.first_key_value() else {
                if let Some(e) = self.end_ts
                    && self.play_ts < e
                {
                    produced += self.conceal((e - self.play_ts).min(want), out, codec);
                    continue;
                }
                if self.ended {
                    self.state = State::Finished;
                } else if live {
                    if self.fade_pos == 0 {
                        self.counters.underruns += 1;
                    }
                    produced += self.conceal(want, out, codec);
                    continue;
                } else {
                    self.counters.underruns += 1;
                    self.state = State::Buffering;
                }
                break;
            };
            let frames = (pcm.len() / (self.channels * 2)) as u64;
            let end = ts + frames;
            if end <= self.play_ts {
                // Overlapped by audio already played (a server that overlaps datagrams).
                self.packets.pop_first();
                continue;
            }
            if ts > self.play_ts {
                produced += self.conceal((ts - self.play_ts).min(want), out, codec);
                continue;
            }
            let off = (self.play_ts - ts) as usize;
            let n = (end - self.play_ts).min(want) as usize;
            let bytes = &pcm[off * self.channels * 2..(off + n) * self.channels * 2];
            out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
            let last = out.len() - self.channels;
            self.last_frame.copy_from_slice(&out[last..]);
            self.fade_pos = 0;
            self.play_ts += n as u64;
            self.counters.played_frames += n as u64;
            produced += n;
            if self.play_ts >= end {
                self.packets.pop_first();
            }
        }
        produced
    }

    /// Appends `n` concealment frames: the codec's own, or a linear fade from the last frame,
    /// then silence.
    fn conceal(&mut self, n: u64, out: &mut Vec<i16>, codec: &mut dyn Conceal) -> usize {
        let before = out.len();
        if codec.conceal(self.play_ts, n as usize, out) {
            // The codec's audio must be exactly what was asked for: anything else is cut or
            // padded with silence so the playout position stays right.
            out.resize(before + n as usize * self.channels, 0);
            if n > 0 {
                let last = out.len() - self.channels;
                self.last_frame.copy_from_slice(&out[last..]);
                self.fade_pos = 0;
            }
        } else {
            self.fade(n, out);
        }
        self.play_ts += n;
        self.counters.played_frames += n;
        self.counters.concealed_frames += n;
        n as usize
    }

    /// Appends `n` frames fading linearly from the last frame to silence.
    fn fade(&mut self, n: u64, out: &mut Vec<i16>) {
        for _ in 0..n {
            let gain = if self.fade_pos < self.fade_frames {
                1.0 - (self.fade_pos + 1) as f32 / self.fade_frames as f32
            } else {
                0.0
            };
            for &s in &self.last_frame {
                out.push((f32::from(s) * gain) as i16);
            }
            self.fade_pos += 1;
        }
    }
}

/// A codec's own concealment of missing audio, for [`JitterBuffer::pull_with`].
pub trait Conceal {
    /// Appends `frames` frames standing in for the missing stream frames `ts..ts + frames` and
    /// returns true, or returns false (appending nothing) when it has no concealment.
    fn conceal(&mut self, ts: u64, frames: usize, out: &mut Vec<i16>) -> bool;
}

/// No concealment of its own: the jitter buffer fades out.
pub struct Fade;

impl Conceal for Fade {
    fn conceal(&mut self, _ts: u64, _frames: usize, _out: &mut Vec<i16>) -> bool {
        false
    }
}
