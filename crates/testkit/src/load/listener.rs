//! One simulated listener, sans-IO: the protocol state machine of the load tool. It takes the
//! time and the packets that arrived, and says what to send; the worker thread moves the bytes.
//!
//! Connect (padded) → Challenge → Join → Welcome | Reject; then Audio is counted (no playback),
//! a `Report` goes out every [`REPORT_INTERVAL`] as the keepalive, and the run ends with `End`
//! from the server or `Leave` from us.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::limits::{MIN_CONNECT_LEN, REPORT_INTERVAL};
use proto::{Connect, EndReason, Join, Message, Packet, RejectReason, Report, StreamInfo};

use super::stats::{Recorded, SeqTracker};

/// How long to wait for a `Challenge` or `Welcome` before sending the request again.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(500);

/// How many requests of one handshake step to send before giving up (5 s in all): a server
/// that answers none of them is counted as not answering.
pub const HANDSHAKE_TRIES: u32 = 10;

/// Where a listener is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its turn to send the first `Connect` (connects are paced).
    Idle,
    /// `Connect` sent `tries` times, waiting for `Challenge`.
    Connecting {
        /// Requests sent so far.
        tries: u32,
    },
    /// `Join` sent `tries` times, waiting for `Welcome` or `Reject`.
    Joining {
        /// The cookie to echo.
        cookie: [u8; proto::COOKIE_LEN],
        /// Requests sent so far.
        tries: u32,
    },
    /// Welcomed: receiving audio.
    Joined,
    /// The server refused.
    Rejected(RejectReason),
    /// The server ended the stream.
    Ended(EndReason),
    /// We sent `Leave` at the end of the run.
    Left,
    /// The server never answered the handshake.
    NoAnswer,
}

/// One listener's protocol state and counters.
#[derive(Debug)]
pub struct Listener {
    /// Where it is in the handshake or stream.
    pub phase: Phase,
    /// When it next needs attention (retry, report, first connect).
    pub next_at: Instant,
    /// The stream as the `Welcome` described it.
    pub info: Option<StreamInfo>,
    /// Audio counters, from the `Welcome` on.
    pub seqs: Option<SeqTracker>,
    /// `End.last_seq`, once an `End` arrived.
    pub end_last_seq: Option<u64>,
    /// Datagrams that did not decode, or were unexpected in the current phase.
    pub bad: u64,
    /// When the `Welcome` arrived.
    pub joined_at: Option<Instant>,
    /// When the stream ended for it (`End` received or `Leave` sent).
    pub ended_at: Option<Instant>,
    /// Largest seq the bitmap tracks (bounds memory whatever the server sends).
    window: u64,
    /// Our own counter for control packets' header seq.
    ctrl_seq: u64,
}

impl Listener {
    /// A listener that sends its first `Connect` at `connect_at`, tracking up to `window` seqs.
    pub fn new(connect_at: Instant, window: u64) -> Self {
        Self {
            phase: Phase::Idle,
            next_at: connect_at,
            info: None,
            seqs: None,
            end_last_seq: None,
            bad: 0,
            joined_at: None,
            ended_at: None,
            window,
            ctrl_seq: 0,
        }
    }

    fn packet(&mut self, msg: Message) -> Packet {
        self.ctrl_seq += 1;
        Packet::new(self.ctrl_seq, msg)
    }

    fn connect(&mut self) -> Packet {
        // Header (12) + max_version (1) + length prefix (8): pad the rest up to the minimum.
        let pad = MIN_CONNECT_LEN.saturating_sub(proto::limits::HEADER_LEN + 1 + 8);
        self.packet(Message::Connect(Connect {
            max_version: proto::VERSION,
            padding: Bytes::from(vec![0u8; pad]),
        }))
    }

