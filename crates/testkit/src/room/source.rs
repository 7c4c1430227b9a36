//! A synthetic [`AudioSource`]: deterministic PCM computed from the frame index alone, so the
//! room streams without a file and a test computes what every listener must play, sample for
//! sample ([`SyntheticSource::samples`]) or as a hash ([`SyntheticSource::hash`]) when an hour
//! of audio is too much to keep.

use std::ops::Range;

use streamd::endpoint::AudioSource;
use streamd::source::SourceInfo;

/// A running 64-bit FNV-1a hash over i16 samples (each sample one 16-bit unit): what a
/// [`super::Playback::Hash`] sink computes over what it played, and what
/// [`SyntheticSource::hash`] computes over what it should have played. Fed in any chunking,
/// the same samples give the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleHash(u64);

impl Default for SampleHash {
    fn default() -> Self {
        Self::new()
    }
}

impl SampleHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// The hash of no samples.
    pub fn new() -> Self {
        Self(Self::OFFSET)
    }

    /// Adds `samples`, in order.
    pub fn update(&mut self, samples: &[i16]) {
        let mut h = self.0;
        for &s in samples {
            h = (h ^ u64::from(s as u16)).wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Deterministic interleaved s16 PCM of a given rate, channel count and length (or endless):
/// sample `(frame, channel)` is [`SyntheticSource::sample`], whatever was read before.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    /// What every `Welcome` says (`total_frames` is `None` when endless).
    info: SourceInfo,
    /// The next frame handed out.
    pos: u64,
}

impl SyntheticSource {
    /// `frames` frames of `channels` channels at `rate`.
    pub fn new(rate: u32, channels: u16, frames: u64) -> Self {
        Self::with_total(rate, channels, Some(frames))
    }

    /// A source that never ends (`--loop`-like streams, shutdown and eviction scenarios).
    pub fn endless(rate: u32, channels: u16) -> Self {
        Self::with_total(rate, channels, None)
    }

    fn with_total(rate: u32, channels: u16, total_frames: Option<u64>) -> Self {
        Self {
            info: SourceInfo {
                sample_rate: rate,
                channels,
                total_frames,
                codec: "synthetic".into(),
                title: "synthetic".into(),
            },
            pos: 0,
        }
    }

    /// The sample of `channel` in `frame`: a multiplicative hash of the position, so a frame
    /// played twice, skipped, shifted or taken from another channel shows.
    pub fn sample(frame: u64, channel: u16) -> i16 {
        let x = ((frame << 5) | u64::from(channel & 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x >> 48) as u16 as i16
    }

    /// The interleaved samples of `frames` for a stream of `channels`.
    pub fn samples(channels: u16, frames: Range<u64>) -> Vec<i16> {
        let mut out = Vec::with_capacity(
            usize::try_from(frames.end.saturating_sub(frames.start)).unwrap_or(0)
                * usize::from(channels),
        );
        Self::append(channels, frames, &mut out);
        out
    }

    /// [`SampleHash`] of [`SyntheticSource::samples`], without keeping them.
    pub fn hash(channels: u16, frames: Range<u64>) -> u64 {
        let mut h = SampleHash::new();
        let mut buf = Vec::new();
        let mut f = frames.start;
        while f < frames.end {
            let n = (frames.end - f).min(4096);
            buf.clear();
            Self::append(channels, f..f + n, &mut buf);
            h.update(&buf);
            f += n;
        }
        h.value()
    }

    fn append(channels: u16, frames: Range<u64>, out: &mut Vec<i16>) {
        for f in frames {
            for c in 0..channels {
                out.push(Self::sample(f, c));
            }
        }
    }

    /// Frames handed out so far (in this pass).
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl AudioSource for SyntheticSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let left = self
            .info
            .total_frames
            .map_or(u64::MAX, |t| t.saturating_sub(self.pos));
        let n = (max_frames as u64).min(left);
        Self::append(self.info.channels, self.pos..self.pos + n, out);
        self.pos += n;
        n as usize
    }

    fn is_finished(&self) -> bool {
        self.info.total_frames.is_some_and(|t| self.pos >= t)
    }

    fn rewind(&mut self) -> Result<(), String> {
        self.pos = 0;
        Ok(())
    }

    fn reads_ahead(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_the_formula_in_any_chunking() {
        let mut s = SyntheticSource::new(48_000, 2, 1000);
        let mut out = Vec::new();
        for n in [1, 7, 300, 5000] {
            s.read_frames(n, &mut out);
        }
        assert!(s.is_finished());
        assert_eq!(out, SyntheticSource::samples(2, 0..1000));
        let mut h = SampleHash::new();
        h.update(&out[..10]);
        h.update(&out[10..]);
        assert_eq!(h.value(), SyntheticSource::hash(2, 0..1000));
        assert_ne!(
            SyntheticSource::hash(2, 0..1000),
            SyntheticSource::hash(2, 1..1001)
        );
        let distinct: std::collections::HashSet<_> = out.iter().collect();
        assert!(distinct.len() > 1500, "samples vary: {}", distinct.len());
    }

    #[test]
    fn endless_never_finishes_and_rewinds() {
        let mut s = SyntheticSource::endless(8_000, 1);
        let mut out = Vec::new();
        assert_eq!(s.read_frames(100, &mut out), 100);
        assert!(!s.is_finished());
        s.rewind().ok();
        out.clear();
        s.read_frames(3, &mut out);
        assert_eq!(out, SyntheticSource::samples(1, 0..3));
    }
}
