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

use crate::unix_now;
use std::collections::{HashMap, HashSet};
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

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("mtguard/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Starts what `config` asks for: reads the secrets now (a missing file is
/// an error at start), then runs in the background.
pub fn start(
    config: &CrowdsecConfig,
    node: &Arc<Handles>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let client = http_client()?;
    let status = &node.telemetry.crowdsec;
    if let Some(file) = &config.api_key_file {
        let key = read_secret(file, "api_key_file")?;
        status.bouncer.store(true, Ordering::Relaxed);
        let bouncer = Bouncer {
            guard: node.guard.clone(),
            telemetry: node.telemetry.clone(),
            client: client.clone(),
            url: config.lapi_url.clone(),
            key,
            poll: config.poll_interval,
            decisions: HashMap::new(),
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

// ----- bouncer -----

/// A decision as the stream carries it (other fields are ignored).
#[derive(Deserialize, Debug)]
struct Decision {
    id: u64,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    scope: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize, Debug)]
struct Stream {
    #[serde(default)]
    new: Option<Vec<Decision>>,
    #[serde(default)]
    deleted: Option<Vec<Decision>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Target {
    Client(ClientKey),
    Range(Cidr),
}

struct Held {
    target: Target,
    until: Instant,
}

struct Bouncer {
    guard: Arc<Guard>,
    telemetry: Arc<Telemetry>,
    client: reqwest::Client,
    url: String,
    key: String,
    poll: Duration,
    decisions: HashMap<u64, Held>,
}

impl Job for Bouncer {
    const KIND: JobKind = JobKind::CrowdsecBouncer;

    async fn run(mut self, _: Arc<Handles>, mut shutdown: Shutdown) {
        let telemetry = self.telemetry.clone();
        let (status, job) = (&telemetry.crowdsec, telemetry.jobs.get(Self::KIND));
        let poll = self.poll;
        // The first pull, and the first after an outage, asks for every
        // active decision: what the Local API no longer lists was deleted
        // while we could not hear it.
        let mut startup = true;
        let mut backoff = poll;
        loop {
            self.expire();
            match self.pull(startup).await {
                Ok(stream) => {
                    if status.consecutive_failures.load(Ordering::Relaxed) > 0 {
                        tracing::info!("CrowdSec Local API reachable again");
                    }
                    self.apply(stream, startup);
                    startup = false;
                    backoff = poll;
                    status.lapi_up.store(true, Ordering::Relaxed);
                    status.consecutive_failures.store(0, Ordering::Relaxed);
                    status.pulls.fetch_add(1, Ordering::Relaxed);
                    status.last_pull_unix.store(unix_now(), Ordering::Relaxed);
                    job.succeeded();
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        () = jobs::stopped(&mut shutdown) => return,
                    }
                }
                Err(e) => {
                    let failures = status.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                    status.pull_failures.fetch_add(1, Ordering::Relaxed);
                    status.lapi_up.store(false, Ordering::Relaxed);
                    status.error(&e);
                    job.failed(&e);
                    if failures == 0 {
                        tracing::warn!(error = %e, held = self.decisions.len(),
                            "CrowdSec Local API unreachable: keeping the decisions held, retrying");
                    }
                    startup = true;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = jobs::stopped(&mut shutdown) => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF.max(poll));
                }
            }
        }
    }
}

impl Bouncer {
    async fn pull(&self, startup: bool) -> Result<Stream, String> {
        let url = format!(
            "{}v1/decisions/stream?startup={startup}&scopes=ip,range",
            self.url
        );
        let mut response = self
            .client
            .get(&url)
            .header("X-Api-Key", &self.key)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let code = response.status();
        if !code.is_success() {
            return Err(format!("GET {url}: HTTP {code}"));
        }
        // Read in pieces up to a bound: a first pull of a Local API fed
        // with large blocklists is megabytes, and memory stays a number.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_STREAM_BYTES {
                return Err(format!(
                    "GET {url}: answer larger than {} MiB",
                    MAX_STREAM_BYTES >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: bad answer: {e}"))
    }

    fn apply(&mut self, stream: Stream, startup: bool) {
        let telemetry = self.telemetry.clone();
        let status = &telemetry.crowdsec;
        let now = Instant::now();
        let prefix = self.guard.with(|e, _| e.policy().ipv6_prefix);
        let mut touched: HashSet<Target> = HashSet::new();
        let mut ranges_changed = false;

        let new = stream.new.unwrap_or_default();
        if startup {
            let listed: HashSet<u64> = new.iter().map(|d| d.id).collect();
            let gone: Vec<u64> = self
                .decisions
                .keys()
                .filter(|id| !listed.contains(id))
                .copied()
                .collect();
            for id in gone {
                if let Some(held) = self.decisions.remove(&id) {
                    status.removed.fetch_add(1, Ordering::Relaxed);
                    touched.insert(held.target);
                }
            }
        }
        for d in stream.deleted.unwrap_or_default() {
            if let Some(held) = self.decisions.remove(&d.id) {
                status.removed.fetch_add(1, Ordering::Relaxed);
                touched.insert(held.target);
            }
        }
        // Lift what no remaining decision covers; only blocks this bouncer
        // made (cause `external`): a local block runs its own course.
        let still: HashSet<Target> = self.decisions.values().map(|h| h.target).collect();
        for target in touched.iter().filter(|t| !still.contains(t)) {
            match *target {
                Target::Client(key) => {
                    let lifted = self.guard.with(|e, now| {
                        let external = e
                            .blocks()
                            .any(|b| b.client == key && b.cause == BlockCause::External);
                        external && e.unblock_key(now, key)
                    });
                    if lifted {
                        tracing::info!(client = %key.display(prefix), "CrowdSec decision deleted: unblocked");
                    }
                }
                Target::Range(_) => ranges_changed = true,
            }
        }

        let mut blocks: Option<HashMap<ClientKey, Option<mtguard_core::Instant>>> = None;
        for d in new {
            let Some((target, duration)) = parse_decision(&d, prefix) else {
                status.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if !self.decisions.contains_key(&d.id) && self.decisions.len() >= MAX_DECISIONS {
                status.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if matches!(target, Target::Range(_)) {
                let ranges = self
                    .decisions
                    .values()
                    .filter(|h| matches!(h.target, Target::Range(_)))
                    .count();
                if ranges >= MAX_RANGES {
                    status.ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                ranges_changed = true;
            }
            self.decisions.insert(
                d.id,
                Held {
                    target,
                    until: now + duration,
                },
            );
            status.applied.fetch_add(1, Ordering::Relaxed);
            if let Target::Client(key) = target {
                let blocks = blocks.get_or_insert_with(|| {
                    self.guard
                        .with(|e, _| e.blocks().map(|b| (b.client, b.until)).collect())
                });
                let result = self.guard.with(|e, now| {
                    let end = now.saturating_add(duration);
                    match blocks.get(&key) {
                        // Already blocked at least as long: a local block
                        // keeps its cause, and our own reports coming back
                        // change nothing.
                        Some(None) => return Ok(false),
                        Some(Some(until)) if *until >= end => return Ok(false),
                        _ => {}
                    }
                    e.block_key(now, key, Some(duration), BlockCause::External)
                        .map(|()| true)
                });
                match result {
                    Ok(true) => {
                        blocks.insert(key, Some(self.guard.now().saturating_add(duration)));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        status.ignored.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(client = %key.display(prefix), error = %e,
                            "CrowdSec decision not applied");
                    }
                }
            }
        }
        if startup {
            self.lift_uncovered(prefix);
        }
        if ranges_changed {
            self.apply_ranges();
        }
        status
            .decisions
            .store(self.decisions.len() as u64, Ordering::Relaxed);
    }

    /// After a full list: lifts the engine's `external` blocks no decision
    /// covers any more, such as those restored from the state of a run
    /// whose decisions were deleted while the guard was down.
    fn lift_uncovered(&self, prefix: u8) {
        let covered: HashSet<ClientKey> = self
            .decisions
            .values()
            .filter_map(|h| match h.target {
                Target::Client(k) => Some(k),
                Target::Range(_) => None,
            })
            .collect();
        let lifted = self.guard.with(|e, now| {
            let stale: Vec<ClientKey> = e
                .blocks()
                .filter(|b| b.cause == BlockCause::External && !covered.contains(&b.client))
                .map(|b| b.client)
                .collect();
            for key in &stale {
                e.unblock_key(now, *key);
            }
            stale
        });
        for key in lifted {
            self.telemetry
                .crowdsec
                .removed
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %key.display(prefix), "no CrowdSec decision covers this block any more: unblocked");
        }
    }

    /// Forgets decisions past their end (the engine ends the blocks on its
    /// own clock; ranges are lifted here).
    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.decisions.len();
        let mut ranges = false;
        self.decisions.retain(|_, h| {
            let keep = h.until > now;
            ranges |= !keep && matches!(h.target, Target::Range(_));
            keep
        });
        if ranges {
            self.apply_ranges();
        }
        if self.decisions.len() != before {
            self.telemetry
                .crowdsec
                .decisions
                .store(self.decisions.len() as u64, Ordering::Relaxed);
        }
    }

    fn apply_ranges(&self) {
        let mut ranges: Vec<Cidr> = self
            .decisions
            .values()
            .filter_map(|h| match h.target {
                Target::Range(c) => Some(c),
                Target::Client(_) => None,
            })
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        if let Err(e) = self.guard.set_external_deny(&ranges) {
            self.telemetry.crowdsec.error(&format!("{e:#}"));
            tracing::warn!(error = %format!("{e:#}"), "CrowdSec ranges not applied");
        }
    }
}

/// A ban on an address or a range, and its duration; `None` for anything
/// else (other types such as `captcha`, other scopes, bad values, a
/// duration already over).
fn parse_decision(d: &Decision, ipv6_prefix: u8) -> Option<(Target, Duration)> {
    if !d.kind.eq_ignore_ascii_case("ban") {
        return None;
    }
    let duration = parse_go_duration(&d.duration).filter(|d| !d.is_zero())?;
    let target = if d.scope.eq_ignore_ascii_case("ip") {
        let ip: IpAddr = d.value.trim().parse().ok()?;
        Target::Client(ClientKey::new(ip, ipv6_prefix))
    } else if d.scope.eq_ignore_ascii_case("range") {
        let cidr = Cidr::parse(&d.value).ok()?;
        // A range no wider than one client is that client's block.
        if cidr.is_ipv4() && cidr.prefix_len() == 32
            || !cidr.is_ipv4() && cidr.prefix_len() >= ipv6_prefix
        {
            Target::Client(ClientKey::new(cidr.network(), ipv6_prefix))
        } else {
            Target::Range(cidr)
        }
    } else {
        return None;
    };
    Some((target, duration))
}

/// Parses a Go `time.Duration` string as the Local API writes it
/// (`4m54.752046318s`, `3h59m59.9s`, `-8.7ms`, `500µs`); a negative one
/// is `Some(ZERO)`. Written here because the Rust duration crates read
/// other grammars (humantime has no fractions).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        nanos += number * scale;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    (nanos.is_finite() && nanos < 1e19).then(|| Duration::from_nanos(nanos as u64))
}

// ----- watcher -----

struct Watcher {
    guard: Arc<Guard>,
    telemetry: Arc<Telemetry>,
    client: reqwest::Client,
    url: String,
    machine: String,
    password: String,
    token: Option<String>,
    /// The engine's blocks and detections, subscribed at start.
    events: mpsc::Receiver<Event>,
}

/// What one alert says.
struct Report {
    client: ClientKey,
    scenario: &'static str,
    /// The ban to share; `None` for a detection that blocked nobody.
    ban: Option<Duration>,
}

impl Job for Watcher {
    const KIND: JobKind = JobKind::CrowdsecWatcher;

    async fn run(mut self, _: Arc<Handles>, mut shutdown: Shutdown) {
        let telemetry = self.telemetry.clone();
        let (status, job) = (&telemetry.crowdsec, telemetry.jobs.get(Self::KIND));
        let mut events = std::mem::replace(&mut self.events, mpsc::channel(1).1);
        let mut batch: Vec<Event> = Vec::with_capacity(ALERT_BATCH);
        loop {
            let first = tokio::select! {
                first = events.recv() => first,
                () = jobs::stopped(&mut shutdown) => return,
            };
            let Some(first) = first else {
                return;
            };
            batch.clear();
            batch.push(first);
            // Gather what follows within a second, so that a wave of blocks
            // goes out in one request.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while batch.len() < ALERT_BATCH {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    _ => break,
                }
            }
            let reports = self.reports(&batch);
            if reports.is_empty() {
                continue;
            }
            let alerts = Value::Array(reports.iter().map(|r| self.alert(r)).collect());
            let mut delay = Duration::from_secs(1);
            let mut sent = false;
            for _attempt in 0..4 {
                match self.send(&alerts).await {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        status.error(&e);
                        job.failed(&e);
                        tracing::warn!(error = %e, alerts = reports.len(), "CrowdSec alerts not sent; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            if sent {
                job.succeeded();
                status
                    .alerts_sent
                    .fetch_add(reports.len() as u64, Ordering::Relaxed);
            } else {
                status
                    .alerts_failed
                    .fetch_add(reports.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Watcher {
    /// Alerts for a batch of events: each local block (with its ban), and
    /// each detection that blocked nobody. Blocks from shared decisions
    /// (`external`) and the operator's are not reported: the first came
    /// from the fleet (reporting them would loop), the second belong to
    /// the operator.
    fn reports(&self, batch: &[Event]) -> Vec<Report> {
        let now = self.guard.now();
        let mut out: Vec<Report> = Vec::new();
        for event in batch {
            let (client, scenario, ban) = match *event {
                Event::Blocked {
                    client,
                    cause,
                    until,
                    ..
                } => {
                    let scenario = match cause {
                        BlockCause::Violations => "mtguard/flood",
                        BlockCause::Scanner => "mtguard/scanner",
                        BlockCause::Replay => "mtguard/replay",
                        BlockCause::Slowloris => "mtguard/slowloris",
                        BlockCause::Manual | BlockCause::External => continue,
                    };
                    // A block until lifted is shared as a day: the fleet
                    // should not inherit a permanent ban by accident.
                    let ban = until.map_or(Duration::from_secs(86_400), |u| {
                        Duration::from_millis(u.as_millis().saturating_sub(now.as_millis()))
                    });
                    (client, scenario, Some(ban.max(Duration::from_secs(1))))
                }
                Event::ScannerDetected { client } => (client, "mtguard/scanner", None),
                Event::ReplayDetected { client } => (client, "mtguard/replay", None),
                Event::SlowlorisDetected { client } => (client, "mtguard/slowloris", None),
                _ => continue,
            };
            match out.iter_mut().find(|r| r.client == client) {
                // A detection and the block it caused are one alert.
                Some(r) => {
                    if ban.is_some() {
                        r.ban = ban;
                        r.scenario = scenario;
                    }
                }
                None => out.push(Report {
                    client,
                    scenario,
                    ban,
                }),
            }
        }
        out
    }

    fn alert(&self, r: &Report) -> Value {
        let prefix = self.guard.with(|e, _| e.policy().ipv6_prefix);
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let (scope, value) = if r.client.is_ipv4() {
            ("Ip", r.client.to_ip().to_string())
        } else {
            ("Range", r.client.display(prefix).to_string())
        };
        let ip = r.client.to_ip().to_string();
        let mut alert = json!({
            "scenario": r.scenario,
            "scenario_hash": "",
            "scenario_version": env!("CARGO_PKG_VERSION"),
            "message": format!("{} by mtguard on {}: {value}", r.scenario, self.machine),
            "events_count": 1,
            "start_at": stamp,
            "stop_at": stamp,
            "capacity": 0,
            "leakspeed": "0s",
            "simulated": false,
            "remediation": r.ban.is_some(),
            "events": [{
                "timestamp": stamp,
                "meta": [
                    {"key": "source_ip", "value": ip},
                    {"key": "service", "value": "mtguard"},
                ],
            }],
            "source": {"scope": scope, "value": value, "ip": ip},
        });
        if let Some(ban) = r.ban {
            alert["decisions"] = json!([{
                "duration": format!("{}s", ban.as_secs().max(1)),
                "origin": "crowdsec",
                "scenario": r.scenario,
                "scope": scope,
                "type": "ban",
                "value": value,
                "simulated": false,
            }]);
        }
        alert
    }

    async fn login(&mut self) -> Result<String, String> {
        let url = format!("{}v1/watchers/login", self.url);
        let response = self
            .client
            .post(&url)
            .json(&json!({
                "machine_id": self.machine,
                "password": self.password,
                "scenarios": ["mtguard/flood", "mtguard/scanner", "mtguard/replay", "mtguard/slowloris"],
            }))
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let code = response.status();
        if !code.is_success() {
            return Err(format!(
                "POST {url}: HTTP {code} (machine_id and password right?)"
            ));
        }
        #[derive(Deserialize)]
        struct Login {
            token: String,
        }
        let login: Login = response
            .json()
            .await
            .map_err(|e| format!("POST {url}: bad answer: {e}"))?;
        self.token = Some(login.token.clone());
        Ok(login.token)
    }

    async fn send(&mut self, alerts: &Value) -> Result<(), String> {
        let url = format!("{}v1/alerts", self.url);
        for _ in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => self.login().await?,
            };
            let response = self
                .client
                .post(&url)
                .bearer_auth(token)
                .json(alerts)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let code = response.status();
            if code == reqwest::StatusCode::UNAUTHORIZED || code == reqwest::StatusCode::FORBIDDEN {
                // The JWT expired: log in again once.
                self.token = None;
                continue;
            }
            if !code.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("POST {url}: HTTP {code}: {}", body.trim()));
            }
            return Ok(());
        }
        Err(format!("POST {url}: refused after a fresh login"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_the_local_api_writes_them() {
        let ms = |t: &str| parse_go_duration(t).map(|d| d.as_millis());
        assert_eq!(ms("4m54.752046318s"), Some(294_752));
        assert_eq!(ms("3h59m59.9s"), Some(14_399_900));
        assert_eq!(ms("300s"), Some(300_000));
        assert_eq!(ms("1500ms"), Some(1_500));
        assert_eq!(ms("500µs"), Some(0));
        assert_eq!(ms("-8.749361ms"), Some(0));
        assert_eq!(ms("0"), Some(0));
        for bad in ["", "5", "5x", "m", "1.2.3s", "--5s", "9999999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn own_blocks_are_reported_once_and_shared_ones_never() {
        use mtguard_core::{Level, Policy};
        let guard = Guard::new(
            Policy::for_level(Level::Standard),
            crate::engine::Capacity {
                clients: 64,
                connections: 64,
                prefixes: 4,
            },
            Box::new(crate::engine::LogEvents { ipv6_prefix: 64 }),
        )
        .unwrap();
        let watcher = Watcher {
            guard: guard.clone(),
            telemetry: Arc::new(Telemetry::default()),
            client: http_client().unwrap(),
            url: "http://127.0.0.1:1/".into(),
            machine: "m".into(),
            password: "p".into(),
            token: None,
            events: mpsc::channel(1).1,
        };
        let key = |d: u8| ClientKey::new(IpAddr::from([192, 0, 2, d]), 64);
        let until = Some(guard.now().saturating_add(Duration::from_secs(300)));
        let blocked = |d: u8, cause| Event::Blocked {
            client: key(d),
            cause,
            until,
            offences: 1,
        };
        let batch = [
            Event::ScannerDetected { client: key(1) },
            blocked(1, BlockCause::Scanner),
            blocked(2, BlockCause::External),
            blocked(3, BlockCause::Manual),
            blocked(4, BlockCause::Violations),
            Event::ReplayDetected { client: key(5) },
        ];
        let reports = watcher.reports(&batch);
        let got: Vec<(u8, &str, bool)> = reports
            .iter()
            .map(|r| match r.client.to_ip() {
                IpAddr::V4(a) => (a.octets()[3], r.scenario, r.ban.is_some()),
                IpAddr::V6(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "mtguard/scanner", true),
                (4, "mtguard/flood", true),
                (5, "mtguard/replay", false),
            ]
        );
        let ban = reports[0].ban.unwrap().as_secs();
        assert!((299..=300).contains(&ban), "{ban}");
        let alert = watcher.alert(&reports[0]);
        assert_eq!(alert["source"]["value"], "192.0.2.1");
        assert_eq!(alert["decisions"][0]["type"], "ban");
        assert_eq!(alert["decisions"][0]["scope"], "Ip");
        assert!(watcher.alert(&reports[2]).get("decisions").is_none());
    }

    #[test]
    fn only_bans_on_addresses_and_ranges_are_applied() {
        let d = |kind: &str, scope: &str, value: &str| Decision {
            id: 1,
            duration: "10m".into(),
            scope: scope.into(),
            kind: kind.into(),
            value: value.into(),
        };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            parse_decision(&d("ban", "Ip", "192.0.2.7"), 64),
            Some((
                Target::Client(ClientKey::new(ip, 64)),
                Duration::from_secs(600)
            ))
        );
        // A /32 range is one client; a /64 of IPv6 too, with /64 clients.
        assert_eq!(
            parse_decision(&d("ban", "Range", "192.0.2.7/32"), 64).map(|x| x.0),
            Some(Target::Client(ClientKey::new(ip, 64)))
        );
        assert!(matches!(
            parse_decision(&d("ban", "Range", "2001:db8:1:2::/64"), 64).map(|x| x.0),
            Some(Target::Client(_))
        ));
        assert!(matches!(
            parse_decision(&d("ban", "range", "10.8.0.0/16"), 64).map(|x| x.0),
            Some(Target::Range(_))
        ));
        assert_eq!(parse_decision(&d("captcha", "Ip", "192.0.2.7"), 64), None);
        assert_eq!(parse_decision(&d("ban", "Country", "FR"), 64), None);
        assert_eq!(parse_decision(&d("ban", "Ip", "not an ip"), 64), None);
        let mut expired = d("ban", "Ip", "192.0.2.7");
        expired.duration = "-3s".into();
        assert_eq!(parse_decision(&expired, 64), None);
    }
}
