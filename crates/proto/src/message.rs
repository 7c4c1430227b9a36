//! The messages of protocol v1. The field order of every struct here is wire order: changing it
//! changes the protocol (the golden tests will say so).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Length of a handshake cookie: 128 bits, so guessing one is hopeless.
pub const COOKIE_LEN: usize = 16;

/// One datagram: the sequence number from the header and the typed body.
///
/// For `Audio`, `seq` numbers the stream's datagrams one by one (loss and reordering are
/// measured on it). For control messages it is the sender's own counter, informational only;
/// the repeated copies of one `End` share their `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence number (header bytes 4..12).
    pub seq: u64,
    /// The typed body.
    pub msg: Message,
}

impl Packet {
    /// A packet from its parts; saves the struct literal at every call site.
    pub fn new(seq: u64, msg: Message) -> Self {
        Self { seq, msg }
    }
}

/// The type byte of the header (byte 3). Codes not listed are reserved (see
/// [`MessageType::is_reserved`]) or unassigned; a v1 peer counts and drops both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Listener asks to connect.
    Connect = 1,
    /// Server answers with a cookie to echo.
    Challenge = 2,
    /// Listener echoes the cookie.
    Join = 3,
    /// Server accepts, describing the stream.
    Welcome = 4,
    /// Server refuses.
    Reject = 5,
    /// A chunk of PCM.
    Audio = 6,
    /// Listener keepalive and receiver report.
    Report = 7,
    /// Listener goes away.
    Leave = 8,
    /// Server ends the stream for this listener.
    End = 9,
    /// Something went wrong, with a code and text.
    Error = 10,
}

impl MessageType {
    /// The type for a header byte, if v1 defines one.
    pub fn from_u8(b: u8) -> Option<Self> {
        use MessageType::*;
        Some(match b {
            1 => Connect,
            2 => Challenge,
            3 => Join,
            4 => Welcome,
            5 => Reject,
            6 => Audio,
            7 => Report,
            8 => Leave,
            9 => End,
            10 => Error,
            _ => return None,
        })
    }

    /// Codes set aside for later versions, so v1 implementations never assign them privately:
    /// 16–31 other audio codecs, 32–47 forward error correction, 48–63 clock synchronisation.
    pub fn is_reserved(b: u8) -> bool {
        (16..=63).contains(&b)
    }
}

/// Every message body of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Listener → server: first datagram of a handshake.
    Connect(Connect),
    /// Server → listener: prove you receive at your address by echoing this cookie.
    Challenge(Challenge),
    /// Listener → server: the echoed cookie.
    Join(Join),
    /// Server → listener: accepted; what the stream is and where it starts.
    Welcome(StreamInfo),
    /// Server → listener: not accepted, and why.
    Reject(Reject),
    /// Server → listener: PCM frames.
    Audio(Audio),
    /// Listener → server: keepalive with reception counters.
    Report(Report),
    /// Listener → server: free my slot now.
    Leave,
    /// Server → listener: no more audio will come.
    End(End),
    /// Either way: an error the peer should know about.
    Error(ErrorMsg),
}

impl Message {
    /// The header type byte for this body.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Connect(_) => MessageType::Connect,
            Message::Challenge(_) => MessageType::Challenge,
            Message::Join(_) => MessageType::Join,
            Message::Welcome(_) => MessageType::Welcome,
            Message::Reject(_) => MessageType::Reject,
            Message::Audio(_) => MessageType::Audio,
            Message::Report(_) => MessageType::Report,
            Message::Leave => MessageType::Leave,
            Message::End(_) => MessageType::End,
            Message::Error(_) => MessageType::Error,
        }
    }
}

/// Body of `Connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// Highest protocol version the listener speaks (the header always says 1 until a v2 exists).
    pub max_version: u8,
    /// Zeros that bring the datagram to at least [`crate::limits::MIN_CONNECT_LEN`] bytes, so
    /// the server's answer is never larger than the question (anti-amplification).
    #[serde(with = "serde_bytes_bytes")]
    pub padding: Bytes,
}

/// Body of `Challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Opaque to the listener: the server's keyed hash of the listener's address and an epoch.
    pub cookie: [u8; COOKIE_LEN],
}

