//! The admin HTTP API and the Prometheus metrics.
//!
//! `GET /metrics` needs no token: it tells nothing an operator would hide
//! from the host's monitoring. Everything under `/v1/` needs
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
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use mtguard_core::manager::CommandError;
use mtguard_core::pins::{parse_pin_line, Pin, PinKind, PinSetError};
use mtguard_core::{BlockCause, HandshakeOutcome, Level, RejectReason, Stats};
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

/// Content type of the metrics (prometheus-client writes OpenMetrics text,
/// which Prometheus scrapes natively).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    let listener = CappedListener {
        inner: listener,
        registry: Arc::new(ConnRegistry::new()),
        trouble: AcceptTrouble::new("admin API: "),
    };
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

// ----- token -----

/// The admin token: read from `token_file`, or, without one, from
/// `<state_dir>/admin.token`, which is generated (32 random bytes as hex,
/// mode 0600) on the first start and reused afterwards.
///
/// A token file that is empty, holds whitespace inside the token or
/// non-ASCII text, or can be read or written by group or others is an error
/// naming the file.
pub fn load_or_create_token(token_file: Option<&Path>, state_dir: &Path) -> anyhow::Result<String> {
    if let Some(path) = token_file {
        return read_token(path);
    }
    let path = state_dir.join(TOKEN_FILE);
    if path.symlink_metadata().is_ok() {
        return read_token(&path);
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    let token = bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    match create_private(&path, format!("{token}\n").as_bytes()) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated the admin API token");
            Ok(token)
        }
        // Another process created it between the check and now: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => {
            Err(e).with_context(|| format!("creating the admin token file {}", path.display()))
        }
    }
}

/// Creates `path` (which must not exist) readable by its owner only.
fn create_private(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // create_new is O_EXCL, which already refuses a planted link;
        // O_NOFOLLOW says so to whoever reads this, and holds if it changes.
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if written.is_err() {
        // An empty or partial token file would stop every later start.
        let _ = std::fs::remove_file(path);
    }
    written
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let file = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading the admin token file {file}"))?;
    if !meta.is_file() {
        bail!("admin token file {file} is not a regular file");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "admin token file {file} is accessible by group or others (mode {mode:03o}); \
                 run `chmod 600 {file}`"
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {file}"))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("admin token file {file} is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("admin token file {file}: the token must be printable ASCII without spaces");
    }
    if token.len() < 16 {
        tracing::warn!(file = %file, "the admin token is shorter than 16 characters: easy to guess");
    }
    Ok(token.to_owned())
}

// ----- metrics -----

