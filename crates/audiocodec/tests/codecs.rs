//! Each codec through its encoder and decoder: exactness, quality, size, stamps, concealment and
//! refusals.

use audiocodec::signal::{best_alignment, music, snr_db};
use audiocodec::{AudioCodec, CodecError, Decoder, Encoder, Format, opus};

/// A PCM datagram's room at the default 1400-byte datagram (28 bytes of header).
const ROOM: usize = 1400 - 28;

struct Packet {
    ts: u64,
    bytes: Vec<u8>,
}

/// Feeds `pcm` to a new encoder in ticks of `tick` frames, then finishes.
fn encode_all(
    codec: AudioCodec,
    format: Format,
    pcm: &[i16],
    tick: usize,
) -> (Encoder, Vec<Packet>) {
    let mut enc = Encoder::new(codec, format, ROOM).expect("encoder");
    let mut packets = Vec::new();
    let spf = format.samples_per_frame();
    for chunk in pcm.chunks(tick * spf) {
        enc.encode(chunk, &mut |ts, b| {
            packets.push(Packet {
                ts,
                bytes: b.to_vec(),
            })
        })
        .expect("encode");
    }
    enc.finish(&mut |ts, b| {
        packets.push(Packet {
            ts,
            bytes: b.to_vec(),
        })
    })
    .expect("finish");
    (enc, packets)
}

/// Decodes packets in order into one interleaved buffer, checking that stamps are contiguous.
fn decode_all(enc: &Encoder, packets: &[Packet]) -> Vec<i16> {
    let stream = enc.stream_format();
    let mut dec = Decoder::new(enc.codec(), stream, enc.frames_per_packet()).expect("decoder");
    let mut out = Vec::new();
    let mut next = 0;
    for p in packets {
        assert_eq!(p.ts, next, "packets are stamped back to back");
        let frames = dec.decode(&p.bytes, &mut out).expect("decode");
        next += frames as u64;
    }
    out
}

#[test]
fn flac_round_trip_is_bit_exact_in_any_order() {
    let format = Format {
        sample_rate: 44_100,
        channels: 2,
    };
    let frames = 44_100 * 3 + 123;
    let pcm = music(44_100, 2, 0, frames);
    // Ticks of 20 ms (882 frames) are not a multiple of the 588-frame block.
    let (enc, packets) = encode_all(AudioCodec::Flac, format, &pcm, 882);
    assert_eq!(enc.frames_per_packet(), 588);
    assert_eq!(enc.stream_format(), format);
    assert_eq!(enc.stream_frames(frames as u64), frames as u64);
    let out = decode_all(&enc, &packets);
    assert!(out.len() >= pcm.len());
    assert_eq!(
        &out[..pcm.len()],
        &pcm[..],
        "decoded FLAC equals the source"
    );
    assert!(
        out[pcm.len()..].iter().all(|&s| s == 0),
        "padding is silence"
    );
    // Every frame of this music fits the datagram PCM would have filled.
    let biggest = packets.iter().map(|p| p.bytes.len()).max().unwrap_or(0);
    assert!(biggest <= ROOM, "largest FLAC frame {biggest} B > {ROOM} B");
    let total: usize = packets.iter().map(|p| p.bytes.len()).sum();
    let ratio = total as f64 / (pcm.len() * 2) as f64;
    eprintln!("flac: {ratio:.3} of PCM, largest frame {biggest} B");
    assert!(ratio < 0.7, "FLAC/PCM = {ratio:.3}");
    // Frames are independent: decoding them in reverse gives the same samples.
    let mut dec = Decoder::new(AudioCodec::Flac, format, 588).expect("decoder");
    for p in packets.iter().rev() {
        let mut one = Vec::new();
        dec.decode(&p.bytes, &mut one).expect("decode");
        let at = p.ts as usize * 2;
        assert_eq!(&one[..], &out[at..at + one.len()]);
    }
}

#[test]
fn flac_carries_mono_and_eight_channels_exactly() {
    for (rate, channels) in [(22_050, 1u16), (48_000, 8)] {
        let format = Format {
            sample_rate: rate,
            channels,
        };
        let frames = rate as usize / 2 + 7;
        let pcm = music(rate, channels, 0, frames);
        let (enc, packets) = encode_all(AudioCodec::Flac, format, &pcm, rate as usize / 50);
        let out = decode_all(&enc, &packets);
        assert_eq!(&out[..pcm.len()], &pcm[..], "{channels} ch at {rate} Hz");
        // Even stored verbatim a frame fits the 8192-byte datagram.
        let block = enc.frames_per_packet() as usize;
        assert!(block * usize::from(channels) * 2 + 40 <= audiocodec::flac::MAX_FRAME_BYTES);
    }
}

