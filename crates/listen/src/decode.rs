//! The decode stage between the socket and the jitter buffer: sans-IO.
//!
//! Every `Audio` payload becomes s16le PCM here, in arrival order, before the jitter buffer
//! places it: PCM passes through untouched (checked to be whole frames, never copied), FLAC and
//! Opus go through the stream's [`audiocodec::Decoder`]. Audio past the stream's announced
//! length (the silence a FLAC or Opus encoder pads its last packet with) is cut off, so the
//! output keeps the stream's length. The decoder also conceals: Opus's packet-loss concealment
//! stands in for a missing packet where the jitter buffer would otherwise fade out.

use audiocodec::{AudioCodec, CodecError, DecodeError, Decoder, Format};
use bytes::Bytes;

use crate::jitter::Conceal;

/// The stream's decoder, and where its audio ends.
#[derive(Debug)]
pub struct DecodeStage {
    decoder: Decoder,
    codec: AudioCodec,
    /// Interleaved samples per frame.
    channels: usize,
    /// The stream's last frame + 1, when it has a known length.
    end: Option<u64>,
    /// Decoded samples of one payload.
    scratch: Vec<i16>,
}

impl DecodeStage {
    /// The stage for a stream of `codec` and `format` with `frames_per_packet` and
    /// `total_frames`, as its `Welcome` announced them.
    pub fn new(
        codec: AudioCodec,
        format: Format,
        frames_per_packet: u32,
        total_frames: Option<u64>,
    ) -> Result<Self, CodecError> {
        Ok(Self {
            decoder: Decoder::new(codec, format, frames_per_packet)?,
            codec,
            channels: format.samples_per_frame(),
            end: total_frames,
            scratch: Vec::new(),
        })
    }

    /// The stream's codec.
    pub fn codec(&self) -> AudioCodec {
        self.codec
    }

