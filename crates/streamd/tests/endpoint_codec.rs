//! The endpoint with each codec on simulated time: what the `Welcome` announces, packets
//! stamped back to back with exactly `frames_per_packet` frames, the end flushed (every source
//! frame sent, padding past the announced length only), each tick encoded once for every
//! listener, and a codec that cannot carry the source refused.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use audiocodec::signal::music;
use audiocodec::{AudioCodec, CodecError, Decoder, Format};
use bytes::Bytes;
use proto::limits::MIN_CONNECT_LEN;
use proto::{Connect, Join, Message, Packet, RejectReason, StreamInfo};
use streamd::endpoint::{AudioSource, Endpoint, EndpointConfig, StartMode, Transmit};
use streamd::source::SourceInfo;

const TICK: Duration = Duration::from_millis(20);

/// Music-like PCM from memory.
struct Clip {
    info: SourceInfo,
    pcm: Vec<i16>,
    pos: usize,
    /// Whether the server may read it ahead (a file), or only as it becomes due (live).
    ahead: bool,
}

impl Clip {
    fn new(rate: u32, channels: u16, frames: usize) -> Self {
        Clip {
            info: SourceInfo {
                sample_rate: rate,
                channels,
                total_frames: Some(frames as u64),
                codec: "synthetic".into(),
                title: "clip".into(),
            },
            pcm: music(rate, channels, 0, frames),
            pos: 0,
            ahead: true,
        }
    }
}

impl AudioSource for Clip {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn read_frames(&mut self, max_frames: usize, out: &mut Vec<i16>) -> usize {
        let ch = usize::from(self.info.channels);
        let n = max_frames.min((self.pcm.len() - self.pos) / ch);
        out.extend_from_slice(&self.pcm[self.pos..self.pos + n * ch]);
        self.pos += n * ch;
        n
    }
    fn is_finished(&self) -> bool {
        self.pos >= self.pcm.len()
    }
    fn rewind(&mut self) -> Result<(), String> {
        self.pos = 0;
        Ok(())
    }
    fn reads_ahead(&self) -> bool {
        self.ahead
    }
}

