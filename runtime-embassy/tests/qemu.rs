//! The appliance image, booted: runtime-embassy/firmware-mps2 built for
//! thumbv7em-none-eabihf, run by `qemu-system-arm -M mps2-an500` on a tap
//! device in a network namespace each test creates (and always deletes),
//! with clients on many addresses of that namespace, a backend and an SNTP
//! server there. What the guard decides is read from its UART log.
//!
//! Needs root and qemu-system-arm (`./test.sh` installs it); without them
//! these tests fail, they do not skip.

mod qemu_harness;
mod script;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown};
use std::time::{Duration, Instant};

use mtguard_config_block::ApplianceConfig;
use mtguard_core::{Level, Policy, RejectReason};
use qemu_harness::*;
use script::{Seen, Step, SCRIPT};

const CLASSIC: &str = "0123456789abcdef0123456789abcdef";
const DD: &str = "dd0123456789abcdef0123456789abcdef";
const KEY: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];
const DOMAIN: &str = "example.com";
/// `ee` + the key + hex of "example.com".
const EE: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

/// The same small policy as the in-memory tests (common::small_policy),
/// written as an operator writes it.
const SMALL: &str = r#"
level = 1
[limits]
max_connections_per_ip = 2
block_after_violations = 2
block_duration = "1s"
max_block_duration = "1s"
block_jitter_permille = 0
scanner_failures = 2
"#;

fn small_policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.max_connections_per_client = 2;
    p.block_after_violations = 2;
    p.block_duration = Duration::from_secs(1);
    p.max_block_duration = Duration::from_secs(1);
    p.block_jitter_permille = 0;
    p.scanner_failures = 2;
    p
}

fn telethon(name: &str) -> Vec<u8> {
    let text = include_str!("../../core/tests/vectors/obfuscated2.txt");
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .expect("vector");
    let hex = line.split(' ').nth(3).unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(salt);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sends `first` from `from`; `Some(stream)` if the backend's answer to
/// it came back (admitted), `None` if the guard reset the connection.
fn try_handshake(from: Ipv4Addr, first: &[u8]) -> Option<std::net::TcpStream> {
    let mut s = connect_or_reset(from)?;
    let _ = s.write_all(first);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    use std::io::Read;
    while got.len() < first.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got, xor(first), "the backend's answer, byte for byte");
    Some(s)
}

/// Connects from `from`; `None` if the appliance reset the connection
/// before the handshake completed. It admits at accept: a refusal it
/// decides before its stack has answered the SYN resets the SYN itself,
/// so the refusal shows at connect (and is logged like any other).
fn connect_or_reset(from: Ipv4Addr) -> Option<std::net::TcpStream> {
    match connect(from) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("tcp connect from {from}: {e}"),
    }
}

fn reason_in(line: &str) -> RejectReason {
    *RejectReason::ALL
        .iter()
        .find(|r| line.contains(&format!("reason: {r:?} ")))
        .unwrap_or_else(|| panic!("no reason in {line:?}"))
}

#[test]
fn the_booted_image_decides_as_the_server_runtime() {
    let block = block(SMALL, &[CLASSIC, DD], false);
    // The operator's file gives the policy the in-memory tests use.
    assert_eq!(
        ApplianceConfig::decode(&block).unwrap().policy,
        small_policy()
    );
    let want = script::on_server(small_policy(), |c| client(c as u8));
    assert_eq!(want[2], Seen::Refused(RejectReason::TooManyConnections));
    assert_eq!(want[7], Seen::Refused(RejectReason::Blocked));
    assert_eq!(want[9], Seen::Refused(RejectReason::Blocked));

    let (mut a, _) = Appliance::boot_serving("script", &block);
    let backend = Backend::start();
    let mut held = Vec::new();
    let mut seen = Vec::new();
    for (n, step) in SCRIPT.into_iter().enumerate() {
        let outcome = match step {
            Step::Hold(c) => {
                let ip = client(c as u8);
                match try_handshake(ip, &obfs2_header(&KEY, n as u64)) {
                    Some(s) => {
                        held.push(s);
                        Seen::Admitted
                    }
                    None => {
                        let line = a.expect(&format!("Refused {{ client: {ip}, "));
                        Seen::Refused(reason_in(&line))
                    }
                }
            }
            Step::Probe(c) => {
                let ip = client(c as u8);
                if let Some(mut s) = connect_or_reset(ip) {
                    let _ = s.write_all(&payload(64, 7));
                    assert!(read_to_end(&mut s).is_err(), "a probe is reset");
                }
                let refused = format!("Refused {{ client: {ip}, ");
                let probe = format!("Closed {{ client: {ip}, end: Probe(");
                let line = a.expect_any(&[&refused, &probe]);
                if line.contains(&refused) {
                    Seen::Refused(reason_in(&line))
                } else {
                    Seen::ProbeClosed
                }
            }
            Step::Release => {
                let n = held.len();
                for s in held.drain(..) {
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut s = s;
                    assert!(read_to_end(&mut s).is_ok(), "a FIN comes back");
                }
                // The guard has told its engine of every close.
                for _ in 0..n {
                    a.expect("end: Done");
                }
                Seen::Released
            }
        };
        seen.push(outcome);
    }
    assert_eq!(seen, want);
    // Only the admitted connections reached the backend.
    let admitted = want.iter().filter(|s| **s == Seen::Admitted).count();
    assert_eq!(backend.count(), admitted);
}

