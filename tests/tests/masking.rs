//! What a refused source sees (`[refusal]`), on loopback against real
//! peers: `openssl s_server` as the cover site and `openssl s_client` as
//! the prober, which must complete its handshake with the cover site's
//! certificate when a failed handshake or a blocked client is masked; a
//! replayed ClientHello masked to the same server, which answers it with
//! its certificate; drop, reset and the TLS alerts; the caps on held and
//! masked connections and the bounds of one masked connection; the config.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use mtguard::config::{Answer, Config, RefusalSettings};
use mtguard::proxy::inspect::Mtproto;
use mtguard::telemetry::Telemetry;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::{BlockCause, Level, Policy};
use mtguard_tests::{connect_from, fake_tls_hello, test_guard, unix_now, OpensslServer, Relay};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

/// "ee" + key + hex("example.com").
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";
const DOMAIN: &str = "example.com";

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

fn policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.block_jitter_permille = 0;
    p.attack_enter_per_second = None;
    p
}

/// The real TLS server behind the guard: `openssl s_server` with a
/// certificate of its own (from rcgen); killed when dropped.
struct Cover {
    _server: OpensslServer,
    addr: SocketAddr,
    /// The certificate it presents.
    der: Vec<u8>,
    pem: String,
    _dir: tempfile::TempDir,
}

impl Cover {
    fn start() -> Cover {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "cover.example.com");
        params.subject_alt_names = vec![SanType::DnsName(DOMAIN.try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cover.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("cover.key"), key.serialize_pem()).unwrap();
        let server = OpensslServer::start(
            dir.path(),
            &["-cert", "cover.pem", "-key", "cover.key", "-WWW"],
        );
        Cover {
            addr: SocketAddr::from(([127, 0, 0, 1], server.port)),
            _server: server,
            der: cert.der().to_vec(),
            pem: cert.pem(),
            _dir: dir,
        }
    }
}

/// The base64 of a PEM block, without line breaks.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect()
}

/// `openssl s_client -connect ADDR -servername NAME`, stdin closed: its
/// output, and whether it completed a handshake presenting `cover`'s
/// certificate.
fn s_client_sees(addr: SocketAddr, cover: &Cover) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_client"])
        .args(["-connect", &addr.to_string(), "-servername", DOMAIN])
        .arg("-showcerts")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("openssl is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let presented = pem_body(&text);
    let handshake_done = text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (
        handshake_done && !presented.is_empty() && presented == pem_body(&cover.pem),
        text,
    )
}

/// A plain TCP cover site that counts its connections and holds each
/// until the peer closes (echoing with `echo`).
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    most_open: Arc<AtomicU64>,
}

impl Counting {
    fn start(echo: bool) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let most_open = Arc::new(AtomicU64::new(0));
        let (a, o, m) = (accepted.clone(), open.clone(), most_open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || (echo && stream.write_all(&buf[..n]).is_err()) {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            addr,
            accepted,
            open,
            most_open,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Waits until `cond` holds (10 s at most).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        sleep(Duration::from_millis(5));
    }
}

/// A guard inspecting for [`FAKE_TLS`], in front of a backend that counts
/// its connections, answering refusals as `refusal` says.
struct Guarded {
    relay: Relay,
    backend: Counting,
}

impl Guarded {
    fn start(refusal: RefusalSettings) -> Guarded {
        let backend = Counting::start(true);
        let secrets = [Secret::parse(FAKE_TLS).unwrap()];
        let state = Mtproto::new(
            &secrets,
            TimeWindow::default(),
            Default::default(),
            None,
            None,
        )
        .unwrap();
        let relay = Relay::start_refusing(
            test_guard(policy()),
            backend.addr,
            Some(Arc::new(state)),
            refusal,
        );
        Guarded { relay, backend }
    }

    fn telemetry(&self) -> &Telemetry {
        &self.relay.telemetry
    }

    /// `mtguard_refusals_total{case, answer}`.
    fn given(&self, case: &str, answer: &str) -> u64 {
        self.telemetry()
            .ops
            .refusals
            .counts()
            .into_iter()
            .find(|(c, a, _)| *c == case && *a == answer)
            .unwrap()
            .2
    }

