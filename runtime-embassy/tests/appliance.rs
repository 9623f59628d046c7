//! The appliance runtime on the host: embassy-net stacks joined in memory
//! with embassy-net-driver-channel (no TAP device, no privileges). Four client
//! stacks with their own addresses, the appliance running the guard, and a
//! backend stack whose server answers every byte XOR 0xA5 (so both
//! directions are checked byte for byte), all driven on one thread by a
//! std executor with embassy-time's std driver.
//!
//! Waits are bounded (a test fails instead of hanging), and no assertion
//! depends on how fast anything ran.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::Ipv4Addr;
use std::task::Poll;
use std::time::Duration as StdDuration;

use embassy_futures::join::join_array;
use embassy_futures::select::select;
use embassy_net::driver::HardwareAddress;
use embassy_net::tcp::TcpSocket;
use embassy_net::{
    Config as NetConfig, IpEndpoint, Ipv4Cidr, Stack, StackResources, StaticConfigV4,
};
use embassy_net_driver_channel as ch;
use embassy_time::{with_timeout, Duration, Timer};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{Invalid, Secret, SecretSet};
use mtguard_core::storage::Inline;
use mtguard_core::{BlockCause, Event, Level, Policy, RejectReason, Seed, UnblockCause};
use mtguard_embassy::{Config, End, Guard, GuardEvent, Slot};

const MTU: usize = 1500;
const CLIENTS: usize = 4;
const STACKS: usize = CLIENTS + 2;
const APPLIANCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 443;
const BACKEND_SOCKETS: usize = 8;
/// The longest any single wait in a test may take before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

type Small = Inline<64, 16, 8>;
type TestGuard<'a, const SLOTS: usize> = Guard<'a, Small, SLOTS>;
type TestSlot = Slot<4096, 2048>;

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 11 + i as u8)
}

/// What the backend saw: the bytes of each connection, in accept order.
#[derive(Default)]
struct BackendLog {
    connections: Vec<Vec<u8>>,
}

/// What a test body gets.
struct Env<'a, const SLOTS: usize> {
    clients: [Stack<'a>; CLIENTS],
    guard: &'a TestGuard<'a, SLOTS>,
    backend: &'a RefCell<BackendLog>,
    /// Events received but not yet asked for: the order between the
    /// engine's events and the guard's own is not part of the contract.
    pending: RefCell<Vec<GuardEvent>>,
}

/// Forwards IP packets between the channel drivers by destination address,
/// as a switch would; packets to unknown addresses are dropped.
async fn switch(
    mut rx: Vec<ch::RxRunner<'_, MTU>>,
    mut tx: Vec<ch::TxRunner<'_, MTU>>,
    ips: Vec<Ipv4Addr>,
) {
    let mut next = 0;
    loop {
        let (from, packet) = poll_fn(|cx| {
            for k in 0..tx.len() {
                let i = (next + k) % tx.len();
                if let Poll::Ready(buf) = tx[i].poll_tx_buf(cx) {
                    return Poll::Ready((i, buf.to_vec()));
                }
            }
            Poll::Pending
        })
        .await;
        tx[from].tx_done();
        next = (from + 1) % tx.len();
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            continue;
        }
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        if let Some(to) = ips.iter().position(|ip| *ip == dst) {
            let buf = rx[to].rx_buf().await;
            buf[..packet.len()].copy_from_slice(&packet);
            rx[to].rx_done(packet.len());
        }
    }
}

/// The proxy behind the guard: answers each byte XOR 0xA5, closes when the
/// client does, and logs what it received.
async fn backend_server(stack: Stack<'_>, log: &RefCell<BackendLog>) {
    let servers: [_; BACKEND_SOCKETS] = std::array::from_fn(|_| async {
        let mut rx = vec![0u8; 4096];
        let mut tx = vec![0u8; 4096];
        let mut buf = vec![0u8; 1024];
        loop {
            let mut s = TcpSocket::new(stack, &mut rx, &mut tx);
            if s.accept(PORT).await.is_err() {
                continue;
            }
            let index = {
                let mut log = log.borrow_mut();
                log.connections.push(Vec::new());
                log.connections.len() - 1
            };
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log.borrow_mut().connections[index].extend_from_slice(&buf[..n]);
                        let answer: Vec<u8> = buf[..n].iter().map(|b| b ^ 0xA5).collect();
                        if write_all(&mut s, &answer).await.is_err() {
                            break;
                        }
                    }
                }
            }
            s.close();
            let _ = with_timeout(Duration::from_secs(2), s.flush()).await;
        }
    });
    join_array(servers).await;
}