/// The metrics in the Prometheus (OpenMetrics) text format, read from the
/// engine and the node's `telemetry` now.
pub fn render_metrics(guard: &Guard, telemetry: &Arc<Telemetry>) -> String {
    let snapshot = guard.with(|e, _| Snapshot {
        stats: *e.stats(),
        active: e.active_connections(),
        tracked: e.tracked_clients(),
        blocked: e.blocked_clients(),
        under_attack: e.under_attack(),
        client_capacity: e.client_capacity(),
        connection_capacity: e.connection_capacity(),
        pins: e.pins().len(),
        level: e.policy().level,
        observer_drops: guard.observer_drops(),
        telemetry: telemetry.clone(),
    });
    let mut registry = Registry::with_prefix("mtguard");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The engine's numbers at one scrape.
#[derive(Debug)]
struct Snapshot {
    stats: Stats,
    active: u32,
    tracked: u32,
    blocked: u32,
    under_attack: bool,
    client_capacity: usize,
    connection_capacity: usize,
    pins: usize,
    level: Level,
    observer_drops: u64,
    telemetry: Arc<Telemetry>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled_counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'static str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in series {
        let labels = [(label, value)];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let e = &mut e;
        counter(
            e,
            "connections_accepted",
            "Connections admitted.",
            s.accepted,
        )?;
        labelled_counters(
            e,
            "connections_rejected",
            "Connections refused, by reason.",
            "reason",
            RejectReason::ALL.map(|r| (r.as_str(), s.rejected[r as usize])),
        )?;
        labelled_counters(
            e,
            "handshakes",
            "Handshakes judged, by result.",
            "result",
            HandshakeOutcome::ALL.map(|h| (h.as_str(), s.handshakes[h as usize])),
        )?;
        labelled_counters(
            e,
            "handshake_failures",
            "MTProto handshakes refused by the inspection, by reason.",
            "reason",
            self.telemetry.handshake_failures.counts(),
        )?;
        labelled_counters(
            e,
            "detections",
            "Abusive clients detected, by kind.",
            "kind",
            [
                ("scanner", s.scanners),
                ("replay", s.replays),
                ("slowloris", s.slowloris),
            ],
        )?;
        counter(
            e,
            "blocks",
            "Blocks started (automatic and manual).",
            s.blocks,
        )?;
        counter(
            e,
            "unblocks",
            "Blocks ended (expired or lifted).",
            s.unblocks,
        )?;
        counter(
            e,
            "table_evictions",
            "Idle clients evicted from the client table to make room.",
            s.evictions,
        )?;
        counter(
            e,
            "attacks",
            "Times under-attack mode switched on.",
            s.attacks,
        )?;
        counter(
            e,
            "events_dropped",
            "Engine events dropped because the queue was full.",
            s.events_dropped,
        )?;
        counter(
            e,
            "stale_connection_ids",
            "Handler calls with a connection id that was no longer live.",
            s.stale_connection_ids,
        )?;
        counter(
            e,
            "pin_failures",
            "Upstream certificate chains that matched no pin (backend and refresh).",
            s.pin_failures,
        )?;
        gauge(
            e,
            "connections_active",
            "Connections open now.",
            self.active.into(),
        )?;
        gauge(
            e,
            "tracked_clients",
            "Clients in the client table.",
            self.tracked.into(),
        )?;
        gauge(
            e,
            "blocked_clients",
            "Clients blocked now.",
            self.blocked.into(),
        )?;
        gauge(
            e,
            "under_attack",
            "1 while under-attack mode is on, else 0.",
            self.under_attack.into(),
        )?;
        gauge(
            e,
            "client_table_capacity",
            "Clients the client table holds.",
            self.client_capacity as u64,
        )?;
        gauge(
            e,
            "connection_table_capacity",
            "Connections the connection table holds.",
            self.connection_capacity as u64,
        )?;
        gauge(e, "pins", "Certificate pins configured.", self.pins as u64)?;
        fleet_metrics(e, self.observer_drops, &self.telemetry)?;
        gauge(
            e,
            "security_level",
            "Security level the policy started from (0-3).",
            self.level.number().into(),
        )
    }
}

