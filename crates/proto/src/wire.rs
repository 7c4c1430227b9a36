//! Encoding and decoding of single datagrams.

use bincode::config::{self, Configuration, Fixint, Limit, LittleEndian};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::limits::{AUDIO_OVERHEAD, HEADER_LEN, MAX_DATAGRAM};
use crate::message::{Message, MessageType, Packet};
use crate::{MAGIC, VERSION};

/// Fixed-width little-endian integers keep the layout simple to specify and to parse by hand;
/// the limit is a second guard (after borrowing from the slice) against length prefixes that
/// claim more than a datagram can hold.
type Cfg = Configuration<LittleEndian, Fixint, Limit<MAX_DATAGRAM>>;

fn cfg() -> Cfg {
    config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
        .with_limit::<MAX_DATAGRAM>()
}

/// Why a datagram was not a valid v2 packet. Every variant is something a receiver counts and
/// drops; none is fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 12-byte header.
    #[error("datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// Longer than [`MAX_DATAGRAM`]; not read at all.
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// Does not start with "ES": not earshot traffic.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// An earshot datagram of a version this peer does not speak. The type byte is kept so a
    /// server can answer a future version's `Connect` with `Reject{UnsupportedVersion}`.
    #[error("unsupported protocol version {version} (type {msg_type})")]
    UnsupportedVersion {
        /// Header byte 2.
        version: u8,
        /// Header byte 3.
        msg_type: u8,
    },
    /// A type code v2 does not define.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body does not decode as its type says.
    #[error("malformed {msg_type:?} body: {detail}")]
    Malformed {
        /// The type from the header.
        msg_type: MessageType,
        /// What was wrong, in a few words (static: rejecting garbage allocates nothing here).
        detail: &'static str,
    },
    /// The body decoded but bytes were left over.
    #[error("{extra} trailing bytes after a {msg_type:?} body")]
    TrailingBytes {
        /// The type from the header.
        msg_type: MessageType,
        /// How many bytes were left.
        extra: usize,
    },
}

/// Why a packet could not be encoded. Only a caller that builds oversized messages sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoded packet would be {0} bytes, over the {MAX_DATAGRAM}-byte limit")]
pub struct EncodeTooLarge(pub usize);

fn put_header(dst: &mut BytesMut, t: MessageType, seq: u64) {
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(t as u8);
    dst.put_u64_le(seq);
}

fn put_body<T: Serialize>(dst: &mut BytesMut, body: &T) {
    // Writing into a BytesMut cannot fail and our types have no fallible Serialize impls, so an
    // error here is a bug in this crate, not bad input.
    let res = bincode::serde::encode_into_std_write(body, &mut dst.writer(), cfg());
    debug_assert!(res.is_ok(), "bincode encode failed: {res:?}");
}

