//! The in-memory network the appliance tests run on. See appliance.rs.
#![allow(dead_code)]

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::task::Poll;
use std::time::Duration as StdDuration;

use embassy_futures::join::join_array;
use embassy_futures::select::select;
use embassy_net::driver::HardwareAddress;
use embassy_net::tcp::TcpSocket;
use embassy_net::{
    Config as NetConfig, ConfigV6, IpEndpoint, Ipv4Cidr, Ipv6Cidr, Stack, StackResources,
    StaticConfigV4, StaticConfigV6,
};
use embassy_net_driver_channel as ch;
use embassy_time::{with_timeout, Duration};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::SecretSet;
use mtguard_core::storage::Inline;
use mtguard_core::{Level, Policy, RejectReason, Seed};
use mtguard_embassy::{Config, End, Guard, GuardEvent, Slot};

pub const MTU: usize = 1500;
pub const CLIENTS: usize = 4;
pub const STACKS: usize = CLIENTS + 2;
pub const APPLIANCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const PORT: u16 = 443;
pub const BACKEND_SOCKETS: usize = 8;
/// The longest any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub type Small = Inline<64, 16, 8>;
pub type TestGuard<'a, const SLOTS: usize> = Guard<'a, Small, SLOTS>;
pub type TestSlot = Slot<4096, 2048>;

pub fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 11 + i as u8)
}

/// Every stack also has an IPv6 address, all in one /64 (so that the IPv6
/// clients share one client key under the default prefix length).
pub fn ip6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host)
}

/// The appliance's IPv6 address.
pub const APPLIANCE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// IPv6 address of client stack `i`.
pub fn client_ip6(i: usize) -> Ipv6Addr {
    ip6(0x11 + i as u16)
}

/// What the backend saw: the bytes of each connection, in accept order.
#[derive(Default)]
pub struct BackendLog {
    pub connections: Vec<Vec<u8>>,
}

/// What a test body gets.
pub struct Env<'a, const SLOTS: usize> {
    pub clients: [Stack<'a>; CLIENTS],
    pub guard: &'a TestGuard<'a, SLOTS>,
    pub backend: &'a RefCell<BackendLog>,
    /// Events received but not yet asked for: the order between the
    /// engine's events and the guard's own is not part of the contract.
    pub pending: RefCell<Vec<GuardEvent>>,
    /// The appliance's own stack (for its SNTP client).
    pub appliance: Stack<'a>,
    /// The backend's stack (for a server beside the proxy).
    pub backend_stack: Stack<'a>,
}

/// Forwards IP packets between the channel drivers by destination address,
/// as a switch would; packets to unknown addresses are dropped. Port `i`
/// owns `ips[i]` and `ip6s[i]`.
pub async fn switch(
    mut rx: Vec<ch::RxRunner<'_, MTU>>,
    mut tx: Vec<ch::TxRunner<'_, MTU>>,
    ips: Vec<Ipv4Addr>,
    ip6s: Vec<Ipv6Addr>,
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
        let to = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                ips.iter().position(|ip| *ip == dst)
            }
            Some(6) if packet.len() >= 40 => {
                let dst: [u8; 16] = packet[24..40].try_into().unwrap();
                ip6s.iter().position(|ip| *ip == Ipv6Addr::from(dst))
            }
            _ => None,
        };
        if let Some(to) = to {
            let buf = rx[to].rx_buf().await;
            buf[..packet.len()].copy_from_slice(&packet);
            rx[to].rx_done(packet.len());
        }
    }
}

/// The proxy behind the guard: answers each byte XOR 0xA5, closes when the
/// client does, and logs what it received.
pub async fn backend_server(stack: Stack<'_>, log: &RefCell<BackendLog>) {
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

pub async fn write_all(s: &mut TcpSocket<'_>, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        match s.write(data).await {
            Ok(n) if n > 0 => data = &data[n..],
            _ => return Err(()),
        }
    }
    Ok(())
}

