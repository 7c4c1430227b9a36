//! earshot's audio codecs: what an `Audio` datagram's payload is.
//!
//! - **PCM**: s16le interleaved, as read from the source. A datagram holds up to
//!   `frames_per_packet` frames; the last datagram of a tick may hold fewer.
//! - **FLAC** (lossless): one FLAC frame per datagram, a fixed block of `frames_per_packet`
//!   frames, encoded by flacenc and decoded by symphonia. FLAC frames decode independently, so
//!   a listener needs no stream header from the server: it builds the 34-byte STREAMINFO from the
//!   `Welcome` ([`flac::stream_info`]).
//! - **Opus** (lossy, 6–510 kbit/s): one 20 ms Opus packet (960 frames at 48 kHz) per datagram,
//!   through libopus. Opus runs at 48 kHz, so other sources are resampled (rubato's FFT
//!   resampler), and carries mono or stereo only. Lost packets are concealed by the decoder
//!   (Opus packet-loss concealment) instead of a fade.
//!
//! One [`Encoder`] per stream encodes each tick's frames once (the same bytes go to every
//! listener); one [`Decoder`] per listener turns payloads back into PCM before its jitter
//! buffer. Both keep the stream's frame index (`ts`) exact: a packet's `ts` is the first frame it
//! decodes to, with the encoders' delays (resampler, Opus look-ahead) already removed, so a
//! decoded stream lines up frame for frame with the (resampled) source.

mod decoder;
mod encoder;
pub mod flac;
pub mod opus;
pub mod signal;

pub use decoder::{DecodeError, Decoder};
pub use encoder::{EncodeError, Encoder};
/// The codec of a stream, as its `Welcome` announces it (the wire type).
pub use proto::AudioCodec;

use std::fmt;

/// Opus bitrate when `--codec opus` names none: transparent for most music in stereo.
pub const DEFAULT_OPUS_BITRATE: u32 = 128_000;

/// Opus bitrates a server accepts, in bit/s: libopus's own range.
pub const OPUS_BITRATES: std::ops::RangeInclusive<u32> = 6_000..=510_000;

/// The codecs this build decodes, as a `Join.codecs` bitmask (bit per codec index).
pub const DECODABLE: u32 = 0b111;

/// The valid `--codec` values, for error messages and help.
pub const CODEC_CHOICES: &str = "pcm, flac, opus or opus:BITRATE (6000-510000 bit/s)";

/// The shape of interleaved s16 audio: what a source delivers and what a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
}

impl Format {
    /// Interleaved samples per frame, at least 1.
    pub fn samples_per_frame(&self) -> usize {
        usize::from(self.channels.max(1))
    }
}

/// Why a codec cannot serve a stream: each is one line naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Opus carries mono or stereo only.
    #[error(
        "opus carries mono or stereo only; the source has {0} channels (use --codec flac or pcm)"
    )]
    OpusChannels(u16),
    /// An Opus bitrate outside libopus's range.
    #[error("opus bitrate {0} bit/s is out of range (6000-510000)")]
    OpusBitrate(u32),
    /// A sample rate the resampler cannot bring to 48 kHz in short blocks.
    #[error("opus cannot resample {0} Hz to 48000 Hz")]
    OpusRate(u32),
    /// A `Welcome` announcing Opus in a shape no Opus stream has.
    #[error(
        "an opus stream is 48000 Hz, mono or stereo, in 960-frame packets; this one is \
         {sample_rate} Hz, {channels} channels, {frames}-frame packets"
    )]
    OpusStream {
        /// The announced rate.
        sample_rate: u32,
        /// The announced channels.
        channels: u16,
        /// The announced frames per packet.
        frames: u32,
    },
    /// FLAC carries 1 to 8 channels.
    #[error("flac carries 1 to 8 channels; the stream has {0}")]
    FlacChannels(u16),
    /// A stream format no codec can carry (no channels, zero rate).
    #[error("no codec carries {channels} channels at {sample_rate} Hz")]
    BadFormat {
        /// The rate given.
        sample_rate: u32,
        /// The channels given.
        channels: u16,
    },
    /// A `frames_per_packet` the codec cannot use (FLAC: 16..=65535, Opus: 960).
    #[error("{codec} cannot use {frames} frames per packet")]
    FramesPerPacket {
        /// The codec's name.
        codec: &'static str,
        /// The value given.
        frames: u32,
    },
    /// The codec library refused to start.
    #[error("{codec} could not start: {reason}")]
    Library {
        /// The codec's name.
        codec: &'static str,
        /// What the library said.
        reason: String,
    },
}

