//! Helpers shared by the integration tests: the `mtguard` binary as a child
//! process, and clients bound to their own loopback source addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtguard::config::{ProxyProtocol, RefusalSettings};
use mtguard::engine::{Capacity, Engine, Guard, LogEvents};
use mtguard::loadgen;
use mtguard::proxy::inspect::Mtproto;
use mtguard::proxy::{self, ProxySettings};
use mtguard_core::Policy;

/// Table sizes of the guards the tests build: small, so a test's numbers
/// are easy to reach and to read.
pub const TEST_CAPACITY: Capacity = Capacity {
    clients: 1024,
    connections: 1024,
    prefixes: 16,
    networks: 1024,
};

/// A guard with [`TEST_CAPACITY`] enforcing `policy`, logging its events.
pub fn test_guard(policy: Policy) -> Arc<Guard> {
    Guard::new(
        policy,
        TEST_CAPACITY,
        Box::new(LogEvents {
            ipv6_prefix: policy.ipv6_prefix,
        }),
    )
    .expect("a valid test policy")
}

/// The relay serving on 127.0.0.1 in a runtime of its own, in front of
/// `backend`; with `mtproto`, handshakes are inspected. Stops when dropped.
pub struct Relay {
    _rt: tokio::runtime::Runtime,
    /// The guard deciding for it.
    pub guard: Arc<Guard>,
    /// Where its refused handshakes are counted.
    pub telemetry: Arc<mtguard::telemetry::Telemetry>,
    /// Where it listens.
    pub listen: SocketAddr,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Starts the guard's driver and the relay. Refused handshakes are
    /// answered as the inspection state's `on_probe` says (masked to its
    /// mask backend, or reset), refused clients reset.
    pub fn start(guard: Arc<Guard>, backend: SocketAddr, mtproto: Option<Arc<Mtproto>>) -> Relay {
        let refusal = match &mtproto {
            Some(m) => {
                RefusalSettings::from_on_probe(m.on_probe(), m.mask_backend().map(str::to_owned))
            }
            None => RefusalSettings::default(),
        };
        Relay::start_refusing(guard, backend, mtproto, refusal)
    }

