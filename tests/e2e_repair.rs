//! Loss repair end to end, through the seeded impairment proxy, with repair on as streamd
//! starts it (default FEC group, retransmission on) and `--latency 100ms` on both sides: PCM and
//! FLAC arrive sample for sample with nothing concealed through 5 % loss in bursts of 3, 2 %
//! reordering and 1 % duplication; Opus conceals at most 0.1 % of what it played there; at 15 %
//! random loss PCM and Opus conceal at most 1 %; repair traffic stays within 30 % of the
//! stream's bytes at 5 % loss; and in every run `lost` is exactly what the proxy dropped
//! (repair never counts as received).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use audiocodec::signal::music;
use common::*;
use testkit::impair::{Impairment, Proxy, ProxyReport};

/// Seconds of the music-like source each run streams.
const SECONDS: usize = 5;

/// 15 % loss, each datagram on its own.
fn random15(seed: u64) -> Impairment {
    Impairment {
        loss: 0.15,
        seed,
        ..Impairment::none()
    }
}

/// Writes `SECONDS` of the music-like signal at `rate`, stereo, to `dir/music{rate}.wav`.
fn music_wav(dir: &Path, rate: u32) -> PathBuf {
    let path = dir.join(format!("music{rate}.wav"));
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for s in music(rate, 2, 0, rate as usize * SECONDS) {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    path
}

/// One listener's run through the proxy.
/// How the listener places its playout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// The default: each frame at its due time on the server's clock plus the room's delay.
    Room,
    /// `--sync off`: the delay counts from the first datagram's arrival, on the listener's
    /// own clock; a WAV compares sample for sample with no drift correction in the way.
    Off,
}

struct Run {
    stats: serde_json::Value,
    proxy: ProxyReport,
    listener: Listener,
    /// The listener's stats and the proxy's report, for assertion messages.
    ctx: String,
}

/// Streams `file` with `codec` through a proxy impairing with `imp`, repair on by default,
/// `--latency LATENCY` on both sides, and checks what holds in every run: both exit 0, the
/// proxy dropped something, `lost` is exactly what it dropped and `received` what it let
/// through (repair counts neither).
fn through_proxy(
    file: &Path,
    codec: &str,
    latency: &str,
    imp: Impairment,
    dir: &Path,
    sync: Sync,
) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(file, &["--codec", codec, "--latency", latency]);
    let proxy = rt
        .block_on(Proxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            server.addr,
            imp,
        ))
        .unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = rt.spawn(proxy.run(async {
        let _ = stop_rx.await;
    }));
    let mut args = vec!["--latency", latency];
    if sync == Sync::Off {
        args.extend(["--sync", "off"]);
    }
    let mut listener = Listener::start(proxy_addr, dir, codec, &args);
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{codec}: {}",
        listener.proc.stderr()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    // The default at 100 ms: a group of six PCM or FLAC datagrams (47-80 ms) fits; six 20 ms
    // Opus datagrams do not, and Opus goes without parity.
    let fec = if codec == "opus" {
        "FEC off"
    } else {
        "FEC 6,1"
    };
    let offer = format!("loss repair: {fec}, retransmission on");
    assert!(
        server.proc.stderr().contains(&offer),
        "{codec}: no `{offer}` in {}",
        server.proc.stderr()
    );
    let _ = stop_tx.send(());
    let proxy = rt.block_on(proxy_task).unwrap();
    drop(rt);
    let stats = listener.stats();
    let ctx = format!("{codec}: listen {stats}\nproxy {proxy}");
    let audio = &proxy.clients[0].downstream.audio;
    let seqs = || audio.dropped_seqs.iter().chain(&audio.sent_seqs).copied();
    let (first, last) = (seqs().min().unwrap(), seqs().max().unwrap());
    let lost = stat(&stats, "lost");
    let down = proxy.clients[0].downstream.counts;
    eprintln!(
        "{codec}: seqs {first}..={last}, dropped {:?}",
        audio.dropped_seqs
    );
    eprintln!(
        "{codec}: the proxy dropped {} of {} audio datagrams; listen lost {lost}, recovered fec {} \
         retransmit {}, concealed {} of {} ms; repair {} B = {:.1} % of the stream's {} B",
        audio.dropped_seqs.len(),
        last - first + 1,
        stat(&stats, "recovered_fec"),
        stat(&stats, "recovered_retransmit"),
        stats["concealed_ms"],
        stats["played_ms"],
        down.repair_bytes,
        100.0 * down.repair_bytes as f64 / down.audio_bytes.max(1) as f64,
        down.audio_bytes
    );
    assert!(!audio.dropped_seqs.is_empty(), "dropped nothing: {ctx}");
    assert_eq!(lost, audio.lost_between(first, last), "{ctx}");
    assert_eq!(stat(&stats, "received"), audio.unique_sent, "{ctx}");
    assert!(stat(&stats, "played_ms") > 0, "{ctx}");
    Run {
        stats,
        proxy,
        listener,
        ctx,
    }
}

