//! Carrier NAT end to end, on loopback with real fake-TLS handshakes: many
//! users behind one address are served at level 1 and never blocked, while
//! an address with no valid handshake meets today's limits and today's
//! block. Each client of a test shares one 127.x.y.z source address, as the
//! subscribers of a carrier share its NAT.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

use mtguard::config::OnProbe;
use mtguard::proxy::inspect::Mtproto;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::{BlockCause, CapRefusal, Level, Policy, RejectReason};
use mtguard_tests::{
    closed_by_guard, connect_from, fake_tls_hello, metric, test_guard, unix_now, EchoBackend, Relay,
};

/// "ee" + key + hex("example.com").
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

/// Level 1 as shipped, but for two timings that depend on the machine's
/// speed and not on the rules each test is about: under-attack mode
/// (whether a burst of loopback connections crosses its global rate) and
/// the 10 s handshake deadline (which a slow machine could reach while
/// silent connections are still meant to be held).
fn level1() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.attack_enter_per_second = None;
    p.handshake_timeout = Some(Duration::from_secs(120));
    p
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// The relay in front of an echo backend, inspecting with [`FAKE_TLS`]
/// (`inspect`) or not at all.
fn relay(policy: Policy, inspect: bool) -> (Relay, EchoBackend) {
    let backend = EchoBackend::start();
    let mtproto = inspect.then(|| {
        let secret = Secret::parse(FAKE_TLS).unwrap();
        Arc::new(
            Mtproto::new(&[secret], TimeWindow::default(), OnProbe::Close, None, None).unwrap(),
        )
    });
    (
        Relay::start(test_guard(policy), backend.addr, mtproto),
        backend,
    )
}

/// Makes sure this process may hold `n` descriptors: the relay runs in it,
/// so every connection costs a client socket, the relay's two and the echo
/// backend's one. Raises the soft limit to the hard one when needed.
fn need_fds(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard): (u64, u64) = (
        fields[3].parse().unwrap(),
        fields[4].parse().unwrap_or(u64::MAX),
    );
    if soft >= n {
        return;
    }
    assert!(
        hard >= n,
        "this test needs {n} open files; the hard limit is {hard}"
    );
    let ok = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "prlimit could not raise the open-files limit to {hard}"
    );
}

/// A Telegram user behind `from`: a valid fake-TLS hello (distinct by
/// `n`, so the replay cache does not take it for a replay) that the echo
/// backend sends back through the guard.
fn user(from: IpAddr, to: std::net::SocketAddr, n: u32) -> Option<TcpStream> {
    let mut s = connect_from(from, to).ok()?;
    let hello = fake_tls_hello(FAKE_TLS, "example.com", unix_now(), n.to_le_bytes());
    s.write_all(&hello).ok()?;
    let mut back = vec![0; hello.len()];
    s.read_exact(&mut back).ok()?;
    (back == hello).then_some(s)
}

/// Whether a connection is still served: a few bytes come back.
fn still_served(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Sends `bytes` (nothing if empty) and reads: whether the guard closed the
/// connection (EOF or reset) rather than leave it open.
fn closed(from: IpAddr, to: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let Ok(mut s) = connect_from(from, to) else {
        return true;
    };
    let _ = s.write_all(bytes);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    closed_by_guard(&mut s)
}

fn rejected(r: &Relay, reason: RejectReason) -> u64 {
    r.guard.with(|e, _| e.stats().rejected[reason as usize])
}

#[test]
fn five_hundred_users_behind_one_address_are_served_while_a_flood_next_door_is_blocked() {
    need_fds(4_000);
    let p = level1();
    let (h, _backend) = relay(p, true);
    let nat = ip(60, 0, 1);
    let flooder = ip(60, 0, 2);
    let listen = h.listen;
    // At the same time: 101 silent connections from another address, held
    // open, then more until it is blocked.
    let flood = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(connect_from(flooder, listen).unwrap());
        }
        let mut refusals = 0;
        while refusals < 40 {
            assert!(
                closed(flooder, listen, b""),
                "connection {} past the limit served",
                100 + refusals
            );
            refusals += 1;
        }
        held
    });
    let mut users = Vec::new();
    for n in 0..500 {
        let s =
            user(nat, listen, n).unwrap_or_else(|| panic!("user {n} behind the NAT not served"));
        users.push(s);
    }
    let held = flood.join().unwrap();
    assert_eq!(held.len(), 100);
    // 500 authenticated from one address, five times the limit that binds
    // strangers, and never blocked.
    h.wait_until("500 authenticated connections", |e| {
        e.authenticated_connections() == 500
    });
    let nat_info = h.guard.with(|e, _| e.client_info(nat)).unwrap();
    assert_eq!(nat_info.authenticated_connections, 500);
    assert!(nat_info.shared && !nat_info.blocked);
    assert_eq!(nat_info.offences, 0);
    for (n, s) in users.iter_mut().enumerate() {
        assert!(still_served(s), "user {n} cut off");
    }
    // The flooder tripped the pending limit at its 101st connection and was
    // blocked after block_after_violations refusals, as before.
    assert!(h.guard.with(|e, _| e.is_blocked(flooder)));
    let block = h
        .guard
        .with(|e, _| e.blocks().find(|b| b.client == e.client_key(flooder)));
    assert_eq!(block.unwrap().cause, BlockCause::Violations);
    assert_eq!(
        rejected(&h, RejectReason::TooManyConnections),
        u64::from(p.block_after_violations)
    );
    assert_eq!(
        rejected(&h, RejectReason::Blocked),
        40 - u64::from(p.block_after_violations)
    );
    assert_eq!(rejected(&h, RejectReason::AuthenticatedLimit), 0);
    let m = mtguard::admin::render_metrics(&h.guard, &h.telemetry);
    assert_eq!(metric(&m, "mtguard_connections_authenticated"), 500);
    assert_eq!(metric(&m, "mtguard_connections_pending"), 100);
    assert_eq!(metric(&m, "mtguard_shared_clients"), 1);
    drop(held);
}

