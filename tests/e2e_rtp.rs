//! RTP output opened by real players: `streamd --rtp --sdp` on loopback, received by ffmpeg
//! (from the SDP file, ending by itself on the RTCP BYE) and by GStreamer (`udpsrc !
//! rtpjitterbuffer ! rtpL16depay`), each capture sample-exact against the decoded file at the
//! matching offset, while a native `listen` gets its WAV sample-exact from the same ticks and a
//! third `--rtp` destination with nobody listening refuses (counted, harmless). Skipped loudly
//! where ffmpeg or gst-launch-1.0 is missing, unless `EARSHOT_REQUIRE_PLAYERS` is set (CI,
//! `cargo xtask test`), where that is a failure. Also: the RTP flags' usage errors exit 2.
//!
//! With `--codec opus` the same players open the Opus RTP stream (RFC 7587: ffmpeg from the
//! SDP, GStreamer through `rtpopusdepay ! opusdec`); each decoded capture keeps the music above
//! 15 dB SNR once located in the source, beside a native listener that gets the whole stream.
//!
//! SAP (`--sap`) is not run here: its packets go to a multicast group off this machine; its
//! bytes and schedule are unit-tested in `streamd::rtp::sap`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;

use audiocodec::signal::{best_alignment, locate, music, snr_db};
use common::*;

/// True when `program version_flag` runs and succeeds.
fn have(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when both players are installed; otherwise skips loudly (or fails under
/// `EARSHOT_REQUIRE_PLAYERS`).
fn players(test: &str) -> bool {
    let missing: Vec<&str> = [("ffmpeg", "-version"), ("gst-launch-1.0", "--version")]
        .into_iter()
        .filter(|(p, flag)| !have(p, flag))
        .map(|(p, _)| p)
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("EARSHOT_REQUIRE_PLAYERS").is_none(),
        "EARSHOT_REQUIRE_PLAYERS is set but {missing:?} not installed \
         (ffmpeg, gstreamer1.0-tools, gstreamer1.0-plugins-good/-base)"
    );
    eprintln!("\n!!!!! SKIPPED {test}: {missing:?} not installed !!!!!\n");
    false
}

/// Held by each test that runs the players: they run one at a time, so that two tests'
/// ports picked free (and the players' real-time decoding) cannot collide.
static PLAYERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An even port P with P and P+1 free on 127.0.0.1 at the time of asking.
fn free_even_port() -> u16 {
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = probe.local_addr().unwrap().port() & !1;
        drop(probe);
        if p < 1024 {
            continue;
        }
        let a = UdpSocket::bind(("127.0.0.1", p));
        let b = UdpSocket::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
}

/// True when some UDP socket is bound to local `port` (any address): the player is receiving.
fn udp_bound(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let mut cols = l.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let remote_is_any = cols
                    .next()
                    .is_some_and(|r| r.trim_start_matches('0').starts_with(':'));
                local.ends_with(&want) && remote_is_any
            })
    })
}

/// Where `got` sits in `want` (in samples, a whole frame), checking every captured sample:
/// the capture may miss packets at the start (a player that was not ready) but nothing after.
fn align(name: &str, got: &[i16], want: &[i16], channels: usize) -> usize {
    assert!(
        got.len() * 10 >= want.len() * 9,
        "{name}: captured {} of {} samples (< 90%)",
        got.len(),
        want.len()
    );
    assert!(
        got.len() <= want.len(),
        "{name}: captured {} samples, more than the source's {}",
        got.len(),
        want.len()
    );
    for off in (0..=want.len() - got.len()).step_by(channels) {
        if want[off..off + got.len()] == *got {
            return off;
        }
    }
    let at = first_difference(got, &want[want.len() - got.len()..]).unwrap_or(0);
    panic!(
        "{name}: the {} captured samples match the source at no offset (vs the tail: first \
         difference at {at})",
        got.len()
    );
}

