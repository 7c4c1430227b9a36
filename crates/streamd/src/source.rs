//! The audio source: symphonia 0.6 decoding of one file into interleaved s16 PCM, and
//! [`Input`], what `--file` opens: such a file, a raw PCM file ([`RawFile`]) or a live input
//! ([`crate::live`]).
//!
//! Sans-IO in the sense that matters here: no sockets, no clock, no tasks. The server pulls
//! exactly the frames its media clock says are due with [`Source::read_frames`]; tests pull
//! the same frames and compare them.
//!
//! Behaviour decided here:
//! - Gapless: the decoder's gapless trimming is on (symphonia's default), so mp3 (LAME/Xing
//!   delay and padding), ogg and flac yield the exact frames the encoder was given.
//! - m4a/AAC: symphonia 0.6 does not trim AAC priming in MP4, so the 1024 encoder-delay frames
//!   (about 23 ms of near-silence) stay at the start of the stream. We stream them as decoded
//!   rather than guess at edit lists: the listener hears a 23 ms lead-in and nothing is lost.
//!   The decoder also yields the encoder's tail padding (up to one 1024-frame packet); for AAC
//!   we stop at the container's frame count ([`SourceInfo::total_frames`], which counts the
//!   priming but not the padding), so what is streamed is exactly `total_frames` frames.
//!   [`decode_all`] returns the same frames, so fidelity tests still compare sample for sample.
//! - Corrupt packets are skipped (the decoder resyncs) and counted in
//!   [`Source::corrupt_packets`]. Most damage never reaches the decoder: the flac demuxer
//!   drops frames whose CRC fails, which we count as gaps in the packets' timestamps; the mp3
//!   demuxer resyncs past damage and numbers its packets consecutively, so a loss there is
//!   not countable (it shows only as fewer frames). A truncated file streams what it holds.
//! - Rate and channel count come from the first decoded buffer (authoritative, unlike some
//!   container headers); a later buffer with another spec is skipped as corrupt, because the
//!   stream's format is fixed by the `Welcome` every listener already holds.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{MetadataOptions, StandardTag};

use crate::endpoint::AudioSource;
use crate::live::{Decode, LiveInput, LiveSource, LiveStats, OnIdle, RawFormat, buffer_frames};

/// Demuxer errors in a row after which the file is treated as ended: a reader that cannot get
/// past damage would otherwise spin forever on it. 64 covers any plausible run of bad frames in
/// a file that still has audio after it.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 64;

/// What the server tells listeners about the stream, fixed when the file is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Frames per second: the media clock runs at this rate.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// Frames the file will yield, when the container says (it excludes gapless delay and
    /// padding); listeners use it to show progress.
    pub total_frames: Option<u64>,
    /// Short codec name ("mp3", "flac", "aac", ...), for the start log line.
    pub codec: String,
    /// Human-readable name: the file's title tag, else its name without the extension.
    pub title: String,
}

impl SourceInfo {
    /// Length of the file, when known, for the start log line.
    pub fn duration(&self) -> Option<std::time::Duration> {
        let frames = self.total_frames?;
        let rate = u64::from(self.sample_rate.max(1));
        let nanos = u128::from(frames) * 1_000_000_000 / u128::from(rate);
        Some(std::time::Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// Bytes in one s16 interleaved frame: sizes every datagram.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels) * 2
    }
}

/// Why a file cannot be streamed. Every message names the file, so the one-line error a user
/// sees says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("{}: file not found", .path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The file exists but cannot be read (permissions, a directory, an I/O error).
    #[error("{}: cannot read: {source}", .path.display())]
    Unreadable {
        /// The path given.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Zero bytes, or no audio frames at all.
    #[error("{}: file is empty (no audio frames)", .path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
    },
    /// Not a container symphonia recognises, or no audio track in it.
    #[error("{}: not an audio file ({detail}); use mp3, flac, wav, ogg/vorbis or m4a/aac", .path.display())]
    NotAudio {
        /// The path given.
        path: PathBuf,
        /// What the probe said.
        detail: String,
    },
    /// An audio track whose codec this build cannot decode.
    #[error("{}: unsupported audio codec ({detail}); use mp3, flac, wav, ogg/vorbis or m4a/aac", .path.display())]
    UnsupportedCodec {
        /// The path given.
        path: PathBuf,
        /// What symphonia said.
        detail: String,
    },
}