/// Appends one packet to `dst`. Fails only if the result would exceed [`MAX_DATAGRAM`] (then
/// `dst` is left as it was).
pub fn encode(packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeTooLarge> {
    let start = dst.len();
    let msg = &packet.msg;
    if let Message::Audio(a) = msg {
        encode_audio(packet.seq, a.ts, &a.payload, dst);
    } else if let Message::Resent(a) = msg {
        encode_resent(packet.seq, a.ts, &a.payload, dst);
    } else {
        put_header(dst, msg.message_type(), packet.seq);
        match msg {
            Message::Connect(b) => put_body(dst, b),
            Message::Challenge(b) => put_body(dst, b),
            Message::Join(b) => put_body(dst, b),
            Message::Welcome(b) => put_body(dst, b),
            Message::Reject(b) => put_body(dst, b),
            Message::Report(b) => put_body(dst, b),
            Message::Leave(b) => put_body(dst, b),
            Message::End(b) => put_body(dst, b),
            Message::Error(b) => put_body(dst, b),
            Message::Rekey(b) => put_body(dst, b),
            Message::Parity(b) => put_body(dst, b),
            Message::Nack(b) => put_body(dst, b),
            Message::TimeRequest(b) => put_body(dst, b),
            Message::TimeResponse(b) => put_body(dst, b),
            Message::Sealed(b) => put_body(dst, b),
            Message::Audio(_) | Message::Resent(_) => unreachable!("handled above"),
        }
    }
    let len = dst.len() - start;
    if len > MAX_DATAGRAM {
        dst.truncate(start);
        return Err(EncodeTooLarge(len));
    }
    Ok(())
}

/// One packet as an immutable buffer, for sending the same bytes to many peers.
pub fn encode_to_bytes(packet: &Packet) -> Result<Bytes, EncodeTooLarge> {
    let mut b = BytesMut::with_capacity(64);
    encode(packet, &mut b)?;
    Ok(b.freeze())
}

/// Appends an `Audio` packet straight from a payload slice: the fan-out path, with no
/// intermediate [`Packet`] and no copy of the payload besides this one. Byte-for-byte what
/// [`encode`] writes for the same packet (a golden test checks it). The caller keeps `payload`
/// under [`crate::limits::MAX_PAYLOAD`].
pub fn encode_audio(seq: u64, ts: u64, payload: &[u8], dst: &mut BytesMut) {
    put_audio(MessageType::Audio, seq, ts, payload, dst);
}

/// Appends a `Resent` packet (an audio datagram sent again, under its original `seq`), as
/// [`encode_audio`] does for `Audio`.
pub fn encode_resent(seq: u64, ts: u64, payload: &[u8], dst: &mut BytesMut) {
    put_audio(MessageType::Resent, seq, ts, payload, dst);
}

fn put_audio(t: MessageType, seq: u64, ts: u64, payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(AUDIO_OVERHEAD + payload.len());
    put_header(dst, t, seq);
    dst.put_u64_le(ts);
    dst.put_u64_le(payload.len() as u64);
    dst.put_slice(payload);
}

fn body<'a, T: Deserialize<'a>>(t: MessageType, b: &'a [u8]) -> Result<T, DecodeError> {
    // Borrowing decode: byte strings are sliced out of `b`, so a length prefix that claims more
    // than is there fails before anything is allocated.
    let (v, used) = bincode::serde::borrow_decode_from_slice::<T, _>(b, cfg()).map_err(|e| {
        DecodeError::Malformed {
            msg_type: t,
            detail: describe(&e),
        }
    })?;
    if used != b.len() {
        return Err(DecodeError::TrailingBytes {
            msg_type: t,
            extra: b.len() - used,
        });
    }
    Ok(v)
}

/// A fixed description of a bincode error, so that rejecting a malformed datagram (a hot path
/// under a flood) formats and allocates nothing.
fn describe(e: &bincode::error::DecodeError) -> &'static str {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { .. } => "body ends early",
        E::LimitExceeded => "a length prefix exceeds the datagram limit",
        E::Utf8 { .. } => "text is not UTF-8",
        E::UnexpectedVariant { .. } => "unknown enum variant",
        E::InvalidBooleanValue(_) => "invalid option tag",
        E::OutsideUsizeRange(_) => "a length does not fit this machine",
        _ => "body does not decode",
    }
}

/// Decodes one datagram. Any input gives a packet or a [`DecodeError`]: it never panics and
/// never allocates more than `datagram.len()` bytes.
pub fn decode(datagram: &[u8]) -> Result<Packet, DecodeError> {
    let n = datagram.len();
    if n > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge(n));
    }
    let Some((header, rest)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated(n));
    };
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version: header[2],
            msg_type: header[3],
        });
    }
    let t = MessageType::from_u8(header[3]).ok_or(DecodeError::UnknownType(header[3]))?;
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[4..12]);
    let seq = u64::from_le_bytes(seq_bytes);
    let msg = match t {
        MessageType::Connect => Message::Connect(body(t, rest)?),
        MessageType::Challenge => Message::Challenge(body(t, rest)?),
        MessageType::Join => Message::Join(body(t, rest)?),
        MessageType::Welcome => Message::Welcome(body(t, rest)?),
        MessageType::Reject => Message::Reject(body(t, rest)?),
        MessageType::Audio => Message::Audio(body(t, rest)?),
        MessageType::Report => Message::Report(body(t, rest)?),
        MessageType::Leave => Message::Leave(body(t, rest)?),
        MessageType::End => Message::End(body(t, rest)?),
        MessageType::Error => Message::Error(body(t, rest)?),
        MessageType::Rekey => Message::Rekey(body(t, rest)?),
        MessageType::Parity => Message::Parity(body(t, rest)?),
        MessageType::Nack => Message::Nack(body(t, rest)?),
        MessageType::Resent => Message::Resent(body(t, rest)?),
        MessageType::TimeRequest => Message::TimeRequest(body(t, rest)?),
        MessageType::TimeResponse => Message::TimeResponse(body(t, rest)?),
        MessageType::Sealed => Message::Sealed(body(t, rest)?),
    };
    Ok(Packet { seq, msg })
}