async fn write_all(s: &mut TcpSocket<'_>, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        match s.write(data).await {
            Ok(n) if n > 0 => data = &data[n..],
            _ => return Err(()),
        }
    }
    Ok(())
}

/// Builds the network and the guard, runs `body` to completion.
fn run<const SLOTS: usize>(
    policy: Policy,
    secrets: SecretSet,
    body: impl AsyncFnOnce(&Env<'_, SLOTS>),
) {
    let mut states: Vec<ch::State<MTU, 16, 16>> = (0..STACKS).map(|_| ch::State::new()).collect();
    let mut resources: Vec<StackResources<16>> =
        (0..STACKS).map(|_| StackResources::new()).collect();
    let ips: Vec<Ipv4Addr> = [APPLIANCE, BACKEND]
        .into_iter()
        .chain((0..CLIENTS).map(client_ip))
        .collect();

    let mut rx_runners = Vec::new();
    let mut tx_runners = Vec::new();
    let mut stacks = Vec::new();
    let mut net_runners = Vec::new();
    for (i, (state, res)) in states.iter_mut().zip(resources.iter_mut()).enumerate() {
        let (runner, device) = ch::new(state, HardwareAddress::Ip);
        let (link, rx, tx) = runner.split();
        link.set_link_state(ch::driver::LinkState::Up);
        rx_runners.push(rx);
        tx_runners.push(tx);
        let config = NetConfig::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(ips[i], 24),
            gateway: None,
            dns_servers: Default::default(),
        });
        let (stack, net_runner) = embassy_net::new(device, config, res, 0x1234_5678 + i as u64);
        stacks.push(stack);
        net_runners.push(net_runner);
    }

    let mut replay = vec![Entry::EMPTY; 256];
    let guard: TestGuard<'_, SLOTS> = Guard::new(
        Small::tables(),
        policy,
        Seed {
            hash_key: [3; 16],
            jitter: 11,
        },
        secrets,
        &mut replay,
        Config {
            port: PORT,
            backend: IpEndpoint::new(BACKEND.into(), PORT),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        },
    )
    .expect("a valid guard");
    let mut slots: Box<[TestSlot; SLOTS]> = Box::new(std::array::from_fn(|_| TestSlot::new()));
    let log = RefCell::new(BackendLog::default());

    let env = Env {
        clients: std::array::from_fn(|i| stacks[2 + i]),
        guard: &guard,
        backend: &log,
        pending: RefCell::new(Vec::new()),
    };
    let appliance = stacks[0];
    let backend = stacks[1];
    let runners: [_; STACKS] = net_runners
        .iter_mut()
        .map(|r| r.run())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!());

    let background = async {
        select(
            select(join_array(runners), switch(rx_runners, tx_runners, ips)),
            select(
                guard.run(appliance, &mut slots),
                backend_server(backend, &log),
            ),
        )
        .await;
    };
    let test = async {
        // Let the links come up before the first connection.
        for s in env.clients.iter().chain([&appliance, &backend]) {
            s.wait_config_up().await;
        }
        body(&env).await;
    };
    pollster::block_on(async {
        // The whole test is bounded: a hang fails it.
        match with_timeout(Duration::from_secs(120), select(test, background)).await {
            Ok(_) => {}
            Err(_) => panic!("test did not finish within 120 s"),
        }
    });
}

/// A connection from client stack `c`, with its own buffers.
async fn connect<'a>(stack: Stack<'a>) -> Result<TcpSocket<'a>, embassy_net::tcp::ConnectError> {
    let rx = Box::leak(vec![0u8; 8192].into_boxed_slice());
    let tx = Box::leak(vec![0u8; 8192].into_boxed_slice());
    // No smoltcp timeout: it would abort a connection that is merely idle
    // while a test waits.
    let mut s = TcpSocket::new(stack, rx, tx);
    s.connect(IpEndpoint::new(APPLIANCE.into(), PORT)).await?;
    Ok(s)
}