/// An open, decoding audio file that hands out interleaved i16 frames on demand.
pub struct Source {
    /// For log lines and errors.
    path: PathBuf,
    /// Fixed at open.
    info: SourceInfo,
    /// The demuxer.
    format: Box<dyn FormatReader>,
    /// The decoder for `track_id`.
    decoder: Box<dyn AudioDecoder>,
    /// The audio track we play; packets of other tracks are skipped.
    track_id: u32,
    /// Decoded samples not yet handed out (`pending[pending_pos..]`).
    pending: Vec<i16>,
    /// Read position in `pending`.
    pending_pos: usize,
    /// Reused decode buffer, so steady-state decoding does not allocate.
    scratch: Vec<i16>,
    /// Packets skipped as corrupt.
    corrupt_packets: u64,
    /// Frames handed out so far.
    frames_read: u64,
    /// The demuxer said the file has ended (or gave up on it).
    eof: bool,
    /// Hand out no more than this many frames (AAC only: cuts the encoder's tail padding).
    frame_cap: Option<u64>,
    /// Timestamp the next packet should have: a later one means the flac demuxer skipped a
    /// damaged frame (CRC) without telling us, and is counted as corrupt.
    expected_pts: Option<i64>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("frames_read", &self.frames_read)
            .field("corrupt_packets", &self.corrupt_packets)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Opens and probes `path` and decodes its first audio, so that every error a user can fix
    /// (missing, unreadable, empty, not audio, unsupported codec) shows before streaming starts.
    pub fn open(path: &Path) -> Result<Source, SourceError> {
        let pb = path.to_path_buf();
        let (file, meta) = open_regular(path)?;
        if meta.len() == 0 {
            return Err(SourceError::Empty { path: pb });
        }

        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probe = |mss: MediaSourceStream<'static>| {
            symphonia::default::get_probe().probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        };
        let mut res = probe(MediaSourceStream::new(Box::new(file), Default::default()));
        if let Err(SymError::IoError(e)) = &res
            && e.kind() == ErrorKind::UnexpectedEof
        {
            // Some readers (ogg) look at the end of a seekable file to learn its length and
            // fail if it was truncated. Read it again as a plain stream: a truncated file
            // streams what it holds.
            let file = File::open(path).map_err(|e| SourceError::Unreadable {
                path: pb.clone(),
                source: e,
            })?;
            let ro = symphonia::core::io::ReadOnlySource::new(file);
            res = probe(MediaSourceStream::new(Box::new(ro), Default::default()));
        }
        let format = res.map_err(|e| probe_error(&pb, e))?;
        Source::from_format(pb, format, path)
    }

    /// Probes and opens a stream that cannot seek (stdin, a FIFO): the same checks as
    /// [`Source::open`]; `name` stands for the stream in titles, log lines and errors.
    pub fn open_stream(
        name: &Path,
        reader: Box<dyn std::io::Read + Send + Sync>,
    ) -> Result<Source, SourceError> {
        let pb = name.to_path_buf();
        let ro = symphonia::core::io::ReadOnlySource::new(reader);
        let mss = MediaSourceStream::new(Box::new(ro), Default::default());
        let format = symphonia::default::get_probe()
            .probe(
                &Hint::new(),
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::IoError(ref io) if io.kind() == ErrorKind::UnexpectedEof => {
                    SourceError::Empty { path: pb.clone() }
                }
                e => probe_error(&pb, e),
            })?;
        Source::from_format(pb, format, name)
    }

    /// The rest of opening, once the container is probed: the track, the decoder, the title,
    /// and the first audio.
    fn from_format(
        pb: PathBuf,
        mut format: Box<dyn FormatReader>,
        path: &Path,
    ) -> Result<Source, SourceError> {
        let track =
            format
                .default_track(TrackType::Audio)
                .ok_or_else(|| SourceError::NotAudio {
                    path: pb.clone(),
                    detail: "no audio track".into(),
                })?;
        let track_id = track.id;
        let total_frames = track.num_frames;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| SourceError::UnsupportedCodec {
                path: pb.clone(),
                detail: "track has no audio codec parameters".into(),
            })?
            .clone();
        let registry = symphonia::default::get_codecs();
        let codec = registry
            .get_audio_decoder(params.codec)
            .map(|d| d.codec.info.short_name.to_string())
            .ok_or_else(|| SourceError::UnsupportedCodec {
                path: pb.clone(),
                detail: format!("codec {:?}", params.codec),
            })?;
        let decoder = registry
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| SourceError::UnsupportedCodec {
                path: pb.clone(),
                detail: e.to_string(),
            })?;

        // The file's own title tag if it has one, else its name without the extension.
        let tagged = format.metadata().skip_to_latest().and_then(|rev| {
            rev.media.tags.iter().find_map(|t| match &t.std {
                Some(StandardTag::TrackTitle(s)) if !s.trim().is_empty() => {
                    Some(s.chars().filter(|c| !c.is_control()).collect::<String>())
                }
                _ => None,
            })
        });
        let title = tagged.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut src = Source {
            path: pb.clone(),
            info: SourceInfo {
                sample_rate: params.sample_rate.unwrap_or(0),
                channels: params
                    .channels
                    .as_ref()
                    .map(|c| u16::try_from(c.count()).unwrap_or(0))
                    .unwrap_or(0),
                total_frames,
                codec,
                title,
            },
            format,
            decoder,
            track_id,
            pending: Vec::new(),
            pending_pos: 0,
            scratch: Vec::new(),
            corrupt_packets: 0,
            frames_read: 0,
            eof: false,
            frame_cap: None,
            expected_pts: None,
        };
        if src.info.codec == "aac" {
            src.frame_cap = total_frames;
        }
        // Decode up to the first audio: it fixes rate and channels and proves the file plays.
        src.fill(true);
        if src.pending.is_empty() {
            return Err(SourceError::Empty { path: pb });
        }
        if src.info.sample_rate == 0 || src.info.channels == 0 {
            return Err(SourceError::UnsupportedCodec {
                path: pb,
                detail: "unknown sample rate or channel count".into(),
            });
        }
        Ok(src)
    }

    /// What the file is; fixed for the life of the source.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// The path it was opened from, for log lines.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Packets skipped as damaged: ones that did not decode (or changed format mid-stream),
    /// and gaps in the packet timeline where the demuxer skipped data (each gap counts once).
    pub fn corrupt_packets(&self) -> u64 {
        self.corrupt_packets
    }

    /// Frames handed out by [`Source::read_frames`] so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// True once every frame of the file has been handed out.
    pub fn is_finished(&self) -> bool {
        (self.eof && self.pending_pos >= self.pending.len())
            || self.frame_cap.is_some_and(|c| self.frames_read >= c)
    }

    /// Appends up to `max_frames` interleaved frames to `out` and returns how many it appended.
    /// Fewer than asked only at the end of the file; 0 means the file is finished.
    pub fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let ch = usize::from(self.info.channels);
        let max_frames = match self.frame_cap {
            Some(cap) => max_frames
                .min(usize::try_from(cap.saturating_sub(self.frames_read)).unwrap_or(usize::MAX)),
            None => max_frames,
        };
        let mut left = max_frames;
        while left > 0 {
            if self.pending_pos >= self.pending.len() {
                if self.eof {
                    break;
                }
                self.fill(false);
                continue;
            }
            let avail = (self.pending.len() - self.pending_pos) / ch;
            let n = avail.min(left);
            out.extend_from_slice(&self.pending[self.pending_pos..self.pending_pos + n * ch]);
            self.pending_pos += n * ch;
            left -= n;
        }
        let got = max_frames - left;
        self.frames_read += got as u64;
        got
    }

    /// Decodes packets until some frames are pending or the file ends. `first` adopts the first
    /// buffer's spec as the stream's.
    fn fill(&mut self, mut first: bool) {
        self.pending.clear();
        self.pending_pos = 0;
        let mut errors = 0u32;
        while self.pending.is_empty() && !self.eof {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.eof = true;
                    break;
                }
                Err(SymError::DecodeError(e)) => {
                    // Demuxer-level damage: count it and try to read on.
                    self.corrupt_packets += 1;
                    errors += 1;
                    tracing::debug!(file = %self.path.display(), "skipping damaged data: {e}");
                    if errors >= MAX_CONSECUTIVE_ERRORS {
                        tracing::warn!(file = %self.path.display(), "too much damage in a row; treating as end of file");
                        self.eof = true;
                    }
                    continue;
                }
                Err(e) => {
                    // I/O errors (a truncated file), ResetRequired (chained ogg) and the rest:
                    // stream what we have and end there.
                    if !matches!(&e, SymError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof)
                    {
                        tracing::warn!(file = %self.path.display(), "stopping at a read error: {e}");
                    }
                    self.eof = true;
                    break;
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let pts = packet.pts.get();
            // Only flac's timeline is both exact and taken from the stream: ogg's granule
            // positions legitimately jump at block-size changes, mp3 packets are renumbered
            // after a resync, and mp4/wav timestamps come from tables, not from the data.
            if self.info.codec == "flac" && self.expected_pts.is_some_and(|e| pts > e) {
                self.corrupt_packets += 1;
                tracing::debug!(file = %self.path.display(), "gap before packet at {pts}: damaged data skipped");
            }
            self.expected_pts = Some(packet.pts.saturating_add(packet.dur).get());
            match self.decoder.decode(&packet) {
                Ok(buf) => {
                    errors = 0;
                    if buf.frames() == 0 {
                        continue;
                    }
                    let spec = buf.spec();
                    let ch = u16::try_from(spec.channels().count()).unwrap_or(0);
                    if first {
                        self.info.sample_rate = spec.rate();
                        self.info.channels = ch;
                        first = false;
                    } else if spec.rate() != self.info.sample_rate || ch != self.info.channels {
                        self.corrupt_packets += 1;
                        continue;
                    }
                    buf.copy_to_vec_interleaved::<i16>(&mut self.scratch);
                    std::mem::swap(&mut self.pending, &mut self.scratch);
                }
                Err(e) => {
                    self.corrupt_packets += 1;
                    errors += 1;
                    tracing::debug!(file = %self.path.display(), "skipping corrupt packet: {e}");
                    if errors >= MAX_CONSECUTIVE_ERRORS {
                        tracing::warn!(file = %self.path.display(), "too many corrupt packets in a row; treating as end of file");
                        self.eof = true;
                    }
                }
            }
        }
    }
}

