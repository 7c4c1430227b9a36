//! Which codec a stream uses, as the `Welcome` announces it.

/// The codec of a stream's `Audio` payloads; `index` is its wire index and `bit` its bit in a
/// `Join`'s codec mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// s16le interleaved PCM.
    Pcm,
    /// One FLAC frame per datagram.
    Flac,
    /// One Opus packet per datagram.
    Opus {
        /// Target bitrate in bit/s.
        bitrate: u32,
    },
}

impl AudioCodec {
    /// The wire index: 0 pcm, 1 flac, 2 opus.
    pub fn index(&self) -> u32 {
        match self {
            AudioCodec::Pcm => 0,
            AudioCodec::Flac => 1,
            AudioCodec::Opus { .. } => 2,
        }
    }

    /// The codec's bit in a `Join.codecs` mask.
    pub fn bit(&self) -> u32 {
        1 << self.index()
    }

    /// Its name: `pcm`, `flac`, `opus`.
    pub fn name(&self) -> &'static str {
        match self {
            AudioCodec::Pcm => "pcm",
            AudioCodec::Flac => "flac",
            AudioCodec::Opus { .. } => "opus",
        }
    }
}
