//! The impairment flags as a reusable clap group, so `examples/impair.rs`, the loopback demo
//! and any other tool spell them, parse them and explain them the same way.

use std::time::Duration;

use proto::duration::parse_duration;

use super::{Impairment, parse_rate};

/// `--loss 5% --burst 3 --jitter 30ms --reorder 2% --dup 1% --seed 7 [--impair-control]`:
/// `#[command(flatten)]` it into a tool's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ImpairArgs {
    /// Long-run loss rate of the server's audio datagrams, e.g. 5% or 0.05.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub loss: f64,
    /// Losses come in bursts of this mean length in datagrams (Gilbert model; --loss stays the
    /// long-run rate); independent losses if absent.
    #[arg(long)]
    pub burst: Option<f64>,
    /// Extra delay per datagram, uniform in [0, JITTER], e.g. 30ms.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub jitter: Duration,
    /// Share of datagrams held back until the next one has left, e.g. 2%.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub reorder: f64,
    /// Share of datagrams sent twice, e.g. 1%.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub dup: f64,
    /// Seed of every decision: the same seed and traffic give the same impairments.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Impair control messages (handshake, End) too, not only Audio.
    #[arg(long)]
    pub impair_control: bool,
}

impl ImpairArgs {
    /// The configuration these flags describe (check it with [`Impairment::validate`], which
    /// [`super::Proxy::bind`] also does).
    pub fn impairment(&self) -> Impairment {
        Impairment {
            loss: self.loss,
            burst: self.burst,
            jitter: self.jitter,
            reorder: self.reorder,
            dup: self.dup,
            seed: self.seed,
            impair_control: self.impair_control,
        }
    }

    /// Whether any impairment is asked for: a tool can skip the proxy altogether when not.
    pub fn is_active(&self) -> bool {
        let i = self.impairment();
        i.loss > 0.0 || !i.jitter.is_zero() || i.reorder > 0.0 || i.dup > 0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        imp: ImpairArgs,
    }

    #[test]
    fn a_full_command_line_parses() {
        let cli = Cli::try_parse_from([
            "x",
            "--loss",
            "5%",
            "--burst",
            "3",
            "--jitter",
            "30ms",
            "--reorder",
            "2%",
            "--dup",
            "1%",
            "--seed",
            "7",
        ])
        .unwrap();
        let i = cli.imp.impairment();
        assert_eq!(
            i,
            Impairment {
                loss: 0.05,
                burst: Some(3.0),
                jitter: Duration::from_millis(30),
                reorder: 0.02,
                dup: 0.01,
                seed: 7,
                impair_control: false,
            }
        );
        assert!(i.validate().is_ok() && cli.imp.is_active());
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert!(!none.imp.is_active());
        assert_eq!(none.imp.impairment(), Impairment::none());
        assert!(Cli::try_parse_from(["x", "--loss", "120%"]).is_err());
    }
}
