//! CrowdSec: the fleet's shared decisions.
//!
//! Two independent halves, each optional:
//! - the **bouncer** follows the Local API's decision stream
//!   (`GET /v1/decisions/stream`, `startup=true` first, then deltas, with
//!   `X-Api-Key`) and turns `ban` decisions into blocks of the engine
//!   (cause `external`) for addresses, and into denylist entries for
//!   ranges, each for the decision's duration;
//! - the **watcher** logs in as a machine (`POST /v1/watchers/login`, a JWT)
//!   and reports the guard's own blocks and detections as alerts
//!   (`POST /v1/alerts`), batched, from a bounded channel: a slow or absent
//!   Local API loses reports (counted), never admission time.
//!
//! A Local API that is down stops neither: the bouncer keeps the decisions
//! it has (blocks end at their own expiry) and retries with backoff; the
//! watcher retries a batch a few times, then drops it (counted). Both say
//! how they are doing in `/v1/status` and the metrics.

mod bouncer;
mod ledger;
mod watcher;

pub use bouncer::parse_go_duration;
use bouncer::Bouncer;
use watcher::Watcher;

use crate::unix_now;
use anyhow::Context as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mtguard_core::cidr::Cidr;
use mtguard_core::{BlockCause, ClientKey, Event};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::CrowdsecConfig;
use crate::engine::Guard;
use crate::jobs::{self, Job, Shutdown};
use crate::node::Handles;
use crate::telemetry::{JobKind, Telemetry};

/// Decisions the bouncer tracks at most; more are ignored (counted). The
/// engine's client table (65,536) bounds what could be enforced anyway.
pub const MAX_DECISIONS: usize = 65_536;

/// Range decisions kept at most (they go into the denylist, 8,192 entries
/// shared with the config's lists).
pub const MAX_RANGES: usize = 1_024;

/// The largest decision-stream answer read (about 200,000 decisions).
pub const MAX_STREAM_BYTES: usize = 64 << 20;

/// Alerts sent in one `POST /v1/alerts` at most.
pub const ALERT_BATCH: usize = 100;

/// Engine events waiting for the watcher at most; more are dropped.
pub const ALERT_QUEUE: usize = 1_024;

/// The longest wait between two attempts when the Local API is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Reads a secret from a file: its content without surrounding whitespace.
fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("[crowdsec] {what}: cannot read {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        anyhow::bail!(
            "[crowdsec] {what}: {} must hold one token without spaces",
            path.display()
        );
    }
    Ok(secret.to_owned())
}

/// The client every request to the Local API goes through. Over `https`
/// it trusts `ca_cert_path` alone when set (a private CA, as CrowdSec's own
/// TLS setup makes), else the Mozilla roots, and presents the client
/// certificate when one is set. The files are read here, so a missing or
/// malformed one stops the start and `check-config`, naming its key.
pub fn http_client(config: &CrowdsecConfig) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("mtguard/", env!("CARGO_PKG_VERSION")))
        // Every request goes to the one configured server: a redirect
        // elsewhere would carry the bouncer key or the machine's token.
        .redirect(reqwest::redirect::Policy::none());
    if config.lapi_url.starts_with("https://") {
        builder = builder
            .https_only(true)
            .use_preconfigured_tls(tls_config(config)?);
    }
    Ok(builder.build()?)
}

/// The rustls config of an `https` Local API: the same roots rule as the
/// pinned backends (`ca_cert_path`, else the Mozilla roots compiled in) and
/// ring as the provider, with the client certificate when one is set.
fn tls_config(config: &CrowdsecConfig) -> anyhow::Result<rustls::ClientConfig> {
    use crate::pinning::verifier;
    use rustls::pki_types::pem::PemObject as _;
    let roots =
        verifier::roots(config.ca_cert_path.as_deref()).context("[crowdsec] ca_cert_path")?;
    let builder = rustls::ClientConfig::builder_with_provider(verifier::provider())
        .with_safe_default_protocol_versions()
        .context("the ring provider supports the default protocol versions")?
        .with_root_certificates(roots);
    let mut tls = match &config.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = verifier::load_certs(&client.cert_path).context("[crowdsec] cert_path")?;
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_file(&client.key_path).map_err(|e| {
                    anyhow::anyhow!("[crowdsec] key_path: {}: {e}", client.key_path.display())
                })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                anyhow::anyhow!(
                    "[crowdsec] cert_path and key_path: {} does not go with {}: {e}",
                    client.cert_path.display(),
                    client.key_path.display()
                )
            })?
        }
    };
    // reqwest speaks HTTP/1.1 here (no http2 feature); say so in ALPN as
    // its own rustls setup would.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Starts what `config` asks for: reads the secrets now (a missing file is
/// an error at start), then runs in the background.
pub fn start(
    config: &CrowdsecConfig,
    node: &Arc<Handles>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let client = http_client(config)?;
    let status = &node.telemetry.crowdsec;
    let key = match (&config.api_key_file, &config.api_key) {
        (Some(file), _) => Some(read_secret(file, "api_key_file")?),
        (None, Some(inline)) => Some(inline.0.clone()),
        (None, None) => None,
    };
    // A client certificate authenticates the bouncer on its own when the
    // Local API's TLS authentication is on.
    if key.is_some() || config.client_cert.is_some() {
        status.bouncer.store(true, Ordering::Relaxed);
        let bouncer = Bouncer {
            guard: node.guard.clone(),
            telemetry: node.telemetry.clone(),
            client: client.clone(),
            url: config.lapi_url.clone(),
            key,
            poll: config.poll_interval,
            ledger: Default::default(),
        };
        jobs::spawn(bouncer, node, shutdown);
    }
    if let (Some(machine), Some(file)) = (&config.machine_id, &config.password_file) {
        let password = read_secret(file, "password_file")?;
        status.watcher.store(true, Ordering::Relaxed);
        let watcher = Watcher {
            guard: node.guard.clone(),
            telemetry: node.telemetry.clone(),
            client,
            url: config.lapi_url.clone(),
            machine: machine.clone(),
            password,
            token: None,
            events: node.guard.subscribe(ALERT_QUEUE),
        };
        jobs::spawn(watcher, node, shutdown);
    }
    Ok(())
}
