//! The admin API and metrics over real HTTP: authentication, blocks and pins
//! changed live in the engine, metrics that follow the traffic, the token
//! file, persistence of API changes, shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mtguard::admin::{self, AdminSettings};
use mtguard::engine::Guard;
use mtguard_core::cidr::Cidr;
use mtguard_core::pins::Pin;
use mtguard_core::{HandshakeOutcome, Level, Policy, RejectReason};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn guard(policy: Policy) -> Arc<Guard> {
    mtguard_tests::test_guard(policy)
}

struct Server {
    addr: SocketAddr,
    guard: Arc<Guard>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_with(guard: Arc<Guard>, state_dir: Option<PathBuf>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Arc::new(AdminSettings {
        pins_file: None,
        token: TOKEN.to_owned(),
        state_dir,
    });
    let (stop, stopped) = watch::channel(false);
    let node = Arc::new(mtguard::node::Handles::new(guard.clone()));
    let task = tokio::spawn(admin::serve(listener, node, settings, stopped));
    Server {
        addr,
        guard,
        stop,
        task,
    }
}

async fn start() -> Server {
    start_with(guard(Policy::default()), None).await
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
    /// The `error` message of a JSON error reply.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on its own connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the admin API answers")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut reply = Reply {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body);
    }
    reply
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, Some(TOKEN), None).await
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    http(addr, "POST", path, Some(TOKEN), Some(body)).await
}

async fn delete(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "DELETE", path, Some(TOKEN), None).await
}

