//! Cost of judging one handshake, with 1 and 16 secrets configured (the
//! matching one last, so 16 secrets is the worst case), for obfuscated2 and
//! fake-TLS, replay-cache insertion included.
//!
//! Run: `cargo bench -p mtguard-core --bench handshake`. Each iteration
//! judges a whole first packet in one piece with a fresh inspector and
//! replay cache, built outside the timed part.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{Inspector, ReplayCache, Secret, SecretSet, TimeWindow, Verdict};

const OBFS2: &str = include_str!("../tests/vectors/obfuscated2.txt");
const FAKE_TLS: &str = include_str!("../tests/vectors/fake_tls.txt");

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

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    for (kind, file, name) in [
        ("obfuscated2", OBFS2, "dd-padded"),
        ("fake_tls_517", FAKE_TLS, "valid-517"),
        ("fake_tls_1397", FAKE_TLS, "valid-mlkem"),
    ] {
        let (secret, now, bytes) = vector(file, name);
        for count in [1u8, 16] {
            let set = secrets(&secret, count);
            group.bench_function(format!("{kind}/{count}_secrets"), |b| {
                b.iter_batched(
                    || {
                        let replay = ReplayCache::new(
                            vec![Entry::EMPTY; 16],
                            [3; 16],
                            TimeWindow::default(),
                        )
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
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
