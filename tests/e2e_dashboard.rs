//! The dashboard in a real browser: Debian's `chromium` (headless) driven over W3C WebDriver
//! by `chromedriver` on a free loopback port, with a small WebDriver client over HTTP here.
//! While two real listeners play, `/` must show both listeners' addresses and a chart with data
//! points for each, fed by the server-sent events; the DOM is polled (no virtual time: it hangs
//! with an event stream open). A screenshot is saved under the target dir as an artefact.
//!
//! Skipped loudly where chromium or chromedriver is missing, unless `EARSHOT_REQUIRE_BROWSER`
//! is set (`cargo xtask test` sets it as root, where it installs both).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A W3C WebDriver session over HTTP.
struct Driver {
    agent: ureq::Agent,
    base: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.unwrap_or(json!({})).to_string()),
        }
        .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 200, "{method} {path}: {text}");
        v["value"].clone()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Standard base64, for the screenshot.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= u32::from(val(*c)) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..=n]);
    }
    out
}

#[test]
fn the_dashboard_shows_both_listeners_with_charts_in_chromium() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("EARSHOT_REQUIRE_BROWSER").is_none(),
            "EARSHOT_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing"
        );
        eprintln!(
            "SKIPPED: the dashboard browser test needs {CHROMIUM} and {CHROMEDRIVER} \
             (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let server = Server::start(
        &demo_clip(),
        &[
            "--loop",
            "--http",
            "127.0.0.1:0",
            "--http-token",
            "browser-token",
        ],
    );
    let line = server.proc.wait_for_line("control plane on", SLOW).unwrap();
    let http: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    let a = RawListener::join(server.addr);
    let b = RawListener::join(server.addr);

    let port = free_port();
    let _chromedriver = Proc::spawn(
        Path::new(CHROMEDRIVER),
        &[format!("--port={port}"), "--allowed-ips=127.0.0.1".into()],
        &[],
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(SLOW))
        .build()
        .into();
    let base = format!("http://127.0.0.1:{port}");
    wait_until("chromedriver ready", SLOW, || {
        agent
            .get(format!("{base}/status"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["value"]["ready"] == true)
    });
    let profile = tempdir();
    let mut args = vec![
        "--headless=new".to_string(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1200,800".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    if nix::unistd::geteuid().is_root() {
        args.push("--no-sandbox".into());
    }
    let root = Driver {
        agent: agent.clone(),
        base: base.clone(),
    };
    let session = root.call(
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}})),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let d = Driver {
        agent,
        base: format!("{base}/session/{id}"),
    };
    d.call(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{http}/")})),
    );

    // Poll the DOM: every row's address and how many points its chart has.
    let script = "return [...document.querySelectorAll('#rows tr')].map(tr => \
        [tr.dataset.addr, Number(tr.querySelector('svg.chart').dataset.points), \
         tr.querySelectorAll('svg.chart polyline').length]);";
    let mut want = vec![
        a.peer.local_addr().to_string(),
        b.peer.local_addr().to_string(),
    ];
    want.sort();
    let mut rows = Value::Null;
    wait_until(
        "both listeners with chart points on the dashboard",
        SLOW,
        || {
            rows = d.call(
                "POST",
                "/execute/sync",
                Some(json!({"script": script, "args": []})),
            );
            let r = rows.as_array().cloned().unwrap_or_default();
            let mut addrs: Vec<String> = r
                .iter()
                .map(|x| x[0].as_str().unwrap_or("").to_string())
                .collect();
            addrs.sort();
            addrs == want
                && r.iter()
                    .all(|x| x[1].as_u64().unwrap_or(0) >= 2 && x[2].as_u64() == Some(3))
        },
    );
    let state = d.call(
        "POST",
        "/execute/sync",
        Some(
            json!({"script": "return [document.getElementById('conn').textContent, \
            document.getElementById('count').textContent, \
            document.getElementById('title').textContent];", "args": []}),
        ),
    );
    assert_eq!(state[0], "live", "{state}");
    assert_eq!(state[1], "2", "{state}");
    assert_eq!(state[2], a.info.title.as_str(), "{state}");

    let png = base64_decode(d.call("GET", "/screenshot", None).as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_dashboard.png");
    std::fs::write(&out, &png).unwrap();
    println!("dashboard screenshot: {} ({rows})", out.display());
    eprintln!("dashboard screenshot: {}", out.display());
    d.call("DELETE", "", None);
}