#[test]
fn three_hundred_users_and_a_scanner_behind_one_address_keep_being_served() {
    need_fds(3_000);
    let p = level1();
    let (h, _backend) = relay(p, true);
    let nat = ip(61, 0, 1);
    let mut users: Vec<_> = (0..300)
        .map(|n| user(nat, h.listen, n).unwrap_or_else(|| panic!("user {n} not served")))
        .collect();
    // The scanner behind the same NAT: three times the failures that mark
    // a stranger, a tenth of the address's handshakes.
    let failures = 3 * u32::from(p.scanner_failures);
    for i in 0..failures {
        assert!(
            closed(nat, h.listen, &[0x42; 64]),
            "garbage {i} not refused"
        );
    }
    h.wait_until("the garbage to be judged", |e| {
        e.stats().handshakes[mtguard_core::HandshakeOutcome::Invalid as usize]
            == u64::from(failures)
    });
    assert!(
        !h.guard.with(|e, _| e.is_blocked(nat)),
        "the NAT was blocked for one scanner"
    );
    assert_eq!(h.guard.with(|e, _| e.stats().scanners), 0);
    for (n, s) in users.iter_mut().enumerate() {
        assert!(still_served(s), "user {n} cut off");
    }
    // New users behind it are still welcome.
    assert!(user(nat, h.listen, 1_000).is_some());
}

/// What a flood from one address with no valid handshake meets:
/// `(accepted, too_many_connections, blocked refusals, block cause)`.
fn silent_flood(inspect: bool, from: IpAddr) -> (u64, u64, u64, BlockCause) {
    let p = level1();
    let (h, _backend) = relay(p, inspect);
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(connect_from(from, h.listen).unwrap());
    }
    for i in 0..30 {
        assert!(
            closed(from, h.listen, b""),
            "connection {} past the limit served",
            100 + i
        );
    }
    let block = h
        .guard
        .with(|e, _| e.blocks().find(|b| b.client == e.client_key(from)))
        .expect("the flooder is blocked");
    let s = h.guard.with(|e, _| *e.stats());
    assert_eq!(s.authenticated, 0);
    assert_eq!(s.authenticated_cap_refusals[CapRefusal::Accept as usize], 0);
    drop(held);
    (
        s.accepted,
        s.rejected[RejectReason::TooManyConnections as usize],
        s.rejected[RejectReason::Blocked as usize],
        block.cause,
    )
}

#[test]
fn a_flood_with_no_valid_handshake_is_refused_and_blocked_exactly_as_without_inspection() {
    need_fds(1_000);
    let with = silent_flood(true, ip(62, 0, 1));
    let without = silent_flood(false, ip(62, 0, 2));
    assert_eq!(with, without);
    // 100 admitted, 20 refusals to the block, the rest refused as blocked.
    assert_eq!(with, (100, 20, 10, BlockCause::Violations));

    // Garbage instead of silence: a scanner, blocked at scanner_failures.
    let p = level1();
    let (h, _backend) = relay(p, true);
    let scanner = ip(62, 0, 3);
    for i in 0..3 * u32::from(p.scanner_failures) {
        assert!(
            closed(scanner, h.listen, &[0x42; 64]),
            "garbage {i} not refused"
        );
    }
    h.wait_until("the scanner to be blocked", |e| e.is_blocked(scanner));
    let s = h.guard.with(|e, _| *e.stats());
    assert_eq!(s.scanners, 1);
    assert_eq!(s.blocks, 1);
    assert_eq!(s.accepted, u64::from(p.scanner_failures));
    sleep(Duration::from_millis(50));
    assert!(!h.guard.with(|e, _| e.client_info(scanner).unwrap().shared));
}

#[test]
fn check_config_says_when_users_behind_one_address_cannot_be_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let cfg = dir.path().join("mtguard.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(mtguard_tests::mtguard_bin())
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let state = format!("[state]\ndir = {:?}\n", dir.path().join("state"));
    let without = check(&state);
    let note = without
        .lines()
        .find(|l| l.starts_with("note: no MTProto inspection"))
        .unwrap_or_else(|| panic!("no note in:\n{without}"));
    assert!(note.contains("max_connections_per_ip = 100"), "{note}");
    assert!(note.contains("docs/carrier-nat.md"), "{note}");
    let off = check(&format!(
        "{state}[mtproto]\nsecrets = [\"{FAKE_TLS}\"]\ninspect = false\n"
    ));
    assert!(off.contains("note: no MTProto inspection"), "{off}");
    let with = check(&format!("{state}[mtproto]\nsecrets = [\"{FAKE_TLS}\"]\n"));
    assert!(!with.contains("note: no MTProto inspection"), "{with}");
    assert!(with.contains("max_authenticated_per_ip"), "{with}");
}
