//! The bouncer: follows the Local API's decision stream into the engine.

use super::ledger::{Action, Ban, Ledger, Lift, New, Outcome, Target};
use super::*;

/// A decision as the stream carries it (other fields are ignored).
#[derive(Deserialize, Debug)]
pub(super) struct Decision {
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
pub(super) struct Stream {
    #[serde(default)]
    new: Option<Vec<Decision>>,
    #[serde(default)]
    deleted: Option<Vec<Decision>>,
}

pub(super) struct Bouncer {
    pub(super) guard: Arc<Guard>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) client: reqwest::Client,
    pub(super) url: String,
    /// The bouncer key; `None` when the client certificate stands for it.
    pub(super) key: Option<String>,
    pub(super) poll: Duration,
    pub(super) ledger: Ledger,
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
                        tracing::warn!(error = %e, held = self.ledger.len(),
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
    pub(super) async fn pull(&self, startup: bool) -> Result<Stream, String> {
        let url = format!(
            "{}v1/decisions/stream?startup={startup}&scopes=ip,range",
            self.url
        );
        let mut request = self.client.get(&url);
        if let Some(key) = &self.key {
            request = request.header("X-Api-Key", key);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::pinning::fetch::error_chain(&e)))?;
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

    /// Decodes an answer, feeds it to the ledger and applies what it says.
    pub(super) fn apply(&mut self, stream: Stream, startup: bool) {
        let prefix = self.guard.with(|e, _| e.policy().ipv6_prefix);
        let new: Vec<New> = stream
            .new
            .unwrap_or_default()
            .iter()
            .map(|d| match parse_decision(d, prefix) {
                Some((target, duration)) => New::Ban(Ban {
                    id: d.id,
                    target,
                    duration,
                }),
                None => New::Unusable,
            })
            .collect();
        let deleted: Vec<u64> = stream
            .deleted
            .unwrap_or_default()
            .iter()
            .map(|d| d.id)
            .collect();
        let now = Instant::now();
        let outcome = if startup {
            let external: Vec<ClientKey> = self.guard.with(|e, _| {
                e.blocks()
                    .filter(|b| b.cause == BlockCause::External)
                    .map(|b| b.client)
                    .collect()
            });
            self.ledger.full(now, &new, &deleted, &external)
        } else {
            self.ledger.delta(now, &new, &deleted)
        };
        self.enact(outcome, prefix);
    }

    /// Forgets decisions past their end.
    pub(super) fn expire(&mut self) {
        let actions = self.ledger.expire(Instant::now());
        let prefix = self.guard.with(|e, _| e.policy().ipv6_prefix);
        self.enact(
            Outcome {
                actions,
                ..Outcome::default()
            },
            prefix,
        );
    }

    fn enact(&self, outcome: Outcome, prefix: u8) {
        let status = &self.telemetry.crowdsec;
        status.applied.fetch_add(outcome.applied, Ordering::Relaxed);
        status.ignored.fetch_add(outcome.ignored, Ordering::Relaxed);
        status.removed.fetch_add(outcome.removed, Ordering::Relaxed);
        // The engine's blocks, read once per answer and kept current, so
        // that a first pull of thousands of bans is not thousands of scans.
        let mut blocks: Option<HashMap<ClientKey, Option<mtguard_core::Instant>>> = None;
        for action in outcome.actions {
            match action {
                Action::Block { client, duration } => {
                    let blocks = blocks.get_or_insert_with(|| {
                        self.guard
                            .with(|e, _| e.blocks().map(|b| (b.client, b.until)).collect())
                    });
                    let result = self.guard.with(|e, now| {
                        let end = now.saturating_add(duration);
                        match blocks.get(&client) {
                            // Already blocked at least as long: a local
                            // block keeps its cause, and our own reports
                            // coming back change nothing.
                            Some(None) => return Ok(false),
                            Some(Some(until)) if *until >= end => return Ok(false),
                            _ => {}
                        }
                        e.block_key(now, client, Some(duration), BlockCause::External)
                            .map(|()| true)
                    });
                    match result {
                        Ok(true) => {
                            blocks.insert(client, Some(self.guard.now().saturating_add(duration)));
                        }
                        Ok(false) => {}
                        Err(e) => {
                            status.ignored.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(client = %client.display(prefix), error = %e,
                                "CrowdSec decision not applied");
                        }
                    }
                }
                Action::Unblock { client, why } => {
                    // Only blocks this bouncer made (cause `external`): a
                    // local block runs its own course.
                    let lifted = self.guard.with(|e, now| {
                        let external = e
                            .blocks()
                            .any(|b| b.client == client && b.cause == BlockCause::External);
                        external && e.unblock_key(now, client)
                    });
                    if let Some(blocks) = blocks.as_mut().filter(|_| lifted) {
                        blocks.remove(&client);
                    }
                    match (lifted, why) {
                        (false, _) => {}
                        (true, Lift::Deleted) => {
                            tracing::info!(client = %client.display(prefix), "CrowdSec decision deleted: unblocked");
                        }
                        (true, Lift::Uncovered) => {
                            tracing::info!(client = %client.display(prefix), "no CrowdSec decision covers this block any more: unblocked");
                        }
                    }
                }
                Action::SetRanges(ranges) => {
                    if let Err(e) = self.guard.set_external_deny(&ranges) {
                        status.error(&format!("{e:#}"));
                        tracing::warn!(error = %format!("{e:#}"), "CrowdSec ranges not applied");
                    }
                }
            }
        }
        status
            .decisions
            .store(self.ledger.len() as u64, Ordering::Relaxed);
    }
}

/// A ban on an address or a range, and its duration; `None` for anything
/// else (other types such as `captcha`, other scopes, bad values, a
/// duration already over).
pub(super) fn parse_decision(d: &Decision, ipv6_prefix: u8) -> Option<(Target, Duration)> {
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