#[test]
fn incompressible_flac_frames_still_fit_a_datagram() {
    let format = Format {
        sample_rate: 44_100,
        channels: 2,
    };
    // Full-scale white noise: FLAC stores it verbatim.
    let mut x: u32 = 1;
    let pcm: Vec<i16> = (0..44_100 * 2)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as i16
        })
        .collect();
    let (enc, packets) = encode_all(AudioCodec::Flac, format, &pcm, 882);
    let biggest = packets.iter().map(|p| p.bytes.len()).max().unwrap_or(0);
    assert!(biggest <= audiocodec::flac::MAX_FRAME_BYTES, "{biggest}");
    let out = decode_all(&enc, &packets);
    assert_eq!(&out[..pcm.len()], &pcm[..]);
}

/// Encodes and decodes music at `rate` as Opus; returns (reference at 48 kHz, decoded, encoder,
/// packets).
fn opus_round_trip(rate: u32, channels: u16, bitrate: u32) -> (Vec<i16>, Vec<i16>, Vec<Packet>) {
    let format = Format {
        sample_rate: rate,
        channels,
    };
    let seconds = 3;
    let pcm = music(rate, channels, 0, rate as usize * seconds);
    let (enc, packets) = encode_all(
        AudioCodec::Opus { bitrate },
        format,
        &pcm,
        rate as usize / 50,
    );
    assert_eq!(enc.frames_per_packet(), 960);
    assert_eq!(enc.stream_format().sample_rate, 48_000);
    let want_frames = enc.stream_frames(pcm.len() as u64 / u64::from(channels));
    assert_eq!(want_frames, 48_000 * seconds as u64);
    let out = decode_all(&enc, &packets);
    assert!(out.len() as u64 >= want_frames * u64::from(channels));
    // The same music sampled at 48 kHz: what a perfect resampler and codec would give.
    let reference = music(48_000, channels, 0, want_frames as usize);
    (reference, out, packets)
}

#[test]
fn opus_keeps_music_above_15_db_and_in_time() {
    for (rate, channels) in [(48_000, 2u16), (44_100, 2), (22_050, 1)] {
        let (reference, out, _) = opus_round_trip(rate, channels, 128_000);
        let ch = usize::from(channels);
        let (lag, snr) = best_alignment(&reference, &out, ch, 400);
        let aligned = snr_db(&reference, &out[..reference.len()]);
        eprintln!(
            "opus {rate} Hz {channels} ch: SNR {aligned:.1} dB, best {snr:.1} dB at lag {lag}"
        );
        assert!(
            snr >= 15.0,
            "{rate} Hz {channels} ch: SNR {snr:.1} dB at lag {lag}"
        );
        // The encoder's delays are removed: packet ts matches the source's frame index.
        assert!(
            lag.abs() <= 2,
            "{rate} Hz: decoded audio is {lag} frames off"
        );
        assert!(aligned >= 15.0, "{rate} Hz unshifted SNR {aligned:.1} dB");
    }
}

#[test]
fn opus_bitrate_is_what_was_asked() {
    for bitrate in [64_000u32, 128_000, 256_000] {
        let (_, _, packets) = opus_round_trip(48_000, 2, bitrate);
        let bytes: usize = packets.iter().map(|p| p.bytes.len()).sum();
        let seconds = packets.len() as f64 * 0.02;
        let measured = bytes as f64 * 8.0 / seconds;
        let ratio = measured / f64::from(bitrate);
        eprintln!("opus asked {bitrate} bit/s: {measured:.0} bit/s");
        assert!(
            (0.6..=1.25).contains(&ratio),
            "asked {bitrate} bit/s, got {measured:.0} ({ratio:.2})"
        );
        assert!(packets.iter().all(|p| p.bytes.len() <= opus::MAX_PACKET));
    }
}

#[test]
fn opus_packets_never_exceed_a_small_datagram() {
    let format = Format {
        sample_rate: 48_000,
        channels: 2,
    };
    let mut enc = Encoder::new(AudioCodec::Opus { bitrate: 510_000 }, format, 300).expect("enc");
    let pcm = music(48_000, 2, 0, 48_000);
    let mut sizes = Vec::new();
    enc.encode(&pcm, &mut |_, b| sizes.push(b.len()))
        .expect("encode");
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&n| n <= 300), "{sizes:?}");
}