fn config() -> EndpointConfig {
    EndpointConfig {
        interval: TICK,
        max_clients: 4,
        client_timeout: Duration::from_secs(5),
        start: StartMode::FirstClient,
        looping: false,
        mtu: 1400,
        cookie_key: (1, 2),
        ..EndpointConfig::default()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn send(ep: &mut Endpoint<Clip>, now: Instant, from: SocketAddr, msg: Message) -> Vec<Message> {
    let b = proto::encode_to_bytes(&Packet::new(0, msg)).unwrap();
    ep.handle(now, from, &b);
    let mut got = Vec::new();
    while let Some(t) = ep.poll_transmit(now) {
        if let Transmit::One { dest, datagram } = t {
            assert_eq!(dest, from);
            got.push(proto::decode(&datagram).unwrap().msg);
        }
    }
    got
}

/// Connect + Join decoding `codecs`; the answer to the Join.
fn join_with(ep: &mut Endpoint<Clip>, now: Instant, from: SocketAddr, codecs: u32) -> Message {
    let cookie = match &send(
        ep,
        now,
        from,
        Message::Connect(Connect {
            max_version: proto::VERSION,
            padding: Bytes::from(vec![0u8; MIN_CONNECT_LEN]),
        }),
    )[..]
    {
        [Message::Challenge(c)] => c.cookie,
        other => panic!("expected a Challenge, got {other:?}"),
    };
    let mut j = Join::new(cookie);
    j.codecs = codecs;
    match &send(ep, now, from, Message::Join(j))[..] {
        [m] => m.clone(),
        other => panic!("expected one answer, got {other:?}"),
    }
}

/// A listener that decodes every codec joins; the stream it is told about.
fn join(ep: &mut Endpoint<Clip>, now: Instant, from: SocketAddr) -> StreamInfo {
    match join_with(ep, now, from, audiocodec::DECODABLE) {
        Message::Welcome(w) => w.info,
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

/// Streams the whole clip to two listeners; returns the Welcome and every (ts, payload) the
/// first received, checking the second got the very same datagrams.
fn stream(codec: AudioCodec, clip: Clip) -> (StreamInfo, Vec<(u64, Bytes)>) {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(t0, config(), clip);
    ep.set_codec(codec).unwrap();
    let info = join(&mut ep, t0, addr(1));
    let other = join(&mut ep, t0, addr(2));
    assert_eq!(
        (&info.codec, info.frames_per_packet),
        (&other.codec, other.frames_per_packet)
    );
    assert_eq!(info.codec, codec, "the Welcome names the codec");
    let mut now = t0;
    let mut got = Vec::new();
    while !ep.is_closed() {
        let Some(at) = ep.poll_timeout() else { break };
        now = now.max(at);
        ep.handle_timeout(now);
        while let Some(t) = ep.poll_transmit(now) {
            if let Transmit::Fanout { datagrams, dests } = t {
                assert_eq!(
                    dests,
                    &[addr(1), addr(2)][..],
                    "one encoding for every listener"
                );
                for d in datagrams {
                    if let Message::Audio(a) = proto::decode(d).unwrap().msg {
                        got.push((a.ts, a.payload.clone()));
                    }
                }
            }
        }
        assert!(now - t0 < Duration::from_secs(30), "the stream never ended");
    }
    (info, got)
}

#[test]
fn flac_stream_decodes_to_the_source_exactly() {
    let clip = Clip::new(44_100, 2, 44_100 + 555);
    let source = clip.pcm.clone();
    let (info, got) = stream(AudioCodec::Flac, clip);
    assert_eq!(info.sample_rate, 44_100);
    assert_eq!(info.frames_per_packet, 588);
    assert_eq!(info.total_frames, Some(44_100 + 555));
    let mut dec = Decoder::new(
        AudioCodec::Flac,
        Format {
            sample_rate: 44_100,
            channels: 2,
        },
        588,
    )
    .unwrap();
    let mut out = Vec::new();
    for (i, (ts, payload)) in got.iter().enumerate() {
        assert_eq!(*ts, i as u64 * 588, "stamped back to back");
        assert_eq!(dec.decode(payload, &mut out).unwrap(), 588);
    }
    assert_eq!(
        got.len(),
        (44_100 + 555usize).div_ceil(588),
        "the end is flushed"
    );
    assert_eq!(&out[..source.len()], &source[..]);
    assert!(out[source.len()..].iter().all(|&s| s == 0));
}

#[test]
fn opus_stream_is_48k_in_960_frame_packets_covering_the_source() {
    let clip = Clip::new(44_100, 2, 44_100);
    let (info, got) = stream(AudioCodec::Opus { bitrate: 96_000 }, clip);
    assert_eq!(info.sample_rate, 48_000, "Opus streams run at 48 kHz");
    assert_eq!(info.frames_per_packet, 960);
    assert_eq!(
        info.total_frames,
        Some(48_000),
        "the length in 48 kHz frames"
    );
    for (i, (ts, p)) in got.iter().enumerate() {
        assert_eq!(*ts, i as u64 * 960);
        assert!(!p.is_empty() && p.len() <= 1275);
    }
    assert_eq!(got.len(), 50, "48,000 frames in whole packets");
}

#[test]
fn a_codec_that_cannot_carry_the_source_is_refused_and_nothing_changes() {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(t0, config(), Clip::new(48_000, 6, 4800));
    let before = ep.stream_info().clone();
    assert_eq!(
        ep.set_codec(AudioCodec::Opus { bitrate: 128_000 }),
        Err(CodecError::OpusChannels(6))
    );
    assert_eq!(ep.stream_info(), &before);
    assert_eq!(ep.codec(), AudioCodec::Pcm);
    ep.set_codec(AudioCodec::Flac).unwrap();
    assert_eq!(ep.codec(), AudioCodec::Flac);
}

#[test]
fn a_listener_that_cannot_decode_the_codec_is_rejected_naming_it() {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(t0, config(), Clip::new(44_100, 2, 4410));
    ep.set_codec(AudioCodec::Flac).unwrap();
    let pcm_only = AudioCodec::Pcm.bit();
    match join_with(&mut ep, t0, addr(1), pcm_only) {
        Message::Reject(r) => assert_eq!(
            r.reason,
            RejectReason::CodecUnsupported {
                codec: AudioCodec::Flac.index()
            }
        ),
        other => panic!("expected a Reject, got {other:?}"),
    }
    assert!(ep.sessions().is_empty());
    // One that decodes FLAC is welcome.
    assert!(matches!(
        join_with(&mut ep, t0, addr(2), pcm_only | AudioCodec::Flac.bit()),
        Message::Welcome(_)
    ));
}

/// When each Audio datagram of an Opus stream of `clip` leaves, against when its first frame is
/// due on the timeline the Welcome gave: (ts, sent − due in ms).
fn opus_send_times(clip: Clip) -> Vec<(u64, f64)> {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(t0, config(), clip);
    ep.set_codec(AudioCodec::Opus { bitrate: 128_000 }).unwrap();
    let info = join(&mut ep, t0, addr(1));
    let rate = f64::from(info.sample_rate);
    let due = |ts: u64| {
        let tl = info.timeline;
        tl.server_us as f64 / 1e3 + (ts as f64 - tl.ts as f64) * 1e3 / rate
    };
    let mut now = t0;
    let mut out = Vec::new();
    while !ep.is_closed() && now - t0 < Duration::from_secs(30) {
        let Some(at) = ep.poll_timeout() else { break };
        now = now.max(at);
        ep.handle_timeout(now);
        let sent = (now - t0).as_secs_f64() * 1e3;
        while let Some(t) = ep.poll_transmit(now) {
            if let Transmit::Fanout { datagrams, .. } = t {
                for d in datagrams {
                    if let Message::Audio(a) = proto::decode(d).unwrap().msg {
                        out.push((a.ts, sent - due(a.ts)));
                    }
                }
            }
        }
    }
    out
}

/// Every Opus datagram leaves within a tick of its first frame's due time on the Welcome's
/// timeline. A file is read ahead by what the encoder holds back (a packet, its look-ahead and
/// the resampler's delay); a live source cannot be, so its timeline is that much later than its
/// media clock instead. Either way a synchronised listener keeps the whole playout delay for the
/// network and repair. Without either, a datagram left 40 ms after it was due.
#[test]
fn an_opus_datagram_leaves_when_its_first_frame_is_due_file_or_live() {
    let mut live = Clip::new(44_100, 2, 44_100);
    live.ahead = false;
    // A file leaves up to an interval (20 ms here) early, plus the lag's rounding (a 10 ms
    // resampler block); live, up to the rounding early and a tick late.
    for (what, clip, range) in [
        ("file", Clip::new(44_100, 2, 44_100), -31.0..=0.0),
        ("live", live, -11.0..=20.0),
    ] {
        let sent = opus_send_times(clip);
        assert!(sent.len() >= 45, "{what}: {} datagrams", sent.len());
        // The last is the padded end, sent as the source ends.
        for &(ts, late) in &sent[..sent.len() - 1] {
            assert!(
                range.contains(&late),
                "{what}: datagram at ts {ts} left {late:.1} ms after it was due"
            );
        }
    }
}
