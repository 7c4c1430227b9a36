//! A deterministic music-like signal for tests and benchmarks: chords of harmonic tones whose
//! notes change every quarter second, with an attack/decay envelope and a little noise. Pure
//! tones flatter lossy codecs and white noise defeats lossless ones; this is neither.

/// The signal at time `t` seconds on channel `ch`, in -1.0..1.0.
pub fn music_at(t: f64, ch: usize) -> f64 {
    use std::f64::consts::TAU;
    // A I–vi–IV–V progression, a new chord every 0.25 s.
    const CHORDS: [[f64; 3]; 4] = [
        [261.63, 329.63, 392.00],
        [220.00, 261.63, 329.63],
        [174.61, 220.00, 261.63],
        [196.00, 246.94, 293.66],
    ];
    let beat = (t / 0.25).floor();
    let chord = CHORDS[(beat as usize) % CHORDS.len()];
    let since = t - beat * 0.25;
    let env = (since * 200.0).min(1.0) * (-since * 4.0).exp();
    let mut v = 0.0;
    for (i, f) in chord.iter().enumerate() {
        // Stereo: each voice panned a little differently.
        let pan = if ch.is_multiple_of(2) {
            1.0 - 0.2 * i as f64
        } else {
            0.6 + 0.2 * i as f64
        };
        for h in 1..=4 {
            v += pan * (TAU * f * h as f64 * t).sin() / (h * h) as f64;
        }
    }
    0.25 * env * v + 0.003 * noise(t, ch)
}

/// Uniform noise in -1.0..1.0, a pure function of the sample's time and channel.
fn noise(t: f64, ch: usize) -> f64 {
    let mut x = (t * 1e6) as u64 ^ ((ch as u64 + 1) << 40) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// `frames` frames of the signal at `rate` with `channels`, interleaved s16, starting at
/// frame `start`.
pub fn music(rate: u32, channels: u16, start: u64, frames: usize) -> Vec<i16> {
    let ch = usize::from(channels);
    let mut out = Vec::with_capacity(frames * ch);
    for i in 0..frames as u64 {
        let t = (start + i) as f64 / f64::from(rate);
        for c in 0..ch {
            out.push(
                (music_at(t, c) * 32_767.0)
                    .round()
                    .clamp(-32_768.0, 32_767.0) as i16,
            );
        }
    }
    out
}

/// Signal-to-noise ratio in dB of `got` against `want` (interleaved, same length).
pub fn snr_db(want: &[i16], got: &[i16]) -> f64 {
    let (mut sig, mut err) = (0.0f64, 0.0f64);
    for (&w, &g) in want.iter().zip(got) {
        sig += f64::from(w) * f64::from(w);
        err += (f64::from(w) - f64::from(g)).powi(2);
    }
    10.0 * (sig / err.max(1e-9)).log10()
}

/// The lag (in frames, `-max..=max`) at which `got` best matches `want`, and the SNR there:
/// `got[i + lag]` is compared with `want[i]`.
pub fn best_alignment(want: &[i16], got: &[i16], channels: usize, max: i64) -> (i64, f64) {
    let frames = (want.len().min(got.len()) / channels) as i64;
    let mut best = (0, f64::NEG_INFINITY);
    for lag in -max..=max {
        let (w0, g0) = if lag >= 0 { (0, lag) } else { (-lag, 0) };
        let n = frames - lag.abs();
        if n <= 0 {
            continue;
        }
        let w = &want[(w0 as usize) * channels..((w0 + n) as usize) * channels];
        let g = &got[(g0 as usize) * channels..((g0 + n) as usize) * channels];
        let s = snr_db(w, g);
        if s > best.1 {
            best = (lag, s);
        }
    }
    best
}

/// Where a capture sits in its source when it may have started late (a player that joined an
/// RTP stream mid-way, a decoder with a delay of its own): the frame offset `off` at which
/// `got[i]` best matches `want[off + i]`, and the SNR there over the whole capture. Every
/// offset is tried, on `probe` frames from the middle of the capture (away from a decoder's
/// first, converging frames), so the cost is (source − capture frames) × `probe`.
pub fn locate(want: &[i16], got: &[i16], channels: usize, probe: usize) -> (usize, f64) {
    let ch = channels.max(1);
    let (wf, gf) = (want.len() / ch, got.len() / ch);
    if gf == 0 || gf > wf {
        return (0, f64::NEG_INFINITY);
    }
    let probe = probe.clamp(1, gf);
    let mid = (gf - probe) / 2;
    let probe_got = &got[mid * ch..(mid + probe) * ch];
    let mut best = (0usize, f64::NEG_INFINITY);
    for off in 0..=wf - gf {
        let at = off + mid;
        let s = snr_db(&want[at * ch..(at + probe) * ch], probe_got);
        if s > best.1 {
            best = (off, s);
        }
    }
    let off = best.0;
    (
        off,
        snr_db(&want[off * ch..(off + gf) * ch], &got[..gf * ch]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_a_late_capture() {
        let want = music(48_000, 2, 0, 48_000);
        // A capture from frame 9_600 + 37 on, a little noisy.
        let got: Vec<i16> = want[(9_637) * 2..]
            .iter()
            .enumerate()
            .map(|(i, &s)| s.saturating_add((i % 7) as i16 - 3))
            .collect();
        let (off, snr) = locate(&want, &got, 2, 960);
        assert_eq!(off, 9_637);
        assert!(snr > 30.0, "{snr}");
        assert_eq!(locate(&want, &want, 2, 100).0, 0);
        assert_eq!(locate(&want[..10], &want, 2, 100).1, f64::NEG_INFINITY);
    }
}
