//! docs/openapi.json against the router: every described operation is
//! served, no other method is on a described path, unknown paths are 404,
//! and every status a handler answers with is described, and each one
//! described is answered by some request here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mtguard::admin;
use mtguard::engine::{Capacity, Guard, LogEvents};
use mtguard_core::cidr::Cidr;
use mtguard_core::pins::{Pin, PinKind};
use mtguard_core::Policy;
use mtguard_tests::AdminInProcess;
use serde_json::Value;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The methods probed on every described path; HEAD is left out because
/// axum answers HEAD wherever GET is served, as HTTP asks.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Statuses described but not provoked here, each with where it is tested.
const NOT_PROVOKED_HERE: &[u16] = &[
    // A request head still incomplete after 10 s: hardening_admin.rs waits
    // that long; this test does not.
    408,
];

/// Small tables so the client table fills up with a few blocks.
const CAPACITY: Capacity = Capacity {
    clients: 8,
    connections: 8,
    prefixes: 4,
    networks: 8,
};

struct Api {
    addr: SocketAddr,
    guard: Arc<Guard>,
    _admin: AdminInProcess,
}

fn start(state_dir: Option<PathBuf>) -> Api {
    let policy = Policy::default();
    let guard = Guard::new(
        policy,
        CAPACITY,
        Box::new(LogEvents {
            ipv6_prefix: policy.ipv6_prefix,
        }),
    )
    .unwrap();
    let node = mtguard::node::Handles::new(guard.clone());
    let admin = AdminInProcess::start(node, TOKEN, state_dir);
    Api {
        addr: admin.addr,
        guard,
        _admin: admin,
    }
}

/// One request on its own connection: the status and the whole raw answer.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra_headers: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(extra_headers);
    let body = body.unwrap_or("");
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A server that closes while the body is still arriving resets the
    // connection; what it wrote before is still in the buffer.
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: malformed answer {raw:?}"));
    (status, raw)
}

fn spec() -> Value {
    serde_json::from_str(admin::OPENAPI_JSON).expect("docs/openapi.json is JSON")
}

/// (method, path template) → the statuses described for it.
fn operations(spec: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1."));
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"))
                .keys()
                .map(|s| s.parse().unwrap_or_else(|_| panic!("{path}: status {s}")))
                .collect();
            out.insert((method.to_uppercase(), path.clone()), statuses);
        }
    }
    out
}

fn pin_text(byte: u8) -> String {
    Pin::new(PinKind::Spki, [byte; 32]).to_string()
}

fn url_encoded(text: &str) -> String {
    text.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

/// A concrete path for a template.
fn sample(template: &str) -> String {
    template
        .replace("{ip}", "192.0.2.1")
        .replace("{pin}", &url_encoded(&pin_text(1)))
}

#[test]
fn every_described_operation_is_served_and_nothing_else() {
    let api = start(None);
    let ops = operations(&spec());
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();
    for template in paths {
        let path = sample(template);
        for method in METHODS {
            let body = (*method == "POST").then_some("{}");
            let (status, raw) = request(api.addr, method, &path, Some(TOKEN), body, "");
            if ops.contains_key(&(method.to_string(), template.clone())) {
                assert!(
                    status != 405 && !raw.contains("no endpoint"),
                    "{method} {template} is described but not served: {raw}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {template} is served but not described: {raw}"
                );
            }
        }
    }
    for path in [
        "/index.html",
        "/v1",
        "/v1/",
        "/v2/status",
        "/v1/status/x",
        "/metrics/x",
        "/status.json",
        "/v1/openapi.yaml",
        "/favicon.ico",
    ] {
        let (status, raw) = request(api.addr, "GET", path, Some(TOKEN), None, "");
        assert!(
            status == 404 && raw.contains("no endpoint"),
            "GET {path}: {raw}"
        );
    }
    // What is served at /v1/openapi.json is the file in docs/.
    let (status, raw) = request(api.addr, "GET", "/v1/openapi.json", Some(TOKEN), None, "");
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, on_disk);
}

