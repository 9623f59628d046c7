//! The watcher: reports the guard's own blocks and detections as alerts.

use super::*;

pub(super) struct Watcher {
    pub(super) guard: Arc<Guard>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) client: reqwest::Client,
    pub(super) url: String,
    pub(super) machine: String,
    pub(super) password: String,
    pub(super) token: Option<String>,
    /// The engine's blocks and detections, subscribed at start.
    pub(super) events: mpsc::Receiver<Event>,
}

/// What one alert says.
pub(super) struct Report {
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
    pub(super) fn reports(&self, batch: &[Event]) -> Vec<Report> {
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

    pub(super) fn alert(&self, r: &Report) -> Value {
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

    pub(super) async fn login(&mut self) -> Result<String, String> {
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
            .map_err(|e| format!("POST {url}: {}", crate::pinning::fetch::error_chain(&e)))?;
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

    pub(super) async fn send(&mut self, alerts: &Value) -> Result<(), String> {
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
                .map_err(|e| format!("POST {url}: {}", crate::pinning::fetch::error_chain(&e)))?;
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
    fn own_blocks_are_reported_once_and_shared_ones_never() {
        use mtguard_core::{Level, Policy};
        let guard = Guard::new(
            Policy::for_level(Level::Standard),
            crate::engine::Capacity {
                clients: 64,
                connections: 64,
                prefixes: 4,
                networks: 64,
            },
            Box::new(crate::engine::LogEvents { ipv6_prefix: 64 }),
        )
        .unwrap();
        let watcher = Watcher {
            guard: guard.clone(),
            telemetry: Arc::new(Telemetry::default()),
            client: reqwest::Client::new(),
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
}
