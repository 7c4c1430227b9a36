//! RTP output beside the native listeners: the stream as L16 audio (RFC 3551 §4.5.11), or as
//! Opus (RFC 7587) when the stream is Opus, that standard players (ffmpeg, GStreamer, VLC) open
//! from an SDP file.
//!
//! Sans-IO, like the rest of the server: [`Packetizer`] turns each tick's `Audio` datagrams
//! (exactly what the endpoint hands the fan-out) into RTP packets and, when due, RTCP sender
//! reports; [`rtcp`], [`sdp`] and [`sap`] build the other bytes; [`output`] is the small
//! socket-side piece the tokio shell drives.
//!
//! The RTP stream: payload big-endian s16 at the source's rate and channels; payload type 10
//! (44.1 kHz stereo) or 11 (44.1 kHz mono) where RFC 3551 has a static one, else the dynamic 96
//! (the SDP's `a=rtpmap` says `L16/RATE/CHANNELS` either way); the RTP timestamp is the
//! stream's `ts` (frames) plus a random offset; one random SSRC; sequence numbers count RTP
//! packets from a random start; the marker bit is set on the first packet. Each tick's audio
//! is cut into packets of whole frames, as even as possible, none larger than the MTU nor
//! longer than [`MAX_PTIME`].
//!
//! An Opus stream goes out as it is encoded for the native listeners: one Opus packet (20 ms)
//! per RTP packet, payload type [`DYNAMIC_PT`], the 48 kHz RTP clock RFC 7587 prescribes (the
//! stream's `ts` already counts 48 kHz frames); the SDP says `opus/48000/2` whatever the channel
//! count, with `sprop-stereo` telling mono from stereo.

pub mod output;
pub mod rtcp;
pub mod sap;
pub mod sdp;

use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use proto::Message;

/// Bytes of a fixed RTP header (no CSRCs, no extension).
pub const RTP_HEADER: usize = 12;
/// Longest packet: RFC 3551 §4.2 recommends 20 ms as the default packet duration.
pub const MAX_PTIME: Duration = Duration::from_millis(20);
/// First dynamic payload type, used when no static type fits.
pub const DYNAMIC_PT: u8 = 96;
/// Time between RTCP sender reports (RFC 3550 §6.2's minimum interval is 5 s).
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// Frames of one Opus packet of the stream: 20 ms at 48 kHz (`audiocodec`'s Opus framing).
pub const OPUS_FRAMES: usize = 960;

/// What the RTP payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Big-endian s16 PCM (RFC 3551 §4.5.11), cut into packets of whole frames.
    L16,
    /// One Opus packet per RTP packet (RFC 7587), as the stream's encoder made it.
    Opus {
        /// The encoder's target bitrate (bit/s), for the SDP's `maxaveragebitrate`.
        bitrate: u32,
    },
}

/// The payload type for L16 at `sample_rate` × `channels`: RFC 3551's static 10 (44.1 kHz
/// stereo) and 11 (44.1 kHz mono), else [`DYNAMIC_PT`].
pub fn payload_type(sample_rate: u32, channels: u16) -> u8 {
    match (sample_rate, channels) {
        (44_100, 2) => 10,
        (44_100, 1) => 11,
        _ => DYNAMIC_PT,
    }
}

/// Most frames in one RTP packet: as many as fit in `mtu` bytes after the RTP header, and no
/// more than [`MAX_PTIME`] of audio; at least one.
pub fn frames_per_packet(mtu: usize, sample_rate: u32, channels: u16) -> usize {
    let bpf = usize::from(channels.max(1)) * 2;
    let fit = mtu.saturating_sub(RTP_HEADER) / bpf;
    let max_time = (u128::from(sample_rate) * MAX_PTIME.as_millis() / 1000) as usize;
    fit.min(max_time).max(1)
}