/// A failed probe as the error a user sees.
fn probe_error(pb: &Path, e: SymError) -> SourceError {
    let pb = pb.to_path_buf();
    match e {
        SymError::IoError(ref io) if io.kind() != ErrorKind::UnexpectedEof => {
            SourceError::Unreadable {
                path: pb,
                source: std::io::Error::new(io.kind(), io.to_string()),
            }
        }
        SymError::Unsupported(_) => SourceError::NotAudio {
            path: pb,
            detail: "no known audio container or stream found".into(),
        },
        other => SourceError::NotAudio {
            path: pb,
            detail: other.to_string(),
        },
    }
}

impl Source {
    /// The file as an iterator of chunks of `frames` frames each (the last may be shorter):
    /// the same samples the server cuts into datagrams, for tools and tests that want owned
    /// chunks rather than [`Source::read_frames`]'s buffer reuse.
    pub fn chunks(self, frames: usize) -> Chunks {
        Chunks {
            source: self,
            frames: frames.max(1),
        }
    }
}

/// Iterator over a [`Source`] in fixed-size chunks of interleaved samples; see
/// [`Source::chunks`].
#[derive(Debug)]
pub struct Chunks {
    /// The file being read.
    source: Source,
    /// Frames per chunk.
    frames: usize,
}

