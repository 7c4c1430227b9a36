//! Recovery curves: how much audio still reaches the speaker missing, by loss rate, with
//! FEC, retransmission or both, on simulated time.
//!
//! A 48 kHz stereo PCM stream (343 frames, 1,372 bytes per datagram, one every 7.15 ms) runs
//! through [`repair::Sender`] and [`repair::Receiver`] over a link with Gilbert burst loss
//! (parity and resends are lost like audio; Nacks are not), a fixed one-way delay each way,
//! and a playout delay: a datagram counts as concealed when none of its copies reaches the
//! listener by send time + one-way delay + playout delay.
//!
//! `cargo run --release -p repair --example recovery -- [burst] [one_way_ms] [playout_ms] [K,M]`

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use repair::{Delivery, FecParams, NackConfig, NackRequest, Receiver, Sender, SenderConfig};

const FRAMES: u64 = 343;
const RATE: u64 = 48_000;
const PAYLOAD: usize = (FRAMES * 4) as usize;

/// Gilbert loss: mean `loss`, mean burst length `burst`.
struct Gilbert {
    bad: bool,
    p_gb: f64,
    p_bg: f64,
}

impl Gilbert {
    fn new(loss: f64, burst: f64) -> Self {
        let p_bg = 1.0 / burst;
        let p_gb = if loss >= 1.0 {
            1.0
        } else {
            loss * p_bg / (1.0 - loss)
        };
        Gilbert {
            bad: false,
            p_gb,
            p_bg,
        }
    }
    fn lost(&mut self, rng: &mut ChaCha8Rng) -> bool {
        let x: f64 = rng.random();
        self.bad = if self.bad {
            x >= self.p_bg
        } else {
            x < self.p_gb
        };
        self.bad
    }
}

enum Ev {
    Send(u64),
    Arrive(u64),
    Parity(repair::ParityShard),
    Resent(repair::Resend),
    Nack(NackRequest),
}

/// What one run measured.
struct Outcome {
    concealed: f64,
    network_lost: f64,
    repair_bytes: f64,
}

