//! Issue 14, end to end on loopback through the guard and its inspecting
//! relay: one burst from one client is one offence (30 garbage handshakes,
//! or 30 silent connections that reach the deadline together), and an
//! obfuscated2 client whose random header starts like a TLS record is
//! served on a listener that also has an `ee` secret.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mtguard::config::OnProbe;
use mtguard::proxy::inspect::Mtproto;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::{BlockCause, HandshakeOutcome, Level, Policy};
use mtguard_tests::{closed_by_guard, connect_from, test_guard, EchoBackend, Relay};

const CLASSIC: &str = "0123456789abcdef0123456789abcdef";
const TLS_PREFIX: &str = include_str!("../../core/tests/vectors/tls_prefix.txt");
const BURST: usize = 30;

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Level 1 as shipped (jitter included), with a short handshake deadline so
/// the silent burst times out within the test, and without under-attack
/// mode, which a loaded test machine could otherwise enter.
fn level1() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.handshake_timeout = Some(Duration::from_secs(1));
    p.attack_enter_per_second = None;
    p
}

fn relay(policy: Policy, secrets: &[&str], backend: SocketAddr) -> Relay {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::parse(s).unwrap()).collect();
    let state = Mtproto::new(&secrets, TimeWindow::default(), OnProbe::Close, None, None).unwrap();
    Relay::start(test_guard(policy), backend, Some(Arc::new(state)))
}

/// Opens the whole burst before anything is judged, as one app behind one
/// NAT address does: every connection is admitted before any block.
fn open_burst(r: &Relay, from: IpAddr) -> Vec<TcpStream> {
    let conns: Vec<TcpStream> = (0..BURST)
        .map(|i| connect_from(from, r.listen).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    r.wait_until("the whole burst to be admitted", |e| {
        e.client_info(from)
            .is_some_and(|c| usize::from(c.live_connections) == BURST)
    });
    conns
}

/// The client's offences, and its block: cause and milliseconds left.
fn block_of(r: &Relay, from: IpAddr) -> (u8, BlockCause, u64) {
    r.guard.with(|e, now| {
        let key = e.client_key(from);
        let b = e
            .blocks()
            .find(|b| b.client == key)
            .expect("the client is blocked");
        let left = b.until.expect("a timed block").as_millis() - now.as_millis();
        (e.client_info(from).unwrap().offences, b.cause, left)
    })
}

#[test]
fn thirty_garbage_handshakes_from_one_address_are_one_offence() {
    let backend = EchoBackend::start();
    let r = relay(level1(), &[CLASSIC], backend.addr);
    let office = ip(114, 0, 1);
    let mut conns = open_burst(&r, office);
    // 64 bytes no secret decrypts to a known tag, on every connection.
    for c in &mut conns {
        c.write_all(&[0x42; 64]).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(closed_by_guard(c), "garbage connection {i} left open");
    }
    r.wait_until("every garbage handshake to be judged and closed", |e| {
        e.stats().handshakes[HandshakeOutcome::Invalid as usize] == BURST as u64
            && e.active_connections() == 0
    });
    let (offences, cause, left) = block_of(&r, office);
    assert_eq!((offences, cause), (1, BlockCause::Scanner));
    // 300 s plus up to 10 % jitter, not the day-long cap of 21 offences.
    assert!(left <= 330_000, "block of {left} ms");
    assert!(left > 290_000, "block of {left} ms");
    assert_eq!(r.guard.with(|e, _| e.stats().blocks), 1);
    assert_eq!(*backend.accepted.lock().unwrap(), 0, "no garbage forwarded");
}

#[test]
fn thirty_silent_connections_reaching_the_deadline_together_are_one_offence() {
    let backend = EchoBackend::start();
    let r = relay(level1(), &[CLASSIC], backend.addr);
    let office = ip(114, 0, 2);
    let mut conns = open_burst(&r, office);
    r.wait_until("every silent connection to time out and close", |e| {
        e.stats().handshakes[HandshakeOutcome::Timeout as usize] == BURST as u64
            && e.active_connections() == 0
    });
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(closed_by_guard(c), "silent connection {i} left open");
    }
    let (offences, cause, left) = block_of(&r, office);
    assert_eq!((offences, cause), (1, BlockCause::Slowloris));
    assert!(left <= 330_000, "block of {left} ms");
    assert!(left > 290_000, "block of {left} ms");
    assert_eq!(r.guard.with(|e, _| e.stats().blocks), 1);
}

#[test]
fn an_obfuscated2_client_whose_header_starts_like_tls_is_served_beside_an_ee_secret() {
    let backend = EchoBackend::start();
    for name in [
        "tls-16030100-abridged",
        "tls-1603013f-intermediate",
        "tls-160301ff-padded-dd",
    ] {
        let line = TLS_PREFIX
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        let secrets: Vec<&str> = f[1].split(',').collect();
        assert!(secrets.iter().any(|s| s.starts_with("ee")), "{name}");
        let header = hex(f[3]);
        let r = relay(level1(), &secrets, backend.addr);
        let mut c = connect_from(ip(114, 0, 3), r.listen).unwrap();
        // The header alone, then nothing until it is answered: the guard
        // must not wait for the TLS record its random bytes seem to start.
        c.write_all(&header).unwrap();
        r.wait_until("the header to be judged", |e| {
            e.stats().handshakes[HandshakeOutcome::Valid as usize] == 1
        });
        // The echo backend got the header and sends it back.
        let mut echo = [0u8; 64];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(echo.as_slice(), header.as_slice(), "{name}");
    }
}
