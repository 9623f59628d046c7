//! The refresh job: keeps Telegram's proxy files (`[refresh]`) current,
//! every fetch pinned.

use std::sync::Arc;
use std::time::Duration;

use mtguard_core::pins::PinSet;

use crate::config::RefreshConfig;
use crate::jobs::{self, Job, Shutdown};
use crate::node::Handles;
use crate::pinning::fetch::{fetch, FetchOptions};
use crate::telemetry::JobKind;

/// The refresh job: fetches every `[refresh]` file, then again every
/// `interval` plus a random part of `jitter`. A failed fetch leaves the file
/// as it was and is retried at the next round.
pub struct Refresh {
    /// What to fetch, where to, and how often.
    pub refresh: RefreshConfig,
    /// The pins the fetches must meet.
    pub pins: Arc<PinSet>,
    /// The security level (the default of `on_expired`).
    pub level: u8,
}

impl Job for Refresh {
    const KIND: JobKind = JobKind::Refresh;

    async fn run(self, node: Arc<Handles>, mut shutdown: Shutdown) {
        let Refresh {
            refresh,
            pins,
            level,
        } = self;
        let job = node.telemetry.jobs.get(Self::KIND);
        loop {
            let mut failed = None;
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
                match fetch(&opts, Some(node.guard.clone())).await {
                    Ok(f) => tracing::info!(
                        url = %url,
                        file = %out.display(),
                        bytes = f.bytes,
                        changed = f.changed,
                        "refreshed"
                    ),
                    Err(e) => {
                        tracing::error!(
                            url = %url,
                            file = %out.display(),
                            error = %format!("{e:#}"),
                            "refresh failed; the file is unchanged"
                        );
                        failed = Some(format!("{url}: {e:#}"));
                    }
                }
            }
            match failed {
                Some(e) => job.failed(&e),
                None => job.succeeded(),
            }
            let jitter_ms = u64::try_from(refresh.jitter.as_millis()).unwrap_or(u64::MAX);
            let mut random = [0u8; 8];
            let extra = match getrandom::fill(&mut random) {
                Ok(()) if jitter_ms > 0 => u64::from_le_bytes(random) % jitter_ms,
                _ => 0,
            };
            tokio::select! {
                () = tokio::time::sleep(refresh.interval + Duration::from_millis(extra)) => {}
                () = jobs::stopped(&mut shutdown) => return,
            }
        }
    }
}