    fn block(&self, who: IpAddr) {
        self.relay
            .guard
            .with(|e, now| e.block(now, who, None, BlockCause::Manual))
            .unwrap();
    }
}

/// Refusal settings answering everything with a reset, the cover site
/// (if any) at `cover`; tests set the keys they are about.
fn settings(cover: Option<SocketAddr>) -> RefusalSettings {
    RefusalSettings {
        mask_backend: cover.map(|c| c.to_string()),
        ..RefusalSettings::default()
    }
}

/// A ClientHello that fails: a fake-TLS one whose HMAC does not match.
fn forged_hello() -> Vec<u8> {
    let mut hello = fake_tls_hello(FAKE_TLS, DOMAIN, unix_now(), [1, 2, 3, 4]);
    hello[20] ^= 1;
    hello
}

/// How a connection the guard holds ends, read with `limit`.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Bytes(Vec<u8>),
    /// Nothing within the read timeout: still open, silent.
    Silent,
    Eof,
    Reset,
}

fn read_once(s: &mut TcpStream, limit: Duration) -> Seen {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Seen::Eof,
        Ok(n) => Seen::Bytes(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Seen::Silent,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Seen::Reset,
        Err(e) => panic!("unexpected read error {e}"),
    }
}

/// Everything until EOF (or a reset, reported as such).
fn read_all(s: &mut TcpStream) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (all, false),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (all, true),
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn a_failed_handshake_is_masked_and_s_client_completes_with_the_cover_sites_certificate() {
    let cover = Cover::start();
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Mask,
        ..settings(Some(cover.addr))
    });
    // s_client's random is no HMAC of the secret: a failed handshake.
    let (seen, text) = s_client_sees(g.relay.listen, &cover);
    assert!(seen, "s_client did not see the cover site:\n{text}");
    assert_eq!(g.backend.accepted(), 0, "the proxy never saw the probe");
    assert_eq!(g.given("failed_handshake", "mask"), 1);
    let invalid = g
        .relay
        .guard
        .with(|e, _| e.stats().handshakes[mtguard_core::HandshakeOutcome::Invalid as usize]);
    assert_eq!(
        invalid, 1,
        "a masked probe still counts as a failed handshake"
    );
    wait_for("the masked connection to end", || {
        g.telemetry().ops.refusals.masked.load(Ordering::SeqCst) == 0
    });
}

/// A TLS 1.2 ClientHello that is also a valid fake-TLS one: what a censor
/// records from a real client and replays. TLS 1.2 so that the cover
/// site's answer carries its certificate in the clear.
fn tls12_fake_hello(unix_time: u64, salt: [u8; 4]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let name = DOMAIN.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = Vec::new();
    ext(&mut extensions, 0x0000, &sni);
    // supported_groups: x25519, secp256r1.
    ext(&mut extensions, 0x000a, &[0, 4, 0, 0x1d, 0, 0x17]);
    // ec_point_formats: uncompressed.
    ext(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256,
    // rsa_pkcs1_sha256.
    ext(&mut extensions, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]);
    // renegotiation_info, empty.
    ext(&mut extensions, 0xff01, &[0]);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0; 32]);
    body.push(32);
    let mut session = [0x5a; 32];
    session[..4].copy_from_slice(&salt);
    body.extend_from_slice(&session);
    // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256.
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    mtguard_tests::stamp_fake_tls(&mut record, FAKE_TLS, unix_time);
    record
}