/// Body of `Join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The cookie from the last `Challenge`, unchanged.
    pub cookie: [u8; COOKIE_LEN],
}

/// PCM sample encodings. v1 defines one; the enum leaves room for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SampleFormat {
    /// Signed 16-bit little-endian, interleaved.
    S16Le,
}

impl SampleFormat {
    /// Bytes in one sample of one channel.
    pub fn bytes_per_sample(self) -> usize {
        match self {
            SampleFormat::S16Le => 2,
        }
    }
}

/// Body of `Welcome`: everything a listener needs to play the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// How each sample is encoded.
    pub format: SampleFormat,
    /// The server's tick in microseconds: the largest gap between audio bursts a listener must
    /// buffer across.
    pub interval_us: u32,
    /// Most frames one `Audio` datagram carries (the last of a tick may carry fewer).
    pub frames_per_packet: u32,
    /// Length of the whole stream in frames, when known (`None` for `--loop`).
    pub total_frames: Option<u64>,
    /// `seq` of the first `Audio` this listener will get: late joiners join live.
    pub start_seq: u64,
    /// `ts` (frame index) of that first `Audio`.
    pub start_ts: u64,
    /// Human-readable name of the stream (at most [`crate::limits::MAX_TITLE`] bytes).
    #[serde(deserialize_with = "borrowed_string")]
    pub title: String,
}

impl StreamInfo {
    /// Bytes in one interleaved frame.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels) * self.format.bytes_per_sample()
    }
}

/// Why a server refused a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Every slot is taken.
    Full {
        /// The server's `--max-clients`, so the listener can say how full "full" is.
        max_clients: u32,
    },
    /// The listener's protocol version is not one the server speaks.
    UnsupportedVersion {
        /// The version the server speaks.
        supported: u8,
    },
    /// The server is ending the stream and takes nobody new.
    ShuttingDown,
}

/// Body of `Reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Why.
    pub reason: RejectReason,
}

/// Body of `Audio`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audio {
    /// Index (in frames, from the start of the stream) of the first frame in `pcm`.
    pub ts: u64,
    /// Interleaved PCM in the stream's format; a whole number of frames.
    #[serde(with = "serde_bytes_bytes")]
    pub pcm: Bytes,
}

/// Body of `Report`: a listener's view of the stream so far (cumulative counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unique audio datagrams received.
    pub received: u64,
    /// Datagrams expected but not received so far.
    pub lost: u64,
    /// Datagrams that arrived after their playout deadline.
    pub late: u64,
    /// Datagrams received more than once.
    pub duplicates: u64,
    /// Datagrams whose seq was lower than one already received.
    pub out_of_order: u64,
    /// Highest audio seq received.
    pub highest_seq: u64,
    /// RFC 3550 interarrival jitter, microseconds.
    pub jitter_us: u32,
    /// Audio buffered ahead of playout, milliseconds.
    pub buffered_ms: u32,
}

/// Why the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The file played to its end.
    Finished,
    /// The server was stopped (Ctrl-C, SIGTERM).
    Shutdown,
    /// The server stopped hearing this listener's reports.
    Evicted,
}

/// Body of `End`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Why.
    pub reason: EndReason,
    /// seq of the last `Audio` sent to this listener (`None` if none was), so loss at the very
    /// end of the stream is countable.
    pub last_seq: Option<u64>,
}

/// What an `Error` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A `Report` or `Leave` came from an address that has no session (e.g. after eviction).
    NotJoined,
    /// The server cannot go on streaming (e.g. the file became unreadable).
    Internal,
}

/// Body of `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// Human-readable detail, at most [`crate::limits::MAX_ERROR_TEXT`] bytes.
    #[serde(deserialize_with = "borrowed_string")]
    pub text: String,
}

/// A `String` decoded by borrowing from the input first: bincode's owned string path allocates
/// the claimed length before it checks that the bytes are there (found by `tests/alloc.rs`).
fn borrowed_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    <&'de str>::deserialize(d).map(str::to_owned)
}

/// `Bytes` as one length-prefixed byte string (not a sequence of u8), borrowing from the input
/// while decoding so that nothing is allocated before the bytes are known to be there.
mod serde_bytes_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let buf: &'de [u8] = serde_bytes::deserialize(d)?;
        Ok(Bytes::copy_from_slice(buf))
    }
}
