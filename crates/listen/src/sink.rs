//! Where played audio goes: one [`Sink`] trait, three backends.
//!
//! A sink is pulled, like a sound card: [`Sink::demand`] says how many stream frames it can take
//! now, the jitter buffer hands out that many, [`Sink::write`] takes them. The sink's clock
//! therefore decides when frames are due. A device is clocked by its hardware; the virtual sinks
//! ([`VirtualDevice`]) by the `now` the caller passes, so they run on the wall clock in the
//! `listen` binary and on simulated time in a simulation alike:
//!
//! - [`CpalSink`]: an audio device through cpal. The client thread converts the stream to the
//!   device's channel count and rate and pushes i16 samples into a lock-free `rtrb` ring; the
//!   real-time callback only pops from it and converts the sample format (plain arithmetic), or
//!   writes silence when the ring is empty. It never locks, allocates, logs or blocks.
//! - [`WavSink`]: a 16-bit WAV file at the stream's rate and channel count (hound), consumed by
//!   a virtual device that plays at the stream's rate, so the jitter buffer behaves as with a
//!   card. The file holds exactly the stream frames handed out, concealment included; the
//!   silence a device would play while rebuffering is not stream audio and is not written.
//! - [`NullSink`]: the same virtual device, discarding the audio (tests, benchmarks).
//! - [`MemorySink`]: the same virtual device, keeping the audio in memory (what a simulated
//!   listener heard).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SizedSample};

use crate::jitter::{duration_of, frames_in};
use crate::simclock::SimClock;

/// How far ahead a virtual device (WAV, null) takes audio: the client refills it when it is
/// down to [`VIRTUAL_REFILL_MARGIN`], so the client's timer slipping a few milliseconds never
/// starves it.
pub const VIRTUAL_LEAD: Duration = Duration::from_millis(20);

/// A virtual device asks to be refilled when it holds this much audio: what the client's timer
/// may slip before the device runs dry. Half of [`VIRTUAL_LEAD`]: a full device is refilled
/// every 10 ms at most, and every server burst refills it too, so at a 20 ms interval the
/// client wakes ~100 times a second (a fixed 5 ms tick: 250). Under load on the 2-core
/// machine it ran dry about as often as with that tick (8 times in 40 s against 6; with a
/// 5 ms margin, 16).
pub const VIRTUAL_REFILL_MARGIN: Duration = Duration::from_millis(10);

/// How often an audio device's ring is topped up: the ring's lead (200 ms) is the margin
/// against this process being descheduled, so it is kept nearly full.
pub const DEVICE_REFILL: Duration = Duration::from_millis(5);

/// Capacity of the ring in front of an audio device: the margin against the client thread
/// being descheduled. It must exceed the device's callback period (PulseAudio through ALSA
/// asked for 1024 frames, 23 ms at 44.1 kHz) plus the client's tick and its slippage, or the
/// callback finds it short and plays a gap. 100 ms once starved for 1023 frames while two
/// compilers ran on this 2-core machine; 200 ms did not.
pub const DEVICE_LEAD: Duration = Duration::from_millis(200);

/// How long a device stream is kept alive after the last samples were queued, beyond the ring:
/// dropping it at once lost ~1160 frames still in the device's own buffer.
pub const DEVICE_LINGER: Duration = Duration::from_millis(300);

/// What can go wrong with a sink. The messages are shown to the user as they are.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No audio output device could be opened.
    #[error(
        "no audio output device available ({0}); use --output FILE.wav to write the stream to a file"
    )]
    NoDevice(String),
    /// `--device NAME` matched nothing.
    #[error(
        "no output device named {name:?}; available: {available} (see --list-devices, or use --output FILE.wav)"
    )]
    DeviceNotFound {
        /// What the user asked for.
        name: String,
        /// The names that exist.
        available: String,
    },
    /// The device refused every configuration we can produce.
    #[error("audio device {device:?}: {detail}")]
    Device {
        /// The device's name.
        device: String,
        /// What failed.
        detail: String,
    },
    /// The WAV file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// What hound said.
        source: hound::Error,
    },
}

/// A destination for played audio, on its own clock or the caller's. See the module docs.
pub trait Sink: Send {
    /// How much audio the sink takes ahead of playing it; the jitter buffer adds this to its
    /// start threshold, since frames in the sink no longer protect against jitter.
    fn lead(&self) -> Duration;

