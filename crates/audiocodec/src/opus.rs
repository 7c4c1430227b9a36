//! Opus: one 20 ms packet (960 frames at 48 kHz) per datagram, through libopus.
//!
//! Opus works at 48 kHz (it also takes 8–24 kHz, but its bandwidth then drops): other sources are
//! resampled with rubato's FFT resampler, whose delay is trimmed so resampled frame `k` is due
//! at the same instant as source time `k / 48000`. libopus delays its output by its look-ahead
//! (312 frames in the `Audio` application): the encoder starts with `960 − look-ahead` frames of
//! silence and drops its first packet, so the packet stamped `ts` decodes to exactly frames
//! `ts..ts + 960` of the source. A lost packet is concealed by the decoder (Opus PLC: decoding
//! nothing extrapolates from the last decoded audio, then fades to silence by itself).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::{CodecError, Format, OPUS_BITRATES};

/// The rate Opus runs at, and so the rate of every Opus stream.
pub const RATE: u32 = 48_000;

/// Frames in each packet: 20 ms at 48 kHz, Opus's most efficient frame size for music.
pub const FRAMES: usize = 960;

/// Largest Opus packet of one 20 ms frame (RFC 6716 §3.4: 1275 bytes per frame).
pub const MAX_PACKET: usize = 1275;

/// Most frames one Opus packet can decode to (120 ms at 48 kHz): the decoder's output room.
const MAX_DECODED: usize = 5760;

/// The encoder's complexity (libopus: 0..=10, default 10). At 7 a stream encodes ~1.5 × faster
/// than at 10 (music at 48 kHz stereo, 128 kbit/s: ~4.8 ms per second of audio against ~7.0)
/// and decodes within 0.2 dB of the same SNR; 8 costs as much as 10, and below 7 the SNR falls
/// faster than the cost.
pub const COMPLEXITY: i32 = 7;

fn channels_of(n: u16) -> Result<opus::Channels, CodecError> {
    match n {
        1 => Ok(opus::Channels::Mono),
        2 => Ok(opus::Channels::Stereo),
        n => Err(CodecError::OpusChannels(n)),
    }
}

fn lib(e: impl std::fmt::Display) -> CodecError {
    CodecError::Library {
        codec: "opus",
        reason: e.to_string(),
    }
}

/// Checks that Opus can carry `format` (mono or stereo at a rate the resampler can bring to
/// 48 kHz) at `bitrate`, without starting an encoder.
pub fn check(format: Format, bitrate: u32) -> Result<(), CodecError> {
    if format.sample_rate == 0 || format.channels == 0 {
        return Err(CodecError::BadFormat {
            sample_rate: format.sample_rate,
            channels: format.channels,
        });
    }
    channels_of(format.channels)?;
    if !OPUS_BITRATES.contains(&bitrate) {
        return Err(CodecError::OpusBitrate(bitrate));
    }
    // The FFT resampler works in blocks of rate / gcd(rate, 48000) frames: beyond 100 ms the
    // delay and the FFT grow absurd (no real rate does that: 44.1 kHz gives 147 frames).
    if format.sample_rate != RATE && gcd(format.sample_rate, RATE) < 10 {
        return Err(CodecError::OpusRate(format.sample_rate));
    }
    Ok(())
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Resamples interleaved f32 from a source rate to 48 kHz, delay trimmed.
struct Resample {
    fft: Fft<f32>,
    channels: usize,
    /// Source samples not yet resampled (less than one input block).
    input: Vec<f32>,
    /// One block's output.
    output: Vec<f32>,
    /// Output frames of the resampler's delay still to drop.
    to_skip: usize,
    /// Input frames per block: nothing comes out until a whole block is in.
    chunk: usize,
}

impl Resample {
    fn new(rate: u32, channels: usize) -> Result<Self, CodecError> {
        // Blocks of about 10 ms of input: low delay, and cheap.
        let chunk = (rate as usize / 100).max(1);
        let fft = Fft::<f32>::new(
            rate as usize,
            RATE as usize,
            chunk,
            channels,
            FixedSync::Input,
        )
        .map_err(|_| CodecError::OpusRate(rate))?;
        let to_skip = fft.output_delay();
        let output = vec![0.0; fft.output_frames_max() * channels];
        Ok(Self {
            fft,
            channels,
            input: Vec::new(),
            output,
            to_skip,
            chunk,
        })
    }

    /// Resamples what `samples` completes, appending 48 kHz samples to `out`.
    fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), String> {
        self.input.extend_from_slice(samples);
        let ch = self.channels;
        let mut off = 0;
        loop {
            let need = self.fft.input_frames_next();
            if (self.input.len() - off) / ch < need {
                break;
            }
            let max_out = self.output.len() / ch;
            let inp = InterleavedSlice::new(&self.input[off..off + need * ch], ch, need)
                .map_err(|e| e.to_string())?;
            let mut outp = InterleavedSlice::new_mut(&mut self.output[..], ch, max_out)
                .map_err(|e| e.to_string())?;
            let (used, made) = self
                .fft
                .process_into_buffer(&inp, &mut outp, None)
                .map_err(|e| e.to_string())?;
            off += used * ch;
            let skip = self.to_skip.min(made);
            self.to_skip -= skip;
            out.extend_from_slice(&self.output[skip * ch..made * ch]);
        }
        self.input.drain(..off);
        Ok(())
    }
}