/// Reads until the peer closes; `Err` if it reset the connection.
async fn read_to_end(s: &mut TcpSocket<'_>) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match with_timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return Err(()),
            Err(_) => panic!("peer neither answered nor closed"),
        }
    }
}

/// Reads exactly `n` bytes.
async fn read_exact(s: &mut TcpSocket<'_>, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match with_timeout(PATIENCE, s.read(&mut out[got..])).await {
            Ok(Ok(0)) => panic!("closed after {got} of {n} bytes"),
            Ok(Ok(k)) => got += k,
            Ok(Err(e)) => panic!("reset after {got} of {n} bytes: {e:?}"),
            Err(_) => panic!("stalled after {got} of {n} bytes"),
        }
    }
    out
}

/// Waits for the first event `want` accepts, keeping the others for later
/// calls.
async fn expect_event<const SLOTS: usize, T>(
    env: &Env<'_, SLOTS>,
    mut want: impl FnMut(&GuardEvent) -> Option<T>,
) -> T {
    {
        let mut pending = env.pending.borrow_mut();
        if let Some(i) = pending.iter().position(|e| want(e).is_some()) {
            let event = pending.remove(i);
            return want(&event).unwrap_or_else(|| unreachable!());
        }
    }
    loop {
        match with_timeout(PATIENCE, env.guard.events().receive()).await {
            Ok(event) => {
                if let Some(t) = want(&event) {
                    return t;
                }
                env.pending.borrow_mut().push(event);
            }
            Err(_) => panic!("expected event did not come"),
        }
    }
}

async fn expect_refused<const SLOTS: usize>(env: &Env<'_, SLOTS>, c: usize) -> RejectReason {
    let ip = client_ip(c);
    expect_event(env, |e| match e {
        GuardEvent::Refused { client, reason } if *client == ip => Some(*reason),
        _ => None,
    })
    .await
}

async fn expect_closed<const SLOTS: usize>(env: &Env<'_, SLOTS>, c: usize) -> (End, u64, u64) {
    let ip = client_ip(c);
    expect_event(env, |e| match e {
        GuardEvent::Closed {
            client,
            end,
            up,
            down,
        } if *client == ip => Some((*end, *up, *down)),
        _ => None,
    })
    .await
}

/// Deterministic, non-repeating test data.
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

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ 0xA5).collect()
}

/// A policy with small numbers so every limit is reached in a few
/// connections: 2 per client, blocked after 2 refusals for 1 s.
fn small_policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.max_connections_per_client = 2;
    p.block_after_violations = 2;
    p.block_duration = StdDuration::from_secs(1);
    p.max_block_duration = StdDuration::from_secs(1);
    p.block_jitter_permille = 0;
    p.scanner_failures = 2;
    p
}

#[test]
fn forwarded_bytes_are_identical_both_ways() {
    run::<4>(Policy::default(), SecretSet::new(), async |env| {
        // Three clients at once, each with 20 KB: more than any buffer on
        // the way, so the relay has to loop and apply back-pressure.
        let sent: Vec<Vec<u8>> = (0..3).map(|c| payload(20_000, c as u8)).collect();
        let mut conns = Vec::new();
        for c in 0..3 {
            conns.push(connect(env.clients[c]).await.expect("admitted"));
        }
        let exchanges = conns.iter_mut().zip(&sent).map(|(s, data)| async move {
            write_all(s, data).await.expect("written");
            let answer = read_exact(s, data.len()).await;
            // Half-close: the guard must pass the FIN on and the backend's
            // close back.
            s.close();
            let rest = read_to_end(s).await.expect("closed, not reset");
            (answer, rest)
        });
        let results = join_array::<_, 3>(
            exchanges
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!()),
        )
        .await;
        for (c, (answer, rest)) in results.iter().enumerate() {
            assert_eq!(*answer, xor(&sent[c]), "client {c}: bytes back");
            assert!(rest.is_empty(), "client {c}: nothing after the answer");
        }
        for c in 0..3 {
            let (end, up, down) = expect_closed(env, c).await;
            assert_eq!(end, End::Done);
            assert_eq!((up, down), (20_000, 20_000), "client {c}: counted bytes");
        }
        let mut seen: Vec<Vec<u8>> = env.backend.borrow().connections.clone();
        seen.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(seen, want, "the backend received exactly what was sent");
        assert_eq!(env.guard.with_engine(|e, _| e.active_connections()), 0);
    });
}

