//! MTProto handshake inspection end to end, on loopback, each client on its
//! own 127.x.y.z source address: valid obfuscated2 and fake-TLS clients
//! reach the backend byte for byte, scanners and replays never do (and are
//! detected and blocked by the engine), probes are masked on request; the
//! `[mtproto]` config keys and `mtguard link`.

use mtguard_tests::unix_now as now_unix;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

use mtguard::config::{Config, OnProbe};
use mtguard::proxy::inspect::Mtproto;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::{Level, Policy};
use mtguard_tests::{
    closed_by_guard, connect_from, free_port, mtguard_bin, test_guard, Relay, Server,
};

const OBFS2_VECTORS: &str = include_str!("../../core/tests/vectors/obfuscated2.txt");
const CLASSIC: &str = "0123456789abcdef0123456789abcdef";
/// "ee" + key + hex("example.com").
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The header of a vector produced by Telethon's MTProxy client.
fn obfs2_vector(name: &str) -> (String, Vec<u8>) {
    let line = OBFS2_VECTORS
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    (fields[1].to_owned(), hex(fields[3]))
}

/// A fake-TLS ClientHello for `domain` under `secret`, stamped `ts`:
/// random = HMAC-SHA256(key, record with a zeroed random), its last four
/// bytes XOR the little-endian timestamp.
fn client_hello(secret: &str, domain: &str, ts: u64) -> Vec<u8> {
    // A fixed salt: the same arguments give the same bytes, which the
    // replay checks rely on.
    mtguard_tests::fake_tls_hello(secret, domain, ts, [0x5a; 4])
}

/// `(first read, all bytes)` of one backend connection.
type Received = (Vec<u8>, Vec<u8>);

/// A backend that records, per connection, its first read and every byte.
struct Recorder {
    addr: SocketAddr,
    /// `(first read, all bytes)` of each connection, in accept order.
    conns: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let record = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let index = {
                    let mut c = record.lock().unwrap();
                    c.push((Vec::new(), Vec::new()));
                    c.len() - 1
                };
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut c = record.lock().unwrap();
                                let (first, all) = &mut c[index];
                                if first.is_empty() {
                                    first.extend_from_slice(&buf[..n]);
                                }
                                all.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                });
            }
        });
        Recorder { addr, conns }
    }

    fn accepts(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Waits until connection `index` has received `len` bytes; its
    /// `(first read, all bytes)`.
    fn wait_for(&self, index: usize, len: usize) -> Received {
        let start = std::time::Instant::now();
        loop {
            if let Some(c) = self.conns.lock().unwrap().get(index) {
                if c.1.len() >= len {
                    return c.clone();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "backend connection {index} never got {len} bytes"
            );
            sleep(Duration::from_millis(5));
        }
    }
}

/// A website: answers whatever it is sent with one HTTP response, then
/// closes.
fn website() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).unwrap_or(0) > 0 {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    );
                }
            });
        }
    });
    addr
}

struct Harness {
    relay: Relay,
    backend: Recorder,
}

impl std::ops::Deref for Harness {
    type Target = Relay;
    fn deref(&self) -> &Relay {
        &self.relay
    }
}

fn policy(level: Level) -> Policy {
    let mut p = Policy::for_level(level);
    p.block_jitter_permille = 0;
    p.attack_enter_per_second = None;
    p
}

fn harness(policy: Policy, secrets: &[&str], on_probe: OnProbe, mask: Option<String>) -> Harness {
    let backend = Recorder::start();
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::parse(s).unwrap()).collect();
    let state = Mtproto::new(&secrets, TimeWindow::default(), on_probe, mask, None).unwrap();
    Harness {
        relay: Relay::start(test_guard(policy), backend.addr, Some(Arc::new(state))),
        backend,
    }
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

impl Harness {
    fn blocked(&self, from: IpAddr) -> bool {
        self.guard.with(|e, _| e.is_blocked(from))
    }
}

/// Sends `bytes` and reads until the guard closes: whether it did (EOF or
/// reset) rather than leave the connection open.
fn refused(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut s) = connect_from(from, to) else {
        return true;
    };
    let _ = s.write_all(bytes);
    closed_by_guard(&mut s)
}

