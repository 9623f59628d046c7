//! The forwarding guard on loopback: byte-exact relaying, half-close, the
//! per-client limit, PROXY protocol headers, slowloris and blocked clients.
//!
//! Every client connects from its own 127.x.y.z source address (loopback is
//! a /8 on Linux), so each test controls which "client" the engine sees.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtguard::config::ProxyProtocol;
use mtguard::engine::{Capacity, Guard, LogEvents};
use mtguard::proxy::{self, ProxySettings};
use mtguard_core::{BlockCause, Level, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Long enough for anything that should happen on loopback.
const PATIENCE: Duration = Duration::from_secs(5);

fn policy() -> Policy {
    Policy {
        handshake_timeout: Some(Duration::from_secs(10)),
        block_after_violations: 250,
        ..Policy::for_level(Level::Minimal)
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// The backend echoes each connection and closes after the client's EOF.
    Echo,
    /// The test takes each backend connection from `Harness::backend`.
    Manual,
}

struct Harness {
    guard: Arc<Guard>,
    /// Where the guard listens.
    addr: SocketAddr,
    backend_addr: SocketAddr,
    /// Connections the backend accepted.
    backend_accepts: Arc<AtomicUsize>,
    backend: mpsc::UnboundedReceiver<TcpStream>,
    shutdown: watch::Sender<bool>,
    _settings: watch::Sender<Arc<ProxySettings>>,
    serve: JoinHandle<io::Result<()>>,
}

async fn start(policy: Policy, mode: Mode, proxy_protocol: ProxyProtocol) -> Harness {
    start_with(policy, mode, proxy_protocol, Duration::from_secs(30)).await
}

async fn start_with(
    policy: Policy,
    mode: Mode,
    proxy_protocol: ProxyProtocol,
    idle_timeout: Duration,
) -> Harness {
    let ipv6_prefix = policy.ipv6_prefix;
    let guard = Guard::new(
        policy,
        Capacity {
            clients: 1024,
            connections: 1024,
            prefixes: 16,
            networks: 1024,
        },
        Box::new(LogEvents { ipv6_prefix }),
    )
    .unwrap();
    tokio::spawn(guard.clone().drive());

    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    let backend_accepts = Arc::new(AtomicUsize::new(0));
    let (tx, backend) = mpsc::unbounded_channel();
    let accepts = backend_accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = backend_listener.accept().await else {
                continue;
            };
            accepts.fetch_add(1, Ordering::SeqCst);
            match mode {
                Mode::Echo => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = stream.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
                Mode::Manual => {
                    let _ = tx.send(stream);
                }
            }
        }
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (settings_tx, settings) = watch::channel(Arc::new(ProxySettings {
        backend: backend_addr.to_string(),
        proxy_protocol,
        connect_timeout: Duration::from_secs(2),
        idle_timeout,
        backend_tls: None,
        refusal: Default::default(),
    }));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let serve = tokio::spawn(proxy::serve(listener, guard.clone(), settings, shutdown_rx));
    Harness {
        guard,
        addr,
        backend_addr,
        backend_accepts,
        backend,
        shutdown,
        _settings: settings_tx,
        serve,
    }
}

impl Harness {
    fn accepts(&self) -> usize {
        self.backend_accepts.load(Ordering::SeqCst)
    }

    async fn next_backend(&mut self) -> TcpStream {
        tokio::time::timeout(PATIENCE, self.backend.recv())
            .await
            .expect("the backend saw no connection")
            .unwrap()
    }

    fn active(&self) -> u32 {
        proxy::active_connections(&self.guard)
    }

    async fn wait_active(&self, n: u32) {
        eventually(|| self.active() == n, "active connections").await;
    }
}

async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn source(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A client connection from 127.0.0.`n`.
async fn client(n: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source(n).into(), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

fn is_reset(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionReset
}

/// A client from 127.0.0.`n` is closed at once: its read ends (end of file
/// or reset) without waiting for anything. The reset may even beat the
/// connect's own completion check, and a first write may meet it.
async fn assert_refused(n: u8, to: SocketAddr, send_first: bool) {
    let started = Instant::now();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source(n).into(), 0)).unwrap();
    let mut stream = match socket.connect(to).await {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return,
        Err(e) => panic!("connect failed: {e}"),
    };
    if send_first {
        if let Err(e) = stream.write_all(b"hello").await {
            assert!(is_reset(&e) || e.kind() == io::ErrorKind::BrokenPipe, "{e}");
            return;
        }
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if is_reset(&e) => {}
        other => panic!("expected an immediate close, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// One byte through an echo backend and back.
async fn assert_echoes(stream: &mut TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&back, b"ping");
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE * 4, stream.read_to_end(&mut out))
        .await
        .expect("no end of file")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_cross_unchanged_both_ways_at_once() {
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::None).await;
    let up = payload(8 << 20, 1);
    let down = payload(8 << 20, 2);

    let client = client(2, h.addr).await;
    let (mut client_read, mut client_write) = client.into_split();
    let sent = up.clone();
    let writer = tokio::spawn(async move {
        client_write.write_all(&sent).await.unwrap();
        client_write.shutdown().await.unwrap();
        client_write
    });
    let backend = h.next_backend().await;
    let (mut backend_read, mut backend_write) = backend.into_split();
    let reply = down.clone();
    let backend_writer = tokio::spawn(async move {
        backend_write.write_all(&reply).await.unwrap();
        backend_write.shutdown().await.unwrap();
        backend_write
    });
    let backend_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        backend_read.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got_down = Vec::new();
    tokio::time::timeout(PATIENCE * 4, client_read.read_to_end(&mut got_down))
        .await
        .unwrap()
        .unwrap();
    let got_up = backend_reader.await.unwrap();
    let _ = (writer.await.unwrap(), backend_writer.await.unwrap());

    assert!(got_up == up, "client-to-backend bytes differ");
    assert!(got_down == down, "backend-to-client bytes differ");
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_client_lets_the_backend_answer() {
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::None).await;
    let mut c = client(3, h.addr).await;
    c.write_all(b"request").await.unwrap();
    c.shutdown().await.unwrap();

    let mut b = h.next_backend().await;
    // The backend sees the request, then end of file...
    assert_eq!(read_to_end(&mut b).await, b"request");
    // ...and can still answer, which the client reads to its end.
    b.write_all(b"reply").await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"reply");
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_backend_lets_the_client_go_on() {
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::None).await;
    let mut c = client(4, h.addr).await;
    c.write_all(b"hello").await.unwrap();
    let mut b = h.next_backend().await;
    let mut hello = [0u8; 5];
    b.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");

    b.write_all(b"banner").await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"banner");

    c.write_all(b"more").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut b).await, b"more");
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_limit_holds_exactly() {
    const N: u16 = 5;
    let h = start(
        Policy {
            max_connections_per_client: N,
            ..policy()
        },
        Mode::Echo,
        ProxyProtocol::None,
    )
    .await;

    let mut served = Vec::new();
    for _ in 0..N {
        let mut c = client(5, h.addr).await;
        assert_echoes(&mut c).await;
        served.push(c);
    }
    assert_eq!(h.accepts(), N as usize);

    // One more from the same address: closed at once, the backend never
    // hears of it.
    assert_refused(5, h.addr, false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.accepts(), N as usize);

    // Another address is unaffected.
    let mut other = client(6, h.addr).await;
    assert_echoes(&mut other).await;
    assert_eq!(h.accepts(), N as usize + 1);

    // Closing one frees its place.
    drop(served.pop());
    h.wait_active(N as u32).await;
    let mut again = client(5, h.addr).await;
    assert_echoes(&mut again).await;
    assert_eq!(h.accepts(), N as usize + 2);

    // And the limit is back.
    assert_refused(5, h.addr, true).await;
    assert_eq!(h.accepts(), N as usize + 2);
}