impl Chunks {
    /// The source, e.g. for its counters once iteration is done.
    pub fn source(&self) -> &Source {
        &self.source
    }
}

impl Iterator for Chunks {
    type Item = Vec<i16>;

    fn next(&mut self) -> Option<Vec<i16>> {
        let ch = usize::from(self.source.info.channels);
        let mut v = Vec::with_capacity(self.frames * ch);
        (self.source.read_frames(self.frames, &mut v) > 0).then_some(v)
    }
}

/// Decodes a whole file: exactly the samples the server streams from it (one pass, no loop),
/// for fidelity tests that compare a listener's output sample for sample.
pub fn decode_all(path: &Path) -> Result<(SourceInfo, Vec<i16>), SourceError> {
    let mut src = Source::open(path)?;
    let mut out = Vec::new();
    // Any chunk size gives the same samples; a big one keeps this quick.
    while src.read_frames(1 << 16, &mut out) > 0 {}
    Ok((src.info.clone(), out))
}

/// A raw PCM file (`--format s16le:RATE:CHANNELS` with a regular file): read on demand like a
/// decoded file, its length known from its size.
#[derive(Debug)]
pub struct RawFile {
    path: PathBuf,
    info: SourceInfo,
    format: RawFormat,
    reader: std::io::BufReader<File>,
    bytes: Vec<u8>,
    eof: bool,
    frames_read: u64,
}