#[test]
fn a_valid_obfuscated2_client_reaches_the_backend_byte_for_byte() {
    let (secret, header) = obfs2_vector("classic-abridged");
    assert_eq!(secret, CLASSIC);
    let h = harness(policy(Level::Standard), &[CLASSIC], OnProbe::Close, None);
    let mut c = connect_from(ip(40, 0, 1), h.listen).unwrap();
    // The header in two pieces: the inspector waits for all 64 bytes.
    c.write_all(&header[..20]).unwrap();
    sleep(Duration::from_millis(50));
    assert_eq!(h.backend.accepts(), 0, "nothing forwarded before a verdict");
    c.write_all(&header[20..]).unwrap();
    let (first, _) = h.backend.wait_for(0, 64);
    assert_eq!(first, header);
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    c.write_all(&payload).unwrap();
    let (_, all) = h.backend.wait_for(0, 64 + payload.len());
    assert_eq!(all, [header, payload].concat());
    let valid = h
        .guard
        .with(|e, _| e.stats().handshakes[mtguard_core::HandshakeOutcome::Valid as usize]);
    assert_eq!(valid, 1);
}

#[test]
fn a_fake_tls_hello_valid_now_reaches_the_backend_on_its_own_write() {
    let h = harness(
        policy(Level::Standard),
        &[FAKE_TLS, CLASSIC],
        OnProbe::Close,
        None,
    );
    let hello = client_hello(FAKE_TLS, "example.com", now_unix());
    let mut c = connect_from(ip(41, 0, 1), h.listen).unwrap();
    c.write_all(&hello).unwrap();
    let (first, _) = h.backend.wait_for(0, hello.len());
    assert_eq!(first, hello, "the ClientHello alone on the first write");
    let after = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x04abcd";
    c.write_all(after).unwrap();
    let (_, all) = h.backend.wait_for(0, hello.len() + after.len());
    assert_eq!(all, [hello.as_slice(), after].concat());

    // A stale one (ten minutes old) is refused and never forwarded.
    let stale = client_hello(FAKE_TLS, "example.com", now_unix() - 600);
    assert!(refused(ip(41, 0, 2), h.listen, &stale));
    // So is one for another domain.
    let other = client_hello(FAKE_TLS, "example.org", now_unix());
    assert!(refused(ip(41, 0, 3), h.listen, &other));
    sleep(Duration::from_millis(100));
    assert_eq!(h.backend.accepts(), 1);
    let m = mtguard::admin::render_metrics(&h.guard, &h.telemetry);
    for reason in ["timestamp", "wrong_sni"] {
        let series = format!("mtguard_handshake_failures_total{{reason=\"{reason}\"}} ");
        let line = m.lines().find(|l| l.starts_with(&series)).expect(&series);
        let n: u64 = line[series.len()..].trim().parse().unwrap();
        assert!(n >= 1, "{line}");
    }
}

#[test]
fn scanners_never_reach_the_backend_and_are_blocked() {
    let p = policy(Level::Standard);
    let h = harness(p, &[CLASSIC], OnProbe::Close, None);
    let scanner = ip(42, 0, 1);
    // 64 bytes no secret decrypts to a known tag, then an HTTP probe.
    let garbage = [0x42u8; 64];
    for i in 0..p.scanner_failures {
        let probe: &[u8] = if i % 2 == 0 {
            &garbage
        } else {
            b"GET / HTTP/1.1\r\n\r\n"
        };
        assert!(refused(scanner, h.listen, probe), "attempt {i} refused");
    }
    h.wait_until("the scanner to be blocked", |e| e.is_blocked(scanner));
    assert!(h.guard.with(|e, _| e.stats().scanners) >= 1);
    assert_eq!(
        h.backend.accepts(),
        0,
        "no scanner byte reached the backend"
    );
    // A client of the proxy from elsewhere is still served.
    let (_, header) = obfs2_vector("classic-padded");
    let mut c = connect_from(ip(42, 0, 2), h.listen).unwrap();
    c.write_all(&header).unwrap();
    assert_eq!(h.backend.wait_for(0, 64).1, header);
}

