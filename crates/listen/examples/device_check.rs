//! Manual check of the device path: streamd's core on 127.0.0.1 (the tests' shell, in
//! tests/common) streams `SECONDS` of 48 kHz stereo noise, `listen::run` plays it through the
//! default cpal device (or `DEVICE`), and the source is written as raw s16le to `EXPECTED` for
//! comparison with a capture (on a machine without a sound card: a private PulseAudio with a
//! pipe sink, as `testkit::pulse` runs).
//!
//! `cargo run -p listen --example device_check -- EXPECTED.raw [SECONDS] [DEVICE]`
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let expected = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: device_check EXPECTED.raw [SECONDS] [DEVICE]"))?;
    let secs: u64 = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let total = secs * u64::from(common::RATE);
    let mut f = std::fs::File::create(expected)?;
    for s in common::source(total) {
        f.write_all(&s.to_le_bytes())?;
    }
    let srv = common::Streamd::start(common::Script::clean(total)).await;
    let mut c = listen::Config::new(srv.addr.to_string());
    c.device = args.get(3).cloned();
    let t = std::time::Instant::now();
    let o = listen::run(c, std::future::pending()).await?;
    eprintln!("{:?} in {:?}", o.end_reason, t.elapsed());
    Ok(())
}
