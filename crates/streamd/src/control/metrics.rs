//! `GET /metrics`: a [`Snapshot`] in the Prometheus text exposition format (version 0.0.4),
//! written by hand: a `# HELP` and `# TYPE` line per family, counters named `*_total`, label
//! values escaped, and the tick-lateness histogram as cumulative `_bucket{le=…}` lines with
//! `+Inf`, `_sum` and `_count`.

use std::fmt::Write;

use super::{LATENESS_BUCKETS, Snapshot};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of `snap` as Prometheus text.
pub fn render(snap: &Snapshot) -> String {
    let st = &snap.status;
    let c = &st.counters;
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {}", number(*v));
        }
    };
    family(
        "streamd_listeners",
        "gauge",
        "Listeners joined now.",
        &[("", st.listeners as f64)],
    );
    family(
        "streamd_capacity",
        "gauge",
        "Most listeners accepted at once.",
        &[("", st.capacity as f64)],
    );
    family(
        "streamd_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &[("", st.uptime_s)],
    );
    family(
        "streamd_position_seconds",
        "gauge",
        "Seconds of audio streamed.",
        &[("", st.position_s)],
    );
    family(
        "streamd_audio_datagrams_total",
        "counter",
        "Distinct Audio datagrams produced.",
        &[("", c.audio_datagrams as f64)],
    );
    family(
        "streamd_datagrams_sent_total",
        "counter",
        "Datagrams handed to the kernel, every copy to every listener.",
        &[("", c.datagrams_sent as f64)],
    );
    family(
        "streamd_bytes_sent_total",
        "counter",
        "Bytes in the datagrams sent.",
        &[("", c.bytes_sent as f64)],
    );
    family(
        "streamd_send_drops_total",
        "counter",
        "Datagrams not sent, by reason.",
        &[
            ("{reason=\"buffer_full\"}", c.drops.buffer_full as f64),
            ("{reason=\"unreachable\"}", c.drops.unreachable as f64),
            ("{reason=\"other\"}", c.drops.other as f64),
        ],
    );
    family(
        "streamd_handshakes_total",
        "counter",
        "Handshake steps by outcome.",
        &[
            ("{outcome=\"challenged\"}", c.handshakes.challenged as f64),
            ("{outcome=\"accepted\"}", c.handshakes.accepted as f64),
            ("{outcome=\"rejected\"}", c.handshakes.rejected as f64),
            ("{outcome=\"bad_cookie\"}", c.handshakes.bad_cookie as f64),
        ],
    );
    family(
        "streamd_departures_total",
        "counter",
        "Listeners gone, by how.",
        &[
            ("{how=\"left\"}", c.left as f64),
            ("{how=\"evicted\"}", c.evicted as f64),
        ],
    );
    let name = "streamd_tick_lateness_seconds";
    let h = &snap.lateness;
    let _ = writeln!(
        out,
        "# HELP {name} How late the endpoint's timer was served after its deadline."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, n) in LATENESS_BUCKETS.iter().zip(h.counts) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", number(*le));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", number(h.sum));
    let _ = writeln!(out, "{name}_count {}", h.count);
    out
}

/// A sample value as the format writes it (`+Inf`, `-Inf`, `NaN`, else Rust's shortest form).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    /// A strict reader of the text format: every sample line belongs to the family whose
    /// `# TYPE` came last, names and labels are well formed, values parse.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut family: Option<(String, String)> = None;
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                family = Some((name.into(), kind.into()));
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            let (fam, kind) = family.clone().unwrap();
            match kind.as_str() {
                "histogram" => assert!(
                    [
                        format!("{fam}_bucket"),
                        format!("{fam}_sum"),
                        format!("{fam}_count")
                    ]
                    .contains(&name.to_string()),
                    "{line}"
                ),
                _ => assert_eq!(name, fam, "{line}"),
            }
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    let inner = labels.strip_prefix('{').unwrap().strip_suffix('}').unwrap();
                    for pair in inner.split(',') {
                        let (k, v) = pair.split_once('=').unwrap();
                        assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                        assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                    }
                }
            }
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            assert!(samples.insert(series.to_string(), v).is_none(), "{line}");
        }
        samples
    }

    #[test]
    fn renders_every_family_strictly() {
        let mut snap = Snapshot::default();
        snap.status.listeners = 2;
        snap.status.capacity = 32;
        snap.status.counters.datagrams_sent = 1234;
        snap.status.counters.drops.unreachable = 7;
        snap.status.counters.handshakes.accepted = 3;
        snap.lateness.observe(Duration::from_micros(50));
        snap.lateness.observe(Duration::from_millis(3));
        snap.lateness.observe(Duration::from_secs(2));
        let m = parse(&render(&snap));
        assert_eq!(m["streamd_listeners"], 2.0);
        assert_eq!(m["streamd_capacity"], 32.0);
        assert_eq!(m["streamd_datagrams_sent_total"], 1234.0);
        assert_eq!(m["streamd_send_drops_total{reason=\"unreachable\"}"], 7.0);
        assert_eq!(m["streamd_send_drops_total{reason=\"buffer_full\"}"], 0.0);
        assert_eq!(m["streamd_handshakes_total{outcome=\"accepted\"}"], 3.0);
        let b = |le: &str| m[&format!("streamd_tick_lateness_seconds_bucket{{le=\"{le}\"}}")];
        assert_eq!(b("0.0001"), 1.0);
        assert_eq!(b("0.002"), 1.0);
        assert_eq!(b("0.005"), 2.0);
        assert_eq!(b("0.5"), 2.0);
        assert_eq!(b("+Inf"), 3.0);
        assert_eq!(m["streamd_tick_lateness_seconds_count"], 3.0);
        assert!((m["streamd_tick_lateness_seconds_sum"] - 2.00305).abs() < 1e-9);
    }

    #[test]
    fn special_values() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(3.0), "3");
    }
}