/// CrowdSec and nftables, when they run.
fn fleet_metrics(
    e: &mut DescriptorEncoder,
    observer_drops: u64,
    telemetry: &Telemetry,
) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    counter(
        e,
        "observer_events_dropped",
        "Blocks and detections CrowdSec or nftables missed because their queue was full.",
        observer_drops,
    )?;
    let c = &telemetry.crowdsec;
    if c.json().is_some() {
        gauge(
            e,
            "crowdsec_lapi_up",
            "1 if the last pull of the CrowdSec decision stream succeeded, else 0.",
            c.lapi_up.load(Relaxed).into(),
        )?;
        gauge(
            e,
            "crowdsec_decisions",
            "CrowdSec decisions held now.",
            c.decisions.load(Relaxed),
        )?;
        labelled_counters(
            e,
            "crowdsec_pulls",
            "Pulls of the CrowdSec decision stream, by result.",
            "result",
            [
                ("ok", c.pulls.load(Relaxed)),
                ("failed", c.pull_failures.load(Relaxed)),
            ],
        )?;
        labelled_counters(
            e,
            "crowdsec_decisions_seen",
            "CrowdSec decisions, by what was done with them.",
            "action",
            [
                ("applied", c.applied.load(Relaxed)),
                ("removed", c.removed.load(Relaxed)),
                ("ignored", c.ignored.load(Relaxed)),
            ],
        )?;
        labelled_counters(
            e,
            "crowdsec_alerts",
            "Alerts reported to the CrowdSec Local API, by result.",
            "result",
            [
                ("sent", c.alerts_sent.load(Relaxed)),
                ("failed", c.alerts_failed.load(Relaxed)),
            ],
        )?;
    }
    let k = &telemetry.nftables;
    if k.json().is_some() {
        gauge(
            e,
            "nft_elements",
            "Elements in the nftables sets mirroring the blocks.",
            k.elements.load(Relaxed),
        )?;
        labelled_counters(
            e,
            "nft_updates",
            "Runs of nft changing the sets, by result.",
            "result",
            [
                ("ok", k.updates.load(Relaxed)),
                ("failed", k.errors.load(Relaxed)),
            ],
        )?;
    }
    Ok(())
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        render_metrics(&s.guard, &s.node.telemetry),
    )
        .into_response()
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

// ----- status -----

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Minimal => "minimal",
        Level::Standard => "standard",
        Level::High => "high",
        Level::Maximum => "maximum",
    }
}

fn stats_json(s: &Stats) -> Value {
    let rejected: serde_json::Map<String, Value> = RejectReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), s.rejected[*r as usize].into()))
        .collect();
    let handshakes: serde_json::Map<String, Value> = HandshakeOutcome::ALL
        .iter()
        .map(|h| (h.as_str().to_owned(), s.handshakes[*h as usize].into()))
        .collect();
    json!({
        "accepted": s.accepted,
        "rejected": rejected,
        "handshakes": handshakes,
        "evictions": s.evictions,
        "blocks": s.blocks,
        "unblocks": s.unblocks,
        "scanners": s.scanners,
        "replays": s.replays,
        "slowloris": s.slowloris,
        "attacks": s.attacks,
        "events_dropped": s.events_dropped,
        "stale_connection_ids": s.stale_connection_ids,
        "pin_failures": s.pin_failures,
    })
}

async fn status(_: Authorized, State(s): State<AppState>) -> Json<Value> {
    Json(s.guard.with(|e, now| {
        let level = e.policy().level;
        json!({
            "level": level.number(),
            "level_name": level_name(level),
            "uptime_seconds": now.as_millis() / 1000,
            "active_connections": e.active_connections(),
            "tracked_clients": e.tracked_clients(),
            "blocked_clients": e.blocked_clients(),
            "client_table_capacity": e.client_capacity(),
            "connection_table_capacity": e.connection_capacity(),
            "under_attack": e.under_attack(),
            "pins": e.pins().len(),
            "pin_capacity": e.pins().capacity(),
            "stats": stats_json(e.stats()),
            "crowdsec": s.node.telemetry.crowdsec.json(),
            "kernel": s.node.telemetry.nftables.json(),
            "jobs": s.node.telemetry.jobs.json(),
            "observer_events_dropped": s.guard.observer_drops(),
        })
    }))
}

// ----- blocks -----

#[derive(Serialize)]
struct BlockEntry {
    client: String,
    cause: &'static str,
    /// `None`: until lifted.
    remaining_seconds: Option<u64>,
    offences: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    ip: String,
    #[serde(default)]
    duration: Option<String>,
}

const BLOCK_EXAMPLE: &str =
    r#"{"ip": "192.0.2.7", "duration": "10m"} (duration null or left out: until unblocked)"#;

fn remaining_seconds(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000)
}

