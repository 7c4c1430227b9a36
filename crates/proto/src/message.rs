//! The messages of protocol v2. The field order of every struct here is wire order: changing it
//! changes the protocol (the golden tests will say so).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Length of a handshake cookie: 128 bits, so guessing one is hopeless.
pub const COOKIE_LEN: usize = 16;

/// Length of a session token: 128 random bits from the Welcome that every later listener
/// message carries, so a host that merely spoofs a listener's address cannot act for it.
pub const TOKEN_LEN: usize = 16;

/// A session token (see [`TOKEN_LEN`]).
pub type Token = [u8; TOKEN_LEN];

/// Length of a stream key carried by `Rekey`: a ChaCha20-Poly1305 key.
pub const KEY_LEN: usize = 32;

/// `Join.features` bit: the listener recovers lost audio from `Parity` datagrams.
pub const FEATURE_FEC: u32 = 1;
/// `Join.features` bit: the listener asks for lost audio with `Nack`.
pub const FEATURE_RETRANSMIT: u32 = 2;
/// `Join.features` bit: the listener can receive the audio from a multicast group.
pub const FEATURE_MULTICAST: u32 = 4;
/// `Join.features` bit: the listener synchronises its playout with `TimeRequest`.
pub const FEATURE_SYNC: u32 = 8;

/// `Report.flags` bit: the multicast group's audio is not arriving; send it by unicast.
pub const FLAG_UNICAST_FALLBACK: u32 = 1;

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

/// The type byte of the header (byte 3). Codes not listed are unassigned; a peer counts and
/// drops them.
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
    /// A chunk of encoded audio.
    Audio = 6,
    /// Listener keepalive and receiver report.
    Report = 7,
    /// Listener goes away.
    Leave = 8,
    /// Server ends the stream for this listener.
    End = 9,
    /// Something went wrong, with a code and text.
    Error = 10,
    /// Server hands a listener the next stream key (keyed rooms, always sealed).
    Rekey = 11,
    /// Forward error correction: one parity shard of a group of audio datagrams.
    Parity = 32,
    /// Listener asks for audio datagrams it missed.
    Nack = 33,
    /// Server resends an audio datagram a listener asked for.
    Resent = 34,
    /// Listener asks for the server's clock.
    TimeRequest = 48,
    /// Server answers with its clock and media timeline.
    TimeResponse = 49,
    /// Any message after the handshake of a keyed room, encrypted and authenticated.
    Sealed = 64,
}

impl MessageType {
    /// The type for a header byte, if v2 defines one.
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
            11 => Rekey,
            32 => Parity,
            33 => Nack,
            34 => Resent,
            48 => TimeRequest,
            49 => TimeResponse,
            64 => Sealed,
            _ => return None,
        })
    }
}

/// Every message body of protocol v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Listener → server: first datagram of a handshake.
    Connect(Connect),
    /// Server → listener: prove you receive at your address by echoing this cookie.
    Challenge(Challenge),
    /// Listener → server: the echoed cookie.
    Join(Join),
    /// Server → listener: accepted; the session token and what the stream is.
    Welcome(Welcome),
    /// Server → listener: not accepted, and why.
    Reject(Reject),
    /// Server → listener: encoded audio frames.
    Audio(Audio),
    /// Listener → server: keepalive with reception counters.
    Report(Report),
    /// Listener → server: free my slot now, and why.
    Leave(Leave),
    /// Server → listener: no more audio will come.
    End(End),
    /// Either way: an error the peer should know about.
    Error(ErrorMsg),
    /// Server → listener (sealed only): the next stream key.
    Rekey(Rekey),
    /// Server → listener: a parity shard for forward error correction.
    Parity(Parity),
    /// Listener → server: audio seqs to resend.
    Nack(Nack),
    /// Server → listener: a resent audio datagram (header seq = its original seq).
    Resent(Audio),
    /// Listener → server: clock exchange request.
    TimeRequest(TimeRequest),
    /// Server → listener: clock exchange answer.
    TimeResponse(TimeResponse),
    /// Either way, keyed rooms: an encrypted message.
    Sealed(Sealed),
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
            Message::Leave(_) => MessageType::Leave,
            Message::End(_) => MessageType::End,
            Message::Error(_) => MessageType::Error,
            Message::Rekey(_) => MessageType::Rekey,
            Message::Parity(_) => MessageType::Parity,
            Message::Nack(_) => MessageType::Nack,
            Message::Resent(_) => MessageType::Resent,
            Message::TimeRequest(_) => MessageType::TimeRequest,
            Message::TimeResponse(_) => MessageType::TimeResponse,
            Message::Sealed(_) => MessageType::Sealed,
        }
    }
}