/// The value of the series `series` (name with labels) in a scrape.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(addr: SocketAddr) -> String {
    let r = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn v1_needs_the_token_and_metrics_do_not() {
    let s = start().await;
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let r = http(s.addr, "GET", "/v1/status", token, None).await;
        assert_eq!(r.status, 401, "token {token:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert!(!r.error().is_empty());
    }
    // A longer token that starts with the right one is wrong too.
    let longer = format!("{TOKEN}0");
    let r = http(s.addr, "GET", "/v1/blocks", Some(&longer), None).await;
    assert_eq!(r.status, 401);

    // A command without the token changes nothing.
    let r = http(
        s.addr,
        "POST",
        "/v1/blocks",
        None,
        Some(r#"{"ip": "192.0.2.9"}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!s.guard.with(|e, _| e.is_blocked(ip("192.0.2.9"))));
    let r = http(
        s.addr,
        "POST",
        "/v1/pins",
        Some("nope"),
        Some(r#"{"pin": "cert-sha256/0000000000000000000000000000000000000000000000000000000000000000"}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(s.guard.with(|e, _| e.pins().is_empty()));

    let status = get(s.addr, "/v1/status").await;
    assert_eq!(status.status, 200, "{}", status.body);
    let v = status.json();
    assert_eq!(v["level"], 1);
    assert_eq!(v["client_table_capacity"], 1024);
    assert_eq!(v["connection_table_capacity"], 1024);
    assert_eq!(v["active_connections"], 0);
    assert_eq!(v["under_attack"], false);
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["stats"]["rejected"]["blocked"], 0);

    let r = http(s.addr, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().contains("text"));
    let m = r.body;
    for series in [
        "mtguard_connections_accepted_total",
        "mtguard_connections_active",
        "mtguard_blocked_clients",
        "mtguard_tracked_clients",
        "mtguard_under_attack",
        "mtguard_blocks_total",
        "mtguard_table_evictions_total",
        "mtguard_events_dropped_total",
        "mtguard_pin_failures_total",
    ] {
        assert_eq!(metric(&m, series), 0, "{series}");
    }
    assert_eq!(metric(&m, "mtguard_client_table_capacity"), 1024);
    assert_eq!(metric(&m, "mtguard_connection_table_capacity"), 1024);
    for reason in RejectReason::ALL {
        let series = format!(
            "mtguard_connections_rejected_total{{reason=\"{}\"}}",
            reason.as_str()
        );
        assert_eq!(metric(&m, &series), 0);
    }
    for outcome in HandshakeOutcome::ALL {
        let series = format!(
            "mtguard_handshakes_total{{result=\"{}\"}}",
            outcome.as_str()
        );
        assert_eq!(metric(&m, &series), 0);
    }
    for kind in ["scanner", "replay", "slowloris"] {
        let series = format!("mtguard_detections_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&m, &series), 0);
    }
    // No Accept header: the classic format, whose TYPE line names a
    // counter by its samples (OpenMetrics names the family without
    // `_total`; tests/tests/docs_metrics.rs reads both).
    assert!(m.contains("# TYPE mtguard_connections_rejected_total counter"));
    assert!(!m.contains("# EOF"));
}

#[tokio::test]
async fn blocks_apply_at_once_and_show_in_metrics() {
    let s = start().await;
    let client = ip("192.0.2.7");
    let r = post(
        s.addr,
        "/v1/blocks",
        r#"{"ip": "192.0.2.7", "duration": "10m"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    assert_eq!(v["client"], "192.0.2.7");
    assert_eq!(v["cause"], "manual");
    assert_eq!(v["remaining_seconds"], 600);
    assert!(s.guard.with(|e, _| e.is_blocked(client)));
    assert_eq!(s.guard.connect(client).err(), Some(RejectReason::Blocked));
    let m = scrape(s.addr).await;
    assert_eq!(metric(&m, "mtguard_blocked_clients"), 1);
    assert_eq!(metric(&m, "mtguard_blocks_total"), 1);
    assert_eq!(
        metric(&m, "mtguard_connections_rejected_total{reason=\"blocked\"}"),
        1
    );

    // IPv6 clients are blocked as their /64; no duration: until unblocked.
    let r = post(
        s.addr,
        "/v1/blocks",
        r#"{"ip": "2001:db8:1:2::99", "duration": null}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(s
        .guard
        .with(|e, _| e.is_blocked(ip("2001:db8:1:2:ffff::1"))));

    let list = get(s.addr, "/v1/blocks").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let v4 = list.iter().find(|b| b["client"] == "192.0.2.7").unwrap();
    let remaining = v4["remaining_seconds"].as_u64().unwrap();
    assert!((590..=600).contains(&remaining), "{remaining}");
    assert_eq!(v4["offences"], 0);
    let v6 = list
        .iter()
        .find(|b| b["client"] == "2001:db8:1:2::/64")
        .unwrap();
    assert!(v6["remaining_seconds"].is_null());
    assert_eq!(v6["cause"], "manual");

    let r = delete(s.addr, "/v1/blocks/192.0.2.7").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!s.guard.with(|e, _| e.is_blocked(client)));
    assert!(s.guard.connect(client).is_ok());
    let r = delete(s.addr, "/v1/blocks/192.0.2.7").await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("not blocked"));
    // The IPv6 client is lifted by the form the list shows.
    let r = delete(s.addr, "/v1/blocks/2001:db8:1:2::/64").await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!s.guard.with(|e, _| e.is_blocked(ip("2001:db8:1:2::99"))));
    assert_eq!(metric(&scrape(s.addr).await, "mtguard_blocked_clients"), 0);
    assert_eq!(
        get(s.addr, "/v1/blocks").await.json(),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn bad_block_requests_say_what_is_wrong() {
    let s = start().await;
    s.guard
        .set_config_lists(&[Cidr::parse("198.51.100.0/24").unwrap()], &[])
        .unwrap();
    let cases = [
        (r#"{"ip": "not-an-ip"}"#, 400, "ip"),
        (r#"{"ip": "10.0.0.0/8"}"#, 400, "ip"),
        (
            r#"{"ip": "192.0.2.1", "duration": "10 minutes"}"#,
            400,
            "duration",
        ),
        (r#"{"ip": "192.0.2.1", "duration": "0s"}"#, 400, "duration"),
        (
            r#"{"ip": "192.0.2.1", "duration": 600}"#,
            400,
            "invalid type",
        ),
        (
            r#"{"ip": "192.0.2.1", "until": "1h"}"#,
            400,
            "unknown field `until`",
        ),
        (r#"{"duration": "1h"}"#, 400, "missing field `ip`"),
        (r#"{"ip": "192.0.2.1""#, 400, "malformed JSON"),
        ("", 400, "empty"),
        (r#"{"ip": "198.51.100.4"}"#, 409, "allowlisted"),
    ];
    for (body, status, needle) in cases {
        let r = post(s.addr, "/v1/blocks", body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let error = r.error();
        assert!(error.contains(needle), "{body}: {error}");
    }
    assert_eq!(s.guard.with(|e, _| e.blocked_clients()), 0);
    assert!(!s.guard.with(|e, _| e.is_blocked(ip("198.51.100.4"))));

    let r = delete(s.addr, "/v1/blocks/nonsense").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("not an IP address"));

    let big = format!(
        r#"{{"ip": "192.0.2.1", "pad": "{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let r = post(s.addr, "/v1/blocks", &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(!r.error().is_empty());

    let r = http(s.addr, "PUT", "/v1/blocks", Some(TOKEN), Some("{}")).await;
    assert_eq!(r.status, 405);
    assert!(r.error().contains("PUT"));
    let r = get(s.addr, "/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/v1/nothing"));
}

#[tokio::test]
async fn metrics_follow_the_connections() {
    let mut policy = Policy::for_level(Level::Standard);
    policy.max_connections_per_client = 2;
    let s = start_with(guard(policy), None).await;
    let client = ip("203.0.113.5");
    let a = s.guard.connect(client).unwrap();
    let b = s.guard.connect(client).unwrap();
    assert_eq!(
        s.guard.connect(client).err(),
        Some(RejectReason::TooManyConnections)
    );
    s.guard.handshake(a.id, HandshakeOutcome::Valid);
    s.guard.handshake(b.id, HandshakeOutcome::Invalid);

    let m = scrape(s.addr).await;
    assert_eq!(metric(&m, "mtguard_connections_accepted_total"), 2);
    assert_eq!(metric(&m, "mtguard_connections_active"), 2);
    assert_eq!(metric(&m, "mtguard_tracked_clients"), 1);
    assert_eq!(
        metric(
            &m,
            "mtguard_connections_rejected_total{reason=\"too_many_connections\"}"
        ),
        1
    );
    assert_eq!(
        metric(&m, "mtguard_connections_rejected_total{reason=\"blocked\"}"),
        0
    );
    assert_eq!(metric(&m, "mtguard_handshakes_total{result=\"valid\"}"), 1);
    assert_eq!(
        metric(&m, "mtguard_handshakes_total{result=\"invalid\"}"),
        1
    );

    s.guard.close(a.id);
    s.guard.close(b.id);
    let m = scrape(s.addr).await;
    assert_eq!(metric(&m, "mtguard_connections_active"), 0);
    assert_eq!(metric(&m, "mtguard_connections_accepted_total"), 2);

    let status = get(s.addr, "/v1/status").await.json();
    assert_eq!(status["stats"]["accepted"], 2);
    assert_eq!(status["stats"]["rejected"]["too_many_connections"], 1);
    assert_eq!(status["stats"]["handshakes"]["valid"], 1);
}

/// A valid `sha256/` pin whose text holds `/`, `+` and `=`.
fn spki_pin_text() -> String {
    format!("sha256/{}A=", "+/".repeat(21))
}

fn cert_pin_text(i: usize) -> String {
    format!("cert-sha256/{i:064x}")
}

fn url_encode(s: &str) -> String {
    s.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

#[tokio::test]
async fn pins_change_live_and_the_set_has_a_limit() {
    let s = start().await;
    assert_eq!(get(s.addr, "/v1/pins").await.json(), serde_json::json!([]));
    let text = spki_pin_text();
    let body = format!(r#"{{"pin": "{text}", "label": "backup key", "expires": "2099-01-01"}}"#);
    let r = post(s.addr, "/v1/pins", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let pin = Pin::parse(&text).unwrap();
    let stored = s
        .guard
        .with(|e, _| e.pins().iter().cloned().collect::<Vec<_>>());
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].hash(), pin.hash());
    assert_eq!(stored[0].label(), "backup key");
    assert_eq!(stored[0].expires(), Some(4_070_908_800)); // 2099-01-01T00:00:00Z

    let list = get(s.addr, "/v1/pins").await.json();
    assert_eq!(
        list,
        serde_json::json!([{
            "pin": text, "kind": "spki", "label": "backup key",
            "expires": "2099-01-01", "expired": false
        }])
    );

    let r = post(s.addr, "/v1/pins", &format!(r#"{{"pin": "{text}"}}"#)).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("already"));

    let cases = [
        (r#"{"pin": "md5/abc"}"#.to_owned(), "pin:"),
        (r#"{"pin": "sha256/short="}"#.to_owned(), "pin:"),
        (
            format!(
                r#"{{"pin": "{}", "expires": "2099-02-30"}}"#,
                cert_pin_text(1)
            ),
            "expires:",
        ),
        (
            format!(
                r#"{{"pin": "{}", "expires": "2000-01-01"}}"#,
                cert_pin_text(1)
            ),
            "expires:",
        ),
        (
            format!(
                r#"{{"pin": "{}", "expires": "2099-01-01 # x"}}"#,
                cert_pin_text(1)
            ),
            "expires:",
        ),
        (
            format!(
                r#"{{"pin": "{}", "label": "{}"}}"#,
                cert_pin_text(1),
                "x".repeat(40)
            ),
            "label:",
        ),
        (
            format!(r#"{{"pin": "{}", "comment": "x"}}"#, cert_pin_text(1)),
            "unknown field `comment`",
        ),
        (r#"{"pin": "#.to_owned(), "malformed JSON"),
        (r#"["sha256/x"]"#.to_owned(), "invalid"),
    ];
    for (body, needle) in &cases {
        let r = post(s.addr, "/v1/pins", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let error = r.error();
        assert!(error.contains(needle), "{body}: {error}");
    }
    assert_eq!(s.guard.with(|e, _| e.pins().len()), 1);

    // Removed by its URL-encoded text.
    let r = delete(s.addr, &format!("/v1/pins/{}", url_encode(&text))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(s.guard.with(|e, _| e.pins().is_empty()));
    let r = delete(s.addr, &format!("/v1/pins/{}", url_encode(&text))).await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("not pinned"));
    let r = delete(s.addr, "/v1/pins/sha256%2Fnonsense").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("pin"));

    for i in 0..100 {
        let r = post(
            s.addr,
            "/v1/pins",
            &format!(r#"{{"pin": "{}"}}"#, cert_pin_text(i)),
        )
        .await;
        assert_eq!(r.status, 201, "pin {i}: {}", r.body);
    }
    let r = post(
        s.addr,
        "/v1/pins",
        &format!(r#"{{"pin": "{}"}}"#, cert_pin_text(100)),
    )
    .await;
    assert_eq!(r.status, 507, "{}", r.body);
    assert!(
        r.error().contains("pin set is full: 100 pins"),
        "{}",
        r.error()
    );
    assert_eq!(s.guard.with(|e, _| e.pins().len()), 100);
    assert_eq!(metric(&scrape(s.addr).await, "mtguard_pins"), 100);

    // A pin without `/` inside works unencoded in the path as well.
    let r = delete(s.addr, &format!("/v1/pins/{}", cert_pin_text(7))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let pins = get(s.addr, "/v1/pins").await.json();
    assert_eq!(pins.as_array().unwrap().len(), 99);
    assert!(pins
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["pin"] != cert_pin_text(7) && p["kind"] == "certificate"));
    let r = post(
        s.addr,
        "/v1/pins",
        &format!(r#"{{"pin": "{}"}}"#, cert_pin_text(100)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn changes_through_the_api_are_saved_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(guard(Policy::default()), Some(dir.path().to_owned())).await;
    let text = spki_pin_text();
    let r = post(
        s.addr,
        "/v1/pins",
        &format!(r#"{{"pin": "{text}", "label": "primary"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.json().get("warning").is_none(), "{}", r.body);
    let r = post(s.addr, "/v1/blocks", r#"{"ip": "192.0.2.50"}"#).await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Restored into a fresh engine, with no persistence loop running.
    let fresh = guard(Policy::default());
    mtguard::persist::state::restore(&fresh, dir.path(), false, None).unwrap();
    let pins = fresh.with(|e, _| e.pins().iter().cloned().collect::<Vec<_>>());
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].to_string(), text);
    assert_eq!(pins[0].label(), "primary");
    assert!(fresh.with(|e, _| e.is_blocked(ip("192.0.2.50"))));

    // Removals are saved too.
    let r = delete(s.addr, &format!("/v1/pins/{}", url_encode(&text))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = delete(s.addr, "/v1/blocks/192.0.2.50").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let fresh = guard(Policy::default());
    mtguard::persist::state::restore(&fresh, dir.path(), false, None).unwrap();
    assert!(fresh.with(|e, _| e.pins().is_empty()));
    assert!(!fresh.with(|e, _| e.is_blocked(ip("192.0.2.50"))));
}

#[tokio::test]
async fn serve_stops_when_told() {
    let s = start().await;
    assert_eq!(get(s.addr, "/v1/status").await.status, 200);
    s.stop.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(result.is_ok());
    assert!(TcpStream::connect(s.addr).await.is_err());
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn the_token_is_generated_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = admin::load_or_create_token(None, &state).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let file = state.join("admin.token");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    assert_eq!(admin::load_or_create_token(None, &state).unwrap(), token);
    // Another state directory gets another token.
    let other = admin::load_or_create_token(None, &dir.path().join("other")).unwrap();
    assert_ne!(other, token);

    // A generated file someone opened up is refused, not silently used.
    set_mode(&file, 0o644);
    let e = admin::load_or_create_token(None, &state).unwrap_err();
    assert!(
        format!("{e:#}").contains(&file.display().to_string()),
        "{e:#}"
    );

    // An explicit token file wins over the state directory.
    let explicit = dir.path().join("token");
    std::fs::write(&explicit, "  s3cret-token-from-a-file\n").unwrap();
    set_mode(&explicit, 0o600);
    assert_eq!(
        admin::load_or_create_token(Some(&explicit), &state).unwrap(),
        "s3cret-token-from-a-file"
    );
    set_mode(&explicit, 0o640);
    let e = admin::load_or_create_token(Some(&explicit), &state).unwrap_err();
    assert!(
        format!("{e:#}").contains(&explicit.display().to_string()),
        "{e:#}"
    );
    std::fs::write(&explicit, "\n").unwrap();
    set_mode(&explicit, 0o600);
    let e = admin::load_or_create_token(Some(&explicit), &state).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains(&explicit.display().to_string()) && e.contains("empty"),
        "{e}"
    );
    let missing = dir.path().join("missing");
    let e = admin::load_or_create_token(Some(&missing), &state).unwrap_err();
    assert!(
        format!("{e:#}").contains(&missing.display().to_string()),
        "{e:#}"
    );
}

#[test]
fn render_metrics_reads_the_engine_now() {
    let g = guard(Policy::default());
    let before = admin::render_metrics(&g, &Default::default());
    assert!(before.contains("mtguard_blocked_clients 0\n"), "{before}");
    g.with(|e, now| {
        e.block(
            now,
            ip("192.0.2.77"),
            Some(Duration::from_secs(60)),
            mtguard_core::BlockCause::Manual,
        )
    })
    .unwrap();
    let after = admin::render_metrics(&g, &Default::default());
    assert!(after.contains("mtguard_blocked_clients 1\n"), "{after}");
    assert!(after.contains("mtguard_blocks_total 1\n"), "{after}");
    assert!(after.ends_with("# EOF\n"));
}
