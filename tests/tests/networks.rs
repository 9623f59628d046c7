//! The network tier end to end (issue 17), on loopback: clients bind many
//! 127.x.y.z source addresses, so one 127.0.1.0/24 can meet its cap while
//! the 127.0.2.0/24 next to it is served; refusals never block; and with
//! inspection, the users who prove a secret leave the network's count.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mtguard::config::OnProbe;
use mtguard::proxy::inspect::Mtproto;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::{Level, Policy, RejectReason};
use mtguard_tests::{
    closed_by_guard, connect_from, fake_tls_hello, metric, served, test_guard, unix_now,
    EchoBackend, Relay,
};

/// "ee" + key + hex("example.com").
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

/// Level 1 with the network tier on (`conns` pending connections per /24,
/// no rate limit), without the two timings that depend on the machine's
/// speed: under-attack mode and the handshake deadline.
fn tier(conns: u32) -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.attack_enter_per_second = None;
    p.handshake_timeout = Some(Duration::from_secs(120));
    p.max_connections_per_network = conns;
    p
}

fn ip(b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, b, c, d))
}

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

/// Raises this process's open-files soft limit to `n` if it is lower (the
/// relay runs in the test process: each held connection costs four).
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
    assert!(ok.success(), "prlimit could not raise the open-files limit");
}

/// Connects from `from` and checks the echo: `Some` stream if served.
fn serve(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let mut s = connect_from(from, to).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    served(&mut s).then_some(s)
}

/// Whether a connection from `from` is closed by the guard unserved.
fn refused(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut s) = connect_from(from, to) else {
        return true;
    };
    let _ = s.write_all(b"ping\n");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    closed_by_guard(&mut s)
}

fn rejected(r: &Relay, reason: RejectReason) -> u64 {
    r.guard.with(|e, _| e.stats().rejected[reason as usize])
}

#[test]
fn one_slash_24_is_refused_at_its_cap_while_the_next_is_served() {
    need_fds(2_000);
    let (h, _backend) = relay(tier(100), false);
    // 200 clients of 127.0.1.0/24, one connection each, all held: each is
    // far under its own limit of 100; the /24 holds 100.
    let mut held = Vec::new();
    for d in 1..=100 {
        held.push(serve(ip(0, 1, d), h.listen).unwrap_or_else(|| panic!("127.0.1.{d} refused")));
    }
    for d in 101..=200 {
        assert!(
            refused(ip(0, 1, d), h.listen),
            "127.0.1.{d} served past the cap"
        );
    }
    h.wait_until("100 network refusals", |e| {
        e.stats().rejected[RejectReason::NetworkConnections as usize] == 100
    });
    // 127.0.2.0/24 is another network: its first 100 are served.
    for d in 1..=100 {
        held.push(serve(ip(0, 2, d), h.listen).unwrap_or_else(|| panic!("127.0.2.{d} refused")));
    }
    // One client of the full /24 knocking 30 times, past
    // block_after_violations (20), is refused but never blocked.
    for _ in 0..30 {
        assert!(refused(ip(0, 1, 250), h.listen));
    }
    h.wait_until("130 network refusals", |e| {
        e.stats().rejected[RejectReason::NetworkConnections as usize] == 130
    });
    assert_eq!(h.guard.with(|e, _| e.blocked_clients()), 0);
    assert_eq!(rejected(&h, RejectReason::TooManyConnections), 0);
    for (n, s) in held.iter_mut().enumerate() {
        assert!(served(s), "held connection {n} cut off");
    }
    let info = h.guard.with(|e, _| e.network_info(ip(0, 1, 7))).unwrap();
    assert_eq!((info.network, info.prefix), (ip(0, 1, 0), 24));
    assert_eq!(info.live_connections, 100);
    let m = mtguard::admin::render_metrics(&h.guard, &h.telemetry);
    assert_eq!(
        metric(
            &m,
            r#"mtguard_connections_rejected_total{reason="network_connections"}"#
        ),
        130
    );
    assert_eq!(metric(&m, "mtguard_tracked_networks"), 2);
    // Closing frees places in the /24.
    held.truncate(50);
    h.wait_until("the /24 to hold 50", |e| {
        e.network_info(ip(0, 1, 1)).unwrap().live_connections == 50
    });
    assert!(serve(ip(0, 1, 201), h.listen).is_some());
}

/// A Telegram user behind `from`: a valid fake-TLS hello, distinct by `n`,
/// echoed back through the guard.
fn user(from: IpAddr, to: SocketAddr, n: u32) -> Option<TcpStream> {
    let mut s = connect_from(from, to).ok()?;
    let hello = fake_tls_hello(FAKE_TLS, "example.com", unix_now(), n.to_le_bytes());
    s.write_all(&hello).ok()?;
    let mut back = vec![0; hello.len()];
    s.read_exact(&mut back).ok()?;
    (back == hello).then_some(s)
}

#[test]
fn users_who_prove_a_secret_do_not_fill_their_network() {
    need_fds(2_000);
    let (h, _backend) = relay(tier(20), true);
    // 120 authenticated users from 60 addresses of one /24: six times the
    // network's cap, all served.
    let mut users = Vec::new();
    for n in 0..120u32 {
        let from = ip(0, 3, (n % 60) as u8 + 1);
        users.push(user(from, h.listen, n).unwrap_or_else(|| panic!("user {n} refused")));
    }
    h.wait_until("120 authenticated", |e| {
        e.authenticated_connections() == 120
    });
    // Strangers that prove nothing are what the cap binds: 20 silent ones
    // are held, the 21st is refused.
    let mut silent = Vec::new();
    for d in 100..120 {
        silent.push(connect_from(ip(0, 3, d), h.listen).unwrap());
    }
    h.wait_until("20 pending", |e| {
        e.network_info(ip(0, 3, 1)).unwrap().live_connections == 140
    });
    assert!(refused(ip(0, 3, 121), h.listen));
    assert_eq!(rejected(&h, RejectReason::NetworkConnections), 1);
    let info = h.guard.with(|e, _| e.network_info(ip(0, 3, 1))).unwrap();
    assert_eq!(info.authenticated_connections, 120);
    // A new user is a stranger too until its hello is judged: while the
    // silent ones fill the cap it waits for them to go (at the latest at
    // the handshake deadline), as at the per-client limit.
    assert!(user(ip(0, 3, 5), h.listen, 1_000).is_none());
    drop(silent);
    h.wait_until("the silent ones to close", |e| {
        e.network_info(ip(0, 3, 1)).unwrap().live_connections == 120
    });
    assert!(user(ip(0, 3, 5), h.listen, 1_001).is_some());
    for (n, s) in users.iter_mut().enumerate() {
        assert!(served(s), "user {n} cut off");
    }
}
