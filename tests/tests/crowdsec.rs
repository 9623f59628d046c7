//! Two `mtguard run` processes and one real CrowdSec Local API (Debian's
//! `crowdsec` 1.4.6 package, extracted without its post-install script:
//! see docs/fleets.md): what one guard blocks, the other refuses; an
//! operator's `cscli decisions add` reaches both and `cscli decisions
//! delete` lifts it on both; with the Local API gone, the blocks stay.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mtguard_tests::{connect_from, free_port, served_from, EchoBackend, Server};
use serde_json::Value;

const POLL: Duration = Duration::from_secs(1);
const TOKEN: &str = "crowdsec-test-admin-token";
const CLASSIC: &str = "0123456789abcdef0123456789abcdef";

/// Where test.sh extracts the package (`apt-get download crowdsec`,
/// `dpkg -x`); extracted here too when missing.
fn crowdsec_root() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("MTGUARD_CROWDSEC_DIR").unwrap_or("/var/tmp/mtguard-crowdsec".into()),
    );
    let root = dir.join("root");
    if !root.join("usr/bin/crowdsec").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg("apt-get download crowdsec && dpkg -x crowdsec_*.deb root")
            .current_dir(&dir)
            .status()
            .expect("running apt-get download crowdsec");
        assert!(
            status.success(),
            "could not fetch Debian's crowdsec package"
        );
    }
    root
}

/// A Local API on a free loopback port, with its own config and SQLite
/// database in a temporary directory, no Central API, no agent.
struct Lapi {
    dir: tempfile::TempDir,
    root: PathBuf,
    url: String,
    port: u16,
    child: Option<Child>,
    /// The CA cscli trusts for an https Local API (Go reads SSL_CERT_FILE).
    ca: Option<String>,
}

/// The certificates of a Local API with TLS (CrowdSec's `api.server.tls`):
/// a CA, the server's certificate for 127.0.0.1, and a bouncer's client
/// certificate whose OU the Local API accepts as a bouncer, all from rcgen;
/// and another CA that signed none of them.
struct LapiPki {
    dir: tempfile::TempDir,
}

