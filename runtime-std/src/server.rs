//! `mtguard run`: wires config, engine, listeners, admin API, persistence
//! and signals together.

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
use crate::fetch::FetchOptions;
use crate::hsm::{Keys, Token};
use crate::integrity::{self, Sealer};
use crate::mtproto::Mtproto;
use crate::proxy::{self, BackendTls, ProxySettings};
use crate::state;
use crate::tls::{PinSource, PinnedVerifier, Trust};
use mtguard_core::pins::{PinSet, PinSetError};

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

fn proxy_settings(
    config: &Config,
    guard: &Arc<Guard>,
    level: u8,
) -> anyhow::Result<Arc<ProxySettings>> {
    let backend_tls = match &config.server.backend_tls {
        None => None,
        Some(tls) => {
            let p = &tls.pinning;
            let roots = match p.trust {
                Trust::WebPki => crate::tls::roots(p.ca_file.as_deref())
                    .context("[server.backend_tls] ca_file")?,
                Trust::PinsOnly => rustls::RootCertStore::empty(),
            };
            let verifier = PinnedVerifier::new(
                config.server.backend.clone(),
                PinSource::Engine(guard.clone()),
                p.trust,
                p.on_expired(level),
                roots,
            );
            let server_name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                .context("[server.backend_tls] server_name")?;
            Some(BackendTls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config())),
                server_name,
            })
        }
    };
    Ok(Arc::new(ProxySettings {
        backend: config.server.backend.clone(),
        proxy_protocol: config.server.proxy_protocol,
        connect_timeout: config.server.connect_timeout,
        idle_timeout: config.server.idle_timeout,
        backend_tls,
    }))
}

/// Adds the backend's pins of the config and its pins file to the engine's
/// set (which already holds those restored from the state and added through
/// the admin API), then applies the level policy to the whole set.
fn merge_backend_pins(config: &Config, guard: &Guard, level: u8) -> anyhow::Result<()> {
    let Some(tls) = &config.server.backend_tls else {
        return Ok(());
    };
    let pins = tls
        .pinning
        .load_pins()
        .context("[server.backend_tls] pins")?;
    for pin in pins {
        let text = pin.to_string();
        match guard.with(|e, _| e.add_pin(pin)) {
            Ok(()) | Err(PinSetError::Duplicate) => {}
            Err(e @ PinSetError::Full { .. }) => {
                anyhow::bail!("[server.backend_tls] pin {text}: {e} (the 101st is refused)")
            }
        }
    }
    let all: Vec<_> = guard.with(|e, _| e.pins().iter().cloned().collect());
    crate::tls::check_backup_pins(level, &format!("backend {}", config.server.backend), &all)?;
    if all.is_empty() {
        tracing::warn!(
            backend = %config.server.backend,
            "[server.backend_tls] has no pin yet: add some with POST /v1/pins"
        );
    }
    Ok(())
}