    /// [`Relay::start`] answering refused sources as `refusal` says.
    pub fn start_refusing(
        guard: Arc<Guard>,
        backend: SocketAddr,
        mtproto: Option<Arc<Mtproto>>,
        refusal: RefusalSettings,
    ) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        let settings = tokio::sync::watch::channel(Arc::new(ProxySettings {
            backend: backend.to_string(),
            proxy_protocol: ProxyProtocol::None,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            backend_tls: None,
            refusal,
        }))
        .1;
        let mtproto = tokio::sync::watch::channel(mtproto).1;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let listen = listener.local_addr().unwrap();
        rt.spawn(guard.clone().drive());
        let telemetry = Arc::new(mtguard::telemetry::Telemetry::default());
        rt.spawn(proxy::serve_inspected(
            listener,
            guard.clone(),
            settings,
            mtproto,
            telemetry.clone(),
            shutdown,
        ));
        Relay {
            _rt: rt,
            guard,
            telemetry,
            listen,
            _shutdown: shutdown_tx,
        }
    }

    /// Waits until `cond` holds on the engine: the guard learns of a close
    /// when its relay task sees the EOF, a moment after the client's close.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&Engine) -> bool) {
        let start = Instant::now();
        while !self.guard.with(|e, _| cond(e)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Path of the `mtguard` binary of this build, building it if needed (cargo
/// does not build a dependency's binaries for another package's tests).
pub fn mtguard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/mtguard
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("mtguard");
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let release = profile_dir.ends_with("release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "mtguard", "--bin", "mtguard"]);
    if release {
        cmd.arg("--release");
    }
    // Always ask cargo: it is a no-op when the binary is fresh, and it
    // rebuilds one left over from older sources.
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building the mtguard binary failed");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub use mtguard::loadgen::EchoBackend;

/// Connects to `to` from source address `from` (any 127.x.y.z works on
/// Linux, where loopback is a /8); connect and reads bounded by 5 s.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    loadgen::connect_from_blocking(from, to, Duration::from_secs(5))
}

/// Whether the guard served this connection: a request is echoed back by
/// the echo backend. A refused connection is closed (EOF or reset) at once.
pub fn served(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

/// The admin API serving `node` in this process, on a runtime of its own
/// and a free loopback port, with the bearer token `token`; it stops when
/// dropped. `runtime` is there for what the test runs beside it (the
/// engine's timers, a WebDriver session).
pub struct AdminInProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
    /// The runtime it is served on.
    pub runtime: tokio::runtime::Runtime,
}

impl AdminInProcess {
    /// Starts serving.
    pub fn start(
        node: mtguard::node::Handles,
        token: &str,
        state_dir: Option<PathBuf>,
    ) -> AdminInProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Arc::new(mtguard::admin::AdminSettings {
            token: token.to_owned(),
            state_dir,
            pins_file: None,
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        runtime.spawn(mtguard::admin::serve(
            listener,
            Arc::new(node),
            settings,
            stopped,
        ));
        AdminInProcess {
            addr,
            _stop: stop,
            runtime,
        }
    }
}

/// Whether the guard closed `s` (EOF or reset) within its read timeout,
/// rather than answer or leave it open.
pub fn closed_by_guard(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Connects from `from`, sends a line and reads its echo: whether the guard
/// served it. A refusal can surface at connect already (the guard resets a
/// refused connection so fast that the handshake reports it).
pub fn served_from(from: IpAddr, to: SocketAddr) -> bool {
    match connect_from(from, to) {
        Ok(mut stream) => served(&mut stream),
        Err(_) => false,
    }
}

/// An `mtguard run` child process; killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Lines it logged so far (stderr).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `mtguard run` with `args`, and waits until `ready` appears in
    /// its log (or it exits, or 30 s pass).
    pub fn start(args: &[&str], ready: &str) -> Result<Server, String> {
        Server::start_with_env(args, &[], ready)
    }

    /// [`Server::start`] under a command that execs the rest, such as
    /// `ip netns exec NAME` (the child's pid is then the guard's).
    pub fn start_in(prefix: &[&str], args: &[&str], ready: &str) -> Result<Server, String> {
        Server::spawn(prefix, args, &[], ready)
    }

    /// [`Server::start`] with extra environment variables (such as
    /// `SOFTHSM2_CONF`, which must differ between tests running at once).
    pub fn start_with_env(
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        ready: &str,
    ) -> Result<Server, String> {
        Server::spawn(&[], args, env, ready)
    }

    fn spawn(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        ready: &str,
    ) -> Result<Server, String> {
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(mtguard_bin());
                c
            }
            None => Command::new(mtguard_bin()),
        };
        let mut child = command
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .spawn()
            .map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let mut reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        }));
        let mut server = Server { child, log };
        let start = Instant::now();
        loop {
            if server.logged(ready) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                // The reader may not have read the last lines yet, and the
                // last line is the one that says why: read to the end.
                if let Some(reader) = reader.take() {
                    let _ = reader.join();
                }
                return Err(format!("exited with {status}: {}", server.log_text()));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("not ready after 30 s: {}", server.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `needle` appears in the log so far.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// `mtguard run --config CONFIG`, returned once its admin API at
    /// `admin` takes connections (it binds just after the "guarding" line).
    pub fn start_with_admin(config: &Path, admin: SocketAddr) -> Server {
        let server = Server::start(&["--config", config.to_str().unwrap()], "guarding").unwrap();
        let start = Instant::now();
        while TcpStream::connect(admin).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "admin API not up: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// How many lines of the log so far contain `needle`.
    pub fn count_logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `needle` appears in the log; fails the test, showing
    /// the log, if it has not within `within`.
    pub fn wait_logged(&self, needle: &str, within: Duration) {
        let start = Instant::now();
        while !self.logged(needle) {
            assert!(
                start.elapsed() < within,
                "no {needle:?} in the log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod bench;
pub mod load;

// ----- helpers of the adversarial tests -----

/// One blocking HTTP/1.1 request on its own connection: `(status, body)`.
/// Hand-written (a few lines) so the adversarial tests need no async client.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::other(format!("malformed reply: {raw:?}"));
    let (head, mut rest) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return Ok((status, rest.to_owned()));
    }
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").ok_or_else(bad)?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        if size == 0 {
            return Ok((status, out));
        }
        out.push_str(tail.get(..size).ok_or_else(bad)?);
        rest = tail.get(size + 2..).ok_or_else(bad)?;
    }
}

/// The value of the series `series` (name with labels) in a Prometheus
/// scrape; 0 when the series is absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("an integer metric"))
        .unwrap_or(0)
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc); panics
/// when the process is gone, which fails the test that asked.
pub fn vm_rss_kib(pid: u32) -> u64 {
    loadgen::vm_rss_kib(pid).expect("VmRSS in /proc/<pid>/status")
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> usize {
    loadgen::open_fds(pid).expect("/proc/<pid>/fd")
}

/// A fake-TLS ClientHello for `domain` under the `ee` secret `secret`,
/// stamped `unix_time`: its random is HMAC-SHA256(key, record with the
/// random zeroed) with the last four bytes XOR the little-endian time.
/// `salt` goes into the session id, so two hellos made in the same second
/// differ and the guard's replay cache does not take one for a replay.
pub fn fake_tls_hello(secret: &str, domain: &str, unix_time: u64, salt: [u8; 4]) -> Vec<u8> {
    let name = domain.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = vec![0, 0];
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    // A padding extension, as real clients add one.
    extensions.extend_from_slice(&[0x00, 0x15, 0x00, 0x40]);
    extensions.extend_from_slice(&[0; 0x40]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0; 32]); // random, filled below
    body.push(32);
    let mut session = [0x5a; 32];
    session[..4].copy_from_slice(&salt);
    body.extend_from_slice(&session);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    stamp_fake_tls(&mut record, secret, unix_time);
    record
}

/// Makes `record`, a ClientHello record whose random is zero, a fake-TLS
/// hello under the `ee` secret `secret` stamped `unix_time`: the random
/// becomes HMAC-SHA256(key, record) with its last four bytes XOR the
/// little-endian time.
pub fn stamp_fake_tls(record: &mut [u8], secret: &str, unix_time: u64) {
    use mtguard_core::mtproto::{KeyOps, Secret, SecretSet};
    let mut set = SecretSet::new();
    set.push(Secret::parse(secret).unwrap()).unwrap();
    let digest = set.fake_tls_hmac(0, &[record]).unwrap();
    let stamp = (unix_time as u32).to_le_bytes();
    record[11..39].copy_from_slice(&digest[..28]);
    for i in 0..4 {
        record[39 + i] = digest[28 + i] ^ stamp[i];
    }
}

/// `openssl s_server` on a free loopback port; ready once it said ACCEPT,
/// killed when dropped.
pub struct OpensslServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl OpensslServer {
    /// Starts `openssl s_server` in `cwd` with `args` (certificate, key,
    /// mode such as `-WWW` or `-rev`); panics if it does not say ACCEPT
    /// within 20 s.
    pub fn start(cwd: &Path, args: &[&str]) -> OpensslServer {
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
        let (tx, rx) = std::sync::mpsc::channel();
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
        OpensslServer { child, port }
    }

    /// The address of `file` on a `-WWW` server.
    pub fn url(&self, file: &str) -> String {
        format!("https://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `line` without the terminal colour codes the log carries.
pub fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `failures=N` a recovery line ("... works again", "accepting
/// again") reports.
pub fn failures_reported(line: &str) -> u64 {
    let plain = without_colours(line);
    let (_, rest) = plain
        .split_once("failures=")
        .unwrap_or_else(|| panic!("no count in {plain}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A self-signed certificate made by the openssl command line.
pub fn openssl_self_signed(dir: &Path) -> PathBuf {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "30",
            "-subj",
            "/CN=backend",
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
pub fn openssl_spki_pin(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success());
    format!("sha256/{}", String::from_utf8(out.stdout).unwrap().trim())
}

/// Bytes from a hex string (the test vectors' notation).
pub fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The header of the obfuscated2 vector `name`, made by Telethon's MTProxy
/// client (core/tests/vectors/obfuscated2.txt).
pub fn obfuscated2_vector(name: &str) -> Vec<u8> {
    const VECTORS: &str = include_str!("../../core/tests/vectors/obfuscated2.txt");
    let line = VECTORS
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no obfuscated2 vector {name}"));
    hex(line.split(' ').nth(3).unwrap())
}
