//! Certificate pinning against real TLS peers: `openssl s_server` serving
//! files (`-WWW`) for `mtguard fetch`, and echoing (`-rev`) as the backend
//! of `[server.backend_tls]`; certificates from rcgen (CA, intermediate,
//! leaf) and from the openssl command line.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mtguard_core::pins::presented_pins;
use mtguard_tests::{
    free_port, mtguard_bin, openssl_self_signed, openssl_spki_pin, OpensslServer as SServer, Server,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA, an intermediate it signed, and a leaf for 127.0.0.1 the
/// intermediate signed, as files in a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: Vec<u8>,
    inter_der: Vec<u8>,
    leaf_der: Vec<u8>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    params.subject_alt_names = vec![
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    params
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let ca_p = ca_params(ca_name);
        let ca = ca_p.self_signed(&ca_key).unwrap();
        let ca_issuer = Issuer::from_params(&ca_p, &ca_key);
        let inter_key = KeyPair::generate().unwrap();
        let inter_p = ca_params(&format!("{ca_name} intermediate"));
        let inter = inter_p.signed_by(&inter_key, &ca_issuer).unwrap();
        let inter_issuer = Issuer::from_params(&inter_p, &inter_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params().signed_by(&leaf_key, &inter_issuer).unwrap();
        let p = dir.path();
        fs::write(p.join("ca.pem"), ca.pem()).unwrap();
        fs::write(p.join("inter.pem"), inter.pem()).unwrap();
        fs::write(p.join("leaf.pem"), leaf.pem()).unwrap();
        fs::write(p.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
        Pki {
            ca_der: ca.der().to_vec(),
            inter_der: inter.der().to_vec(),
            leaf_der: leaf.der().to_vec(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn spki(der: &[u8]) -> String {
    presented_pins(der).unwrap().0.to_string()
}

fn cert_hash(der: &[u8]) -> String {
    presented_pins(der).unwrap().1.to_string()
}

/// A pin nobody presents.
const WRONG_PIN: &str = "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Serves the files of `pki`'s directory over HTTPS with its leaf (and
/// the intermediate as the chain).
fn www(pki: &Pki) -> SServer {
    SServer::start(
        pki.dir.path(),
        &[
            "-cert",
            "leaf.pem",
            "-key",
            "leaf.key",
            "-cert_chain",
            "inter.pem",
            "-WWW",
        ],
    )
}

const PROXY_CONFIG: &str = "# force_probability 10 10\ndefault 2;\n\
    proxy_for 1 149.154.175.50:8888;\nproxy_for -1 149.154.175.50:8888;\n\
    proxy_for 2 149.154.162.38:80;\n";

fn mtguard(args: &[&str]) -> Output {
    Command::new(mtguard_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `mtguard fetch URL --out OUT` with `extra` arguments.
fn fetch(url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["fetch", url, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    mtguard(&args)
}

/// A served config file and an output file holding older content.
fn served_config(pki: &Pki) -> (PathBuf, &'static [u8]) {
    fs::write(pki.path("proxy-multi.conf"), PROXY_CONFIG).unwrap();
    let out = pki.path("out-multi.conf");
    let old: &[u8] = b"# the previous config\nproxy_for 1 10.0.0.1:8888;\n";
    fs::write(&out, old).unwrap();
    (out, old)
}

#[test]
fn fetch_matches_on_leaf_intermediate_or_certificate_hash() {
    let pki = Pki::new("Test CA");
    let server = www(&pki);
    let (out, _) = served_config(&pki);
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    for pin in [
        spki(&pki.leaf_der),
        spki(&pki.inter_der),
        cert_hash(&pki.leaf_der),
        cert_hash(&pki.inter_der),
    ] {
        fs::write(&out, b"old").unwrap();
        let r = fetch(
            &server.url("proxy-multi.conf"),
            &out,
            &["--ca", ca, "--pin", WRONG_PIN, "--pin", &pin],
        );
        assert!(r.status.success(), "pin {pin}: {}", text(&r));
        assert_eq!(fs::read_to_string(&out).unwrap(), PROXY_CONFIG, "pin {pin}");
    }
    // The root is not on the wire (s_server sends leaf and intermediate):
    // a pin on it matches nothing presented and is refused.
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", ca, "--pin", &spki(&pki.ca_der)],
    );
    assert!(!r.status.success(), "{}", text(&r));
}

#[test]
fn wrong_pin_on_a_ca_valid_peer_is_refused_and_leaves_the_file_intact() {
    let pki = Pki::new("Test CA");
    let server = www(&pki);
    let (out, old) = served_config(&pki);
    let ca = pki.path("ca.pem");
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", ca.to_str().unwrap(), "--pin", WRONG_PIN],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(
        fs::read(&out).unwrap(),
        old,
        "the old file must stay byte for byte"
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("127.0.0.1"), "names the host: {stderr}");
    assert!(stderr.contains("matches no pin"), "{stderr}");
    assert!(
        stderr.contains(&spki(&pki.leaf_der)) && stderr.contains(&spki(&pki.inter_der)),
        "names the presented pins: {stderr}"
    );
    // No temporary file left behind either.
    let names: Vec<_> = fs::read_dir(pki.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
}

#[test]
fn the_right_pin_does_not_replace_ca_validation() {
    // Pinned leaf, but the private CA is not trusted (built-in roots only):
    // WebPKI fails first.
    let pki = Pki::new("Test CA");
    let server = www(&pki);
    let (out, old) = served_config(&pki);
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--pin", &spki(&pki.leaf_der)],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("UnknownIssuer"),
        "{}",
        text(&r)
    );
    assert_eq!(fs::read(&out).unwrap(), old);
}

#[test]
fn an_appended_pinned_intermediate_does_not_rescue_another_chain() {
    // The attacker holds a CA-valid certificate for the name from another
    // CA, and appends the victim's (public) pinned intermediate.
    let victim = Pki::new("Victim CA");
    let attacker = Pki::new("Attacker CA");
    let mut chain = fs::read_to_string(attacker.path("inter.pem")).unwrap();
    chain.push_str(&fs::read_to_string(victim.path("inter.pem")).unwrap());
    fs::write(attacker.path("inter.pem"), chain).unwrap();
    let server = www(&attacker);
    let (out, old) = served_config(&attacker);
    let cas = attacker.path("both-cas.pem");
    let mut both = fs::read_to_string(victim.path("ca.pem")).unwrap();
    both.push_str(&fs::read_to_string(attacker.path("ca.pem")).unwrap());
    fs::write(&cas, both).unwrap();
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &[
            "--ca",
            cas.to_str().unwrap(),
            "--pin",
            &spki(&victim.inter_der),
        ],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), old);
    // The same server passes when its own intermediate is pinned.
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &[
            "--ca",
            cas.to_str().unwrap(),
            "--pin",
            &spki(&attacker.inter_der),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
}

#[test]
fn an_expired_pin_fails_closed_or_falls_back_when_asked() {
    let pki = Pki::new("Test CA");
    let server = www(&pki);
    let (out, old) = served_config(&pki);
    let ca = pki.path("ca.pem");
    let expired = format!("{} expires=2020-01-01", spki(&pki.leaf_der));
    let args = ["--ca", ca.to_str().unwrap(), "--pin", expired.as_str()];
    let r = fetch(&server.url("proxy-multi.conf"), &out, &args);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("expired"),
        "{}",
        text(&r)
    );
    assert_eq!(fs::read(&out).unwrap(), old);

    let mut fallback = args.to_vec();
    fallback.extend(["--on-expired", "webpki"]);
    let r = fetch(&server.url("proxy-multi.conf"), &out, &fallback);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("NO UNEXPIRED PIN"),
        "the fallback is loud: {}",
        text(&r)
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), PROXY_CONFIG);

    // An unexpired pin next to the expired one still counts.
    let current = format!("{} expires=2999-01-01", spki(&pki.leaf_der));
    fs::write(&out, old).unwrap();
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", ca.to_str().unwrap(), "--pin", &current],
    );
    assert!(r.status.success(), "{}", text(&r));
}

#[test]
fn mtguard_pin_prints_what_openssl_computes() {
    let dir = tempfile::tempdir().unwrap();
    let pem = openssl_self_signed(dir.path());
    let expected_spki = openssl_spki_pin(&pem);
    let der = dir.path().join("self.der");
    let status = Command::new("openssl")
        .args([
            "x509", "-in", "self.pem", "-outform", "der", "-out", "self.der",
        ])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let expected_cert = format!(
        "cert-sha256/{}",
        String::from_utf8(
            Command::new("sh")
                .args(["-c", "openssl dgst -sha256 -r self.der | cut -d' ' -f1"])
                .current_dir(dir.path())
                .output()
                .unwrap()
                .stdout
        )
        .unwrap()
        .trim()
    );
    for file in [&pem, &der] {
        let r = mtguard(&["pin", file.to_str().unwrap()]);
        assert!(r.status.success(), "{}", text(&r));
        let lines: Vec<String> = String::from_utf8(r.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        assert_eq!(lines, [expected_spki.clone(), expected_cert.clone()]);
    }
    // A chain file: every certificate, leaf first.
    let pki = Pki::new("Test CA");
    let chain = pki.path("chain.pem");
    let mut both = fs::read_to_string(pki.path("leaf.pem")).unwrap();
    both.push_str(&fs::read_to_string(pki.path("inter.pem")).unwrap());
    fs::write(&chain, both).unwrap();
    let r = mtguard(&["pin", chain.to_str().unwrap()]);
    let out = String::from_utf8(r.stdout).unwrap();
    for pin in [
        spki(&pki.leaf_der),
        cert_hash(&pki.leaf_der),
        spki(&pki.inter_der),
        cert_hash(&pki.inter_der),
    ] {
        assert!(out.contains(&pin), "{pin} in {out}");
    }
    assert_eq!(openssl_spki_pin(&pki.path("leaf.pem")), spki(&pki.leaf_der));
    let r = mtguard(&["pin", pki.path("leaf.key").to_str().unwrap()]);
    assert!(!r.status.success(), "a key file is not a certificate");
}

#[test]
fn pins_only_accepts_a_self_signed_peer_on_its_leaf_pin_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cert = openssl_self_signed(dir.path());
    let secret: Vec<u8> = (0..128u32).map(|i| (i * 151 % 256) as u8).collect();
    fs::write(dir.path().join("proxy-secret"), &secret).unwrap();
    let server = SServer::start(
        dir.path(),
        &["-cert", "self.pem", "-key", "self.key", "-WWW"],
    );
    let out = dir.path().join("out-secret");
    let pin = openssl_spki_pin(&cert);
    let r = fetch(
        &server.url("proxy-secret"),
        &out,
        &["--pins-only", "--pin", &pin],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), secret);

    // Without --pins-only the self-signed peer fails WebPKI.
    fs::write(&out, b"old").unwrap();
    let r = fetch(&server.url("proxy-secret"), &out, &["--pin", &pin]);
    assert!(!r.status.success(), "{}", text(&r));
    // And pins-only with a wrong pin is refused.
    let r = fetch(
        &server.url("proxy-secret"),
        &out,
        &["--pins-only", "--pin", WRONG_PIN],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), b"old");
}

