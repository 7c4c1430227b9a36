//! Fuzz `proto::decode`: no input may panic or abort, and whatever decodes must re-encode to
//! exactly the bytes it came from (the encoding is canonical, so a decoder that accepts two
//! spellings of one message is a bug).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = proto::decode(data) {
        let mut buf = bytes::BytesMut::new();
        proto::encode(&packet, &mut buf).expect("a decoded packet fits a datagram");
        assert_eq!(&buf[..], data, "decode/encode is not canonical for {packet:?}");
    }
});
