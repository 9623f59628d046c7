//! Pin verification: what checking an upstream TLS chain costs, with one
//! pin and with the full set of 100 (every certificate is compared with
//! every pin, in constant time, so the worst case is the usual case).
//!
//! Run: `cargo bench -p mtguard-core --bench pins`.
// criterion_group! writes a `pub fn` without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mtguard_core::pins::{Pin, PinKind, PinSet, PinVerdict};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const NOW: u64 = 1_800_000_000;

/// Leaf, intermediate and CA (ECDSA P-256), as a TLS server sends them.
fn chain() -> [Vec<u8>; 3] {
    let [ca_key, int_key, leaf_key] = [(); 3].map(|_| KeyPair::generate().unwrap());
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_issuer = Issuer::new(ca, &ca_key);
    let mut int = CertificateParams::default();
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.distinguished_name
        .push(DnType::CommonName, "bench intermediate");
    let int_cert = int.signed_by(&int_key, &ca_issuer).unwrap();
    let int_issuer = Issuer::new(int, &int_key);
    let leaf = CertificateParams::new(vec!["upstream.bench.test".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &int_issuer).unwrap();
    [leaf_cert, int_cert, ca_cert].map(|c| c.der().to_vec())
}

/// `count` pins; the last one matches the chain's CA (SPKI pin), the
/// others are certificate pins of nothing in the chain.
fn pins(chain: &[Vec<u8>; 3], count: usize) -> PinSet {
    let mut set = PinSet::default();
    for i in 0..count - 1 {
        let mut text = String::from("cert-sha256/");
        for b in 0..32u8 {
            text.push_str(&format!("{:02x}", b ^ i as u8 ^ 0x5a));
        }
        set.add(Pin::parse(&text).unwrap()).unwrap();
    }
    set.add(Pin::of_certificate(&chain[2], PinKind::Spki).unwrap())
        .unwrap();
    set
}

fn bench(c: &mut Criterion) {
    let chain = chain();
    let refs: [&[u8]; 3] = [&chain[0], &chain[1], &chain[2]];
    let mut group = c.benchmark_group("pins");
    for count in [1usize, 100] {
        let set = pins(&chain, count);
        group.bench_function(format!("verify 3-certificate chain/{count}_pins"), |b| {
            b.iter(|| {
                let v = set.verify(black_box(&refs), NOW);
                assert!(matches!(v, PinVerdict::Match { .. }));
                v
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