#[allow(clippy::too_many_arguments)]
fn run(
    loss: f64,
    burst: f64,
    fec: Option<FecParams>,
    retransmit: bool,
    one_way: Duration,
    playout: Duration,
    seconds: u64,
    seed: u64,
) -> Outcome {
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut link = Gilbert::new(loss, burst);
    let period = Duration::from_nanos(FRAMES * 1_000_000_000 / RATE);
    let n = seconds * RATE / FRAMES;
    let mut sender: Sender<u8> = Sender::new(SenderConfig {
        fec,
        retransmit: if retransmit {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        },
        byte_rate: RATE * 4,
    });
    let mut receiver = Receiver::new(fec, retransmit, NackConfig::default());
    receiver.on_rtt_sample(2 * one_way);
    // Deadlines here follow the send schedule from the start, as a playing listener's do.
    receiver.set_playing(true);
    let mut events: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut payloads: Vec<Ev> = Vec::new();
    let mut on_time = vec![false; n as usize];
    let mut lost = 0u64;
    let mut order = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, payloads: &mut Vec<Ev>, at: Instant, ev: Ev| {
        order += 1;
        payloads.push(ev);
        events.push(Reverse((at, order, payloads.len() - 1)));
    };
    for seq in 0..n {
        push(
            &mut events,
            &mut payloads,
            t0 + period * seq as u32,
            Ev::Send(seq),
        );
    }
    let deadline = |seq: u64| t0 + period * seq as u32 + one_way + playout;
    let data = |seq: u64| Bytes::from(vec![(seq % 251) as u8; PAYLOAD]);
    let mut out: Vec<Delivery> = Vec::new();
    let mut resends = Vec::new();
    let mut clock = t0;
    loop {
        let next_nack = receiver.poll_timeout().filter(|_| retransmit);
        let next_ev = events.peek().map(|Reverse((t, _, _))| *t);
        let now = match (next_ev, next_nack) {
            (None, None) => break,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
        };
        let now = now.max(clock);
        clock = now;
        if next_ev.is_some_and(|t| t <= now)
            && let Some(Reverse((_, _, i))) = events.pop()
        {
            match std::mem::replace(&mut payloads[i], Ev::Send(u64::MAX)) {
                Ev::Send(seq) => {
                    // The server sends it (and maybe parity) now; the listener gets them later.
                    let parity = sender.on_audio(now, seq, seq * FRAMES, &data(seq));
                    if link.lost(&mut rng) {
                        lost += 1;
                    } else {
                        push(&mut events, &mut payloads, now + one_way, Ev::Arrive(seq));
                    }
                    for s in parity {
                        if !link.lost(&mut rng) {
                            push(&mut events, &mut payloads, now + one_way, Ev::Parity(s));
                        }
                    }
                }
                Ev::Arrive(seq) => {
                    receiver.on_audio(now, seq, seq * FRAMES, &data(seq), deadline(seq), &mut out);
                }
                Ev::Parity(s) => {
                    let _ =
                        receiver.on_parity(now, s.group_seq, s.k, s.m, s.index, &s.shard, &mut out);
                }
                Ev::Resent(r) => receiver.on_resent(now, r.seq, r.ts, &r.payload, &mut out),
                Ev::Nack(req) => {
                    resends.clear();
                    sender.on_nack(now, &0, req, &mut resends);
                    for r in resends.drain(..) {
                        if !link.lost(&mut rng) {
                            push(&mut events, &mut payloads, now + one_way, Ev::Resent(r));
                        }
                    }
                }
            }
        }
        for d in out.drain(..) {
            if now <= deadline(d.seq) {
                on_time[d.seq as usize] = true;
            }
        }
        while let Some(req) = receiver.poll_nack(now) {
            push(&mut events, &mut payloads, now + one_way, Ev::Nack(req));
        }
    }
    let concealed = on_time.iter().filter(|x| !**x).count() as f64;
    if std::env::var_os("RECOVERY_DEBUG").is_some() {
        eprintln!(
            "sender {:?} receiver {:?} planner {:?} rtt {:?} rto {:?}",
            sender.stats(),
            receiver.stats(),
            receiver.planner().map(|p| p.stats()),
            receiver.planner().map(|p| p.rtt()),
            receiver.planner().map(|p| p.rto())
        );
    }
    let st = sender.stats();
    let stream_bytes = (n as usize * PAYLOAD) as f64;
    Outcome {
        concealed: 100.0 * concealed / n as f64,
        network_lost: 100.0 * lost as f64 / n as f64,
        repair_bytes: 100.0 * (st.parity_bytes + st.resent_bytes) as f64 / stream_bytes,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| -> f64 { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) };
    let burst = num(0, 3.0);
    let one_way = Duration::from_millis(num(1, 20.0) as u64);
    let playout = Duration::from_millis(num(2, 100.0) as u64);
    let fec = args
        .get(3)
        .and_then(|s| s.split_once(','))
        .and_then(|(k, m)| FecParams::new(k.parse().ok()?, m.parse().ok()?).ok())
        .or_else(|| FecParams::new(8, 2).ok());
    let seconds = 120;
    println!(
        "burst {burst}, one-way {} ms, playout {} ms, fec {:?}, {seconds} s of 48 kHz stereo PCM per point",
        one_way.as_millis(),
        playout.as_millis(),
        fec.map(|f| (f.k(), f.m()))
    );
    println!(
        "| loss % | lost % | concealed %: none | fec | retransmit | both | repair bytes %: fec | retransmit | both |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for loss in std::env::var("RECOVERY_LOSS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|l| vec![l])
        .unwrap_or(vec![1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0])
    {
        let p = loss / 100.0;
        let none = run(p, burst, None, false, one_way, playout, seconds, 1);
        let f = run(p, burst, fec, false, one_way, playout, seconds, 1);
        let r = run(p, burst, None, true, one_way, playout, seconds, 1);
        let b = run(p, burst, fec, true, one_way, playout, seconds, 1);
        println!(
            "| {loss} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |",
            none.network_lost,
            none.concealed,
            f.concealed,
            r.concealed,
            b.concealed,
            f.repair_bytes,
            r.repair_bytes,
            b.repair_bytes
        );
    }
}