impl RawFile {
    /// Opens `path` as raw frames of `format`; an empty file or one shorter than a frame is
    /// refused.
    pub fn open(path: &Path, format: RawFormat) -> Result<RawFile, SourceError> {
        let pb = path.to_path_buf();
        let (file, meta) = open_regular(path)?;
        let frames = meta.len() / format.bytes_per_frame() as u64;
        if frames == 0 {
            return Err(SourceError::Empty { path: pb });
        }
        let title = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(RawFile {
            info: SourceInfo {
                sample_rate: format.sample_rate,
                channels: format.channels,
                total_frames: Some(frames),
                codec: "pcm_s16le (raw)".into(),
                title,
            },
            path: pb,
            format,
            reader: std::io::BufReader::new(file),
            bytes: Vec::new(),
            eof: false,
            frames_read: 0,
        })
    }

    /// Appends up to `max_frames` frames to `out`; fewer only at the end of the file (a
    /// trailing partial frame is dropped).
    pub fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        use std::io::Read;
        let total = self.info.total_frames.unwrap_or(0);
        let want =
            max_frames.min(usize::try_from(total - self.frames_read.min(total)).unwrap_or(0));
        let bpf = self.format.bytes_per_frame();
        self.bytes.resize(want * bpf, 0);
        let mut have = 0;
        while have < self.bytes.len() && !self.eof {
            match self.reader.read(&mut self.bytes[have..]) {
                Ok(0) => self.eof = true,
                Ok(n) => have += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), "stopping at a read error: {e}");
                    self.eof = true;
                }
            }
        }
        let frames = have / bpf;
        out.extend(
            self.bytes[..frames * bpf]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        if frames < want {
            self.eof = true;
        }
        self.frames_read += frames as u64;
        frames
    }

    /// True once every frame has been handed out.
    pub fn is_finished(&self) -> bool {
        self.eof || self.frames_read >= self.info.total_frames.unwrap_or(0)
    }
}

/// What `--file` (with `--format` and `--on-idle`) opens: a decoded file, a raw PCM file, or a
/// live input (stdin, a FIFO).
#[derive(Debug)]
pub enum Input {
    /// A file symphonia decodes.
    File(Source),
    /// A raw PCM file.
    Raw(RawFile),
    /// Stdin or a FIFO, read by a thread into a bounded queue.
    Live(LiveSource),
    /// Another earshot server's stream (`--relay-from`).
    Relay(crate::relay::RelaySource),
}

/// How `--file` is read besides its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputOptions {
    /// `--format`: raw PCM of this layout instead of a container.
    pub format: Option<RawFormat>,
    /// `--on-idle`: what a FIFO without a writer sends.
    pub on_idle: OnIdle,
}

/// Whether `--file path` is live (`-` for stdin, or a named pipe) rather than a file that can
/// be read ahead.
pub fn live_input(path: &Path) -> Option<LiveInput> {
    if path == Path::new("-") {
        Some(LiveInput::Stdin)
    } else if crate::live::is_fifo(path) {
        Some(LiveInput::Fifo(path.to_path_buf()))
    } else {
        None
    }
}