async fn list_blocks(_: Authorized, State(s): State<AppState>) -> Json<Vec<BlockEntry>> {
    let (prefix, now, mut blocks) = s
        .guard
        .with(|e, now| (e.policy().ipv6_prefix, now, e.blocks().collect::<Vec<_>>()));
    blocks.sort_by_key(|b| b.client.bits());
    Json(
        blocks
            .into_iter()
            .map(|b| BlockEntry {
                client: b.client.display(prefix).to_string(),
                cause: b.cause.as_str(),
                remaining_seconds: b
                    .until
                    .map(|u| remaining_seconds(u.as_millis(), now.as_millis())),
                offences: b.offences,
            })
            .collect(),
    )
}

/// An address as the API takes it: `192.0.2.7`, `2001:db8::1`, or a client
/// as `GET /v1/blocks` lists it (`2001:db8:1:2::/64` with the policy's
/// prefix length, or an IPv4 address with `/32`).
fn parse_client(text: &str, ipv6_prefix: u8, field: &str) -> Result<IpAddr, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{field}: {text:?} is not an IP address (expected like 192.0.2.7 or 2001:db8::1)"
        ))
    };
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    match (ip, len) {
        (_, None) | (IpAddr::V4(_), Some(32)) => Ok(ip),
        (IpAddr::V6(_), Some(l)) if l == ipv6_prefix => Ok(ip),
        _ => Err(ApiError::bad_request(format!(
            "{field}: {text:?}: only single clients can be blocked: an IPv4 address, or an IPv6 \
             address (clients are IPv6 /{ipv6_prefix} networks); use the denylist for networks"
        ))),
    }
}

/// A block duration: as the config file writes durations (`90s`, `10m`,
/// `1h`, `7d`), and not zero.
fn parse_block_duration(text: &str) -> Result<Duration, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("duration: {e}"));
    match crate::config::parse_duration(text.trim()).map_err(bad)? {
        Duration::ZERO => Err(bad(format!(
            "{text:?} is zero: use null or leave it out to block until unblocked"
        ))),
        d => Ok(d),
    }
}

async fn add_block(
    _: Authorized,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: BlockRequest = parse_body(body, BLOCK_EXAMPLE)?;
    let prefix = s.guard.with(|e, _| e.policy().ipv6_prefix);
    let ip = parse_client(&req.ip, prefix, "ip")?;
    let duration = req
        .duration
        .as_deref()
        .map(parse_block_duration)
        .transpose()?;
    let entry = s
        .guard
        .with(|e, now| {
            e.block(now, ip, duration, BlockCause::Manual)?;
            let prefix = e.policy().ipv6_prefix;
            Ok(BlockEntry {
                client: e.client_key(ip).display(prefix).to_string(),
                cause: BlockCause::Manual.as_str(),
                remaining_seconds: duration.map(|d| d.as_millis().div_ceil(1000) as u64),
                offences: e.client_info(ip).map_or(0, |i| i.offences),
            })
        })
        .map_err(|err| match err {
            CommandError::Allowlisted => ApiError::new(
                StatusCode::CONFLICT,
                format!("ip: {ip} is allowlisted, and the allowlist takes precedence over blocks"),
            ),
            CommandError::ClientTableFull => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, err.to_string())
            }
        })?;
    tracing::info!(
        client = %entry.client,
        duration_s = duration.map(|d| d.as_secs()),
        "client blocked through the admin API"
    );
    let warning = persist(&s).await;
    let body = serde_json::to_value(&entry).expect("a block entry serializes");
    Ok((StatusCode::CREATED, Json(with_warning(body, warning))))
}

async fn remove_block(
    _: Authorized,
    State(s): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let text = path_text(path)?;
    let prefix = s.guard.with(|e, _| e.policy().ipv6_prefix);
    let ip = parse_client(&text, prefix, "address in the path")?;
    let (lifted, denylisted) = s
        .guard
        .with(|e, now| (e.unblock(now, ip), e.denylist().contains(ip)));
    if !lifted {
        let mut message = format!("{ip} is not blocked");
        if denylisted {
            message.push_str(" (it is on the denylist, which is changed in the configuration)");
        }
        return Err(ApiError::new(StatusCode::NOT_FOUND, message));
    }
    tracing::info!(%ip, "client unblocked through the admin API");
    Ok(match persist(&s).await {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(w) => (StatusCode::OK, Json(json!({ "warning": w }))).into_response(),
    })
}

