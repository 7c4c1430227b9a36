//! A simulated listener's ears: a [`Sink`] on the room's clock (listen's [`VirtualDevice`],
//! the timing model of its WAV and null sinks) that keeps, hashes or discards what it plays.
//! An hour of 48 kHz stereo is 660 MB of samples, so keeping them is opt-in.

use std::time::{Duration, Instant};

use listen::sink::{Sink, SinkError, VIRTUAL_LEAD, VirtualDevice};

use super::source::SampleHash;

/// What a simulated listener does with the audio it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Playback {
    /// Counts frames only (the cheapest).
    #[default]
    Discard,
    /// Counts frames and hashes the samples ([`super::SampleHash`]).
    Hash,
    /// Counts, hashes and keeps every sample.
    Keep,
}

/// What a simulated listener played, concealment included.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Played {
    /// Stream frames handed to the sink.
    pub frames: u64,
    /// [`SampleHash`] of every sample played, with [`Playback::Hash`] or [`Playback::Keep`].
    pub hash: Option<u64>,
    /// Every sample played, interleaved, with [`Playback::Keep`].
    pub samples: Option<Vec<i16>>,
}

/// The room's sink: a virtual device plus the [`Playback`] bookkeeping.
#[derive(Debug)]
pub(crate) struct RoomSink {
    dev: VirtualDevice,
    channels: usize,
    playback: Playback,
    frames: u64,
    hash: SampleHash,
    samples: Vec<i16>,
}

impl RoomSink {
    /// A sink for a stream of `rate` and `channels`, with the lead listen's virtual sinks have
    /// (the session's `SessionConfig::sink_lead` must say the same).
    pub(crate) fn new(rate: u32, channels: u16, playback: Playback) -> Self {
        Self {
            dev: VirtualDevice::new(rate, VIRTUAL_LEAD),
            channels: usize::from(channels.max(1)),
            playback,
            frames: 0,
            hash: SampleHash::new(),
            samples: Vec::new(),
        }
    }

    /// What it played so far.
    pub(crate) fn played(&self) -> Played {
        Played {
            frames: self.frames,
            hash: (self.playback != Playback::Discard).then(|| self.hash.value()),
            samples: (self.playback == Playback::Keep).then(|| self.samples.clone()),
        }
    }
}

impl Sink for RoomSink {
    fn lead(&self) -> Duration {
        VIRTUAL_LEAD
    }

    fn demand(&mut self, now: Instant) -> usize {
        self.dev.demand(now)
    }

    fn write(&mut self, now: Instant, samples: &[i16]) -> Result<(), SinkError> {
        let frames = (samples.len() / self.channels) as u64;
        self.frames += frames;
        match self.playback {
            Playback::Discard => {}
            Playback::Hash => self.hash.update(samples),
            Playback::Keep => {
                self.hash.update(samples);
                self.samples.extend_from_slice(samples);
            }
        }
        self.dev.wrote(now, frames);
        Ok(())
    }

    fn refill_at(&self, now: Instant) -> Instant {
        self.dev.refill_at(now)
    }

    fn finish(&mut self, now: Instant) -> Result<Duration, SinkError> {
        Ok(self.dev.remaining(now))
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
}