/// The `[refresh]` pins, checked against the level policy.
fn refresh_pins(config: &Config, level: u8) -> anyhow::Result<Option<Arc<PinSet>>> {
    let Some(refresh) = &config.refresh else {
        return Ok(None);
    };
    let pins = refresh.pinning.load_pins().context("[refresh] pins")?;
    for (url, _, _) in &refresh.files {
        crate::tls::check_backup_pins(level, url, &pins)?;
    }
    let mut set = PinSet::new();
    for pin in pins {
        let text = pin.to_string();
        set.add(pin)
            .map_err(|e| anyhow::anyhow!("[refresh] pin {text}: {e}"))?;
    }
    Ok(Some(Arc::new(set)))
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
            match crate::fetch::fetch(&opts, Some(guard.clone())).await {
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

/// The MTProto inspection state of `config`, or `None` without
/// inspection. `previous` is the state it replaces (a reload), whose replay
/// cache it keeps when the time window is unchanged.
fn mtproto_state(
    config: &Config,
    token: Option<&Arc<Token>>,
    previous: Option<&Arc<Mtproto>>,
) -> anyhow::Result<Option<Arc<Mtproto>>> {
    let m = &config.mtproto;
    if !m.inspecting() {
        return Ok(None);
    }
    let (set, keys) = Keys::with_token(&m.secrets, &m.hsm_secrets, token.cloned())?;
    let state = Mtproto::with_keys(
        set,
        keys,
        m.window(),
        m.on_probe,
        m.mask_backend.clone(),
        previous.map(|p| &**p),
    );
    Ok(Some(Arc::new(state)))
}

/// How often the token is probed, so that its loss and its return are
/// noticed (and logged) without waiting for a handshake.
const HSM_PROBE: Duration = Duration::from_secs(1);

/// Opens the `[hsm]` token, if any, and makes its integrity key the seal
/// of the state file. A token that cannot be opened stops the start.
fn open_token(config: &Config) -> anyhow::Result<Option<Arc<Token>>> {
    let Some(hsm) = &config.hsm else {
        integrity::install(None);
        return Ok(None);
    };
    let token = Token::open(hsm)?;
    tracing::info!(
        module = %hsm.module.display(),
        token = %hsm.token,
        integrity_key = %hsm.integrity_key,
        "HSM token open; the state file is sealed with its integrity key"
    );
    integrity::install(Some(Sealer::Token(token.clone())));
    token.spawn_monitor(HSM_PROBE);
    Ok(Some(token))
}

/// Everything the listeners read per connection, sent on a reload.
struct Senders {
    guard: Arc<Guard>,
    settings: watch::Sender<Arc<ProxySettings>>,
    mtproto: watch::Sender<Option<Arc<Mtproto>>>,
    /// The `[hsm]` token opened at start; `[hsm]` changes need a restart.
    token: Option<Arc<Token>>,
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
    let policy = config.effective_policy(opts.level)?;
    let lists = config.load_lists()?;
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
    let token = open_token(&config)?;
    state::restore(&guard, &state_dir, opts.reset_state)?;
    guard.set_config_lists(&lists.allow, &lists.deny)?;
    let level = policy.level.number();
    merge_backend_pins(&config, &guard, level)?;
    let refresh = refresh_pins(&config, level)?;
    tokio::spawn(guard.clone().drive());
    // After the restore, so the kernel's sets start equal to the engine's
    // blocks; both read their secrets and check their sets now, so a
    // mistake stops the start instead of surfacing under attack.
    if let Some(set) = &config.kernel.nft_set {
        crate::kernel::start(&guard, set.clone())?;
    }
    if let Some(crowdsec) = &config.crowdsec {
        crate::crowdsec::start(crowdsec, &guard)?;
    }

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (settings_tx, settings) = watch::channel(proxy_settings(&config, &guard, level)?);
    let inspection = mtproto_state(&config, token.as_ref(), None)?;
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
        token,
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
    if let (Some(refresh), Some(pins)) = (&config.refresh, refresh) {
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

    signals(&opts, &guard, &senders, config).await?;

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
async fn signals(
    opts: &RunOptions,
    guard: &Arc<Guard>,
    senders: &Senders,
    mut current: Config,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match reload(opts, guard, senders, &current) {
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

/// Applies a new config without dropping connections. Everything is
/// validated before anything is applied.
fn reload(
    opts: &RunOptions,
    guard: &Guard,
    senders: &Senders,
    current: &Config,
) -> anyhow::Result<Config> {
    let new = load(opts)?;
    let policy = new.effective_policy(opts.level)?;
    let lists = new.load_lists()?;
    let level = policy.level.number();
    let settings = proxy_settings(&new, &senders.guard, level)?;
    merge_backend_pins(&new, guard, level)?;
    let previous = senders.mtproto.borrow().clone();
    if new.hsm != current.hsm {
        anyhow::bail!("[hsm] changes only on restart");
    }
    // `hsm:` labels are looked up in the token: blocking calls, so this
    // worker hands its other tasks to another thread first (the server
    // runs on the multi-threaded runtime).
    let inspection = tokio::task::block_in_place(|| {
        mtproto_state(&new, senders.token.as_ref(), previous.as_ref())
    })?;
    guard
        .with(|e, _| e.set_policy(policy))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    guard.set_config_lists(&lists.allow, &lists.deny)?;
    if new.crowdsec != current.crowdsec || new.kernel != current.kernel {
        tracing::warn!("[crowdsec] and [kernel] change only on restart");
    }
    if new.server.listen != current.server.listen || new.admin.listen != current.admin.listen {
        tracing::warn!("listen addresses change only on restart");
    }
    if new.refresh != current.refresh {
        tracing::warn!("[refresh] changes apply on restart");
    }
    let _ = senders.settings.send(settings);
    let _ = senders.mtproto.send(inspection);
    Ok(new)
}
