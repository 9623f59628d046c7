//! The admin HTTP API and the Prometheus metrics.
//!
//! `GET /metrics` needs no token: it tells nothing an operator would hide
//! from the host's monitoring. Nor does the status page (`/`, `/status.js`,
//! `/status.css`), which holds no data. Everything under `/v1/` needs
//! `Authorization: Bearer <token>`, compared in constant time. Every error is
//! a JSON object `{"error": "..."}` that says what was wrong.
//!
//! The handlers read and change the engine through [`Guard::with`], so a
//! block or a pin added here applies to the very next connection. When a
//! state directory is configured, a change is saved at once, not at the next
//! tick of the persistence loop.
//!
//! The listener is bound by the caller (loopback by default). Connections
//! are capped at [`MAX_CONNECTIONS`] and closed after [`IDLE_TIMEOUT`]
//! without progress, so nothing reaching the admin port can pin down
//! file descriptors the proxy needs.

mod blocks;
mod exposition;
mod listener;
mod metrics;
mod ops_metrics;
mod page;
mod pins;
mod status;
mod token;

use blocks::*;
pub use exposition::Format as MetricsFormat;
use listener::*;
use metrics::*;
pub use metrics::{render_metrics, render_metrics_as};
pub use page::{CONTENT_SECURITY_POLICY, OPENAPI_JSON};
use pins::*;
use status::*;
pub use token::load_or_create_token;

use crate::unix_now;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin as StdPin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path as UrlPath, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use mtguard_core::manager::CommandError;
use mtguard_core::pins::{parse_pin_line, Pin, PinKind, PinSetError};
use mtguard_core::{BlockCause, CapRefusal, HandshakeOutcome, Level, RejectReason, Stats};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Guard;
use crate::episode::{self, is_connection_error, AcceptTrouble};
use crate::node::Handles;
use crate::telemetry::Telemetry;

/// Name of the generated token file inside the state directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Concurrent admin connections. At this many, a new connection closes the
/// one that has waited longest for a complete request head (a request being
/// served is never closed); only when every connection is serving a request
/// do new ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// An admin connection that neither sends nor accepts a byte for this long
/// while a request is served is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request head (request line and headers) must be complete this long
/// after the connection started waiting for it (accepted, or answered its
/// last request), however often bytes arrive; else the answer is 408, or
/// just a close for a connection that sent nothing.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head, in bytes; a larger one is answered 431.
pub const HEAD_LIMIT: usize = 16 * 1024;

/// The most header lines in a request head (hyper's own limit); more are
/// answered 431.
pub const MAX_HEADERS: usize = 100;

/// What the admin API needs besides the engine.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// The bearer token every `/v1/` request must carry.
    pub token: String,
    /// Where to save the state right after a change made through the API;
    /// `None` leaves saving to the persistence loop (or to nobody).
    pub state_dir: Option<PathBuf>,
    /// `[server.backend_tls] pins_file`: rewritten after every change to
    /// the pins, so the file an operator reads is the set in force.
    pub pins_file: Option<PathBuf>,
}

/// Serves the admin API on `listener` until `shutdown` becomes `true` (or
/// its sender is dropped), then finishes the requests in flight and returns.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Handles>,
    settings: Arc<AdminSettings>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    let listener = CappedListener::new(listener);
    axum::serve(listener, router(node, settings))
        .with_graceful_shutdown(async move {
            // An error means the sender is gone: the process is ending.
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// The admin API as a router, for [`serve`] and for tests.
pub fn router(node: Arc<Handles>, settings: Arc<AdminSettings>) -> Router {
    let state = AppState {
        guard: node.guard.clone(),
        node,
        settings,
        save_lock: Arc::new(tokio::sync::Mutex::new(())),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/blocks", get(list_blocks).post(add_block))
        .route("/v1/blocks/{*ip}", delete(remove_block))
        .route("/v1/pins", get(list_pins).post(add_pin))
        .route("/v1/pins/{*pin}", delete(remove_pin))
        .route("/", get(page::index))
        .route("/status.js", get(page::script))
        .route("/status.css", get(page::style))
        .route("/v1/openapi.json", get(page::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

// ----- plumbing -----

#[derive(Clone)]
struct AppState {
    /// `node.guard`, the one most handlers use.
    guard: Arc<Guard>,
    node: Arc<Handles>,
    settings: Arc<AdminSettings>,
    /// Saves through the API one at a time.
    save_lock: Arc<tokio::sync::Mutex<()>>,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mtguard\""),
            );
        }
        response
    }
}

/// Proof that the request carried the admin token.
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(presented) = presented else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing header Authorization: Bearer <token> (the token is in the admin token file)",
            ));
        };
        if bool::from(presented.as_bytes().ct_eq(state.settings.token.as_bytes())) {
            Ok(Authorized)
        } else {
            tracing::warn!(path = %parts.uri.path(), "admin API request with a wrong token");
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token"))
        }
    }
}

/// Parses a JSON request body, turning every failure into a 4xx that says
/// what was wrong.
fn parse_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("reading the request body: {}", e.body_text()),
        )
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty: expected a JSON object like {example}"
        )));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}; expected {example}")))?;
    // Derived structs would also take a JSON array of the fields in order.
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "invalid request: the body must be a JSON object, like {example}"
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}; expected {example}")))
}

fn path_text(path: Result<UrlPath<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|UrlPath(p)| p)
        .map_err(|e| ApiError::new(e.status(), e.body_text()))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {method} {}: see /metrics, /v1/status, /v1/blocks and /v1/pins",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Saves the state right away if a state directory is set. A failure is
/// logged and returned as a warning: the change is in effect, and the
/// persistence loop retries.
async fn persist(s: &AppState) -> Option<String> {
    let dir = s.settings.state_dir.clone()?;
    let _one_at_a_time = s.save_lock.lock().await;
    let node = s.node.clone();
    // Logged once per episode there, with the persistence loop's failures:
    // the answer's warning tells the operator each time.
    let result =
        tokio::task::spawn_blocking(move || crate::persist::state::save_logged(&node, &dir))
            .await
            .map_err(|e| anyhow::anyhow!("the save task failed: {e}"))
            .and_then(|r| r.map_err(|(e, _)| e));
    match result {
        Ok(_) => None,
        Err(e) => Some(format!(
            "the change is in effect but saving the state failed: {e:#}"
        )),
    }
}

/// Rewrites the pins file, if one is configured, with the engine's pins.
async fn persist_pins(s: &AppState) -> Option<String> {
    let path = s.settings.pins_file.clone()?;
    let _one_at_a_time = s.save_lock.lock().await;
    let pins: Vec<Pin> = s.guard.with(|e, _| e.pins().iter().cloned().collect());
    let node = s.node.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::persist::pinfile::save(&path, &pins, node.sealer())
    })
    .await
    .map_err(|e| anyhow::anyhow!("the save task failed: {e}"))
    .and_then(|r| r);
    match result {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writing the pins file failed");
            Some(format!(
                "the change is in effect but writing the pins file failed: {e:#}"
            ))
        }
    }
}

/// The warnings of both saves, if any.
async fn persist_with_pins(s: &AppState) -> Option<String> {
    let state = persist(s).await;
    let pins = persist_pins(s).await;
    match (state, pins) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// `value` with `"warning"` added when saving failed.
fn with_warning(mut value: Value, warning: Option<String>) -> Value {
    if let (Some(w), Some(obj)) = (warning, value.as_object_mut()) {
        obj.insert("warning".into(), Value::String(w));
    }
    value
}
