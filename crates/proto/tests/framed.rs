//! The codec under a real `UdpFramed` on loopback: packets go through, and garbage yields one
//! error per datagram without ending the stream.
#![allow(clippy::unwrap_used)]

use futures::{SinkExt, StreamExt};
use proto::*;
use tokio::net::UdpSocket;
use tokio_util::udp::UdpFramed;

#[tokio::test]
async fn framed_round_trip_and_garbage_does_not_stick() {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b.local_addr().unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut tx = UdpFramed::new(a, Codec);
    let mut rx = UdpFramed::new(b, Codec);

    raw.send_to(b"garbage garbage!", b_addr).await.unwrap();
    raw.send_to(&[b'E', b'S', 9, 1, 0, 0, 0, 0, 0, 0, 0, 0], b_addr)
        .await
        .unwrap();
    let leave = Packet::new(
        42,
        Message::Leave(Leave {
            token: [3; TOKEN_LEN],
            reason: LeaveReason::Terminated,
        }),
    );
    tx.send((leave.clone(), b_addr)).await.unwrap();

    let first = rx.next().await.unwrap();
    assert!(
        matches!(first, Err(CodecError::Decode(DecodeError::BadMagic(_)))),
        "{first:?}"
    );
    let second = rx.next().await.unwrap();
    assert!(
        matches!(
            second,
            Err(CodecError::Decode(DecodeError::UnsupportedVersion {
                version: 9,
                msg_type: 1
            }))
        ),
        "{second:?}"
    );
    let (p, _) = rx.next().await.unwrap().unwrap();
    assert_eq!(p, leave);
}
