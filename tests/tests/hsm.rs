//! Keys in a PKCS#11 token, against SoftHSM2 (Debian `softhsm2`) with a
//! fresh token per test in a temporary directory, found by label, and
//! checked by an independent tool (`pkcs11-tool` from Debian `opensc`).

use mtguard_tests::unix_now as now_unix;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use mtguard::config::{HsmConfig, PinSource};
use mtguard::hsm::{Keys, Token};
use mtguard::persist::seal::{Purpose, Sealer};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{
    Inspector, KeyOps, ReplayCache, Secret, SecretSet, TimeWindow, Verdict,
};
use mtguard_tests::{connect_from, free_port, mtguard_bin, EchoBackend, Server};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// A PIN that appears nowhere else, so a leak into a log would show.
const PIN: &str = "pin-7c41e9";
const OBFS2_VECTORS: &str = include_str!("../../core/tests/vectors/obfuscated2.txt");
const FAKE_TLS_VECTORS: &str = include_str!("../../core/tests/vectors/fake_tls.txt");
const CLASSIC: &str = "0123456789abcdef0123456789abcdef";

/// A SoftHSM2 configuration and token directory of one test.
struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    label: String,
}

impl SoftHsm {
    /// A fresh token labelled `label` with user PIN [`PIN`].
    fn new(label: &str) -> SoftHsm {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        let hsm = SoftHsm {
            conf: dir.path().join("softhsm2.conf"),
            dir,
            label: label.into(),
        };
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "so-pin-1", "--pin", PIN])
            .env("SOFTHSM2_CONF", hsm.conf())
            .output()
            .expect("softhsm2-util (Debian softhsm2) must be installed: test.sh installs it");
        assert!(out.status.success(), "{out:?}");
        hsm
    }

    fn conf(&self) -> &PathBuf {
        &self.conf
    }

    fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("SOFTHSM2_CONF", self.conf.as_os_str())]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[hsm]` table for this token.
    fn table(&self) -> String {
        format!(
            "[hsm]\nmodule = \"{MODULE}\"\ntoken = \"{}\"\npin_file = \"{}\"\n",
            self.label,
            self.path("pin").display()
        )
    }

    /// Writes a config file with `extra` after the `[hsm]` table; returns
    /// its path.
    fn config(&self, name: &str, hsm_table: &str, extra: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("{hsm_table}{extra}")).unwrap();
        path
    }

    /// Runs `mtguard ARGS` with this token's SoftHSM2 configuration.
    fn mtguard(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(mtguard_bin())
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// `pkcs11-tool` (OpenSC) against this token.
    fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--token-label", &self.label])
            .args(["--login", "--pin", PIN])
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .expect("pkcs11-tool (Debian opensc) must be installed: test.sh installs it")
    }

    /// The token's own directory inside the token directory.
    fn token_dir(&self) -> PathBuf {
        let mut dirs: Vec<_> = std::fs::read_dir(self.path("tokens"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.pop().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A fake-TLS ClientHello for `domain` under `secret` stamped `ts`, built
/// in software (the same construction as tests/mtproto.rs).
fn client_hello(secret: &str, domain: &str, ts: u64) -> Vec<u8> {
    // A fixed salt: the same arguments give the same bytes, which the
    // replay checks rely on.
    mtguard_tests::fake_tls_hello(secret, domain, ts, [0x5a; 4])
}

/// Sends `bytes` through the guard to the echo backend: whether they came
/// back (served) rather than the connection being closed (refused).
fn served_with(listen: SocketAddr, from: u8, bytes: &[u8]) -> bool {
    let Ok(mut s) = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 9, from)), listen) else {
        return false;
    };
    if s.write_all(bytes).is_err() {
        return false;
    }
    let mut back = vec![0u8; bytes.len()];
    s.read_exact(&mut back).is_ok() && back == bytes
}

fn wait_logged(server: &Server, needle: &str) {
    let start = Instant::now();
    while !server.logged(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no {needle:?} in the log: {}",
            server.log_text()
        );
        sleep(Duration::from_millis(50));
    }
}

fn count_logged(server: &Server, needle: &str) -> usize {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The secret in a `tg://proxy` link printed by `generate-secret`.
fn secret_of_link(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("tg://proxy?"))
        .unwrap();
    line.split("secret=").nth(1).unwrap().to_owned()
}

