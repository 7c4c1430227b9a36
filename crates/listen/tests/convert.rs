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