#[test]
fn pins_only_counts_the_leaf_not_an_intermediate_anyone_can_append() {
    let pki = Pki::new("Test CA");
    let server = www(&pki);
    let (out, old) = served_config(&pki);
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--pins-only", "--pin", &spki(&pki.inter_der)],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), old);
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--pins-only", "--pin", &cert_hash(&pki.leaf_der)],
    );
    assert!(r.status.success(), "{}", text(&r));
}

#[test]
fn garbage_content_is_never_written() {
    let pki = Pki::new("Test CA");
    fs::write(
        pki.path("error.html"),
        "<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    )
    .unwrap();
    fs::write(pki.path("short-secret"), [0x01u8, 0x02, 0x03]).unwrap();
    let server = www(&pki);
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let pin = spki(&pki.leaf_der);
    let old = b"previous bytes\x00\x01".to_vec();
    for (file, kind) in [
        ("error.html", "config"),
        ("error.html", "secret"),
        ("short-secret", "secret"),
        ("missing-file", "config"),
    ] {
        let out = pki.path("out");
        fs::write(&out, &old).unwrap();
        let r = fetch(
            &server.url(file),
            &out,
            &["--ca", ca, "--pin", &pin, "--kind", kind],
        );
        assert!(!r.status.success(), "{file} as {kind}: {}", text(&r));
        assert_eq!(fs::read(&out).unwrap(), old, "{file} as {kind}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("127.0.0.1"),
            "{}",
            text(&r)
        );
    }
}

/// Reads until `n` bytes came or the peer closed.
fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    buf.truncate(got);
    buf
}