// ----- pins -----

#[derive(Serialize)]
struct PinEntry {
    pin: String,
    kind: &'static str,
    label: String,
    /// `YYYY-MM-DD`: the pin counts until the start of that day (UTC).
    expires: Option<String>,
    expired: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    pin: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

const PIN_EXAMPLE: &str = r#"{"pin": "sha256/<44 base64 characters>", "label": "backup key", "expires": "2027-01-01"} (label and expires optional)"#;

fn pin_entry(p: &Pin, now_unix: u64) -> PinEntry {
    let expires = p.expires().and_then(|_| {
        // The pins-file line writes the expiry as `expires=YYYY-MM-DD`,
        // right after the pin and before any label.
        let line = p.display_line().to_string();
        let (_, rest) = line.split_once(" expires=")?;
        Some(rest.get(..10)?.to_owned())
    });
    PinEntry {
        pin: p.to_string(),
        kind: match p.kind() {
            PinKind::Spki => "spki",
            PinKind::Certificate => "certificate",
        },
        label: p.label().to_owned(),
        expires,
        expired: p.is_expired(now_unix),
    }
}

async fn list_pins(_: Authorized, State(s): State<AppState>) -> Json<Vec<PinEntry>> {
    let pins: Vec<Pin> = s.guard.with(|e, _| e.pins().iter().cloned().collect());
    let now = unix_now();
    Json(pins.iter().map(|p| pin_entry(p, now)).collect())
}

fn parse_pin_request(req: &PinRequest, now_unix: u64) -> Result<Pin, ApiError> {
    let mut pin =
        Pin::parse(req.pin.trim()).map_err(|e| ApiError::bad_request(format!("pin: {e}")))?;
    if let Some(date) = req.expires.as_deref().map(str::trim) {
        let bad = || {
            ApiError::bad_request(format!(
                "expires: {date:?} is not a date YYYY-MM-DD from 1970-01-01 to 9999-12-31"
            ))
        };
        // Only digits and dashes reach the pins-file parser, so the date
        // cannot smuggle in a label or other words.
        if date.len() != 10 || !date.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(bad());
        }
        let dated = parse_pin_line(&format!("{pin} expires={date}"))
            .map_err(|_| bad())?
            .ok_or_else(bad)?;
        if dated.is_expired(now_unix) {
            return Err(ApiError::bad_request(format!(
                "expires: {date} is not in the future: the pin would never count"
            )));
        }
        pin = pin.with_expiry(dated.expires());
    }
    if let Some(label) = req.label.as_deref() {
        pin = pin
            .with_label(label.trim())
            .map_err(|e| ApiError::bad_request(format!("label: {e}")))?;
    }
    Ok(pin)
}

async fn add_pin(
    _: Authorized,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: PinRequest = parse_body(body, PIN_EXAMPLE)?;
    let now = unix_now();
    let pin = parse_pin_request(&req, now)?;
    let entry = pin_entry(&pin, now);
    s.guard
        .with(|e, _| e.add_pin(pin))
        .map_err(|err| match err {
            PinSetError::Duplicate => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "pin: {} is already pinned; delete it first to change its label or expiry",
                    entry.pin
                ),
            ),
            PinSetError::Full { capacity } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("pin set is full: {capacity} pins; delete one first"),
            ),
        })?;
    tracing::info!(pin = %entry.pin, label = %entry.label, "pin added through the admin API");
    let warning = persist_with_pins(&s).await;
    let body = serde_json::to_value(&entry).expect("a pin entry serializes");
    Ok((StatusCode::CREATED, Json(with_warning(body, warning))))
}