#[test]
fn a_replayed_handshake_is_refused_counted_and_blocked_at_level_2() {
    let h = harness(policy(Level::High), &[CLASSIC], OnProbe::Close, None);
    let (_, header) = obfs2_vector("classic-intermediate");
    let mut c = connect_from(ip(43, 0, 1), h.listen).unwrap();
    c.write_all(&header).unwrap();
    h.backend.wait_for(0, 64);

    // A prober replays the recorded header from its own address.
    let prober = ip(43, 0, 2);
    assert!(refused(prober, h.listen, &header));
    h.wait_until("the replay to be detected", |e| e.stats().replays == 1);
    h.wait_until("the replaying client to be blocked", |e| {
        e.is_blocked(prober)
    });
    assert!(!h.blocked(ip(43, 0, 1)));
    assert_eq!(
        h.backend.accepts(),
        1,
        "the replay never reached the backend"
    );
    let replays = h
        .guard
        .with(|e, _| e.stats().handshakes[mtguard_core::HandshakeOutcome::Replay as usize]);
    assert_eq!(replays, 1);
}

#[test]
fn with_mask_a_probe_sees_the_real_website_and_the_proxy_sees_nothing() {
    let site = website();
    let h = harness(
        policy(Level::Standard),
        &[FAKE_TLS],
        OnProbe::Mask,
        Some(site.to_string()),
    );
    let mut probe = connect_from(ip(44, 0, 1), h.listen).unwrap();
    probe
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    probe.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with(b"hello"));

    // A ClientHello with a wrong HMAC is masked too.
    let mut forged = client_hello(FAKE_TLS, "example.com", now_unix());
    forged[20] ^= 1;
    let mut probe = connect_from(ip(44, 0, 2), h.listen).unwrap();
    probe.write_all(&forged).unwrap();
    let mut answer = Vec::new();
    probe.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(h.backend.accepts(), 0);
    let invalid = h
        .guard
        .with(|e, _| e.stats().handshakes[mtguard_core::HandshakeOutcome::Invalid as usize]);
    assert_eq!(invalid, 2, "masked probes still count as failed handshakes");
}

