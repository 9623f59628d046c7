//! Certificate pinning against real TLS peers: `openssl s_server` serving
//! files (`-WWW`) for `mtguard fetch`, and echoing (`-rev`) as the backend
//! of `[server.backend_tls]`; certificates from rcgen (CA, intermediate,
//! leaf) and from the openssl command line.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mtguard_core::pins::presented_pins;
use mtguard_tests::{free_port, mtguard_bin, Server};
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

/// `openssl s_server` on 127.0.0.1; killed when dropped.
struct SServer {
    child: Child,
    port: u16,
}

impl SServer {
    /// Starts `openssl s_server` in `cwd` with `args` (certificate, key,
    /// mode), and waits for its `ACCEPT` line.
    fn start(cwd: &Path, args: &[&str]) -> SServer {
        let port = free_port();
        let mut child = Command::new("openssl")
            .arg("s_server")
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is installed (test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("ACCEPT") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("openssl s_server never said ACCEPT");
        SServer { child, port }
    }

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

    fn url(&self, file: &str) -> String {
        format!("https://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let server = SServer::www(&pki);
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
    let server = SServer::www(&pki);
    let (out, old) = served_config(&pki);
    let ca = pki.path("ca.pem");
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", ca.to_str().unwrap(), "--pin", WRONG_PIN],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), old, "the old file must stay byte for byte");
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
    let server = SServer::www(&pki);
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
    let server = SServer::www(&attacker);
    let (out, old) = served_config(&attacker);
    let cas = attacker.path("both-cas.pem");
    let mut both = fs::read_to_string(victim.path("ca.pem")).unwrap();
    both.push_str(&fs::read_to_string(attacker.path("ca.pem")).unwrap());
    fs::write(&cas, both).unwrap();
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", cas.to_str().unwrap(), "--pin", &spki(&victim.inter_der)],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert_eq!(fs::read(&out).unwrap(), old);
    // The same server passes when its own intermediate is pinned.
    let r = fetch(
        &server.url("proxy-multi.conf"),
        &out,
        &["--ca", cas.to_str().unwrap(), "--pin", &spki(&attacker.inter_der)],
    );
    assert!(r.status.success(), "{}", text(&r));
}

#[test]
fn an_expired_pin_fails_closed_or_falls_back_when_asked() {
    let pki = Pki::new("Test CA");
    let server = SServer::www(&pki);
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

/// A self-signed certificate made by the openssl command line.
fn openssl_self_signed(dir: &Path) -> PathBuf {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "self.key", "-out", "self.pem", "-days", "30", "-subj", "/CN=backend",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("self.pem")
}

/// The SPKI pin of a certificate computed by openssl alone.
fn openssl_spki_pin(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success());
    format!("sha256/{}", String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn mtguard_pin_prints_what_openssl_computes() {
    let dir = tempfile::tempdir().unwrap();
    let pem = openssl_self_signed(dir.path());
    let expected_spki = openssl_spki_pin(&pem);
    let der = dir.path().join("self.der");
    let status = Command::new("openssl")
        .args(["x509", "-in", "self.pem", "-outform", "der", "-out", "self.der"])
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
    let r = fetch(&server.url("proxy-secret"), &out, &["--pins-only", "--pin", &pin]);
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
    let server = SServer::www(&pki);
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
    let server = SServer::www(&pki);
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