/// Encodes a stream into 20 ms Opus packets at 48 kHz.
pub(crate) struct OpusEncoder {
    enc: opus::Encoder,
    channels: usize,
    source_rate: u32,
    resample: Option<Resample>,
    /// Source samples as f32 (scratch).
    floats: Vec<f32>,
    /// 48 kHz samples waiting to fill a packet.
    pending: Vec<f32>,
    /// The packet being written; its length caps the packet size.
    packet: Vec<u8>,
    /// The first packet holds only the priming silence and the look-ahead: it is dropped.
    drop_next: bool,
    /// Source frames past a packet's first frame that must go in before the packet comes out.
    lag: u64,
}

impl OpusEncoder {
    /// An encoder for `format` at `bitrate` whose packets never exceed `max_payload` bytes (nor
    /// 1275): libopus lowers a frame's bitrate rather than exceed it.
    pub(crate) fn new(
        format: Format,
        bitrate: u32,
        max_payload: usize,
    ) -> Result<Self, CodecError> {
        check(format, bitrate)?;
        let ch = channels_of(format.channels)?;
        let mut enc = opus::Encoder::new(RATE, ch, opus::Application::Audio).map_err(lib)?;
        enc.set_bitrate(opus::Bitrate::Bits(bitrate as i32))
            .map_err(lib)?;
        // Constant bitrate: every packet of a stream has the same size, so a tick's packets go
        // to each listener as one UDP GSO message of equal segments (one send, not one per
        // packet), and the datagrams are predictable.
        enc.set_vbr(false).map_err(lib)?;
        enc.set_complexity(COMPLEXITY).map_err(lib)?;
        let lookahead = usize::try_from(enc.get_lookahead().map_err(lib)?).unwrap_or(0);
        let channels = usize::from(format.channels);
        let resample = if format.sample_rate == RATE {
            None
        } else {
            Some(Resample::new(format.sample_rate, channels)?)
        };
        // Packet `ts` needs 48 kHz frames up to `ts + FRAMES + lookahead`; resampled frame `k`
        // needs the source's input block holding raw output frame `k + delay`.
        let lag = match &resample {
            None => (FRAMES + lookahead) as u64,
            Some(r) => {
                let out = (FRAMES + lookahead + r.to_skip + 1) as u64;
                (out * u64::from(format.sample_rate)).div_ceil(u64::from(RATE)) + r.chunk as u64
            }
        };
        let mut pending = Vec::with_capacity(FRAMES * channels * 4);
        pending.resize(FRAMES.saturating_sub(lookahead) * channels, 0.0);
        Ok(Self {
            enc,
            channels,
            source_rate: format.sample_rate,
            resample,
            floats: Vec::new(),
            pending,
            packet: vec![0; max_payload.clamp(1, MAX_PACKET)],
            drop_next: true,
            lag,
        })
    }

    /// Source frames past a packet's first frame that go in before the packet comes out, at
    /// most: the packet, the look-ahead and the resampler's delay and block.
    pub(crate) fn lag(&self) -> u64 {
        self.lag
    }

