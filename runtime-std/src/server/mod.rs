//! `mtguard run`: wires config, engine, listeners, admin API, persistence
//! and signals together.

pub mod bootstrap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminSettings};
use crate::config::{Config, RefreshConfig};
use crate::engine::{Capacity, Guard, LogEvents};
use crate::persist::seal as integrity;
use crate::persist::state;
use crate::pinning::fetch::FetchOptions;
use crate::proxy::inspect::Mtproto;
use crate::proxy::{self, ProxySettings};
use crate::server::bootstrap::{Keyring, Node, Plan};
use mtguard_core::pins::PinSet;

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
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::embedded_default()),
    }
}

/// Fetches every `[refresh]` file, then again every `interval` plus a
/// random part of `jitter`. A failed fetch leaves the file as it was and is
/// retried at the next round.
async fn refresh_loop(refresh: RefreshConfig, pins: Arc<PinSet>, level: u8, guard: Arc<Guard>) {
    loop {
        for (url, out, kind) in &refresh.files {
            let opts = FetchOptions {
                url: url.clone(),
                pins: pins.iter().cloned().collect(),
                trust: refresh.pinning.trust,
                ca_file: refresh.pinning.ca_file.clone(),
                on_expired: refresh.pinning.on_expired(level),
                out: out.clone(),
                kind: *kind,
                timeout: Duration::from_secs(60),
            };
            match crate::pinning::fetch::fetch(&opts, Some(guard.clone())).await {
                Ok(f) => tracing::info!(
                    url = %url,
                    file = %out.display(),
                    bytes = f.bytes,
                    changed = f.changed,
                    "refreshed"
                ),
                Err(e) => tracing::error!(
                    url = %url,
                    file = %out.display(),
                    error = %format!("{e:#}"),
                    "refresh failed; the file is unchanged"
                ),
            }
        }
        let jitter_ms = u64::try_from(refresh.jitter.as_millis()).unwrap_or(u64::MAX);
        let mut random = [0u8; 8];
        let extra = match getrandom::fill(&mut random) {
            Ok(()) if jitter_ms > 0 => u64::from_le_bytes(random) % jitter_ms,
            _ => 0,
        };
        tokio::time::sleep(refresh.interval + Duration::from_millis(extra)).await;
    }
}

/// How often the token is probed, so that its loss and its return are
/// noticed (and logged) without waiting for a handshake.
const HSM_PROBE: Duration = Duration::from_secs(1);

/// Everything the listeners read per connection, sent on a reload.
struct Senders {
    guard: Arc<Guard>,
    settings: watch::Sender<Arc<ProxySettings>>,
    mtproto: watch::Sender<Option<Arc<Mtproto>>>,
    /// The `[hsm]` token opened at start; `[hsm]` changes need a restart.
    keyring: Keyring,
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
    if let (Some(hsm), Some(token)) = (&config.hsm, &keyring.token) {
        tracing::info!(
            module = %hsm.module.display(),
            token = %hsm.token,
            integrity_key = %hsm.integrity_key,
            "HSM token open; the state file is sealed with its integrity key"
        );
        token.spawn_monitor(HSM_PROBE);
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
    integrity::install_shared(keyring.sealer.clone());
    state::restore(&guard, &state_dir, opts.reset_state)?;
    // The pins of the state join the plan's: only now can their sum be
    // checked against the table and the level policy.
    plan.check_pins(&guard)?;
    let applied = plan.apply(&guard)?;
    let level = policy.level.number();
    tokio::spawn(guard.clone().drive());
    // After the restore, so the kernel's sets start equal to the engine's
    // blocks; both read their secrets and check their sets now, so a
    // mistake stops the start instead of surfacing under attack.
    if let Some(set) = &config.kernel.nft_set {
        crate::fleet::nftables::start(&guard, set.clone())?;
    }
    if let Some(crowdsec) = &config.crowdsec {
        crate::fleet::crowdsec::start(crowdsec, &guard)?;
    }

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (settings_tx, settings) = watch::channel(applied.settings);
    let inspection = applied.mtproto;
    if let Some(m) = &inspection {
        tracing::info!(
            secrets = m.secrets().as_slice().len(),
            in_token = config.mtproto.hsm_secrets.len(),
            on_probe = m.on_probe().as_str(),
            "inspecting MTProto handshakes"
        );
    }
    let (mtproto_tx, mtproto) = watch::channel(inspection);
    let senders = Senders {
        guard: guard.clone(),
        settings: settings_tx,
        mtproto: mtproto_tx,
        keyring,
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
            guard.clone(),
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
        tokio::spawn(refresh_loop(refresh.clone(), pins, level, guard.clone()));
    }
    tokio::spawn(state::persist_loop(
        guard.clone(),
        state_dir.clone(),
        Duration::from_millis(500),
    ));

    let config = plan.config;
    signals(&opts, &senders, config).await?;

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
    let g = guard.clone();
    tokio::task::spawn_blocking(move || state::save(&g, &state_dir))
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

/// Waits for SIGTERM or SIGINT; reloads on SIGHUP.
async fn signals(opts: &RunOptions, senders: &Senders, mut current: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match reload(opts, senders, &current) {
                Ok(new) => {
                    tracing::info!("configuration reloaded");
                    current = new;
                }
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "reload refused; the previous configuration stays in force"
                ),
            },
        }
    }
}

/// Applies a new config without dropping connections: the whole plan is
/// built and checked against the node first, so a refused reload changes
/// nothing.
fn reload(opts: &RunOptions, senders: &Senders, current: &Config) -> anyhow::Result<Config> {
    let new = load(opts)?;
    let node = Node {
        guard: &senders.guard,
        config: current,
        mtproto: senders.mtproto.borrow().clone(),
    };
    // List files, pins files and `hsm:` labels in the token: blocking
    // work, so this worker hands its other tasks to another thread first
    // (the server runs on the multi-threaded runtime).
    let plan = tokio::task::block_in_place(|| {
        Plan::build(new, opts.level, &senders.keyring, Some(&node))
    })?;
    let applied = plan.apply(&senders.guard)?;
    for what in &plan.restart_only {
        tracing::warn!("{what} changed: applies only on restart");
    }
    let _ = senders.settings.send(applied.settings);
    let _ = senders.mtproto.send(applied.mtproto);
    Ok(plan.config)
}
