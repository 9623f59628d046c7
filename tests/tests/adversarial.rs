//! The guard under attack, on loopback, each attacker and client on its own
//! 127.x.y.z source address: a flood from 10,000 addresses while 50
//! legitimate clients keep connecting, slowloris, garbage and replayed
//! handshakes, addresses that collide under an unkeyed hash, a full client
//! table, and SIGKILL in the middle of state saves. Every load is bounded
//! in count; timing is measured and printed, never asserted.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mtguard::admin::render_metrics;
use mtguard::engine::{Capacity, Guard, LogEvents};
use mtguard_core::{Level, Policy};
use mtguard_tests::{
    connect_from, fake_tls_hello, free_port, http_request, metric, open_fds, served, served_from,
    test_guard, unix_now, vm_rss_kib, EchoBackend, Relay, Server,
};

const TOKEN: &str = "adversarial-test-token-0123456789";
/// "ee" + key + hex("example.com").
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// An `mtguard run` process in a temporary directory with its admin API on
/// loopback, in front of an echo backend.
struct Setup {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: EchoBackend,
}

impl Setup {
    /// `extra` is appended to the config: `[limits]` keys first, then any
    /// further tables.
    fn new(limits: &str, extra: &str) -> Setup {
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
        let text = format!(
            "level = 1\n\
             [server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n\
             [limits]\n{limits}\n\
             [admin]\nlisten = \"{}\"\ntoken_file = \"{}\"\n\
             [state]\ndir = \"{}\"\n{extra}\n",
            s.listen,
            s.backend.addr,
            s.admin,
            token.display(),
            s.state_dir().display()
        );
        fs::write(s.dir.path().join("mtguard.toml"), text).unwrap();
        s
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn start(&self) -> Server {
        Server::start_with_admin(&self.dir.path().join("mtguard.toml"), self.admin)
    }

    fn scrape(&self) -> String {
        let (status, body) = http_request(self.admin, "GET", "/metrics", None, None).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_request(self.admin, method, path, Some(TOKEN), body).unwrap()
    }

    /// Waits until the scrape satisfies `cond` (the guard counts a close
    /// when its relay sees it, a moment after the client's).
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

fn rejected_total(m: &str) -> u64 {
    m.lines()
        .filter(|l| l.starts_with("mtguard_connections_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The address of flood attacker `i` (0..): 127.10.0.0 and up, never one
/// of the legitimate clients' 127.200.0.x.
fn attacker(i: u32) -> IpAddr {
    let n = (10 << 16) + i;
    IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

const ATTACKERS: u32 = 10_000;
const LEGITIMATE: u8 = 50;

/// One attacker: holds connections until one is refused (its per-client
/// limit of 2), which blocks it at once; then tries once more. Returns
/// (attempts, served).
fn attack(from: IpAddr, to: SocketAddr) -> (u64, u64) {
    let mut held = Vec::new();
    let (mut attempts, mut ok) = (0, 0);
    for _ in 0..4 {
        attempts += 1;
        let Ok(mut c) = connect_from(from, to) else {
            break;
        };
        if !served(&mut c) {
            break;
        }
        ok += 1;
        held.push(c);
    }
    drop(held);
    attempts += 1;
    if served_from(from, to) {
        ok += 1;
    }
    (attempts, ok)
}

#[test]
fn a_flood_from_ten_thousand_addresses_spares_legitimate_clients() {
    // Per-client limits stop the flood: 2 connections per address and one
    // violation blocks. The global new-connection fuse (which refuses
    // everyone alike) is raised out of the way, and under-attack mode keeps
    // per-client limits whole, so what is measured is per-client defence.
    let s = Setup::new(
        "max_connections_per_ip = 2\n\
         block_after_violations = 1\n\
         max_new_connections_per_window = 1000\n\
         global_max_new_per_second = 1000000\n\
         attack_limit_percent = 100",
        "",
    );
    let server = s.start();
    let pid = server.child.id();

    // Warm up: every legitimate client once, so the "before" figures
    // include a running relay, not an idle process.
    for k in 1..=LEGITIMATE {
        assert!(served_from(ip(200, 0, k), s.listen));
    }
    s.wait_metrics("the warm-up to close", |m| {
        metric(m, "mtguard_connections_active") == 0
    });
    let fds_before = open_fds(pid);
    let rss_before = vm_rss_kib(pid);
    let rejected_before = rejected_total(&s.scrape());

    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let legit: Vec<_> = (1..=LEGITIMATE)
        .map(|k| {
            let (stop, latencies, failures) = (stop.clone(), latencies.clone(), failures.clone());
            let to = s.listen;
            thread::spawn(move || {
                let mut mine = Vec::new();
                // Bounded in count as well as by the flood's end; at least
                // ten attempts each, however fast the flood is over.
                for n in 0..2_000 {
                    if n >= 10 && stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    if served_from(ip(200, 0, k), to) {
                        mine.push(t.elapsed());
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();

    let flood_start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let attackers_served = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (next, attempts, attackers_served) =
                (next.clone(), attempts.clone(), attackers_served.clone());
            let to = s.listen;
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= u64::from(ATTACKERS) {
                    break;
                }
                let (a, ok) = attack(attacker(i as u32), to);
                attempts.fetch_add(a, Ordering::Relaxed);
                attackers_served.fetch_add(ok, Ordering::Relaxed);
            })
        })
        .collect();
    for t in flood {
        t.join().unwrap();
    }
    let flood_time = flood_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in legit {
        t.join().unwrap();
    }

    let m = s.wait_metrics("the flood's connections to close", |m| {
        metric(m, "mtguard_connections_active") == 0
    });
    let refused = rejected_total(&m) - rejected_before;
    // A state save in progress holds a file open for a moment; a leaked
    // descriptor stays. The fewest seen over up to five seconds counts.
    let mut fds_after = open_fds(pid);
    for _ in 0..50 {
        if fds_after <= fds_before {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        fds_after = fds_after.min(open_fds(pid));
    }
    let rss_after = vm_rss_kib(pid);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let ok = lat.len() as u64;
    let failed = failures.load(Ordering::Relaxed);
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "flood: {ATTACKERS} addresses, {} attempts ({} served before their block), \
         {refused} refused in {:.1} s = {:.0} refused/s; legitimate: {ok} served, \
         {failed} failed, p50 {:?} p99 {:?} max {:?}; VmRSS {rss_before} -> {rss_after} KiB; \
         fds {fds_before} -> {fds_after}; blocked {}",
        attempts.load(Ordering::Relaxed),
        attackers_served.load(Ordering::Relaxed),
        flood_time.as_secs_f64(),
        refused as f64 / flood_time.as_secs_f64(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        metric(&m, "mtguard_blocked_clients"),
    );

    // Every attacker was blocked, and each block refused it afterwards.
    assert_eq!(
        metric(&m, "mtguard_blocked_clients"),
        u64::from(ATTACKERS),
        "{m}"
    );
    assert!(
        metric(&m, "mtguard_connections_rejected_total{reason=\"blocked\"}")
            >= u64::from(ATTACKERS),
        "{m}"
    );
    assert!(ok >= 500, "too few legitimate samples: {ok}");
    assert!(
        ok * 100 >= (ok + failed) * 99,
        "legitimate success {ok} of {}",
        ok + failed
    );
    // Fixed tables: 10,000 clients live in slots allocated at start. What
    // may still grow is the allocator's caches of per-connection buffers.
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before,
        "fds leaked: {fds_before} before, {fds_after} after"
    );
    assert!(served_from(ip(200, 1, 1), s.listen), "still serving");
    assert!(server.stop().success());
}

/// Whether the guard closed `c` (EOF or reset) rather than leaving it open
/// or answering.
fn closed_by_guard(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
        }
    }
}

/// A fake-TLS client: sends a fresh hello and gets it echoed back.
fn fake_tls_served(from: IpAddr, to: SocketAddr, salt: u32) -> bool {
    let hello = fake_tls_hello(FAKE_TLS, "example.com", unix_now(), salt.to_be_bytes());
    let Ok(mut c) = connect_from(from, to) else {
        return false;
    };
    if c.write_all(&hello).is_err() {
        return false;
    }
    let mut back = vec![0; hello.len()];
    c.read_exact(&mut back).is_ok() && back == hello
}

#[test]
fn slowloris_garbage_and_replays_are_cut_off_counted_and_blocked() {
    let s = Setup::new(
        "scanner_failures = 3\nslowloris_timeouts = 3\nblock_on_replay = true",
        &format!("[mtproto]\nsecrets = [\"{FAKE_TLS}\"]\nhandshake_timeout = \"1s\"\n"),
    );
    let server = s.start();
    assert!(fake_tls_served(ip(60, 0, 1), s.listen, 1));

    // Slowloris: three connections dribbling a valid hello, a byte every
    // 200 ms (the whole hello would take about a minute). Each must be cut
    // off by the handshake deadline; the bound of 100 bytes stops the test
    // if it is not.
    let slow = ip(61, 0, 1);
    let dribblers: Vec<_> = (0..3u32)
        .map(|n| {
            let to = s.listen;
            thread::spawn(move || {
                let hello = fake_tls_hello(FAKE_TLS, "example.com", unix_now(), [9, 9, 9, n as u8]);
                let mut c = connect_from(slow, to).unwrap();
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                for byte in hello.iter().take(100) {
                    if c.write_all(&[*byte]).is_err() {
                        return true;
                    }
                    let mut buf = [0u8; 16];
                    match c.read(&mut buf) {
                        Ok(0) => return true,
                        Ok(_) => return false,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == ErrorKind::TimedOut => {}
                        Err(_) => return true,
                    }
                }
                false
            })
        })
        .collect();
    for d in dribblers {
        assert!(
            d.join().unwrap(),
            "a slowloris connection was never cut off"
        );
    }

    // Garbage: an HTTP request and random bytes instead of a hello.
    let scanner = ip(62, 0, 1);
    let mut noise = 0x1234_5678u32;
    for n in 0..3 {
        let mut c = connect_from(scanner, s.listen).unwrap();
        let bytes: Vec<u8> = if n == 0 {
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()
        } else {
            (0..600)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 17;
                    noise ^= noise << 5;
                    noise as u8
                })
                .collect()
        };
        let _ = c.write_all(&bytes);
        assert!(
            closed_by_guard(&mut c),
            "garbage handshake {n} was answered"
        );
    }

    // Replay: a recorded valid hello, played again from elsewhere.
    let hello = fake_tls_hello(FAKE_TLS, "example.com", unix_now(), [7, 7, 7, 7]);
    let mut c = connect_from(ip(63, 0, 1), s.listen).unwrap();
    c.write_all(&hello).unwrap();
    let mut back = vec![0; hello.len()];
    c.read_exact(&mut back).unwrap();
    let replayer = ip(63, 0, 2);
    let mut r = connect_from(replayer, s.listen).unwrap();
    let _ = r.write_all(&hello);
    assert!(closed_by_guard(&mut r), "the replay was answered");

    let m = s.wait_metrics("all three detections", |m| {
        metric(m, "mtguard_detections_total{kind=\"slowloris\"}") == 1
            && metric(m, "mtguard_detections_total{kind=\"scanner\"}") == 1
            && metric(m, "mtguard_detections_total{kind=\"replay\"}") == 1
    });
    println!("{m}");
    assert_eq!(
        metric(&m, "mtguard_handshakes_total{result=\"timeout\"}"),
        3
    );
    assert_eq!(
        metric(&m, "mtguard_handshakes_total{result=\"invalid\"}"),
        3
    );
    assert_eq!(metric(&m, "mtguard_handshakes_total{result=\"replay\"}"), 1);
    assert_eq!(
        metric(&m, "mtguard_handshake_failures_total{reason=\"replay\"}"),
        1
    );
    assert_eq!(metric(&m, "mtguard_blocked_clients"), 3);
    let (status, blocks) = s.api("GET", "/v1/blocks", None);
    assert_eq!(status, 200);
    for who in [slow, scanner, replayer] {
        assert!(
            blocks.contains(&format!("\"{who}\"")),
            "{who} not in {blocks}"
        );
        assert!(!served_from(who, s.listen), "{who} still served");
    }
    assert!(
        metric(
            &s.scrape(),
            "mtguard_connections_rejected_total{reason=\"blocked\"}"
        ) >= 3
    );
    // The replay never reached the backend: one accept per served client.
    assert_eq!(*s.backend.accepted.lock().unwrap(), 2);
    assert!(fake_tls_served(ip(64, 0, 1), s.listen, 2), "still serving");
    assert!(server.stop().success());
}

fn standard() -> Policy {
    Policy::for_level(Level::Standard)
}

#[test]
fn addresses_colliding_under_an_unkeyed_hash_stay_in_short_chains() {
    // 3,000 addresses with the same low 10 bits: under `addr % 1024` (an
    // unkeyed hash into this guard's 1,024 buckets) they would form one
    // chain. With SipHash under a boot-time key they spread out.
    let backend = EchoBackend::start();
    let relay = Relay::start(test_guard(standard()), backend.addr, None);
    let colliding: Vec<IpAddr> = (1..=255u8)
        .flat_map(|a| (0..64u8).map(move |b| ip(a, b * 4, 7)))
        .take(3_000)
        .collect();
    let served_count = Arc::new(AtomicU64::new(0));
    let longest = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = colliding
        .chunks(750)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let (served_count, longest, guard) =
                (served_count.clone(), longest.clone(), relay.guard.clone());
            let to = relay.listen;
            thread::spawn(move || {
                for a in chunk {
                    // Hold the connection while measuring, so the client
                    // cannot be evicted in between.
                    let Ok(mut c) = connect_from(a, to) else {
                        continue;
                    };
                    if served(&mut c) {
                        served_count.fetch_add(1, Ordering::Relaxed);
                        let chain = guard.with(|e, _| e.chain_len(a)) as u64;
                        longest.fetch_max(chain, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let m = render_metrics(&relay.guard, &relay.telemetry);
    let longest = longest.load(Ordering::Relaxed);
    println!(
        "colliding addresses: {} of 3000 served, longest chain {longest}, {} evictions",
        served_count.load(Ordering::Relaxed),
        metric(&m, "mtguard_table_evictions_total")
    );
    assert_eq!(served_count.load(Ordering::Relaxed), 3_000);
    // A keyed hash spreads up to 1,024 live clients over 1,024 buckets
    // like balls into bins: the longest chain is typically 5 to 7, and 17
    // or more has a probability below 1e-10. Unkeyed, it would be ~1,000.
    assert!(longest <= 16, "a chain of {longest}");
    // 3,000 clients through a 1,024-client table: the idle ones made room.
    assert!(metric(&m, "mtguard_table_evictions_total") >= 3_000 - 1_024);
    assert!(served_from(ip(9, 9, 9), relay.listen), "still serving");
}

#[test]
fn a_full_client_table_refuses_new_clients_only_and_recovers() {
    let guard = Guard::new(
        standard(),
        Capacity {
            clients: 32,
            connections: 256,
            prefixes: 16,
            networks: 256,
        },
        Box::new(LogEvents { ipv6_prefix: 64 }),
    )
    .unwrap();
    let backend = EchoBackend::start();
    let relay = Relay::start(guard, backend.addr, None);
    // 32 clients each hold a connection: none of them may be evicted.
    let mut held: Vec<_> = (0..32u8)
        .map(|k| {
            let mut c = connect_from(ip(70, 0, k + 1), relay.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    for k in 0..20u8 {
        assert!(
            !served_from(ip(71, 0, k + 1), relay.listen),
            "new client {k} admitted into a full table"
        );
    }
    let m = render_metrics(&relay.guard, &relay.telemetry);
    assert_eq!(
        metric(
            &m,
            "mtguard_connections_rejected_total{reason=\"client_table_full\"}"
        ),
        20
    );
    assert_eq!(metric(&m, "mtguard_tracked_clients"), 32);
    // Known clients keep being served.
    for k in 0..32u8 {
        assert!(
            served_from(ip(70, 0, k + 1), relay.listen),
            "known client {k}"
        );
    }
    // Once they go idle, new clients take their place.
    held.clear();
    relay.wait_until("the held connections to close", |e| {
        e.active_connections() == 0
    });
    for k in 0..20u8 {
        assert!(
            served_from(ip(72, 0, k + 1), relay.listen),
            "new client {k}"
        );
    }
    let m = render_metrics(&relay.guard, &relay.telemetry);
    assert!(metric(&m, "mtguard_table_evictions_total") >= 20);
}

fn blocked_list(s: &Setup) -> Vec<String> {
    let (status, body) = s.api("GET", "/v1/blocks", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["client"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sigkill_during_state_saves_leaves_the_old_or_the_new_state() {
    let s = Setup::new("", "");
    let mut acknowledged: Vec<String> = Vec::new();
    let mut attempted: Vec<String> = Vec::new();
    let mut lifted: Vec<String> = Vec::new();
    let mut n = 0u32;
    for round in 0..8u64 {
        let server = s.start();
        assert!(
            !server.logged("corrupt") && !server.logged("ERROR"),
            "round {round}: {}",
            server.log_text()
        );
        // Nothing acknowledged is lost, nothing never asked for appears.
        let restored = blocked_list(&s);
        for a in &acknowledged {
            assert!(restored.contains(a), "round {round}: {a} lost");
        }
        for r in &restored {
            assert!(
                attempted.contains(r),
                "round {round}: {r} came from nowhere"
            );
            assert!(!lifted.contains(r), "round {round}: lifted {r} came back");
        }
        acknowledged = restored;

        // Every admin change is saved at once: a stream of them keeps the
        // guard writing its state while it is killed, at a moment that
        // moves from round to round.
        let admin = s.admin;
        let kill_after = Duration::from_millis(150 + 70 * round);
        let start = Instant::now();
        let mut mine = Vec::new();
        while start.elapsed() < kill_after {
            n += 1;
            let who = format!("10.{}.{}.{}", n >> 16, (n >> 8) as u8, n as u8);
            attempted.push(who.clone());
            let body = format!("{{\"ip\": \"{who}\", \"duration\": \"1d\"}}");
            let r = http_request(admin, "POST", "/v1/blocks", Some(TOKEN), Some(&body));
            if let Ok((201, reply)) = r {
                if !reply.contains("warning") {
                    mine.push(who);
                }
            }
            // Lifting an older block changes the state too. A lift whose
            // reply the kill cut off may or may not have been saved.
            if n.is_multiple_of(5) {
                if let Some(old) = acknowledged.pop() {
                    let r = http_request(
                        admin,
                        "DELETE",
                        &format!("/v1/blocks/{old}"),
                        Some(TOKEN),
                        None,
                    );
                    if matches!(r, Ok((204, ref b)) if !b.contains("warning")) {
                        lifted.push(old);
                    }
                }
            }
        }
        server.signal("KILL");
        acknowledged.extend(mine);
        // `Server` reaps the child on drop.
        drop(server);
        // Only the complete file may remain; a temporary left by the kill
        // is the writer's own and harmless.
        let state = s.state_dir().join("state.bin");
        assert!(
            acknowledged.is_empty() || state.exists(),
            "round {round}: no state file"
        );
    }
    println!(
        "{n} block requests across 8 kills; {} blocks held",
        acknowledged.len()
    );
    assert!(n > 20, "too few saves to mean anything: {n}");
    let killed_left = leftover_temporaries(&s.state_dir());
    // As a kill between write and rename leaves it (not every run's kills
    // land there).
    fs::write(s.state_dir().join(".state.bin.tmp.4194305"), b"half a sta").unwrap();
    let server = s.start();
    let restored = blocked_list(&s);
    for a in &acknowledged {
        assert!(restored.contains(a), "{a} lost");
    }
    assert!(server.stop().success());
    // A temporary a killed writer left is removed at the next start, so
    // crashes do not pile up state-sized files.
    println!("temporaries left by the last kill: {killed_left}");
    assert_eq!(leftover_temporaries(&s.state_dir()), 0);
}

/// Temporary files left next to the state by killed writers.
fn leftover_temporaries(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp.")
        })
        .count()
}