#[test]
fn recorded_client_handshakes_are_served_byte_for_byte() {
    let block = block("level = 1\n", &[CLASSIC, DD], false);
    let (_a, _) = Appliance::boot_serving("vectors", &block);
    let backend = Backend::start();
    let names = [
        "classic-abridged",
        "classic-intermediate",
        "classic-padded",
        "dd-padded",
        "dd-padded-media",
    ];
    let mut sent = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let header = telethon(name);
        let mut s = try_handshake(client(10 + i as u8), &header)
            .unwrap_or_else(|| panic!("{name} refused"));
        let data = payload(20_000, i as u8);
        s.write_all(&data).unwrap();
        assert_eq!(read_exact(&mut s, data.len()), xor(&data), "{name}: reply");
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), Ok(Vec::new()), "{name}: FIN back");
        sent.push([header, data].concat());
    }
    let mut got = backend.received();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "the backend got exactly what the clients sent");
}

#[test]
fn garbage_and_replays_are_reset_and_never_reach_the_backend() {
    let block = block("level = 1\n", &[CLASSIC, DD], false);
    let (mut a, _) = Appliance::boot_serving("garbage", &block);
    let backend = Backend::start();
    let probes: [(&str, Vec<u8>); 4] = [
        ("random bytes", payload(64, 3)),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("dc too large", telethon("dc-too-large")),
        ("dc zero", telethon("dc-zero")),
    ];
    for (i, (what, bytes)) in probes.iter().enumerate() {
        let ip = client(20 + i as u8);
        let mut s = connect(ip).unwrap();
        let _ = s.write_all(bytes);
        assert!(read_to_end(&mut s).is_err(), "{what}: reset");
        a.expect(&format!("Closed {{ client: {ip}, end: Probe("));
    }
    let header = telethon("dd-padded");
    let s = try_handshake(client(30), &header).expect("first use served");
    drop(s);
    // The same header again, from elsewhere: a replay.
    let ip = client(31);
    let mut s = connect(ip).unwrap();
    let _ = s.write_all(&header);
    assert!(read_to_end(&mut s).is_err(), "a replay is reset");
    a.expect(&format!("Closed {{ client: {ip}, end: Probe(Replay)"));
    assert_eq!(
        backend.received(),
        vec![header],
        "only the first use reached the backend"
    );
}

#[test]
fn a_silent_client_is_timed_out() {
    let toml = "level = 1\n[limits]\nhandshake_timeout = \"2s\"\n";
    let block = block(toml, &[CLASSIC], false);
    let (mut a, _) = Appliance::boot_serving("silent", &block);
    let backend = Backend::start();
    let ip = client(40);
    let mut s = connect(ip).unwrap();
    let t = Instant::now();
    let end = read_to_end(&mut s);
    assert!(end.is_err(), "cut with a reset, got {end:?}");
    a.expect("HandshakeTimeout");
    a.expect(&format!("Closed {{ client: {ip}, end: HandshakeTimeout"));
    println!(
        "silent client cut after {:?} (handshake_timeout 2 s)",
        t.elapsed()
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn full_slots_refuse_at_syn_and_recover() {
    let block = block("level = 1\n", &[CLASSIC], false);
    let (mut a, _) = Appliance::boot_serving("slots", &block);
    let _backend = Backend::start();
    // The image has 8 slots.
    let mut held: Vec<_> = (0..8)
        .map(|i| {
            try_handshake(client(50 + i), &obfs2_header(&KEY, 500 + u64::from(i))).expect("served")
        })
        .collect();
    let ip = client(60);
    match connect(ip) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a ninth client was accepted with every slot busy"),
    }
    // Refused by the stack, so the engine never heard of it.
    assert!(!a.logged(&format!("client: {ip},")));

    let s = held.pop().unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut s = s;
    assert!(read_to_end(&mut s).is_ok());
    a.expect("end: Done");
    // The freed slot listens again once its socket has closed.
    let deadline = Instant::now() + PATIENCE;
    let served = loop {
        if let Ok(mut s) = connect(ip) {
            let header = obfs2_header(&KEY, 900);
            let _ = s.write_all(&header);
            break read_exact(&mut s, 64) == xor(&header);
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot never listened again"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(served);
}

#[test]
fn fake_tls_waits_for_the_clock() {
    let block = block("level = 1\n", &[EE], true);
    let (mut a, _) = Appliance::boot_serving("faketls", &block);
    let backend = Backend::start();
    let sntp = Sntp::start();

    let hello = mtguard_tests::fake_tls_hello(EE, DOMAIN, mtguard_tests::unix_now(), [1, 0, 0, 0]);
    let ip = client(33);
    let mut s = connect(ip).unwrap();
    s.write_all(&hello).unwrap();
    assert!(read_to_end(&mut s).is_err(), "no clock: reset");
    a.expect(&format!("Closed {{ client: {ip}, end: NoClock"));

    sntp.enabled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    a.expect("sntp: clock set to");

    let hello = mtguard_tests::fake_tls_hello(EE, DOMAIN, mtguard_tests::unix_now(), [2, 0, 0, 0]);
    let mut s =
        try_handshake(client(34), &hello).expect("a valid hello is served once the clock is set");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut s).is_ok());

    let old =
        mtguard_tests::fake_tls_hello(EE, DOMAIN, mtguard_tests::unix_now() - 3600, [3, 0, 0, 0]);
    let ip = client(35);
    let mut s = connect(ip).unwrap();
    s.write_all(&old).unwrap();
    assert!(read_to_end(&mut s).is_err(), "outside the window: reset");
    a.expect(&format!("Closed {{ client: {ip}, end: Probe(Timestamp)"));
    assert_eq!(backend.received(), vec![hello]);
}

#[test]
fn only_a_good_config_block_serves() {
    let good = block("level = 1\n", &[], false);

    let (a, boot) = Appliance::boot_serving("good", &good);
    let backend = Backend::start();
    let mut s = try_handshake(client(36), b"no inspection without secrets").expect("served");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut s).is_ok());
    assert_eq!(backend.count(), 1);
    println!("boot to listening: {boot:?}");
    drop((a, s));

    let mut corrupt = good.clone();
    corrupt[40] ^= 0x01;
    let mut a = Appliance::boot("corrupt", Some(&corrupt));
    a.expect("config: refused: config block checksum mismatch");
    assert!(
        connect(client(37)).is_err(),
        "a corrupt block serves nobody"
    );
    assert!(!a.logged("guard: listening"));
    drop(a);

    let mut a = Appliance::boot("none", None);
    a.expect("config: refused: no config block");
    assert!(connect(client(38)).is_err(), "no block serves nobody");
    assert!(!a.logged("guard: listening"));
}