    /// Whether nothing more will happen to this listener.
    pub fn is_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::Rejected(_) | Phase::Ended(_) | Phase::Left | Phase::NoAnswer
        )
    }

    /// Timers: first connect, handshake retries, reports. Returns the packet to send, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Packet> {
        if now < self.next_at {
            return None;
        }
        match self.phase.clone() {
            Phase::Idle | Phase::Connecting { .. } => {
                let tries = match self.phase {
                    Phase::Connecting { tries } => tries,
                    _ => 0,
                };
                if tries >= HANDSHAKE_TRIES {
                    self.phase = Phase::NoAnswer;
                    return None;
                }
                self.phase = Phase::Connecting { tries: tries + 1 };
                self.next_at = now + HANDSHAKE_RETRY;
                Some(self.connect())
            }
            Phase::Joining { cookie, tries } => {
                if tries >= HANDSHAKE_TRIES {
                    self.phase = Phase::NoAnswer;
                    return None;
                }
                self.phase = Phase::Joining {
                    cookie,
                    tries: tries + 1,
                };
                self.next_at = now + HANDSHAKE_RETRY;
                Some(self.packet(Message::Join(Join { cookie })))
            }
            Phase::Joined => {
                self.next_at = now + REPORT_INTERVAL;
                let report = self.report();
                Some(self.packet(Message::Report(report)))
            }
            _ => {
                self.next_at = now + Duration::from_secs(3600);
                None
            }
        }
    }

    /// The cumulative counters a `Report` carries.
    pub fn report(&self) -> Report {
        let Some(t) = &self.seqs else {
            return Report::default();
        };
        Report {
            received: t.received(),
            lost: t.lost(None),
            late: 0,
            duplicates: t.duplicates(),
            out_of_order: t.out_of_order(),
            highest_seq: t.highest().unwrap_or(0),
            jitter_us: 0,
            buffered_ms: 0,
        }
    }

    /// An audio datagram with `seq` arrived (the worker parsed it on its fast path).
    pub fn on_audio(&mut self, seq: u64) -> Recorded {
        match (&self.phase, &mut self.seqs) {
            (Phase::Joined | Phase::Left | Phase::Ended(_), Some(t)) => t.record(seq),
            _ => {
                // Audio before the Welcome: the server must not send it.
                self.bad += 1;
                Recorded::BeforeStart
            }
        }
    }

    /// A control packet from the server arrived. Returns the packet to answer with, if any.
    pub fn on_packet(&mut self, now: Instant, pkt: Packet) -> Option<Packet> {
        let seq = pkt.seq;
        match (pkt.msg, self.phase.clone()) {
            (Message::Challenge(c), Phase::Connecting { .. } | Phase::Joining { .. }) => {
                // A fresh cookie (also after a retried Connect): echo it now.
                self.phase = Phase::Joining {
                    cookie: c.cookie,
                    tries: 1,
                };
                self.next_at = now + HANDSHAKE_RETRY;
                Some(self.packet(Message::Join(Join { cookie: c.cookie })))
            }
            (Message::Welcome(info), Phase::Joining { .. }) => {
                self.seqs = Some(SeqTracker::new(info.start_seq, self.window));
                self.info = Some(info);
                self.phase = Phase::Joined;
                self.joined_at = Some(now);
                self.next_at = now + REPORT_INTERVAL;
                None
            }
            (Message::Reject(r), Phase::Connecting { .. } | Phase::Joining { .. }) => {
                self.phase = Phase::Rejected(r.reason);
                None
            }
            (Message::End(e), Phase::Joined | Phase::Left) => {
                self.end_last_seq = e.last_seq;
                if self.phase == Phase::Joined {
                    self.ended_at = Some(now);
                }
                self.phase = Phase::Ended(e.reason);
                None
            }
            // Repeated copies of End, a late Welcome or Challenge: harmless.
            (Message::End(_) | Message::Welcome(_) | Message::Challenge(_), _) => None,
            (Message::Audio(_), _) => {
                self.on_audio(seq);
                None
            }
            _ => {
                self.bad += 1;
                None
            }
        }
    }

    /// The run is over: the `Leave` to send if the listener is still in the stream.
    pub fn leave(&mut self, now: Instant) -> Option<Packet> {
        match self.phase {
            Phase::Joined => {
                self.phase = Phase::Left;
                self.ended_at = Some(now);
                Some(self.packet(Message::Leave))
            }
            Phase::Idle | Phase::Connecting { .. } | Phase::Joining { .. } => {
                self.phase = Phase::NoAnswer;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proto::{Challenge, End, Reject, SampleFormat};

    fn info(start_seq: u64) -> StreamInfo {
        StreamInfo {
            sample_rate: 44_100,
            channels: 2,
            format: SampleFormat::S16Le,
            interval_us: 20_000,
            frames_per_packet: 340,
            total_frames: None,
            start_seq,
            start_ts: 0,
            title: "t".into(),
        }
    }

    #[test]
    fn handshake_then_audio_then_end() {
        let t0 = Instant::now();
        let mut l = Listener::new(t0, 1000);
        assert!(
            l.poll(t0)
                .is_some_and(|p| matches!(p.msg, Message::Connect(_)))
        );
        let c = Packet::new(0, Message::Challenge(Challenge { cookie: [7; 16] }));
        let join = l.on_packet(t0, c).unwrap();
        assert_eq!(join.msg, Message::Join(Join { cookie: [7; 16] }));
        assert!(
            l.on_packet(t0, Packet::new(0, Message::Welcome(info(5))))
                .is_none()
        );
        assert_eq!(l.phase, Phase::Joined);
        for s in [5, 6, 8] {
            assert_eq!(l.on_audio(s), Recorded::New);
        }
        let r = l.poll(t0 + REPORT_INTERVAL).unwrap();
        assert!(matches!(
            r.msg,
            Message::Report(Report {
                received: 3,
                lost: 1,
                ..
            })
        ));
        let end = End {
            reason: EndReason::Finished,
            last_seq: Some(9),
        };
        l.on_packet(t0, Packet::new(0, Message::End(end)));
        assert_eq!(l.phase, Phase::Ended(EndReason::Finished));
        assert_eq!(l.seqs.as_ref().unwrap().lost(l.end_last_seq), 2);
        assert!(l.leave(t0).is_none());
    }

    #[test]
    fn connect_is_padded_and_retried_then_gives_up() {
        let t0 = Instant::now();
        let mut l = Listener::new(t0, 10);
        let mut now = t0;
        let mut sent = 0;
        while let Some(p) = l.poll(now) {
            let mut b = bytes::BytesMut::new();
            proto::encode(&p, &mut b).unwrap();
            assert!(b.len() >= MIN_CONNECT_LEN);
            sent += 1;
            now += HANDSHAKE_RETRY;
        }
        assert_eq!(sent, HANDSHAKE_TRIES);
        assert_eq!(l.phase, Phase::NoAnswer);
    }

    #[test]
    fn reject_is_final() {
        let t0 = Instant::now();
        let mut l = Listener::new(t0, 10);
        l.poll(t0);
        let r = Reject {
            reason: RejectReason::Full { max_clients: 1 },
        };
        l.on_packet(t0, Packet::new(0, Message::Reject(r)));
        assert!(l.is_done());
        assert!(l.leave(t0).is_none());
    }
}
