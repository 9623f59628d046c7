//! Issue 14, items 4 and 6: list reloads cost O(n log n) and stay off the
//! admission path; silent connections are judged by the handshake deadline
//! whatever `idle_timeout` says.
//!
//! Timing is measured and printed (run with `--nocapture`), never asserted;
//! what is asserted are counts, outcomes and bounds that only a hang or a
//! quadratic blow-up would exceed.

use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mtguard::config::{line_scan_bytes, Config};
use mtguard::engine::{Capacity, Guard, LogEvents};
use mtguard_core::cidr::Cidr;
use mtguard_core::Policy;
use mtguard_tests::load::{self, Pool};
use mtguard_tests::{
    connect_from, free_port, http_request, metric, mtguard_bin, served, served_from, EchoBackend,
    Server,
};

const TOKEN: &str = "hardening-lists-test-token-0123456789";

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// `n` distinct prefixes, none covering loopback: /24s and hosts spread
/// over 1.0.0.0 upwards, `salt` shifting them so two lists differ.
fn prefixes(n: usize, salt: u32) -> Vec<String> {
    (0..n as u32)
        .map(|i| {
            let base = 0x0100_0000 + (i + salt) * 512;
            if i % 3 == 0 {
                format!("{}", Ipv4Addr::from(base + 7))
            } else {
                format!("{}/24", Ipv4Addr::from(base))
            }
        })
        .collect()
}

/// A config whose `[lists] deny` holds `entries` inline, one a line.
fn inline_deny_config(entries: &[String]) -> String {
    let mut text = String::from("[lists]\ndeny = [\n");
    for e in entries {
        writeln!(text, "  \"{e}\",").unwrap();
    }
    text.push_str("]\n");
    text
}

#[test]
fn line_numbers_of_a_40k_entry_inline_list_take_one_scan_of_the_text() {
    let mut entries = prefixes(40_000, 0);
    entries.push("192.0.2.1/33".into());
    let text = inline_deny_config(&entries);
    let before = line_scan_bytes();
    let t = Instant::now();
    let err = Config::parse(&text, "big.toml").unwrap_err();
    let elapsed = t.elapsed();
    let scanned = line_scan_bytes() - before;
    println!(
        "parse of {} inline entries ({} bytes): {:.1} ms, {scanned} bytes scanned for line numbers",
        entries.len(),
        text.len(),
        elapsed.as_secs_f64() * 1e3
    );
    // The bad entry is the last one, on the line before the closing `]`.
    assert_eq!(err.line(), Some(entries.len() + 2), "{err}");
    assert_eq!(err.key(), Some("[lists] deny[40000]"));
    // One pass over the text (and a little for the error), however many
    // values ask for their line: not one pass per value.
    assert!(
        scanned <= 2 * text.len() as u64,
        "{scanned} bytes scanned for a {}-byte text",
        text.len()
    );
}

#[test]
fn line_index_agrees_with_counting_newlines() {
    use mtguard::config::LineIndex;
    let mut text = String::new();
    for i in 0..5_000 {
        // Lines of varied length, blank ones and a CRLF among them.
        let _ = write!(text, "{}", "x".repeat(i % 7));
        text.push_str(if i % 11 == 0 { "\r\n" } else { "\n" });
    }
    text.push_str("tail without newline");
    let index = LineIndex::new(&text);
    let naive = |offset: usize| {
        text.as_bytes()[..offset.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    };
    for offset in (0..=text.len() + 3).step_by(1) {
        assert_eq!(index.line(offset), naive(offset), "offset {offset}");
    }
    assert_eq!(LineIndex::new("").line(0), 1);
    assert_eq!(LineIndex::new("\n").line(1), 2);
}

#[test]
fn check_config_of_a_40k_entry_inline_list_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    fs::write(&path, inline_deny_config(&prefixes(40_000, 0))).unwrap();
    let t = Instant::now();
    let mut child = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A bound against a hang or a quadratic parse, not a timing goal.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("check-config of 40,000 entries still running after 120 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    println!(
        "check-config of 40,000 inline entries: {:.2} s ({status})",
        t.elapsed().as_secs_f64()
    );
    assert!(status.success());
}