struct Case {
    method: &'static str,
    template: &'static str,
    path: String,
    token: Option<&'static str>,
    body: Option<String>,
    headers: String,
    expect: u16,
}

fn case(method: &'static str, template: &'static str, expect: u16) -> Case {
    Case {
        method,
        template,
        path: sample(template),
        token: Some(TOKEN),
        body: None,
        headers: String::new(),
        expect,
    }
}

impl Case {
    fn path(mut self, path: impl Into<String>) -> Case {
        self.path = path.into();
        self
    }
    fn body(mut self, body: impl Into<String>) -> Case {
        self.body = Some(body.into());
        self
    }
    fn token(mut self, token: Option<&'static str>) -> Case {
        self.token = token;
        self
    }
    fn headers(mut self, headers: String) -> Case {
        self.headers = headers;
        self
    }
}

/// Runs `cases` in order, checks each answer is the one expected and
/// described, and records it in `seen`.
fn run(
    api: &Api,
    cases: Vec<Case>,
    ops: &BTreeMap<(String, String), BTreeSet<u16>>,
    seen: &mut BTreeSet<(String, String, u16)>,
) {
    for c in cases {
        let (status, raw) = request(
            api.addr,
            c.method,
            &c.path,
            c.token,
            c.body.as_deref(),
            &c.headers,
        );
        assert_eq!(status, c.expect, "{} {}: {raw}", c.method, c.path);
        let key = (c.method.to_owned(), c.template.to_owned());
        let described = ops
            .get(&key)
            .unwrap_or_else(|| panic!("{} {} is not described", c.method, c.template));
        assert!(
            described.contains(&status),
            "{} {} answered {status}, which docs/openapi.json does not describe",
            c.method,
            c.template
        );
        seen.insert((key.0, key.1, status));
    }
}