fn raw_s16le(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn rtp_to_players(fixture_name: &str) {
    let file = fixture(fixture_name);
    let (info, expected) = streamd::source::decode_all(&file).unwrap();
    let ch = usize::from(info.channels);
    let dir = tempdir();
    let sdp = dir.path().join("stream.sdp");
    let (p_ff, p_gst, p_dead) = (free_even_port(), free_even_port(), free_even_port());
    let dest = |p: u16| format!("127.0.0.1:{p}");
    let sdp_arg = sdp.display().to_string();
    // first-client: the RTP waits for the native listener, started once the players receive.
    let mut server = Server::start(
        &file,
        &[
            "--start",
            "first-client",
            "--rtp",
            &dest(p_ff),
            "--rtp",
            &dest(p_gst),
            "--rtp",
            &dest(p_dead),
            "--sdp",
            &sdp_arg,
            "--no-announce",
        ],
    );
    let text = std::fs::read_to_string(&sdp).unwrap();
    let pt = streamd::rtp::payload_type(info.sample_rate, info.channels);
    for line in [
        "c=IN IP4 127.0.0.1\r\n".to_string(),
        format!("m=audio {p_ff} RTP/AVP {pt}\r\n"),
        format!(
            "a=rtpmap:{pt} L16/{}/{}\r\n",
            info.sample_rate, info.channels
        ),
        "a=recvonly\r\n".to_string(),
    ] {
        assert!(text.contains(&line), "SDP lacks {line:?}:\n{text}");
    }

    let ff_out = dir.path().join("ffmpeg.raw");
    let ff_args: Vec<String> = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "warning",
        "-protocol_whitelist",
        "file,udp,rtp",
        "-i",
        &sdp_arg,
        "-f",
        "s16le",
        "-y",
        &ff_out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ffmpeg = Proc::spawn(Path::new("ffmpeg"), &ff_args, &[]);

    let gst_out = dir.path().join("gst.wav");
    let caps = format!(
        "caps=application/x-rtp,media=audio,clock-rate={},encoding-name=L16,channels={},payload={pt}",
        info.sample_rate, info.channels
    );
    let gst_args: Vec<String> = [
        "-e",
        "-q",
        "udpsrc",
        &format!("port={p_gst}"),
        "address=127.0.0.1",
        &caps,
        "!",
        "rtpjitterbuffer",
        "!",
        "rtpL16depay",
        "!",
        "audioconvert",
        "!",
        "wavenc",
        "!",
        "filesink",
        &format!("location={}", gst_out.display()),
        "buffer-mode=unbuffered",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gst = Proc::spawn(Path::new("gst-launch-1.0"), &gst_args, &[]);

    wait_until("ffmpeg and GStreamer to bind their ports", SLOW, || {
        udp_bound(p_ff) && udp_bound(p_gst)
    });
    let mut listener = Listener::start(server.addr, dir.path(), "l", &["--latency", "200ms"]);
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());

    // The native listener: sample-exact, nothing lost, while RTP went out from the same ticks.
    let (spec, got) = listener.samples();
    assert_eq!(
        (spec.sample_rate, spec.channels),
        (info.sample_rate, info.channels)
    );
    assert_eq!(
        first_difference(&got, &expected),
        None,
        "native WAV differs"
    );
    assert_eq!(stat(&listener.stats(), "lost"), 0);

    // The dead destination refused (ICMP port unreachable → ECONNREFUSED), counted.
    let last = server
        .proc
        .stderr()
        .lines()
        .rfind(|l| l.contains("rtp: sent "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no rtp line:\n{}", server.proc.stderr()));
    let refused: u64 = last
        .split(", ")
        .find_map(|f| f.strip_suffix(" refused"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in {last:?}"));
    assert!(refused >= 1, "{last}");
    assert!(server.proc.stderr().contains("rtp: BYE sent"));

    // ffmpeg ends by itself on the RTCP BYE.
    assert_eq!(ffmpeg.exit_code(SLOW), 0, "ffmpeg: {}", ffmpeg.stderr());
    let ff = raw_s16le(&ff_out);
    let off = align("ffmpeg", &ff, &expected, ch);
    eprintln!(
        "{fixture_name}: ffmpeg captured {} of {} samples from sample {off}",
        ff.len(),
        expected.len()
    );

    // GStreamer has no end of its own here: once it has written everything (loopback loses
    // nothing; a capture that started late never gets there and is judged as it is after the
    // deadline), stop it with SIGINT, which -e turns into an EOS that finishes the WAV.
    let full = 44 + expected.len() as u64 * 2;
    let size = || std::fs::metadata(&gst_out).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + SLOW;
    while size() < full && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    gst.signal("INT");
    assert_eq!(gst.exit_code(SLOW), 0, "gst-launch: {}", gst.stderr());
    let (gspec, g) = read_wav(&gst_out);
    assert_eq!(
        (gspec.sample_rate, gspec.channels),
        (info.sample_rate, info.channels)
    );
    let off = align("GStreamer", &g, &expected, ch);
    eprintln!(
        "{fixture_name}: GStreamer captured {} of {} samples from sample {off}",
        g.len(),
        expected.len()
    );
}

#[test]
fn players_receive_l16_sample_exact_beside_a_native_listener() {
    if !players("players_receive_l16_sample_exact_beside_a_native_listener") {
        return;
    }
    let _one_at_a_time = PLAYERS.lock().unwrap_or_else(|e| e.into_inner());
    // 44.1 kHz stereo: static payload type 10; 22.05 kHz mono: dynamic 96.
    rtp_to_players("stereo44.wav");
    rtp_to_players("mono22.wav");
}

/// A WAV of `seconds` of the music-like test signal at 48 kHz stereo (Opus's own rate, so a
/// decoded capture compares with it directly); returns it with its samples.
fn music48(dir: &Path, seconds: usize) -> (std::path::PathBuf, Vec<i16>) {
    let src = dir.join("music48.wav");
    let pcm = music(48_000, 2, 0, 48_000 * seconds);
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&src, spec).unwrap();
    for &s in &pcm {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    (src, pcm)
}

/// Checks a decoded capture against the source: most of it, located by [`locate`] (a player
/// may miss the first packets), at least 15 dB SNR.
fn assert_opus_capture(name: &str, got: &[i16], want: &[i16]) {
    assert!(
        got.len() * 10 >= want.len() * 9,
        "{name}: captured {} of {} samples (< 90%)",
        got.len(),
        want.len()
    );
    // A decoder may flush a little past the stream's end: judge what overlaps.
    let got = &got[..got.len().min(want.len())];
    let (off, snr) = locate(want, got, 2, 960);
    eprintln!(
        "opus over RTP, {name}: {} of {} samples from frame {off}, SNR {snr:.1} dB",
        got.len(),
        want.len()
    );
    assert!(snr >= 15.0, "{name}: SNR {snr:.1} dB at frame {off}");
}

#[test]
fn players_decode_opus_over_rtp_beside_a_native_listener() {
    if !players("players_decode_opus_over_rtp_beside_a_native_listener") {
        return;
    }
    let _one_at_a_time = PLAYERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let (file, pcm) = music48(dir.path(), 4);
    let sdp = dir.path().join("opus.sdp");
    let sdp_arg = sdp.display().to_string();
    let (p_ff, p_gst) = (free_even_port(), free_even_port());
    let dest = |p: u16| format!("127.0.0.1:{p}");
    let mut server = Server::start(
        &file,
        &[
            "--codec",
            "opus",
            "--start",
            "first-client",
            "--rtp",
            &dest(p_ff),
            "--rtp",
            &dest(p_gst),
            "--sdp",
            &sdp_arg,
            "--no-announce",
        ],
    );
    let text = std::fs::read_to_string(&sdp).unwrap();
    for line in [
        format!("m=audio {p_ff} RTP/AVP 96\r\n"),
        "a=rtpmap:96 opus/48000/2\r\n".to_string(),
        "a=fmtp:96 sprop-stereo=1; stereo=1; maxaveragebitrate=128000\r\n".to_string(),
        "a=ptime:20\r\n".to_string(),
    ] {
        assert!(text.contains(&line), "SDP lacks {line:?}:\n{text}");
    }

    let ff_out = dir.path().join("ffmpeg.raw");
    let ff_args: Vec<String> = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "warning",
        "-protocol_whitelist",
        "file,udp,rtp",
        "-i",
        &sdp_arg,
        "-f",
        "s16le",
        "-ar",
        "48000",
        "-ac",
        "2",
        "-y",
        &ff_out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ffmpeg = Proc::spawn(Path::new("ffmpeg"), &ff_args, &[]);

    let gst_out = dir.path().join("gst.wav");
    let gst_args: Vec<String> = [
        "-e",
        "-q",
        "udpsrc",
        &format!("port={p_gst}"),
        "address=127.0.0.1",
        "caps=application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=96",
        "!",
        "rtpjitterbuffer",
        "!",
        "rtpopusdepay",
        "!",
        "opusdec",
        "!",
        "audioconvert",
        "!",
        "audio/x-raw,format=S16LE,channels=2",
        "!",
        "wavenc",
        "!",
        "filesink",
        &format!("location={}", gst_out.display()),
        "buffer-mode=unbuffered",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gst = Proc::spawn(Path::new("gst-launch-1.0"), &gst_args, &[]);

    wait_until("ffmpeg and GStreamer to bind their ports", SLOW, || {
        udp_bound(p_ff) && udp_bound(p_gst)
    });
    let mut listener = Listener::start(server.addr, dir.path(), "l", &["--latency", "200ms"]);
    assert_eq!(
        listener.proc.exit_code(SLOW),
        0,
        "{}",
        listener.proc.stderr()
    );
    assert_eq!(server.proc.exit_code(SLOW), 0, "{}", server.proc.stderr());
    assert!(
        server.proc.stderr().contains("rtp: sending opus/48000/2"),
        "{}",
        server.proc.stderr()
    );

    // The native listener beside the players: the whole stream, in time, nothing lost.
    let s = listener.stats();
    assert_eq!(stat(&s, "lost"), 0, "{s}");
    assert_eq!(s["codec"], "opus:128000", "{s}");
    let (_, got) = listener.samples();
    assert_eq!(got.len(), pcm.len(), "the native stream keeps its length");
    let (lag, best) = best_alignment(&pcm, &got, 2, 480);
    assert_eq!(lag, 0, "native: {best:.1} dB at lag {lag}");
    assert!(snr_db(&pcm, &got) >= 15.0, "native: {best:.1} dB");

    // ffmpeg ends by itself on the RTCP BYE.
    assert_eq!(ffmpeg.exit_code(SLOW), 0, "ffmpeg: {}", ffmpeg.stderr());
    assert_opus_capture("ffmpeg", &raw_s16le(&ff_out), &pcm);

    // GStreamer: stopped with SIGINT (-e: EOS finishes the WAV) once it holds about the whole
    // stream, or after the deadline, judged as it is.
    let full = 44 + pcm.len() as u64 * 2;
    let size = || std::fs::metadata(&gst_out).map(|m| m.len()).unwrap_or(0);
    wait_until("GStreamer to write the stream", SLOW, || {
        size() + 960 * 4 >= full
    });
    gst.signal("INT");
    assert_eq!(gst.exit_code(SLOW), 0, "gst-launch: {}", gst.stderr());
    let (gspec, g) = read_wav(&gst_out);
    assert_eq!((gspec.sample_rate, gspec.channels), (48_000, 2));
    assert_opus_capture("GStreamer", &g, &pcm);
}

#[test]
fn flac_is_not_sent_over_rtp() {
    let file = fixture("stereo44.wav").display().to_string();
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--file",
        &file,
        "--codec",
        "flac",
        "--rtp",
        "127.0.0.1:5004",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn(&bin("streamd"), &args, &[]);
    assert_eq!(p.exit_code(SLOW), 2, "{}", p.stderr());
    let err = p.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_default();
    assert!(
        line.contains("needs --codec pcm or opus, not flac"),
        "{err}"
    );
}

#[test]
fn rtp_usage_errors_exit_2_naming_the_value() {
    let file = fixture("stereo44.wav").display().to_string();
    for (args, needle) in [
        (vec!["--rtp", "nowhere:5004"], "nowhere:5004"),
        (vec!["--rtp", "127.0.0.1:5005"], "127.0.0.1:5005"),
        (vec!["--rtp", "0.0.0.0:5004"], "0.0.0.0:5004"),
        (vec!["--rtp", "239.1.2.3:5004", "--ttl", "0"], "'0'"),
        (vec!["--rtp", "239.1.2.3:5004", "--ttl", "256"], "'256'"),
        (vec!["--rtp", "127.0.0.1:5004", "--ttl", "4"], "--ttl 4"),
        (vec!["--sdp", "x.sdp"], "--sdp"),
    ] {
        let mut all: Vec<String> = ["--bind", "127.0.0.1", "--port", "0", "--file", &file]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(&bin("streamd"), &all, &[]);
        assert_eq!(p.exit_code(SLOW), 2, "{args:?}: {}", p.stderr());
        let err = p.stderr();
        let line = err
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_else(|| panic!("{args:?}: no error line: {err}"));
        assert!(line.contains(needle), "{args:?}: {line}");
    }
}