async fn remove_pin(
    _: Authorized,
    State(s): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let text = path_text(path)?;
    let pin = Pin::parse(text.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "pin in the path: {e} (URL-encode it: / is %2F, + is %2B, = is %3D)"
        ))
    })?;
    let removed = s.guard.with(|e, _| e.remove_pin(pin.kind(), pin.hash()));
    if removed.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{pin} is not pinned"),
        ));
    }
    tracing::info!(pin = %pin, "pin removed through the admin API");
    Ok(match persist_with_pins(&s).await {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(w) => (StatusCode::OK, Json(json!({ "warning": w }))).into_response(),
    })
}

// ----- connection limits -----

/// Marks a connection serving a request: not to be closed for room.
const SERVING: u64 = u64::MAX;

/// One open admin connection as the listener sees it.
struct Slot {
    /// Milliseconds after the registry's epoch at which the connection
    /// started waiting for a request head; [`SERVING`] while it serves one.
    waiting_since: AtomicU64,
    evicted: AtomicBool,
    /// The connection's task, woken to notice the eviction.
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Slot {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn park(&self, cx: &Context<'_>) {
        let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
}

/// The open connections, at most [`MAX_CONNECTIONS`]: a fixed table the
/// listener consults to make room.
struct ConnRegistry {
    epoch: tokio::time::Instant,
    slots: std::sync::Mutex<Vec<Option<Arc<Slot>>>>,
    freed: tokio::sync::Notify,
}

impl ConnRegistry {
    fn new() -> ConnRegistry {
        ConnRegistry {
            epoch: tokio::time::Instant::now(),
            slots: std::sync::Mutex::new(vec![None; MAX_CONNECTIONS]),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a free slot for `slot`, or the one of the connection that has
    /// waited longest for a request head (closing it); false when every
    /// connection is serving a request.
    fn claim(&self, slot: &Arc<Slot>) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(free) = slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(slot.clone());
            return true;
        }
        let victim = slots
            .iter_mut()
            .filter(|s| {
                s.as_ref()
                    .is_some_and(|s| s.waiting_since.load(Ordering::Acquire) != SERVING)
            })
            .min_by_key(|s| {
                s.as_ref()
                    .map_or(SERVING, |s| s.waiting_since.load(Ordering::Acquire))
            });
        let Some(victim) = victim else {
            return false;
        };
        if let Some(old) = victim.replace(slot.clone()) {
            old.evict();
        }
        true
    }

    fn release(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)))
        {
            *s = None;
            self.freed.notify_one();
        }
    }
}

/// A listener that holds at most [`MAX_CONNECTIONS`] connections, making
/// room by closing the one that has waited longest for a request head.
struct CappedListener {
    inner: TcpListener,
    registry: Arc<ConnRegistry>,
    trouble: AcceptTrouble,
}