impl LapiPki {
    fn new() -> LapiPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        };
        let ca_params = ca("mtguard test LAPI CA");
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca_params.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::from_params(&ca_params, &ca_key);

        let mut server = CertificateParams::new(Vec::<String>::new()).unwrap();
        server.distinguished_name.push(DnType::CommonName, "lapi");
        server.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().unwrap()),
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        write(
            "server.pem",
            server.signed_by(&server_key, &issuer).unwrap().pem(),
        );
        write("server.key", server_key.serialize_pem());

        let mut bouncer = CertificateParams::new(Vec::<String>::new()).unwrap();
        bouncer
            .distinguished_name
            .push(DnType::CommonName, "mtguard-tls");
        bouncer
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "bouncer-ou");
        bouncer.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let bouncer_key = KeyPair::generate().unwrap();
        write(
            "bouncer.pem",
            bouncer.signed_by(&bouncer_key, &issuer).unwrap().pem(),
        );
        write("bouncer.key", bouncer_key.serialize_pem());

        let other = ca("another CA");
        write(
            "other-ca.pem",
            other
                .self_signed(&KeyPair::generate().unwrap())
                .unwrap()
                .pem(),
        );
        LapiPki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Lapi {
    fn new() -> Lapi {
        Lapi::with_tls(None)
    }

    /// A Local API over https with `pki`'s certificates, or plain http.
    fn with_tls(pki: Option<&LapiPki>) -> Lapi {
        let root = crowdsec_root();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display().to_string();
        let etc = root.join("etc/crowdsec").display().to_string();
        // Bouncers may present a certificate (VerifyClientCertIfGiven), so
        // one Local API serves both a key bouncer and a certificate one.
        let tls = pki.map_or_else(String::new, |pki| {
            format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n      ca_cert_path: {}\n\
                 \x20     client_verification: VerifyClientCertIfGiven\n\
                 \x20     bouncers_allowed_ou:\n        - bouncer-ou\n\
                 \x20     agents_allowed_ou:\n        - agent-ou\n",
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
            )
        });
        let scheme = if pki.is_some() { "https" } else { "http" };
        for sub in ["data", "hub", "notifications", "plugins"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let config = format!(
            "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: {d}\n\
             config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {etc}/simulation.yaml\n\
             \x20 hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/notifications/\n\
             \x20 plugin_dir: {d}/plugins/\n\
             cscli:\n  output: human\n\
             db_config:\n  log_level: info\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n\
             api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n\
             \x20 server:\n    log_level: info\n    listen_uri: 127.0.0.1:{port}\n    profiles_path: {etc}/profiles.yaml\n\
             \x20   trusted_ips:\n      - 127.0.0.1\n{tls}\
             prometheus:\n  enabled: false\n"
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let lapi = Lapi {
            dir,
            root,
            url: format!("{scheme}://127.0.0.1:{port}/"),
            port,
            child: None,
            ca: pki.map(|pki| pki.path("ca.pem")),
        };
        // The machine cscli itself uses for `decisions add` and `alerts`.
        let creds = format!("{d}/local_api_credentials.yaml");
        lapi.cscli(&[
            "machines",
            "add",
            "operator",
            "--password",
            "operator-password-1",
            "-f",
            &creds,
            "--url",
            &lapi.url,
        ]);
        lapi
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn cscli(&self, args: &[&str]) -> String {
        let mut command = Command::new(self.root.join("usr/bin/cscli"));
        command.arg("-c").arg(self.config()).args(args);
        if let Some(ca) = &self.ca {
            command.env("SSL_CERT_FILE", ca);
        }
        let out = command.output().expect("running cscli");
        assert!(
            out.status.success(),
            "cscli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("lapi.log")).unwrap();
        let child = Command::new(self.root.join("usr/bin/crowdsec"))
            .arg("-c")
            .arg(self.config())
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting crowdsec");
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the Local API did not listen: {}",
                std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A bouncer key written to a file mtguard can read.
    fn bouncer(&self, name: &str) -> PathBuf {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        let path = self.dir.path().join(format!("{name}.key"));
        write_private(&path, key.trim());
        path
    }

    /// A machine and its password file.
    fn machine(&self, name: &str) -> PathBuf {
        let password = format!("{name}-password-0123456789");
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "-f",
            "/dev/null",
        ]);
        let path = self.dir.path().join(format!("{name}.password"));
        write_private(&path, &password);
        path
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One guard: its listener, admin address and process.
struct Node {
    listen: SocketAddr,
    admin: SocketAddr,
    server: Server,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

fn node(name: &str, lapi: &Lapi, backend: SocketAddr, inspect: bool) -> Node {
    let key = lapi.bouncer(&format!("{name}-bouncer"));
    let password = lapi.machine(name);
    let mtproto = if inspect {
        format!("[mtproto]\nsecrets = [\"{CLASSIC}\"]\n")
    } else {
        String::new()
    };
    // The inspecting node is set up with mtguard's key names, the other
    // with those of CrowdSec's own bouncers (the key inline): both must
    // follow the same real decision stream.
    let bouncer = if inspect {
        format!(
            "lapi_url = \"{}\"\napi_key_file = \"{}\"\npoll_interval = \"{}ms\"\n",
            lapi.url,
            key.display(),
            POLL.as_millis()
        )
    } else {
        format!(
            "api_url = \"{}\"\napi_key = \"{}\"\nupdate_frequency = \"{}ms\"\n",
            lapi.url,
            std::fs::read_to_string(&key).unwrap().trim(),
            POLL.as_millis()
        )
    };
    let crowdsec = format!(
        "{bouncer}machine_id = \"{name}\"\npassword_file = \"{}\"\n",
        password.display()
    );
    node_with(name, backend, &mtproto, &crowdsec)
}

/// A guard with this `[mtproto]` text (may be empty) and `[crowdsec]`
/// table body.
fn node_with(name: &str, backend: SocketAddr, mtproto: &str, crowdsec: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = dir.path().join("admin.token");
    write_private(&token, TOKEN);
    let config = format!(
        "[server]\nlisten = [\"{listen}\"]\nbackend = \"{backend}\"\n\
         [limits]\nscanner_failures = 3\nblock_jitter_permille = 0\nattack_enter_per_second = 0\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
         [state]\ndir = \"{}\"\n{mtproto}\
         [crowdsec]\n{crowdsec}",
        token.display(),
        dir.path().join("state").display(),
    );
    let path = dir.path().join("mtguard.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()], "guarding")
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Node {
        listen,
        admin,
        server,
        config: path,
        _dir: dir,
    }
}

/// `GET path` on the admin API, as JSON.
fn admin_get(addr: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head.to_ascii_lowercase().contains("chunked") {
        // Small bodies: one chunk.
        let (_, rest) = body.split_once("\r\n").unwrap();
        let end = rest.rfind("\r\n0\r\n").unwrap_or(rest.len());
        return serde_json::from_str(&rest[..end]).unwrap();
    }
    serde_json::from_str(body).unwrap()
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The cause of `ip`'s block on that node, if blocked.
fn block_cause(node: &Node, ip: IpAddr) -> Option<String> {
    let blocks = admin_get(node.admin, "/v1/blocks");
    blocks.as_array().unwrap().iter().find_map(|b| {
        (b["client"] == ip.to_string()).then(|| b["cause"].as_str().unwrap().to_owned())
    })
}

fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Whether a connection from `from` is admitted and left open (the guard
/// waits for its handshake) rather than reset at once.
fn admitted(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut s) = connect_from(from, to) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    match s.read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn ip(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 10, 0, d))
}

/// A bounded wait for what should take one poll interval (plus the alert
/// batch's second): generous so a loaded machine does not fail the test.
const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn a_fleet_shares_blocks_through_a_real_local_api() {
    let mut lapi = Lapi::new();
    lapi.start();
    let backend = EchoBackend::start();
    let a = node("guard-a", &lapi, backend.addr, true);
    let b = node("guard-b", &lapi, backend.addr, false);

    // A scanner probes A until A blocks it; A reports it, B pulls it.
    let scanner = ip(1);
    for _ in 0..3 {
        if let Ok(mut s) = connect_from(scanner, a.listen) {
            let _ = s.write_all(&[0x42; 64]);
            let _ = s.read(&mut [0u8; 8]);
        }
    }
    wait_until("A to block the scanner", DEADLINE, || {
        block_cause(&a, scanner).as_deref() == Some("scanner")
    });
    let took = wait_until("B to block the scanner", DEADLINE, || {
        block_cause(&b, scanner).as_deref() == Some("external")
    });
    println!("scanner blocked by A was refused by B after {took:?} (poll interval {POLL:?})");
    assert!(!served_from(scanner, b.listen), "B refuses the scanner");

    // No loop: B does not report a shared block, and A keeps its own
    // cause when its report comes back.
    std::thread::sleep(POLL * 3);
    let alerts: Value =
        serde_json::from_str(&lapi.cscli(&["alerts", "list", "-o", "json"])).unwrap();
    let mtguard_alerts: Vec<&Value> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scenario"].as_str().unwrap_or("").starts_with("mtguard/"))
        .collect();
    assert_eq!(mtguard_alerts.len(), 1, "one alert, from A: {alerts:#}");
    assert_eq!(mtguard_alerts[0]["scenario"], "mtguard/scanner");
    assert_eq!(block_cause(&a, scanner).as_deref(), Some("scanner"));

    // An operator's decision reaches both; deleting it lifts it on both.
    let banned = ip(2);
    assert!(served_from(banned, b.listen) && admitted(banned, a.listen));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &banned.to_string(),
        "--duration",
        "10m",
    ]);
    wait_until("both to apply the operator's ban", DEADLINE, || {
        block_cause(&a, banned).is_some() && block_cause(&b, banned).is_some()
    });
    assert_eq!(block_cause(&b, banned).as_deref(), Some("external"));
    assert!(!served_from(banned, b.listen));
    assert!(!admitted(banned, a.listen));
    let blocks = admin_get(b.admin, "/v1/blocks");
    let entry = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["client"] == banned.to_string())
        .unwrap();
    let left = entry["remaining_seconds"].as_u64().unwrap();
    assert!(
        (570..=600).contains(&left),
        "the decision's duration: {left}"
    );

    lapi.cscli(&["decisions", "delete", "--ip", &banned.to_string()]);
    wait_until("both to lift the deleted ban", DEADLINE, || {
        block_cause(&a, banned).is_none() && block_cause(&b, banned).is_none()
    });
    assert!(served_from(banned, b.listen));
    assert!(admitted(banned, a.listen));

    // With the Local API gone, existing blocks stay and the guards say so.
    let kept = ip(3);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &kept.to_string(),
        "--duration",
        "1h",
    ]);
    wait_until("both to apply the second ban", DEADLINE, || {
        block_cause(&a, kept).is_some() && block_cause(&b, kept).is_some()
    });
    lapi.stop();
    for node in [&a, &b] {
        wait_until("the guard to notice the outage", DEADLINE, || {
            admin_get(node.admin, "/v1/status")["crowdsec"]["lapi_up"] == false
        });
        assert!(block_cause(node, kept).is_some(), "a held ban stays");
    }
    assert_eq!(block_cause(&b, scanner).as_deref(), Some("external"));
    assert!(!served_from(kept, b.listen) && !served_from(scanner, b.listen));
    assert!(!admitted(kept, a.listen));
    let status = admin_get(b.admin, "/v1/status");
    assert!(
        status["crowdsec"]["decisions"].as_u64().unwrap() >= 2,
        "{status:#}"
    );
    assert!(status["crowdsec"]["last_error"].is_string(), "{status:#}");
    let text = metrics(b.admin);
    assert!(text.contains("mtguard_crowdsec_lapi_up 0"), "{text}");
    // Still serving everyone else.
    assert!(served_from(ip(4), b.listen));

    // Back up (same database): both resume after their backoff and follow
    // the stream again.
    lapi.start();
    for node in [&a, &b] {
        wait_until(
            "the guard to reach the Local API again",
            Duration::from_secs(60),
            || admin_get(node.admin, "/v1/status")["crowdsec"]["lapi_up"] == true,
        );
    }
    lapi.cscli(&["decisions", "delete", "--ip", &kept.to_string()]);
    wait_until(
        "both to lift the ban deleted after the outage",
        DEADLINE,
        || block_cause(&a, kept).is_none() && block_cause(&b, kept).is_none(),
    );
    assert!(served_from(kept, b.listen));
    assert!(a.server.logged("CrowdSec Local API reachable again"));

    // A ban deleted while B was down: B restores it from its state, and
    // its first full pull lifts it.
    let missed = ip(5);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &missed.to_string(),
        "--duration",
        "1h",
    ]);
    wait_until("B to apply the third ban", DEADLINE, || {
        block_cause(&b, missed).is_some()
    });
    let server = b.server;
    assert_eq!(server.stop().code(), Some(0));
    lapi.cscli(&["decisions", "delete", "--ip", &missed.to_string()]);
    let b = Node {
        server: Server::start(&["--config", b.config.to_str().unwrap()], "guarding").unwrap(),
        ..b
    };
    wait_until(
        "B to lift the ban deleted while it was down",
        DEADLINE,
        || block_cause(&b, missed).is_none(),
    );
    assert!(served_from(missed, b.listen));
    // The shared scanner block survived the restart and is still covered.
    assert_eq!(block_cause(&b, scanner).as_deref(), Some("external"));
}