    /// Stream frames the sink can take at `now` without overrunning its buffer.
    fn demand(&mut self, now: Instant) -> usize;

    /// Takes interleaved stream frames (at most [`Self::demand`] of them).
    fn write(&mut self, now: Instant, samples: &[i16]) -> Result<(), SinkError>;

    /// After the sink was given all it asked for at `now`: the latest instant at which it must
    /// be offered audio again so that it does not run dry (the client sleeps until then unless
    /// audio arrives first).
    fn refill_at(&self, now: Instant) -> Instant;

    /// No more audio will come: flush, and return how long the caller must wait before dropping
    /// the sink for everything written to be heard.
    fn finish(&mut self, now: Instant) -> Result<Duration, SinkError>;

    /// When a frame written at `now` will leave the output: after what the sink still holds
    /// (the playout schedule and `--playout-log` need it). A sink that cannot tell says `now`.
    fn output_at(&self, now: Instant) -> Instant {
        now
    }

    /// Synchronised playout: the next write (at `now`) is the first frame of a playout that
    /// should have begun at `at` (at most a few milliseconds before the write). Returns when
    /// that write will really start playing: a virtual device starts its clock at `at`, so
    /// the schedule is kept to the frame; a device that cannot go back (a sound card) starts
    /// at its [`Sink::output_at`], and the schedule skips what it is late by.
    fn start_at(&mut self, now: Instant, at: Instant) -> Instant {
        let _ = at;
        self.output_at(now)
    }

    /// Whether the sink plays on the caller's clock (a [`VirtualDevice`]): its rate against
    /// the server's is then the listener clock's, which the clock exchange measures, so
    /// synchronised playout compensates it from the start instead of learning it.
    fn on_caller_clock(&self) -> bool {
        false
    }
}

/// A device that plays `rate` frames per second from a buffer of `capacity` frames, on the
/// caller's clock: the timing model of [`WavSink`] and [`NullSink`].
#[derive(Debug, Clone)]
pub struct VirtualDevice {
    /// Frames per second.
    rate: u32,
    /// Frames the buffer holds.
    capacity: u64,
    /// When everything written so far will have been played.
    busy_until: Option<Instant>,
    /// `busy_until` is a start instant set by [`Self::start_at`] for the next write.
    start_pending: bool,
    /// Keeps time since a synchronised start ([`Self::start_at`]): like a sound card's clock,
    /// the playout position runs on whether or not audio was written in time, so audio
    /// written late is played at the position it was due (a file and a null device have no
    /// real output that could have gone silent), and a descheduled process costs the
    /// schedule nothing.
    keeps_time: bool,
}

impl VirtualDevice {
    /// A device at `rate` with a buffer of `lead`.
    pub fn new(rate: u32, lead: Duration) -> Self {
        Self {
            rate,
            capacity: frames_in(lead, rate).max(1),
            busy_until: None,
            start_pending: false,
            keeps_time: false,
        }
    }

    /// Frames written but not yet played at `now`.
    pub fn queued(&self, now: Instant) -> u64 {
        self.busy_until.map_or(0, |b| {
            frames_in(b.saturating_duration_since(now), self.rate)
        })
    }

    /// Room in the buffer at `now`.
    pub fn demand(&self, now: Instant) -> usize {
        self.capacity.saturating_sub(self.queued(now)) as usize
    }

    /// `frames` were written at `now`.
    pub fn wrote(&mut self, now: Instant, frames: u64) {
        let from = match self.busy_until {
            Some(b) if std::mem::take(&mut self.start_pending) || self.keeps_time => b,
            b => b.map_or(now, |b| b.max(now)),
        };
        self.busy_until = Some(from + duration_of(frames, self.rate));
    }

    /// When the device will hold only [`VIRTUAL_REFILL_MARGIN`] (at the latest `now`): the
    /// moment to refill it.
    pub fn refill_at(&self, now: Instant) -> Instant {
        self.busy_until
            .and_then(|b| b.checked_sub(VIRTUAL_REFILL_MARGIN))
            .map_or(now, |t| t.max(now))
    }

    /// When a frame written at `now` will be played: once everything written before it has
    /// (after a synchronised start, at the position the device's clock has reached, even if
    /// that is past).
    pub fn output_at(&self, now: Instant) -> Instant {
        match self.busy_until {
            Some(b) if self.keeps_time => b,
            b => b.map_or(now, |b| b.max(now)),
        }
    }