/// A lost packet is concealed by Opus's own PLC: sound at the level of the music it replaces
/// (neither the fade to silence PCM and FLAC get, nor a burst), asked for in uneven pieces as
/// a jitter buffer does, and decoding goes on after the hole. How much the extrapolation
/// resembles the missing audio depends on where the hole falls (its SNR against the music
/// ranges from about −4.5 to +3 dB over these holes), so that is printed, not asserted.
#[test]
fn opus_conceals_a_lost_packet_with_sound_not_silence() {
    let (reference, _, packets) = opus_round_trip(48_000, 2, 128_000);
    let rms =
        |s: &[i16]| (s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
    for lost in [20, 30, 40, 50, 60, 70, 80] {
        let mut dec = Decoder::new(
            AudioCodec::Opus { bitrate: 128_000 },
            Format {
                sample_rate: 48_000,
                channels: 2,
            },
            960,
        )
        .expect("decoder");
        assert!(dec.conceals());
        let mut out = Vec::new();
        for p in &packets[..lost] {
            dec.decode(&p.bytes, &mut out).expect("decode");
        }
        let ts = packets[lost].ts;
        let mut plc = Vec::new();
        for (at, n) in [(0u64, 100usize), (100, 500), (600, 360)] {
            assert!(dec.conceal(ts + at, n, &mut plc));
        }
        assert_eq!(plc.len(), 960 * 2);
        let at = ts as usize * 2;
        let want = &reference[at..at + plc.len()];
        let (got_rms, want_rms) = (rms(&plc), rms(want));
        eprintln!(
            "hole at packet {lost}: PLC RMS {got_rms:.0} (music {want_rms:.0}), SNR {:.1} dB",
            snr_db(want, &plc)
        );
        assert!(got_rms > 100.0, "packet {lost}: PLC RMS {got_rms:.1}");
        assert!(
            got_rms > want_rms / 10.0 && got_rms < want_rms * 3.0,
            "packet {lost}: PLC RMS {got_rms:.0} against the music's {want_rms:.0}"
        );
        // Decoding continues after the hole.
        let mut after = Vec::new();
        assert_eq!(dec.decode(&packets[lost + 1].bytes, &mut after), Ok(960));
    }
}

#[test]
fn pcm_is_cut_into_datagrams_at_once() {
    let format = Format {
        sample_rate: 44_100,
        channels: 2,
    };
    let mut enc = Encoder::new(AudioCodec::Pcm, format, ROOM).expect("enc");
    assert_eq!(enc.frames_per_packet(), 343);
    let pcm = music(44_100, 2, 0, 882);
    let mut got = Vec::new();
    enc.encode(&pcm, &mut |ts, b| got.push((ts, b.to_vec())))
        .expect("encode");
    let stamps: Vec<(u64, usize)> = got.iter().map(|(ts, b)| (*ts, b.len())).collect();
    assert_eq!(stamps, vec![(0, 1372), (343, 1372), (686, 784)]);
    let mut dec = Decoder::new(AudioCodec::Pcm, format, 343).expect("dec");
    let mut out = Vec::new();
    for (_, b) in &got {
        dec.decode(b, &mut out).expect("decode");
    }
    assert_eq!(out, pcm);
    assert!(!dec.conceals());
    assert!(!dec.conceal(0, 10, &mut out));
    // Finishing adds nothing: PCM holds nothing back.
    let mut more = 0;
    enc.finish(&mut |_, _| more += 1).expect("finish");
    assert_eq!(more, 0);
    assert_eq!(enc.next_ts(), 882);
}

#[test]
fn garbage_payloads_are_errors_not_panics() {
    let stereo = Format {
        sample_rate: 48_000,
        channels: 2,
    };
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xFF],
        vec![0xFF, 0xF8, 0x69, 0x18, 0, 0],
        (0..1000).map(|i| (i * 7) as u8).collect(),
    ];
    for codec in [
        AudioCodec::Pcm,
        AudioCodec::Flac,
        AudioCodec::Opus { bitrate: 128_000 },
    ] {
        let fpp = if codec == AudioCodec::Flac { 588 } else { 960 };
        let mut dec = Decoder::new(codec, stereo, fpp).expect("decoder");
        for j in &junk {
            let mut out = Vec::new();
            // Opus decodes some noise as valid packets: whatever it says, no panic and no
            // more than one packet's worth of audio.
            if let Ok(n) = dec.decode(j, &mut out) {
                assert_eq!(out.len(), n * 2);
                assert!(n <= 5760, "{codec:?}");
            }
        }
        let mut out = Vec::new();
        assert!(
            dec.decode(&[], &mut out).is_err(),
            "{codec:?}: empty payload"
        );
    }
    let mut pcm = Decoder::new(AudioCodec::Pcm, stereo, 343).expect("decoder");
    let e = pcm
        .decode(&[1, 2, 3], &mut Vec::new())
        .expect_err("odd length");
    assert!(e.to_string().contains("3 bytes"), "{e}");
    let mut flac = Decoder::new(AudioCodec::Flac, stereo, 588).expect("decoder");
    assert!(flac.decode(&[0x12; 64], &mut Vec::new()).is_err());
}