    /// The PCM (s16le, whole frames) of the payload starting at frame `ts`, cut at the
    /// stream's end: `Ok(None)` when nothing of it lies before the end. An undecodable payload
    /// is an error (the caller counts it as malformed).
    pub fn decode(&mut self, ts: u64, payload: Bytes) -> Result<Option<Bytes>, DecodeError> {
        let bpf = self.channels * 2;
        let pcm = if self.codec == AudioCodec::Pcm {
            // Checked by the decoder, then kept as it came: no copy.
            self.scratch.clear();
            if payload.is_empty() || payload.len() % bpf != 0 {
                self.decoder.decode(&payload, &mut self.scratch)?;
            }
            payload
        } else {
            self.scratch.clear();
            self.decoder.decode(&payload, &mut self.scratch)?;
            let mut bytes = Vec::with_capacity(self.scratch.len() * 2);
            for s in &self.scratch {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
            Bytes::from(bytes)
        };
        let frames = (pcm.len() / bpf) as u64;
        let keep = match self.end {
            Some(end) => end.saturating_sub(ts).min(frames),
            None => frames,
        };
        if keep == 0 {
            return Ok(None);
        }
        Ok(Some(pcm.slice(..keep as usize * bpf)))
    }
}

impl Conceal for DecodeStage {
    /// The codec's own concealment for the missing frames `ts..ts + frames`; false (nothing
    /// appended) when the codec has none and the jitter buffer fades out instead.
    fn conceal(&mut self, ts: u64, frames: usize, out: &mut Vec<i16>) -> bool {
        self.decoder.conceal(ts, frames, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audiocodec::Encoder;
    use audiocodec::signal::music;

    const STEREO48: Format = Format {
        sample_rate: 48_000,
        channels: 2,
    };

    fn samples(b: &Bytes) -> Vec<i16> {
        b.chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn pcm_passes_through_without_a_copy_and_bad_lengths_are_errors() {
        let mut st = DecodeStage::new(AudioCodec::Pcm, STEREO48, 240, None).expect("stage");
        let payload = Bytes::from(vec![1u8; 960]);
        let out = st.decode(0, payload.clone()).expect("ok").expect("audio");
        assert_eq!(
            out.as_ptr(),
            payload.as_ptr(),
            "the payload itself, not a copy"
        );
        assert_eq!(out.len(), 960);
        assert!(st.decode(0, Bytes::from_static(&[1, 2, 3])).is_err());
        assert!(st.decode(0, Bytes::new()).is_err());
        assert!(!st.conceal(0, 10, &mut Vec::new()));
    }

    #[test]
    fn flac_padding_past_the_end_is_cut() {
        let pcm = music(48_000, 2, 0, 1000);
        let mut enc = Encoder::new(AudioCodec::Flac, STEREO48, 1372).expect("encoder");
        let mut packets = Vec::new();
        enc.encode(&pcm, &mut |ts, b| {
            packets.push((ts, Bytes::copy_from_slice(b)))
        })
        .expect("encode");
        enc.finish(&mut |ts, b| packets.push((ts, Bytes::copy_from_slice(b))))
            .expect("finish");
        let fpp = enc.frames_per_packet();
        assert_eq!(fpp, 588);
        assert_eq!(packets.len(), 2);
        let mut st = DecodeStage::new(AudioCodec::Flac, STEREO48, fpp, Some(1000)).expect("stage");
        let mut got = Vec::new();
        for (ts, p) in packets {
            let b = st.decode(ts, p).expect("decodes").expect("audio");
            got.extend(samples(&b));
        }
        assert_eq!(got, pcm, "exactly the stream's 1000 frames");
        // A packet wholly past the end is nothing to play.
        let mut enc = Encoder::new(AudioCodec::Flac, STEREO48, 1372).expect("encoder");
        let mut late = None;
        enc.encode(&music(48_000, 2, 0, 588), &mut |_, b| {
            late = Some(Bytes::copy_from_slice(b))
        })
        .expect("encode");
        assert_eq!(st.decode(1176, late.expect("a packet")), Ok(None));
        assert!(st.decode(0, Bytes::from_static(&[0xFF; 40])).is_err());
    }

    #[test]
    fn opus_conceals_what_is_missing() {
        let mut st = DecodeStage::new(AudioCodec::Opus { bitrate: 128_000 }, STEREO48, 960, None)
            .expect("stage");
        let mut enc =
            Encoder::new(AudioCodec::Opus { bitrate: 128_000 }, STEREO48, 1372).expect("enc");
        let mut packets = Vec::new();
        enc.encode(&music(48_000, 2, 0, 48_000), &mut |ts, b| {
            packets.push((ts, Bytes::copy_from_slice(b)))
        })
        .expect("encode");
        for (ts, p) in packets.iter().take(10) {
            let b = st.decode(*ts, p.clone()).expect("ok").expect("audio");
            assert_eq!(b.len(), 960 * 4);
        }
        let mut out = Vec::new();
        assert!(st.conceal(9600, 960, &mut out));
        assert_eq!(out.len(), 1920);
        assert!(
            out.iter().any(|&s| s != 0),
            "concealment is sound, not silence"
        );
    }

    #[test]
    fn a_lost_opus_packet_is_concealed_by_plc_not_faded() {
        use crate::jitter::JitterBuffer;
        use std::time::Duration;
        let opus = AudioCodec::Opus { bitrate: 128_000 };
        let info = proto::StreamInfo {
            sample_rate: 48_000,
            channels: 2,
            codec: opus,
            timeline: proto::Timeline::default(),
            playout_delay_us: 50_000,
            min_delay_us: 25_000,
            repair: proto::Repair::default(),
            multicast: None,
            interval_us: 20_000,
            frames_per_packet: 960,
            total_frames: None,
            start_seq: 0,
            start_ts: 0,
            title: String::new(),
        };
        let mut enc = Encoder::new(opus, STEREO48, 1372).expect("encoder");
        let mut packets = Vec::new();
        enc.encode(&music(48_000, 2, 0, 48_000), &mut |ts, b| {
            packets.push((ts, Bytes::copy_from_slice(b)))
        })
        .expect("encode");
        let run = |lose: bool, conceal_with_codec: bool| {
            let mut st = DecodeStage::new(opus, STEREO48, 960, None).expect("stage");
            let mut jb = JitterBuffer::new(&info, Duration::from_millis(100), Duration::ZERO);
            for (ts, p) in &packets {
                if lose && *ts == 9600 {
                    continue;
                }
                if let Some(pcm) = st.decode(*ts, p.clone()).expect("decodes") {
                    jb.push(*ts, pcm);
                }
            }
            jb.end(None);
            let mut out = Vec::new();
            if conceal_with_codec {
                while jb.pull_with(960, &mut out, &mut st) > 0 {}
            } else {
                while jb.pull(960, &mut out) > 0 {}
            }
            (out, jb.counters().concealed_frames)
        };
        let (clean, none) = run(false, true);
        let (plc, concealed) = run(true, true);
        let (faded, _) = run(true, false);
        assert_eq!((none, concealed), (0, 960));
        assert_eq!(plc.len(), clean.len());
        let hole = 9600 * 2..10_560 * 2;
        let rms = |v: &[i16]| {
            (v.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        // The fade goes silent within 5 ms; PLC keeps sounding through the 20 ms hole.
        assert!(rms(&plc[hole.clone()]) > 4.0 * rms(&faded[hole.clone()]).max(1.0));
        assert!(rms(&plc[hole.clone()]) > 0.2 * rms(&clean[hole]));
    }

    #[test]
    fn an_impossible_welcome_is_refused() {
        let six = Format {
            sample_rate: 48_000,
            channels: 6,
        };
        assert!(DecodeStage::new(AudioCodec::Opus { bitrate: 128_000 }, six, 960, None).is_err());
        assert!(DecodeStage::new(AudioCodec::Flac, STEREO48, 0, None).is_err());
    }
}
