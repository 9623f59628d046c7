//! Admission cost on a full server-sized table, side by side with governor's
//! keyed rate limiter fed the same address stream; the cost of the
//! pending → authenticated transition a valid handshake adds; and the same
//! admissions with the network tier on (issue 17).
//!
//! Run: `cargo bench -p mtguard-core --bench admission`. docs/core.md reports
//! the figures as ns/op and as the ratio mtguard / governor.
// criterion_group! writes a `pub fn` without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use governor::{Quota, RateLimiter};
use mtguard_core::cidr::CidrEntry;
use mtguard_core::storage::{Borrowed, Tables};
use mtguard_core::table::{ClientSlot, ConnSlot, NetworkSlot};
use mtguard_core::{Instant, Level, Policy, SecurityManager, Seed, Verdict};

const CLIENTS: usize = 65_536;

fn addresses(n: u32, salt: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            // Spread over 10.0.0.0/8 so neighbours do not share prefixes.
            let x = i.wrapping_mul(2_654_435_761) ^ salt;
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff)))
        })
        .collect()
}

struct Memory {
    clients: Vec<ClientSlot>,
    buckets: Vec<u32>,
    conns: Vec<ConnSlot>,
    allow: Vec<CidrEntry>,
    deny: Vec<CidrEntry>,
    networks: Vec<NetworkSlot>,
    network_buckets: Vec<u32>,
}

impl Memory {
    fn new() -> Self {
        Memory {
            clients: vec![ClientSlot::EMPTY; CLIENTS],
            buckets: vec![u32::MAX; CLIENTS],
            conns: vec![ConnSlot::EMPTY; 4_096],
            allow: vec![CidrEntry::EMPTY; 16],
            deny: vec![CidrEntry::EMPTY; 16],
            // As many as clients: the server preset's proportion.
            networks: vec![NetworkSlot::EMPTY; CLIENTS],
            network_buckets: vec![u32::MAX; CLIENTS],
        }
    }

    /// Level 1 without its rate limits; with `network_tier`, limits per
    /// /24 that every network of the stream stays under.
    fn guard(&mut self, network_tier: bool) -> SecurityManager<Borrowed<'_>> {
        let mut p = Policy::for_level(Level::Standard);
        p.global_max_new_per_second = u32::MAX;
        p.max_new_connections_per_window = u16::MAX;
        p.attack_enter_per_second = None;
        if network_tier {
            p.max_connections_per_network = 500;
            p.max_new_connections_per_network = u16::MAX;
        }
        let tables = Tables {
            clients: &mut self.clients[..],
            buckets: &mut self.buckets[..],
            connections: &mut self.conns[..],
            allow: &mut self.allow[..],
            deny: &mut self.deny[..],
            networks: &mut self.networks[..],
            network_buckets: &mut self.network_buckets[..],
        };
        let seed = Seed {
            hash_key: *b"benchmark-key-16",
            jitter: 1,
        };
        SecurityManager::new(tables, p, seed, Instant::ZERO).expect("valid tables")
    }
}

fn admit_close(g: &mut SecurityManager<Borrowed<'_>>, now: Instant, ip: IpAddr) {
    if let Verdict::Admit(c) = g.handle_connect(now, ip) {
        let _ = g.handle_close(now, c);
    }
    while g.poll_event().is_some() {}
}

fn bench(c: &mut Criterion) {
    let known = addresses(CLIENTS as u32, 0);
    let fresh = addresses(1 << 20, 0x5555_5555);
    let mut group = c.benchmark_group("admission");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(4));

    let mut mem = Memory::new();
    let mut g = mem.guard(false);
    for ip in &known {
        admit_close(&mut g, Instant::from_millis(1), *ip);
    }
    assert_eq!(g.tracked_clients() as usize, CLIENTS);
    let mut i = 0usize;
    let mut ms = 1u64;
    group.bench_function("mtguard admit+close, full table, known clients", |b| {
        b.iter(|| {
            i = (i + 1) % known.len();
            ms += 1;
            admit_close(&mut g, Instant::from_millis(ms / 64), black_box(known[i]));
        })
    });
    let mut a = 0usize;
    group.bench_function(
        "mtguard admit+authenticate+close, full table, known clients",
        |b| {
            b.iter(|| {
                a = (a + 1) % known.len();
                ms += 1;
                let now = Instant::from_millis(ms / 64);
                if let Verdict::Admit(c) = g.handle_connect(now, black_box(known[a])) {
                    let _ = black_box(g.handle_authenticated(now, c));
                    let _ = g.handle_close(now, c);
                }
                while g.poll_event().is_some() {}
            })
        },
    );
    let mut j = 0usize;
    group.bench_function("mtguard admit+close, full table, new client evicts", |b| {
        b.iter(|| {
            j = (j + 1) % fresh.len();
            admit_close(&mut g, Instant::from_millis(ms / 64), black_box(fresh[j]));
        })
    });
    drop(g);

    // The same streams with the network tier on: a second SipHash and a
    // second slot per admission.
    let mut mem = Memory::new();
    let mut g = mem.guard(true);
    for ip in &known {
        admit_close(&mut g, Instant::from_millis(1), *ip);
    }
    assert_eq!(g.tracked_clients() as usize, CLIENTS);
    // Every /24 of the stream is tracked: the tier does real work here.
    let networks: std::collections::HashSet<u32> = known
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => u32::from(*v4) >> 8,
            IpAddr::V6(_) => unreachable!("the stream is IPv4"),
        })
        .collect();
    assert_eq!(g.tracked_networks() as usize, networks.len());
    group.bench_function(
        "mtguard admit+close, full table, known clients, network tier on",
        |b| {
            b.iter(|| {
                i = (i + 1) % known.len();
                ms += 1;
                admit_close(&mut g, Instant::from_millis(ms / 64), black_box(known[i]));
            })
        },
    );
    group.bench_function(
        "mtguard admit+close, full table, new client evicts, network tier on",
        |b| {
            b.iter(|| {
                j = (j + 1) % fresh.len();
                admit_close(&mut g, Instant::from_millis(ms / 64), black_box(fresh[j]));
            })
        },
    );
    assert_eq!(
        g.stats().rejected.iter().sum::<u64>(),
        0,
        "every admission of the bench is admitted"
    );
    drop(g);

    let quota = Quota::per_minute(NonZeroU32::new(u32::from(u16::MAX)).unwrap());
    let limiter = RateLimiter::keyed(quota);
    for ip in &known {
        let _ = limiter.check_key(ip);
    }
    let mut k = 0usize;
    group.bench_function("governor check_key, 65,536 known keys", |b| {
        b.iter(|| {
            k = (k + 1) % known.len();
            black_box(limiter.check_key(black_box(&known[k])).is_ok())
        })
    });
    let mut n = 0usize;
    group.bench_function("governor check_key, new key each time", |b| {
        b.iter_batched(
            || {
                n = (n + 1) % fresh.len();
                fresh[n]
            },
            |ip| black_box(limiter.check_key(&ip).is_ok()),
            BatchSize::SmallInput,
        )
    });
    println!(
        "governor keyed store after the run: {} keys (it grows until retain_recent() is called)",
        limiter.len()
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
