//! RTCP packets a sender sends (RFC 3550 §6): the sender report (SR, §6.4.1), the source
//! description with its CNAME (SDES, §6.5) and the goodbye (BYE, §6.6), always as one compound
//! packet starting with the SR (§6.1). Pure byte builders.

use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// RTCP packet type of a sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type of a source description.
pub const PT_SDES: u8 = 202;
/// RTCP packet type of a goodbye.
pub const PT_BYE: u8 = 203;

/// The sender's half of an SR (no report blocks: streamd receives no RTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// The stream's SSRC.
    pub ssrc: u32,
    /// The wall clock when the report was made, as a 64-bit NTP timestamp.
    pub ntp: u64,
    /// The RTP timestamp of the same instant.
    pub rtp_ts: u32,
    /// RTP packets sent so far (wraps).
    pub packets: u32,
    /// Payload octets sent so far (wraps).
    pub octets: u32,
}

/// The 64-bit NTP timestamp (32.32 fixed point seconds since 1900) of `wall`; a clock before
/// 1970 gives the Unix epoch's.
pub fn ntp_timestamp(wall: SystemTime) -> u64 {
    let d = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Appends the SR: 7 words, length field 6.
pub fn put_sender_report(sr: &SenderReport, b: &mut BytesMut) {
    b.put_u8(0x80); // V=2, P=0, RC=0
    b.put_u8(PT_SR);
    b.put_u16(6);
    b.put_u32(sr.ssrc);
    b.put_u64(sr.ntp);
    b.put_u32(sr.rtp_ts);
    b.put_u32(sr.packets);
    b.put_u32(sr.octets);
}

/// Appends an SDES with one chunk: the CNAME item (cut to 255 bytes), the end-of-list null and
/// padding to a 32-bit boundary.
pub fn put_sdes_cname(ssrc: u32, cname: &str, b: &mut BytesMut) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // SSRC + type + length + text, then at least one null, rounded up to whole words.
    let chunk = (4 + 2 + name.len() + 1).div_ceil(4) * 4;
    b.put_u8(0x81); // V=2, P=0, SC=1
    b.put_u8(PT_SDES);
    b.put_u16((chunk / 4) as u16);
    b.put_u32(ssrc);
    b.put_u8(1); // CNAME
    b.put_u8(name.len() as u8);
    b.put_slice(name);
    b.put_bytes(0, chunk - (4 + 2 + name.len()));
}

/// Appends a BYE for one SSRC, no reason.
pub fn put_bye(ssrc: u32, b: &mut BytesMut) {
    b.put_u8(0x81); // V=2, P=0, SC=1
    b.put_u8(PT_BYE);
    b.put_u16(1);
    b.put_u32(ssrc);
}

/// The compound packet: SR, SDES CNAME, and a BYE when `bye`.
pub fn compound(sr: &SenderReport, cname: &str, bye: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + cname.len());
    put_sender_report(sr, &mut b);
    put_sdes_cname(sr.ssrc, cname, &mut b);
    if bye {
        put_bye(sr.ssrc, &mut b);
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ntp_epoch_and_fraction() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(
            ntp_timestamp(t),
            ((NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000
        );
        assert_eq!(ntp_timestamp(SystemTime::UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
    }

    /// Hand-checked against RFC 3550 §6.4.1 (SR), §6.5.1 (SDES CNAME) and §6.6 (BYE).
    #[test]
    fn golden_compound_bye() {
        let sr = SenderReport {
            ssrc: 0xdead_beef,
            ntp: 0x0102_0304_0506_0708,
            rtp_ts: 0x1112_1314,
            packets: 5,
            octets: 0x100,
        };
        let b = compound(&sr, "ab", true);
        #[rustfmt::skip]
        let want: &[u8] = &[
            // SR: V=2 RC=0, PT 200, length 6 (7 words)
            0x80, 200, 0x00, 0x06,
            0xde, 0xad, 0xbe, 0xef,
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
            0x11, 0x12, 0x13, 0x14,
            0x00, 0x00, 0x00, 0x05,
            0x00, 0x00, 0x01, 0x00,
            // SDES: SC=1, PT 202, length 3 (4 words: header, SSRC, CNAME "ab" + null + pad)
            0x81, 202, 0x00, 0x03,
            0xde, 0xad, 0xbe, 0xef,
            0x01, 0x02, b'a', b'b',
            0x00, 0x00, 0x00, 0x00,
            // BYE: SC=1, PT 203, length 1
            0x81, 203, 0x00, 0x01,
            0xde, 0xad, 0xbe, 0xef,
        ];
        assert_eq!(&b[..], want);
    }

    #[test]
    fn sdes_always_has_a_null_and_word_alignment() {
        for len in 0..12 {
            let name = "x".repeat(len);
            let mut b = BytesMut::new();
            put_sdes_cname(1, &name, &mut b);
            assert_eq!(b.len() % 4, 0);
            let words = u16::from_be_bytes([b[2], b[3]]) as usize;
            assert_eq!((words + 1) * 4, b.len());
            assert_eq!(b[b.len() - 1], 0);
            assert_eq!(b[9] as usize, len);
        }
    }
}