impl Run {
    fn concealed_ms(&self) -> u64 {
        stat(&self.stats, "concealed_ms")
    }

    fn played_ms(&self) -> u64 {
        stat(&self.stats, "played_ms")
    }

    /// Parity and resent bytes over the stream's audio bytes, as the server sent them.
    fn repair_share(&self) -> f64 {
        let c = self.proxy.clients[0].downstream.counts;
        c.repair_bytes as f64 / c.audio_bytes.max(1) as f64
    }

    /// The listener's WAV equals `expected` sample for sample.
    fn assert_sample_exact(&self, expected: &[i16]) {
        let (_, got) = self.listener.samples();
        assert_eq!(got.len(), expected.len(), "{}", self.ctx);
        assert!(
            got == expected,
            "first difference at {:?}. {}",
            first_difference(&got, expected),
            self.ctx
        );
    }
}

/// PCM and FLAC through bursts of loss, reordering and duplication: every sample arrives,
/// nothing is concealed, and repair costs at most 30 % of the stream.
#[test]
fn bursty_loss_pcm_and_flac_play_every_sample() {
    let dir = tempdir();
    let file = music_wav(dir.path(), 44_100);
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    for (codec, seed) in [("pcm", 11), ("flac", 12)] {
        let r = through_proxy(
            &file,
            codec,
            "100ms",
            Impairment::bursty(seed),
            dir.path(),
            Sync::Off,
        );
        assert_eq!(r.concealed_ms(), 0, "{}", r.ctx);
        r.assert_sample_exact(&expected);
        assert!(r.repair_share() <= 0.30, "{}", r.ctx);
    }
}

/// Opus through the same, at the same 100 ms: at most 0.1 % of the played time concealed,
/// repair within 30 %. One Opus datagram carries 20 ms, so a burst of the proxy's Gilbert loss
/// (mean 3 datagrams; seed 13 holds one of 4 audio datagrams and the resends in between)
/// silences the link three times as long as PCM's; the listener asks for each datagram as soon
/// as it is overdue and again while the link stays silent, not only once a later one arrives.
/// Seed 18 loses nine datagrams in a row (180 ms) 220 ms in, just as playout starts: by then
/// the listener knows the round trip from its handshake and the step from the Welcome.
#[test]
fn bursty_loss_opus_conceals_at_most_a_thousandth() {
    let dir = tempdir();
    let file = music_wav(dir.path(), 48_000);
    for seed in [13, 18] {
        // The default listener, synchronised: its delay counts from each frame's due time,
        // and streamd reads a file ahead by what the encoder holds so a datagram leaves when
        // due.
        let r = through_proxy(
            &file,
            "opus",
            "100ms",
            Impairment::bursty(seed),
            dir.path(),
            Sync::Room,
        );
        assert!(r.concealed_ms() * 1000 <= r.played_ms(), "{}", r.ctx);
        assert!(r.repair_share() <= 0.30, "{}", r.ctx);
        assert_eq!(r.stats["codec"], "opus:128000", "{}", r.ctx);
    }
}

/// 15 % random loss: PCM and Opus conceal at most 1 % of what they played.
#[test]
fn random_loss_15_pct_conceals_at_most_one_percent() {
    let dir = tempdir();
    for (codec, rate, seed) in [("pcm", 44_100, 21), ("opus", 48_000, 22)] {
        let file = music_wav(dir.path(), rate);
        let r = through_proxy(
            &file,
            codec,
            "100ms",
            random15(seed),
            dir.path(),
            Sync::Room,
        );
        assert!(r.concealed_ms() * 100 <= r.played_ms(), "{}", r.ctx);
    }
}
