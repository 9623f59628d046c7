//! Prefix sets: what building a full list costs (a config load or a
//! reload of the denylist), by the bulk build and, for comparison, by
//! inserting the prefixes one by one; and one lookup in the full set.
//!
//! Run: `cargo bench -p mtguard-core --bench prefixes -- --warm-up-time 1 --measurement-time 3`.
// criterion_group! writes a `pub fn` without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use mtguard_core::addr::map_ip;
use mtguard_core::cidr::{Cidr, CidrEntry, CidrSet, Origin};
use mtguard_core::storage::ServerPreset;

/// SplitMix64: fixed data, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct IPv4 prefixes shaped like FireHOL level1 (mostly /24s and
/// hosts, a few large blocks), in random order as list files give them.
fn list(n: usize) -> Vec<Cidr> {
    let mut rng = Rng(0x6d74_6775_6172_6421);
    let mut out = std::collections::BTreeSet::new();
    while out.len() < n {
        let len = match rng.next() % 100 {
            0..=1 => 8 + (rng.next() % 5) as u8,
            2..=19 => 13 + (rng.next() % 11) as u8,
            20..=69 => 24,
            _ => 32,
        };
        out.insert(Cidr::new(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)), len).unwrap());
    }
    let mut out: Vec<Cidr> = out.into_iter().collect();
    // Shuffle (Fisher-Yates): sorted input would flatter the sort.
    for i in (1..out.len()).rev() {
        out.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    out
}

fn storage() -> Box<[CidrEntry]> {
    vec![CidrEntry::EMPTY; ServerPreset::PREFIXES].into_boxed_slice()
}

fn bench(c: &mut Criterion) {
    let full = list(ServerPreset::PREFIXES);
    let mut group = c.benchmark_group("prefixes");
    group.sample_size(10);
    group.bench_function("bulk build/8192", |b| {
        b.iter(|| {
            let items = full.iter().map(|&c| (c, Origin::Config));
            let set = CidrSet::build(storage(), black_box(items)).unwrap();
            assert_eq!(set.len(), full.len());
            set
        })
    });
    group.bench_function("insert one by one/8192", |b| {
        b.iter(|| {
            let mut set = CidrSet::new(storage());
            for &c in black_box(&full) {
                set.insert(c, Origin::Config).unwrap();
            }
            set
        })
    });
    let set = CidrSet::build(storage(), full.iter().map(|&c| (c, Origin::Config))).unwrap();
    let mut rng = Rng(7);
    let probes: Vec<u128> = (0..1024)
        .map(|_| map_ip(IpAddr::V4(Ipv4Addr::from(rng.next() as u32))))
        .collect();
    group.bench_function("lookup in full set/1024 addresses", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|&&p| set.contains_bits(black_box(p)))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
