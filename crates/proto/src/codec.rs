//! The tokio-util codec: [`crate::decode`] / [`crate::encode`] behind `Decoder` / `Encoder`, so a
//! `UdpFramed<Codec>` yields `(Packet, SocketAddr)` and takes packets to send.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::message::Packet;
use crate::wire::{DecodeError, EncodeTooLarge, decode, encode};

/// Stateless datagram codec: one [`Packet`] per datagram.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

/// What a `UdpFramed<Codec>` stream or sink can fail with. Only `Io` from the socket is
/// worth more than a counter; the stream goes on after every error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A datagram was not a valid packet (it has been discarded).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A packet to send was too large.
    #[error(transparent)]
    Encode(#[from] EncodeTooLarge),
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if src.is_empty() {
            return Ok(None);
        }
        let res = decode(src);
        // The whole datagram is consumed, valid or not: UdpFramed retries the same buffer
        // after an error otherwise, and the error would repeat forever.
        src.clear();
        Ok(Some(res?))
    }
}

impl Encoder<Packet> for Codec {
    type Error = CodecError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(&item, dst)?)
    }
}

impl Encoder<&Packet> for Codec {
    type Error = CodecError;

    fn encode(&mut self, item: &Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(item, dst)?)
    }
}