    /// The source rate.
    pub(crate) fn source_rate(&self) -> u32 {
        self.source_rate
    }

    /// Takes interleaved source samples; calls `emit` with each complete packet's bytes.
    pub(crate) fn push(&mut self, pcm: &[i16], emit: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        self.floats.clear();
        self.floats
            .extend(pcm.iter().map(|&s| f32::from(s) / 32_768.0));
        match &mut self.resample {
            Some(r) => r.push(&self.floats, &mut self.pending)?,
            None => self.pending.extend_from_slice(&self.floats),
        }
        let per_packet = FRAMES * self.channels;
        let mut off = 0;
        while self.pending.len() - off >= per_packet {
            let n = self
                .enc
                .encode_float(&self.pending[off..off + per_packet], &mut self.packet)
                .map_err(|e| e.to_string())?;
            off += per_packet;
            if self.drop_next {
                self.drop_next = false;
            } else {
                emit(&self.packet[..n]);
            }
        }
        self.pending.drain(..off);
        Ok(())
    }
}

/// Decodes one stream's Opus packets, and conceals what is missing.
pub(crate) struct OpusDecoder {
    dec: opus::Decoder,
    channels: usize,
    /// Decoded samples (room for the longest packet).
    scratch: Vec<i16>,
    /// Concealment made but not handed out yet: `plc[plc_pos..plc_len]` continues at `plc_ts`.
    plc: Vec<i16>,
    plc_pos: usize,
    plc_len: usize,
    plc_ts: Option<u64>,
}

impl OpusDecoder {
    /// A decoder for a 48 kHz stream of `channels` (1 or 2).
    pub(crate) fn new(format: Format) -> Result<Self, CodecError> {
        if format.sample_rate != RATE {
            return Err(CodecError::BadFormat {
                sample_rate: format.sample_rate,
                channels: format.channels,
            });
        }
        let ch = channels_of(format.channels)?;
        let dec = opus::Decoder::new(RATE, ch).map_err(lib)?;
        let channels = usize::from(format.channels);
        Ok(Self {
            dec,
            channels,
            scratch: vec![0; MAX_DECODED * channels],
            plc: vec![0; FRAMES * channels],
            plc_pos: 0,
            plc_len: 0,
            plc_ts: None,
        })
    }

    /// Decodes one packet, appending interleaved samples to `out`; returns the frames.
    pub(crate) fn decode(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, String> {
        if packet.is_empty() {
            return Err("an empty opus packet".into());
        }
        let n = self
            .dec
            .decode(packet, &mut self.scratch, false)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&self.scratch[..n * self.channels]);
        Ok(n)
    }

    /// Appends `frames` frames of concealment for stream frames `ts..ts + frames`: Opus PLC, made
    /// 20 ms at a time; a call that continues the previous one continues its audio.
    pub(crate) fn conceal(&mut self, ts: u64, frames: usize, out: &mut Vec<i16>) {
        if self.plc_ts != Some(ts) {
            self.plc_pos = 0;
            self.plc_len = 0;
        }
        let ch = self.channels;
        let mut left = frames;
        while left > 0 {
            if self.plc_pos == self.plc_len {
                let made = self.dec.decode(&[], &mut self.plc, false).unwrap_or(0);
                if made == 0 {
                    // The library refused: silence keeps the length right.
                    self.plc.fill(0);
                }
                self.plc_pos = 0;
                self.plc_len = if made == 0 { FRAMES } else { made.min(FRAMES) };
            }
            let take = left.min(self.plc_len - self.plc_pos);
            out.extend_from_slice(&self.plc[self.plc_pos * ch..(self.plc_pos + take) * ch]);
            self.plc_pos += take;
            left -= take;
        }
        self.plc_ts = Some(ts + frames as u64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_encoder_runs_at_the_chosen_complexity() {
        let format = Format {
            sample_rate: RATE,
            channels: 2,
        };
        let mut e = OpusEncoder::new(format, 128_000, MAX_PACKET).unwrap();
        assert_eq!(e.enc.get_complexity().unwrap(), COMPLEXITY);
    }
}