/// What identifies one RTP stream: fixed for its life. [`RtpParams::random`] draws the random
/// parts RFC 3550 asks for; tests fix them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpParams {
    /// The payload format.
    pub encoding: Encoding,
    /// Frames per second: the RTP clock rate (48 kHz for Opus).
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// RTP payload type ([`payload_type`]).
    pub payload_type: u8,
    /// Synchronisation source identifier.
    pub ssrc: u32,
    /// Added to the stream's `ts` (frames) to make the RTP timestamp.
    pub ts_offset: u32,
    /// Sequence number of the first packet.
    pub first_seq: u16,
    /// Most frames per packet ([`frames_per_packet`]).
    pub frames_per_packet: usize,
}

impl RtpParams {
    /// The L16 parameters for a source, with a random SSRC, timestamp offset and first sequence
    /// number (RFC 3550 §5.1).
    pub fn random(sample_rate: u32, channels: u16, mtu: usize) -> Self {
        RtpParams {
            encoding: Encoding::L16,
            sample_rate,
            channels,
            payload_type: payload_type(sample_rate, channels),
            ssrc: rand::random(),
            ts_offset: rand::random(),
            first_seq: rand::random(),
            frames_per_packet: frames_per_packet(mtu, sample_rate, channels),
        }
    }

    /// The Opus parameters for a stream of `channels` at `bitrate`, with random SSRC, timestamp
    /// offset and first sequence number: 48 kHz clock, dynamic payload type, 20 ms packets.
    pub fn random_opus(channels: u16, bitrate: u32) -> Self {
        RtpParams {
            encoding: Encoding::Opus { bitrate },
            sample_rate: 48_000,
            channels,
            payload_type: DYNAMIC_PT,
            ssrc: rand::random(),
            ts_offset: rand::random(),
            first_seq: rand::random(),
            frames_per_packet: OPUS_FRAMES,
        }
    }

    /// The encoding name and parameters of `a=rtpmap` after the payload type: `L16/RATE/CH`,
    /// or `opus/48000/2` (RFC 7587 §7: always two channels there).
    pub fn rtpmap(&self) -> String {
        match self.encoding {
            Encoding::L16 => format!("L16/{}/{}", self.sample_rate, self.channels),
            Encoding::Opus { .. } => "opus/48000/2".into(),
        }
    }

    /// The `a=fmtp` parameters, if the encoding has any: for Opus, whether the stream is
    /// stereo (`sprop-stereo`, and `stereo` for a player that asks) and its bitrate (RFC 7587
    /// §6.1).
    pub fn fmtp(&self) -> Option<String> {
        match self.encoding {
            Encoding::L16 => None,
            Encoding::Opus { bitrate } => {
                let st = u8::from(self.channels >= 2);
                Some(format!(
                    "sprop-stereo={st}; stereo={st}; maxaveragebitrate={bitrate}"
                ))
            }
        }
    }

    /// Bytes per frame of PCM.
    pub fn bytes_per_frame(&self) -> usize {
        usize::from(self.channels.max(1)) * 2
    }

    /// The nominal packet duration in whole milliseconds (at least 1), for `a=ptime`.
    pub fn ptime_ms(&self) -> u32 {
        let ms = (self.frames_per_packet as u64 * 1000 + u64::from(self.sample_rate) / 2)
            / u64::from(self.sample_rate.max(1));
        u32::try_from(ms).unwrap_or(u32::MAX).max(1)
    }
}

/// Sender-side counters of one RTP stream (RFC 3550 §6.4.1's packet and octet counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpCounters {
    /// RTP packets produced.
    pub packets: u64,
    /// Payload octets produced (headers excluded, as the sender report counts them).
    pub octets: u64,
}

/// The RTP stream's state machine: [`Packetizer::tick`] per tick, [`Packetizer::poll_rtcp`]
/// after it, [`Packetizer::bye`] at the end.
#[derive(Debug)]
pub struct Packetizer {
    params: RtpParams,
    next_seq: u16,
    marker_sent: bool,
    counters: RtpCounters,
    /// When the last audio was packetised, and the stream position (frames) just after it.
    last: Option<(Instant, u64)>,
    next_report: Option<Instant>,
    /// A tick's contiguous PCM gathered (little-endian, as on the native wire).
    run: Vec<u8>,
    out: BytesMut,
}

