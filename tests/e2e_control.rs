//! The control plane (`streamd --http`) over real HTTP against the real binary with two real
//! listeners (testkit peers, which report once a second): the status and listeners JSON,
//! `/metrics` read by a strict text-format parser, the event stream, a kick (the listener gets
//! `End{Kicked}` and the count drops), a live capacity of 1 (the next listener gets
//! `Reject{Full}`), 401 without the token, 404 for an unknown listener, 4xx for malformed
//! requests (and garbage bytes), the token off loopback, usage errors of `--http-token`, and
//! `--http` on a port in use.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use proto::{EndReason, Message, RejectReason};

const TOKEN: &str = "e2e-token-1234";

/// A small HTTP client for the control plane: every answer as (status, body).
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(SLOW))
            .build()
            .into();
        Api {
            agent,
            base: format!("http://{addr}"),
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut r = req.call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut r = req.send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path, None);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The control plane's address from streamd's `control plane on http://ADDR/` line.
fn http_addr(server: &Server) -> SocketAddr {
    let line = server
        .proc
        .wait_for_line("control plane on", SLOW)
        .unwrap_or_else(|| panic!("no control plane line:\n{}", server.proc.stderr()));
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// An error body is JSON with an `error` string.
fn assert_error(code: u16, body: &str, want: u16) {
    assert_eq!(code, want, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

/// A strict reader of the Prometheus text format (0.0.4): `# HELP`/`# TYPE` before their
/// samples, every sample in the family declared last, well-formed names and labels, values
/// that parse, no series twice.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut family: Option<(String, String)> = None;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let (fam, kind) = family.clone().expect("sample before # TYPE");
        if kind == "histogram" {
            let suffix = name.strip_prefix(fam.as_str()).unwrap();
            assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line}");
        } else {
            assert_eq!(name, fam, "{line}");
        }
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap();
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().unwrap(),
        };
        assert!(out.insert(series.to_string(), v).is_none(), "twice: {line}");
    }
    out
}