#[test]
fn per_client_limit_then_block_then_expiry() {
    run::<4>(small_policy(), SecretSet::new(), async |env| {
        // Client 0 holds its two allowed connections.
        let mut held = Vec::new();
        for k in 0..2u8 {
            let mut s = connect(env.clients[0]).await.expect("admitted");
            write_all(&mut s, &[k]).await.unwrap();
            assert_eq!(read_exact(&mut s, 1).await, [k ^ 0xA5]);
            held.push(s);
        }
        // The third is accepted by TCP, then reset by the guard.
        let mut third = connect(env.clients[0]).await.expect("tcp accept");
        assert_eq!(
            expect_refused(env, 0).await,
            RejectReason::TooManyConnections
        );
        assert!(read_to_end(&mut third).await.is_err(), "refusal is a reset");

        // Another address is not affected.
        let mut other = connect(env.clients[1]).await.expect("admitted");
        write_all(&mut other, b"hi").await.unwrap();
        assert_eq!(read_exact(&mut other, 2).await, xor(b"hi"));

        // The second refusal within the window blocks client 0.
        let _fourth = connect(env.clients[0]).await.expect("tcp accept");
        assert_eq!(
            expect_refused(env, 0).await,
            RejectReason::TooManyConnections
        );
        let (cause, until) = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Blocked { cause, until, .. }) => Some((*cause, *until)),
            _ => None,
        })
        .await;
        assert_eq!(cause, BlockCause::Violations);
        assert!(until.is_some(), "an automatic block ends");
        assert!(env
            .guard
            .with_engine(|e, _| e.is_blocked(client_ip(0).into())));

        // Even with its connections closed, a blocked client is refused.
        for mut s in held.drain(..) {
            s.close();
            assert!(read_to_end(&mut s).await.is_ok());
        }
        let _ = connect(env.clients[0]).await;
        assert_eq!(expect_refused(env, 0).await, RejectReason::Blocked);

        // The guard's deadline loop ends the block (handle_timeout), with no
        // connection to trigger it.
        let cause = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Unblocked { cause, .. }) => Some(*cause),
            _ => None,
        })
        .await;
        assert_eq!(cause, UnblockCause::Expired);
        let mut back = connect(env.clients[0]).await.expect("admitted again");
        write_all(&mut back, b"again").await.unwrap();
        assert_eq!(read_exact(&mut back, 5).await, xor(b"again"));
    });
}

const OBFS2: &str = include_str!("../../core/tests/vectors/obfuscated2.txt");