/// Builds the network and the guard, runs `body` to completion.
pub fn run<const SLOTS: usize>(
    policy: Policy,
    secrets: SecretSet,
    body: impl AsyncFnOnce(&Env<'_, SLOTS>),
) {
    run_with(policy, secrets, |_| {}, body)
}

/// [`run`], with the guard's settings changed by `edit` first.
pub fn run_with<const SLOTS: usize>(
    policy: Policy,
    secrets: SecretSet,
    edit: impl FnOnce(&mut Config),
    body: impl AsyncFnOnce(&Env<'_, SLOTS>),
) {
    let mut states: Vec<ch::State<MTU, 16, 16>> = (0..STACKS).map(|_| ch::State::new()).collect();
    let mut resources: Vec<StackResources<16>> =
        (0..STACKS).map(|_| StackResources::new()).collect();
    let ips: Vec<Ipv4Addr> = [APPLIANCE, BACKEND]
        .into_iter()
        .chain((0..CLIENTS).map(client_ip))
        .collect();
    let ip6s: Vec<Ipv6Addr> = [APPLIANCE6, ip6(2)]
        .into_iter()
        .chain((0..CLIENTS).map(client_ip6))
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
        let mut config = NetConfig::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(ips[i], 24),
            gateway: None,
            dns_servers: Default::default(),
        });
        config.ipv6 = ConfigV6::Static(StaticConfigV6 {
            address: Ipv6Cidr::new(ip6s[i], 64),
            gateway: None,
            dns_servers: Default::default(),
        });
        let (stack, net_runner) = embassy_net::new(device, config, res, 0x1234_5678 + i as u64);
        stacks.push(stack);
        net_runners.push(net_runner);
    }

    let mut replay = vec![Entry::EMPTY; 256];
    let mut config = Config {
        port: PORT,
        backend: IpEndpoint::new(BACKEND.into(), PORT),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        window: mtguard_core::mtproto::TimeWindow::default(),
        clock_max_age: Duration::from_secs(3600),
    };
    edit(&mut config);
    let guard: TestGuard<'_, SLOTS> = Guard::new(
        Small::tables(),
        policy,
        Seed {
            hash_key: [3; 16],
            jitter: 11,
        },
        secrets,
        &mut replay,
        config,
    )
    .expect("a valid guard");
    let mut slots: Box<[TestSlot; SLOTS]> = Box::new(std::array::from_fn(|_| TestSlot::new()));
    let log = RefCell::new(BackendLog::default());

    let env = Env {
        clients: std::array::from_fn(|i| stacks[2 + i]),
        guard: &guard,
        backend: &log,
        pending: RefCell::new(Vec::new()),
        appliance: stacks[0],
        backend_stack: stacks[1],
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
            select(
                join_array(runners),
                switch(rx_runners, tx_runners, ips, ip6s),
            ),
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

/// A connection from client stack `c` to the appliance's IPv4 address.
pub async fn connect<'a>(
    stack: Stack<'a>,
) -> Result<TcpSocket<'a>, embassy_net::tcp::ConnectError> {
    connect_to(stack, APPLIANCE.into()).await
}

/// A connection from client stack `c` to `appliance`, with its own buffers.
pub async fn connect_to<'a>(
    stack: Stack<'a>,
    appliance: embassy_net::IpAddress,
) -> Result<TcpSocket<'a>, embassy_net::tcp::ConnectError> {
    let rx = Box::leak(vec![0u8; 8192].into_boxed_slice());
    let tx = Box::leak(vec![0u8; 8192].into_boxed_slice());
    // No smoltcp timeout: it would abort a connection that is merely idle
    // while a test waits.
    let mut s = TcpSocket::new(stack, rx, tx);
    s.connect(IpEndpoint::new(appliance, PORT)).await?;
    Ok(s)
}

/// Reads until the peer closes; `Err` if it reset the connection.
pub async fn read_to_end(s: &mut TcpSocket<'_>) -> Result<Vec<u8>, ()> {
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
pub async fn read_exact(s: &mut TcpSocket<'_>, n: usize) -> Vec<u8> {
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
pub async fn expect_event<const SLOTS: usize, T>(
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

pub async fn expect_refused<const SLOTS: usize>(env: &Env<'_, SLOTS>, c: usize) -> RejectReason {
    let ip = client_ip(c);
    expect_event(env, |e| match e {
        GuardEvent::Refused { client, reason } if *client == ip => Some(*reason),
        _ => None,
    })
    .await
}

pub async fn expect_closed<const SLOTS: usize>(env: &Env<'_, SLOTS>, c: usize) -> (End, u64, u64) {
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
pub fn payload(len: usize, salt: u8) -> Vec<u8> {
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

pub fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ 0xA5).collect()
}

/// A policy with small numbers so every limit is reached in a few
/// connections: 2 per client, blocked after 2 refusals for 1 s.
pub fn small_policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.max_connections_per_client = 2;
    p.block_after_violations = 2;
    p.block_duration = StdDuration::from_secs(1);
    p.max_block_duration = StdDuration::from_secs(1);
    p.block_jitter_permille = 0;
    p.scanner_failures = 2;
    p
}

pub const OBFS2: &str = include_str!("../../../core/tests/vectors/obfuscated2.txt");

/// A first packet recorded from Telethon (an independent MTProxy client).
pub fn telethon(name: &str) -> Vec<u8> {
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
