//! The control plane's HTTP server (axum, HTTP/1): the routes, the token check and the JSON
//! errors. It reads only the published [`Snapshot`] and sends [`Command`]s; see the parent
//! module for why.
//!
//! # Authentication
//!
//! There is always a token: `--http-token`, or a random one generated (and logged) at start.
//! The actions (`POST`) always need `Authorization: Bearer TOKEN`. Reads (`GET /api/*`,
//! `/metrics`, the event stream) need it only when bound to a non-loopback address; there a
//! browser, which cannot set headers on an `EventSource`, may pass it as `?token=TOKEN`. The
//! dashboard page itself holds no data and is always served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, ShellLink, Snapshot, metrics};
use crate::server::MAX_CLIENTS_LIMIT;

/// The dashboard, served at `/` from the binary.
pub const DASHBOARD: &str = include_str!("../../assets/dashboard.html");

/// How long an action waits for the shell to apply it before answering 503.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler shares: the HTTP side's ends of the channels and the token policy.
#[derive(Debug, Clone)]
pub struct State {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::Sender<Command>,
    token: Arc<str>,
    reads_need_token: bool,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for --http on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// A bound control plane, not yet serving: [`ControlPlane::start`] spawns it.
#[derive(Debug)]
pub struct ControlPlane {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    token: String,
    generated: bool,
}

impl ControlPlane {
    /// Binds `addr` (inside a tokio runtime). `token`: the one actions (and, off loopback,
    /// reads) need; `None` generates a random one ([`ControlPlane::token_generated`]).
    pub fn bind(addr: SocketAddr, token: Option<String>) -> Result<Self, BindError> {
        let err = |source| BindError { addr, source };
        let std = std::net::TcpListener::bind(addr).map_err(err)?;
        std.set_nonblocking(true).map_err(err)?;
        let listener = tokio::net::TcpListener::from_std(std).map_err(err)?;
        let local_addr = listener.local_addr().map_err(err)?;
        let generated = token.is_none();
        let token = token.unwrap_or_else(random_token);
        Ok(Self {
            listener,
            local_addr,
            token,
            generated,
        })
    }

    /// Where it listens (the real port for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The token the actions need.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// True if the token was generated here (so the operator must be told it).
    pub fn token_generated(&self) -> bool {
        self.generated
    }

    /// Whether reads need the token: only off loopback.
    pub fn reads_need_token(&self) -> bool {
        !self.local_addr.ip().is_loopback()
    }

    /// Starts serving on its own task for a server streaming `source`; returns the shell's end
    /// ([`crate::server::Server::set_control`]).
    pub fn start(self, source: String) -> ShellLink {
        let (link, snapshots, commands) = super::channel(source, std::time::Instant::now());
        let state = State {
            snapshots,
            commands,
            reads_need_token: self.reads_need_token(),
            token: self.token.into(),
        };
        let app = router(state);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.listener, app).await {
                tracing::error!("control plane stopped: {e}");
            }
        });
        link
    }
}

/// 32 hex digits from the OS's randomness.
fn random_token() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Every route (see the README's "Control plane" section).
pub fn router(state: State) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/status", get(status))
        .route("/api/listeners", get(listeners))
        .route("/api/listeners/{addr}/kick", post(kick))
        .route("/api/max-clients", post(max_clients))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        let mut r = (self.0, axum::Json(body)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl State {
    fn check_read(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
        if !self.reads_need_token {
            return Ok(());
        }
        match bearer(headers).or_else(|| query_token(uri)) {
            Some(t) if same(t, &self.token) => Ok(()),
            _ => Err(unauthorized()),
        }
    }

    fn check_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match bearer(headers) {
            Some(t) if same(t, &self.token) => Ok(()),
            _ => Err(unauthorized()),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => unavailable("too many requests queued; retry"),
            mpsc::error::TrySendError::Closed(_) => unavailable("the server is stopping"),
        })?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(unavailable("the server did not apply the request")),
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token (Authorization: Bearer TOKEN)".into(),
    )
}

