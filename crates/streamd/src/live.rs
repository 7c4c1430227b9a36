//! Live input: stdin and named pipes (FIFOs), raw PCM (`--format s16le:RATE:CHANNELS`) or a
//! container symphonia reads without seeking (wav, mp3, flac, ogg); and the queue a sound card
//! records into ([`crate::capture`]).
//!
//! A live source has no length and cannot be pulled faster than it arrives. A reader thread
//! ([`spawn_reader`]) moves what arrives into a small bounded queue through a [`LiveFeed`]; the
//! endpoint's tick takes what arrived through the [`LiveSource`] (an
//! [`AudioSource`](crate::endpoint::AudioSource)). The queue holds at most [`LIVE_BUFFER`] of
//! audio:
//! - a pipe writer is paced by the pipe: when the queue is full the reader thread stops reading
//!   ([`LiveFeed::push`] waits), so a writer faster than real time is slowed to real time and
//!   nothing is lost;
//! - a producer that cannot wait uses [`LiveFeed::push_dropping`]: on overrun the oldest
//!   frames are dropped, and counted ([`LiveStats::overrun_frames`]);
//! - when a tick finds fewer frames than are due while the writer is connected, the rest is
//!   sent as silence and counted as an underrun ([`LiveStats::underrun_frames`]). The endpoint
//!   never sends audio that has not arrived.
//!
//! When a FIFO's writer closes it (as MPD does between tracks), the reader thread reopens the
//! FIFO and waits for the next writer; meanwhile the stream is idle, and [`OnIdle`] says what
//! listeners get: silence (the default), a pause, or the end of the stream. Listeners give up
//! after a few seconds without any datagram (listen's `--timeout`, 3 s by default), and the
//! protocol has no keep-alive from the server, so a pause sends nothing for at most
//! [`PAUSE_QUIET`] and silence after that.
//!
//! The pacing decisions ([`LiveSource`]) are sans-IO: the time is passed in by the endpoint
//! ([`crate::endpoint::AudioSource::begin_tick`]) and tests feed frames at chosen instants.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::source::{Source, SourceInfo};

/// Most audio the live queue holds: small, so a live stream is at most this late, and enough
/// to ride out a reader thread that is scheduled late on a loaded machine.
pub const LIVE_BUFFER: Duration = Duration::from_millis(500);

/// Longest a pause (`--on-idle pause`) sends nothing: well inside listen's default 3 s
/// silence timeout. A longer idle period is filled with silence so listeners stay joined.
pub const PAUSE_QUIET: Duration = Duration::from_secs(1);

/// Lowest and highest `--format` rate: what listeners accept in a `Welcome`.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 4_000..=384_000;
/// Most `--format` channels: what listeners accept in a `Welcome`.
pub const MAX_CHANNELS: u16 = 32;

/// What listeners get while a FIFO has no writer (`--on-idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIdle {
    /// Silence at the normal rate: listeners hear nothing and stay joined.
    #[default]
    Silence,
    /// No audio for up to [`PAUSE_QUIET`], then silence (listeners would otherwise give up).
    Pause,
    /// The stream ends, as at the end of a file.
    End,
}

/// Raw PCM layout given with `--format s16le:RATE:CHANNELS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFormat {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
}

impl RawFormat {
    /// Parses `s16le:RATE:CHANNELS` (the only sample format the protocol carries); the error
    /// names the value and what is expected.
    pub fn parse(s: &str) -> Result<RawFormat, String> {
        let bad = |why: &str| format!("--format {s:?}: {why} (expected s16le:RATE:CHANNELS)");
        let mut parts = s.split(':');
        let (Some(fmt), Some(rate), Some(ch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three fields"));
        };
        if !fmt.eq_ignore_ascii_case("s16le") {
            return Err(bad("only s16le is supported"));
        }
        let sample_rate: u32 = rate.parse().map_err(|_| bad("rate is not a number"))?;
        if !RATE_RANGE.contains(&sample_rate) {
            return Err(bad(&format!(
                "rate outside {}..={}",
                RATE_RANGE.start(),
                RATE_RANGE.end()
            )));
        }
        let channels: u16 = ch.parse().map_err(|_| bad("channels is not a number"))?;
        if !(1..=MAX_CHANNELS).contains(&channels) {
            return Err(bad(&format!("channels outside 1..={MAX_CHANNELS}")));
        }
        Ok(RawFormat {
            sample_rate,
            channels,
        })
    }

    /// Bytes in one frame.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels) * 2
    }
}