impl Packetizer {
    /// A stream with these parameters; nothing sent yet.
    pub fn new(params: RtpParams) -> Self {
        Packetizer {
            next_seq: params.first_seq,
            params,
            marker_sent: false,
            counters: RtpCounters::default(),
            last: None,
            next_report: None,
            run: Vec::new(),
            out: BytesMut::new(),
        }
    }

    /// The fixed parameters.
    pub fn params(&self) -> &RtpParams {
        &self.params
    }

    /// Packets and octets so far.
    pub fn counters(&self) -> RtpCounters {
        self.counters
    }

    /// Converts one tick's native datagrams (as in a `Transmit::Fanout`; anything but `Audio`,
    /// such as `End`, is skipped) sent at `now` into RTP packets appended to `out`. Contiguous
    /// `Audio` datagrams are packetised together, so packet sizes do not follow the native
    /// datagram boundaries.
    pub fn tick(&mut self, now: Instant, datagrams: &[Bytes], out: &mut Vec<Bytes>) {
        if let Encoding::Opus { .. } = self.params.encoding {
            for d in datagrams {
                let Ok(p) = proto::decode(d) else { continue };
                if let Message::Audio(a) = p.msg
                    && !a.payload.is_empty()
                {
                    self.opus_packet(now, a.ts, &a.payload, out);
                }
            }
            return;
        }
        let bpf = self.params.bytes_per_frame();
        let mut run_ts: Option<u64> = None;
        self.run.clear();
        for d in datagrams {
            let Ok(p) = proto::decode(d) else { continue };
            let Message::Audio(a) = p.msg else {
                continue;
            };
            if a.payload.len() % bpf != 0 {
                continue;
            }
            let run_end = run_ts.map(|t| t + (self.run.len() / bpf) as u64);
            if run_end != Some(a.ts) {
                if let Some(t) = run_ts {
                    let run = std::mem::take(&mut self.run);
                    self.packetize(now, t, &run, out);
                    self.run = run;
                    self.run.clear();
                }
                run_ts = Some(a.ts);
            }
            self.run.extend_from_slice(&a.payload);
        }
        if let Some(t) = run_ts {
            let run = std::mem::take(&mut self.run);
            self.packetize(now, t, &run, out);
            self.run = run;
        }
    }

    /// One Opus packet (the stream frames `ts..ts + 960`) as one RTP packet appended to `out`.
    pub fn opus_packet(&mut self, now: Instant, ts: u64, packet: &[u8], out: &mut Vec<Bytes>) {
        let rtp_ts = (u64::from(self.params.ts_offset) + ts) as u32;
        self.header(rtp_ts, packet.len());
        self.out.put_slice(packet);
        out.push(self.out.split().freeze());
        self.counters.packets += 1;
        self.counters.octets += packet.len() as u64;
        self.sent_until(now, ts + OPUS_FRAMES as u64);
    }

