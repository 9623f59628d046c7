//! Signals: SIGTERM and SIGINT stop the node, SIGHUP reloads its config
//! without dropping connections.

use std::sync::Arc;

use tokio::sync::watch;

use super::{load, RunOptions};
use crate::config::Config;
use crate::engine::Guard;
use crate::proxy::inspect::Mtproto;
use crate::proxy::ProxySettings;
use crate::server::bootstrap::{Keyring, Node, Plan};
use crate::telemetry::Telemetry;

/// Everything the listeners read per connection, sent on a reload.
pub(super) struct Senders {
    pub(super) guard: Arc<Guard>,
    pub(super) settings: watch::Sender<Arc<ProxySettings>>,
    pub(super) mtproto: watch::Sender<Option<Arc<Mtproto>>>,
    /// The `[hsm]` token opened at start; `[hsm]` changes need a restart.
    pub(super) keyring: Keyring,
    /// Where reloads are counted for the metrics.
    pub(super) telemetry: Arc<Telemetry>,
}

/// Waits for SIGTERM or SIGINT; reloads on SIGHUP.
pub(super) async fn signals(
    opts: &RunOptions,
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
            _ = hup.recv() => {
                // systemd shows the unit reloading until READY=1, which
                // follows a refused reload too: the old config serves on.
                super::systemd::reloading();
                let reloaded = reload(opts, senders, &current);
                let reloads = &senders.telemetry.ops.reloads;
                reloads.record(reloaded.is_ok(), crate::unix_now());
                match reloaded {
                    Ok(new) => {
                        tracing::info!("configuration reloaded");
                        current = new;
                    }
                    Err(e) => tracing::error!(
                        error = %format!("{e:#}"),
                        "reload refused; the previous configuration stays in force"
                    ),
                }
                super::systemd::ready();
            }
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
