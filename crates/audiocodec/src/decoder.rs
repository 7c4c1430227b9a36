//! The per-listener decoder: payloads in, interleaved s16 out.

use crate::flac::FlacDecoder;
use crate::opus::OpusDecoder;
use crate::{AudioCodec, CodecError, Format};

/// A payload that does not decode: counted and dropped by the caller, like a lost datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} payload does not decode: {reason}")]
pub struct DecodeError {
    /// The codec's name.
    pub codec: &'static str,
    /// Why.
    pub reason: String,
}

enum Inner {
    Pcm,
    Flac(Box<FlacDecoder>),
    Opus(Box<OpusDecoder>),
}

/// Decodes one listener's stream, whatever its codec, into interleaved s16 frames, in the
/// order datagrams arrive (FLAC frames are independent; Opus tolerates reordering).
pub struct Decoder {
    codec: AudioCodec,
    format: Format,
    inner: Inner,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("codec", &self.codec)
            .field("format", &self.format)
            .finish()
    }
}

impl Decoder {
    /// A decoder for a stream of `format` in `codec` with `frames_per_packet`, as the `Welcome`
    /// announced them.
    pub fn new(
        codec: AudioCodec,
        format: Format,
        frames_per_packet: u32,
    ) -> Result<Self, CodecError> {
        if format.sample_rate == 0 || format.channels == 0 {
            return Err(CodecError::BadFormat {
                sample_rate: format.sample_rate,
                channels: format.channels,
            });
        }
        let inner = match codec {
            AudioCodec::Pcm => Inner::Pcm,
            AudioCodec::Flac => Inner::Flac(Box::new(FlacDecoder::new(
                format,
                frames_per_packet as usize,
            )?)),
            AudioCodec::Opus { .. } => {
                if frames_per_packet as usize != crate::opus::FRAMES
                    || format.sample_rate != crate::opus::RATE
                    || format.channels > 2
                {
                    return Err(CodecError::OpusStream {
                        sample_rate: format.sample_rate,
                        channels: format.channels,
                        frames: frames_per_packet,
                    });
                }
                Inner::Opus(Box::new(OpusDecoder::new(format)?))
            }
        };
        Ok(Self {
            codec,
            format,
            inner,
        })
    }

    /// The codec.
    pub fn codec(&self) -> AudioCodec {
        self.codec
    }

    /// Decodes one payload, appending its interleaved frames to `out`; returns how many
    /// frames. PCM must be a non-empty whole number of s16le frames.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, DecodeError> {
        let err = |codec: &'static str| move |reason: String| DecodeError { codec, reason };
        match &mut self.inner {
            Inner::Pcm => {
                let bpf = self.format.samples_per_frame() * 2;
                if payload.is_empty() || !payload.len().is_multiple_of(bpf) {
                    return Err(DecodeError {
                        codec: "pcm",
                        reason: format!(
                            "{} bytes is not a whole number of {bpf}-byte frames",
                            payload.len()
                        ),
                    });
                }
                out.extend(
                    payload
                        .chunks_exact(2)
                        .map(|b| i16::from_le_bytes([b[0], b[1]])),
                );
                Ok(payload.len() / bpf)
            }
            Inner::Flac(d) => d.decode(payload, out).map_err(err("flac")),
            Inner::Opus(d) => d.decode(payload, out).map_err(err("opus")),
        }
    }

    /// Whether the codec conceals lost audio itself ([`Self::conceal`]); otherwise the caller
    /// fades out.
    pub fn conceals(&self) -> bool {
        matches!(self.inner, Inner::Opus(_))
    }

    /// Appends `frames` frames standing in for the missing stream frames `ts..ts + frames`, if
    /// the codec conceals (Opus PLC); returns false, appending nothing, if it does not.
    pub fn conceal(&mut self, ts: u64, frames: usize, out: &mut Vec<i16>) -> bool {
        match &mut self.inner {
            Inner::Opus(d) => {
                d.conceal(ts, frames, out);
                true
            }
            _ => false,
        }
    }
}
