//! Fidelity: every fixture format streamed over loopback with nothing lost comes out of `listen`
//! sample for sample as `streamd` decoded it, no longer and no shorter, with exact statistics.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const FIXTURES: &[&str] = &[
    "stereo44.wav",
    "stereo44.mp3",
    "stereo44.flac",
    "stereo44.ogg",
    "stereo44.m4a",
    "mono22.wav",
    "mono22.mp3",
];

fn stream_one(name: &str) -> Result<(), String> {
    let file = fixture(name);
    let (info, expected) = streamd::source::decode_all(&file).map_err(|e| e.to_string())?;
    let dir = tempdir();
    let mut server = Server::start(&file, &["--interval", "20ms"]);
    let mut listener = Listener::start(server.addr, dir.path(), "l", &["--latency", "200ms"]);
    let code = listener.proc.exit_code(SLOW);
    if code != 0 {
        return Err(format!(
            "{name}: listen exited {code}: {}",
            listener.proc.stderr()
        ));
    }
    let server_code = server.proc.exit_code(SLOW);
    if server_code != 0 {
        return Err(format!(
            "{name}: streamd exited {server_code}: {}",
            server.proc.stderr()
        ));
    }
    let (spec, got) = listener.samples();
    if spec.sample_rate != info.sample_rate || spec.channels != info.channels {
        return Err(format!("{name}: WAV is {spec:?}, stream is {info:?}"));
    }
    if let Some(i) = first_difference(&got, &expected) {
        return Err(format!(
            "{name}: WAV differs from the decoded file at sample {i} (WAV {} samples, decoded {})",
            got.len(),
            expected.len()
        ));
    }
    let s = listener.stats();
    for (key, want) in [
        ("lost", 0),
        ("out_of_order", 0),
        ("duplicates", 0),
        ("late", 0),
    ] {
        if stat(&s, key) != want {
            return Err(format!(
                "{name}: {key} = {} (want {want}): {s}",
                stat(&s, key)
            ));
        }
    }
    if stat(&s, "expected") != stat(&s, "received") || stat(&s, "received") == 0 {
        return Err(format!("{name}: expected != received: {s}"));
    }
    if s["end_reason"] != "finished" {
        return Err(format!("{name}: end_reason {}", s["end_reason"]));
    }
    Ok(())
}

#[test]
fn every_fixture_arrives_sample_exact() {
    // Two at a time: real-time streams, on a 2-core machine shared with the rest of the suite.
    let mut failures = Vec::new();
    for pair in FIXTURES.chunks(2) {
        let handles: Vec<_> = pair
            .iter()
            .map(|n| std::thread::spawn(move || stream_one(n)))
            .collect();
        for h in handles {
            if let Err(e) = h.join().unwrap() {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