/// Reads TLS records from `s` until a Certificate handshake message; the
/// first certificate's DER.
fn certificate_answered(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut wire = Vec::new();
    let mut handshake = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // Whole records out of what came so far.
        while wire.len() >= 5 && wire.len() >= 5 + u16::from_be_bytes([wire[3], wire[4]]) as usize {
            let len = u16::from_be_bytes([wire[3], wire[4]]) as usize;
            let record: Vec<u8> = wire.drain(..5 + len).collect();
            assert_eq!(record[0], 22, "a handshake record, not {record:02x?}");
            handshake.extend_from_slice(&record[5..]);
        }
        // Handshake messages out of the records.
        let mut at = 0;
        while handshake.len() >= at + 4 {
            let len =
                u32::from_be_bytes([0, handshake[at + 1], handshake[at + 2], handshake[at + 3]])
                    as usize;
            if handshake.len() < at + 4 + len {
                break;
            }
            if handshake[at] == 11 {
                let m = &handshake[at + 4..at + 4 + len];
                // certificate_list<3>, then the first certificate<3>.
                let first = u32::from_be_bytes([0, m[3], m[4], m[5]]) as usize;
                return m[6..6 + first].to_vec();
            }
            at += 4 + len;
        }
        let n = s.read(&mut buf).expect("the cover site's answer");
        assert!(n > 0, "closed before a Certificate message");
        wire.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_replayed_hello_is_masked_and_the_cover_site_answers_with_its_certificate() {
    let cover = Cover::start();
    let g = Guarded::start(RefusalSettings {
        replay: Answer::Mask,
        ..settings(Some(cover.addr))
    });
    let hello = tls12_fake_hello(unix_now(), [9, 9, 9, 9]);
    // The client it was recorded from: valid, forwarded to the proxy.
    let mut client = connect_from(ip(50, 0, 1), g.relay.listen).unwrap();
    client.write_all(&hello).unwrap();
    wait_for("the valid hello to reach the proxy", || {
        g.backend.accepted() == 1
    });
    // The censor replays it: the cover site answers it, certificate and
    // all, as it would answer the real client.
    let mut censor = connect_from(ip(50, 0, 2), g.relay.listen).unwrap();
    censor.write_all(&hello).unwrap();
    assert_eq!(certificate_answered(&mut censor), cover.der);
    assert_eq!(
        g.backend.accepted(),
        1,
        "the replay never reached the proxy"
    );
    assert_eq!(g.given("replay", "mask"), 1);
    assert_eq!(g.relay.guard.with(|e, _| e.stats().replays), 1);
}

#[test]
fn a_blocked_client_is_masked_and_s_client_completes_with_the_cover_sites_certificate() {
    let cover = Cover::start();
    let g = Guarded::start(RefusalSettings {
        blocked: Answer::Mask,
        ..settings(Some(cover.addr))
    });
    // s_client cannot choose its source address: block the one it uses.
    g.block(ip(0, 0, 1));
    let (seen, text) = s_client_sees(g.relay.listen, &cover);
    assert!(seen, "s_client did not see the cover site:\n{text}");
    assert_eq!(g.backend.accepted(), 0);
    assert_eq!(g.given("blocked", "mask"), 1);
    let rejected = g
        .relay
        .guard
        .with(|e, _| e.stats().rejected[mtguard_core::RejectReason::Blocked as usize]);
    assert_eq!(rejected, 1, "the engine refused it at accept");
}

#[test]
fn a_blocked_client_costs_no_cover_connection_before_its_first_bytes() {
    let cover = Counting::start(false);
    let g = Guarded::start(RefusalSettings {
        blocked: Answer::Mask,
        ..settings(Some(cover.addr))
    });
    let blocked = ip(51, 0, 1);
    g.block(blocked);
    let mut silent = connect_from(blocked, g.relay.listen).unwrap();
    wait_for("the silent client to be held", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        read_once(&mut silent, Duration::from_millis(300)),
        Seen::Silent
    );
    assert_eq!(cover.accepted(), 0, "no cover connection before a byte");
    silent.write_all(b"\x16\x03\x01hello").unwrap();
    wait_for("the cover connection", || cover.accepted() == 1);
    wait_for("the held place to be given back", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 0
    });
    assert_eq!(g.telemetry().ops.refusals.masked.load(Ordering::SeqCst), 1);
}