#[test]
fn every_status_a_handler_answers_is_described_and_each_described_one_happens() {
    let ops = operations(&spec());
    let mut seen = BTreeSet::new();
    // A head over the limit is refused before any route, on every one.
    let huge = format!("X-Filler: {}\r\n", "a".repeat(admin::HEAD_LIMIT));
    let mut cases = Vec::new();
    for (method, template) in ops.keys() {
        let (method, template): (&'static str, &'static str) = (
            Box::leak(method.clone().into_boxed_str()),
            Box::leak(template.clone().into_boxed_str()),
        );
        cases.push(case(method, template, 431).headers(huge.clone()));
        if template.starts_with("/v1/") {
            cases.push(case(method, template, 401).token(None));
            cases.push(case(method, template, 401).token(Some("wrong-token-wrong-token")));
        }
    }
    let pin = pin_text(7);
    let pin_path = format!("/v1/pins/{}", url_encoded(&pin));
    let too_big = format!(r#"{{"ip": "{}"}}"#, " ".repeat(admin::BODY_LIMIT));
    cases.extend([
        case("GET", "/", 200),
        case("GET", "/status.js", 200),
        case("GET", "/status.css", 200),
        case("GET", "/metrics", 200),
        case("GET", "/v1/openapi.json", 200),
        case("GET", "/v1/status", 200),
        case("GET", "/v1/blocks", 200),
        case("POST", "/v1/blocks", 201).body(r#"{"ip": "192.0.2.1", "duration": "10m"}"#),
        case("POST", "/v1/blocks", 400).body(r#"{"ip": "not an address"}"#),
        case("POST", "/v1/blocks", 400).body(r#"{"ip": "192.0.2.1", "duration": "0s"}"#),
        case("POST", "/v1/blocks", 400).body("[1, 2]"),
        case("POST", "/v1/blocks", 413).body(too_big.clone()),
        case("DELETE", "/v1/blocks/{ip}", 204),
        case("DELETE", "/v1/blocks/{ip}", 404),
        case("DELETE", "/v1/blocks/{ip}", 400).path("/v1/blocks/10.0.0.0%2F8"),
        case("GET", "/v1/pins", 200),
        case("POST", "/v1/pins", 201).body(format!(r#"{{"pin": "{pin}"}}"#)),
        case("POST", "/v1/pins", 409).body(format!(r#"{{"pin": "{pin}"}}"#)),
        case("POST", "/v1/pins", 400).body(r#"{"pin": "sha256/short"}"#),
        case("POST", "/v1/pins", 413).body(too_big),
        case("DELETE", "/v1/pins/{pin}", 204).path(pin_path.clone()),
        case("DELETE", "/v1/pins/{pin}", 404).path(pin_path),
        case("DELETE", "/v1/pins/{pin}", 400).path("/v1/pins/sha256%2Fshort"),
    ]);
    let api = start(None);
    run(&api, cases, &ops, &mut seen);

    // 409: the allowlist wins over blocks.
    api.guard
        .set_config_lists(&[Cidr::parse("203.0.113.0/24").unwrap()], &[])
        .unwrap();
    run(
        &api,
        vec![case("POST", "/v1/blocks", 409).body(r#"{"ip": "203.0.113.9"}"#)],
        &ops,
        &mut seen,
    );

    // 507: a client table full of clients blocked until unblocked.
    let mut full = Vec::new();
    for i in 0..=255u8 {
        full.push(case("POST", "/v1/blocks", 0).body(format!(r#"{{"ip": "198.51.100.{i}"}}"#)));
    }
    let mut blocked = 0;
    let mut refused = false;
    for c in full {
        let (status, raw) = request(api.addr, c.method, &c.path, c.token, c.body.as_deref(), "");
        match status {
            201 => blocked += 1,
            507 => {
                refused = true;
                seen.insert(("POST".into(), "/v1/blocks".into(), 507));
                break;
            }
            _ => panic!("blocking into a full table: {raw}"),
        }
    }
    assert!(
        refused,
        "{blocked} blocks fitted in a table of {} clients",
        CAPACITY.clients
    );

    // 507: a full pin set.
    let capacity = api.guard.with(|e, _| {
        for b in 100..=255u8 {
            if e.add_pin(Pin::new(PinKind::Spki, [b; 32])).is_err() {
                break;
            }
        }
        e.pins().capacity()
    });
    assert_eq!(api.guard.with(|e, _| e.pins().len()), capacity);
    run(
        &api,
        vec![case("POST", "/v1/pins", 507).body(format!(r#"{{"pin": "{}"}}"#, pin_text(9)))],
        &ops,
        &mut seen,
    );

    // 200 with a warning: the change holds but saving it failed (the state
    // "directory" is a file).
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let failing = start(Some(not_a_dir.path().to_owned()));
    failing.guard.with(|e, now| {
        e.block(
            now,
            "192.0.2.1".parse().unwrap(),
            None,
            mtguard_core::BlockCause::Manual,
        )
        .unwrap();
        e.add_pin(Pin::new(PinKind::Spki, [1; 32])).unwrap();
    });
    run(
        &failing,
        vec![
            case("DELETE", "/v1/blocks/{ip}", 200),
            case("DELETE", "/v1/pins/{pin}", 200),
        ],
        &ops,
        &mut seen,
    );

    let missing: Vec<String> = ops
        .iter()
        .flat_map(|((m, p), statuses)| statuses.iter().map(move |s| (m, p, *s)))
        .filter(|(m, p, s)| {
            !NOT_PROVOKED_HERE.contains(s) && !seen.contains(&((*m).clone(), (*p).clone(), *s))
        })
        .map(|(m, p, s)| format!("{m} {p} {s}"))
        .collect();
    assert!(
        missing.is_empty(),
        "described but never answered: {missing:?}"
    );
}
