//! FLAC: one frame of a fixed block size per datagram.
//!
//! flacenc encodes each block as a complete FLAC frame (header, subframes, CRC-16). FLAC frames
//! do not depend on each other, so a listener decodes whatever arrives in any order with
//! symphonia's decoder, configured from a STREAMINFO block it builds from the `Welcome`
//! ([`stream_info`]): the server never sends a FLAC stream header.

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, StreamInfo};
use flacenc::error::{Verified, Verify};
use flacenc::source::{Fill, FrameBuf};
use symphonia::core::codecs::audio::well_known::CODEC_ID_FLAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::packet::Packet;

use crate::{CodecError, Format};

/// Largest FLAC frame a datagram may carry (the protocol's largest payload): a block stored
/// verbatim (incompressible noise) must still fit, so blocks are capped to what fits here
/// uncompressed (plus frame and subframe headers).
pub const MAX_FRAME_BYTES: usize = proto::limits::MAX_PAYLOAD;

/// Frame and subframe headers and CRCs of a verbatim frame, at most (8 channels).
const FRAME_OVERHEAD: usize = 40;

/// Bits per sample: the stream is s16.
const BITS: usize = 16;

/// A block's compressed size as a share of its PCM size that music stays under (measured:
/// 0.53–0.58 for stereo music with noise at 44.1 kHz), as `(num, den)`: a block of
/// `pcm_frames × den / num` frames then fits the datagram PCM would have filled.
const RATIO: (usize, usize) = (7, 12);

/// The block size (frames per datagram) for `format` when a PCM datagram holds `pcm_frames`:
/// 12/7 of it, so a typical frame fits the same datagram (588 frames for 44.1 kHz stereo at
/// the default 1400-byte datagrams), capped so that even a verbatim frame fits
/// [`MAX_FRAME_BYTES`], and within FLAC's 16..=65535.
pub fn block_size(format: Format, pcm_frames: usize) -> usize {
    let bytes_per_frame = format.samples_per_frame() * 2;
    let typical = pcm_frames.saturating_mul(RATIO.1) / RATIO.0;
    let cap = (MAX_FRAME_BYTES - FRAME_OVERHEAD) / bytes_per_frame;
    typical.min(cap).clamp(16, 65_535)
}

/// The 34-byte STREAMINFO block (without the metadata block header) for a stream of `format`
/// in blocks of `block` frames: all a decoder needs (total length and MD5 left unknown).
pub fn stream_info(format: Format, block: usize) -> Result<Vec<u8>, CodecError> {
    let lib = |e: &dyn std::fmt::Display| CodecError::Library {
        codec: "flac",
        reason: e.to_string(),
    };
    let mut si = StreamInfo::new(
        format.sample_rate as usize,
        usize::from(format.channels),
        BITS,
    )
    .map_err(|e| lib(&e))?;
    si.set_block_sizes(block, block).map_err(|e| lib(&e))?;
    let mut sink = ByteSink::new();
    si.write(&mut sink).map_err(|e| lib(&e))?;
    Ok(sink.into_inner())
}

fn check_format(format: Format) -> Result<(), CodecError> {
    if format.sample_rate == 0 || format.channels == 0 {
        return Err(CodecError::BadFormat {
            sample_rate: format.sample_rate,
            channels: format.channels,
        });
    }
    if format.channels > 8 {
        return Err(CodecError::FlacChannels(format.channels));
    }
    Ok(())
}

/// Encodes blocks of exactly `block` frames into FLAC frames.
pub(crate) struct FlacEncoder {
    config: Verified<flacenc::config::Encoder>,
    info: StreamInfo,
    buf: FrameBuf,
    block: usize,
    channels: usize,
    /// The frame number in the next frame's header (FLAC counts frames of a fixed-block stream;
    /// wraps below 2^31, the header's limit, as nothing reads it).
    frame_number: usize,
    samples: Vec<i32>,
    sink: ByteSink,
}

