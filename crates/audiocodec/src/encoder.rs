//! The per-stream encoder: source frames in, stamped packets out.

use crate::flac::{self, FlacEncoder};
use crate::opus::{self, OpusEncoder};
use crate::{AudioCodec, CodecError, Format};

/// The codec library failed on audio it was given (never expected for s16 input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} could not encode: {reason}")]
pub struct EncodeError {
    /// The codec's name.
    pub codec: &'static str,
    /// What the library said.
    pub reason: String,
}

enum Inner {
    Pcm {
        bytes: Vec<u8>,
    },
    Flac {
        enc: Box<FlacEncoder>,
        pending: Vec<i16>,
    },
    Opus(Box<OpusEncoder>),
}

/// Encodes one stream: each tick's source frames go in once, and every packet comes out once
/// with its `ts` (the stream frame it starts at), for the caller to send to every listener.
///
/// PCM packets come out at once (up to `frames_per_packet` frames each, the last of a call
/// shorter); FLAC and Opus packets come out whenever a whole block has arrived, so they lag
/// the source by up to one packet. [`Encoder::finish`] pads the end with silence to a whole
/// packet; the stream's length ([`Encoder::stream_frames`]) says where the real audio ends.
pub struct Encoder {
    codec: AudioCodec,
    source: Format,
    stream: Format,
    fpp: usize,
    inner: Inner,
    /// `ts` of the next packet.
    next_ts: u64,
    /// Source frames taken so far.
    source_frames: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec)
            .field("source", &self.source)
            .field("stream", &self.stream)
            .field("frames_per_packet", &self.fpp)
            .field("next_ts", &self.next_ts)
            .finish()
    }
}

impl Encoder {
    /// A PCM encoder, which cannot fail: a format without rate or channels is taken as 1 Hz
    /// or 1 channel.
    pub fn pcm(source: Format, max_payload: usize) -> Self {
        let source = Format {
            sample_rate: source.sample_rate.max(1),
            channels: source.channels.max(1),
        };
        Self {
            codec: AudioCodec::Pcm,
            source,
            stream: source,
            fpp: (max_payload / (source.samples_per_frame() * 2)).max(1),
            inner: Inner::Pcm { bytes: Vec::new() },
            next_ts: 0,
            source_frames: 0,
        }
    }

    /// An encoder of `source` audio as `codec`, for datagrams whose payload holds at most
    /// `max_payload` bytes of PCM (FLAC sizes its blocks so a typical frame fits the same room;
    /// Opus packets never exceed it).
    pub fn new(codec: AudioCodec, source: Format, max_payload: usize) -> Result<Self, CodecError> {
        if source.sample_rate == 0 || source.channels == 0 {
            return Err(CodecError::BadFormat {
                sample_rate: source.sample_rate,
                channels: source.channels,
            });
        }
        let pcm_fpp = (max_payload / (source.samples_per_frame() * 2)).max(1);
        let (inner, stream, fpp) = match codec {
            AudioCodec::Pcm => return Ok(Self::pcm(source, max_payload)),
            AudioCodec::Flac => {
                let block = flac::block_size(source, pcm_fpp);
                let enc = Box::new(FlacEncoder::new(source, block)?);
                let pending = Vec::with_capacity(block * source.samples_per_frame() * 2);
                (Inner::Flac { enc, pending }, source, block)
            }
            AudioCodec::Opus { bitrate } => {
                let enc = OpusEncoder::new(source, bitrate, max_payload)?;
                let stream = Format {
                    sample_rate: opus::RATE,
                    channels: source.channels,
                };
                (Inner::Opus(Box::new(enc)), stream, opus::FRAMES)
            }
        };
        Ok(Self {
            codec,
            source,
            stream,
            fpp,
            inner,
            next_ts: 0,
            source_frames: 0,
        })
    }

    /// The codec.
    pub fn codec(&self) -> AudioCodec {
        self.codec
    }

    /// The source's format.
    pub fn source_format(&self) -> Format {
        self.source
    }

    /// The stream's format, as the `Welcome` announces it (Opus: 48 kHz).
    pub fn stream_format(&self) -> Format {
        self.stream
    }