#[test]
fn generated_and_imported_secrets_are_sensitive_and_not_extractable() {
    let hsm = SoftHsm::new("gen");
    let config = hsm.config("mtguard.toml", &hsm.table(), "");
    let cfg = config.to_str().unwrap();

    let out = hsm.mtguard(&["hsm", "--config", cfg, "status"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.contains("token: \"gen\""), "{status}");
    assert!(
        status.contains("SHA256_HMAC (fake-TLS): available"),
        "{status}"
    );

    let out = hsm.mtguard(
        &[
            "hsm",
            "--config",
            cfg,
            "generate-secret",
            "--label",
            "front",
            "--domain",
            "www.example.com",
            "--server",
            "proxy.example",
            "--port",
            "443",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let secret = Secret::parse(&secret_of_link(&stdout)).unwrap();
    assert_eq!(secret.domain(), "www.example.com");
    assert!(stdout.contains("https://t.me/proxy?server=proxy.example&port=443&secret=ee"));

    let imported = format!("dd{CLASSIC}");
    let out = hsm.mtguard(
        &["hsm", "--config", cfg, "import-secret", "--label", "old"],
        Some(&format!("{imported}\n")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The same label twice is refused, naming it.
    let out = hsm.mtguard(
        &["hsm", "--config", cfg, "import-secret", "--label", "old"],
        Some(&imported),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already has a key labelled \"old\""));

    let out = hsm.mtguard(&["hsm", "--config", cfg, "list"], None);
    let list = text(&out.stdout);
    assert!(
        list.contains("front\tee www.example.com\tsensitive=true\textractable=false"),
        "{list}"
    );
    assert!(
        list.contains("old\tdd\tsensitive=true\textractable=false"),
        "{list}"
    );

    // OpenSC's view, independent of cryptoki: both keys are sensitive and
    // not extractable, and their value cannot be read.
    let out = hsm.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = text(&out.stdout);
    for label in ["front", "old"] {
        let block = objects
            .split("Secret Key Object")
            .find(|b| b.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("{label} not listed: {objects}"));
        let access = block.lines().find(|l| l.contains("Access:")).unwrap();
        assert!(access.contains("sensitive"), "{access}");
        // pkcs11-tool prints "extractable" for an extractable key.
        assert!(!access.contains(" extractable"), "{access}");
    }
    assert!(
        objects.contains("Generic secret length 32"),
        "ee: key || 16 zeros"
    );
    assert!(
        objects.contains("Generic secret length 16"),
        "dd: the key itself"
    );
    let out = hsm.pkcs11_tool(&["--read-object", "--type", "secrkey", "--label", "front"]);
    assert!(!out.status.success(), "the value was readable: {out:?}");
}

/// The software path and the token give the same verdict on every test
/// vector, and the same digests.
#[test]
fn token_verdicts_equal_software_verdicts_on_every_vector() {
    let hsm = SoftHsm::new("vectors");
    // SoftHSM2 reads its configuration from the environment of the
    // process; this is the only test that opens a token in-process.
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    let token = Token::open(&HsmConfig {
        module: MODULE.into(),
        token: "vectors".into(),
        pin: PinSource::File(hsm.path("pin")),
        integrity_key: "integrity".into(),
    })
    .unwrap();

    struct Vector {
        name: String,
        secret: String,
        now: u64,
        expected: String,
        bytes: Vec<u8>,
    }
    let mut vectors = Vec::new();
    for (file, with_time) in [(OBFS2_VECTORS, false), (FAKE_TLS_VECTORS, true)] {
        for line in file
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let f: Vec<&str> = line.split(' ').collect();
            let (now, rest) = if with_time {
                (f[2].parse().unwrap(), &f[3..])
            } else {
                (1_800_000_000, &f[2..])
            };
            vectors.push(Vector {
                name: f[0].into(),
                secret: f[1].into(),
                now,
                expected: rest[0].into(),
                bytes: hex(rest[1]),
            });
        }
    }
    assert!(vectors.len() >= 20, "{} vectors", vectors.len());

    let mut labels: Vec<String> = Vec::new();
    for v in &vectors {
        if !labels.contains(&v.secret) {
            labels.push(v.secret.clone());
            let label = format!("v{}", labels.len() - 1);
            token
                .store_secret(&label, &Secret::parse(&v.secret).unwrap())
                .unwrap();
        }
    }

    let judge = |set: &SecretSet, keys: &dyn KeyOps, v: &Vector| {
        let mut replay =
            ReplayCache::new(vec![Entry::EMPTY; 64], [3; 16], TimeWindow::default()).unwrap();
        let mut inspector: Box<Inspector> = Box::default();
        inspector.feed(&v.bytes, v.now, set, keys, &mut replay)
    };
    let mut valid = 0;
    for v in &vectors {
        let index = labels.iter().position(|s| *s == v.secret).unwrap();
        let label = format!("v{index}");
        let mut software = SecretSet::new();
        software.push(Secret::parse(&v.secret).unwrap()).unwrap();
        let (set, keys) =
            Keys::with_token(&[], std::slice::from_ref(&label), Some(token.clone())).unwrap();
        assert!(keys.uses_token());
        assert_eq!(set.as_slice()[0].kind(), software.as_slice()[0].kind());
        assert_eq!(set.as_slice()[0].domain(), software.as_slice()[0].domain());

        let by_software = judge(&software, &software, v);
        let by_token = judge(&set, &keys, v);
        assert_eq!(by_token, by_software, "{}", v.name);
        assert_ne!(by_token, Verdict::NeedMore, "{}", v.name);
        let is_valid = matches!(by_token, Verdict::Valid(_));
        assert_eq!(
            is_valid,
            !v.expected.starts_with(char::is_uppercase),
            "{}: {}",
            v.name,
            v.expected
        );
        valid += usize::from(is_valid);

        // The raw operations agree too, on this vector's bytes.
        if software.has_fake_tls() {
            let parts: [&[u8]; 2] = [
                &v.bytes[..v.bytes.len().min(11)],
                &v.bytes[11.min(v.bytes.len())..],
            ];
            assert_eq!(
                keys.fake_tls_hmac(0, &parts).unwrap(),
                software.fake_tls_hmac(0, &parts).unwrap(),
                "{}",
                v.name
            );
        } else if v.bytes.len() >= 40 {
            let part: [u8; 32] = v.bytes[8..40].try_into().unwrap();
            assert_eq!(
                keys.obfs2_key(0, &part).unwrap(),
                software.obfs2_key(0, &part).unwrap(),
                "{}: C_DigestKey gives SHA-256(header part || secret)",
                v.name
            );
        }
    }
    assert!(valid >= 5, "{valid} valid vectors");

    // A label the token does not hold: the key is unavailable, not guessed.
    let err = Keys::with_token(&[], &["missing".into()], Some(token.clone())).unwrap_err();
    assert!(
        err.to_string()
            .contains("no mtguard secret labelled \"missing\""),
        "{err}"
    );

    // Many threads at once share the pool of sessions (more threads than
    // sessions): every answer is still the software one.
    let (set, keys) = Keys::with_token(&[], &["v0".into()], Some(token.clone())).unwrap();
    let mut software = SecretSet::new();
    software.push(Secret::parse(&labels[0]).unwrap()).unwrap();
    let keys = std::sync::Arc::new(keys);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let keys = keys.clone();
            let software = software.clone();
            let is_ee = set.has_fake_tls();
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    let data = [t, i, 7, 7, 7];
                    let part = [t ^ i; 32];
                    if is_ee {
                        let parts: [&[u8]; 1] = [&data];
                        assert_eq!(
                            keys.fake_tls_hmac(0, &parts).unwrap(),
                            software.fake_tls_hmac(0, &parts).unwrap()
                        );
                    } else {
                        assert_eq!(
                            keys.obfs2_key(0, &part).unwrap(),
                            software.obfs2_key(0, &part).unwrap()
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Seals made with the token's integrity key open only unchanged.
    let sealer = Sealer::Token(token.clone());
    let sealed = sealer.seal(Purpose::Pins, b"pins payload").unwrap();
    assert_eq!(
        sealer.open(Purpose::Pins, &sealed).unwrap(),
        b"pins payload"
    );
    let mut bad = sealed.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(sealer.open(Purpose::Pins, &bad).is_err());
    assert!(sealer.open(Purpose::State, &sealed).is_err());
}

/// A guard listening with one secret in the token and one inline.
struct Guarded {
    hsm: SoftHsm,
    server: Server,
    listen: SocketAddr,
    /// The admin API, for `/metrics` (no token needed).
    admin: SocketAddr,
    secret: String,
    _backend: EchoBackend,
}

impl Guarded {
    /// Waits until the metrics report the token `up` (1) or down (0): the
    /// monitor probes it every second, apart from the handshakes that log.
    fn wait_token_up(&self, up: u64) {
        let start = Instant::now();
        loop {
            let (status, m) =
                mtguard_tests::http_request(self.admin, "GET", "/metrics", None, None).unwrap();
            assert_eq!(status, 200, "{m}");
            if m.lines().any(|l| l == format!("mtguard_hsm_token_up {up}")) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mtguard_hsm_token_up never {up}:\n{m}"
            );
            sleep(Duration::from_millis(50));
        }
    }
}

fn guarded(label: &str) -> Guarded {
    let hsm = SoftHsm::new(label);
    let config = hsm.config("keys.toml", &hsm.table(), "");
    let out = hsm.mtguard(
        &[
            "hsm",
            "--config",
            config.to_str().unwrap(),
            "generate-secret",
            "--label",
            "front",
            "--domain",
            "www.example.com",
            "--server",
            "127.0.0.1",
            "--port",
            "443",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = secret_of_link(&text(&out.stdout));

    let backend = EchoBackend::start();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = hsm.config(
        "mtguard.toml",
        &hsm.table(),
        &format!(
            "[server]\nlisten = [\"{listen}\"]\nbackend = \"{}\"\n\
             [admin]\nlisten = \"{admin}\"\n\
             [state]\ndir = \"{}\"\n\
             [limits]\nscanner_failures = 2\n\
             [mtproto]\nsecrets = [\"hsm:front\", \"{CLASSIC}\"]\n",
            backend.addr,
            hsm.path("state").display()
        ),
    );
    let server = Server::start_with_env(
        &["--config", config.to_str().unwrap()],
        &hsm.env(),
        "guarding",
    )
    .unwrap();
    assert!(server.logged("HSM token open"));
    let start = Instant::now();
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "admin API not up"
        );
        sleep(Duration::from_millis(10));
    }
    Guarded {
        hsm,
        server,
        listen,
        admin,
        secret,
        _backend: backend,
    }
}

fn obfs2_headers() -> Vec<Vec<u8>> {
    OBFS2_VECTORS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 4 && f[1] == CLASSIC && !f[2].starts_with(char::is_uppercase))
                .then(|| hex(f[3]))
        })
        .collect()
}

#[test]
fn a_fake_tls_client_is_validated_through_the_token_end_to_end() {
    let g = guarded("e2e");
    let now = now_unix();
    assert!(served_with(
        g.listen,
        1,
        &client_hello(&g.secret, "www.example.com", now)
    ));
    // The same hello again is a replay; another key's hello is refused.
    assert!(!served_with(
        g.listen,
        2,
        &client_hello(&g.secret, "www.example.com", now)
    ));
    let other = "ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d";
    for ts in 1..=3 {
        assert!(!served_with(
            g.listen,
            3,
            &client_hello(other, "www.example.com", now - ts)
        ));
    }
    // A wrong key, unlike a token that does not answer, counts against the
    // address ([limits] scanner_failures = 2): even a valid hello from it
    // is refused now.
    assert!(!served_with(
        g.listen,
        3,
        &client_hello(&g.secret, "www.example.com", now - 4)
    ));
    // The inline secret works alongside.
    assert!(served_with(g.listen, 4, &obfs2_headers()[0]));
    // A reload looks the hsm: label up again in the open token.
    g.server.signal("HUP");
    wait_logged(&g.server, "configuration reloaded");
    assert!(served_with(
        g.listen,
        5,
        &client_hello(&g.secret, "www.example.com", now - 5)
    ));
    assert!(!g.server.log_text().contains(PIN), "the PIN was logged");
    assert!(g.server.stop().success());
}

#[test]
fn a_token_taken_away_fails_closed_for_its_handshakes_and_comes_back() {
    let g = guarded("away");
    let headers = obfs2_headers();
    assert!(headers.len() >= 2);
    let mut ts = now_unix();
    let mut hello = || {
        ts -= 1;
        client_hello(&g.secret, "www.example.com", ts)
    };
    assert!(served_with(g.listen, 10, &hello()));
    g.wait_token_up(1);

    // Take the token away: its directory leaves SoftHSM2's token directory.
    let token_dir = g.hsm.token_dir();
    let away = g.hsm.path("away");
    std::fs::rename(&token_dir, &away).unwrap();
    wait_logged(&g.server, "HSM token unavailable");
    g.wait_token_up(0);
    // Refused, but not held against the address: a client whose key the
    // token cannot check now is no scanner ([limits] scanner_failures = 2).
    for _ in 0..3 {
        assert!(
            !served_with(g.listen, 11, &hello()),
            "a token handshake was let through"
        );
    }
    // The inline secret's handshakes do not need the token.
    assert!(served_with(g.listen, 12, &headers[0]));
    // Several failed attempts later, still one log line for the change.
    sleep(Duration::from_millis(1500));
    assert_eq!(
        count_logged(&g.server, "HSM token unavailable"),
        1,
        "{}",
        g.server.log_text()
    );

    // Bring it back: the guard notices by itself.
    std::fs::rename(&away, &token_dir).unwrap();
    wait_logged(&g.server, "HSM token is back");
    g.wait_token_up(1);
    assert!(
        served_with(g.listen, 11, &hello()),
        "the address was blocked"
    );
    assert!(served_with(g.listen, 15, &headers[1]));
    assert_eq!(count_logged(&g.server, "HSM token unavailable"), 1);
    assert_eq!(count_logged(&g.server, "HSM token is back"), 1);
    assert!(g.server.stop().success());
}

/// `mtguard hsm status` and `mtguard run` with a broken `[hsm]` table: the
/// error names what is wrong and the exit status is not zero.
#[test]
fn wrong_pin_missing_module_and_unknown_token_are_named() {
    let hsm = SoftHsm::new("errs");
    std::fs::write(hsm.path("wrong-pin"), "0000\n").unwrap();
    let cases = [
        (
            hsm.table().replace("/pin\"", "/wrong-pin\""),
            "the user PIN was refused (wrong PIN)".to_owned(),
        ),
        (
            hsm.table().replace(MODULE, "/nonexistent/libpkcs11.so"),
            "the PKCS#11 module /nonexistent/libpkcs11.so does not exist".to_owned(),
        ),
        (
            hsm.table().replace("token = \"errs\"", "token = \"nope\""),
            "no token labelled \"nope\"".to_owned(),
        ),
        (
            hsm.table().replace(
                &format!("pin_file = \"{}\"", hsm.path("pin").display()),
                "pin_env = \"MTGUARD_TEST_UNSET_PIN\"",
            ),
            "MTGUARD_TEST_UNSET_PIN is not set".to_owned(),
        ),
    ];
    for (i, (table, expected)) in cases.iter().enumerate() {
        let config = hsm.config(
            &format!("bad{i}.toml"),
            table,
            &format!("[admin]\nlisten = \"off\"\n[state]\ndir = \"{}\"\n[server]\nlisten = [\"127.0.0.1:{}\"]\n", hsm.path("state").display(), free_port()),
        );
        let cfg = config.to_str().unwrap();
        for args in [
            vec!["hsm", "--config", cfg, "status"],
            vec!["run", "--config", cfg],
        ] {
            let out = hsm.mtguard(&args, None);
            let err = text(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(
                err.contains(expected.as_str()),
                "{args:?}: expected {expected:?} in {err}"
            );
            assert!(!err.contains(PIN));
        }
    }
    // The PIN from an environment variable works.
    let table = hsm.table().replace(
        &format!("pin_file = \"{}\"", hsm.path("pin").display()),
        "pin_env = \"MTGUARD_TEST_PIN\"",
    );
    let config = hsm.config("env.toml", &table, "");
    let out = Command::new(mtguard_bin())
        .args(["hsm", "--config", config.to_str().unwrap(), "status"])
        .env("SOFTHSM2_CONF", hsm.conf())
        .env("MTGUARD_TEST_PIN", PIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A config naming hsm: secrets without [hsm] is refused at its line.
    let config = hsm.path("no-hsm.toml");
    std::fs::write(&config, "[mtproto]\nsecrets = [\"hsm:front\"]\n").unwrap();
    let out = Command::new(mtguard_bin())
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(":2: [mtproto] secrets[0]") && err.contains("needs an [hsm] table"),
        "{err}"
    );
}

#[test]
fn a_tampered_state_file_is_refused_at_start() {
    let hsm = SoftHsm::new("seal");
    let state = hsm.path("state");
    let listen = free_port();
    let config = hsm.config(
        "mtguard.toml",
        &hsm.table(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{listen}\"]\n[admin]\nlisten = \"off\"\n[state]\ndir = \"{}\"\n",
            state.display()
        ),
    );
    let cfg = config.to_str().unwrap();
    let start = || Server::start_with_env(&["--config", cfg], &hsm.env(), "guarding");
    let server = start().unwrap();
    assert!(server.stop().success());
    let file = state.join("state.bin");
    let sealed = std::fs::read(&file).unwrap();
    assert!(sealed.starts_with(b"MTGSEAL1"), "state file not sealed");

    // Unchanged, it is accepted.
    let server = start().unwrap();
    assert!(server.logged("state restored"), "{}", server.log_text());
    assert!(server.stop().success());
    let sealed = std::fs::read(&file).unwrap();

    // One bit changed anywhere in the payload: refused, with the reason.
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 0x01;
    std::fs::write(&file, &tampered).unwrap();
    let err = start().err().expect("the guard started");
    assert!(err.contains("integrity seal does not match"), "{err}");
    assert!(err.contains("--reset-state"), "{err}");

    // The seal stripped off: refused too.
    std::fs::write(&file, &sealed[41..]).unwrap();
    let err = start().err().expect("the guard started");
    assert!(err.contains("carries no integrity seal"), "{err}");

    // --reset-state moves it aside and starts clean.
    let server =
        Server::start_with_env(&["--config", cfg, "--reset-state"], &hsm.env(), "guarding")
            .unwrap();
    assert!(server.logged("moved aside"));
    assert!(server.stop().success());
}

/// With `[hsm]`, the pins file is trusted only under the token's seal: a
/// hand-written one is refused until `hsm seal-pins` vouches for it, and a
/// sealed one changed afterwards is refused again.
#[test]
fn a_pins_file_must_carry_the_token_seal() {
    let hsm = SoftHsm::new("pins");
    let state = hsm.path("state");
    let pins = hsm.path("backend.pins");
    let pin = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    std::fs::write(&pins, format!("{pin} # backend key\n")).unwrap();
    let listen = free_port();
    let config = hsm.config(
        "mtguard.toml",
        &hsm.table(),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{listen}\"]\nbackend = \"127.0.0.1:9\"\n\
             [server.backend_tls]\nserver_name = \"backend.test\"\npins_file = \"{}\"\n\
             [admin]\nlisten = \"off\"\n[state]\ndir = \"{}\"\n",
            pins.display(),
            state.display()
        ),
    );
    let cfg = config.to_str().unwrap();
    let start = || Server::start_with_env(&["--config", cfg], &hsm.env(), "guarding");

    let err = start().err().expect("started on an unsealed pins file");
    assert!(err.contains("carries no integrity seal"), "{err}");
    assert!(err.contains("seal-pins"), "{err}");

    let out = hsm.mtguard(
        &["hsm", "--config", cfg, "seal-pins", pins.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sealed = std::fs::read(&pins).unwrap();
    assert!(sealed.starts_with(b"MTGSEAL1"), "pins file not sealed");
    assert!(text(&sealed).contains(pin), "the pin was lost in sealing");

    let server = start().unwrap();
    assert!(server.stop().success());

    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 0x01;
    std::fs::write(&pins, &tampered).unwrap();
    let err = start().err().expect("started on a tampered pins file");
    assert!(err.contains("integrity seal does not match"), "{err}");
}

/// `[hsm]` keys parse as documented; mistakes name the key and the line.
#[test]
fn hsm_config_keys_and_errors() {
    use mtguard::config::Config;
    let c = Config::parse(
        "[hsm]\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"PIN\"\n\
         [mtproto]\nsecrets = [\"hsm:a\", \"0123456789abcdef0123456789abcdef\", \"hsm:b\"]\n",
        "m.toml",
    )
    .unwrap();
    let hsm = c.hsm.as_ref().unwrap();
    assert_eq!(hsm.module, PathBuf::from("/m.so"));
    assert_eq!(hsm.token, "t");
    assert_eq!(hsm.pin, PinSource::Env("PIN".into()));
    assert_eq!(hsm.integrity_key, "mtguard-integrity");
    assert_eq!(c.mtproto.hsm_secrets, ["a", "b"]);
    assert_eq!(c.mtproto.secrets.len(), 1);
    assert!(c.mtproto.inspecting());
    let described = c.describe(&c.effective_policy(None).unwrap());
    assert!(described.contains("3 (2 in the token)"), "{described}");
    assert!(
        described.contains("environment variable PIN"),
        "{described}"
    );

    let err = |text: &str| Config::parse(text, "m.toml").unwrap_err().to_string();
    let cases = [
        (
            "[hsm]\ntoken = \"t\"\npin_file = \"p\"\n",
            "m.toml:1: [hsm] module: missing",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\npin_file = \"p\"\n",
            "m.toml:1: [hsm] token: missing",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\ntoken = \"t\"\n",
            "m.toml:1: [hsm] pin_file: missing",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\ntoken = \"t\"\npin_file = \"p\"\npin_env = \"X\"\n",
            "m.toml:5: [hsm] pin_env: give pin_file or pin_env, not both",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\ntoken = \"\"\npin_file = \"p\"\n",
            "m.toml:3: [hsm] token: label \"\" must be 1 to 32 bytes",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"1234\"\n",
            "m.toml:4: [hsm]: unknown key `pin`",
        ),
        (
            "[hsm]\nmodule = \"/m.so\"\ntoken = \"t\"\npin_file = \"p\"\n\
             [mtproto]\nsecrets = [\"hsm:a\", \"hsm:a\"]\n",
            "m.toml:6: [mtproto] secrets[1]: hsm:a is listed twice",
        ),
        (
            "[mtproto]\nsecrets = [\"hsm:\"]\n",
            "m.toml:2: [mtproto] secrets[0]: label \"\" must be 1 to 32 bytes",
        ),
    ];
    for (text, expected) in cases {
        let e = err(text);
        assert!(e.starts_with(expected), "{text:?}: {e}");
    }
}