impl CappedListener {
    /// axum's own accept loop logs nothing without its `tracing` feature
    /// and would log every failure with it: this one logs once an episode.
    async fn accept_tcp(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let accepted = tokio::select! {
                accepted = self.inner.accept() => accepted,
                () = episode::sleep_until(self.trouble.ends_at()) => {
                    self.trouble.quiet_passed();
                    continue;
                }
            };
            match accepted {
                Ok(pair) => {
                    self.trouble.accepted();
                    return pair;
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    let pause = self.trouble.failed(&e);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedConn, SocketAddr) {
        let (io, addr) = self.accept_tcp().await;
        let slot = Arc::new(Slot {
            waiting_since: AtomicU64::new(self.registry.now_ms()),
            evicted: AtomicBool::new(false),
            waker: std::sync::Mutex::new(None),
        });
        loop {
            let freed = self.registry.freed.notified();
            if self.registry.claim(&slot) {
                break;
            }
            // Every connection is serving a request: wait for one to end.
            freed.await;
        }
        (CappedConn::new(io, slot, self.registry.clone()), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Where a connection is in its request.
enum Phase {
    /// Reading a request head into `head`, not yet given to hyper.
    Head,
    /// A complete, well-formed head (and what came after it) going to
    /// hyper from `head[from..]`.
    Release { from: usize },
    /// Serving the request: bytes pass straight through.
    Serving,
    /// Answering a bad head ourselves, then closing.
    Answer { bytes: Vec<u8>, written: usize },
    /// Answered: hyper reads the end of the stream.
    Done,
}

/// An admin connection. It holds its slot in the registry, keeps a request
/// head from hyper until the head is complete and well-formed (answering
/// malformed, oversized and late heads itself, with the JSON error body
/// every other error has), and fails once it has made no progress for
/// [`IDLE_TIMEOUT`] while serving or once the registry closes it.
struct CappedConn {
    io: TcpStream,
    slot: Arc<Slot>,
    registry: Arc<ConnRegistry>,
    phase: Phase,
    head: Vec<u8>,
    /// Whether a response was written: the next head is not the first.
    answered: bool,
    idle: StdPin<Box<tokio::time::Sleep>>,
    head_deadline: StdPin<Box<tokio::time::Sleep>>,
}

impl CappedConn {
    fn new(io: TcpStream, slot: Arc<Slot>, registry: Arc<ConnRegistry>) -> CappedConn {
        CappedConn {
            io,
            slot,
            registry,
            phase: Phase::Head,
            head: Vec::new(),
            answered: false,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            head_deadline: Box::pin(tokio::time::sleep(HEAD_TIMEOUT)),
        }
    }

    fn progressed(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }

    fn evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Acquire)
    }

    /// A response starts: the next bytes are the next request's head.
    fn responding(&mut self, bytes: &[u8]) {
        // A 100 Continue comes before the request body, not after it.
        if !matches!(self.phase, Phase::Serving) || bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        self.answered = true;
        self.phase = Phase::Head;
        self.head.clear();
        self.slot
            .waiting_since
            .store(self.registry.now_ms(), Ordering::Release);
        self.head_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
    }

    fn answer(&mut self, status: StatusCode, message: &str) {
        // After a response the bytes may be the unread rest of a refused
        // body (413) rather than a head: answering them would append a
        // second response to the first. Closing is what hyper does there.
        if self.answered {
            self.phase = Phase::Done;
            return;
        }
        let body = json!({ "error": message }).to_string();
        let text = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        self.phase = Phase::Answer {
            bytes: text.into_bytes(),
            written: 0,
        };
    }

    /// Judges the head read so far after `new` more bytes arrived.
    fn check_head(&mut self, new: usize) {
        // Only a new CRLFCRLF can complete a head: looking for it in the
        // new bytes (and the three before) keeps a head dribbled a byte at
        // a time linear, not quadratic.
        let from = self.head.len().saturating_sub(new + 3);
        let ended = self.head[from..].windows(4).any(|w| w == b"\r\n\r\n");
        if ended {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&self.head) {
                Ok(httparse::Status::Complete(_)) => match framing_error(&request) {
                    None => {
                        self.phase = Phase::Release { from: 0 };
                        self.slot.waiting_since.store(SERVING, Ordering::Release);
                        return;
                    }
                    Some(why) => return self.answer(StatusCode::BAD_REQUEST, why),
                },
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return self.answer(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &format!("more than {MAX_HEADERS} headers in the request head"),
                    )
                }
                Err(e) => {
                    return self.answer(
                        StatusCode::BAD_REQUEST,
                        &format!("malformed request head: {e}"),
                    )
                }
            }
        }
        if self.head.len() > HEAD_LIMIT {
            self.answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("the request head is larger than {HEAD_LIMIT} bytes"),
            );
        }
    }

    fn read_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match StdPin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    // The end of the stream: hyper closes, as before.
                    self.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
                self.head.extend_from_slice(buf.filled());
                self.check_head(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.head_deadline.as_mut().poll(cx).is_ready() {
                    if self.head.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "admin connection idle for too long",
                        )));
                    }
                    self.answer(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "the request head was not complete within {} s",
                            HEAD_TIMEOUT.as_secs()
                        ),
                    );
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