impl Input {
    /// Opens `path` (`-` for stdin): a FIFO or stdin becomes a live input with its reader
    /// thread started; a container on it is probed first (for a FIFO that waits for its first
    /// writer), so a stream that is not audio fails here.
    pub fn open(path: &Path, opts: InputOptions) -> Result<Input, SourceError> {
        let Some(live) = live_input(path) else {
            return Ok(match opts.format {
                Some(f) => Input::Raw(RawFile::open(path, f)?),
                None => Input::File(Source::open(path)?),
            });
        };
        let (decode, info) = match opts.format {
            Some(f) => (
                Decode::Raw(f),
                SourceInfo {
                    sample_rate: f.sample_rate,
                    channels: f.channels,
                    total_frames: None,
                    codec: "pcm_s16le (raw)".into(),
                    title: match &live {
                        LiveInput::Stdin => "stdin".into(),
                        LiveInput::Fifo(p) => p
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    },
                },
            ),
            None => {
                let src = crate::live::probe(&live)?;
                let info = src.info().clone();
                (Decode::Container(Box::new(src)), info)
            }
        };
        let (feed, source) =
            crate::live::channel(info, buffer_frames(opts_rate(&decode)), opts.on_idle);
        if matches!(live, LiveInput::Fifo(_)) && matches!(decode, Decode::Raw(_)) {
            feed.waiting();
        }
        crate::live::spawn_reader(live, decode, feed).map_err(|e| SourceError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Input::Live(source))
    }

    /// What the stream is.
    pub fn info(&self) -> &SourceInfo {
        match self {
            Input::File(s) => s.info(),
            Input::Raw(r) => &r.info,
            Input::Live(l) => l.info(),
            Input::Relay(r) => AudioSource::info(r),
        }
    }

    /// Whether this is a live input (no length, cannot loop).
    pub fn is_live(&self) -> bool {
        matches!(self, Input::Live(_) | Input::Relay(_))
    }
}

fn opts_rate(d: &Decode) -> u32 {
    match d {
        Decode::Raw(f) => f.sample_rate,
        Decode::Container(s) => s.info().sample_rate,
    }
}

impl AudioSource for Input {
    fn info(&self) -> &SourceInfo {
        Input::info(self)
    }

    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        match self {
            Input::File(s) => s.read_frames(max_frames, out),
            Input::Raw(r) => r.read_frames(max_frames, out),
            Input::Live(l) => l.read_frames(max_frames, out),
            Input::Relay(r) => r.read_frames(max_frames, out),
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Input::File(s) => s.is_finished(),
            Input::Raw(r) => r.is_finished(),
            Input::Live(l) => l.is_finished(),
            Input::Relay(r) => r.is_finished(),
        }
    }

    fn rewind(&mut self) -> Result<(), String> {
        match self {
            Input::File(s) => AudioSource::rewind(s),
            Input::Raw(r) => {
                let fresh = RawFile::open(&r.path, r.format)
                    .map_err(|e| format!("cannot reopen for --loop: {e}"))?;
                *r = fresh;
                Ok(())
            }
            Input::Live(_) | Input::Relay(_) => Err("a live input cannot loop".into()),
        }
    }

    fn corrupt_packets(&self) -> u64 {
        match self {
            Input::File(s) => s.corrupt_packets(),
            _ => 0,
        }
    }

    fn begin_tick(&mut self, now: std::time::Instant) {
        match self {
            Input::Live(l) => l.begin_tick(now),
            Input::Relay(r) => r.begin_tick(now),
            _ => {}
        }
    }

    fn is_holding(&self) -> bool {
        match self {
            Input::Live(l) => l.is_holding(),
            Input::Relay(r) => r.is_holding(),
            _ => false,
        }
    }

    fn ready_frames(&self) -> Option<u64> {
        match self {
            Input::Relay(r) => r.ready_frames(),
            _ => None,
        }
    }

    fn reads_ahead(&self) -> bool {
        matches!(self, Input::File(_) | Input::Raw(_))
    }

    fn end_reason(&self) -> proto::EndReason {
        match self {
            Input::Relay(r) => r.end_reason(),
            _ => proto::EndReason::Finished,
        }
    }

    fn live_stats(&self) -> Option<LiveStats> {
        match self {
            Input::Live(l) => Some(l.stats()),
            _ => None,
        }
    }
}

/// Opens `path` for reading and reads its metadata: a missing file, an unreadable one and a
/// directory each become the error that names it.
fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), SourceError> {
    let pb = path.to_path_buf();
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => SourceError::Missing { path: pb.clone() },
        _ => SourceError::Unreadable {
            path: pb.clone(),
            source: e,
        },
    })?;
    let meta = file.metadata().map_err(|e| SourceError::Unreadable {
        path: pb.clone(),
        source: e,
    })?;
    if meta.is_dir() {
        return Err(SourceError::Unreadable {
            path: pb,
            source: std::io::Error::new(ErrorKind::IsADirectory, "is a directory"),
        });
    }
    Ok((file, meta))
}