/// The fan-out to CrowdSec and nftables is bounded: a consumer that does
/// not keep up loses events (counted), and admission goes on.
#[test]
fn observers_get_blocks_and_detections_and_a_full_queue_drops_them() {
    use mtguard_core::{BlockCause, Event, Level, Policy};
    let guard = mtguard_tests::test_guard(Policy::for_level(Level::Standard));
    let mut rx = guard.subscribe(2);
    for d in 1..=5 {
        guard
            .with(|e, now| {
                e.block(
                    now,
                    ip(d),
                    Some(Duration::from_secs(60)),
                    BlockCause::Manual,
                )
            })
            .unwrap();
    }
    assert_eq!(guard.observer_drops(), 3);
    for d in 1..=2 {
        match rx.try_recv().unwrap() {
            Event::Blocked { client, cause, .. } => {
                assert_eq!(client.to_ip(), ip(d));
                assert_eq!(cause, BlockCause::Manual);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(rx.try_recv().is_err());
    assert!(guard.with(|e, _| e.is_blocked(ip(5))), "blocks went on");
    guard.with(|e, now| e.unblock(now, ip(1)));
    assert!(matches!(rx.try_recv().unwrap(), Event::Unblocked { .. }));
}

#[test]
fn crowdsec_and_kernel_keys_parse_and_mistakes_name_key_and_line() {
    use mtguard::config::Config;
    let ok = Config::parse(
        "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\napi_key_file = \"/k\"\n\
         machine_id = \"n1\"\npassword_file = \"/p\"\n[kernel]\nnft_set = \"ip filter drop_me\"\n",
        "t.toml",
    )
    .unwrap();
    let c = ok.crowdsec.unwrap();
    assert_eq!(c.lapi_url, "http://127.0.0.1:8080/");
    assert_eq!(c.poll_interval, Duration::from_secs(10));
    assert_eq!(c.machine_id.as_deref(), Some("n1"));
    let set = ok.kernel.nft_set.unwrap();
    assert_eq!(
        (&*set.family, &*set.table, &*set.set),
        ("ip", "filter", "drop_me")
    );
    assert_eq!(Config::parse("", "t.toml").unwrap().crowdsec, None);
    // https with a CA and a client certificate, and CrowdSec's bouncers'
    // `insecure_skip_verify: false`: the certificate stands for the key.
    let tls = Config::parse(
        "[crowdsec]\napi_url = \"https://lapi.example:8080\"\nca_cert_path = \"/ca.pem\"\n\
         cert_path = \"/b.pem\"\nkey_path = \"/b.key\"\ninsecure_skip_verify = false\n",
        "t.toml",
    )
    .unwrap()
    .crowdsec
    .unwrap();
    assert_eq!(tls.lapi_url, "https://lapi.example:8080/");
    assert_eq!(tls.ca_cert_path.as_deref(), Some(Path::new("/ca.pem")));
    let cert = tls.client_cert.unwrap();
    assert_eq!(
        (cert.cert_path.as_path(), cert.key_path.as_path()),
        (Path::new("/b.pem"), Path::new("/b.key"))
    );

    for (text, line, key, says) in [
        (
            "[crowdsec]\napi_key_file = \"/k\"\n",
            1,
            "[crowdsec]",
            "lapi_url is required",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://h:1\"\napi_key_file = \"/k\"\nca_cert_path = \"/ca\"\n",
            4,
            "[crowdsec] ca_cert_path",
            "only for an https:// lapi_url",
        ),
        (
            "[crowdsec]\nlapi_url = \"https://h:1\"\ncert_path = \"/c\"\n",
            3,
            "[crowdsec] cert_path",
            "needs [crowdsec] key_path",
        ),
        (
            "[crowdsec]\nlapi_url = \"https://h:1\"\napi_key = \"k\"\ninsecure_skip_verify = true\n",
            4,
            "[crowdsec] insecure_skip_verify",
            "always verifies",
        ),
        (
            "[crowdsec]\nlapi_url = \"127.0.0.1:8080\"\napi_key_file = \"/k\"\n",
            2,
            "[crowdsec] lapi_url",
            "invalid URL",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://h:1\"\n",
            1,
            "[crowdsec]",
            "set api_key_file",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://h:1\"\nmachine_id = \"m\"\n",
            3,
            "[crowdsec] machine_id",
            "password_file",
        ),
        (
            "[crowdsec]\nlapi_url = \"http://h:1\"\napi_key_file = \"/k\"\npoll_interval = \"5\"\n",
            4,
            "[crowdsec] poll_interval",
            "invalid duration",
        ),
        (
            // api_key is CrowdSec's bouncers' name, accepted; this is none.
            "[crowdsec]\nlapi_url = \"http://h:1\"\nbouncer_key = \"x\"\n",
            3,
            "[crowdsec]",
            "unknown key",
        ),
        (
            "[kernel]\nnft_set = \"inet mtguard\"\n",
            2,
            "[kernel] nft_set",
            "FAMILY TABLE SET",
        ),
        (
            "[kernel]\nnft_set = \"arp t s\"\n",
            2,
            "[kernel] nft_set",
            "family",
        ),
        (
            "[kernel]\nnft_set = \"inet t s;x\"\n",
            2,
            "[kernel] nft_set",
            "not an nftables name",
        ),
    ] {
        let err = Config::parse(text, "t.toml").expect_err(text);
        assert_eq!(err.line(), Some(line), "{err}");
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.message().contains(says), "{err}");
    }
}

/// The Local API over https (CrowdSec's own `api.server.tls`, with
/// certificates from rcgen): a guard trusting its CA follows the decision
/// stream with a bouncer key and reports its blocks as a machine; a guard
/// with only a client certificate follows it too (the Local API takes the
/// certificate for the key); a guard trusting another CA follows nothing and
/// says why in `/v1/status`.
#[test]
fn a_guard_follows_a_local_api_over_https_with_its_ca_and_a_client_certificate() {
    let pki = LapiPki::new();
    let mut lapi = Lapi::with_tls(Some(&pki));
    lapi.start();
    assert!(lapi.url.starts_with("https://"), "{}", lapi.url);
    let backend = EchoBackend::start();
    let ca = pki.path("ca.pem");

    let key = lapi.bouncer("key-bouncer");
    let password = lapi.machine("tls-guard");
    let keyed = node_with(
        "keyed",
        backend.addr,
        &format!("[mtproto]\nsecrets = [\"{CLASSIC}\"]\n"),
        &format!(
            "api_url = \"{}\"\nca_cert_path = \"{ca}\"\napi_key_file = \"{}\"\n\
             update_frequency = \"{}ms\"\ninsecure_skip_verify = false\n\
             machine_id = \"tls-guard\"\npassword_file = \"{}\"\n",
            lapi.url,
            key.display(),
            POLL.as_millis(),
            password.display()
        ),
    );
    let certified = node_with(
        "certified",
        backend.addr,
        "",
        &format!(
            "api_url = \"{}\"\nca_cert_path = \"{ca}\"\ncert_path = \"{}\"\nkey_path = \"{}\"\n\
             update_frequency = \"{}ms\"\n",
            lapi.url,
            pki.path("bouncer.pem"),
            pki.path("bouncer.key"),
            POLL.as_millis()
        ),
    );
    let stranger = node_with(
        "stranger",
        backend.addr,
        "",
        &format!(
            "api_url = \"{}\"\nca_cert_path = \"{}\"\napi_key_file = \"{}\"\n\
             update_frequency = \"{}ms\"\n",
            lapi.url,
            pki.path("other-ca.pem"),
            key.display(),
            POLL.as_millis()
        ),
    );

    // An operator's ban, through cscli over https, reaches both trusting
    // guards.
    let banned = ip(60);
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &banned.to_string(),
        "--duration",
        "10m",
    ]);
    wait_until("both trusting guards to apply the ban", DEADLINE, || {
        block_cause(&keyed, banned).is_some() && block_cause(&certified, banned).is_some()
    });
    assert!(!served_from(banned, certified.listen));
    assert!(!admitted(banned, keyed.listen));
    // The Local API registered the certificate bouncer by itself, under
    // the certificate's name.
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "json"]);
    assert!(bouncers.contains("mtguard-tls@127.0.0.1"), "{bouncers}");

    // The keyed guard's own detection travels as an alert over https and
    // comes back to the certificate guard as a decision.
    let scanner = ip(61);
    for _ in 0..3 {
        if let Ok(mut s) = connect_from(scanner, keyed.listen) {
            let _ = s.write_all(&[0x42; 64]);
            let _ = s.read(&mut [0u8; 8]);
        }
    }
    wait_until(
        "the certificate guard to block the scanner",
        DEADLINE,
        || block_cause(&certified, scanner).as_deref() == Some("external"),
    );

    // The guard that trusts another CA never applied anything, and its
    // status names the certificate failure.
    assert_eq!(block_cause(&stranger, banned), None);
    assert!(served_from(banned, stranger.listen));
    let status = admin_get(stranger.admin, "/v1/status");
    let crowdsec = &status["crowdsec"];
    assert_eq!(crowdsec["lapi_up"], false, "{crowdsec:#}");
    let error = crowdsec["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{crowdsec:#}"
    );
}