/// A `--codec` value that is not one of [`CODEC_CHOICES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCodecError(pub String);

impl fmt::Display for ParseCodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid codec {:?}: expected {CODEC_CHOICES}", self.0)
    }
}

impl std::error::Error for ParseCodecError {}

/// Parses a `--codec` value: `pcm`, `flac`, `opus` (at [`DEFAULT_OPUS_BITRATE`]) or
/// `opus:BITRATE` in bit/s within [`OPUS_BITRATES`] (a `k` suffix means ×1000).
pub fn parse_codec(s: &str) -> Result<AudioCodec, ParseCodecError> {
    let bad = || ParseCodecError(s.to_string());
    match s.to_ascii_lowercase().as_str() {
        "pcm" => Ok(AudioCodec::Pcm),
        "flac" => Ok(AudioCodec::Flac),
        "opus" => Ok(AudioCodec::Opus {
            bitrate: DEFAULT_OPUS_BITRATE,
        }),
        other => {
            let rate = other.strip_prefix("opus:").ok_or_else(bad)?;
            let bitrate = match rate.strip_suffix('k') {
                Some(k) => k.parse::<u32>().ok().and_then(|k| k.checked_mul(1000)),
                None => rate.parse::<u32>().ok(),
            }
            .ok_or_else(bad)?;
            if !OPUS_BITRATES.contains(&bitrate) {
                return Err(bad());
            }
            Ok(AudioCodec::Opus { bitrate })
        }
    }
}

/// The codec's `--codec` spelling: `pcm`, `flac`, `opus:128000`.
pub fn codec_label(codec: AudioCodec) -> String {
    match codec {
        AudioCodec::Opus { bitrate } => format!("opus:{bitrate}"),
        other => other.name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_values_parse_and_bad_ones_name_themselves() {
        assert_eq!(parse_codec("pcm"), Ok(AudioCodec::Pcm));
        assert_eq!(parse_codec("FLAC"), Ok(AudioCodec::Flac));
        assert_eq!(
            parse_codec("opus"),
            Ok(AudioCodec::Opus {
                bitrate: DEFAULT_OPUS_BITRATE
            })
        );
        assert_eq!(
            parse_codec("opus:64000"),
            Ok(AudioCodec::Opus { bitrate: 64_000 })
        );
        assert_eq!(
            parse_codec("opus:96k"),
            Ok(AudioCodec::Opus { bitrate: 96_000 })
        );
        assert_eq!(
            parse_codec("opus:6000"),
            Ok(AudioCodec::Opus { bitrate: 6_000 })
        );
        assert_eq!(
            parse_codec("opus:510000"),
            Ok(AudioCodec::Opus { bitrate: 510_000 })
        );
        for bad in [
            "mp3",
            "",
            "opus:",
            "opus:5999",
            "opus:510001",
            "opus:x",
            "pcm:1",
        ] {
            let e = parse_codec(bad).expect_err(bad);
            let text = e.to_string();
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(text.contains("pcm, flac, opus"), "{text}");
        }
    }

    #[test]
    fn labels_round_trip() {
        for c in [
            AudioCodec::Pcm,
            AudioCodec::Flac,
            AudioCodec::Opus { bitrate: 96_000 },
        ] {
            assert_eq!(parse_codec(&codec_label(c)), Ok(c));
        }
    }
}