/// Body of `Connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// Highest protocol version the listener speaks (2).
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The cookie from the last `Challenge`, unchanged.
    pub cookie: [u8; COOKIE_LEN],
    /// The listener's name for the operator (at most [`crate::limits::MAX_NAME`] bytes).
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    /// The codecs the listener decodes: bit `1 << index` per [`AudioCodec`] index.
    pub codecs: u32,
    /// What else the listener can do: `FEATURE_*` bits.
    pub features: u32,
    /// Keyed rooms: the first Noise handshake message; empty otherwise.
    #[serde(with = "serde_bytes_bytes")]
    pub noise: Bytes,
}

impl Join {
    /// A Join echoing `cookie` from an unnamed PCM-only listener without a key: the smallest
    /// valid Join, for tools and tests.
    pub fn new(cookie: [u8; COOKIE_LEN]) -> Self {
        Self {
            cookie,
            name: String::new(),
            codecs: AudioCodec::Pcm.bit(),
            features: 0,
            noise: Bytes::new(),
        }
    }
}

/// How `Audio` payloads are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AudioCodec {
    /// Interleaved signed 16-bit little-endian PCM.
    Pcm,
    /// One FLAC frame (16-bit) per datagram.
    Flac,
    /// One Opus packet per datagram, 48 kHz.
    Opus {
        /// Target bits per second.
        bitrate: u32,
    },
}

impl AudioCodec {
    /// The codec's index on the wire, also its bit position in `Join.codecs`.
    pub fn index(self) -> u32 {
        match self {
            AudioCodec::Pcm => 0,
            AudioCodec::Flac => 1,
            AudioCodec::Opus { .. } => 2,
        }
    }

    /// This codec's bit in `Join.codecs`.
    pub fn bit(self) -> u32 {
        1 << self.index()
    }

    /// Short lower-case name, as the command lines and statistics spell it.
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Pcm => "pcm",
            AudioCodec::Flac => "flac",
            AudioCodec::Opus { .. } => "opus",
        }
    }
}

/// Body of `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The session token every later listener message carries.
    pub token: Token,
    /// Keyed rooms: the second Noise handshake message; empty otherwise.
    #[serde(with = "serde_bytes_bytes")]
    pub noise: Bytes,
    /// The stream.
    pub info: StreamInfo,
}

/// Where the server's media clock is: frame `ts` is due at `server_us` on the server's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// A frame index of the stream.
    pub ts: u64,
    /// Microseconds on the server's monotonic clock (its own epoch) at which that frame is due.
    pub server_us: u64,
}

/// The parameters of forward error correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fec {
    /// Audio datagrams in a group.
    pub k: u8,
    /// Parity datagrams per group.
    pub m: u8,
}

/// What repair the server offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// Parity groups, when on.
    pub fec: Option<Fec>,
    /// How far back the server can resend audio, in ms; 0 = no retransmission.
    pub retransmit_ms: u32,
}

/// A multicast group's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAddr {
    /// An IPv4 group.
    V4([u8; 4]),
    /// An IPv6 group.
    V6([u8; 16]),
}

/// A multicast group and port the audio is also sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group address.
    pub addr: GroupAddr,
    /// The UDP port.
    pub port: u16,
}

impl Group {
    /// The group as a socket address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        let ip = match self.addr {
            GroupAddr::V4(b) => std::net::IpAddr::from(b),
            GroupAddr::V6(b) => std::net::IpAddr::from(b),
        };
        std::net::SocketAddr::new(ip, self.port)
    }

    /// A group from a socket address.
    pub fn from_socket_addr(a: std::net::SocketAddr) -> Self {
        let addr = match a.ip() {
            std::net::IpAddr::V4(v) => GroupAddr::V4(v.octets()),
            std::net::IpAddr::V6(v) => GroupAddr::V6(v.octets()),
        };
        Self {
            addr,
            port: a.port(),
        }
    }
}

/// The stream description in a `Welcome`: everything a listener needs to play it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
    /// How `Audio` payloads are encoded.
    pub codec: AudioCodec,
    /// The server's tick in microseconds: the largest gap between audio bursts a listener must
    /// buffer across.
    pub interval_us: u32,
    /// PCM: most frames one `Audio` datagram carries (the last of a tick may carry fewer).
    /// FLAC and Opus: the frames every datagram carries.
    pub frames_per_packet: u32,
    /// Length of the whole stream in frames, when known (`None` for `--loop`).
    pub total_frames: Option<u64>,
    /// `seq` of the first `Audio` this listener will get: late joiners join live.
    pub start_seq: u64,
    /// `ts` (frame index) of that first `Audio`.
    pub start_ts: u64,
    /// Where the media clock is on the server's clock.
    pub timeline: Timeline,
    /// The room's playout delay in µs: every listener plays frame F at its due time plus this.
    pub playout_delay_us: u32,
    /// The least playout delay this server's interval and repair allow, µs.
    pub min_delay_us: u32,
    /// The repair the server offers.
    pub repair: Repair,
    /// The multicast group the audio also goes to, if any.
    pub multicast: Option<Group>,
    /// Human-readable name of the stream (at most [`crate::limits::MAX_TITLE`] bytes).
    #[serde(deserialize_with = "borrowed_string")]
    pub title: String,
}