    /// Frames per packet, as the `Welcome` announces it: PCM the most a datagram holds, FLAC
    /// and Opus exactly what every datagram holds.
    pub fn frames_per_packet(&self) -> u32 {
        u32::try_from(self.fpp).unwrap_or(u32::MAX)
    }

    /// Source frames past a packet's first frame that must be encoded before that packet comes
    /// out, at most: PCM 0, FLAC a block, Opus a packet plus the look-ahead and the resampler's
    /// delay. A server that can read its source ahead by this much sends each packet when its
    /// first frame is due instead of a packet (and more) later.
    pub fn lag(&self) -> u64 {
        match &self.inner {
            Inner::Pcm { .. } => 0,
            Inner::Flac { .. } => self.fpp as u64,
            Inner::Opus(enc) => enc.lag(),
        }
    }

    /// `ts` of the next packet: where a listener joining now starts.
    pub fn next_ts(&self) -> u64 {
        self.next_ts
    }

    /// Stream frames that `source_frames` source frames become (rounded up when resampled).
    pub fn stream_frames(&self, source_frames: u64) -> u64 {
        if self.stream.sample_rate == self.source.sample_rate {
            return source_frames;
        }
        let num = u128::from(source_frames) * u128::from(self.stream.sample_rate);
        let den = u128::from(self.source.sample_rate);
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }

    /// Encodes interleaved source frames, calling `emit(ts, payload)` for every packet now
    /// complete. A trailing partial frame (fewer samples than channels) is ignored.
    pub fn encode(
        &mut self,
        pcm: &[i16],
        emit: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), EncodeError> {
        let spf = self.source.samples_per_frame();
        let pcm = &pcm[..pcm.len() - pcm.len() % spf];
        self.source_frames += (pcm.len() / spf) as u64;
        let fpp = self.fpp;
        let ts = &mut self.next_ts;
        match &mut self.inner {
            Inner::Pcm { bytes } => {
                for chunk in pcm.chunks(fpp * spf) {
                    bytes.clear();
                    bytes.resize(chunk.len() * 2, 0);
                    for (b, s) in bytes.chunks_exact_mut(2).zip(chunk) {
                        b.copy_from_slice(&s.to_le_bytes());
                    }
                    emit(*ts, bytes);
                    *ts += (chunk.len() / spf) as u64;
                }
            }
            Inner::Flac { enc, pending } => {
                pending.extend_from_slice(pcm);
                let block = fpp * spf;
                let mut off = 0;
                while pending.len() - off >= block {
                    let frame = enc
                        .encode_block(&pending[off..off + block])
                        .map_err(|reason| EncodeError {
                            codec: "flac",
                            reason,
                        })?;
                    emit(*ts, frame);
                    *ts += fpp as u64;
                    off += block;
                }
                pending.drain(..off);
            }
            Inner::Opus(enc) => {
                enc.push(pcm, &mut |bytes| {
                    emit(*ts, bytes);
                    *ts += fpp as u64;
                })
                .map_err(|reason| EncodeError {
                    codec: "opus",
                    reason,
                })?;
            }
        }
        Ok(())
    }

    /// The source ended: encodes what is still held, padded with silence to whole packets, so
    /// every frame of [`Self::stream_frames`] of what was taken has been emitted.
    pub fn finish(&mut self, emit: &mut dyn FnMut(u64, &[u8])) -> Result<(), EncodeError> {
        let target = self.stream_frames(self.source_frames);
        let spf = self.source.samples_per_frame();
        // Silence pushed through the whole pipeline flushes every stage's delay. Opus needs at
        // most a packet plus its look-ahead plus the resampler's delay: a few rounds.
        let rate = match &self.inner {
            Inner::Opus(enc) => enc.source_rate(),
            _ => self.source.sample_rate,
        };
        let step = (self.fpp as u64 * u64::from(rate))
            .div_ceil(u64::from(self.stream.sample_rate))
            .max(1) as usize;
        let zeros = vec![0i16; step * spf];
        let taken = self.source_frames;
        let mut rounds = 0;
        while self.next_ts < target && rounds < 64 {
            self.encode(&zeros, emit)?;
            rounds += 1;
        }
        self.source_frames = taken;
        Ok(())
    }
}
