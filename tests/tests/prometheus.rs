//! `/metrics` read by the real thing: Debian's `prometheus` package (see
//! test.sh). `promtool check metrics` on both text formats; a Prometheus
//! started with its own config in a temporary directory scrapes a real
//! `mtguard run` every second, once as Prometheus asks (OpenMetrics) and
//! once through a relay that asks for the classic format, while the test
//! drives served and refused connections, a block, backend failures and
//! reloads; then its HTTP API must hold the guard's series with the values
//! the traffic gave them, every panel query of the shipped Grafana
//! dashboard must return series, and the shipped alert rules must load,
//! evaluate, and fire `MtguardReloadRefused` after a refused reload.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mtguard_tests::{free_port, http_request, metric, served_from, unix_now, EchoBackend, Server};
use serde_json::Value;

const TOKEN: &str = "prometheus-test-token-0123456789ab";
const BLOCKED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

/// Generous bound on anything that waits for a scrape to land: only a
/// hang reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A guard with an admin API, a state directory and a denylist.
struct Guard {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: EchoBackend,
}

impl Guard {
    fn new() -> Guard {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        fs::write(&token, TOKEN).unwrap();
        fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let g = Guard {
            dir,
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            backend: EchoBackend::start(),
        };
        g.write_config(&g.backend.addr.to_string(), "");
        g
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("mtguard.toml")
    }

    fn write_config(&self, backend: &str, extra: &str) {
        let text = format!(
            "level = 1\n{extra}\n\
             [server]\nlisten = [\"{}\"]\nbackend = \"{backend}\"\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"{}\"\n\
             [state]\ndir = \"{}\"\n\
             [lists]\ndeny = [\"{DENIED}\"]\n",
            self.listen,
            self.admin,
            self.dir.path().join("admin.token").display(),
            self.dir.path().join("state").display(),
        );
        fs::write(self.config(), text).unwrap();
    }