impl StreamInfo {
    /// Bytes in one interleaved frame of decoded (16-bit) PCM.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels) * 2
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
    /// The room is keyed and the Join did not prove the key.
    BadKey,
    /// The listener cannot decode the stream's codec.
    CodecUnsupported {
        /// The stream's codec index.
        codec: u32,
    },
}

/// Body of `Reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Why.
    pub reason: RejectReason,
}

/// Body of `Audio` (and of `Resent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audio {
    /// Index (in frames, from the start of the stream) of the first frame in `payload`.
    pub ts: u64,
    /// The frames in the stream's codec (PCM: interleaved, a whole number of frames).
    #[serde(with = "serde_bytes_bytes")]
    pub payload: Bytes,
}

/// Body of `Report`: a listener's view of the stream so far (cumulative counters) and of its
/// clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The session token from the Welcome.
    pub token: Token,
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
    /// Audio datagrams rebuilt from parity.
    pub recovered_fec: u64,
    /// Audio datagrams recovered by retransmission.
    pub recovered_retransmit: u64,
    /// Audio that reached the speaker missing, ms.
    pub concealed_ms: u64,
    /// The listener's clock minus the server's, µs (last estimate).
    pub clock_offset_us: i64,
    /// How fast the listener's clock runs against the server's, parts per billion (+ = faster).
    pub drift_ppb: i32,
    /// The largest playout error since the last Report (p99), µs.
    pub playout_error_us: i32,
    /// Hard resynchronisations so far.
    pub resyncs: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// Why a listener leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// Its user pressed Ctrl-C.
    Interrupted,
    /// It was asked to stop (SIGTERM).
    Terminated,
    /// Its sound device failed.
    DeviceError,
    /// It stopped hearing the server.
    Timeout,
    /// It reached its own limit (e.g. the output it was asked to write is complete).
    Done,
}

impl LeaveReason {
    /// Short lower-case name, for logs and the dashboard.
    pub fn name(self) -> &'static str {
        match self {
            LeaveReason::Interrupted => "interrupted",
            LeaveReason::Terminated => "terminated",
            LeaveReason::DeviceError => "device error",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Done => "done",
        }
    }
}

/// Body of `Leave`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// The session token from the Welcome.
    pub token: Token,
    /// Why.
    pub reason: LeaveReason,
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
    /// The operator removed this listener.
    Kicked,
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

/// Body of `Rekey`: the stream key that takes over next (keyed rooms; always sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekey {
    /// The key's id, as `Sealed.key_id` will name it.
    pub key_id: u32,
    /// The key.
    pub key: [u8; KEY_LEN],
}

/// Body of `Parity`: one Reed-Solomon parity shard of a group of audio datagrams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parity {
    /// Seq of the group's first audio datagram (a multiple of `k`).
    pub group_seq: u64,
    /// Audio datagrams in the group.
    pub k: u8,
    /// Parity shards in the group.
    pub m: u8,
    /// This shard's index, `0..m`.
    pub index: u8,
    /// The parity bytes.
    #[serde(with = "serde_bytes_bytes")]
    pub shard: Bytes,
}

/// Body of `Nack`: audio seqs a listener asks the server to resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The session token from the Welcome.
    pub token: Token,
    /// The first seq asked for.
    pub base: u64,
    /// Bit i set: seq `base + 1 + i` is asked for too.
    pub mask: u64,
}

impl Nack {
    /// Every seq this Nack asks for, in order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.base).chain(
            (0..64u64)
                .filter(|i| self.mask & (1 << i) != 0)
                .filter_map(|i| self.base.checked_add(1 + i)),
        )
    }
}

/// Bytes of zeros in a `TimeRequest`, so that the answer is never larger than the question.
pub const TIME_REQUEST_PAD: usize = 24;

/// Body of `TimeRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRequest {
    /// The session token from the Welcome.
    pub token: Token,
    /// The listener's clock when it sent this, µs (echoed back).
    pub t1: u64,
    /// Zeros.
    pub pad: [u8; TIME_REQUEST_PAD],
}

/// Body of `TimeResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeResponse {
    /// The request's `t1`, unchanged.
    pub t1: u64,
    /// The server's clock when the request arrived, µs.
    pub t2: u64,
    /// The server's clock when this answer left, µs.
    pub t3: u64,
    /// Where the media clock is now.
    pub timeline: Timeline,
}

/// Body of `Sealed`: a message encrypted and authenticated under a room's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Which key: a stream key's id, or a session key's.
    pub key_id: u32,
    /// The type code of the message inside.
    pub inner_type: u8,
    /// The inner body, encrypted, followed by the 16-byte tag.
    #[serde(with = "serde_bytes_bytes")]
    pub ciphertext: Bytes,
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