#[test]
fn dhcp_gives_the_appliance_its_address() {
    let block = block_with("level = 1\n", &[], false, true);
    let leased = Ipv4Addr::new(10, 19, 0, 50);
    let ns = NetNs::create("dhcp");
    let _dhcp = Dhcp::start(&ns, leased);
    let mut a = Appliance::boot_in(ns, Some(&block), image());
    a.expect("config: address dhcp");
    a.expect(&format!("net: up, address {leased}/24"));
    a.expect("guard: listening");
    let _backend = Backend::start();
    let mut s = connect_to(client(39), std::net::SocketAddrV4::new(leased, PORT))
        .expect("served at the leased address");
    let data = b"hello over a leased address";
    s.write_all(data).unwrap();
    assert_eq!(read_exact(&mut s, data.len()), xor(data));
}

/// Figures, printed (run with --nocapture): boot time, connections per
/// second and throughput through the emulated appliance. They measure
/// QEMU on this host, not a Cortex-M7 board. Only correctness is asserted.
#[test]
fn measure_the_emulated_appliance() {
    let block = block("level = 1\n", &[CLASSIC], false);
    let (a, boot) = Appliance::boot_serving("measure", &block);
    let _backend = Backend::start();
    // The image's own stamp (uptime from reset) on its listening line.
    let listening = a
        .log
        .lines()
        .into_iter()
        .find(|l| l.contains("guard: listening"))
        .unwrap();

    // Connections: handshake, the answer, close; one after the other,
    // rotating over 48 client addresses (the per-client rate limit of
    // level 1 is 300 a minute). One round first, untimed.
    for i in 0..48 {
        let mut s =
            try_handshake(client(i), &obfs2_header(&KEY, 5_000 + u64::from(i))).expect("served");
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut s).is_ok());
    }
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(3) {
        let header = obfs2_header(&KEY, 10_000 + n);
        let mut s = try_handshake(client((n % 48) as u8), &header).expect("served");
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_end(&mut s).is_ok());
        n += 1;
    }
    let cps = n as f64 / t.elapsed().as_secs_f64();

    // Throughput: 4 MiB up and the same back, on one connection.
    let mut s = try_handshake(client(49), &obfs2_header(&KEY, 1)).expect("served");
    let data = payload(4 << 20, 9);
    let mut reader = s.try_clone().unwrap();
    let len = data.len();
    let t = Instant::now();
    let read = std::thread::spawn(move || read_exact(&mut reader, len));
    s.write_all(&data).unwrap();
    let back = read.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        back == xor(&data),
        "4 MiB came back transformed, byte for byte"
    );
    let mbit = (2.0 * len as f64 * 8.0) / secs / 1e6;
    println!(
        "QEMU mps2-an500 (emulator on this host, not a board): boot to listening {:.0} ms \
         from starting QEMU (image log: {listening:?}), {cps:.0} connections/s sequential, \
         {mbit:.1} Mbit/s through (4 MiB each way in {secs:.2} s)",
        boot.as_secs_f64() * 1e3
    );
}