/// check-config reads the TLS files as `run` would: a CA file that holds no
/// certificate and a key that is not a key each fail it, naming the key.
#[test]
fn check_config_reads_the_local_api_tls_files() {
    let pki = LapiPki::new();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let key = dir.path().join("k");
    write_private(&key, "bouncer-key");
    for (extra, says) in [
        (
            format!("ca_cert_path = \"{}\"\n", junk.display()),
            "[crowdsec] ca_cert_path",
        ),
        (
            format!(
                "ca_cert_path = \"{}\"\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
                pki.path("ca.pem"),
                pki.path("bouncer.pem"),
                junk.display()
            ),
            "[crowdsec] key_path",
        ),
        (
            format!(
                "ca_cert_path = \"{}\"\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
                pki.path("ca.pem"),
                pki.path("bouncer.pem"),
                pki.path("server.key")
            ),
            "does not go with",
        ),
    ] {
        let path = dir.path().join("mtguard.toml");
        std::fs::write(
            &path,
            format!(
                "[crowdsec]\nlapi_url = \"https://127.0.0.1:8080\"\napi_key_file = \"{}\"\n{extra}",
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(mtguard_tests::mtguard_bin())
            .args(["check-config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(stderr.contains(says), "{extra}: {stderr}");
    }
    // The good files pass.
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        format!(
            "[crowdsec]\nlapi_url = \"https://127.0.0.1:8080\"\nca_cert_path = \"{}\"\n\
             cert_path = \"{}\"\nkey_path = \"{}\"\n",
            pki.path("ca.pem"),
            pki.path("bouncer.pem"),
            pki.path("bouncer.key")
        ),
    )
    .unwrap();
    let out = Command::new(mtguard_tests::mtguard_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&pki.path("bouncer.pem")), "{stdout}");
}

/// The shipped CrowdSec parser and scenarios (runtime-std/dist/crowdsec)
/// read mtguard's real log lines: a guard run with `--log-format json`
/// detects a replay and a scanner and blocks both; its lines, as the
/// journal's short output gives them to CrowdSec (`acquis.yaml`: type
/// syslog), go through `cscli explain` with Debian's syslog-logs parser in
/// front. Each detection is parsed with the client's range and overflows
/// its scenario; a line of another program is left alone.
#[test]
fn crowdsecs_own_parser_and_scenarios_read_mtguards_real_log_lines() {
    let mut lapi = Lapi::new();
    lapi.start();
    let d = lapi.dir.path();
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-std/dist/crowdsec");
    let hub = lapi
        .root
        .join("usr/share/crowdsec/hub/parsers/s00-raw/crowdsecurity");
    for sub in ["parsers/s00-raw", "parsers/s01-parse", "scenarios"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, d.join(to)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    // The agent reads the hub's index even for local files; the package's
    // offline copy serves.
    copy(
        &lapi.root.join("usr/share/crowdsec/hub/.index.json"),
        "hub/.index.json",
    );
    copy(
        &hub.join("syslog-logs.yaml"),
        "parsers/s00-raw/syslog-logs.yaml",
    );
    copy(
        &dist.join("mtguard-logs.yaml"),
        "parsers/s01-parse/mtguard-logs.yaml",
    );
    copy(
        &dist.join("mtguard-scenarios.yaml"),
        "scenarios/mtguard-scenarios.yaml",
    );
    let status = Command::new("cp")
        .arg("-r")
        .arg(lapi.root.join("etc/crowdsec/patterns"))
        .arg(d)
        .status()
        .unwrap();
    assert!(status.success());
    // The acquisition file is YAML CrowdSec reads for a journal source.
    let acquis = std::fs::read_to_string(dist.join("acquis.yaml")).unwrap();
    assert!(acquis.contains("source: journalctl") && acquis.contains("type: syslog"));

    // A real guard's JSON lines.
    let backend = EchoBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("mtguard.toml");
    std::fs::write(
        &config,
        format!(
            "level = 2\n[server]\nlisten = [\"{listen}\"]\nbackend = \"{}\"\n\
             [limits]\nscanner_failures = 3\nblock_jitter_permille = 0\nattack_enter_per_second = 0\n\
             [state]\ndir = \"{}\"\n[mtproto]\nsecrets = [\"{CLASSIC}\"]\n",
            backend.addr,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let guard = Server::start(
        &["--log-format", "json", "--config", config.to_str().unwrap()],
        "guarding",
    )
    .unwrap();
    let header = mtguard_tests::obfuscated2_vector("classic-intermediate");
    let mut client = connect_from(ip(71), listen).unwrap();
    client.write_all(&header).unwrap();
    // The echo proves the first header was judged and relayed before the
    // replay arrives.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.read_exact(&mut [0u8; 64]).unwrap();
    let replayer = ip(72);
    if let Ok(mut s) = connect_from(replayer, listen) {
        let _ = s.write_all(&header);
        let _ = s.read(&mut [0u8; 8]);
    }
    let scanner = ip(73);
    for _ in 0..3 {
        if let Ok(mut s) = connect_from(scanner, listen) {
            let _ = s.write_all(&[0x42; 64]);
            let _ = s.read(&mut [0u8; 8]);
        }
    }
    wait_until("both detections to be logged", DEADLINE, || {
        guard.logged("replayed handshake detected")
            && guard.logged("scanner detected")
            && guard.log_text().matches("client blocked").count() >= 2
    });
    let detections: Vec<String> = guard
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"client\":"))
        .map(str::to_owned)
        .collect();
    assert!(detections.len() >= 4, "{detections:#?}");
    for line in &detections {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["fields"]["client"].is_string(), "{line}");
    }
    // As `journalctl -o short` prints them; then the replay line as an IPv6
    // client's would read (mtguard logs IPv6 clients as their prefix, and
    // loopback has no IPv6 sources to spare), and one line of another
    // program.
    let mut syslog: String = detections
        .iter()
        .map(|l| format!("Dec  2 18:50:01 guard1 mtguard[4242]: {l}\n"))
        .collect();
    let replay_line = detections
        .iter()
        .find(|l| l.contains("replayed handshake detected"))
        .unwrap();
    syslog.push_str(&format!(
        "Dec  2 18:50:01 guard1 mtguard[4242]: {}\n",
        replay_line.replace(&format!("\"{replayer}\""), "\"2001:db8:7:1::/64\"")
    ));
    syslog.push_str(
        "Dec  2 18:50:02 guard1 sshd[99]: {\"fields\":{\"message\":\"client blocked\",\"client\":\"127.10.0.99\"}}\n",
    );
    let lines = d.join("mtguard.log");
    std::fs::write(&lines, &syslog).unwrap();

    let path = format!(
        "{}:{}",
        lapi.root.join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The Local API runs without the agent; explain runs the agent on the
    // same config with an agent section (and no sources of its own).
    let explain_config = d.join("explain.yaml");
    std::fs::write(d.join("acquis-none.yaml"), "").unwrap();
    std::fs::write(
        &explain_config,
        std::fs::read_to_string(lapi.config()).unwrap()
            + &format!(
                "crowdsec_service:\n  acquisition_path: {}\n  parser_routines: 1\n",
                d.join("acquis-none.yaml").display()
            ),
    )
    .unwrap();
    let out = Command::new(lapi.root.join("usr/bin/cscli"))
        .arg("-c")
        .arg(&explain_config)
        .args(["explain", "--type", "syslog", "-v", "--file"])
        .arg(&lines)
        .env("PATH", path)
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cscli explain: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks: Vec<&str> = text
        .split("line: ")
        .filter(|b| !b.trim().is_empty())
        .collect();
    // The block of the detection (not the block line) naming `client`.
    let detection = |client: &str| {
        blocks
            .iter()
            .find(|b| {
                b.contains(&format!("\"client\":\"{client}\"")) && !b.contains("\"client blocked\"")
            })
            .copied()
            .unwrap_or_else(|| panic!("no detection of {client}: {text}"))
    };
    for (client, range, scenario) in [
        (
            replayer.to_string(),
            format!("{replayer}/32"),
            "mtguard/replayed-handshake",
        ),
        (
            scanner.to_string(),
            format!("{scanner}/32"),
            "mtguard/scanner",
        ),
        (
            "2001:db8:7:1::/64".to_owned(),
            "2001:db8:7:1::/64".to_owned(),
            "mtguard/replayed-handshake",
        ),
    ] {
        let block = detection(&client);
        assert!(block.contains("🟢 mtguard/mtguard-logs"), "{block}");
        assert!(
            block.contains(&format!("evt.Meta.source_range : {range}\n")),
            "{block}"
        );
        let scenarios = block.split("Scenarios").nth(1).unwrap_or_default();
        assert!(scenarios.contains(&format!("🟢 {scenario}")), "{block}");
    }
    // Each block line goes to the repeat-offender bucket with its cause.
    let block_lines: Vec<&&str> = blocks
        .iter()
        .filter(|b| b.contains("mtguard[4242]") && b.contains("\"client blocked\""))
        .collect();
    assert_eq!(block_lines.len(), 2, "{text}");
    for b in block_lines {
        assert!(b.contains("evt.Meta.log_type : mtguard_block"), "{b}");
        assert!(b.contains("🟢 mtguard/repeat-offender"), "{b}");
    }
    // Another program's line is never read as mtguard's.
    for b in blocks.iter().filter(|b| b.contains("sshd[99]")) {
        assert!(!b.contains("🟢 mtguard/"), "{b}");
    }
}
