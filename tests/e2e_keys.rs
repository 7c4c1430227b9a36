//! Private rooms end to end: `streamd --gen-key` writes a room key only its owner can read,
//! and never overwrites one; an open room's wire, captured by a relay, carries the source's
//! PCM in the clear (what a key exists to prevent), and the check that finds it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// Type code of `Sealed` in the header (docs/PROTOCOL.md).
const SEALED: u8 = 64;

/// `streamd --gen-key PATH`: its exit code and stderr.
fn gen_key(path: &Path) -> (i32, String) {
    let out = Command::new(bin("streamd"))
        .arg("--gen-key")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let (code, err) = gen_key(&path);
    assert_eq!(code, 0, "streamd --gen-key: {err}");
    path
}

/// A UDP relay between one listener and the server that keeps every datagram the server
/// sends. With `mischief`, after every 10th sealed audio datagram it also sends the listener
/// a replay of it, a copy with one ciphertext bit flipped, and a forgery under a fresh seq,
/// counting each.
struct Relay {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    injected: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(server: SocketAddr, mischief: bool) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up = UdpSocket::bind("127.0.0.1:0").unwrap();
        up.connect(server).unwrap();
        for s in [&front, &up] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let injected = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (front2, up2) = (front.try_clone().unwrap(), up.try_clone().unwrap());
        let (c1, s1) = (client.clone(), stop.clone());
        let upward = std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            while !s1.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    *c1.lock().unwrap() = Some(from);
                    let _ = up.send(&buf[..n]);
                }
            }
        });
        let (c2, s2, cap, inj) = (client, stop.clone(), captured.clone(), injected.clone());
        let downward = std::thread::spawn(move || {
            let mut buf = [0u8; 9000];
            let mut sealed_audio = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let Ok(n) = up2.recv(&mut buf) else { continue };
                let d = buf[..n].to_vec();
                cap.lock().unwrap().push(d.clone());
                let Some(to) = *c2.lock().unwrap() else {
                    continue;
                };
                let _ = front2.send_to(&d, to);
                if mischief && d[3] == SEALED && n > 200 {
                    sealed_audio += 1;
                    if sealed_audio % 10 == 0 {
                        let mut tampered = d.clone();
                        tampered[n - 20] ^= 0x10;
                        let mut forged = d.clone();
                        forged[4..12].copy_from_slice(&(1_000_000 + sealed_audio).to_le_bytes());
                        for extra in [&d, &tampered, &forged] {
                            let _ = front2.send_to(extra, to);
                            inj.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            captured,
            injected,
            stop,
            threads: vec![upward, downward],
        }
    }

    fn finish(mut self) -> (Vec<Vec<u8>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let captured = std::mem::take(&mut *self.captured.lock().unwrap());
        (captured, self.injected.load(Ordering::Relaxed))
    }
}

/// How many captured datagrams contain a 16-byte run of the source's PCM (sample-aligned
/// in the source, at any offset in the datagram). Runs with fewer than 8 distinct byte values
/// (silence, fades) are skipped: those could match a header's zeros.
fn pcm_runs_on_wire(source: &[i16], captured: &[Vec<u8>]) -> usize {
    const RUN: usize = 16;
    let bytes: Vec<u8> = source.iter().flat_map(|s| s.to_le_bytes()).collect();
    let runs: HashSet<&[u8]> = bytes
        .windows(RUN)
        .step_by(2)
        .filter(|w| w.iter().collect::<HashSet<_>>().len() >= 8)
        .collect();
    assert!(runs.len() > 1000, "the fixture has too little varied audio");
    captured
        .iter()
        .filter(|d| d.windows(RUN).any(|w| runs.contains(w)))
        .count()
}

#[test]
fn gen_key_writes_a_private_key_once() {
    let dir = tempdir();
    let path = new_key(dir.path(), "room.key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    let (code, err) = gen_key(&path);
    assert_ne!(code, 0, "overwrote an existing key");
    assert!(
        err.contains("room.key") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the key was changed"
    );
}

/// An open room through the relay: the listener still plays sample-exact, and the captured
/// datagrams hold runs of the source's PCM, found by the same check a private room must pass
/// with zero.
#[test]
fn an_open_room_carries_its_pcm_in_the_clear() {
    let file = fixture("stereo44.wav");
    let (_, expected) = streamd::source::decode_all(&file).unwrap();
    let dir = tempdir();
    let mut open = Server::start(&file, &["--interval", "20ms"]);
    let relay = Relay::start(open.addr, false);
    let mut l = Listener::start(relay.addr, dir.path(), "open", &["--latency", "200ms"]);
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    assert_eq!(open.proc.exit_code(SLOW), 0, "{}", open.proc.stderr());
    let (captured, injected) = relay.finish();
    assert_eq!(injected, 0);
    let (_, got) = l.samples();
    assert_eq!(first_difference(&got, &expected), None, "through the relay");
    assert!(
        !captured.iter().any(|d| d[3] == SEALED),
        "an open room sealed something"
    );
    let audio = captured.iter().filter(|d| d[3] == 6).count();
    assert!(audio > 50, "only {audio} audio datagrams captured");
    assert!(
        pcm_runs_on_wire(&expected, &captured) > audio / 2,
        "the PCM check finds too little"
    );
}