#[test]
fn a_flood_from_a_blocked_client_opens_at_most_max_masked_cover_connections() {
    let cover = Counting::start(false);
    let g = Guarded::start(RefusalSettings {
        blocked: Answer::Mask,
        max_masked: 3,
        max_held: 8,
        ..settings(Some(cover.addr))
    });
    let flooder = ip(52, 0, 1);
    g.block(flooder);
    let mut conns = Vec::new();
    for _ in 0..40 {
        let Ok(mut c) = connect_from(flooder, g.relay.listen) else {
            continue;
        };
        let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
        conns.push(c);
    }
    wait_for("every flood connection to be answered", || {
        let r = &g.telemetry().ops.refusals;
        g.given("blocked", "mask") + g.given("blocked", "reset") == 40
            && r.held.load(Ordering::SeqCst) == 0
    });
    assert_eq!(g.given("blocked", "mask"), 3);
    assert_eq!(g.given("blocked", "reset"), 37);
    wait_for("the masked connections to reach the cover site", || {
        cover.accepted() == 3
    });
    // The masked ones stay open (the cover site holds them): no more came.
    sleep(Duration::from_millis(200));
    assert_eq!(cover.accepted(), 3);
    assert!(cover.most_open.load(Ordering::SeqCst) <= 3);
    let caps = g.telemetry().ops.refusals.caps_reached();
    assert_eq!(caps[0].1 + caps[1].1, 37, "{caps:?}");
    drop(conns);
    wait_for("the cover connections to close", || {
        cover.open.load(Ordering::SeqCst) == 0
    });
    wait_for("the masked gauge to drop", || {
        g.telemetry().ops.refusals.masked.load(Ordering::SeqCst) == 0
    });
}

#[test]
fn drop_holds_silently_then_closes_without_a_reset() {
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Drop,
        blocked: Answer::Drop,
        drop_timeout: Duration::from_secs(2),
        ..settings(None)
    });
    let mut probe = connect_from(ip(53, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&forged_hello()).unwrap();
    let blocked = ip(53, 0, 2);
    g.block(blocked);
    let mut refused = connect_from(blocked, g.relay.listen).unwrap();
    wait_for("both to be held", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 2
    });
    for s in [&mut probe, &mut refused] {
        assert_eq!(read_once(s, Duration::from_millis(500)), Seen::Silent);
        // What it sends meanwhile is swallowed, not answered.
        s.write_all(b"anyone there?").unwrap();
        assert_eq!(read_once(s, Duration::from_millis(100)), Seen::Silent);
    }
    for s in [&mut probe, &mut refused] {
        assert_eq!(read_once(s, Duration::from_secs(10)), Seen::Eof);
    }
    assert_eq!(g.given("failed_handshake", "drop"), 1);
    assert_eq!(g.given("blocked", "drop"), 1);
    wait_for("the held places to be given back", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 0
    });
    assert_eq!(g.backend.accepted(), 0);
}

#[test]
fn drop_over_max_held_is_a_reset_and_counted() {
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Drop,
        max_held: 1,
        drop_timeout: Duration::from_secs(30),
        ..settings(None)
    });
    let mut first = connect_from(ip(54, 0, 1), g.relay.listen).unwrap();
    first.write_all(&forged_hello()).unwrap();
    wait_for("the first to be held", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 1
    });
    let mut second = connect_from(ip(54, 0, 2), g.relay.listen).unwrap();
    second.write_all(&forged_hello()).unwrap();
    assert_eq!(read_once(&mut second, Duration::from_secs(10)), Seen::Reset);
    assert_eq!(
        g.telemetry().ops.refusals.caps_reached(),
        [("held", 1), ("masked", 0)]
    );
    assert_eq!(
        read_once(&mut first, Duration::from_millis(200)),
        Seen::Silent
    );
}

