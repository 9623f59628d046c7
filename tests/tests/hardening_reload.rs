//! Issue 14, items 2 and 8: a refused reload changes nothing, section by
//! section; `check-config` builds the same plan as `run` and shows every
//! effective value with its true source, sealed pins files included.

use std::ffi::OsStr;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mtguard_tests::{
    connect_from, fake_tls_hello, free_port, http_request, mtguard_bin, served, unix_now,
    EchoBackend, Server,
};

const PIN_A: &str = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
const PIN_B: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const PIN_C: &str = "sha256/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBE=";
const SECRET_A: &str = "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d";
const SECRET_B: &str = "ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d";
const DOMAIN: &str = "www.example.com";
/// The server preset's deny table (`ServerPreset::PREFIXES`).
const PREFIXES: usize = 8192;
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "pin-h14";

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// One running guard with the admin API, on a config we rewrite.
struct Node {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: EchoBackend,
    server: Option<Server>,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().unwrap(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            backend: EchoBackend::start(),
            server: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The config: `head` before any table, `server` appended to
    /// `[server]`, `rest` after it.
    fn write(&self, head: &str, server: &str, rest: &str) {
        let text = format!(
            "{head}\n[server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n{server}\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"admin.token\"\n\
             [state]\ndir = \"state\"\n{rest}\n",
            self.listen, self.backend.addr, self.admin
        );
        fs::write(self.path("mtguard.toml"), text).unwrap();
    }

    fn start(&mut self, env: &[(&str, &OsStr)]) {
        let token = self.path("admin.token");
        fs::write(&token, "h14-token-0123456789\n").unwrap();
        fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let config = self.path("mtguard.toml");
        let server =
            Server::start_with_env(&["--config", config.to_str().unwrap()], env, "admin API")
                .unwrap();
        self.server = Some(server);
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) =
            http_request(self.admin, "GET", path, Some("h14-token-0123456789"), None).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `/v1/status` less what moves on its own (uptime, counters), and
    /// `/v1/pins`, as text to compare byte for byte.
    fn observed(&self) -> (String, String) {
        let mut status = self.get("/v1/status");
        let obj = status.as_object_mut().unwrap();
        for moving in [
            "uptime_seconds",
            "stats",
            "active_connections",
            "pending_connections",
            "authenticated_connections",
            "shared_clients",
            "tracked_clients",
            "blocked_clients",
            "observer_events_dropped",
            "crowdsec",
            "kernel",
            // Background jobs report each try (a state save after the
            // probes above, say): telemetry that moves on its own.
            "jobs",
        ] {
            obj.remove(moving);
        }
        (status.to_string(), self.get("/v1/pins").to_string())
    }

    /// Sends SIGHUP and waits for the count of `needle` in the log to grow.
    fn reload(&self, needle: &str) {
        let count = |s: &Server| s.log_text().matches(needle).count();
        let before = count(self.server());
        self.server().signal("HUP");
        let start = Instant::now();
        while count(self.server()) == before {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {needle:?} after SIGHUP: {}",
                self.server().log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many of four connections held open from `from` are served.
fn served_of_four(listen: SocketAddr, from: IpAddr) -> usize {
    let mut held = Vec::new();
    let mut n = 0;
    for _ in 0..4 {
        if let Ok(mut c) = connect_from(from, listen) {
            if served(&mut c) {
                n += 1;
            }
            held.push(c);
        }
    }
    n
}

/// Whether a fake-TLS hello under `secret` is relayed (the backend echoes
/// it back).
fn hello_served(listen: SocketAddr, from: IpAddr, secret: &str, salt: u8) -> bool {
    use std::io::{Read, Write};
    let hello = fake_tls_hello(secret, DOMAIN, unix_now(), [salt, 1, 2, 3]);
    let Ok(mut c) = connect_from(from, listen) else {
        return false;
    };
    if c.write_all(&hello).is_err() {
        return false;
    }
    let mut back = vec![0; hello.len()];
    c.read_exact(&mut back).is_ok() && back == hello
}

/// A deny file one prefix over the table's room: refused at the list swap,
/// the last step a reload can fail at.
fn over_capacity_deny_file(path: &Path) {
    let mut text = String::new();
    for i in 0..=PREFIXES as u32 {
        let [_, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        text.push_str(&format!("10.{b}.{c}.{d}\n"));
    }
    fs::write(path, text).unwrap();
}

/// A section of config A, the same section changed in B, and what the
/// guard must still do after B is refused.
struct Case {
    name: &'static str,
    /// (head, [server] extra, rest) of A and of B.
    a: (&'static str, &'static str, String),
    b: (&'static str, &'static str, String),
}

/// The refused thing every B carries besides its change.
const REFUSED: &str = "[lists]\ndeny_files = [\"over.netset\"]\nallow = [\"127.200.0.0/16\"]\n";

fn cases() -> Vec<Case> {
    let limits_a = "[limits]\nmax_connections_per_ip = 2\nblock_after_violations = 100\n";
    let limits_b = "[limits]\nmax_connections_per_ip = 3\nblock_after_violations = 100\n";
    vec![
        Case {
            name: "level",
            a: ("level = 1", "", limits_a.into()),
            b: ("level = 0", "", format!("{limits_a}{REFUSED}")),
        },
        Case {
            name: "limits",
            a: ("level = 1", "", limits_a.into()),
            b: ("level = 1", "", format!("{limits_b}{REFUSED}")),
        },
        Case {
            name: "lists and list files",
            a: (
                "level = 1",
                "",
                format!("{limits_a}[lists]\ndeny = [\"127.9.0.0/16\"]\n"),
            ),
            b: ("level = 1", "", format!("{limits_a}{REFUSED}")),
        },
        Case {
            name: "pins and pins files",
            a: (
                "level = 1",
                "[server.backend_tls]\nserver_name = \"backend.test\"\ntrust = \"pins-only\"\n",
                limits_a.to_string(),
            )
                .with_pins(&[PIN_A], None),
            b: (
                "level = 1",
                "[server.backend_tls]\nserver_name = \"backend.test\"\ntrust = \"pins-only\"\n",
                format!("{limits_b}{REFUSED}"),
            )
                .with_pins(&[PIN_A, PIN_B], Some("extra.pins")),
        },
        Case {
            name: "[mtproto]",
            a: (
                "level = 1",
                "",
                format!("{limits_a}[mtproto]\nsecrets = [\"{SECRET_A}\"]\n"),
            ),
            b: (
                "level = 1",
                "",
                format!(
                    "{limits_b}[mtproto]\nsecrets = [\"{SECRET_B}\"]\nhandshake_timeout = \"2s\"\n{REFUSED}"
                ),
            ),
        },
        Case {
            name: "[server.backend_tls]",
            a: ("level = 1", "", limits_a.into()),
            b: (
                "level = 1",
                "",
                format!(
                    "{limits_b}{REFUSED}[server.backend_tls]\nserver_name = \"other.test\"\ntrust = \"pins-only\"\npins = [\"{PIN_C}\"]\n"
                ),
            ),
        },
    ]
}

/// Adds `[server.backend_tls] pins` (and a pins file holding PIN_C) to a
/// case's `[server]` extra; leaked: the table lives for the test.
trait WithPins {
    fn with_pins(self, pins: &[&str], file: Option<&str>) -> Self;
}

impl WithPins for (&'static str, &'static str, String) {
    fn with_pins(self, pins: &[&str], file: Option<&str>) -> Self {
        let list: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
        let mut server = format!("{}pins = [{}]\n", self.1, list.join(", "));
        if let Some(f) = file {
            server.push_str(&format!("pins_file = \"{f}\"\n"));
        }
        (self.0, Box::leak(server.into_boxed_str()), self.2)
    }
}

#[test]
fn a_refused_reload_changes_nothing_section_by_section() {
    for (n, case) in cases().into_iter().enumerate() {
        let mut node = Node::new();
        over_capacity_deny_file(&node.path("over.netset"));
        fs::write(node.path("extra.pins"), format!("{PIN_C}\n")).unwrap();
        node.write(case.a.0, case.a.1, &case.a.2);
        node.start(&[]);
        let n = n as u8;
        let before = node.observed();
        let conns_before = served_of_four(node.listen, ip(20 + n, 0, 1));
        let hello_before = hello_served(node.listen, ip(20 + n, 0, 2), SECRET_A, 1);
        let allowed_before = served_of_four(node.listen, ip(200, n, 1));
        let denied_before = served_of_four(node.listen, ip(9, n, 1));

        node.write(case.b.0, case.b.1, &case.b.2);
        node.reload("reload refused");
        let log = node.server().log_text();
        assert!(log.contains("room for"), "{}: {log}", case.name);

        assert_eq!(
            node.observed(),
            before,
            "{}: status or pins moved",
            case.name
        );
        assert_eq!(
            served_of_four(node.listen, ip(20 + n, 0, 3)),
            conns_before,
            "{}: connections see another limit",
            case.name
        );
        assert_eq!(
            hello_served(node.listen, ip(20 + n, 0, 4), SECRET_A, 2),
            hello_before,
            "{}: handshakes judged otherwise",
            case.name
        );
        assert_eq!(
            served_of_four(node.listen, ip(200, n, 2)),
            allowed_before,
            "{}: the allow list moved",
            case.name
        );
        assert_eq!(
            served_of_four(node.listen, ip(9, n, 2)),
            denied_before,
            "{}: the deny list moved",
            case.name
        );
        assert!(
            !node.server().logged("configuration reloaded"),
            "{}",
            case.name
        );
        assert!(
            node.server.take().unwrap().stop().success(),
            "{}",
            case.name
        );
    }
}

#[test]
fn an_accepted_reload_applies_every_section() {
    let mut node = Node::new();
    let limits =
        |n: u32| format!("[limits]\nmax_connections_per_ip = {n}\nblock_after_violations = 100\n");
    node.write("level = 1", "", &limits(2));
    node.start(&[]);
    assert_eq!(served_of_four(node.listen, ip(30, 0, 1)), 2);
    node.write(
        "level = 0",
        format!(
            "[server.backend_tls]\nserver_name = \"backend.test\"\ntrust = \"pins-only\"\npins = [\"{PIN_A}\"]\n"
        )
        .leak(),
        &format!("{}[lists]\ndeny = [\"127.31.0.0/16\"]\n", limits(3)),
    );
    node.reload("configuration reloaded");
    let status = node.get("/v1/status");
    assert_eq!(status["level"], 0, "{status}");
    assert_eq!(status["pins"], 1, "{status}");
    assert!(node.get("/v1/pins").to_string().contains(PIN_A));
    assert_eq!(
        served_of_four(node.listen, ip(31, 0, 1)),
        0,
        "the new deny list applies"
    );
    // Backend TLS now: the echo backend speaks no TLS, so nothing is served.
    assert_eq!(served_of_four(node.listen, ip(30, 0, 2)), 0);
    assert!(node.server.take().unwrap().stop().success());
}

// ----- [hsm] -----

struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    fn new(label: &str) -> SoftHsm {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "so-pin-1", "--pin", PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util (Debian softhsm2) must be installed: test.sh installs it");
        assert!(out.status.success(), "{out:?}");
        SoftHsm { dir, conf }
    }

    fn table(&self, label: &str, integrity_key: &str) -> String {
        format!(
            "[hsm]\nmodule = \"{MODULE}\"\ntoken = \"{label}\"\npin_file = \"{}\"\nintegrity_key = \"{integrity_key}\"\n",
            self.dir.path().join("pin").display()
        )
    }

    fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("SOFTHSM2_CONF", self.conf.as_os_str())]
    }

    fn mtguard(&self, args: &[&str]) -> Output {
        Command::new(mtguard_bin())
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `[hsm]` changes only on restart: a reload that changes it, the level,
/// the limits and the backend's pins changes none of them.
#[test]
fn a_refused_hsm_reload_changes_nothing() {
    let hsm = SoftHsm::new("reload");
    let mut node = Node::new();
    let limits =
        |n: u32| format!("[limits]\nmax_connections_per_ip = {n}\nblock_after_violations = 100\n");
    let tls = |pins: &str| {
        format!("[server.backend_tls]\nserver_name = \"backend.test\"\ntrust = \"pins-only\"\npins = [{pins}]\n")
    };
    let a_tls = tls(&format!("\"{PIN_A}\""));
    node.write(
        "level = 1",
        a_tls.clone().leak(),
        &format!("{}{}", limits(2), hsm.table("reload", "mtguard-integrity")),
    );
    node.start(&hsm.env());
    let before = node.observed();
    let b_tls = tls(&format!("\"{PIN_A}\", \"{PIN_B}\""));
    node.write(
        "level = 0",
        b_tls.leak(),
        &format!("{}{}", limits(3), hsm.table("reload", "another-key")),
    );
    node.reload("reload refused");
    assert!(node.server().logged("[hsm] changes only on restart"));
    assert_eq!(node.observed(), before, "status or pins moved");
    assert!(node.server.take().unwrap().stop().success());
}

/// `check-config` opens the token as `run` does: a sealed pins file is
/// checked and its pins shown; a tampered one fails naming the file. So
/// does `fetch --config`.
#[test]
fn check_config_checks_a_sealed_pins_file_with_the_token() {
    let hsm = SoftHsm::new("cc");
    let dir = hsm.dir.path();
    let pins = dir.join("backend.pins");
    fs::write(&pins, format!("{PIN_A}\n{PIN_B}\n")).unwrap();
    let config = dir.join("mtguard.toml");
    fs::write(
        &config,
        format!(
            "{}[server]\nbackend = \"127.0.0.1:9\"\n[server.backend_tls]\nserver_name = \"backend.test\"\n\
             trust = \"pins-only\"\npins_file = \"{}\"\n",
            hsm.table("cc", "mtguard-integrity"),
            pins.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = hsm.mtguard(&["hsm", "--config", cfg, "seal-pins", pins.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read(&pins).unwrap().starts_with(b"MTGSEAL1"));

    let out = hsm.mtguard(&["check-config", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(PIN_A) && stdout.contains(PIN_B), "{stdout}");
    assert!(stdout.contains("backend pins loaded: 2"), "{stdout}");

    // fetch reads the same file through the same seal check: it gets past
    // the pins (and fails later, at the unreachable URL).
    let fetch = |extra: &[&str]| {
        let mut args = vec![
            "fetch",
            "https://127.0.0.1:9/getProxyConfig",
            "--pins-file",
            pins.to_str().unwrap(),
            "--pins-only",
            "--kind",
            "config",
            "--timeout",
            "2",
        ];
        let out_path = dir.join("proxy.conf");
        let out_s = out_path.to_str().unwrap().to_owned();
        args.extend_from_slice(extra);
        args.push("--out");
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push(out_s);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = hsm.mtguard(&refs);
        text(&out.stderr)
    };
    let err = fetch(&["--config", cfg]);
    assert!(!err.contains("is refused"), "{err}");
    let err = fetch(&[]);
    assert!(err.contains("is refused"), "{err}");
    assert!(err.contains("give the config"), "{err}");

    let mut tampered = fs::read(&pins).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    fs::write(&pins, tampered).unwrap();
    let out = hsm.mtguard(&["check-config", cfg]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(pins.to_str().unwrap()), "{err}");
    assert!(err.contains("integrity seal does not match"), "{err}");
}

/// Every value set in `[mtproto]`, `[server]`, `[server.backend_tls]` and
/// `[refresh]` shows with its true source; the handshake deadline and the
/// idle timeout show side by side.
#[test]
fn check_config_shows_every_value_with_its_true_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text_of = "level = 2\n\
        [server]\n\
        listen = [\"127.0.0.1:4443\"]\n\
        backend = \"127.0.0.1:9\"\n\
        proxy_protocol = \"v2\"\n\
        connect_timeout = \"3s\"\n\
        idle_timeout = \"7m\"\n\
        [server.backend_tls]\n\
        server_name = \"backend.test\"\n\
        trust = \"pins-only\"\n\
        pins = [\"sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\", \"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n\
        on_expired = \"fail-closed\"\n\
        [mtproto]\n\
        secrets = [\"0123456789abcdef0123456789abcdef\"]\n\
        on_probe = \"close\"\n\
        handshake_timeout = \"4s\"\n\
        time_skew = \"5m\"\n\
        time_skew_ahead = \"9s\"\n\
        [refresh]\n\
        config_url = \"https://core.telegram.org/getProxyConfig\"\n\
        config_out = \"proxy.conf\"\n\
        interval = \"2h\"\n\
        jitter = \"5m\"\n\
        pins = [\"sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\", \"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n";
    fs::write(&path, text_of).unwrap();
    let out = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let name = path.display().to_string();
    // The row of `key` inside `table`'s block.
    let row = |table: &str, key: &str| -> String {
        let block = stdout
            .split_once(&format!("  {table}\n"))
            .unwrap_or_else(|| panic!("no {table} in {stdout}"))
            .1;
        block
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {table} {key} in {stdout}"))
            .to_owned()
    };
    for (table, key, value, line) in [
        ("[server]", "proxy_protocol", "v2", 5),
        ("[server]", "connect_timeout", "3s", 6),
        ("[server]", "idle_timeout", "7m", 7),
        ("[server]", "handshake_timeout", "4s", 16),
        ("[server.backend_tls]", "server_name", "backend.test", 9),
        ("[server.backend_tls]", "trust", "pins-only", 10),
        ("[server.backend_tls]", "on_expired", "fail-closed", 12),
        ("[mtproto]", "time_skew", "5m", 17),
        ("[mtproto]", "time_skew_ahead", "9s", 18),
        ("[mtproto]", "on_probe", "close", 15),
        ("[refresh]", "interval", "2h", 22),
        ("[refresh]", "jitter", "5m", 23),
        ("[limits]", "handshake_timeout", "4s", 16),
    ] {
        let r = row(table, key);
        assert!(r.contains(value), "{table} {key}: {r}");
        assert!(r.contains(&format!("{name}:{line}")), "{table} {key}: {r}");
    }
    assert!(
        row("[limits]", "handshake_timeout").contains("[mtproto] handshake_timeout"),
        "{stdout}"
    );
    assert!(
        !row("[limits]", "handshake_timeout").contains("preset"),
        "{stdout}"
    );
    assert!(row("[limits]", "rate_window").contains("level 2 preset"));

    // Unset, each says where its value comes from instead.
    fs::write(
        &path,
        "[server]\nbackend = \"127.0.0.1:9\"\n[server.backend_tls]\ntrust = \"pins-only\"\n\
         pins = [\"sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n\
         [refresh]\nconfig_url = \"https://core.telegram.org/getProxyConfig\"\n\
         config_out = \"proxy.conf\"\n\
         pins = [\"sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n",
    )
    .unwrap();
    let out = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row = |table: &str, key: &str| -> String {
        let block = stdout.split_once(&format!("  {table}\n")).unwrap().1;
        block
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap()
            .to_owned()
    };
    assert!(row("[server]", "handshake_timeout").contains("level 1 preset"));
    assert!(row("[server]", "idle_timeout").contains("default"));
    assert!(row("[server.backend_tls]", "server_name").contains("127.0.0.1"));
    assert!(row("[server.backend_tls]", "server_name").contains("default"));
    assert!(row("[refresh]", "interval").contains("1d"), "{stdout}");
    assert!(row("[refresh]", "interval").contains("default"));
    assert!(row("[refresh]", "jitter").contains("default"));
}