    /// The next write starts playing at `at`, even if that is already past (a synchronised
    /// start that woke late); from then on the device keeps time. Ignored while something is
    /// still playing. Returns when the next write starts playing: `at`, or after what still
    /// plays.
    pub fn start_at(&mut self, now: Instant, at: Instant) -> Instant {
        if self.busy_until.is_none_or(|b| b <= now) {
            self.busy_until = Some(at);
            self.start_pending = true;
            self.keeps_time = true;
            return at;
        }
        self.output_at(now)
    }

    /// Time until everything written has been played.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.busy_until
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(now))
    }
}

/// Discards audio, consumed by a [`VirtualDevice`] on the caller's clock.
#[derive(Debug)]
pub struct NullSink {
    /// The clock.
    dev: VirtualDevice,
    /// Interleaved channels, to count frames.
    channels: usize,
}

impl NullSink {
    /// A null sink for a stream of `rate` and `channels`.
    pub fn new(rate: u32, channels: u16) -> Self {
        Self {
            dev: VirtualDevice::new(rate, VIRTUAL_LEAD),
            channels: usize::from(channels.max(1)),
        }
    }
}

impl Sink for NullSink {
    fn lead(&self) -> Duration {
        VIRTUAL_LEAD
    }
    fn demand(&mut self, now: Instant) -> usize {
        self.dev.demand(now)
    }
    fn write(&mut self, now: Instant, samples: &[i16]) -> Result<(), SinkError> {
        self.dev.wrote(now, (samples.len() / self.channels) as u64);
        Ok(())
    }
    fn refill_at(&self, now: Instant) -> Instant {
        self.dev.refill_at(now)
    }

    fn output_at(&self, now: Instant) -> Instant {
        self.dev.output_at(now)
    }

    fn start_at(&mut self, now: Instant, at: Instant) -> Instant {
        self.dev.start_at(now, at)
    }
    fn on_caller_clock(&self) -> bool {
        true
    }
    fn finish(&mut self, now: Instant) -> Result<Duration, SinkError> {
        Ok(self.dev.remaining(now))
    }
}

/// Keeps the played stream in memory, consumed by a [`VirtualDevice`]: a simulated listener's
/// ears, so a simulation can compare what was played with what was sent.
#[derive(Debug)]
pub struct MemorySink {
    /// The clock.
    dev: VirtualDevice,
    /// Interleaved channels, to count frames.
    channels: usize,
    /// Everything written, interleaved.
    samples: Vec<i16>,
}

impl MemorySink {
    /// A memory sink for a stream of `rate` and `channels`.
    pub fn new(rate: u32, channels: u16) -> Self {
        Self {
            dev: VirtualDevice::new(rate, VIRTUAL_LEAD),
            channels: usize::from(channels.max(1)),
            samples: Vec::new(),
        }
    }

    /// The interleaved samples written so far.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }
}

impl Sink for MemorySink {
    fn lead(&self) -> Duration {
        VIRTUAL_LEAD
    }
    fn demand(&mut self, now: Instant) -> usize {
        self.dev.demand(now)
    }
    fn write(&mut self, now: Instant, samples: &[i16]) -> Result<(), SinkError> {
        self.samples.extend_from_slice(samples);
        self.dev.wrote(now, (samples.len() / self.channels) as u64);
        Ok(())
    }
    fn refill_at(&self, now: Instant) -> Instant {
        self.dev.refill_at(now)
    }

    fn output_at(&self, now: Instant) -> Instant {
        self.dev.output_at(now)
    }

    fn start_at(&mut self, now: Instant, at: Instant) -> Instant {
        self.dev.start_at(now, at)
    }
    fn on_caller_clock(&self) -> bool {
        true
    }
    fn finish(&mut self, now: Instant) -> Result<Duration, SinkError> {
        Ok(self.dev.remaining(now))
    }
}

/// Writes the played stream to a 16-bit WAV file, consumed by a [`VirtualDevice`] on the
/// caller's clock.
pub struct WavSink {
    /// The clock.
    dev: VirtualDevice,
    /// Interleaved channels, to count frames.
    channels: usize,
    /// The open file; `None` once finalized.
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    /// For error messages.
    path: PathBuf,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink").field("path", &self.path).finish()
    }
}