#[test]
fn mtproto_config_keys() {
    let text = format!(
        r#"
[limits]
handshake_timeout = "5s"

[mtproto]
secrets = ["{CLASSIC}", "{FAKE_TLS}", "dd{CLASSIC}"]
on_probe = "mask"
mask_backend = "example.com:443"
handshake_timeout = "3s"
time_skew = "60s"
time_skew_ahead = "2s"
"#
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let m = &c.mtproto;
    assert_eq!(m.secrets.len(), 3);
    assert_eq!(m.secrets[1].to_string(), FAKE_TLS);
    assert!(m.inspecting());
    assert_eq!(m.on_probe, Some(OnProbe::Mask));
    assert_eq!(m.mask_backend.as_deref(), Some("example.com:443"));
    assert_eq!(
        m.window(),
        TimeWindow {
            ahead_secs: 2,
            behind_secs: 60
        }
    );
    let p = c.effective_policy(None).unwrap();
    assert_eq!(p.handshake_timeout, Some(Duration::from_secs(3)));

    // Defaults: no secrets, no inspection, no on_probe (the [refusal]
    // presets apply), the core's window.
    let d = Config::parse("", "t.toml").unwrap().mtproto;
    assert!(!d.inspecting() && d.secrets.is_empty());
    assert_eq!(d.on_probe, None);
    assert_eq!(d.window(), TimeWindow::default());
    let off = Config::parse(
        &format!("[mtproto]\nsecrets = [\"{CLASSIC}\"]\ninspect = false\n"),
        "t.toml",
    )
    .unwrap();
    assert!(!off.mtproto.inspecting());
}

#[test]
fn mtproto_config_errors_name_key_index_and_line() {
    let e = Config::parse(
        &format!("[mtproto]\nsecrets = [\n  \"{CLASSIC}\",\n  \"ee{CLASSIC}\",\n]\n"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("[mtproto] secrets[1]"));
    assert_eq!(e.line(), Some(4));
    assert!(e.message().contains("no domain"), "{e}");

    let e = Config::parse("[mtproto]\nsecrets = [\"xyz!\"]\n", "t.toml").unwrap_err();
    assert_eq!(e.to_string().split(": ").next(), Some("t.toml:2"));
    assert!(e.message().contains("neither hex nor base64url"), "{e}");

    let e = Config::parse(
        &format!("[mtproto]\nsecrets = [\"{FAKE_TLS}\"]\non_probe = \"mask\"\n"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("[mtproto] on_probe"));
    assert_eq!(e.line(), Some(3));
    assert!(e.message().contains("mask_backend"), "{e}");

    let e = Config::parse("[mtproto]\ninspect = true\n", "t.toml").unwrap_err();
    assert_eq!(e.key(), Some("[mtproto] inspect"));

    let e = Config::parse("[mtproto]\non_probe = \"drop\"\n", "t.toml").unwrap_err();
    assert_eq!(e.line(), Some(2));

    let e = Config::parse("[mtproto]\nsecret = []\n", "t.toml").unwrap_err();
    assert_eq!(e.key(), Some("[mtproto]"));
    assert!(e.message().contains("unknown key"), "{e}");

    let e = Config::parse("[mtproto]\ntime_skew = \"1500ms\"\n", "t.toml").unwrap_err();
    assert_eq!(e.key(), Some("[mtproto] time_skew"));
    let e = Config::parse("[mtproto]\nmask_backend = \"nope\"\n", "t.toml").unwrap_err();
    assert_eq!(e.key(), Some("[mtproto] mask_backend"));
}

fn link(secret: &str) -> std::process::Output {
    Command::new(mtguard_bin())
        .args([
            "link",
            "--server",
            "proxy.example.net",
            "--port",
            "443",
            "--secret",
            secret,
        ])
        .output()
        .unwrap()
}

#[test]
fn link_prints_both_links_with_the_canonical_secret() {
    let dd = format!("dd{CLASSIC}");
    for (given, canonical) in [
        (CLASSIC.to_uppercase(), CLASSIC.to_owned()),
        (dd.clone(), dd.clone()),
        (FAKE_TLS.to_owned(), FAKE_TLS.to_owned()),
        // The ee secret in base64url, as links carry it.
        (
            "7gEjRWeJq83vASNFZ4mrze9leGFtcGxlLmNvbQ".to_owned(),
            FAKE_TLS.to_owned(),
        ),
    ] {
        let out = link(&given);
        assert!(out.status.success(), "{out:?}");
        let query = format!("server=proxy.example.net&port=443&secret={canonical}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("tg://proxy?{query}\nhttps://t.me/proxy?{query}\n")
        );
    }
    let out = link(&format!("ab{CLASSIC}"));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--secret") && err.contains("mode byte ab"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

fn wait_logged(server: &Server, needle: &str) {
    let start = std::time::Instant::now();
    while !server.logged(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {needle:?} in the log: {}",
            server.log_text()
        );
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn mtguard_run_inspects_and_a_reload_keeps_the_replay_cache() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Recorder::start();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("mtguard.toml");
    let write = |secrets: &str| {
        let text = format!(
            "[server]\nlisten = [\"{listen}\"]\nbackend = \"{}\"\n\
             [admin]\nlisten = \"off\"\n\
             [state]\ndir = \"{}\"\n\
             [mtproto]\nsecrets = [{secrets}]\n",
            backend.addr,
            dir.path().join("state").display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write(&format!("\"{CLASSIC}\""));
    let server = Server::start(&["--config", config.to_str().unwrap()], "guarding").unwrap();
    assert!(server.logged("inspecting MTProto handshakes"));

    let (_, header) = obfs2_vector("classic-abridged");
    let mut c = connect_from(ip(45, 0, 1), listen).unwrap();
    c.write_all(&header).unwrap();
    assert_eq!(backend.wait_for(0, 64).1, header);
    assert!(refused(ip(45, 0, 2), listen, &[0x42; 64]));

    // A reload that adds a secret keeps the replay cache (same window).
    write(&format!("\"{CLASSIC}\", \"dd{CLASSIC}\""));
    server.signal("HUP");
    wait_logged(&server, "configuration reloaded");
    assert!(
        refused(ip(45, 0, 3), listen, &header),
        "replay after reload"
    );
    let (_, padded) = obfs2_vector("dd-padded");
    let mut c = connect_from(ip(45, 0, 4), listen).unwrap();
    c.write_all(&padded).unwrap();
    assert_eq!(backend.wait_for(1, 64).1, padded);
    assert_eq!(backend.accepts(), 2);

    // A reload with a bad secret is refused; the previous one stays.
    write("\"nope\"");
    server.signal("HUP");
    wait_logged(&server, "reload refused");
    assert!(server.log_text().contains("[mtproto] secrets[0]"));
    assert!(server.stop().success());
}