/// Reads from `b` until `complete` says how long the header is, and returns
/// the header and what followed it.
async fn read_header(
    b: &mut TcpStream,
    complete: impl Fn(&[u8]) -> Option<usize>,
) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(len) = complete(&buf) {
            let rest = buf.split_off(len);
            return (buf, rest);
        }
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(PATIENCE, b.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "end of file inside the header");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_carries_the_true_client_address() {
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::V2).await;
    let mut c = client(7, h.addr).await;
    let client_addr = c.local_addr().unwrap();
    assert_eq!(client_addr.ip(), IpAddr::from(source(7)));
    c.write_all(b"first bytes").await.unwrap();

    let mut b = h.next_backend().await;
    let (header, mut rest) = read_header(&mut b, |buf| {
        (buf.len() >= 16)
            .then(|| 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize)
            .filter(|&len| buf.len() >= len)
    })
    .await;
    let parsed = ppp::v2::Header::try_from(header.as_slice()).unwrap();
    assert_eq!(parsed.command, ppp::v2::Command::Proxy);
    assert_eq!(parsed.protocol, ppp::v2::Protocol::Stream);
    assert_eq!(
        parsed.addresses,
        ppp::v2::Addresses::from((client_addr, h.addr))
    );

    // The client's bytes follow the header unchanged.
    while rest.len() < b"first bytes".len() {
        let mut chunk = [0u8; 64];
        let n = b.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(rest, b"first bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_carries_the_true_client_address() {
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::V1).await;
    let mut c = client(8, h.addr).await;
    let client_addr = c.local_addr().unwrap();
    c.write_all(b"first bytes").await.unwrap();
    c.shutdown().await.unwrap();

    let mut b = h.next_backend().await;
    let (header, mut rest) = read_header(&mut b, |buf| {
        buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
    })
    .await;
    let header = std::str::from_utf8(&header).unwrap();
    let parsed = ppp::v1::Header::try_from(header).unwrap();
    assert_eq!(
        parsed.addresses,
        ppp::v1::Addresses::from((client_addr, h.addr))
    );
    rest.extend(read_to_end(&mut b).await);
    assert_eq!(rest, b"first bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_is_closed_at_the_handshake_deadline() {
    let h = start(
        Policy {
            handshake_timeout: Some(Duration::from_millis(300)),
            ..policy()
        },
        Mode::Echo,
        ProxyProtocol::None,
    )
    .await;
    let started = Instant::now();
    let mut c = client(9, h.addr).await;
    h.wait_active(1).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, c.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0))) || matches!(&read, Ok(Err(e)) if is_reset(e)),
        "expected the guard to close, got {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert_eq!(h.accepts(), 0);
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_is_refused_at_accept() {
    let h = start(policy(), Mode::Echo, ProxyProtocol::None).await;
    h.guard
        .with(|e, now| e.block(now, source(10).into(), None, BlockCause::Manual))
        .unwrap();
    assert_refused(10, h.addr, false).await;
    // Even a client that sends at once reaches nothing.
    assert_refused(10, h.addr, true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.accepts(), 0);
    assert_eq!(h.active(), 0);

    let mut other = client(11, h.addr).await;
    assert_echoes(&mut other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let mut h = start_with(
        policy(),
        Mode::Manual,
        ProxyProtocol::None,
        Duration::from_millis(300),
    )
    .await;
    let mut c = client(12, h.addr).await;
    c.write_all(b"hello").await.unwrap();
    let mut b = h.next_backend().await;
    let mut hello = [0u8; 5];
    b.read_exact(&mut hello).await.unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        b.write_all(b"x").await.unwrap();
        let mut x = [0u8; 1];
        c.read_exact(&mut x).await.unwrap();
    }
    // ...silence closes both sides.
    let started = Instant::now();
    assert!(read_to_end(&mut c).await.is_empty());
    assert!(read_to_end(&mut b).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_keeps_connections() {
    let mut h = start(policy(), Mode::Echo, ProxyProtocol::None).await;
    let mut c = client(13, h.addr).await;
    assert_echoes(&mut c).await;

    h.shutdown.send(true).unwrap();
    tokio::time::timeout(PATIENCE, &mut h.serve)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    assert!(socket.connect(h.addr).await.is_err(), "still accepting");

    assert_echoes(&mut c).await;
    assert_eq!(h.active(), 1);
    drop(c);
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_closes_the_client() {
    let h = start(policy(), Mode::Echo, ProxyProtocol::None).await;
    let (_tx, settings) = watch::channel(Arc::new(ProxySettings {
        // A port nobody listens on: bound, then closed.
        backend: {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        },
        proxy_protocol: ProxyProtocol::None,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        backend_tls: None,
        refusal: Default::default(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(proxy::serve(listener, h.guard.clone(), settings, shutdown));

    let mut c = client(14, addr).await;
    c.write_all(b"hello").await.unwrap();
    assert!(read_to_end(&mut c).await.is_empty());
    h.wait_active(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_are_counted_by_kind() {
    let h = start(policy(), Mode::Echo, ProxyProtocol::None).await;
    let settings = |backend: &str| {
        Arc::new(ProxySettings {
            backend: backend.to_owned(),
            proxy_protocol: ProxyProtocol::None,
            // Long: a slow resolver must fail as `resolve`, not `timeout`.
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            backend_tls: None,
            refusal: Default::default(),
        })
    };
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // RFC 6761: names under .invalid never resolve.
    let unresolvable = "no-such-host.invalid:443";
    let (settings_tx, settings_rx) = watch::channel(settings(unresolvable));
    let telemetry = Arc::new(mtguard::telemetry::Telemetry::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(proxy::serve_inspected(
        listener,
        h.guard.clone(),
        settings_rx,
        watch::channel(None).1,
        telemetry.clone(),
        shutdown,
    ));
    let count = |kind: &str| {
        let counts = telemetry.ops.backend_failures.counts();
        counts.iter().find(|(k, _)| *k == kind).unwrap().1
    };
    for (n, backend, kind) in [
        (15, unresolvable, "resolve"),
        (16, closed.as_str(), "refused"),
    ] {
        settings_tx.send(settings(backend)).unwrap();
        let mut c = client(n, addr).await;
        c.write_all(b"hello").await.unwrap();
        assert!(read_to_end(&mut c).await.is_empty());
        eventually(|| count(kind) == 1, kind).await;
    }
    let counts = telemetry.ops.backend_failures.counts();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 2, "{counts:?}");
    // Nothing reached a backend, so nothing was relayed.
    let relayed = &telemetry.ops.relayed;
    assert_eq!(relayed.up.0.load(Ordering::Relaxed), 0);
    assert_eq!(relayed.down.0.load(Ordering::Relaxed), 0);
}

/// Loopback throughput through the guard against a direct connection.
/// Prints the figures; speed is not a pass criterion. The size is
/// `MTGUARD_THROUGHPUT_MIB` (default 64); run it with `--release` and
/// `--nocapture` for a meaningful number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_through_the_guard_and_direct() {
    let mib: usize = std::env::var("MTGUARD_THROUGHPUT_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let total = mib << 20;
    let mut h = start(policy(), Mode::Manual, ProxyProtocol::None).await;

    async fn run(
        to: SocketAddr,
        backend: &mut mpsc::UnboundedReceiver<TcpStream>,
        total: usize,
    ) -> Duration {
        let chunk = payload(256 << 10, 3);
        let started = Instant::now();
        let mut c = client(15, to).await;
        let writer = tokio::spawn(async move {
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len());
                c.write_all(&chunk[..n]).await.unwrap();
                left -= n;
            }
            c.shutdown().await.unwrap();
            c
        });
        let mut b = tokio::time::timeout(PATIENCE, backend.recv())
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        loop {
            let n = b.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let elapsed = started.elapsed();
        assert_eq!(got, total);
        drop(writer.await.unwrap());
        elapsed
    }

    let through = run(h.addr, &mut h.backend, total).await;
    let direct = run(h.backend_addr, &mut h.backend, total).await;
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "throughput, {mib} MiB one way on loopback: through the guard {:.0} MiB/s ({through:?}), direct {:.0} MiB/s ({direct:?})",
        rate(through),
        rate(direct)
    );
    h.wait_active(0).await;
}