impl WavSink {
    /// Creates (or truncates) `path` for a stream of `rate` and `channels`.
    pub fn create(path: &Path, rate: u32, channels: u16) -> Result<Self, SinkError> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let err = |source| SinkError::Wav {
            path: path.to_owned(),
            source,
        };
        let file = File::create(path).map_err(|e| err(hound::Error::IoError(e)))?;
        let writer =
            hound::WavWriter::new(BufWriter::with_capacity(WAV_BUFFER, file), spec).map_err(err)?;
        Ok(Self {
            dev: VirtualDevice::new(rate, VIRTUAL_LEAD),
            channels: usize::from(channels.max(1)),
            writer: Some(writer),
            path: path.to_owned(),
        })
    }

    fn err(&self, source: hound::Error) -> SinkError {
        SinkError::Wav {
            path: self.path.clone(),
            source,
        }
    }
}

impl Sink for WavSink {
    fn lead(&self) -> Duration {
        VIRTUAL_LEAD
    }
    fn demand(&mut self, now: Instant) -> usize {
        self.dev.demand(now)
    }
    fn write(&mut self, now: Instant, samples: &[i16]) -> Result<(), SinkError> {
        if let Some(w) = self.writer.as_mut() {
            // hound's 16-bit writer: the samples go into one reused buffer, then to the file in
            // one copy (`write_sample` on the `WavWriter` dispatches per sample).
            // Chunks keep the count within the writer's u32 (a write is a few ms of audio).
            for chunk in samples.chunks(1 << 20) {
                let mut sw = w.get_i16_writer(chunk.len() as u32);
                for &s in chunk {
                    sw.write_sample(s);
                }
                sw.flush().map_err(|source| SinkError::Wav {
                    path: self.path.clone(),
                    source,
                })?;
            }
        }
        self.dev.wrote(now, (samples.len() / self.channels) as u64);
        Ok(())
    }
    fn refill_at(&self, now: Instant) -> Instant {
        self.dev.refill_at(now)
    }

    fn output_at(&self, now: Instant) -> Instant {
        self.dev.output_at(now)
    }

    fn start_at(&mut self, now: Instant, at: Instant) -> Instant {
        self.dev.start_at(now, at)
    }
    fn on_caller_clock(&self) -> bool {
        true
    }
    fn finish(&mut self, now: Instant) -> Result<Duration, SinkError> {
        if let Some(w) = self.writer.take() {
            w.finalize().map_err(|e| self.err(e))?;
        }
        Ok(self.dev.remaining(now))
    }
}

/// Write buffer of the WAV file: ~370 ms of 44.1 kHz stereo per `write`, instead of the
/// default 8 KiB (46 ms).
pub const WAV_BUFFER: usize = 64 << 10;

/// Maps stream frames to the device's channel count and rate, on the client thread.
///
/// Channels: equal counts pass through; mono is copied to every device channel; to a mono device
/// the channels are averaged; otherwise the first channels map one to one and extra device
/// channels get silence. Rate: when the device cannot run at the stream's rate, linear
/// interpolation between neighbouring frames (adequate for a fallback; a device that takes the
/// stream's rate, as PulseAudio does, is always preferred and then nothing is resampled).
#[derive(Debug, Clone)]
pub struct Converter {
    /// Stream channels.
    in_ch: usize,
    /// Device channels.
    out_ch: usize,
    /// Input frames per output frame.
    step: f64,
    /// Position of the next output frame, in input frames, where 0 is `prev`.
    pos: f64,
    /// The last channel-mapped input frame of the previous chunk.
    prev: Vec<i16>,
    /// Channel-mapped frames of the current chunk.
    mapped: Vec<i16>,
}

impl Converter {
    /// A converter from `in_ch` channels at `in_rate` to `out_ch` at `out_rate`.
    pub fn new(in_ch: u16, in_rate: u32, out_ch: u16, out_rate: u32) -> Self {
        let out_ch = usize::from(out_ch.max(1));
        Self {
            in_ch: usize::from(in_ch.max(1)),
            out_ch,
            step: f64::from(in_rate) / f64::from(out_rate.max(1)),
            pos: 1.0,
            prev: vec![0; out_ch],
            mapped: Vec::new(),
        }
    }

    /// True when nothing is resampled.
    pub fn same_rate(&self) -> bool {
        self.step == 1.0
    }