/// Counters of a live source, for the summary lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveStats {
    /// Times the queue ran dry while the writer was connected.
    pub underruns: u64,
    /// Frames of silence sent in place of audio that had not arrived.
    pub underrun_frames: u64,
    /// Frames dropped because the queue was full ([`LiveFeed::push_dropping`]).
    pub overrun_frames: u64,
    /// Times the input went idle (a FIFO's writer closed it).
    pub idle_periods: u64,
    /// Frames of silence sent while idle.
    pub idle_frames: u64,
}

/// Where the input is, as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    /// A writer is connected (or about to be): a dry queue is an underrun.
    Flowing,
    /// No writer: a dry queue is idle time.
    Idle,
    /// No more input will ever come.
    Ended,
}

#[derive(Debug)]
struct Queue {
    samples: VecDeque<i16>,
    /// Capacity in samples (whole frames).
    cap: usize,
    state: FeedState,
    overrun_frames: u64,
    /// The source is gone: pushes fail so the reader thread ends.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the tick took frames (room for a waiting push) or the source closed.
    space: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (plain pushes and pops).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The source was dropped: nobody takes frames any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream has ended")]
pub struct Closed;

/// The writing end of a live queue: a reader thread (or a test) pushes what arrives.
#[derive(Debug, Clone)]
pub struct LiveFeed {
    shared: Arc<Shared>,
    channels: usize,
}

impl LiveFeed {
    /// Appends interleaved samples (whole frames), waiting for room when the queue is full:
    /// the pipe's writer is slowed to the stream's pace. Fails once the source is gone.
    pub fn push(&self, mut samples: &[i16]) -> Result<(), Closed> {
        let mut q = self.shared.lock();
        q.state = FeedState::Flowing;
        while !samples.is_empty() {
            if q.closed {
                return Err(Closed);
            }
            let room = q.cap.saturating_sub(q.samples.len());
            let room = room - room % self.channels;
            if room == 0 {
                q = self.shared.space.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let n = room.min(samples.len());
            q.samples.extend(&samples[..n]);
            samples = &samples[n..];
        }
        Ok(())
    }

    /// Appends interleaved samples (whole frames) without waiting: on overrun the oldest
    /// frames are dropped and counted. Returns the frames dropped by this call.
    pub fn push_dropping(&self, samples: &[i16]) -> u64 {
        let mut q = self.shared.lock();
        q.state = FeedState::Flowing;
        let cap = q.cap;
        let mut dropped = 0usize;
        let samples = if samples.len() > cap {
            dropped += samples.len() - cap;
            &samples[samples.len() - cap..]
        } else {
            samples
        };
        let over = (q.samples.len() + samples.len()).saturating_sub(cap);
        q.samples.drain(..over);
        dropped += over;
        q.samples.extend(samples);
        let frames = (dropped / self.channels) as u64;
        q.overrun_frames += frames;
        frames
    }

    /// The writer went away (a FIFO was closed); another may come.
    pub fn idle(&self) {
        let mut q = self.shared.lock();
        if q.state == FeedState::Flowing {
            q.state = FeedState::Idle;
        }
    }

    /// No more input will come (end of stdin): the stream ends once the queue is drained.
    pub fn end(&self) {
        self.shared.lock().state = FeedState::Ended;
    }

    /// No writer yet (a FIFO before its first writer): a dry queue is idle time, not an
    /// underrun.
    pub fn waiting(&self) {
        self.shared.lock().state = FeedState::Idle;
    }

    /// Whether the source is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

/// The reading end: an [`AudioSource`](crate::endpoint::AudioSource) that hands the tick what
/// arrived, silence for what did not (counted), and follows [`OnIdle`] while idle.
#[derive(Debug)]
pub struct LiveSource {
    info: SourceInfo,
    shared: Arc<Shared>,
    on_idle: OnIdle,
    /// The tick's time ([`LiveSource::begin_tick`]).
    now: Option<Instant>,
    /// When the current idle period began.
    idle_since: Option<Instant>,
    /// The last read stopped short for a pause.
    holding: bool,
    /// The last read found the queue dry while flowing (one underrun until audio returns).
    in_underrun: bool,
    /// Some audio has arrived: idle with [`OnIdle::End`] ends only after a writer came.
    heard: bool,
    finished: bool,
    stats: LiveStats,
}

/// A live queue for a stream described by `info`, holding at most `capacity_frames` frames:
/// the feed for the reader, the source for the endpoint.
pub fn channel(
    info: SourceInfo,
    capacity_frames: usize,
    on_idle: OnIdle,
) -> (LiveFeed, LiveSource) {
    let channels = usize::from(info.channels.max(1));
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            samples: VecDeque::with_capacity(capacity_frames.max(1) * channels),
            cap: capacity_frames.max(1) * channels,
            state: FeedState::Flowing,
            overrun_frames: 0,
            closed: false,
        }),
        space: Condvar::new(),
    });
    let feed = LiveFeed {
        shared: shared.clone(),
        channels,
    };
    let source = LiveSource {
        info: SourceInfo {
            total_frames: None,
            ..info
        },
        shared,
        on_idle,
        now: None,
        idle_since: None,
        holding: false,
        in_underrun: false,
        heard: false,
        finished: false,
        stats: LiveStats::default(),
    };
    (feed, source)
}