    /// Writes the RTP header of the next packet (sequence number, marker on the first) into
    /// the output buffer, with room for `payload` more bytes.
    fn header(&mut self, rtp_ts: u32, payload: usize) {
        let marker = !self.marker_sent;
        self.marker_sent = true;
        self.out.reserve(RTP_HEADER + payload);
        self.out.put_u8(0x80);
        self.out
            .put_u8((u8::from(marker) << 7) | (self.params.payload_type & 0x7f));
        self.out.put_u16(self.next_seq);
        self.out.put_u32(rtp_ts);
        self.out.put_u32(self.params.ssrc);
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Records that the audio up to stream position `end` went out at `now`.
    fn sent_until(&mut self, now: Instant, end: u64) {
        self.last = Some((now, end));
        if self.next_report.is_none() {
            // The first report soon after the first packet, so a player can sync early.
            self.next_report = Some(now + RTCP_INTERVAL / 5);
        }
    }

    /// Cuts `pcm_le` (interleaved s16 little-endian, whole frames, the first at stream
    /// position `ts`) into RTP packets appended to `out`.
    pub fn packetize(&mut self, now: Instant, ts: u64, pcm_le: &[u8], out: &mut Vec<Bytes>) {
        let bpf = self.params.bytes_per_frame();
        let frames = pcm_le.len() / bpf;
        if frames == 0 {
            return;
        }
        let fpp = self.params.frames_per_packet.max(1);
        let n = frames.div_ceil(fpp);
        let (base, extra) = (frames / n, frames % n);
        let mut at = 0usize;
        for i in 0..n {
            let len = base + usize::from(i < extra);
            let pcm = &pcm_le[at * bpf..(at + len) * bpf];
            let rtp_ts = (u64::from(self.params.ts_offset) + ts + at as u64) as u32;
            self.header(rtp_ts, pcm.len());
            for s in pcm.chunks_exact(2) {
                self.out.put_slice(&[s[1], s[0]]);
            }
            out.push(self.out.split().freeze());
            self.counters.packets += 1;
            self.counters.octets += pcm.len() as u64;
            at += len;
        }
        self.sent_until(now, ts + frames as u64);
    }

    /// The RTP timestamp of the instant `now`: the position just after the last audio sent,
    /// advanced by the time since at the clock rate (the media clock sends audio as it falls
    /// due, so that position is "now" at the moment it is sent).
    pub fn rtp_ts_at(&self, now: Instant) -> u32 {
        let (base, pos) = match self.last {
            Some((t, pos)) => {
                let since = now.saturating_duration_since(t);
                let adv = since.as_nanos() * u128::from(self.params.sample_rate) / 1_000_000_000;
                (pos, u64::try_from(adv).unwrap_or(u64::MAX))
            }
            None => (0, 0),
        };
        (u64::from(self.params.ts_offset)
            .wrapping_add(base)
            .wrapping_add(pos)) as u32
    }

    /// When the next sender report is due; `None` before the first packet.
    pub fn rtcp_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// A sender report (with the SDES CNAME `cname`) if one is due at `now` (`wall` is the
    /// wall clock at that instant, for its NTP timestamp).
    pub fn poll_rtcp(&mut self, now: Instant, wall: SystemTime, cname: &str) -> Option<Bytes> {
        let due = self.next_report?;
        if due > now {
            return None;
        }
        self.next_report = Some(now + RTCP_INTERVAL);
        Some(self.report(now, wall, cname, false))
    }

    /// The last RTCP packet: a sender report, the SDES CNAME and a BYE (RFC 3550 §6.6).
    pub fn bye(&mut self, now: Instant, wall: SystemTime, cname: &str) -> Bytes {
        self.next_report = None;
        self.report(now, wall, cname, true)
    }

    fn report(&self, now: Instant, wall: SystemTime, cname: &str, bye: bool) -> Bytes {
        let sr = rtcp::SenderReport {
            ssrc: self.params.ssrc,
            ntp: rtcp::ntp_timestamp(wall),
            rtp_ts: self.rtp_ts_at(now),
            packets: self.counters.packets as u32,
            octets: self.counters.octets as u32,
        };
        rtcp::compound(&sr, cname, bye)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn params(rate: u32, ch: u16, mtu: usize) -> RtpParams {
        RtpParams {
            encoding: Encoding::L16,
            sample_rate: rate,
            channels: ch,
            payload_type: payload_type(rate, ch),
            ssrc: 0x1122_3344,
            ts_offset: 0xffff_fff0,
            first_seq: 0xfffe,
            frames_per_packet: frames_per_packet(mtu, rate, ch),
        }
    }

    fn audio(seq: u64, ts: u64, pcm: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        proto::encode_audio(seq, ts, pcm, &mut b);
        b.freeze()
    }

    #[test]
    fn payload_types_and_sizes() {
        assert_eq!(payload_type(44_100, 2), 10);
        assert_eq!(payload_type(44_100, 1), 11);
        assert_eq!(payload_type(48_000, 2), 96);
        assert_eq!(payload_type(22_050, 1), 96);
        // 1400-byte MTU at 44.1 kHz stereo: (1400 − 12) / 4 = 347 frames (~7.9 ms).
        assert_eq!(frames_per_packet(1400, 44_100, 2), 347);
        // 20 ms caps it where the MTU would allow more: 22.05 kHz mono, 441 frames.
        assert_eq!(frames_per_packet(1400, 22_050, 1), 441);
        assert_eq!(frames_per_packet(8192, 48_000, 2), 960);
        assert_eq!(params(44_100, 2, 1400).ptime_ms(), 8);
        assert_eq!(params(22_050, 1, 1400).ptime_ms(), 20);
    }

    /// Hand-checked against RFC 3550 §5.1: V=2 P=0 X=0 CC=0 → 0x80; M=1 PT=10 → 0x8a; then
    /// seq, timestamp, SSRC big-endian; payload big-endian s16 (RFC 3551 §4.5.11).
    #[test]
    fn golden_rtp_packets() {
        let mut p = Packetizer::new(RtpParams {
            frames_per_packet: 2,
            ..params(44_100, 2, 1400)
        });
        let t0 = Instant::now();
        // Three stereo frames: (1, -2), (0x0102, 0x7fff), (-32768, 3).
        let pcm: Vec<u8> = [1i16, -2, 0x0102, 0x7fff, -32768, 3]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        p.tick(t0, &[audio(0, 16, &pcm)], &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            &out[0][..],
            &[
                0x80, 0x8a, 0xff, 0xfe, // V=2, M=1 PT=10, seq 0xfffe
                0x00, 0x00, 0x00, 0x00, // ts 0xfffffff0 + 16 wraps to 0
                0x11, 0x22, 0x33, 0x44, // SSRC
                0x00, 0x01, 0xff, 0xfe, 0x01, 0x02, 0x7f, 0xff, // two frames, big-endian
            ][..]
        );
        assert_eq!(
            &out[1][..],
            &[
                0x80, 0x0a, 0xff, 0xff, // no marker, seq 0xffff
                0x00, 0x00, 0x00, 0x02, // ts + 2 frames
                0x11, 0x22, 0x33, 0x44, //
                0x80, 0x00, 0x00, 0x03,
            ][..]
        );
        p.tick(t0, &[audio(1, 19, &pcm[..4])], &mut out);
        assert_eq!(&out[2][..4], &[0x80, 0x0a, 0x00, 0x00], "seq wraps to 0");
        assert_eq!(&out[2][4..8], &[0, 0, 0, 3]);
        assert_eq!(
            p.counters(),
            RtpCounters {
                packets: 3,
                octets: 16
            }
        );
    }

    /// RFC 7587 §4.2: one Opus packet per RTP packet, payload untouched, the timestamp the
    /// stream's 48 kHz `ts` plus the offset; `End` and other datagrams are skipped.
    #[test]
    fn golden_opus_packets() {
        let mut prm = RtpParams::random_opus(2, 96_000);
        (prm.ssrc, prm.ts_offset, prm.first_seq) = (0x0102_0304, 0xffff_fc40, 7);
        let mut p = Packetizer::new(prm);
        let t0 = Instant::now();
        let end = proto::encode_to_bytes(&proto::Packet::new(
            2,
            Message::End(proto::End {
                reason: proto::EndReason::Finished,
                last_seq: Some(1),
            }),
        ))
        .unwrap();
        let mut out = Vec::new();
        p.tick(
            t0,
            &[audio(0, 0, &[0xfc, 1, 2]), audio(1, 960, &[0xfc, 9]), end],
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            &out[0][..],
            &[
                0x80, 0xe0, 0x00, 0x07, // V=2, M=1 PT=96, seq 7
                0xff, 0xff, 0xfc, 0x40, // ts 0 + offset
                0x01, 0x02, 0x03, 0x04, // SSRC
                0xfc, 0x01, 0x02, // the Opus packet as encoded
            ][..]
        );
        assert_eq!(&out[1][..4], &[0x80, 0x60, 0x00, 0x08]);
        assert_eq!(&out[1][4..8], &0u32.to_be_bytes(), "960 frames on, wrapped");
        assert_eq!(&out[1][12..], &[0xfc, 9]);
        assert_eq!(
            p.counters(),
            RtpCounters {
                packets: 2,
                octets: 5
            }
        );
        assert_eq!(prm.ptime_ms(), 20);
        // The sender report's timestamp follows the 48 kHz clock after the last packet.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let sr = p.poll_rtcp(t0 + RTCP_INTERVAL / 5, wall, "x").unwrap();
        assert_eq!(
            &sr[16..20],
            &0xffff_fc40u32.wrapping_add(1920 + 48_000).to_be_bytes()
        );
    }

    #[test]
    fn end_datagrams_are_skipped_and_gaps_split_runs() {
        let mut p = Packetizer::new(params(48_000, 1, 1400));
        let t0 = Instant::now();
        let end = proto::encode_to_bytes(&proto::Packet::new(
            3,
            Message::End(proto::End {
                reason: proto::EndReason::Finished,
                last_seq: Some(2),
            }),
        ))
        .unwrap();
        let mut out = Vec::new();
        p.tick(
            t0,
            &[audio(0, 0, &[1, 0, 2, 0]), audio(1, 5, &[3, 0]), end],
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0][4..8], &0xffff_fff0u32.to_be_bytes());
        assert_eq!(&out[0][12..], &[0, 1, 0, 2]);
        assert_eq!(&out[1][4..8], &(0xffff_fff0u32 + 5).to_be_bytes());
    }

    #[test]
    fn sender_report_timing_and_timestamp() {
        let mut p = Packetizer::new(params(48_000, 2, 1400));
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(p.poll_rtcp(t0, wall, "x").is_none(), "nothing before audio");
        let mut out = Vec::new();
        p.packetize(t0, 0, &vec![0u8; 960 * 4], &mut out);
        assert_eq!(out.len(), 3, "960 frames, at most 347 a packet");
        let due = p.rtcp_timeout().unwrap();
        assert_eq!(due, t0 + RTCP_INTERVAL / 5);
        assert!(
            p.poll_rtcp(due - Duration::from_millis(1), wall, "x")
                .is_none()
        );
        let sr = p.poll_rtcp(due, wall, "x").unwrap();
        // 1 s after the last packet: position 960 + 48000 × 1 s, plus the offset.
        assert_eq!(
            &sr[16..20],
            &0xffff_fff0u32.wrapping_add(960 + 48_000).to_be_bytes()
        );
        assert_eq!(&sr[20..24], &3u32.to_be_bytes());
        assert_eq!(&sr[24..28], &(960u32 * 4).to_be_bytes());
        assert_eq!(p.rtcp_timeout(), Some(due + RTCP_INTERVAL));
        let bye = p.bye(due, wall, "x");
        assert_eq!(bye[bye.len() - 7], 203, "ends with a BYE");
        assert_eq!(p.rtcp_timeout(), None);
    }

    /// With `set_emit_always`, the endpoint hands out its ticks with nobody joined (RTP's
    /// feed); without it, nothing.
    #[test]
    fn endpoint_feeds_rtp_without_listeners() {
        use crate::endpoint::{AudioSource, Endpoint, EndpointConfig, StartMode, Transmit};
        use crate::source::SourceInfo;
        struct Ramp(SourceInfo, u64);
        impl AudioSource for Ramp {
            fn info(&self) -> &SourceInfo {
                &self.0
            }
            fn read_frames(&mut self, max: usize, out: &mut Vec<i16>) -> usize {
                let n = (max as u64).min(self.1) as usize;
                out.extend((0..n).map(|i| i as i16));
                self.1 -= n as u64;
                n
            }
            fn is_finished(&self) -> bool {
                self.1 == 0
            }
            fn rewind(&mut self) -> Result<(), String> {
                Err("no".into())
            }
        }
        for emit in [false, true] {
            let t0 = Instant::now();
            let info = SourceInfo {
                sample_rate: 8_000,
                channels: 1,
                total_frames: Some(800),
                codec: "pcm".into(),
                title: "t".into(),
            };
            let config = EndpointConfig {
                interval: Duration::from_millis(20),
                max_clients: 4,
                client_timeout: Duration::from_secs(5),
                start: StartMode::Now,
                looping: false,
                mtu: 1400,
                cookie_key: (1, 2),
                ..EndpointConfig::default()
            };
            let mut ep = Endpoint::new(t0, config, Ramp(info, 800));
            ep.set_emit_always(emit);
            let mut p = Packetizer::new(params(8_000, 1, 1400));
            let mut out = Vec::new();
            let mut now = t0;
            while !ep.is_closed() && now < t0 + Duration::from_secs(2) {
                ep.handle_timeout(now);
                while let Some(t) = ep.poll_transmit(now) {
                    if let Transmit::Fanout { datagrams, dests } = t {
                        assert!(dests.is_empty());
                        p.tick(now, datagrams, &mut out);
                    }
                }
                now += Duration::from_millis(10);
            }
            let frames: usize = out.iter().map(|b| (b.len() - RTP_HEADER) / 2).sum();
            assert_eq!(frames, if emit { 800 } else { 0 }, "emit_always {emit}");
        }
    }

    proptest! {
        /// Any tick, cut into native datagrams however the endpoint cut it, becomes RTP packets
        /// of whole frames within the MTU whose payloads concatenate to the tick's PCM
        /// byte-swapped, with consecutive sequence numbers and timestamps that follow the
        /// frames.
        #[test]
        fn tick_roundtrip(
            channels in 1u16..=2,
            rate in prop::sample::select(vec![8_000u32, 22_050, 44_100, 48_000, 96_000]),
            mtu in 576usize..=8192,
            samples in prop::collection::vec(any::<i16>(), 0..6000),
            cuts in prop::collection::vec(1usize..2000, 1..8),
            ts0 in 0u64..1 << 40,
            offset in any::<u32>(),
            seq0 in any::<u16>(),
        ) {
            let ch = usize::from(channels);
            let samples = &samples[..samples.len() / ch * ch];
            let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let prm = RtpParams { ts_offset: offset, first_seq: seq0, ..params(rate, channels, mtu) };
            let mut p = Packetizer::new(prm);
            // Native datagrams of arbitrary whole-frame sizes.
            let mut datagrams = Vec::new();
            let (mut at, mut k) = (0usize, 0usize);
            let frames = samples.len() / ch;
            while at < frames {
                let n = cuts[k % cuts.len()].min(frames - at);
                datagrams.push(audio(k as u64, ts0 + at as u64, &pcm[at * ch * 2..(at + n) * ch * 2]));
                at += n;
                k += 1;
            }
            let mut out = Vec::new();
            p.tick(Instant::now(), &datagrams, &mut out);
            let mut payload = Vec::new();
            let mut frames_seen = 0u64;
            for (i, pkt) in out.iter().enumerate() {
                prop_assert!(pkt.len() <= mtu.max(RTP_HEADER + 2 * ch));
                prop_assert_eq!(pkt[0], 0x80);
                prop_assert_eq!(pkt[1] & 0x80 != 0, i == 0);
                prop_assert_eq!(pkt[1] & 0x7f, prm.payload_type);
                prop_assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), seq0.wrapping_add(i as u16));
                let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
                prop_assert_eq!(ts, (u64::from(offset) + ts0 + frames_seen) as u32);
                let body = &pkt[RTP_HEADER..];
                prop_assert!(!body.is_empty() && body.len() % (2 * ch) == 0);
                prop_assert!(body.len() / (2 * ch) <= prm.frames_per_packet);
                frames_seen += (body.len() / (2 * ch)) as u64;
                payload.extend_from_slice(body);
            }
            let swapped: Vec<u8> = samples.iter().flat_map(|s| s.to_be_bytes()).collect();
            prop_assert_eq!(payload, swapped);
        }
    }
}
