//! The device-side converter (channels and rate), pure: what the cpal sink does when the
//! device does not take the stream's format.
#![allow(clippy::unwrap_used)]

use listen::sink::Converter;

fn conv_all(c: &mut Converter, input: &[i16], chunk_frames: usize, in_ch: usize) -> Vec<i16> {
    let mut out = Vec::new();
    for ch in input.chunks(chunk_frames * in_ch) {
        c.convert(ch, &mut out);
    }
    out
}

#[test]
fn same_format_passes_through_bit_exact() {
    let input: Vec<i16> = (0..2000).map(|i| (i * 31 % 65536 - 32768) as i16).collect();
    let mut c = Converter::new(2, 48_000, 2, 48_000);
    assert!(c.same_rate());
    assert_eq!(conv_all(&mut c, &input, 77, 2), input);
    assert_eq!(c.in_frames(100), 100);
}

#[test]
fn mono_is_copied_to_every_device_channel() {
    let mut c = Converter::new(1, 8000, 3, 8000);
    let mut out = Vec::new();
    c.convert(&[5, -7], &mut out);
    assert_eq!(out, [5, 5, 5, -7, -7, -7]);
}

#[test]
fn stereo_to_mono_averages() {
    let mut c = Converter::new(2, 8000, 1, 8000);
    let mut out = Vec::new();
    c.convert(&[100, 200, -32768, -32768, 32767, 32767], &mut out);
    assert_eq!(out, [150, -32768, 32767]);
}

#[test]
fn extra_device_channels_get_silence() {
    let mut c = Converter::new(2, 8000, 4, 8000);
    let mut out = Vec::new();
    c.convert(&[1, 2], &mut out);
    assert_eq!(out, [1, 2, 0, 0]);
}

#[test]
fn downsampling_by_two_takes_every_other_frame() {
    let input: Vec<i16> = (0..1000).collect();
    let mut c = Converter::new(1, 48_000, 1, 24_000);
    let out = conv_all(&mut c, &input, 33, 1);
    let want: Vec<i16> = (0..1000).step_by(2).collect();
    assert_eq!(out, want);
}

#[test]
fn upsampling_interpolates_linearly_across_chunks() {
    // A ramp stays a ramp: 1 kHz → 2 kHz puts midpoints between neighbours.
    let input: Vec<i16> = (0..100).map(|i| i * 10).collect();
    let mut c = Converter::new(1, 1000, 1, 2000);
    let out = conv_all(&mut c, &input, 7, 1);
    // The last input frame is held back until the next chunk (it may be interpolated with it).
    let want: Vec<i16> = (0..198).map(|i| i * 5).collect();
    assert_eq!(out, want);
}

#[test]
fn resampled_length_follows_the_rate_ratio() {
    let input = vec![0i16; 48_000 * 2];
    let mut c = Converter::new(2, 48_000, 2, 44_100);
    let out = conv_all(&mut c, &input, 480, 2);
    let frames = out.len() / 2;
    assert!((44_099..=44_101).contains(&frames), "{frames}");
    // The demand conversion never promises more than fits.
    assert!(c.out_frames(c.in_frames(1000)) <= 1000);
}

/// Power of `x` at `freq` Hz (Goertzel), normalised so a full-length sine of amplitude `a`
/// gives about `a² / 4`.
fn goertzel(x: &[f64], rate: f64, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let p = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    p / (x.len() as f64 * x.len() as f64)
}

#[test]
fn a_tone_keeps_its_frequency_and_level_from_44k1_to_48k() {
    const IN_RATE: u32 = 44_100;
    const OUT_RATE: u32 = 48_000;
    const FREQ: f64 = 1000.0;
    const AMP: f64 = 12_000.0;
    // One second of a stereo 1 kHz tone; the right channel is inverted.
    let input: Vec<i16> = (0..IN_RATE as usize)
        .flat_map(|n| {
            let v = AMP * (2.0 * std::f64::consts::PI * FREQ * n as f64 / f64::from(IN_RATE)).sin();
            [v.round() as i16, (-v).round() as i16]
        })
        .collect();
    let mut c = Converter::new(2, IN_RATE, 2, OUT_RATE);
    assert!(!c.same_rate());
    // Chunks of a 20 ms tick at 44.1 kHz: the ratio 160/147 straddles every chunk boundary.
    let out = conv_all(&mut c, &input, 882, 2);
    let frames = out.len() / 2;
    assert!((47_990..=48_000).contains(&frames), "{frames} frames");
    for (ch, sign) in [(0, 1.0), (1, -1.0)] {
        let x: Vec<f64> = out[ch..].iter().step_by(2).map(|&s| f64::from(s)).collect();
        let rate = f64::from(OUT_RATE);
        // The tone is where it was: at 1 kHz, not stretched to 1000 · 48/44.1 = 1088 Hz as
        // playing the samples unconverted would put it, nor anywhere near.
        let at = goertzel(&x, rate, FREQ);
        for off in [-88.0, -40.0, -20.0, 20.0, 40.0, 88.0] {
            let beside = goertzel(&x, rate, FREQ + off);
            assert!(
                at > 100.0 * beside,
                "channel {ch}: {FREQ} Hz power {at:.0} vs {beside:.0} at {off:+} Hz"
            );
        }
        // Its level is kept: linear interpolation of a 1 kHz tone at 44.1 kHz loses well
        // under 1 dB, and nothing clips.
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        let want = AMP / 2f64.sqrt();
        assert!(
            (rms / want - 1.0).abs() < 0.05,
            "channel {ch}: RMS {rms:.0}, the tone's is {want:.0}"
        );
        let peak = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(peak <= AMP + 1.0, "channel {ch}: peak {peak}");
        // Zero crossings count the cycles: 1000 a second, ± one at the ends.
        let crossings = x
            .windows(2)
            .filter(|w| w[0] * sign < 0.0 && w[1] * sign >= 0.0)
            .count();
        assert!(
            (999..=1001).contains(&crossings),
            "channel {ch}: {crossings} cycles"
        );
    }
}