#[test]
fn reset_resets_at_once() {
    let g = Guarded::start(settings(None));
    let mut probe = connect_from(ip(55, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&forged_hello()).unwrap();
    assert_eq!(read_once(&mut probe, Duration::from_secs(10)), Seen::Reset);
    let blocked = ip(55, 0, 2);
    g.block(blocked);
    // The reset can come before connect_from has set its read timeout.
    match connect_from(blocked, g.relay.listen) {
        Ok(mut refused) => {
            assert_eq!(
                read_once(&mut refused, Duration::from_secs(10)),
                Seen::Reset
            )
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
    assert_eq!(g.given("failed_handshake", "reset"), 1);
    assert_eq!(g.given("blocked", "reset"), 1);
}

#[test]
fn the_masked_connection_over_max_masked_is_reset_and_counted() {
    let cover = Counting::start(false);
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Mask,
        max_masked: 2,
        ..settings(Some(cover.addr))
    });
    let mut held = Vec::new();
    for i in 1..=2 {
        let mut c = connect_from(ip(56, 0, i), g.relay.listen).unwrap();
        c.write_all(&forged_hello()).unwrap();
        held.push(c);
    }
    wait_for("two cover connections", || cover.accepted() == 2);
    let mut third = connect_from(ip(56, 0, 3), g.relay.listen).unwrap();
    third.write_all(&forged_hello()).unwrap();
    assert_eq!(read_once(&mut third, Duration::from_secs(10)), Seen::Reset);
    assert_eq!(cover.accepted(), 2);
    assert_eq!(
        g.telemetry().ops.refusals.caps_reached(),
        [("held", 0), ("masked", 1)]
    );
    assert_eq!(g.given("failed_handshake", "mask"), 2);
    assert_eq!(g.given("failed_handshake", "reset"), 1);
    assert_eq!(g.telemetry().ops.refusals.masked.load(Ordering::SeqCst), 2);
}

#[test]
fn mask_max_bytes_cuts_a_masked_connection_and_is_counted() {
    let cover = Counting::start(true);
    let budget = 4000;
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Mask,
        mask_max_bytes: budget,
        ..settings(Some(cover.addr))
    });
    let hello = forged_hello();
    let mut probe = connect_from(ip(57, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&hello).unwrap();
    // The echo of the hello comes back through the mask.
    let mut echoed = vec![0u8; hello.len()];
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    probe.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, hello);
    // Far more than the budget, both ways: cut.
    let _ = probe.write_all(&[7u8; 8000]);
    let (rest, _) = read_all(&mut probe);
    let moved = 2 * hello.len() as u64 + rest.len() as u64;
    assert!(
        moved < budget,
        "{moved} bytes came back through a {budget}-byte budget"
    );
    wait_for("the cut to be counted", || {
        g.telemetry().ops.refusals.cuts() == [("bytes", 1), ("time", 0)]
    });
    wait_for("the cover connection to close", || {
        cover.open.load(Ordering::SeqCst) == 0
    });
}

#[test]
fn mask_timeout_cuts_a_masked_connection_and_is_counted() {
    let cover = Counting::start(false);
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Mask,
        mask_timeout: Duration::from_millis(500),
        ..settings(Some(cover.addr))
    });
    let mut probe = connect_from(ip(58, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&forged_hello()).unwrap();
    wait_for("the cover connection", || cover.accepted() == 1);
    // The cover site never answers and the probe never closes: only the
    // bound ends it.
    let (answer, _) = read_all(&mut probe);
    assert!(answer.is_empty());
    wait_for("the cut to be counted", || {
        g.telemetry().ops.refusals.cuts() == [("bytes", 0), ("time", 1)]
    });
    wait_for("the cover connection to close", || {
        cover.open.load(Ordering::SeqCst) == 0
    });
}

#[test]
fn tls_alerts_answer_a_malformed_hello_and_an_unknown_sni_as_a_server_does() {
    let g = Guarded::start(RefusalSettings {
        tls_alerts: true,
        ..settings(None)
    });
    // A session id of 16 bytes where fake-TLS has 32: the hello is
    // malformed.
    let mut malformed = fake_tls_hello(FAKE_TLS, DOMAIN, unix_now(), [3; 4]);
    malformed[43] = 16;
    let mut probe = connect_from(ip(59, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&malformed).unwrap();
    let (answer, reset) = read_all(&mut probe);
    assert_eq!(
        answer,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32],
        "decode_error"
    );
    assert!(!reset, "closed, not reset");

    // A name no secret is for.
    let unknown = fake_tls_hello(FAKE_TLS, "unknown.example.org", unix_now(), [4; 4]);
    let mut probe = connect_from(ip(59, 0, 2), g.relay.listen).unwrap();
    probe.write_all(&unknown).unwrap();
    let (answer, reset) = read_all(&mut probe);
    assert_eq!(
        answer,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70],
        "unrecognized_name"
    );
    assert!(!reset);
    assert_eq!(g.given("failed_handshake", "alert"), 2);

    // Any other failure is a reset still: a web server would have
    // answered it with a handshake, not an alert.
    let mut probe = connect_from(ip(59, 0, 3), g.relay.listen).unwrap();
    probe.write_all(&forged_hello()).unwrap();
    assert_eq!(read_once(&mut probe, Duration::from_secs(10)), Seen::Reset);
    assert_eq!(g.backend.accepted(), 0);
}

