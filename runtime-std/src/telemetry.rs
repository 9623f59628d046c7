//! What the admin API and the metrics read about the running node, beyond
//! the engine: handshake refusals by reason, the CrowdSec link, the
//! nftables mirror, the background jobs and the state saves.
//!
//! One [`Telemetry`] is built at start and handed down (inside
//! [`crate::node::Handles`]) to whatever writes or reads it; nothing here is
//! process-global, so two guards in one process (the tests) keep apart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mtguard_core::mtproto::Invalid;
use serde_json::{json, Value};

use crate::config::RefusalCase;
use crate::episode::Episode;

/// Everything the node reports besides the engine's own numbers.
pub struct Telemetry {
    /// MTProto handshakes refused by the inspection, by reason.
    pub handshake_failures: HandshakeFailures,
    /// The CrowdSec bouncer and watcher.
    pub crowdsec: CrowdsecStatus,
    /// The nftables mirror.
    pub nftables: NftablesStatus,
    /// Every background job, running or not.
    pub jobs: Jobs,
    /// Failed state saves, from the persistence job and the admin API
    /// together: one line when saving starts failing, one with the count
    /// when a save works again.
    pub save_trouble: Mutex<Episode>,
    /// What operators graph and alert on beyond the engine (see
    /// [`Operations`]).
    pub ops: Operations,
}

/// The first and the longest pause of the persistence job after a failed
/// save.
pub const SAVE_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// See [`SAVE_BACKOFF_MIN`].
pub const SAVE_BACKOFF_MAX: Duration = Duration::from_secs(8);

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            handshake_failures: HandshakeFailures::default(),
            crowdsec: CrowdsecStatus::default(),
            nftables: NftablesStatus::default(),
            jobs: Jobs::default(),
            save_trouble: Mutex::new(Episode::new(
                SAVE_BACKOFF_MIN,
                SAVE_BACKOFF_MAX,
                Duration::ZERO,
            )),
            ops: Operations::default(),
        }
    }
}

/// Refused handshakes since the node started, by reason (all listeners).
#[derive(Default)]
pub struct HandshakeFailures([AtomicU64; REASONS.len()]);