/// Sends a line through the guard at `listen`; what came back.
fn through_guard(listen: SocketAddr) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(listen) else {
        return Vec::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(b"hello pinned world\n").is_err() {
        return Vec::new();
    }
    read_n(&mut stream, 19)
}

/// A guard process in front of an `openssl s_server -rev` backend (it
/// answers each line reversed) over `[server.backend_tls]`.
struct BackendSetup {
    pki: Pki,
    backend: SServer,
    listen: SocketAddr,
    admin: SocketAddr,
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl BackendSetup {
    fn new() -> BackendSetup {
        let pki = Pki::new("Backend CA");
        let backend = SServer::start(
            pki.dir.path(),
            &[
                "-cert",
                "leaf.pem",
                "-key",
                "leaf.key",
                "-cert_chain",
                "inter.pem",
                "-rev",
            ],
        );
        let token = pki.path("admin.token");
        fs::write(&token, TOKEN).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
        BackendSetup {
            pki,
            backend,
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// Writes the config at `level` with `pins` in `[server.backend_tls]`
    /// and a pins file, and starts the guard.
    fn start(&self, level: u8, pins: &[String]) -> Result<Server, String> {
        self.start_trusting(level, pins, "ca_file = \"ca.pem\"")
    }

    /// [`BackendSetup::start`] with `trust` as the trust lines of
    /// `[server.backend_tls]`.
    fn start_trusting(&self, level: u8, pins: &[String], trust: &str) -> Result<Server, String> {
        let quoted: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            "level = {level}\n\
             [server]\nlisten = [\"{}\"]\nbackend = \"127.0.0.1:{}\"\n\
             [server.backend_tls]\nserver_name = \"localhost\"\n{trust}\n\
             pins = [{}]\npins_file = \"backend.pins\"\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"admin.token\"\n\
             [state]\ndir = \"state\"\n",
            self.listen,
            self.backend.port,
            quoted.join(", "),
            self.admin,
        );
        let config = self.pki.path("mtguard.toml");
        fs::write(&config, text).unwrap();
        if !self.pki.path("backend.pins").exists() {
            fs::write(self.pki.path("backend.pins"), "# empty\n").unwrap();
        }
        Server::start(&["--config", config.to_str().unwrap()], "guarding")
    }

    /// One request to the admin API; status and body.
    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.admin("GET", "/metrics", "");
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    }
}

const REVERSED: &[u8] = b"dlrow dennip olleh\n";

/// Percent-encodes a pin for the admin API's path.
fn encoded(pin: &str) -> String {
    pin.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
}

#[test]
fn backend_tls_end_to_end_and_pin_rotation_without_restart() {
    let b = BackendSetup::new();
    let leaf = spki(&b.pki.leaf_der);
    let server = b.start(1, &[WRONG_PIN.to_owned()]).unwrap();
    // Wrong pin: the backend is never reached with client bytes.
    assert_eq!(through_guard(b.listen), b"", "{}", server.log_text());
    // The log reaches us through a pipe and a reader thread: wait for it.
    wait_logged(&server, "matches no pin");
    wait_logged(&server, &leaf);
    assert!(b.metric("mtguard_pin_failures_total") >= 1);
    assert!(b.metric("mtguard_backend_connect_failures_total{kind=\"tls\"}") >= 1);

    // Rotation: the right pin through the admin API applies to the next
    // connection, no restart.
    let (status, body) = b.admin(
        "POST",
        "/v1/pins",
        &format!(r#"{{"pin": "{leaf}", "label": "leaf"}}"#),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(through_guard(b.listen), REVERSED, "{}", server.log_text());
    // The pins file is rewritten with the set in force.
    let file = fs::read_to_string(b.pki.path("backend.pins")).unwrap();
    assert!(file.contains(&format!("{leaf} # leaf")), "{file}");
    assert!(file.contains(WRONG_PIN), "{file}");

    // Removing it cuts the backend off again at once.
    let (status, body) = b.admin("DELETE", &format!("/v1/pins/{}", encoded(&leaf)), "");
    assert_eq!(status, 204, "{body}");
    assert_eq!(through_guard(b.listen), b"");
    assert!(!fs::read_to_string(b.pki.path("backend.pins"))
        .unwrap()
        .contains(&leaf));

    // Added again, then a restart: the pin survives.
    let (status, _) = b.admin("POST", "/v1/pins", &format!(r#"{{"pin": "{leaf}"}}"#));
    assert_eq!(status, 201);
    assert!(server.stop().success());
    let server = b.start(1, &[WRONG_PIN.to_owned()]).unwrap();
    assert_eq!(through_guard(b.listen), REVERSED, "{}", server.log_text());
    let (_, list) = b.admin("GET", "/v1/pins", "");
    assert!(list.contains(&leaf), "{list}");
    assert!(server.stop().success());

    // The 101st pin is refused with a clear error.
    let server = b.start(1, &[WRONG_PIN.to_owned()]).unwrap();
    let have = {
        let (_, list) = b.admin("GET", "/v1/pins", "");
        list.matches("\"pin\"").count()
    };
    for i in have..100 {
        let pin = format!("cert-sha256/{:064x}", i + 1);
        let (status, body) = b.admin("POST", "/v1/pins", &format!(r#"{{"pin": "{pin}"}}"#));
        assert_eq!(status, 201, "pin {i}: {body}");
    }
    let (status, body) = b.admin(
        "POST",
        "/v1/pins",
        &format!(r#"{{"pin": "cert-sha256/{:064x}"}}"#, 999),
    );
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("pin set is full: 100 pins"), "{body}");
    assert_eq!(
        through_guard(b.listen),
        REVERSED,
        "the full set still works"
    );
    drop(server);
}

#[test]
fn backend_tls_matches_on_the_intermediate_and_level_2_wants_a_backup_pin() {
    let b = BackendSetup::new();
    let inter = spki(&b.pki.inter_der);
    let err = match b.start(2, std::slice::from_ref(&inter)) {
        Ok(s) => panic!("started with one pin at level 2: {}", s.log_text()),
        Err(e) => e,
    };
    assert!(err.contains("at least 2 unexpired pins"), "{err}");
    // Two pins, one of them expired, is still one.
    let expired = format!("{WRONG_PIN} expires=2020-01-01");
    let err = match b.start(2, &[inter.clone(), expired]) {
        Ok(s) => panic!("started with one usable pin: {}", s.log_text()),
        Err(e) => e,
    };
    assert!(err.contains("it has 1"), "{err}");
    let server = b.start(2, &[inter, WRONG_PIN.to_owned()]).unwrap();
    assert_eq!(through_guard(b.listen), REVERSED, "{}", server.log_text());
}

fn wait_logged(server: &Server, needle: &str) {
    let start = std::time::Instant::now();
    while !server.logged(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} in the log: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `mtguard run` with a `[refresh]` table fetching from `server`.
fn run_with_refresh(pki: &Pki, server: &SServer, pins: &[String], admin: SocketAddr) -> Server {
    let quoted: Vec<String> = pins.iter().map(|p| format!("{p:?}")).collect();
    let token = pki.path("admin.token");
    fs::write(&token, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\n\
         [refresh]\nconfig_url = \"{}\"\nconfig_out = \"fetched-multi.conf\"\n\
         secret_url = \"{}\"\nsecret_out = \"fetched-secret\"\n\
         ca_file = \"ca.pem\"\npins = [{}]\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\
         [state]\ndir = \"state\"\n",
        free_port(),
        server.url("proxy-multi.conf"),
        server.url("proxy-secret"),
        quoted.join(", "),
    );
    let config = pki.path("refresh.toml");
    fs::write(&config, text).unwrap();
    Server::start(&["--config", config.to_str().unwrap()], "guarding").unwrap()
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {reply}"))
}

#[test]
fn refresh_inside_run_fetches_pinned_and_keeps_old_files_on_a_mismatch() {
    let pki = Pki::new("Test CA");
    fs::write(pki.path("proxy-multi.conf"), PROXY_CONFIG).unwrap();
    let secret: Vec<u8> = (0..128u32).map(|i| (i * 89 % 256) as u8).collect();
    fs::write(pki.path("proxy-secret"), &secret).unwrap();
    let server = www(&pki);

    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let guard = run_with_refresh(&pki, &server, &[spki(&pki.inter_der)], admin);
    wait_logged(&guard, "fetched-secret");
    wait_logged(&guard, "refreshed");
    assert_eq!(
        fs::read_to_string(pki.path("fetched-multi.conf")).unwrap(),
        PROXY_CONFIG
    );
    assert_eq!(fs::read(pki.path("fetched-secret")).unwrap(), secret);
    assert_eq!(metric(admin, "mtguard_pin_failures_total"), 0);
    assert!(guard.stop().success());

    // The files now hold what was fetched; a guard with a wrong pin must
    // leave them alone, and count and log the mismatch.
    fs::write(pki.path("fetched-secret"), b"old secret stays").unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let guard = run_with_refresh(&pki, &server, &[WRONG_PIN.to_owned()], admin);
    wait_logged(&guard, "refresh failed");
    let start = std::time::Instant::now();
    while metric(admin, "mtguard_pin_failures_total") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_logged(&guard, "matches no pin");
    wait_logged(&guard, &spki(&pki.leaf_der));
    assert_eq!(
        fs::read(pki.path("fetched-secret")).unwrap(),
        b"old secret stays"
    );
    assert_eq!(
        fs::read_to_string(pki.path("fetched-multi.conf")).unwrap(),
        PROXY_CONFIG
    );
}

#[test]
fn pinning_config_keys_and_their_errors() {
    use mtguard::config::Config;
    use mtguard::config::{ContentKind, OnExpired, Trust};
    let ok = Config::parse(
        &format!(
            "[server]\nbackend = \"proxy.example.net:443\"\n\
             [server.backend_tls]\npins = [\"{WRONG_PIN} expires=2099-01-01 # main\"]\n\
             [refresh]\nconfig_url = \"https://core.telegram.org/getProxyConfig\"\n\
             config_out = \"/etc/mtproxy/proxy-multi.conf\"\n\
             pins = [\"{WRONG_PIN}\"]\ntrust = \"pins-only\"\ninterval = \"6h\"\n"
        ),
        "t",
    )
    .unwrap();
    let tls = ok.server.backend_tls.as_ref().unwrap();
    assert_eq!(
        tls.server_name, "proxy.example.net",
        "defaults to the backend's host"
    );
    assert_eq!(tls.pinning.trust, Trust::WebPki);
    assert_eq!(tls.pinning.pins.as_slice()[0].label(), "main");
    assert_eq!(tls.pinning.on_expired(1), OnExpired::WebPki);
    assert_eq!(tls.pinning.on_expired(2), OnExpired::FailClosed);
    let refresh = ok.refresh.as_ref().unwrap();
    assert_eq!(refresh.files.len(), 1);
    assert_eq!(refresh.files[0].2, ContentKind::ProxyConfig);
    assert_eq!(refresh.interval, Duration::from_secs(6 * 3600));
    assert_eq!(refresh.jitter, Duration::from_secs(36 * 60));
    assert_eq!(
        refresh.pinning.on_expired(0),
        OnExpired::FailClosed,
        "pins-only"
    );

    let many: Vec<String> = (0..101)
        .map(|i| format!("\"cert-sha256/{i:064x}\""))
        .collect();
    let cases = [
        (
            "[server.backend_tls]\npins = [\"sha256/short\"]\n".to_owned(),
            2,
            "[server.backend_tls] pins[0]",
            "44 base64",
        ),
        (
            "[server.backend_tls]\ntrust = \"pins-only\"\nca_file = \"ca.pem\"\n".to_owned(),
            3,
            "[server.backend_tls] ca_file",
            "checks no CA",
        ),
        (
            "[server.backend_tls]\ntrust = \"pins-only\"\non_expired = \"webpki\"\n".to_owned(),
            3,
            "[server.backend_tls] on_expired",
            "fall back",
        ),
        (
            format!("[server.backend_tls]\npins = [{}]\n", many.join(",\n")),
            102,
            "[server.backend_tls] pins[100]",
            "at most 100",
        ),
        (
            "[refresh]\nconfig_url = \"http://core.telegram.org/getProxyConfig\"\nconfig_out = \"x\"\npins = []\n"
                .to_owned(),
            2,
            "[refresh] config_url",
            "only https://",
        ),
        (
            "[refresh]\n\nsecret_out = \"x\"\n".to_owned(),
            3,
            "[refresh] secret_url",
            "go together",
        ),
    ];
    for (text, line, key, needle) in cases {
        let err = Config::parse(&text, "t").unwrap_err();
        assert_eq!((err.line(), err.key()), (Some(line), Some(key)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = Config::parse(
        "[refresh]\nconfig_url = \"https://h/getProxyConfig\"\nconfig_out = \"x\"\n",
        "t",
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("[refresh] pins"), "{err}");
    let err = Config::parse("[server.backend_tls]\nverify = false\n", "t").unwrap_err();
    assert!(err.to_string().contains("verify"), "{err}");
}

#[test]
fn backend_tls_pins_only_trusts_the_leaf_pin_without_a_ca() {
    let b = BackendSetup::new();
    let pins_only = "trust = \"pins-only\"";
    // The intermediate is presented but proves nothing without a CA check.
    let server = b
        .start_trusting(1, &[spki(&b.pki.inter_der)], pins_only)
        .unwrap();
    assert_eq!(through_guard(b.listen), b"", "{}", server.log_text());
    wait_logged(&server, "checked: the leaf");
    assert!(server.stop().success());
    fs::remove_dir_all(b.pki.path("state")).unwrap();
    fs::remove_file(b.pki.path("backend.pins")).unwrap();
    let server = b
        .start_trusting(1, &[cert_hash(&b.pki.leaf_der)], pins_only)
        .unwrap();
    assert_eq!(through_guard(b.listen), REVERSED, "{}", server.log_text());
}

#[test]
fn check_config_shows_the_pinning_and_warns_about_a_missing_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("m.toml");
    fs::write(
        &config,
        format!(
            "level = 2\n[server]\nbackend = \"proxy.example.net:443\"\n\
             [server.backend_tls]\npins = [\"{WRONG_PIN}\"]\n"
        ),
    )
    .unwrap();
    let r = mtguard(&["check-config", config.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("[server.backend_tls]"), "{out}");
    assert!(out.contains("fail-closed"), "level 2's default: {out}");
    assert!(out.contains("at least 2 unexpired pins"), "{out}");
}
