//! `mtguard run`: wires config, engine, listeners, admin API, persistence
//! and signals together.

pub mod bootstrap;
mod signals;
mod systemd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminSettings};
use crate::config::Config;
use crate::engine::{Capacity, Guard, LogEvents};
use crate::hsm::Token;
use crate::jobs::{self, Job, Shutdown};
use crate::node::Handles;
use crate::persist::state;
use crate::pinning::refresh::Refresh;
use crate::proxy;
use crate::server::bootstrap::{Keyring, Plan};
use crate::telemetry::{JobKind, Telemetry};
use signals::{signals, Senders};

/// Options of `mtguard run` beyond the config file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The config file; `None` runs on the embedded default.
    pub config: Option<PathBuf>,
    /// Overrides the config's `level`.
    pub level: Option<u8>,
    /// Move an unusable state file aside and start clean.
    pub reset_state: bool,
    /// How long to wait for open connections at shutdown.
    pub drain_timeout: Duration,
}

fn load(opts: &RunOptions) -> anyhow::Result<Config> {
    match &opts.config {
        Some(path) => Ok(crate::server::bootstrap::load_config(path)?),
        None => Ok(Config::embedded_default()),
    }
}

/// How often the token is probed, so that its loss and its return are
/// noticed (and logged) without waiting for a handshake.
const HSM_PROBE: Duration = Duration::from_secs(1);

/// The token monitor job: probes the `[hsm]` token every [`HSM_PROBE`]
/// (on a blocking thread: a probe waits for the token).
struct TokenMonitor {
    token: Arc<Token>,
}

impl Job for TokenMonitor {
    const KIND: JobKind = JobKind::TokenMonitor;

    async fn run(self, node: Arc<Handles>, mut shutdown: Shutdown) {
        let job = node.telemetry.jobs.get(Self::KIND);
        loop {
            tokio::select! {
                () = tokio::time::sleep(HSM_PROBE) => {}
                () = jobs::stopped(&mut shutdown) => return,
            }
            let token = self.token.clone();
            match tokio::task::spawn_blocking(move || token.check()).await {
                Ok(true) => job.succeeded(),
                Ok(false) => job.failed("the token is unavailable"),
                Err(e) => job.failed(&format!("the probe task failed: {e}")),
            }
        }
    }
}