impl HandshakeFailures {
    /// Counts one refusal.
    pub fn record(&self, reason: Invalid) {
        self.0[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` of every refusal reason, for the metrics.
    pub fn counts(&self) -> [(&'static str, u64); REASONS.len()] {
        REASONS.map(|(reason, label)| (label, self.0[reason_index(reason)].load(Ordering::Relaxed)))
    }
}

/// Every refusal reason with its metric label, in declaration order.
pub const REASONS: [(Invalid, &str); 12] = [
    (Invalid::BadSecretOrTag, "bad_secret_or_tag"),
    (Invalid::OtherProtocol, "other_protocol"),
    (Invalid::TagNotAllowed, "tag_not_allowed"),
    (Invalid::BadDc, "bad_dc"),
    (Invalid::MalformedHello, "malformed_hello"),
    (Invalid::OversizedHello, "oversized_hello"),
    (Invalid::HmacMismatch, "hmac_mismatch"),
    (Invalid::Timestamp, "timestamp"),
    (Invalid::WrongSni, "wrong_sni"),
    (Invalid::Replay, "replay"),
    (Invalid::ReplayCacheFull, "replay_cache_full"),
    (Invalid::KeyUnavailable, "key_unavailable"),
];

fn reason_index(reason: Invalid) -> usize {
    // An exhaustive match: a new reason in the core fails to compile here
    // until it has a label.
    match reason {
        Invalid::BadSecretOrTag => 0,
        Invalid::OtherProtocol => 1,
        Invalid::TagNotAllowed => 2,
        Invalid::BadDc => 3,
        Invalid::MalformedHello => 4,
        Invalid::OversizedHello => 5,
        Invalid::HmacMismatch => 6,
        Invalid::Timestamp => 7,
        Invalid::WrongSni => 8,
        Invalid::Replay => 9,
        Invalid::ReplayCacheFull => 10,
        Invalid::KeyUnavailable => 11,
    }
}

/// The background jobs of a node (see [`crate::jobs`]), each with a slot of
/// its own: a fixed set, so the table cannot grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Saves the engine's state shortly after each change.
    Persist,
    /// Refreshes Telegram's proxy files.
    Refresh,
    /// Pulls CrowdSec's decision stream into the engine.
    CrowdsecBouncer,
    /// Sends the engine's blocks to CrowdSec as alerts.
    CrowdsecWatcher,
    /// Mirrors the engine's blocks into nftables sets.
    Nftables,
    /// Probes the `[hsm]` token so its loss and return are noticed.
    TokenMonitor,
}

impl JobKind {
    /// Every job, in slot order.
    pub const ALL: [JobKind; 6] = [
        JobKind::Persist,
        JobKind::Refresh,
        JobKind::CrowdsecBouncer,
        JobKind::CrowdsecWatcher,
        JobKind::Nftables,
        JobKind::TokenMonitor,
    ];

    /// The job's name in `/v1/status` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Persist => "persist",
            JobKind::Refresh => "refresh",
            JobKind::CrowdsecBouncer => "crowdsec_bouncer",
            JobKind::CrowdsecWatcher => "crowdsec_watcher",
            JobKind::Nftables => "nftables",
            JobKind::TokenMonitor => "token_monitor",
        }
    }
}

/// The last error of a job or a link, kept after a success for the
/// operator to read; empty until the first failure.
#[derive(Default)]
pub struct LastError(Mutex<String>);

impl LastError {
    /// Replaces it with `error`.
    pub fn set(&self, error: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = error.to_owned();
    }

    /// It, or `None` when nothing failed yet.
    pub fn get(&self) -> Option<String> {
        let error = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (!error.is_empty()).then(|| error.clone())
    }
}

/// How one job is doing.
#[derive(Default)]
pub struct JobStatus {
    /// The job runs (started and not yet stopped).
    pub running: AtomicBool,
    /// Rounds of work that failed since the last that worked.
    pub consecutive_failures: AtomicU64,
    /// The last failure, kept after a success for the operator to read.
    pub last_error: LastError,
}

impl JobStatus {
    /// A round of work worked.
    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// A round of work failed with `error`.
    pub fn failed(&self, error: &str) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.last_error.set(error);
    }
}

/// The status of every job.
#[derive(Default)]
pub struct Jobs([JobStatus; JobKind::ALL.len()]);

impl Jobs {
    /// The status of `job`.
    pub fn get(&self, job: JobKind) -> &JobStatus {
        &self.0[job as usize]
    }

    /// The jobs that ran at some point, as `/v1/status` shows them.
    pub fn json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for job in JobKind::ALL {
            let s = self.get(job);
            out.insert(
                job.as_str().to_owned(),
                json!({
                    "running": s.running.load(Ordering::Relaxed),
                    "consecutive_failures": s.consecutive_failures.load(Ordering::Relaxed),
                    "last_error": s.last_error.get(),
                }),
            );
        }
        Value::Object(out)
    }
}

/// How the CrowdSec link is doing, for the status and the metrics.
#[derive(Default)]
pub struct CrowdsecStatus {
    /// The bouncer runs.
    pub bouncer: AtomicBool,
    /// The watcher runs.
    pub watcher: AtomicBool,
    /// The last pull of the decision stream succeeded.
    pub lapi_up: AtomicBool,
    /// Pulls that failed since the last success.
    pub consecutive_failures: AtomicU64,
    /// Unix time of the last successful pull.
    pub last_pull_unix: AtomicU64,
    /// Successful pulls.
    pub pulls: AtomicU64,
    /// Failed pulls.
    pub pull_failures: AtomicU64,
    /// Decisions held now.
    pub decisions: AtomicU64,
    /// Ban decisions applied.
    pub applied: AtomicU64,
    /// Decisions removed because the stream deleted them.
    pub removed: AtomicU64,
    /// Decisions ignored: not a ban, an unknown scope, a bad value, or no
    /// room.
    pub ignored: AtomicU64,
    /// Alerts accepted by the Local API.
    pub alerts_sent: AtomicU64,
    /// Alerts given up after retries.
    pub alerts_failed: AtomicU64,
    /// The last error, for the status.
    pub last_error: LastError,
}

impl CrowdsecStatus {
    pub(crate) fn error(&self, e: &str) {
        self.last_error.set(e);
    }

    /// The status as `/v1/status` shows it; `None` when CrowdSec is off.
    pub fn json(&self) -> Option<Value> {
        let bouncer = self.bouncer.load(Ordering::Relaxed);
        let watcher = self.watcher.load(Ordering::Relaxed);
        if !bouncer && !watcher {
            return None;
        }
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(json!({
            "bouncer": bouncer,
            "watcher": watcher,
            "lapi_up": self.lapi_up.load(Ordering::Relaxed),
            "consecutive_failures": n(&self.consecutive_failures),
            "last_pull_unix": n(&self.last_pull_unix),
            "pulls": n(&self.pulls),
            "pull_failures": n(&self.pull_failures),
            "decisions": n(&self.decisions),
            "decisions_applied": n(&self.applied),
            "decisions_removed": n(&self.removed),
            "decisions_ignored": n(&self.ignored),
            "alerts_sent": n(&self.alerts_sent),
            "alerts_failed": n(&self.alerts_failed),
            "last_error": self.last_error.get(),
        }))
    }
}

/// How the mirror is doing, for the status and the metrics.
#[derive(Default)]
pub struct NftablesStatus {
    /// The mirror runs.
    pub enabled: AtomicBool,
    /// Elements in the sets, as last written or listed.
    pub elements: AtomicU64,
    /// Successful `nft` runs that changed the sets.
    pub updates: AtomicU64,
    /// Failed `nft` runs.
    pub errors: AtomicU64,
    /// Reconciliations done.
    pub reconciles: AtomicU64,
    /// The last error.
    pub last_error: LastError,
}

impl NftablesStatus {
    pub(crate) fn error(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error.set(e);
    }

    /// The status as `/v1/status` shows it; `None` when the mirror is off.
    pub fn json(&self) -> Option<Value> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(json!({
            "elements": n(&self.elements),
            "updates": n(&self.updates),
            "errors": n(&self.errors),
            "reconciles": n(&self.reconciles),
            "last_error": self.last_error.get(),
        }))
    }
}

/// The relay, the backend, reloads and saves, as counted for the metrics
/// (`docs/metrics.md`, "Operations"); kept together so that a metric added
/// here touches one place.
#[derive(Default)]
pub struct Operations {
    /// Bytes relayed, counted per copied chunk so that long connections
    /// (a Telegram client stays connected for hours) show up as they flow.
    pub relayed: RelayedBytes,
    /// Connections to the backend (or the mask backend) that failed.
    pub backend_failures: BackendFailures,
    /// SIGHUP reloads.
    pub reloads: Reloads,
    /// Successful state saves.
    pub saves_ok: AtomicU64,
    /// Failed state saves.
    pub saves_failed: AtomicU64,
    /// What refused sources were answered, and the caps of the answers
    /// that hold a connection (`[refusal]`).
    pub refusals: Refusals,
}

impl Operations {
    /// Counts one state save.
    pub fn saved(&self, ok: bool) {
        let counter = if ok {
            &self.saves_ok
        } else {
            &self.saves_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The answer a refused source was given: one of `[refusal]`'s, or the
/// TLS alert that replaces a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Given {
    /// A TCP reset.
    Reset,
    /// Held silently, then closed.
    Drop,
    /// Relayed to the cover site.
    Mask,
    /// A fatal TLS alert, then closed.
    Alert,
}

impl Given {
    /// Every answer, in slot order.
    pub const ALL: [Given; 4] = [Given::Reset, Given::Drop, Given::Mask, Given::Alert];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Given::Reset => "reset",
            Given::Drop => "drop",
            Given::Mask => "mask",
            Given::Alert => "alert",
        }
    }
}

/// A cap of `[refusal]` on connections held at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCap {
    /// `max_held`: dropped, delayed, or awaiting their first bytes.
    Held,
    /// `max_masked`: relayed to the cover site.
    Masked,
}

impl RefusalCap {
    /// Every cap, in slot order.
    pub const ALL: [RefusalCap; 2] = [RefusalCap::Held, RefusalCap::Masked];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCap::Held => "held",
            RefusalCap::Masked => "masked",
        }
    }
}

/// A bound that cut a masked connection short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskBound {
    /// `mask_max_bytes`.
    Bytes,
    /// `mask_timeout`.
    Time,
}

impl MaskBound {
    /// Every bound, in slot order.
    pub const ALL: [MaskBound; 2] = [MaskBound::Bytes, MaskBound::Time];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MaskBound::Bytes => "bytes",
            MaskBound::Time => "time",
        }
    }
}

/// Refusals by case and answer; the connections held and masked now
/// (gauges that are also the caps' counts, all listeners together);
/// how often a cap or a bound was met.
#[derive(Default)]
pub struct Refusals {
    given: [[AtomicU64; Given::ALL.len()]; RefusalCase::ALL.len()],
    /// Held now: dropped, delayed, or blocked and awaiting first bytes.
    pub held: AtomicU64,
    /// Masked now.
    pub masked: AtomicU64,
    cap_reached: [AtomicU64; RefusalCap::ALL.len()],
    cut: [AtomicU64; MaskBound::ALL.len()],
}

impl Refusals {
    /// Counts one answer given.
    pub fn given(&self, case: RefusalCase, given: Given) {
        self.given[case as usize][given as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one place under `cap` if fewer than `max` are taken; counts a
    /// refusal at the cap otherwise. Give it back with [`Refusals::release`].
    pub fn try_take(&self, cap: RefusalCap, max: u32) -> bool {
        let taken = self
            .gauge(cap)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.cap_reached[cap as usize].fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back a place [`Refusals::try_take`] took.
    pub fn release(&self, cap: RefusalCap) {
        self.gauge(cap).fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a masked connection cut at `bound`.
    pub fn cut(&self, bound: MaskBound) {
        self.cut[bound as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn gauge(&self, cap: RefusalCap) -> &AtomicU64 {
        match cap {
            RefusalCap::Held => &self.held,
            RefusalCap::Masked => &self.masked,
        }
    }

    /// `(case, answer, count)` of every pair, for the metrics.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for case in RefusalCase::ALL {
            for given in Given::ALL {
                let n = self.given[case as usize][given as usize].load(Ordering::Relaxed);
                out.push((case.as_str(), given.as_str(), n));
            }
        }
        out
    }

    /// `(cap, count)` of refusals at each cap.
    pub fn caps_reached(&self) -> [(&'static str, u64); RefusalCap::ALL.len()] {
        RefusalCap::ALL.map(|c| {
            (
                c.as_str(),
                self.cap_reached[c as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// `(bound, count)` of masked connections cut at each bound.
    pub fn cuts(&self) -> [(&'static str, u64); MaskBound::ALL.len()] {
        MaskBound::ALL.map(|b| (b.as_str(), self.cut[b as usize].load(Ordering::Relaxed)))
    }
}

/// One counter on a cache line of its own: the two directions of every
/// connection add to these at once, from every worker thread, and sharing
/// a line would make each add wait for the other direction's.
#[derive(Default)]
#[repr(align(64))]
pub struct PaddedCounter(pub AtomicU64);

/// Bytes relayed each way, all connections and listeners together.
#[derive(Default)]
pub struct RelayedBytes {
    /// Client to backend, the handshake included (a PROXY header is not:
    /// it is the guard's, not the client's).
    pub up: PaddedCounter,
    /// Backend to client.
    pub down: PaddedCounter,
}

/// Why a connection to the backend failed, as the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendFailure {
    /// The backend's name did not resolve.
    Resolve,
    /// Nothing listens there (connection refused or reset at connect).
    Refused,
    /// The connect or the TLS handshake took longer than `connect_timeout`.
    Timeout,
    /// No route to the backend's host or network.
    Unreachable,
    /// The TLS handshake with the backend failed (a pin failure included).
    Tls,
    /// Anything else (out of descriptors, for one).
    Other,
}

impl BackendFailure {
    /// Every kind, in slot order.
    pub const ALL: [BackendFailure; 6] = [
        BackendFailure::Resolve,
        BackendFailure::Refused,
        BackendFailure::Timeout,
        BackendFailure::Unreachable,
        BackendFailure::Tls,
        BackendFailure::Other,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendFailure::Resolve => "resolve",
            BackendFailure::Refused => "refused",
            BackendFailure::Timeout => "timeout",
            BackendFailure::Unreachable => "unreachable",
            BackendFailure::Tls => "tls",
            BackendFailure::Other => "other",
        }
    }

    /// The kind of a failed TCP connect (resolving is told apart by the
    /// caller, which resolves first).
    pub fn of_connect(error: &std::io::Error) -> BackendFailure {
        use std::io::ErrorKind::*;
        match error.kind() {
            ConnectionRefused | ConnectionReset => BackendFailure::Refused,
            TimedOut => BackendFailure::Timeout,
            HostUnreachable | NetworkUnreachable | AddrNotAvailable | NetworkDown => {
                BackendFailure::Unreachable
            }
            _ => BackendFailure::Other,
        }
    }
}

/// Backend connection failures by kind.
#[derive(Default)]
pub struct BackendFailures([AtomicU64; BackendFailure::ALL.len()]);

impl BackendFailures {
    /// Counts one failure.
    pub fn record(&self, kind: BackendFailure) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` of every kind, for the metrics.
    pub fn counts(&self) -> [(&'static str, u64); BackendFailure::ALL.len()] {
        BackendFailure::ALL.map(|k| (k.as_str(), self.0[k as usize].load(Ordering::Relaxed)))
    }
}

/// SIGHUP reloads: how many, and how the last one went.
pub struct Reloads {
    /// Reloads applied.
    pub ok: AtomicU64,
    /// Reloads refused (the previous config stayed in force).
    pub refused: AtomicU64,
    /// Unix time of the last reload, applied or refused; 0 before the
    /// first.
    pub last_unix: AtomicU64,
    /// The last reload was applied (true before the first: the config in
    /// force is the one the node started with, which was accepted).
    pub last_ok: AtomicBool,
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads {
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_unix: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
        }
    }
}

impl Reloads {
    /// Counts one reload at `unix` (seconds).
    pub fn record(&self, ok: bool, unix: u64) {
        let counter = if ok { &self.ok } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_ok.store(ok, Ordering::Relaxed);
        self.last_unix.store(unix, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot() {
        for (i, (reason, _)) in REASONS.iter().enumerate() {
            assert_eq!(reason_index(*reason), i);
        }
    }

    #[test]
    fn two_nodes_count_apart() {
        let (a, b) = (Telemetry::default(), Telemetry::default());
        a.handshake_failures.record(Invalid::Replay);
        let count = |t: &Telemetry| {
            t.handshake_failures
                .counts()
                .iter()
                .find(|(label, _)| *label == "replay")
                .unwrap()
                .1
        };
        assert_eq!((count(&a), count(&b)), (1, 0));
    }

    #[test]
    fn every_backend_failure_has_its_own_slot() {
        let failures = BackendFailures::default();
        for (i, kind) in BackendFailure::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
        failures.record(BackendFailure::Tls);
        let counts = failures.counts();
        assert!(
            counts.iter().all(|&(l, n)| n == u64::from(l == "tls")),
            "{counts:?}"
        );
    }

    #[test]
    fn connect_errors_are_told_apart() {
        use std::io::{Error, ErrorKind};
        let kind = |k| BackendFailure::of_connect(&Error::from(k));
        assert_eq!(kind(ErrorKind::ConnectionRefused), BackendFailure::Refused);
        assert_eq!(kind(ErrorKind::TimedOut), BackendFailure::Timeout);
        assert_eq!(
            kind(ErrorKind::HostUnreachable),
            BackendFailure::Unreachable
        );
        assert_eq!(kind(ErrorKind::OutOfMemory), BackendFailure::Other);
    }

    #[test]
    fn a_refused_reload_is_the_last_one() {
        let reloads = Reloads::default();
        assert!(reloads.last_ok.load(Ordering::Relaxed));
        reloads.record(true, 10);
        reloads.record(false, 20);
        assert!(!reloads.last_ok.load(Ordering::Relaxed));
        assert_eq!(reloads.last_unix.load(Ordering::Relaxed), 20);
        assert_eq!(reloads.ok.load(Ordering::Relaxed), 1);
        assert_eq!(reloads.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_job_has_its_own_slot() {
        let jobs = Jobs::default();
        jobs.get(JobKind::Nftables).failed("nft: no such set");
        for job in JobKind::ALL {
            let failures = jobs.get(job).consecutive_failures.load(Ordering::Relaxed);
            assert_eq!(failures, u64::from(job == JobKind::Nftables), "{job:?}");
        }
        jobs.get(JobKind::Nftables).succeeded();
        assert_eq!(jobs.json()["nftables"]["consecutive_failures"], 0);
        assert_eq!(jobs.json()["nftables"]["last_error"], "nft: no such set");
    }
}