/// Frames in [`LIVE_BUFFER`] at `rate`.
pub fn buffer_frames(rate: u32) -> usize {
    let frames = LIVE_BUFFER.as_millis() * u128::from(rate) / 1000;
    usize::try_from(frames).unwrap_or(usize::MAX).max(1)
}

impl LiveSource {
    /// What the stream is (no length).
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// The time of the tick about to read.
    pub fn begin_tick(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Counters so far.
    pub fn stats(&self) -> LiveStats {
        LiveStats {
            overrun_frames: self.shared.lock().overrun_frames,
            ..self.stats
        }
    }

    /// Whether the last read stopped short for a pause (not the end).
    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// Whether the stream has ended (end of stdin, or idle with [`OnIdle::End`]).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Appends up to `max_frames` frames to `out`: what arrived, then silence or nothing as the
    /// state says. Fewer than asked only for a pause ([`LiveSource::is_holding`]) or at the end.
    pub fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        self.holding = false;
        if self.finished {
            return 0;
        }
        let ch = usize::from(self.info.channels.max(1));
        let mut q = self.shared.lock();
        let take = (q.samples.len() / ch).min(max_frames);
        out.extend(q.samples.drain(..take * ch));
        if take > 0 {
            // Audio arrived since the last idle period (if any): the next one is a new one.
            self.heard = true;
            self.idle_since = None;
        }
        let state = q.state;
        drop(q);
        if take > 0 {
            self.shared.space.notify_all();
        }
        if take == max_frames {
            self.in_underrun = false;
            return take;
        }
        let missing = max_frames - take;
        let silence = |out: &mut Vec<i16>| out.resize(out.len() + missing * ch, 0);
        match (state, self.on_idle) {
            (FeedState::Flowing, _) => {
                if !self.in_underrun {
                    self.in_underrun = true;
                    self.stats.underruns += 1;
                }
                self.stats.underrun_frames += missing as u64;
                silence(out);
                max_frames
            }
            (FeedState::Ended, _) => {
                self.finished = true;
                take
            }
            (FeedState::Idle, OnIdle::End) if self.heard => {
                self.finished = true;
                take
            }
            (FeedState::Idle, on_idle) => {
                self.in_underrun = false;
                let now = self.now;
                if self.idle_since.is_none() {
                    self.stats.idle_periods += 1;
                    self.idle_since = now.or(Some(Instant::now()));
                }
                let quiet = match (now, self.idle_since) {
                    (Some(now), Some(since)) => now.saturating_duration_since(since) < PAUSE_QUIET,
                    _ => false,
                };
                if on_idle == OnIdle::Pause && quiet {
                    self.holding = true;
                    return take;
                }
                self.stats.idle_frames += missing as u64;
                silence(out);
                max_frames
            }
        }
    }
}

impl Drop for LiveSource {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.space.notify_all();
    }
}

/// Where live input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveInput {
    /// Standard input: its end is the end of the stream.
    Stdin,
    /// A named pipe: reopened whenever its writer closes it.
    Fifo(PathBuf),
}

impl LiveInput {
    /// For log lines and errors.
    pub fn name(&self) -> String {
        match self {
            LiveInput::Stdin => "stdin".into(),
            LiveInput::Fifo(p) => p.display().to_string(),
        }
    }

    fn open(&self) -> std::io::Result<Box<dyn Read + Send + Sync>> {
        match self {
            LiveInput::Stdin => Ok(Box::new(std::io::stdin())),
            // Blocks until a writer opens the FIFO.
            LiveInput::Fifo(p) => Ok(Box::new(File::open(p)?)),
        }
    }
}