/// Runs the guard until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = load(&opts)?;
    let admin_listen = config.admin.listen;
    match &opts.config {
        None => tracing::info!(
            listen = ?config.server.listen,
            backend = %config.server.backend,
            admin = ?admin_listen,
            state = %config.state.dir.display(),
            "no config file given: running on the embedded default"
        ),
        Some(path) => tracing::info!(config = %path.display(), "starting"),
    }
    let keyring = Keyring::open(&config)?;
    if let (Some(hsm), Some(_)) = (&config.hsm, &keyring.token) {
        tracing::info!(
            module = %hsm.module.display(),
            token = %hsm.token,
            integrity_key = %hsm.integrity_key,
            "HSM token open; the state file is sealed with its integrity key"
        );
    }
    let plan = Plan::build(config, opts.level, &keyring, None)?;
    let config = &plan.config;
    let policy = plan.policy;
    let guard = Guard::new(
        policy,
        Capacity::default(),
        Box::new(LogEvents {
            ipv6_prefix: policy.ipv6_prefix,
        }),
    )?;
    let state_dir = config.state.dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    // The handles of this node: everything below gets what it needs from
    // them, nothing from process-global state.
    let node = Arc::new(Handles::with(
        guard.clone(),
        keyring.sealer.clone(),
        Arc::new(Telemetry::default()),
    ));
    state::restore(&guard, &state_dir, opts.reset_state, node.sealer())?;
    // The pins of the state join the plan's: only now can their sum be
    // checked against the table and the level policy.
    plan.check_pins(&guard)?;
    let applied = plan.apply(&guard)?;
    let level = policy.level.number();
    tokio::spawn(guard.clone().drive());
    let (shutdown_tx, shutdown) = watch::channel(false);
    if let Some(token) = &keyring.token {
        jobs::spawn(
            TokenMonitor {
                token: token.clone(),
            },
            &node,
            &shutdown,
        );
    }
    // After the restore, so the kernel's sets start equal to the engine's
    // blocks; both read their secrets and check their sets now, so a
    // mistake stops the start instead of surfacing under attack.
    if let Some(set) = &config.kernel.nft_set {
        crate::fleet::nftables::start(&node, set.clone(), &shutdown)?;
    }
    if let Some(crowdsec) = &config.crowdsec {
        crate::fleet::crowdsec::start(crowdsec, &node, &shutdown)?;
    }

    let applied_refusal = applied.settings.refusal.clone();
    let (settings_tx, settings) = watch::channel(applied.settings);
    let inspection = applied.mtproto;
    if let Some(m) = &inspection {
        tracing::info!(
            secrets = m.secrets().as_slice().len(),
            in_token = config.mtproto.hsm_secrets.len(),
            "inspecting MTProto handshakes"
        );
    }
    {
        let r = &applied_refusal;
        tracing::info!(
            failed_handshake = r.failed_handshake.as_str(),
            replay = r.replay.as_str(),
            blocked = r.blocked.as_str(),
            "refused sources: what they see"
        );
    }
    let (mtproto_tx, mtproto) = watch::channel(inspection);
    let senders = Senders {
        guard: guard.clone(),
        settings: settings_tx,
        mtproto: mtproto_tx,
        keyring,
        telemetry: node.telemetry.clone(),
    };
    let mut servers = Vec::new();
    for addr in &config.server.listen {
        let listener = bind(*addr).await?;
        tracing::info!(listen = %addr, backend = %config.server.backend, "guarding");
        servers.push(tokio::spawn(proxy::serve_inspected(
            listener,
            guard.clone(),
            settings.clone(),
            mtproto.clone(),
            node.telemetry.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(addr) = admin_listen {
        let token = admin::load_or_create_token(config.admin.token_file.as_deref(), &state_dir)?;
        let listener = bind(addr).await?;
        tracing::info!(admin = %addr, "admin API and /metrics");
        let settings = Arc::new(AdminSettings {
            token,
            state_dir: Some(state_dir.clone()),
            pins_file: config
                .server
                .backend_tls
                .as_ref()
                .and_then(|t| t.pinning.pins_file.clone()),
        });
        tokio::spawn(admin::serve(
            listener,
            node.clone(),
            settings,
            shutdown.clone(),
        ));
    }
    if let (Some(refresh), Some(pins)) = (&config.refresh, plan.refresh_pins.clone()) {
        tracing::info!(
            files = refresh.files.len(),
            interval = %crate::config::format_duration(refresh.interval),
            "refreshing Telegram's proxy files, pinned"
        );
        let job = Refresh {
            refresh: refresh.clone(),
            pins,
            level,
        };
        jobs::spawn(job, &node, &shutdown);
    }
    let persist = state::Persist {
        dir: state_dir.clone(),
        interval: Duration::from_millis(500),
    };
    jobs::spawn(persist, &node, &shutdown);

    // Every listener is bound and every job started: up, for systemd too.
    systemd::ready();
    systemd::start_watchdog(&guard);
    let config = plan.config;
    signals(&opts, &senders, config).await?;

    systemd::stopping();
    tracing::info!("shutting down: no new connections; draining");
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + opts.drain_timeout;
    while guard.with(|e, _| e.active_connections()) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = guard.with(|e, _| e.active_connections());
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline passed; closing the rest"
        );
    }
    let n = node.clone();
    tokio::task::spawn_blocking(move || state::save(&n, &state_dir))
        .await
        .context("state save task")??;
    tracing::info!("state saved; bye");
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