fn unavailable(why: &str) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, why.into())
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn status(AxState(s): AxState<State>, h: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    s.check_read(&h, &uri)?;
    Ok(axum::Json(s.snapshot().status.clone()).into_response())
}

async fn listeners(
    AxState(s): AxState<State>,
    h: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    s.check_read(&h, &uri)?;
    Ok(axum::Json(s.snapshot().listeners.clone()).into_response())
}

async fn metrics_text(
    AxState(s): AxState<State>,
    h: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    s.check_read(&h, &uri)?;
    let body = metrics::render(&s.snapshot());
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

async fn kick(
    AxState(s): AxState<State>,
    h: HeaderMap,
    Path(addr): Path<String>,
) -> Result<Response, ApiError> {
    s.check_write(&h)?;
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{addr:?} is not a listener address (ip:port or [ipv6]:port)"),
        )
    })?;
    let kicked = s
        .command(|reply| Command::Kick {
            addr: parsed,
            reply,
        })
        .await?;
    if !kicked {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no listener {parsed}"),
        ));
    }
    Ok(axum::Json(serde_json::json!({ "kicked": parsed.to_string() })).into_response())
}

/// The capacity asked for by a `POST /api/max-clients` body: exactly `{"max_clients": N}` (an
/// object with that one key and a non-negative integer).
fn parse_max_clients(body: &[u8]) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    if let Some(k) = obj.keys().find(|k| *k != "max_clients") {
        return Err(format!("unknown field {k:?}"));
    }
    obj.get("max_clients")
        .ok_or("missing field \"max_clients\"")?
        .as_u64()
        .ok_or_else(|| "max_clients is not a non-negative integer".into())
}

async fn max_clients(
    AxState(s): AxState<State>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.check_write(&h)?;
    let asked = parse_max_clients(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"max_clients\": N}}: {e}"),
        )
    })?;
    let n = usize::try_from(asked)
        .ok()
        .filter(|n| (1..=MAX_CLIENTS_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("max_clients {asked} is outside 1..={MAX_CLIENTS_LIMIT}"),
            )
        })?;
    s.command(|reply| Command::SetMaxClients {
        max_clients: n,
        reply,
    })
    .await?;
    Ok(axum::Json(serde_json::json!({ "max_clients": n })).into_response())
}

async fn events(
    AxState(s): AxState<State>,
    h: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    s.check_read(&h, &uri)?;
    let stream =
        futures::stream::unfold((s.snapshots.clone(), true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let snap = rx.borrow_and_update().clone();
            let data = serde_json::to_string(&*snap).unwrap_or_else(|_| "{}".into());
            Some((
                Ok(Event::default().event("snapshot").data(data)),
                (rx, false),
            ))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_clients_body_is_exactly_one_field() {
        assert_eq!(parse_max_clients(br#"{"max_clients": 3}"#), Ok(3));
        assert_eq!(parse_max_clients(br#"{"max_clients": 0}"#), Ok(0));
        for bad in [
            &b""[..],
            b"{",
            b"[1]",
            b"1",
            br#"{}"#,
            br#"{"max_clients": "2"}"#,
            br#"{"max_clients": -1}"#,
            br#"{"max_clients": 1.5}"#,
            br#"{"max_clients": 2, "x": 1}"#,
        ] {
            assert!(parse_max_clients(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens() {
        assert!(same("abcdefgh", "abcdefgh"));
        assert!(!same("abcdefgh", "abcdefgx"));
        assert!(!same("abc", "abcd"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic tok"));
        assert_eq!(bearer(&h), None);
        let uri: Uri = "/api/status?x=1&token=abc".parse().unwrap_or_default();
        assert_eq!(query_token(&uri), Some("abc"));
        assert_eq!(random_token().len(), 32);
        assert_ne!(random_token(), random_token());
    }
}