/// An `mtguard run` in a temporary directory with its admin API, in front
/// of an echo backend.
struct Setup {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: EchoBackend,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            backend: EchoBackend::start(),
            dir,
        };
        let token = s.dir.path().join("admin.token");
        fs::write(&token, TOKEN).unwrap();
        fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        s
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mtguard.toml")
    }

    /// Writes the config: `server` goes into `[server]`, `rest` after the
    /// fixed tables.
    fn write_config(&self, level: u8, server: &str, rest: &str) {
        let text = format!(
            "level = {level}\n\
             [server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n{server}\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"{}\"\n\
             [state]\ndir = \"{}\"\n{rest}\n",
            self.listen,
            self.backend.addr,
            self.admin,
            self.dir.path().join("admin.token").display(),
            self.dir.path().join("state").display()
        );
        fs::write(self.config_path(), text).unwrap();
    }

    fn start(&self) -> Server {
        Server::start_with_admin(&self.config_path(), self.admin)
    }

    fn scrape(&self) -> String {
        let (status, body) = http_request(self.admin, "GET", "/metrics", None, None).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn wait_metrics(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let m = self.scrape();
            if cond(&m) {
                return m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}:\n{m}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn count_logged(server: &Server, needle: &str) -> usize {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn wait_logged(server: &Server, needle: &str, count: usize, bound: Duration) {
    let start = Instant::now();
    while count_logged(server, needle) < count {
        assert!(
            start.elapsed() < bound,
            "{needle:?} not logged {count} times within {bound:?}:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn over_capacity_reload_is_refused_and_sigterm_right_after_is_handled() {
    let s = Setup::new();
    s.write_config(1, "", "");
    let server = s.start();
    assert!(served_from(ip(70, 0, 1), s.listen));
    // 200,000 entries against a table of 8,192.
    let entries = prefixes(200_000, 0);
    s.write_config(1, "", &inline_deny_config(&entries));
    let t = Instant::now();
    server.signal("HUP");
    // Give the signal task time to be inside the reload, then ask it to
    // stop: SIGTERM must not wait behind minutes of parsing.
    thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    wait_logged(&server, "reload refused", 1, Duration::from_secs(60));
    let refused = t.elapsed();
    let log = server.log_text();
    assert!(log.contains("room for 8192"), "{log}");
    let start = Instant::now();
    let mut server = server;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM:\n{}",
            server.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    };
    println!(
        "200,000-entry reload refused after {:.2} s; exit {:.2} s after SIGHUP",
        refused.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status}");
}

#[test]
fn silent_connections_end_by_handshake_timeout_whatever_idle_timeout_says() {
    let s = Setup::new();
    s.write_config(
        1,
        "idle_timeout = \"1s\"",
        "[limits]\nhandshake_timeout = \"2s\"\nslowloris_timeouts = 3\n",
    );
    let server = s.start();
    let slow = ip(71, 0, 1);
    // Three silent connections at once from one address.
    let silent: Vec<_> = (0..3)
        .map(|_| {
            let to = s.listen;
            thread::spawn(move || {
                let mut c = connect_from(slow, to).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let t = Instant::now();
                let mut buf = [0u8; 1];
                let end = c.read(&mut buf);
                (end.map_err(|e| e.kind()), t.elapsed())
            })
        })
        .collect();
    for h in silent {
        let (end, after) = h.join().unwrap();
        println!("silent connection ended after {after:?}: {end:?}");
        // The handshake deadline resets the connection; the idle timer
        // would have closed it (EOF) after 1 s.
        assert_eq!(
            end,
            Err(ErrorKind::ConnectionReset),
            "a silent connection must end by handshake timeout"
        );
    }
    let m = s.wait_metrics("the slowloris detection", |m| {
        metric(m, "mtguard_detections_total{kind=\"slowloris\"}") == 1
    });
    assert_eq!(
        metric(&m, "mtguard_handshakes_total{result=\"timeout\"}"),
        3
    );
    assert!(
        !served_from(slow, s.listen),
        "the slowloris client is blocked"
    );

    // After the handshake, idle_timeout still closes an idle relay.
    let mut c = connect_from(ip(71, 0, 2), s.listen).unwrap();
    assert!(served(&mut c));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1];
    let end = c.read(&mut buf).map_err(|e| e.kind());
    println!("idle relay ended after {:?}: {end:?}", t.elapsed());
    assert_eq!(end, Ok(0), "an idle relay is closed by idle_timeout");
    assert!(server.logged("guarding"));
}

/// A deny list file of `n` entries.
fn write_list(path: &std::path::Path, n: usize, salt: u32) {
    let mut text = String::from("# reload test\n");
    for e in prefixes(n, salt) {
        text.push_str(&e);
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

#[test]
fn admission_wait_while_a_full_denylist_reloads() {
    let s = Setup::new();
    let list = s.dir.path().join("deny.netset");
    write_list(&list, 8_192, 0);
    let lists = format!("[lists]\ndeny_files = [\"{}\"]\n", list.display());
    s.write_config(0, "", &lists);
    let server = s.start();
    assert!(served_from(ip(72, 0, 1), s.listen));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pool = Pool {
        octet: 73,
        count: 60_000,
    };
    let clients = rt.spawn(load::admission(s.listen, pool, 4, stop.clone()));
    const RELOADS: usize = 5;
    let mut reload_ms = Vec::new();
    for n in 1..=RELOADS {
        thread::sleep(Duration::from_millis(300));
        write_list(&list, 8_192, n as u32 * 3);
        let t = Instant::now();
        server.signal("HUP");
        wait_logged(
            &server,
            "configuration reloaded",
            n,
            Duration::from_secs(60),
        );
        reload_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = rt.block_on(clients).unwrap();
    println!(
        "{RELOADS} SIGHUP reloads of an 8,192-entry deny list (ms each, signal to log line): {reload_ms:.1?}"
    );
    println!(
        "exchanges meanwhile: {} ok, {} failed; connect-to-echo p50 {:.2} ms, p99 {:.2} ms, longest {:.2} ms",
        seen.ok, seen.errors, seen.p50_ms, seen.p99_ms, seen.max_ms
    );
    assert!(!server.logged("reload refused"), "{}", server.log_text());
    assert!(seen.ok > 0);
    assert_eq!(seen.errors, 0, "no client is refused or lost by a reload");
}

#[test]
fn admission_wait_in_process_while_set_config_lists_replaces_a_full_denylist() {
    let guard = Guard::new(
        Policy::for_level(mtguard_core::Level::from_number(0).unwrap()),
        Capacity::default(),
        Box::new(LogEvents { ipv6_prefix: 64 }),
    )
    .unwrap();
    let parse = |salt| -> Vec<Cidr> {
        let mut v: Vec<Cidr> = prefixes(8_192, salt)
            .iter()
            .map(|p| Cidr::parse(p).unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    let lists = [parse(0), parse(7)];
    guard.set_config_lists(&[], &lists[0]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let longest_ns = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let admitting = {
        let (guard, stop, longest_ns, admitted) = (
            guard.clone(),
            stop.clone(),
            longest_ns.clone(),
            admitted.clone(),
        );
        thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                let from = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (i & 0xff_ffff)));
                let t = Instant::now();
                let verdict = guard.connect(from);
                longest_ns.fetch_max(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if let Ok(a) = verdict {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    guard.close(a.id);
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(100));
    let quiet = longest_ns.swap(0, Ordering::Relaxed);
    let mut build_ms = Vec::new();
    for n in 0..5 {
        let t = Instant::now();
        guard.set_config_lists(&[], &lists[(n + 1) % 2]).unwrap();
        build_ms.push(t.elapsed().as_secs_f64() * 1e3);
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    admitting.join().unwrap();
    println!(
        "set_config_lists of 8,192 deny entries, 5 times: {build_ms:.2?} ms each; \
         longest Guard::connect meanwhile {:.3} ms (before the reloads: {:.3} ms); {} admitted",
        longest_ns.load(Ordering::Relaxed) as f64 / 1e6,
        quiet as f64 / 1e6,
        admitted.load(Ordering::Relaxed)
    );
    assert!(admitted.load(Ordering::Relaxed) > 0);
    // The swap took: the second list's entries are in force.
    let only_second = Ipv4Addr::from(0x0100_0000 + (8_191 + 7) * 512);
    assert!(guard.with(|e, _| e.denylist().contains(IpAddr::V4(only_second))));
    assert_eq!(guard.with(|e, _| e.denylist().len()), 8_192);
}
