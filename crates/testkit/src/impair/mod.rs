//! An impairment proxy: a UDP relay between listeners and one `streamd` that loses, delays,
//! reorders and duplicates the server's datagrams on purpose, deterministically for a seed, and
//! reports exactly what it did.
//!
//! Layout (sans-IO core, thin tokio shell):
//! - [`Engine`] decides each impaired datagram's fate from the seed alone (no clock);
//! - [`ImpairedLink`] turns decisions into a release schedule over explicit time (one per
//!   client and direction);
//! - [`ProxyCore`] holds the clients, their links and their [`Tally`]s;
//! - [`Proxy`] moves bytes between sockets, timers and the core.
//!
//! Each client address gets its own upstream socket, so the server sees one distinct address
//! per listener. Only the server → client direction is impaired; client → server is relayed
//! untouched (but counted). By default only `Audio` datagrams are impaired: the handshake, `End`
//! and anything undecodable pass unharmed and never overtake audio that arrived before them
//! (see [`ImpairedLink`]). [`Impairment::impair_control`] impairs everything.
//!
//! The report is computed from what the shell really sent, in the order it sent it, not from
//! the plan: see [`report`] for the exact definitions.

mod args;
pub mod engine;
pub mod link;
mod proxy;
mod relay;
pub mod report;

use std::time::Duration;

use serde::Serialize;

pub use args::ImpairArgs;
pub use engine::{Decision, Engine};
pub use link::{ImpairedLink, REORDER_MAX_HOLD, Transmit, Treatment};
pub use proxy::Proxy;
pub use relay::{Dir, MAX_CLIENTS, ProxyCore};
pub use report::{AudioReport, ClientReport, DatagramCounts, DirectionReport, ProxyReport, Tally};

/// Largest `--jitter` accepted: more than any listener buffers, so a larger value is a typo
/// (e.g. a bare `30` read as seconds).
pub const MAX_JITTER: Duration = Duration::from_secs(10);

/// What to do to the server → client traffic. `Default` and [`Impairment::none`] are a
/// transparent relay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Impairment {
    /// Long-run fraction of impaired datagrams dropped, in [0, 1].
    pub loss: f64,
    /// Mean loss-burst length in datagrams (≥ 1); `None` for independent losses. See
    /// [`engine`] for the Gilbert model.
    pub burst: Option<f64>,
    /// Extra delay of each forwarded datagram is uniform in [0, jitter]; a large jitter
    /// reorders datagrams by itself, as a real network would.
    #[serde(rename = "jitter_ms", serialize_with = "ser_ms")]
    pub jitter: Duration,
    /// Fraction of forwarded datagrams held back until the next one has left.
    pub reorder: f64,
    /// Fraction of forwarded datagrams sent twice.
    pub dup: f64,
    /// Seed of every decision: the same seed and datagram sequence give the same decisions.
    pub seed: u64,
    /// Impair every datagram, not only `Audio` (handshake and `End` too).
    pub impair_control: bool,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

impl Default for Impairment {
    fn default() -> Self {
        Self::none()
    }
}

impl Impairment {
    /// A transparent relay: the baseline the tests and the client → server direction use.
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            jitter: Duration::ZERO,
            reorder: 0.0,
            dup: 0.0,
            seed: 0,
            impair_control: false,
        }
    }

    /// A home network at its worst that repair must still hide: 5 % loss in bursts of 3
    /// (Gilbert), 2 % reordering and 1 % duplication, seeded.
    pub fn bursty(seed: u64) -> Self {
        Self {
            loss: 0.05,
            burst: Some(3.0),
            reorder: 0.02,
            dup: 0.01,
            seed,
            ..Self::none()
        }
    }

    /// Checks the values mean what they say; the error names the flag and the value.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("loss", self.loss),
            ("reorder", self.reorder),
            ("dup", self.dup),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("--{name} {v} is outside 0..=1 (0%..=100%)"));
            }
        }
        if let Some(b) = self.burst {
            if !(b >= 1.0 && b.is_finite()) {
                return Err(format!(
                    "--burst {b}: a mean burst length must be at least 1"
                ));
            }
            if self.loss > b / (b + 1.0) && self.loss < 1.0 {
                return Err(format!(
                    "--loss {} with --burst {b}: a Gilbert model with mean bursts of {b} \
                     cannot lose more than {:.1}% in the long run",
                    self.loss,
                    100.0 * b / (b + 1.0)
                ));
            }
        }
        if self.jitter > MAX_JITTER {
            return Err(format!(
                "--jitter {:?} exceeds {:?} (a bare number is seconds: write e.g. 30ms)",
                self.jitter, MAX_JITTER
            ));
        }
        Ok(())
    }
}

/// Parses a rate as users write it: `5%` or `0.05`. Shared by the example CLIs.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate: write e.g. 5% or 0.05"))?;
    let v = v / scale;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}` is outside 0%..=100%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("5%").unwrap(), 0.05);
        assert_eq!(parse_rate("0.25").unwrap(), 0.25);
        assert!(parse_rate("150%").is_err());
        assert!(parse_rate("x").is_err());
    }

    #[test]
    fn validation_names_the_flag() {
        let bad = Impairment {
            loss: 0.9,
            burst: Some(2.0),
            ..Impairment::none()
        };
        assert!(bad.validate().unwrap_err().contains("--burst"));
        let jit = Impairment {
            jitter: Duration::from_secs(30),
            ..Impairment::none()
        };
        assert!(jit.validate().unwrap_err().contains("--jitter"));
        assert!(Impairment::none().validate().is_ok());
    }
}