/// What hyper would refuse with an empty 400 in a head httparse accepts.
fn framing_error(request: &httparse::Request<'_, '_>) -> Option<&'static str> {
    let mut length = None;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(v) = v else {
                return Some("malformed request head: Content-Length is not a number");
            };
            if length.is_some_and(|l| l != v) {
                return Some("malformed request head: two different Content-Length headers");
            }
            length = Some(v);
        }
    }
    None
}

fn evicted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "admin connection closed to make room for a new one",
    )
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "admin connection idle for too long",
    )
}

impl Drop for CappedConn {
    fn drop(&mut self) {
        self.registry.release(&self.slot);
    }
}

impl AsyncRead for CappedConn {
    fn poll_read(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.evicted() {
                return Poll::Ready(Err(evicted_error()));
            }
            match &mut this.phase {
                Phase::Head => match this.read_head(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        this.slot.park(cx);
                        return Poll::Pending;
                    }
                },
                Phase::Release { from } => {
                    let rest = &this.head[*from..];
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    *from += n;
                    if *from == this.head.len() {
                        this.head = Vec::new();
                        this.phase = Phase::Serving;
                    }
                    this.progressed();
                    return Poll::Ready(Ok(()));
                }
                Phase::Serving => {
                    let before = buf.filled().len();
                    return match StdPin::new(&mut this.io).poll_read(cx, buf) {
                        Poll::Ready(r) => {
                            if buf.filled().len() > before {
                                this.progressed();
                            }
                            Poll::Ready(r)
                        }
                        Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
                        Poll::Pending => {
                            this.slot.park(cx);
                            Poll::Pending
                        }
                    };
                }
                Phase::Answer { bytes, written } => {
                    while *written < bytes.len() {
                        match StdPin::new(&mut this.io).poll_write(cx, &bytes[*written..]) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                            }
                            Poll::Ready(Ok(n)) => *written += n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => {
                                return Poll::Ready(Err(idle_error()))
                            }
                            Poll::Pending => {
                                this.slot.park(cx);
                                return Poll::Pending;
                            }
                        }
                    }
                    // Lingering reads of the rest of a bad head would let the
                    // peer hold the slot; the FIN tells it we are done.
                    return match StdPin::new(&mut this.io).poll_shutdown(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(_) => {
                            this.phase = Phase::Done;
                            Poll::Ready(Ok(()))
                        }
                    };
                }
                Phase::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for CappedConn {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.evicted() {
            return Poll::Ready(Err(evicted_error()));
        }
        self.responding(buf);
        match StdPin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => {
                self.slot.park(cx);
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.evicted() {
            return Poll::Ready(Err(evicted_error()));
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.responding(first);
        }
        match StdPin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => {
                self.slot.park(cx);
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_durations_need_a_unit_and_a_positive_number() {
        assert_eq!(
            parse_block_duration("90s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_block_duration("10m").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_block_duration("1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_block_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in [
            "",
            "10",
            "m",
            "0s",
            "1.5h",
            "-1m",
            "10 m",
            "5y",
            "99999999999999999999d",
        ] {
            let e = parse_block_duration(bad).unwrap_err();
            assert!(
                e.message.starts_with("duration: "),
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn clients_parse_as_addresses_or_as_listed() {
        assert_eq!(
            parse_client("192.0.2.7", 64, "ip").unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert!(parse_client("2001:db8:1:2::/64", 64, "ip").is_ok());
        assert!(parse_client("192.0.2.7/32", 64, "ip").is_ok());
        assert!(parse_client("10.0.0.0/8", 64, "ip").is_err());
        assert!(parse_client("2001:db8::/48", 64, "ip").is_err());
        assert!(parse_client("example.com", 64, "ip").is_err());
    }
}
