//! The quick starts of docs/quickstart.md: the mtprotoproxy one end to end
//! with the real mtprotoproxy 1.0.6 from PyPI (installed by test.sh) behind
//! the guard, and `mtguard init` on sample mtg and telemt configs.
//!
//! The proxy's config.py and the guard's config are taken from the quick
//! start's own code blocks, with only the ports and the state directory
//! replaced, so the page and the test cannot drift apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtguard_core::mtproto::{KeyOps, Secret, SecretSet};
use mtguard_tests::{connect_from, free_port, http_request, mtguard_bin, unix_now, Server};

const FAKE_TLS_VECTORS: &str = include_str!("../../core/tests/vectors/fake_tls.txt");
/// The fake-TLS secret of the quick start and of the vectors.
const EE: &str = "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d";

/// mtprotoproxy 1.0.6 passes `loop=` to `asyncio.start_server`, which
/// Python 3.10 removed; this drops that argument and nothing else. It also
/// logs each accepted connection, so the test sees what reached the proxy.
const SHIM: &str = r#"
import asyncio, runpy, sys
_start = asyncio.start_server
def start_server(cb, *args, loop=None, **kwargs):
    async def counted(reader, writer):
        print("shim: accepted", file=sys.stderr, flush=True)
        return await cb(reader, writer)
    return _start(counted, *args, **kwargs)
asyncio.start_server = start_server
# 1.0.6 names an exception Python 3.11 keeps only in asyncio itself.
asyncio.streams.IncompleteReadError = asyncio.IncompleteReadError
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"#;

/// The 517-byte ClientHello of fake_tls.txt (a real client's layout),
/// stamped anew with the current time: both the guard and the proxy check
/// the timestamp, and the committed one lies in the future.
fn fake_tls_hello() -> Vec<u8> {
    let line = FAKE_TLS_VECTORS
        .lines()
        .find(|l| l.starts_with("valid-517 "))
        .unwrap();
    let mut record = mtguard_tests::hex(line.split(' ').nth(4).unwrap());
    assert_eq!(record.len(), 517);
    record[11..43].fill(0);
    let digest = secret_set().fake_tls_hmac(0, &[&record]).unwrap();
    let stamp = (unix_now() as u32).to_le_bytes();
    record[11..39].copy_from_slice(&digest[..28]);
    for i in 0..4 {
        record[39 + i] = digest[28 + i] ^ stamp[i];
    }
    record
}

fn secret_set() -> SecretSet {
    let mut set = SecretSet::new();
    set.push(Secret::parse(EE).unwrap()).unwrap();
    set
}

/// Reads one TLS record: `(type, whole record)`.
fn read_record(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut record = head.to_vec();
    record.resize(5 + len, 0);
    stream.read_exact(&mut record[5..])?;
    Ok((head[0], record))
}

/// Whether the peer closed the connection (EOF or reset) within the read
/// timeout, as opposed to keeping it open.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                )
            }
        }
    }
}

fn docs_quickstart() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quickstart.md");
    std::fs::read_to_string(path).unwrap()
}

/// The text of `## heading` up to the next `## `.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in docs/quickstart.md"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// The first fenced block of language `lang` in `text`.
fn code_block(text: &str, lang: &str) -> String {
    let open = format!("```{lang}\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block"))
        + open.len();
    let end = text[start..].find("```").unwrap();
    text[start..start + end].to_owned()
}

/// `text` with `from` replaced; the quick start must still contain it.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the quick start no longer has {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// Where test.sh installs mtprotoproxy (`pip install --target`).
fn mtprotoproxy_dir() -> PathBuf {
    let dir = std::env::var_os("MTGUARD_MTPROTOPROXY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mtguard-mtprotoproxy"));
    assert!(
        dir.join("bin/mtprotoproxy.py").exists(),
        "mtprotoproxy is not installed in {} (test.sh installs it: \
         pip install --target {} mtprotoproxy==1.0.6)",
        dir.display(),
        dir.display()
    );
    dir
}