    /// Device frames that `in_frames` stream frames become (at most; resampling may give one
    /// fewer).
    pub fn out_frames(&self, in_frames: usize) -> usize {
        ((in_frames as f64) / self.step).ceil() as usize + 1
    }

    /// Stream frames that fit in `out_frames` device frames.
    pub fn in_frames(&self, out_frames: usize) -> usize {
        if self.same_rate() {
            out_frames
        } else {
            ((out_frames.saturating_sub(2)) as f64 * self.step).floor() as usize
        }
    }

    /// Converts interleaved stream frames, appending device frames to `out`.
    pub fn convert(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let (ic, oc) = (self.in_ch, self.out_ch);
        self.mapped.clear();
        for f in input.chunks_exact(ic) {
            for o in 0..oc {
                let s = if ic == oc {
                    f[o]
                } else if ic == 1 {
                    f[0]
                } else if oc == 1 {
                    (f.iter().map(|&s| i32::from(s)).sum::<i32>() / ic as i32) as i16
                } else if o < ic {
                    f[o]
                } else {
                    0
                };
                self.mapped.push(s);
            }
        }
        if self.same_rate() {
            out.extend_from_slice(&self.mapped);
            return;
        }
        let n = self.mapped.len() / oc;
        if n == 0 {
            return;
        }
        // Index 0 is `prev`, index k (1..=n) is mapped frame k-1.
        let at = |i: usize, c: usize| -> f64 {
            if i == 0 {
                f64::from(self.prev[c])
            } else {
                f64::from(self.mapped[(i - 1) * oc + c])
            }
        };
        while self.pos < n as f64 {
            let i = self.pos.floor() as usize;
            let frac = self.pos - i as f64;
            for c in 0..oc {
                let v = at(i, c) * (1.0 - frac) + at(i + 1, c) * frac;
                out.push(v.round().clamp(-32768.0, 32767.0) as i16);
            }
            self.pos += self.step;
        }
        self.pos -= n as f64;
        self.prev.copy_from_slice(&self.mapped[(n - 1) * oc..]);
    }
}

/// Plays through an audio device with cpal. See the module docs.
pub struct CpalSink {
    /// Keeps the device playing; dropped last.
    _stream: cpal::Stream,
    /// Our end of the ring; the callback holds the consumer.
    producer: rtrb::Producer<i16>,
    /// Stream → device channels and rate.
    conv: Converter,
    /// Device channels.
    dev_ch: usize,
    /// Device rate.
    dev_rate: u32,
    /// Stream channels.
    stream_ch: usize,
    /// Ring capacity in samples.
    capacity: usize,
    /// Converted samples waiting to go into the ring (reused).
    scratch: Vec<i16>,
    /// What the device side saw, counted lock-free.
    counters: Arc<DeviceCounters>,
    /// The listener's clock, which the instants of [`Sink`] are read on.
    clock: SimClock,
    /// For messages.
    name: String,
}

impl std::fmt::Debug for CpalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpalSink")
            .field("device", &self.name)
            .finish()
    }
}

/// Runs `f` with alsa-lib's own messages, which it otherwise prints straight to stderr (e.g.
/// "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default" on a machine without a
/// sound card), captured on this thread and logged at debug level instead: the user gets our
/// one-line error, not a screenful of library noise.
fn quiet_alsa<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_os = "linux")]
    let captured = alsa::Output::local_error_handler().ok();
    let r = f();
    #[cfg(target_os = "linux")]
    if let Some(out) = captured {
        let text = out.borrow().to_string();
        if !text.trim().is_empty() {
            tracing::debug!("alsa-lib: {}", text.trim_end());
        }
    }
    r
}

fn device_name(d: &cpal::Device) -> String {
    d.description()
        .map(|x| x.name().to_owned())
        .or_else(|_| d.id().map(|i| i.to_string()))
        .unwrap_or_else(|_| "?".to_owned())
}

