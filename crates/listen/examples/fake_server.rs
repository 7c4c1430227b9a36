//! The tests' scripted fake server as a process, for measuring `listen` from outside:
//! `cargo run -p listen --example fake_server -- PORT SECONDS [INTERVAL_MS]` serves one
//! listener `SECONDS` of 48 kHz stereo noise on 127.0.0.1:PORT, then `End{Finished}`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || anyhow::anyhow!("usage: fake_server PORT SECONDS [INTERVAL_MS]");
    let port: u16 = args.get(1).ok_or_else(usage)?.parse()?;
    let secs: u64 = args.get(2).ok_or_else(usage)?.parse()?;
    let mut sc = common::Script::clean(secs * u64::from(common::RATE));
    if let Some(ms) = args.get(3) {
        sc.interval = std::time::Duration::from_millis(ms.parse()?);
    }
    let srv = common::FakeServer::start_on(port, sc).await;
    eprintln!("serving on {}", srv.addr);
    srv.done().await;
    Ok(())
}