/// How the reader thread decodes what it reads.
#[derive(Debug)]
pub enum Decode {
    /// Raw interleaved s16le frames.
    Raw(RawFormat),
    /// A container, already probed on the first input (which fixed the stream's format).
    Container(Box<Source>),
}

/// Probes the first container on `input` (waiting for a FIFO's first writer), so that its
/// format is known before streaming starts.
pub fn probe(input: &LiveInput) -> Result<Source, crate::source::SourceError> {
    let name = PathBuf::from(input.name());
    let reader = input
        .open()
        .map_err(|e| crate::source::SourceError::Unreadable {
            path: name.clone(),
            source: e,
        })?;
    Source::open_stream(&name, reader)
}

/// Starts the thread that reads `input` into `feed` until the source is gone or stdin ends.
pub fn spawn_reader(
    input: LiveInput,
    decode: Decode,
    feed: LiveFeed,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("streamd-input".into())
        .spawn(move || read_loop(&input, decode, &feed))
}

fn read_loop(input: &LiveInput, decode: Decode, feed: &LiveFeed) {
    let (rate, channels) = match &decode {
        Decode::Raw(f) => (f.sample_rate, f.channels),
        Decode::Container(s) => (s.info().sample_rate, s.info().channels),
    };
    let mut first = match decode {
        Decode::Container(s) => Some(*s),
        Decode::Raw(_) => None,
    };
    let raw = first.is_none();
    let mut samples: Vec<i16> = Vec::with_capacity(8192);
    loop {
        let ok = if raw {
            match input.open() {
                Ok(r) => read_raw(r, usize::from(channels), feed, &mut samples),
                Err(e) => {
                    tracing::warn!("{}: cannot open: {e}", input.name());
                    return feed.end();
                }
            }
        } else {
            let src = match first.take() {
                Some(s) => Some(s),
                None => match probe(input) {
                    Ok(s) if (s.info().sample_rate, s.info().channels) == (rate, channels) => {
                        Some(s)
                    }
                    Ok(s) => {
                        tracing::warn!(
                            "{}: skipping input at {} Hz, {} ch: the stream is {rate} Hz, {channels} ch",
                            input.name(),
                            s.info().sample_rate,
                            s.info().channels
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!("skipping input: {e}");
                        None
                    }
                },
            };
            match src {
                Some(mut s) => {
                    let mut ok = true;
                    loop {
                        samples.clear();
                        if s.read_frames(4096, &mut samples) == 0 {
                            break;
                        }
                        if feed.push(&samples).is_err() {
                            ok = false;
                            break;
                        }
                    }
                    ok
                }
                None => !feed.is_closed(),
            }
        };
        if !ok {
            return;
        }
        match input {
            LiveInput::Stdin => return feed.end(),
            LiveInput::Fifo(_) => {
                tracing::info!("{}: writer closed; waiting for the next one", input.name());
                feed.idle();
            }
        }
    }
}

/// Reads raw frames from `r` into `feed` until its end; false once the source is gone.
fn read_raw(
    mut r: Box<dyn Read + Send + Sync>,
    channels: usize,
    feed: &LiveFeed,
    samples: &mut Vec<i16>,
) -> bool {
    let bpf = channels * 2;
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0usize;
    loop {
        let n = match r.read(&mut buf[have..]) {
            Ok(0) => return true,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("input read error: {e}");
                return true;
            }
        };
        have += n;
        let whole = have - have % bpf;
        samples.clear();
        samples.extend(
            buf[..whole]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        buf.copy_within(whole..have, 0);
        have -= whole;
        if !samples.is_empty() && feed.push(samples).is_err() {
            return false;
        }
    }
}

/// Whether `path` is a named pipe.
pub fn is_fifo(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

impl crate::endpoint::AudioSource for LiveSource {
    fn info(&self) -> &SourceInfo {
        LiveSource::info(self)
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        LiveSource::read_frames(self, max_frames, out)
    }

    fn is_finished(&self) -> bool {
        LiveSource::is_finished(self)
    }

    fn rewind(&mut self) -> Result<(), String> {
        Err("a live input cannot loop".into())
    }

    fn begin_tick(&mut self, now: Instant) {
        LiveSource::begin_tick(self, now);
    }

    fn is_holding(&self) -> bool {
        LiveSource::is_holding(self)
    }

    fn live_stats(&self) -> Option<LiveStats> {
        Some(self.stats())
    }
}
