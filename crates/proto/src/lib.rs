//! earshot wire protocol v2.
//!
//! Every UDP datagram carries exactly one [`Packet`]: a fixed 12-byte header (magic, protocol
//! version, message type, sequence number) followed by a body encoded with bincode 2 (fixed-width
//! little-endian integers). `docs/PROTOCOL.md` is the byte-level specification; the golden tests in
//! `tests/golden.rs` pin it.
//!
//! This crate is sans-IO: no sockets, no clock. [`decode`] accepts any byte string and returns a
//! packet or a typed [`DecodeError`], never panicking and never allocating more than the datagram
//! holds. [`Codec`] adapts the same functions to `tokio_util::udp::UdpFramed`.
//!
//! [`duration`] is the duration syntax every earshot command line shares.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
pub mod duration;
pub mod limits;
mod message;
mod wire;

pub use codec::{Codec, CodecError};
pub use message::{
    Audio, AudioCodec, COOKIE_LEN, Challenge, Connect, End, EndReason, ErrorCode, ErrorMsg,
    FEATURE_FEC, FEATURE_MULTICAST, FEATURE_RETRANSMIT, FEATURE_SYNC, FLAG_UNICAST_FALLBACK, Fec,
    Group, GroupAddr, Join, KEY_LEN, Leave, LeaveReason, Message, MessageType, Nack, Packet,
    Parity, Reject, RejectReason, Rekey, Repair, Report, Sealed, StreamInfo, TIME_REQUEST_PAD,
    TOKEN_LEN, TimeRequest, TimeResponse, Timeline, Token, Welcome,
};
pub use wire::{
    DecodeError, EncodeTooLarge, decode, encode, encode_audio, encode_resent, encode_to_bytes,
};

/// The two bytes every earshot datagram starts with ("ES"): lets a peer drop foreign traffic
/// before it looks at anything else.
pub const MAGIC: [u8; 2] = *b"ES";

/// The protocol version this crate speaks. A datagram with another version is never decoded.
pub const VERSION: u8 = 2;