#[test]
fn a_delay_holds_the_answer_and_the_connection_counts_as_held() {
    let g = Guarded::start(RefusalSettings {
        delay_min: Duration::from_millis(800),
        delay_max: Duration::from_millis(800),
        ..settings(None)
    });
    let mut probe = connect_from(ip(60, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&forged_hello()).unwrap();
    wait_for("the delayed answer to be held", || {
        g.telemetry().ops.refusals.held.load(Ordering::SeqCst) == 1
    });
    assert_eq!(read_once(&mut probe, Duration::from_secs(10)), Seen::Reset);
    assert_eq!(g.telemetry().ops.refusals.held.load(Ordering::SeqCst), 0);
    assert_eq!(g.given("failed_handshake", "reset"), 1);
}

fn parse(text: &str) -> Config {
    Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn refusal_presets_per_level_and_what_the_file_sets() {
    use Answer::*;
    let answers = |c: &Config, level| {
        let s = c.refusal_settings(level);
        (s.failed_handshake, s.replay, s.blocked)
    };
    let none = parse("");
    let with_cover = parse("[mtproto]\nmask_backend = \"example.com:443\"\n");
    assert_eq!(answers(&none, 0), (Reset, Reset, Reset));
    assert_eq!(answers(&none, 1), (Reset, Reset, Reset));
    assert_eq!(answers(&with_cover, 1), (Reset, Reset, Reset));
    assert_eq!(answers(&none, 2), (Reset, Reset, Drop));
    assert_eq!(answers(&with_cover, 2), (Mask, Mask, Drop));
    assert_eq!(answers(&none, 3), (Reset, Reset, Drop));
    assert_eq!(answers(&with_cover, 3), (Mask, Mask, Mask));
    let ms = Duration::from_millis;
    let delay = |c: &Config, level| {
        let s = c.refusal_settings(level);
        (s.delay_min, s.delay_max, s.tls_alerts)
    };
    assert_eq!(delay(&none, 1), (ms(0), ms(0), false));
    assert_eq!(delay(&none, 2), (ms(0), ms(100), true));
    assert_eq!(delay(&none, 3), (ms(20), ms(250), true));
    assert_eq!(RefusalSettings::default(), none.refusal_settings(1));

    // The older key still works, and [refusal] wins over it.
    let legacy = parse(
        "[mtproto]\nmask_backend = \"example.com:443\"\non_probe = \"mask\"\n\
         [refusal]\nreplay = \"drop\"\n",
    );
    assert_eq!(answers(&legacy, 1), (Mask, Drop, Reset));
    let closed = parse("[mtproto]\nmask_backend = \"example.com:443\"\non_probe = \"close\"\n");
    assert_eq!(answers(&closed, 3), (Reset, Reset, Mask));

    let all = parse(
        "[mtproto]\nmask_backend = \"127.0.0.1:443\"\n\
         [refusal]\nfailed_handshake = \"drop\"\nreplay = \"mask\"\nblocked = \"reset\"\n\
         drop_timeout = \"5s\"\nmax_held = 7\nmax_masked = 0\nmask_max_bytes = 1000\n\
         mask_timeout = \"2s\"\ndelay_min = \"10ms\"\ndelay_max = \"30ms\"\ntls_alerts = false\n",
    );
    let s = all.refusal_settings(3);
    assert_eq!(
        s,
        RefusalSettings {
            failed_handshake: Drop,
            replay: Mask,
            blocked: Reset,
            mask_backend: Some("127.0.0.1:443".into()),
            drop_timeout: Duration::from_secs(5),
            max_held: 7,
            max_masked: 0,
            mask_max_bytes: 1000,
            mask_timeout: Duration::from_secs(2),
            delay_min: ms(10),
            delay_max: ms(30),
            tls_alerts: false,
        }
    );
    // One bound alone moves the other out of its way.
    let min_only = parse("[refusal]\ndelay_min = \"400ms\"\n");
    assert_eq!(delay(&min_only, 2), (ms(400), ms(400), true));
    let max_only = parse("[refusal]\ndelay_max = \"5ms\"\n");
    assert_eq!(delay(&max_only, 3), (ms(5), ms(5), true));
}

#[test]
fn refusal_errors_name_the_key_and_line() {
    let err = |text: &str| Config::parse(text, "t.toml").unwrap_err();
    let e = err("[refusal]\n\nblocked = \"mask\"\n");
    assert_eq!(e.key(), Some("[refusal] blocked"));
    assert_eq!(e.line(), Some(3));
    assert!(e.message().contains("mask_backend"), "{e}");
    let e = err("[refusal]\nreplay = \"silence\"\n");
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("reset"), "{e}");
    let e = err("[refusal]\ndelay_min = \"50ms\"\ndelay_max = \"10ms\"\n");
    assert_eq!(e.key(), Some("[refusal] delay_max"));
    assert_eq!(e.line(), Some(3));
    let e = err("[refusal]\ndelay_max = \"11s\"\n");
    assert_eq!(e.key(), Some("[refusal] delay_max"));
    let e = err("[refusal]\nmax_masked = -1\n");
    assert_eq!(e.key(), Some("[refusal] max_masked"));
    let e = err("[refusal]\nmask_max_bytes = 0\n");
    assert_eq!(e.key(), Some("[refusal] mask_max_bytes"));
    let e = err("[refusal]\ndrop_timeout = \"0s\"\n");
    assert_eq!(e.key(), Some("[refusal] drop_timeout"));
    let e = err("[refusal]\nmask_timeout = \"soon\"\n");
    assert_eq!(e.key(), Some("[refusal] mask_timeout"));
    let e = err("[refusal]\ndrop = \"reset\"\n");
    assert_eq!(e.key(), Some("[refusal]"));
    assert!(e.message().contains("unknown key"), "{e}");
}

#[test]
fn check_config_shows_every_refusal_key_with_its_origin() {
    let c = parse(
        "level = 3\n[mtproto]\nmask_backend = \"127.0.0.1:443\"\n\
         [refusal]\nreplay = \"drop\"\nmax_masked = 9\n",
    );
    let policy = c.effective_policy(None).unwrap();
    let out = c.describe(&policy);
    let block = out.split_once("  [refusal]\n").unwrap().1;
    let row = |key: &str| {
        block
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("failed_handshake"), "mask level 3 preset");
    assert_eq!(row("replay"), "drop t.toml:5");
    assert_eq!(row("blocked"), "mask level 3 preset");
    assert_eq!(row("max_masked"), "9 t.toml:6");
    assert_eq!(row("max_held"), "1024 default");
    assert_eq!(row("drop_timeout"), "30s default");
    assert_eq!(row("mask_max_bytes"), "5242880 default");
    assert_eq!(row("mask_timeout"), "1m default");
    assert_eq!(row("delay_min"), "20ms level 3 preset");
    assert_eq!(row("delay_max"), "250ms level 3 preset");
    assert_eq!(row("tls_alerts"), "true level 3 preset");
    // Without a cover site the preset falls back, and says why.
    let bare = parse("level = 2\n");
    let out = bare.describe(&bare.effective_policy(None).unwrap());
    let block = out.split_once("  [refusal]\n").unwrap().1;
    let line = block
        .lines()
        .find(|l| l.trim_start().starts_with("failed_handshake "))
        .unwrap();
    assert!(
        line.contains("reset") && line.contains("no [mtproto] mask_backend"),
        "{line}"
    );
}

#[test]
fn half_closed_probes_are_masked_whole() {
    // A prober that sends its hello and half-closes still gets the cover
    // site's whole answer (the mask honours half-close).
    let cover = Counting::start(true);
    let g = Guarded::start(RefusalSettings {
        failed_handshake: Answer::Mask,
        ..settings(Some(cover.addr))
    });
    let hello = forged_hello();
    let mut probe = connect_from(ip(61, 0, 1), g.relay.listen).unwrap();
    probe.write_all(&hello).unwrap();
    probe.shutdown(Shutdown::Write).unwrap();
    let (answer, reset) = read_all(&mut probe);
    assert_eq!(answer, hello);
    assert!(!reset);
    wait_for("the masked connection to be done", || {
        g.given("failed_handshake", "mask") == 1
            && g.telemetry().ops.refusals.masked.load(Ordering::SeqCst) == 0
    });
    assert_eq!(
        g.telemetry().ops.refusals.cuts(),
        [("bytes", 0), ("time", 0)]
    );
}