impl FlacEncoder {
    /// An encoder of `block`-frame blocks of `format`.
    pub(crate) fn new(format: Format, block: usize) -> Result<Self, CodecError> {
        check_format(format)?;
        let lib = |e: &dyn std::fmt::Display| CodecError::Library {
            codec: "flac",
            reason: e.to_string(),
        };
        if !(16..=65_535).contains(&block) {
            return Err(CodecError::FramesPerPacket {
                codec: "flac",
                frames: u32::try_from(block).unwrap_or(u32::MAX),
            });
        }
        let channels = usize::from(format.channels);
        let config = flacenc::config::Encoder::default()
            .into_verified()
            .map_err(|(_, e)| lib(&e))?;
        let mut info =
            StreamInfo::new(format.sample_rate as usize, channels, BITS).map_err(|e| lib(&e))?;
        info.set_block_sizes(block, block).map_err(|e| lib(&e))?;
        let buf = FrameBuf::with_size(channels, block).map_err(|e| lib(&e))?;
        Ok(Self {
            config,
            info,
            buf,
            block,
            channels,
            frame_number: 0,
            samples: Vec::with_capacity(block * channels),
            sink: ByteSink::with_capacity(block * channels * 16 + 1024),
        })
    }

    /// Encodes one block (`block × channels` interleaved samples) and returns the frame's bytes.
    pub(crate) fn encode_block(&mut self, pcm: &[i16]) -> Result<&[u8], String> {
        debug_assert_eq!(pcm.len(), self.block * self.channels);
        self.samples.clear();
        self.samples.extend(pcm.iter().map(|&s| i32::from(s)));
        self.buf
            .fill_interleaved(&self.samples)
            .map_err(|e| e.to_string())?;
        let frame = flacenc::encode_fixed_size_frame(
            &self.config,
            &self.buf,
            self.frame_number,
            &self.info,
        )
        .map_err(|e| e.to_string())?;
        self.frame_number = (self.frame_number + 1) % (1 << 31);
        self.sink.clear();
        frame.write(&mut self.sink).map_err(|e| e.to_string())?;
        Ok(self.sink.as_slice())
    }
}

/// Decodes FLAC frames of one stream, in any order.
pub(crate) struct FlacDecoder {
    decoder: Box<dyn AudioDecoder>,
    channels: usize,
    /// symphonia copies a whole buffer into a vector: decoded here, then appended.
    scratch: Vec<i16>,
}

impl FlacDecoder {
    /// A decoder for a stream of `format` in blocks of `block` frames.
    pub(crate) fn new(format: Format, block: usize) -> Result<Self, CodecError> {
        check_format(format)?;
        if !(16..=65_535).contains(&block) {
            return Err(CodecError::FramesPerPacket {
                codec: "flac",
                frames: u32::try_from(block).unwrap_or(u32::MAX),
            });
        }
        let si = stream_info(format, block)?;
        let mut params = AudioCodecParameters::new();
        params.for_codec(CODEC_ID_FLAC).with_extra_data(si.into());
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| CodecError::Library {
                codec: "flac",
                reason: e.to_string(),
            })?;
        Ok(Self {
            decoder,
            channels: usize::from(format.channels),
            scratch: Vec::new(),
        })
    }

    /// Decodes one frame, appending interleaved samples to `out`; returns the frames decoded.
    pub(crate) fn decode(&mut self, frame: &[u8], out: &mut Vec<i16>) -> Result<usize, String> {
        let packet = Packet::new(0, 0i64.into(), 0u64.into(), frame);
        let buf = self.decoder.decode(&packet).map_err(|e| e.to_string())?;
        if buf.spec().channels().count() != self.channels {
            return Err(format!(
                "a frame of {} channels in a {}-channel stream",
                buf.spec().channels().count(),
                self.channels
            ));
        }
        buf.copy_to_vec_interleaved::<i16>(&mut self.scratch);
        out.extend_from_slice(&self.scratch);
        Ok(buf.frames())
    }
}