/// A first packet recorded from Telethon (an independent MTProxy client).
fn telethon(name: &str) -> Vec<u8> {
    let line = OBFS2
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .expect("vector");
    let hex = line.split(' ').nth(3).unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn handshakes_are_inspected_probes_reset_and_scanners_blocked() {
    let mut secrets = SecretSet::new();
    secrets
        .push(Secret::parse("0123456789abcdef0123456789abcdef").unwrap())
        .unwrap();
    run::<4>(small_policy(), secrets, async |env| {
        // A real client's header, then its traffic, reaches the backend
        // unchanged; the header arrives in two pieces to exercise NeedMore.
        let header = telethon("classic-abridged");
        let mut good = connect(env.clients[0]).await.expect("admitted");
        write_all(&mut good, &header[..30]).await.unwrap();
        Timer::after(Duration::from_millis(20)).await;
        write_all(&mut good, &header[30..]).await.unwrap();
        assert_eq!(read_exact(&mut good, 64).await, xor(&header));
        write_all(&mut good, b"after the header").await.unwrap();
        assert_eq!(read_exact(&mut good, 16).await, xor(b"after the header"));

        // Random bytes (a scanner): reset, the backend never sees them.
        let mut probe = connect(env.clients[3]).await.expect("tcp accept");
        write_all(&mut probe, &payload(64, 1)).await.unwrap();
        assert!(read_to_end(&mut probe).await.is_err(), "a probe is reset");
        let (end, up, _) = expect_closed(env, 3).await;
        assert_eq!(end, End::Probe(Invalid::BadSecretOrTag));
        assert_eq!(up, 0);

        // A header with an impossible DC, made for this secret.
        let mut probe = connect(env.clients[1]).await.expect("tcp accept");
        write_all(&mut probe, &telethon("dc-zero")).await.unwrap();
        assert!(read_to_end(&mut probe).await.is_err(), "a probe is reset");
        let (end, _, _) = expect_closed(env, 1).await;
        assert_eq!(
            end,
            End::Probe(Invalid::BadDc),
            "{:?}",
            env.pending.borrow()
        );

        // A second failure (an HTTP scanner) within the window: blocked.
        let mut http = connect(env.clients[1]).await.expect("tcp accept");
        write_all(&mut http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_end(&mut http).await.is_err());
        let (end, _, _) = expect_closed(env, 1).await;
        assert_eq!(end, End::Probe(Invalid::OtherProtocol));
        let cause = expect_event(env, |e| match e {
            GuardEvent::Engine(Event::Blocked { cause, .. }) => Some(*cause),
            _ => None,
        })
        .await;
        assert_eq!(cause, BlockCause::Scanner);
        let _ = connect(env.clients[1]).await;
        assert_eq!(expect_refused(env, 1).await, RejectReason::Blocked);

        // The recorded header played again from another address: a replay.
        let mut replay = connect(env.clients[2]).await.expect("tcp accept");
        write_all(&mut replay, &header).await.unwrap();
        assert!(read_to_end(&mut replay).await.is_err());
        let (end, _, _) = expect_closed(env, 2).await;
        assert_eq!(end, End::Probe(Invalid::Replay));
        expect_event(env, |e| {
            matches!(e, GuardEvent::Engine(Event::ReplayDetected { .. })).then_some(())
        })
        .await;

        // Only the real client ever reached the backend.
        let log = env.backend.borrow().connections.clone();
        assert_eq!(log.len(), 1);
        let mut want = header.clone();
        want.extend_from_slice(b"after the header");
        assert_eq!(log[0], want);
        good.close();
        assert!(read_to_end(&mut good).await.is_ok());
    });
}

#[test]
fn a_silent_client_is_timed_out_by_the_engine() {
    let mut policy = small_policy();
    policy.handshake_timeout = Some(StdDuration::from_secs(1));
    run::<4>(policy, SecretSet::new(), async |env| {
        let mut silent = connect(env.clients[3]).await.expect("admitted");
        expect_event(env, |e| {
            matches!(e, GuardEvent::Engine(Event::HandshakeTimeout { .. })).then_some(())
        })
        .await;
        let (end, _, _) = expect_closed(env, 3).await;
        assert_eq!(end, End::HandshakeTimeout);
        assert!(
            read_to_end(&mut silent).await.is_err(),
            "timed out is reset"
        );
        assert!(env.backend.borrow().connections.is_empty());
    });
}

#[test]
fn full_slots_refuse_cleanly_and_recover() {
    run::<2>(Policy::default(), SecretSet::new(), async |env| {
        let mut held = Vec::new();
        for c in 0..2 {
            let mut s = connect(env.clients[c]).await.expect("admitted");
            write_all(&mut s, b"x").await.unwrap();
            assert_eq!(read_exact(&mut s, 1).await, xor(b"x"));
            held.push(s);
        }
        let admitted = env.guard.with_engine(|e, _| e.stats().accepted);
        // No slot listens: the stack itself answers with a reset, and the
        // engine never hears of the attempt.
        for _ in 0..3 {
            assert!(connect(env.clients[2]).await.is_err(), "refused at SYN");
        }
        assert_eq!(env.guard.with_engine(|e, _| e.stats().accepted), admitted);

        // One slot frees up: the next client is served in full.
        let mut first = held.remove(0);
        first.close();
        assert!(read_to_end(&mut first).await.is_ok());
        expect_closed(env, 0).await;
        // The slot listens again once its old socket has lingered.
        let mut late = None;
        for _ in 0..200 {
            match connect(env.clients[2]).await {
                Ok(s) => {
                    late = Some(s);
                    break;
                }
                Err(_) => Timer::after(Duration::from_millis(50)).await,
            }
        }
        let mut late = late.expect("a freed slot serves again");
        let data = payload(5_000, 9);
        write_all(&mut late, &data).await.unwrap();
        assert_eq!(read_exact(&mut late, data.len()).await, xor(&data));
        late.close();
        assert!(read_to_end(&mut late).await.is_ok());
    });
}