#[test]
fn the_control_plane_shows_kicks_and_limits_two_real_listeners() {
    let clip = demo_clip();
    let server = Server::start(
        &clip,
        &["--loop", "--http", "127.0.0.1:0", "--http-token", TOKEN],
    );
    let api = Api::new(http_addr(&server));

    let a = RawListener::join(server.addr);
    let b = RawListener::join(server.addr);
    let (a_addr, b_addr) = (a.peer.local_addr(), b.peer.local_addr());

    // Both listed, each with a report (they report once a second).
    let listeners = poll(&api, "/api/listeners", |v| {
        let rows = v.as_array().unwrap();
        rows.len() == 2 && rows.iter().all(|r| r["report"].is_object())
    });
    let addrs: Vec<&str> = listeners
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    let mut want = vec![a_addr.to_string(), b_addr.to_string()];
    want.sort();
    assert_eq!(addrs, want);
    for row in listeners.as_array().unwrap() {
        assert!(
            row["joined_at_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{row}"
        );
        let r = &row["report"];
        for k in [
            "received",
            "lost",
            "late",
            "duplicates",
            "out_of_order",
            "highest_seq",
            "jitter_us",
            "buffered_ms",
        ] {
            assert!(r[k].is_u64(), "{k} in {row}");
        }
    }

    let st = api.json("/api/status");
    assert_eq!(st["source"], clip.display().to_string());
    assert_eq!(st["sample_rate"], a.info.sample_rate);
    assert_eq!(st["channels"], a.info.channels);
    assert_eq!(st["interval_ms"], 20.0);
    assert_eq!(st["started"], true);
    assert!(st["position_s"].as_f64().unwrap() > 0.0, "{st}");
    assert!(st["uptime_s"].as_f64().unwrap() > 0.0, "{st}");
    assert_eq!(st["listeners"], 2);
    assert_eq!(st["capacity"], 32);
    let c = &st["counters"];
    assert!(c["datagrams_sent"].as_u64().unwrap() > 0, "{st}");
    assert!(c["bytes_sent"].as_u64().unwrap() > c["datagrams_sent"].as_u64().unwrap());
    assert_eq!(c["handshakes"]["accepted"], 2);
    assert!(c["handshakes"]["challenged"].as_u64().unwrap() >= 2);
    for k in ["buffer_full", "unreachable", "other"] {
        assert!(c["drops"][k].is_u64(), "{k} in {st}");
    }

    // Metrics, strictly parsed.
    let (code, text) = api.get("/metrics", None);
    assert_eq!(code, 200, "{text}");
    let m = parse_prometheus(&text);
    assert_eq!(m["streamd_listeners"], 2.0);
    assert_eq!(m["streamd_capacity"], 32.0);
    assert!(m["streamd_datagrams_sent_total"] > 0.0);
    assert!(m["streamd_bytes_sent_total"] > 0.0);
    assert!(m.contains_key("streamd_send_drops_total{reason=\"buffer_full\"}"));
    assert_eq!(m["streamd_handshakes_total{outcome=\"accepted\"}"], 2.0);
    let ticks = m["streamd_tick_lateness_seconds_count"];
    assert!(ticks > 0.0, "no tick observed");
    assert_eq!(
        m["streamd_tick_lateness_seconds_bucket{le=\"+Inf\"}"],
        ticks
    );

    // The event stream: a snapshot at once, with both listeners.
    let first = first_event(api.base.trim_start_matches("http://"));
    assert_eq!(first["status"]["listeners"], 2, "{first}");
    assert_eq!(first["listeners"].as_array().unwrap().len(), 2);

    // No token, a wrong token: 401 for the actions.
    let kick = format!("/api/listeners/{a_addr}/kick");
    let (code, body) = api.post(&kick, None, "");
    assert_error(code, &body, 401);
    let (code, body) = api.post(&kick, Some("wrong-token-xx"), "");
    assert_error(code, &body, 401);
    let (code, body) = api.post("/api/max-clients", None, r#"{"max_clients": 1}"#);
    assert_error(code, &body, 401);
    // Unknown listener 404, not an address 400, wrong method 405, unknown route 404.
    let (code, body) = api.post("/api/listeners/127.0.0.1:9/kick", Some(TOKEN), "");
    assert_error(code, &body, 404);
    let (code, body) = api.post("/api/listeners/not-an-address/kick", Some(TOKEN), "");
    assert_error(code, &body, 400);
    let (code, body) = api.get(&kick, Some(TOKEN));
    assert_error(code, &body, 405);
    let (code, body) = api.get("/api/nothing-here", None);
    assert_error(code, &body, 404);
    // Malformed and out-of-range capacities.
    for bad in [
        "",
        "{",
        "[1]",
        r#"{"max_clients": "2"}"#,
        r#"{"max_clients": 2, "x": 1}"#,
    ] {
        let (code, body) = api.post("/api/max-clients", Some(TOKEN), bad);
        assert_error(code, &body, 400);
    }
    for bad in [r#"{"max_clients": 0}"#, r#"{"max_clients": 100001}"#] {
        let (code, body) = api.post("/api/max-clients", Some(TOKEN), bad);
        assert_error(code, &body, 422);
    }
    // Garbage bytes instead of HTTP: 400, and the server serves on.
    let answer = raw_exchange(
        api.base.trim_start_matches("http://"),
        b"\x16\x03\x01garbage\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(api.json("/api/status")["capacity"], 32, "no change yet");

    // Kick a: it gets End{Kicked}; the count drops to 1.
    let (code, body) = api.post(&kick, Some(TOKEN), "");
    assert_eq!(code, 200, "{body}");
    let end = a.wait_for("End after the kick", |s| s.ends.first().map(|(_, e)| *e));
    assert_eq!(end.reason, EndReason::Kicked);
    poll(&api, "/api/status", |v| v["listeners"] == 1);
    let rows = api.json("/api/listeners");
    assert_eq!(rows[0]["address"], b_addr.to_string());
    let (code, body) = api.post(&kick, Some(TOKEN), "");
    assert_error(code, &body, 404);

    // Capacity 1 with b joined: a new listener is refused as full.
    let (code, body) = api.post("/api/max-clients", Some(TOKEN), r#"{"max_clients": 1}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.json("/api/status")["capacity"], 1);
    let config = testkit::peer::PeerConfig {
        timeout: SLOW,
        ..Default::default()
    };
    let c = testkit::peer::Listener::join(server.addr, config).unwrap();
    let reject = c
        .wait(SLOW, |s| {
            s.control.iter().find_map(|(_, m)| match m {
                Message::Reject(r) => Some(r.reason),
                _ => None,
            })
        })
        .expect("a Reject");
    assert_eq!(reject, RejectReason::Full { max_clients: 1 });
    assert_eq!(api.json("/api/status")["listeners"], 1);
    drop(b);
}

#[test]
fn off_loopback_reads_need_the_token_and_a_generated_one_is_logged() {
    let clip = demo_clip();
    // Bound to every address; the test only talks to it over loopback.
    let server = Server::start(&clip, &["--loop", "--http", "0.0.0.0:0"]);
    let line = server.proc.wait_for_line("generated token", SLOW).unwrap();
    let token = line
        .split("generated token: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 32, "{line}");
    let port = http_addr(&server).port();
    let api = Api::new(SocketAddr::from(([127, 0, 0, 1], port)));
    for path in ["/api/status", "/api/listeners", "/metrics", "/api/events"] {
        let (code, body) = api.get(path, None);
        assert_error(code, &body, 401);
    }
    let (code, body) = api.get("/api/status", Some(&token));
    assert_eq!(code, 200, "{body}");
    let (code, body) = api.get(&format!("/api/listeners?token={token}"), None);
    assert_eq!(code, 200, "{body}");
    // The page itself holds no data.
    let (code, body) = api.get("/", None);
    assert_eq!(code, 200);
    assert!(body.contains("EventSource"), "{body}");
}

#[test]
fn a_bad_token_or_a_token_without_http_is_a_usage_error() {
    let clip = demo_clip().display().to_string();
    for extra in [
        &["--http", "127.0.0.1:0", "--http-token", "short"][..],
        &["--http", "127.0.0.1:0", "--http-token", "has space in it"],
        &["--http-token", "long-enough-token"],
    ] {
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--port", "0", "--file", &clip]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(&bin("streamd"), &args, &[]);
        assert_eq!(p.exit_code(SLOW), 2, "{extra:?}: {}", p.stderr());
        assert!(p.stderr().contains("--http"), "{}", p.stderr());
    }
}

#[test]
fn http_on_a_port_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--file",
        &demo_clip().display().to_string(),
        "--http",
        &addr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn(&bin("streamd"), &args, &[]);
    assert_eq!(p.exit_code(SLOW), 1, "{}", p.stderr());
    let err = p.stderr();
    assert!(
        err.contains(&addr.to_string()) && err.contains("--http"),
        "{err}"
    );
}

/// GETs `path` until `done` holds of its JSON (deadline [`SLOW`]); returns that JSON.
fn poll(
    api: &Api,
    path: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let mut ok = false;
    wait_until(path, SLOW, || {
        last = api.json(path);
        ok = done(&last);
        ok
    });
    assert!(ok, "{path}: {last}");
    last
}

/// The first `snapshot` event of `/api/events`, parsed.
fn first_event(host: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(SLOW)).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut saw_event = false;
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed");
        let l = line.trim_end();
        if l == "event: snapshot" {
            saw_event = true;
        } else if let Some(data) = l.strip_prefix("data: ")
            && saw_event
        {
            return serde_json::from_str(data).unwrap();
        }
    }
}

/// Sends `bytes` on a fresh connection and reads the answer until the server closes it.
fn raw_exchange(host: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(SLOW)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `listen --name` travels in the Join: the API lists the listener under its name, and when it
/// is interrupted its Leave's reason reaches the server's log and the departures the dashboard
/// shows.
#[test]
fn a_named_listener_is_listed_by_name_and_its_leave_says_why() {
    let clip = demo_clip();
    let server = Server::start(
        &clip,
        &["--loop", "--http", "127.0.0.1:0", "--http-token", TOKEN],
    );
    let api = Api::new(http_addr(&server));
    let dir = tempdir();
    let mut l = Listener::start(server.addr, dir.path(), "kitchen", &["--name", "kitchen"]);
    let rows = poll(&api, "/api/listeners", |v| {
        v.as_array().is_some_and(|r| r.len() == 1)
    });
    assert_eq!(rows[0]["name"], "kitchen", "{rows}");
    assert!(
        server
            .proc
            .wait_for_line("\"kitchen\" at seq", SLOW)
            .is_some(),
        "{}",
        server.proc.stderr()
    );
    l.proc.signal("INT");
    assert_eq!(l.proc.exit_code(SLOW), 0, "{}", l.proc.stderr());
    let line = server
        .proc
        .wait_for_line("\"kitchen\" left:", SLOW)
        .unwrap_or_else(|| panic!("no leave line; stderr:\n{}", server.proc.stderr()));
    assert!(line.contains("left: interrupted"), "{line}");
    let first = first_event(api.base.trim_start_matches("http://"));
    let gone = first["departures"].as_array().unwrap();
    assert_eq!(gone.len(), 1, "{first}");
    assert_eq!(gone[0]["name"], "kitchen");
    assert_eq!(gone[0]["reason"], "interrupted");
    assert_eq!(api.json("/api/status")["listeners"], 0);
    // A name with a control character is a usage error naming it.
    let mut bad = Listener::start(server.addr, dir.path(), "bad", &["--name", "a\u{7}b"]);
    assert_eq!(bad.proc.exit_code(SLOW), 2, "{}", bad.proc.stderr());
    assert!(
        bad.proc.stderr().contains("--name"),
        "{}",
        bad.proc.stderr()
    );
}
