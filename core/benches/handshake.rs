//! Cost of judging one handshake, with 1 and 16 secrets configured (the
//! matching one last, so 16 secrets is the worst case), for obfuscated2 and
//! fake-TLS, replay-cache insertion included; and on listeners with both
//! kinds, where a start of `16 03 01 xx` (xx not 02) is first tried as an
//! obfuscated2 header, then as a ClientHello.
//!
//! For fake-TLS, 16 secrets of one domain are the worst case (every one is
//! tried, since only the SNI narrows them down); 16 secrets of distinct
//! domains, the match first or last, show that the SNI picks the one
//! candidate and that its place does not matter.
//!
//! The `ja4` group measures what fingerprinting adds to each hello: the
//! JA4 of real clients' first records, and counting one in a full table.
//!
//! Run: `cargo bench -p mtguard-core --bench handshake`. Each iteration
//! judges a whole first packet in one piece with a fresh inspector and
//! replay cache, built outside the timed part.
// criterion_group! writes a `pub fn` without a doc comment.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mtguard_core::ja4::{Ja4, Ja4Counts};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{Inspector, ReplayCache, Secret, SecretSet, TimeWindow, Verdict};

const OBFS2: &str = include_str!("../tests/vectors/obfuscated2.txt");
const FAKE_TLS: &str = include_str!("../tests/vectors/fake_tls.txt");
const TLS_PREFIX: &str = include_str!("../tests/vectors/tls_prefix.txt");
const JA4: &str = include_str!("../tests/vectors/ja4.txt");

#[path = "common/vectors.rs"]
mod vectors;
use vectors::vector;

/// `count` secrets of the same kind as `matching`, which comes last.
fn secrets(matching: &str, count: u8) -> SecretSet {
    let mut set = SecretSet::new();
    for i in 1..count {
        let key = format!("{i:02x}").repeat(16);
        let other = match &matching[..2] {
            "dd" => format!("dd{key}"),
            "ee" => format!("ee{key}{}", &matching[34..]),
            _ => key,
        };
        set.push(Secret::parse(&other).unwrap()).unwrap();
    }
    set.push(Secret::parse(matching).unwrap()).unwrap();
    set
}

/// The matching `ee` secret and 15 others, each with its own key and
/// domain, the matching one first or last.
fn distinct_domains(matching: &str, first: bool) -> SecretSet {
    let mut set = SecretSet::new();
    if first {
        set.push(Secret::parse(matching).unwrap()).unwrap();
    }
    for i in 1..16u8 {
        let key = format!("{i:02x}").repeat(16);
        let domain: String = format!("d{i}.example.net")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        set.push(Secret::parse(&format!("ee{key}{domain}")).unwrap())
            .unwrap();
    }
    if !first {
        set.push(Secret::parse(matching).unwrap()).unwrap();
    }
    set
}

/// The matching `ee` secret and `count - 1` classic ones before it: the
/// most obfuscated2 keys a ClientHello starting `16 03 01 xx` is tried
/// under before its own.
fn mixed(matching_ee: &str, count: u8) -> SecretSet {
    let mut set = SecretSet::new();
    for i in 1..count {
        let key = format!("{i:02x}").repeat(16);
        set.push(Secret::parse(&key).unwrap()).unwrap();
    }
    set.push(Secret::parse(matching_ee).unwrap()).unwrap();
    set
}

/// The listener's secrets as the tls_prefix vectors list them.
fn listed(secrets: &str) -> SecretSet {
    let mut set = SecretSet::new();
    for s in secrets.split(',') {
        set.push(Secret::parse(s).unwrap()).unwrap();
    }
    set
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let mut cases = Vec::new();
    for (kind, file, name) in [
        ("obfuscated2", OBFS2, "dd-padded"),
        ("fake_tls_517", FAKE_TLS, "valid-517"),
        ("fake_tls_1397", FAKE_TLS, "valid-mlkem"),
    ] {
        let (secret, now, bytes) = vector(file, name);
        for count in [1u8, 16] {
            cases.push((
                format!("{kind}/{count}_secrets"),
                secrets(&secret, count),
                now,
                bytes.clone(),
            ));
        }
    }
    let (secret, now, bytes) = vector(FAKE_TLS, "valid-mlkem");
    for (place, first) in [("first", true), ("last", false)] {
        cases.push((
            format!("fake_tls_1397/16_distinct_domains_match_{place}"),
            distinct_domains(&secret, first),
            now,
            bytes.clone(),
        ));
    }
    // valid-1800 starts 16 03 01 07: on a mixed listener its first 64 bytes
    // are judged as obfuscated2 under every classic secret first.
    let (ee, now, hello) = vector(FAKE_TLS, "valid-1800");
    cases.push((
        "fake_tls_1800/1_secret".into(),
        mixed(&ee, 1),
        now,
        hello.clone(),
    ));
    for count in [2u8, 16] {
        cases.push((
            format!("fake_tls_1800/mixed_{count}_secrets"),
            mixed(&ee, count),
            now,
            hello.clone(),
        ));
    }
    let (both, _, header) = vector(TLS_PREFIX, "tls-16030107-abridged");
    cases.push((
        "obfuscated2_tls_start/mixed_2_secrets".into(),
        listed(&both),
        0,
        header,
    ));
    for (label, set, now, bytes) in cases {
        group.bench_function(label, |b| {
            b.iter_batched(
                || {
                    let replay =
                        ReplayCache::new(vec![Entry::EMPTY; 16], [3; 16], TimeWindow::default())
                            .unwrap();
                    (Box::<Inspector>::default(), replay)
                },
                |(mut inspector, mut replay)| {
                    let v = inspector.feed(black_box(&bytes), now, &set, &set, &mut replay);
                    assert!(matches!(v, Verdict::Valid(_)));
                    v
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The JA4 fingerprint of one first record, and counting it in a full
/// table of 64, beside the handshake judging above (same run, same
/// machine): what fingerprinting adds to each hello.
fn ja4(c: &mut Criterion) {
    let mut group = c.benchmark_group("ja4");
    for name in [
        "fake-tls-valid-mlkem",
        "openssl-default",
        "openssl-tls12-all-ciphers",
        "curl-default",
    ] {
        // ja4.txt lines: name, expected JA4, record.
        let (expected, _, record) = vector(JA4, name);
        assert_eq!(Ja4::of_record(&record).unwrap().as_str(), expected);
        group.bench_function(format!("of_record/{name}"), |b| {
            b.iter(|| Ja4::of_record(black_box(&record)).unwrap())
        });
    }
    let mut table = Ja4Counts::<64>::new([5; 16]);
    let fingerprints: Vec<Ja4> = (0..200u32)
        .map(|i| Ja4::parse(&format!("t13d1516h2_{i:012x}_e5627efa2ab1")).unwrap())
        .collect();
    for f in &fingerprints {
        table.record(f);
    }
    let mut i = 0;
    group.bench_function("counts_64_full/record", |b| {
        b.iter(|| {
            // Mostly known fingerprints, one new in 8: replaces the least.
            i += 1;
            let f = &fingerprints[if i % 8 == 0 { 64 + i % 136 } else { i % 16 }];
            table.record(black_box(f));
        })
    });
    group.finish();
}

criterion_group!(benches, bench, ja4);
criterion_main!(benches);
