//! The service manager's notification protocol (`sd_notify(3)`), for units
//! of `Type=notify` with `WatchdogSec=`: `READY=1` once every listener is
//! bound, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1`
//! at shutdown, and `WATCHDOG=1` from a task that proves the runtime and
//! the engine alive. Without `$NOTIFY_SOCKET` (not under systemd) every
//! call does nothing.
//!
//! The messages go out with the `sd-notify` crate. `$NOTIFY_SOCKET` and
//! `$WATCHDOG_USEC` stay in the environment (unsetting them while other
//! threads run is not sound): the `nft` that `[kernel] nft_set` runs
//! inherits them and ignores them.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::engine::Guard;

/// Sends `states` in one datagram. A failure is logged, never fatal: the
/// guard works the same whether or not systemd hears it (and a unit whose
/// manager misses `READY=1` fails on its own timeout, which says why).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Every listener is bound: the service is up.
pub(super) fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A reload begins. `MONOTONIC_USEC` is what `Type=notify-reload`
/// (systemd 253 and later) asks for, to tell this reload from an older
/// one; older managers ignore it.
pub(super) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The service is stopping: draining, saving state.
pub(super) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// The watchdog interval the manager asked for, as `sd_watchdog_enabled(3)`
/// reads it: `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another
/// process. (The crate's own reader also wants `$WATCHDOG_PID` present,
/// which systemd sets but a plain parent cannot, not knowing the pid
/// before the child exists.)
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the watchdog task if the manager asked for one: every half
/// interval (as systemd recommends) it takes the engine's lock, which
/// a stuck handler or a deadlock would hold, and only then sends
/// `WATCHDOG=1`. Being a task on the runtime, it also stops pinging when
/// the runtime's workers no longer get to run it. It runs until the
/// process ends: the drain and the last state save are watched too.
pub(super) fn start_watchdog(guard: &Arc<Guard>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let period = interval / 2;
    tracing::info!(
        interval = %crate::config::format_duration(interval),
        "service manager watchdog on: pinging every half interval"
    );
    let guard = guard.clone();
    tokio::spawn(async move {
        loop {
            // Through the lock on a blocking thread: a lock that never
            // comes back must stop the pings, not a runtime worker.
            let g = guard.clone();
            let alive = tokio::task::spawn_blocking(move || g.with(|e, _| e.active_connections()));
            if alive.await.is_err() {
                return;
            }
            notify(&[NotifyState::Watchdog]);
            tokio::time::sleep(period).await;
        }
    });
}