#[test]
fn opus_refuses_what_it_cannot_carry_in_one_line() {
    let opus = AudioCodec::Opus { bitrate: 128_000 };
    let six = Format {
        sample_rate: 48_000,
        channels: 6,
    };
    let e = Encoder::new(opus, six, ROOM).expect_err("6 channels refused");
    assert_eq!(e, CodecError::OpusChannels(6));
    let text = e.to_string();
    assert!(
        text.contains("6 channels") && !text.contains('\n'),
        "{text}"
    );
    let stereo = Format {
        sample_rate: 48_000,
        channels: 2,
    };
    assert_eq!(
        Encoder::new(AudioCodec::Opus { bitrate: 5_000 }, stereo, ROOM).err(),
        Some(CodecError::OpusBitrate(5_000))
    );
    let odd = Format {
        sample_rate: 44_101,
        channels: 2,
    };
    assert_eq!(
        Encoder::new(opus, odd, ROOM).err(),
        Some(CodecError::OpusRate(44_101))
    );
    // A decoder refuses a Welcome that cannot be Opus.
    assert!(
        Decoder::new(
            opus,
            Format {
                sample_rate: 44_100,
                channels: 2
            },
            960
        )
        .is_err()
    );
    assert!(Decoder::new(opus, stereo, 480).is_err());
    assert!(Decoder::new(AudioCodec::Flac, stereo, 8).is_err());
    assert!(
        Decoder::new(
            AudioCodec::Flac,
            Format {
                sample_rate: 48_000,
                channels: 9
            },
            588
        )
        .is_err()
    );
}

/// `Encoder::lag` is what a server reads ahead so a packet leaves when its first frame is due:
/// fed a frame at a time, every packet is out once `lag` frames past its first frame have gone
/// in, and not much sooner (within the resampler's 10 ms block), for each codec and rate.
#[test]
fn lag_is_how_far_past_its_first_frame_a_packet_needs_the_source() {
    let cases = [
        (AudioCodec::Pcm, 44_100, 0),
        (AudioCodec::Flac, 44_100, 0),
        (AudioCodec::Opus { bitrate: 128_000 }, 48_000, 0),
        (AudioCodec::Opus { bitrate: 128_000 }, 44_100, 441),
        (AudioCodec::Opus { bitrate: 64_000 }, 32_000, 320),
    ];
    for (codec, rate, slack) in cases {
        let format = Format {
            sample_rate: rate,
            channels: 2,
        };
        let mut enc = Encoder::new(codec, format, ROOM).expect("encoder");
        let lag = enc.lag();
        let pcm = music(rate, 2, 0, rate as usize / 2);
        // (first source frame of the packet, source frames fed when it came out)
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, frame) in pcm.chunks(2).enumerate() {
            let fed = i as u64 + 1;
            enc.encode(frame, &mut |ts, _| {
                let first = ts * u64::from(rate) / u64::from(enc_rate(codec, rate));
                out.push((first, fed));
            })
            .expect("encode");
        }
        assert!(
            out.len() >= 10,
            "{codec:?} at {rate}: {} packets",
            out.len()
        );
        for (first, fed) in out {
            let needed = fed - first;
            assert!(
                needed <= lag.max(1),
                "{codec:?} at {rate}: packet at {first} needed {needed} > lag {lag}"
            );
            assert!(
                needed + slack + 2 >= lag,
                "{codec:?} at {rate}: packet at {first} needed only {needed}, lag {lag}"
            );
        }
    }
}

fn enc_rate(codec: AudioCodec, rate: u32) -> u32 {
    match codec {
        AudioCodec::Opus { .. } => opus::RATE,
        _ => rate,
    }
}