/// The proxy process, its stdout and stderr in one log; killed on drop.
struct Proxy {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    fn start(dir: &Path, config: &Path) -> Proxy {
        let installed = mtprotoproxy_dir();
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(SHIM)
            .arg(installed.join("bin/mtprotoproxy.py"))
            .arg(config)
            .current_dir(dir)
            .env("PYTHONPATH", &installed)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting python3 (test.sh installs it)");
        let log = Arc::new(Mutex::new(String::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let proxy = Proxy { child, log };
        proxy.wait_for("the proxy's start", |log| log.contains("tg://proxy"));
        proxy
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            if cond(&self.text()) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {what} within 30 s; the proxy's log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connections the proxy accepted on its socket.
    fn accepted(&self) -> usize {
        self.text().matches("shim: accepted").count()
    }

    /// Handshakes the proxy validated: its own "connects" counter, which it
    /// raises once a client's obfuscated2 header decrypted under a user's
    /// secret, before it contacts Telegram; from its latest stats print.
    fn connects(&self) -> u64 {
        self.text()
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("tg: ")?
                    .split_once(" connects")?
                    .0
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Waits for a stats print showing at least `n` validated handshakes
    /// (two may land between prints).
    fn wait_connects(&self, n: u64) {
        let start = Instant::now();
        while self.connects() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the proxy did not count {n} connects within 30 s; its log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(n: u8, guard: SocketAddr) -> TcpStream {
    connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 18, n)), guard).unwrap()
}

#[test]
fn the_mtprotoproxy_quick_start_guards_the_real_proxy() {
    let doc = docs_quickstart();
    let section = section(&doc, "## mtprotoproxy");
    let dir = tempfile::tempdir().unwrap();
    let proxy_port = free_port();
    let guard_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    // The proxy's config.py, as the quick start gives it. Two lines are the
    // test's own: stats every second (the observable), and no masking, so
    // that a bad client that got through would be held open by the proxy,
    // not relayed to TLS_DOMAIN. The proxy still tries Telegram for the
    // valid clients; the test needs no answer from there, since the proxy
    // counts a client before it connects out.
    let proxy_config = replaced(
        &code_block(section, "python"),
        "PORT = 8443",
        &format!("PORT = {proxy_port}"),
    );
    let proxy_config = format!("{proxy_config}STATS_PRINT_PERIOD = 1\nMASK = False\n");
    assert!(proxy_config.contains("LISTEN_ADDR_IPV4 = \"127.0.0.1\""));
    assert!(proxy_config.contains("PROXY_PROTOCOL = True"));
    let proxy_config_path = dir.path().join("config.py");
    std::fs::write(&proxy_config_path, proxy_config).unwrap();

    let state = dir.path().join("state");
    let guard_config = code_block(section, "toml");
    let guard_config = replaced(&guard_config, "0.0.0.0:443", &guard_addr.to_string());
    let guard_config = replaced(
        &guard_config,
        "127.0.0.1:8443",
        &format!("127.0.0.1:{proxy_port}"),
    );
    let guard_config = replaced(&guard_config, "/var/lib/mtguard", state.to_str().unwrap());
    assert!(guard_config.contains("proxy_protocol = \"v2\""));
    assert!(guard_config.contains(EE));
    let guard_config = format!("{guard_config}\n[admin]\nlisten = \"{admin}\"\n");
    let guard_config_path = dir.path().join("mtguard.toml");
    std::fs::write(&guard_config_path, guard_config).unwrap();

    // Step 1 of "Checking that it works".
    let check = Command::new(bin())
        .arg("check-config")
        .arg(&guard_config_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("valid"));

    let proxy = Proxy::start(dir.path(), &proxy_config_path);
    let guard = Server::start_with_admin(&guard_config_path, admin);

    // A dd client (Telethon's padded-intermediate header): the guard lets
    // it through, and behind a PROXY protocol v2 header the proxy accepts
    // it as user "tg".
    let mut dd = client(1, guard_addr);
    dd.write_all(&mtguard_tests::obfuscated2_vector("dd-padded"))
        .unwrap();
    proxy.wait_connects(1);

    // A fake-TLS client: the proxy answers with its ServerHello, whose
    // HMAC under the secret proves the proxy itself checked the hello.
    let mut tls = client(2, guard_addr);
    let hello = fake_tls_hello();
    tls.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    for expected in [0x16, 0x14, 0x17] {
        let (kind, record) = read_record(&mut tls).unwrap();
        assert_eq!(kind, expected, "record types of the ServerHello flight");
        answer.extend_from_slice(&record);
    }
    let mut zeroed = answer.clone();
    zeroed[11..43].fill(0);
    let want = secret_set()
        .fake_tls_hmac(0, &[&hello[11..43], &zeroed])
        .unwrap();
    assert_eq!(answer[11..43], want, "the ServerHello's HMAC");
    // Then the obfuscated2 header inside TLS records, as clients send it.
    let mut inner = vec![
        0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x40,
    ];
    inner.extend_from_slice(&mtguard_tests::obfuscated2_vector("dd-padded-media"));
    tls.write_all(&inner).unwrap();
    proxy.wait_connects(2);

    // A client with another secret (a fake-TLS hello under another key,
    // by the harness) and a client sending garbage: the guard closes both,
    // and neither reaches the proxy.
    let mut wrong = client(3, guard_addr);
    let other = "eefedcba9876543210fedcba98765432107777772e6578616d706c652e636f6d";
    wrong
        .write_all(&mtguard_tests::fake_tls_hello(
            other,
            "www.example.com",
            unix_now(),
            [1; 4],
        ))
        .unwrap();
    assert!(closed_by_peer(&mut wrong), "a wrong secret was not closed");
    let mut garbage = client(4, guard_addr);
    let mut junk = b"GET / HTTP/1.1\r\nHost: proxy.example\r\n\r\n".to_vec();
    junk.resize(128, b'x');
    garbage.write_all(&junk).unwrap();
    assert!(closed_by_peer(&mut garbage), "garbage was not closed");

    // One more valid client after them: once the proxy counted it, it has
    // seen every connection made before it.
    let mut last = client(5, guard_addr);
    last.write_all(&mtguard_tests::obfuscated2_vector("classic-padded"))
        .unwrap();
    proxy.wait_connects(3);
    let log = proxy.text();
    assert_eq!(
        proxy.accepted(),
        3,
        "only the three valid clients reached the proxy:\n{log}\nthe guard's log:\n{}",
        guard.log_text()
    );
    assert_eq!(proxy.connects(), 3);
    assert!(
        !log.contains("bad proxy protocol"),
        "the proxy read every PROXY header:\n{log}"
    );

    // Step 4: the admin API agrees.
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let (status, body) =
        http_request(admin, "GET", "/v1/status", Some(token.trim()), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["stats"]["handshakes"]["valid"], 3, "{body}");
    assert_eq!(status["stats"]["handshakes"]["invalid"], 2, "{body}");

    drop((dd, tls, last));
    assert!(guard.stop().success());
    drop(proxy);
}

/// The binary, asked of cargo once: each ask runs `cargo build`.
fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(mtguard_bin)
}

fn init(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("init").args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/init")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn check_config(path: &Path) -> std::process::Output {
    Command::new(bin())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn init_from_mtg_writes_a_config_check_config_accepts_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mtguard.toml");
    let out_s = out.to_str().unwrap();
    let run = init(&["--from-mtg", &fixture("mtg.toml"), "--out", out_s]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("bind-to = \"127.0.0.1:8443\""), "{stdout}");
    assert!(
        stdout.contains("proxy-protocol-listener = true"),
        "{stdout}"
    );
    let check = check_config(&out);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(report.contains("0.0.0.0:443"), "{report}");
    assert!(report.contains("127.0.0.1:8443"), "{report}");

    // A second run refuses to replace it; --force does.
    std::fs::write(&out, "# the operator's own edits\n").unwrap();
    let again = init(&["--from-mtg", &fixture("mtg.toml"), "--out", out_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "# the operator's own edits\n"
    );
    let forced = init(&[
        "--from-mtg",
        &fixture("mtg.toml"),
        "--out",
        out_s,
        "--force",
    ]);
    assert!(forced.status.success());
    assert!(check_config(&out).status.success());
    // Atomic: no temporary left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn init_from_telemt_to_stdout_and_the_default_both_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = init(&["--from-telemt", &fixture("telemt.toml")]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The config on stdout, the proxy-side changes on stderr.
    let advice = String::from_utf8_lossy(&run.stderr);
    assert!(
        advice.contains("[server] proxy_protocol = true"),
        "{advice}"
    );
    let path = dir.path().join("from-telemt.toml");
    std::fs::write(&path, &run.stdout).unwrap();
    let check = check_config(&path);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let default = init(&[]);
    assert!(default.status.success());
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-std/dist/mtguard.example.toml");
    assert_eq!(default.stdout, std::fs::read(example).unwrap());
}

#[test]
fn init_names_the_line_and_key_of_a_malformed_proxy_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mtguard.toml");
    for (flag, file, want) in [
        (
            "--from-mtg",
            "mtg-broken.toml",
            "mtg-broken.toml:4: secret: ",
        ),
        (
            "--from-telemt",
            "telemt-broken.toml",
            "telemt-broken.toml:9: [access.users] alice: ",
        ),
    ] {
        let run = init(&[flag, &fixture(file), "--out", out.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(stderr.contains(want), "{stderr}");
        assert!(!out.exists(), "nothing is written on an error");
    }
}