    fn scrape(&self) -> String {
        let (status, body) = http_request(self.admin, "GET", "/metrics", None, None).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn wait_metric(&self, series: &str, value: u64) {
        let start = Instant::now();
        loop {
            let m = self.scrape();
            if metric(&m, series) == value {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "{series} never {value}:\n{m}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET /metrics` asking for OpenMetrics by name: (content type, body).
fn scrape_openmetrics(admin: SocketAddr) -> (String, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Accept: application/openmetrics-text;version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (content_type(head).unwrap_or_default(), body.to_owned())
}

fn content_type(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    })
}

/// `promtool check metrics` on `text`: (exit code, what it said).
fn promtool_check_metrics(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// A scrape relay in front of the admin API, standing in for a scraper
/// that asks for the classic format (Prometheus 2.42 cannot be told to)
/// or passing Prometheus's own Accept header on; it records the content
/// type of every answer.
struct ScrapeRelay {
    addr: SocketAddr,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl ScrapeRelay {
    fn start(admin: SocketAddr, accept: Option<&'static str>) -> ScrapeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let seen = content_types.clone();
        // Lives until the test process ends; one scrape at a time.
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Some(ct) = relay_one(client, admin, accept) {
                    seen.lock().unwrap().push(ct);
                }
            }
        });
        ScrapeRelay {
            addr,
            content_types,
        }
    }

    fn content_types(&self) -> Vec<String> {
        self.content_types.lock().unwrap().clone()
    }
}

/// One request: its head with `Accept` replaced (when `accept` is set) and
/// `Connection: close`, sent to the guard; the answer sent back whole.
fn relay_one(mut client: TcpStream, admin: SocketAddr, accept: Option<&str>) -> Option<String> {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        let replaced = name == "connection" || (accept.is_some() && name == "accept");
        if !replaced {
            head.push_str(&line);
        }
    }
    if let Some(accept) = accept {
        head.push_str(&format!("Accept: {accept}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut guard = TcpStream::connect(admin).ok()?;
    guard.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    guard.write_all(head.as_bytes()).ok()?;
    let mut answer = Vec::new();
    guard.read_to_end(&mut answer).ok()?;
    client.write_all(&answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    content_type(text.split("\r\n\r\n").next()?)
}

/// A Prometheus server in a temporary directory; killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)], rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\nscrape_configs:\n",
            rules.display()
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        fs::write(&config_file, config).unwrap();
        let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; test.sh installs it)");
        let p = Prometheus { child, addr, dir };
        let start = Instant::now();
        while !matches!(
            http_request(p.addr, "GET", "/-/ready", None, None),
            Ok((200, _))
        ) {
            assert!(start.elapsed() < PATIENCE, "not ready: {}", p.log());
            thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` of the HTTP API: its `data`.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_request(self.addr, "GET", path, None, None).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query: the vector it returns, as (labels, value).
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)));
        assert_eq!(data["resultType"], "vector", "{promql}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Waits until `promql` returns exactly one series, of value `value`.
    fn wait_value(&self, promql: &str, value: f64) {
        let start = Instant::now();
        loop {
            let result = self.query(promql);
            if result.len() == 1 && result[0].1 == value {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{promql}: {result:?}, not one series of {value}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the dashboard, by panel title, with Grafana's template
/// variables replaced: `$__rate_interval` by `1m` (a minute holds many
/// 1 s scrapes) and `$job` by `.*` (the dashboard's "All").
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("runtime-std/dist/mtguard-grafana.json");
    let dashboard: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("${job}", ".*")
                .replace("$job", ".*");
            assert!(
                !expr.contains('$'),
                "panel {title:?}: a template variable this test does not know: {expr}"
            );
            queries.push((title.clone(), expr));
        }
    }
    queries
}

#[test]
fn promtool_reads_both_formats() {
    let g = Guard::new();
    let _server = Server::start_with_admin(&g.config(), g.admin);
    assert!(served_from(CLIENT, g.listen));

    let classic = g.scrape();
    let (code, said) = promtool_check_metrics(&classic);
    assert_eq!((code, said.as_str()), (0, ""), "classic format:\n{classic}");

    // promtool 2.42 parses OpenMetrics with the classic parser: the text
    // is read without an error, and the one lint it reports is that a
    // counter's sample (`x_total`) has no HELP, which OpenMetrics gives
    // its family (`x`). Anything else is a real problem.
    let (ct, openmetrics) = scrape_openmetrics(g.admin);
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let (code, said) = promtool_check_metrics(&openmetrics);
    assert_ne!(code, 1, "promtool: an error in OpenMetrics: {said}");
    let mut counters = 0;
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        let family = line
            .strip_suffix(" no help text")
            .and_then(|name| name.strip_suffix("_total"))
            .unwrap_or_else(|| panic!("promtool on OpenMetrics: {line}"));
        assert!(
            openmetrics.contains(&format!("# TYPE {family} counter\n"))
                && openmetrics.contains(&format!("# HELP {family} ")),
            "{line}"
        );
        counters += 1;
    }
    let types = openmetrics.matches(" counter\n").count();
    assert_eq!(counters, types, "{said}");
}

#[test]
fn prometheus_scrapes_both_formats_and_the_dashboard_and_alerts_work() {
    let started = unix_now();
    let g = Guard::new();
    let server = Server::start_with_admin(&g.config(), g.admin);
    let rules_file = repo().join("runtime-std/dist/mtguard-alerts.yml");
    let (code, said) = {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules_file)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    assert_eq!(code, Some(0), "promtool check rules: {said}");

    let openmetrics = ScrapeRelay::start(g.admin, None);
    let classic = ScrapeRelay::start(g.admin, Some("text/plain;version=0.0.4"));
    let jobs = ["mtguard", "mtguard_classic"];
    let prom = Prometheus::start(
        &[(jobs[0], openmetrics.addr), (jobs[1], classic.addr)],
        &rules_file,
    );

    // Prometheus hands its targets to the scrapers a few seconds after it
    // is ready: the traffic starts once both have been scraped, so that
    // Prometheus sees every counter rise (what rate() and the alerts read).
    for job in jobs {
        prom.wait_value(&format!("up{{job=\"{job}\"}}"), 1.0);
    }

    // Served: three echoes of five bytes each way.
    for _ in 0..3 {
        assert!(served_from(CLIENT, g.listen));
    }
    // Refused: a manual block, twice; the denylist, once.
    let (status, body) = http_request(
        g.admin,
        "POST",
        "/v1/blocks",
        Some(TOKEN),
        Some(&format!(r#"{{"ip": "{BLOCKED}", "duration": "10m"}}"#)),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    for _ in 0..2 {
        assert!(!served_from(BLOCKED, g.listen));
    }
    assert!(!served_from(DENIED, g.listen));
    g.wait_metric("mtguard_connections_rejected_total{reason=\"blocked\"}", 2);
    g.wait_metric(
        "mtguard_connections_rejected_total{reason=\"denylisted\"}",
        1,
    );

    // A backend nobody listens on, then the right one again: two reloads
    // that apply, one failed connect.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let reload = |count: usize| {
        server.signal("HUP");
        let start = Instant::now();
        while server.count_logged("configuration reloaded") < count {
            assert!(start.elapsed() < PATIENCE, "{}", server.log_text());
            thread::sleep(Duration::from_millis(20));
        }
    };
    g.write_config(&dead.to_string(), "");
    reload(1);
    assert!(!served_from(CLIENT, g.listen));
    g.wait_metric(
        "mtguard_backend_connect_failures_total{kind=\"refused\"}",
        1,
    );
    g.write_config(&g.backend.addr.to_string(), "");
    reload(2);
    // A config that does not parse: refused, the last reload now.
    g.write_config(&g.backend.addr.to_string(), "level = 9");
    server.signal("HUP");
    server.wait_logged("reload refused", PATIENCE);
    g.wait_metric("mtguard_config_last_reload_successful", 0);

    // The guard's own account, once everything above has landed.
    let m = g.scrape();
    let accepted = metric(&m, "mtguard_connections_accepted_total");
    assert_eq!(accepted, 4, "three served, one the backend refused:\n{m}");
    assert_eq!(
        metric(&m, "mtguard_relayed_bytes_total{direction=\"up\"}"),
        15
    );
    assert_eq!(
        metric(&m, "mtguard_relayed_bytes_total{direction=\"down\"}"),
        15
    );

    for job in jobs {
        // `@` stands for the job's matcher.
        let j = format!("job=\"{job}\"");
        let expected: &[(&str, f64)] = &[
            ("mtguard_connections_accepted_total{@}", 4.0),
            (
                "mtguard_connections_rejected_total{@,reason=\"blocked\"}",
                2.0,
            ),
            (
                "mtguard_connections_rejected_total{@,reason=\"denylisted\"}",
                1.0,
            ),
            (
                "mtguard_connections_rejected_total{@,reason=\"rate_limited\"}",
                0.0,
            ),
            ("mtguard_handshakes_total{@,result=\"valid\"}", 4.0),
            ("mtguard_blocks_total{@}", 1.0),
            ("mtguard_blocked_clients{@}", 1.0),
            ("mtguard_under_attack{@}", 0.0),
            ("mtguard_relayed_bytes_total{@,direction=\"up\"}", 15.0),
            ("mtguard_relayed_bytes_total{@,direction=\"down\"}", 15.0),
            (
                "mtguard_backend_connect_failures_total{@,kind=\"refused\"}",
                1.0,
            ),
            (
                "mtguard_backend_connect_failures_total{@,kind=\"resolve\"}",
                0.0,
            ),
            ("mtguard_reloads_total{@,result=\"ok\"}", 2.0),
            ("mtguard_reloads_total{@,result=\"refused\"}", 1.0),
            ("mtguard_config_last_reload_successful{@}", 0.0),
            ("mtguard_state_saves_total{@,result=\"failed\"}", 0.0),
            (
                "count(mtguard_state_saves_total{@,result=\"ok\"} >= 1)",
                1.0,
            ),
            ("count(process_open_fds{@} > 3)", 1.0),
            ("count(process_resident_memory_bytes{@} > 1e6)", 1.0),
            (
                "count(process_max_fds{@} >= on(instance) process_open_fds{@})",
                1.0,
            ),
            // Every reason has its series, counted or not.
            (
                "count(mtguard_connections_rejected_total{@})",
                mtguard_core::event::RejectReason::ALL.len() as f64,
            ),
        ];
        for (query, value) in expected {
            prom.wait_value(&query.replace('@', &j), *value);
        }
        let build = format!(
            "mtguard_build_info{{{j},version=\"{}\",commit=\"{}\"}}",
            env!("CARGO_PKG_VERSION"),
            mtguard::COMMIT
        );
        prom.wait_value(&build, 1.0);
        // The start time is read from /proc: within the test's run.
        let start = prom.query(&format!("process_start_time_seconds{{{j}}}"));
        assert_eq!(start.len(), 1, "{start:?}");
        let start = start[0].1;
        assert!(
            start >= started as f64 - 5.0 && start <= unix_now() as f64 + 5.0,
            "process_start_time_seconds {start}, test started at {started}"
        );
        let reloaded = prom.query(&format!(
            "mtguard_config_last_reload_timestamp_seconds{{{j}}}"
        ));
        assert_eq!(reloaded.len(), 1);
        assert!(reloaded[0].1 >= started as f64, "{reloaded:?}");
    }
    let seen = openmetrics.content_types();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|c| c == "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "Prometheus's own Accept header got {seen:?}"
    );
    let seen = classic.content_types();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|c| c == "text/plain; version=0.0.4; charset=utf-8"),
        "the classic relay got {seen:?}"
    );

    // Every panel of the dashboard shows something.
    let start = Instant::now();
    for (title, expr) in dashboard_queries() {
        loop {
            let result = prom.query(&expr);
            if !result.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "dashboard panel {title:?}: no series for {expr}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    // The fleet panels show "not configured" (-1) for a guard without
    // CrowdSec, nftables or a token, one series per job.
    for (title, expr) in dashboard_queries() {
        if ["CrowdSec Local API", "nftables elements", "HSM token"].contains(&title.as_str()) {
            let result = prom.query(&expr);
            assert_eq!(result.len(), 2, "{title}: {result:?}");
            assert!(
                result.iter().all(|(_, v)| *v == -1.0),
                "{title}: {result:?}"
            );
        }
    }

    // The rules load and evaluate without error, and the refused reload
    // fires its alert, for both jobs.
    let start = Instant::now();
    loop {
        let alerts = prom.api("/api/v1/alerts");
        let firing: Vec<&Value> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["labels"]["alertname"] == "MtguardReloadRefused" && a["state"] == "firing"
            })
            .collect();
        if firing.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no MtguardReloadRefused: {alerts}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let groups = prom.api("/api/v1/rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let shipped = fs::read_to_string(&rules_file).unwrap();
    assert_eq!(rules.len(), shipped.matches("- alert:").count(), "{groups}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // The failed connect to the backend raised its alert too (pending for
    // its two minutes, or firing on a slow run); nothing else is raised
    // on this quiet guard.
    let alerts = prom.api("/api/v1/alerts");
    let alerts = alerts["alerts"].as_array().unwrap();
    let unreachable = alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == "MtguardBackendUnreachable")
        .collect::<Vec<_>>();
    assert_eq!(unreachable.len(), 2, "{alerts:?}");
    assert!(
        unreachable.iter().all(|a| a["labels"]["kind"] == "refused"),
        "{alerts:?}"
    );
    for alert in alerts {
        let name = alert["labels"]["alertname"].as_str().unwrap();
        assert!(
            ["MtguardReloadRefused", "MtguardBackendUnreachable"].contains(&name),
            "{alert}"
        );
    }
}