fn find_device(name: Option<&str>) -> Result<cpal::Device, SinkError> {
    let host = cpal::default_host();
    match name {
        None => host
            .default_output_device()
            .ok_or_else(|| SinkError::NoDevice("the audio host reports no default output".into())),
        Some(want) => {
            let devices: Vec<cpal::Device> = host
                .output_devices()
                .map_err(|e| SinkError::NoDevice(e.to_string()))?
                .collect();
            // By name, by id (`alsa:pulse`) or by the id without its host (`pulse`).
            let hit = devices.iter().find(|d| {
                let id = d.id().map(|i| i.to_string()).unwrap_or_default();
                device_name(d) == want
                    || id == want
                    || id.split_once(':').is_some_and(|(_, rest)| rest == want)
            });
            match hit {
                Some(d) => Ok(d.clone()),
                None => Err(SinkError::DeviceNotFound {
                    name: want.to_owned(),
                    available: devices
                        .iter()
                        .filter_map(|d| d.id().ok().map(|i| i.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

/// Preference among device sample formats: the stream's own first (bit-exact), then the
/// formats that hold 16 bits without loss.
fn format_rank(f: cpal::SampleFormat) -> Option<u8> {
    use cpal::SampleFormat as F;
    Some(match f {
        F::I16 => 0,
        F::F32 => 1,
        F::I32 => 2,
        F::F64 => 3,
        F::U16 => 4,
        F::I8 => 5,
        F::U8 => 6,
        _ => return None,
    })
}

/// Picks the device configuration closest to the stream: rate first (no resampling), then
/// channel count, then sample format.
fn choose_config(
    device: &cpal::Device,
    rate: u32,
    channels: u16,
) -> Result<(cpal::StreamConfig, cpal::SampleFormat), SinkError> {
    let name = device_name(device);
    let configs: Vec<_> = device
        .supported_output_configs()
        .map_err(|e| SinkError::NoDevice(format!("{name}: {e}")))?
        .collect();
    let best = configs
        .iter()
        .filter_map(|c| {
            let rank = format_rank(c.sample_format())?;
            let rate_ok = c.min_sample_rate() <= rate && rate <= c.max_sample_rate();
            let ch_ok = c.channels() == channels;
            Some(((!rate_ok, !ch_ok, rank), c))
        })
        .min_by_key(|(k, _)| *k)
        .map(|(_, c)| c);
    let Some(c) = best else {
        return Err(SinkError::Device {
            device: name,
            detail: "offers no sample format we can convert to".into(),
        });
    };
    let dev_rate = rate.clamp(c.min_sample_rate(), c.max_sample_rate());
    Ok((
        cpal::StreamConfig {
            channels: c.channels(),
            sample_rate: dev_rate,
            buffer_size: cpal::BufferSize::Default,
        },
        c.sample_format(),
    ))
}

/// Counters shared with the device's threads (atomics: the callback may not lock).
#[derive(Debug)]
struct DeviceCounters {
    /// Errors cpal's error callback reported.
    errors: AtomicU64,
    /// Samples of silence the data callback played after the first audio because the ring was
    /// short: rebuffering, or the client thread starved of CPU.
    starved: AtomicU64,
    /// When the frame after the last callback's data plays, as the callback predicted it, in
    /// ns of real time after `origin`: the callback's instant, plus the device's latency
    /// (what it already held), plus the period the callback just wrote. 0 before the first.
    next_out_ns: AtomicU64,
    /// The real instant `next_out_ns` counts from.
    origin: Instant,
}

impl DeviceCounters {
    fn new() -> Self {
        Self {
            errors: AtomicU64::new(0),
            starved: AtomicU64::new(0),
            next_out_ns: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

fn build_stream<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut consumer: rtrb::Consumer<i16>,
    counters: Arc<DeviceCounters>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<i16>,
{
    let errs = counters.clone();
    let mut started = false;
    let channels = usize::from(config.channels.max(1));
    let rate = u64::from(config.sample_rate.max(1));
    device.build_output_stream::<T, _, _>(
        config,
        // The real-time callback: pops whole frames (the producer commits whole frames, so the
        // available count is always a multiple of the channel count), converts the format,
        // pads with silence on a shortfall and counts it. No locks, allocation, logging or
        // blocking.
        move |data: &mut [T], info: &cpal::OutputCallbackInfo| {
            let ts = info.timestamp();
            let latency = ts.playback.duration_since(ts.callback);
            // This period plays from `latency` after now; the ring's next frame follows it.
            let period = (data.len() / channels) as u64 * 1_000_000_000 / rate;
            let next = counters.origin.elapsed() + latency + Duration::from_nanos(period);
            counters
                .next_out_ns
                .store(next.as_nanos() as u64, Ordering::Relaxed);
            let n = consumer.slots().min(data.len());
            let mut filled = 0;
            if let Ok(chunk) = consumer.read_chunk(n) {
                let (a, b) = chunk.as_slices();
                for (d, &s) in data.iter_mut().zip(a.iter().chain(b)) {
                    *d = T::from_sample(s);
                    filled += 1;
                }
                chunk.commit_all();
            }
            for d in &mut data[filled..] {
                *d = T::EQUILIBRIUM;
            }
            started |= filled > 0;
            if started && filled < data.len() {
                counters
                    .starved
                    .fetch_add((data.len() - filled) as u64, Ordering::Relaxed);
            }
        },
        move |_err| {
            // Runs on the audio thread too (ALSA): count only, the client logs the total.
            errs.errors.fetch_add(1, Ordering::Relaxed);
        },
        None,
    )
}

impl CpalSink {
    /// Checks that an output device (the default, or `name`) exists and answers, before the
    /// handshake: "no device" is then reported without bothering the server.
    pub fn probe(name: Option<&str>) -> Result<(), SinkError> {
        quiet_alsa(|| Self::probe_inner(name))
    }

    fn probe_inner(name: Option<&str>) -> Result<(), SinkError> {
        let d = find_device(name)?;
        let n = d
            .supported_output_configs()
            .map_err(|e| SinkError::NoDevice(format!("{}: {e}", device_name(&d))))?
            .count();
        if n == 0 {
            return Err(SinkError::NoDevice(format!(
                "{} offers no output configuration",
                device_name(&d)
            )));
        }
        Ok(())
    }

    /// Opens the device (the default, or `name`) for a stream of `rate` and `channels`, and
    /// starts it playing (silence until audio comes).
    pub fn open(
        name: Option<&str>,
        rate: u32,
        channels: u16,
        clock: SimClock,
    ) -> Result<Self, SinkError> {
        quiet_alsa(|| Self::open_inner(name, rate, channels, clock))
    }

    fn open_inner(
        name: Option<&str>,
        rate: u32,
        channels: u16,
        clock: SimClock,
    ) -> Result<Self, SinkError> {
        use cpal::SampleFormat as F;
        let device = find_device(name)?;
        let dev_name = device_name(&device);
        let (config, format) = choose_config(&device, rate, channels)?;
        let dev_ch = usize::from(config.channels.max(1));
        let dev_rate = config.sample_rate;
        let capacity = (frames_in(DEVICE_LEAD, dev_rate) as usize).max(1) * dev_ch;
        let (producer, consumer) = rtrb::RingBuffer::new(capacity);
        let counters = Arc::new(DeviceCounters::new());
        let e = counters.clone();
        let stream = match format {
            F::I16 => build_stream::<i16>(&device, config, consumer, e),
            F::F32 => build_stream::<f32>(&device, config, consumer, e),
            F::I32 => build_stream::<i32>(&device, config, consumer, e),
            F::F64 => build_stream::<f64>(&device, config, consumer, e),
            F::U16 => build_stream::<u16>(&device, config, consumer, e),
            F::I8 => build_stream::<i8>(&device, config, consumer, e),
            F::U8 => build_stream::<u8>(&device, config, consumer, e),
            other => {
                return Err(SinkError::Device {
                    device: dev_name,
                    detail: format!("unsupported sample format {other}"),
                });
            }
        }
        .map_err(|e| match e.kind() {
            cpal::ErrorKind::DeviceNotAvailable => SinkError::NoDevice(format!("{dev_name}: {e}")),
            _ => SinkError::Device {
                device: dev_name.clone(),
                detail: e.to_string(),
            },
        })?;
        stream.play().map_err(|e| SinkError::Device {
            device: dev_name.clone(),
            detail: e.to_string(),
        })?;
        tracing::info!(
            device = %dev_name,
            "playing {} ch {} Hz {format} (stream {channels} ch {rate} Hz s16){}",
            config.channels,
            dev_rate,
            if dev_rate == rate { "" } else { ", resampled linearly" }
        );
        Ok(Self {
            _stream: stream,
            producer,
            conv: Converter::new(channels, rate, config.channels, dev_rate),
            dev_ch,
            dev_rate,
            stream_ch: usize::from(channels.max(1)),
            capacity,
            scratch: Vec::with_capacity(capacity + 64),
            counters,
            clock,
            name: dev_name,
        })
    }
}

impl Sink for CpalSink {
    fn lead(&self) -> Duration {
        DEVICE_LEAD
    }

    fn demand(&mut self, _now: Instant) -> usize {
        let free_frames = self.producer.slots() / self.dev_ch;
        self.conv.in_frames(free_frames)
    }

    fn write(&mut self, _now: Instant, samples: &[i16]) -> Result<(), SinkError> {
        self.scratch.clear();
        self.conv.convert(samples, &mut self.scratch);
        let n = self.scratch.len().min(self.producer.slots());
        // Whole frames only, so the callback never sees half a frame.
        let n = n - n % self.dev_ch;
        if let Ok(chunk) = self.producer.write_chunk_uninit(n) {
            chunk.fill_from_iter(self.scratch[..n].iter().copied());
        }
        if n < self.scratch.len() {
            tracing::debug!(
                dropped = (self.scratch.len() - n) / self.dev_ch,
                stream_frames = samples.len() / self.stream_ch,
                "device ring full"
            );
        }
        Ok(())
    }

    fn refill_at(&self, now: Instant) -> Instant {
        now + DEVICE_REFILL
    }

    fn output_at(&self, _now: Instant) -> Instant {
        // When the frame after the last callback's data plays, as that callback predicted it
        // (not in the past), then what the ring holds: a real instant, read on the listener's
        // clock. It depends on the ring and the device as they are now, not on `now`, which
        // is as old as the caller's wake-up (a busy machine can make that milliseconds).
        let queued = (self.capacity - self.producer.slots()) / self.dev_ch;
        let next = self.counters.origin
            + Duration::from_nanos(self.counters.next_out_ns.load(Ordering::Relaxed));
        let device = next.max(Instant::now());
        self.clock
            .local(device + duration_of(queued as u64, self.dev_rate))
    }

    fn finish(&mut self, _now: Instant) -> Result<Duration, SinkError> {
        let queued = (self.capacity - self.producer.slots()) / self.dev_ch;
        let errors = self.counters.errors.load(Ordering::Relaxed);
        if errors > 0 {
            tracing::warn!(device = %self.name, errors, "the audio device reported errors");
        }
        // Read while the tail is still queued, so the silence after the end is not counted.
        let starved = self.counters.starved.load(Ordering::Relaxed) / self.dev_ch as u64;
        if starved > 0 {
            tracing::warn!(
                device = %self.name,
                "the device played {:?} of silence mid-stream (rebuffering, or this process \
                 was starved of CPU)",
                duration_of(starved, self.dev_rate)
            );
        }
        Ok(duration_of(queued as u64, self.dev_rate) + DEVICE_LINGER)
    }
}

/// The output devices and their formats, one line each, for `--list-devices`: the id and the
/// name (either works with `--device`), then the ranges of channels and rates and the formats.
pub fn list_devices() -> Result<Vec<String>, SinkError> {
    quiet_alsa(list_devices_inner)
}

fn list_devices_inner() -> Result<Vec<String>, SinkError> {
    let host = cpal::default_host();
    let default = host
        .default_output_device()
        .and_then(|d| d.id().ok())
        .map(|i| i.to_string());
    let mut lines = Vec::new();
    for d in host
        .output_devices()
        .map_err(|e| SinkError::NoDevice(e.to_string()))?
    {
        let name = device_name(&d);
        let id = d.id().map(|i| i.to_string()).unwrap_or_default();
        let mark = if default.as_deref() == Some(id.as_str()) {
            " (default)"
        } else {
            ""
        };
        let formats = match d.supported_output_configs() {
            Ok(cs) => {
                let cs: Vec<_> = cs.collect();
                let ch = cs.iter().map(|c| c.channels());
                let (ch_min, ch_max) = (ch.clone().min().unwrap_or(0), ch.max().unwrap_or(0));
                let rate_min = cs.iter().map(|c| c.min_sample_rate()).min().unwrap_or(0);
                let rate_max = cs.iter().map(|c| c.max_sample_rate()).max().unwrap_or(0);
                let mut fmts: Vec<String> = Vec::new();
                for c in &cs {
                    let f = c.sample_format().to_string();
                    if !fmts.contains(&f) {
                        fmts.push(f);
                    }
                }
                format!(
                    "{ch_min}-{ch_max} ch, {rate_min}-{rate_max} Hz, {}",
                    fmts.join(" ")
                )
            }
            Err(e) => format!("unavailable: {e}"),
        };
        lines.push(format!("{id}{mark}  {name}: {formats}"));
    }
    Ok(lines)
}
