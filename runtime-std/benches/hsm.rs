//! The price of keys in a token: one handshake judged with the key in
//! software against the same key in SoftHSM2 (through cryptoki, one pooled
//! session), for fake-TLS (HMAC-SHA256 in the token) and obfuscated2
//! (SHA-256 with C_DigestKey in the token).
//!
//! Run: `cargo bench -p mtguard --bench hsm` (needs Debian's softhsm2;
//! test.sh installs it). A fresh token is made in a temporary directory.
//! Each iteration judges a whole first packet with a fresh inspector; the
//! replay store accepts everything so the same packet can be judged again.

use std::hint::black_box;
use std::process::Command;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mtguard::config::{HsmConfig, PinSource};
use mtguard::hsm::{Keys, Token};
use mtguard_core::mtproto::replay::{Fingerprint, ReplayRefusal};
use mtguard_core::mtproto::{
    Inspector, KeyOps, ReplayStore, Secret, SecretSet, TimeWindow, Verdict,
};

const OBFS2: &str = include_str!("../../core/tests/vectors/obfuscated2.txt");
const FAKE_TLS: &str = include_str!("../../core/tests/vectors/fake_tls.txt");

#[path = "../../core/benches/common/vectors.rs"]
mod vectors;
use vectors::vector;

/// Remembers nothing: replays are the replay cache's cost, measured in
/// the core's handshake bench, not the token's.
struct NoReplay;

impl ReplayStore for NoReplay {
    fn window(&self) -> TimeWindow {
        TimeWindow::default()
    }
    fn record(&mut self, _: Fingerprint<'_>, _: u64) -> Result<(), ReplayRefusal> {
        Ok(())
    }
}

fn judge(set: &SecretSet, keys: &dyn KeyOps, bytes: &[u8], now: u64) -> Verdict {
    let mut inspector: Box<Inspector> = Box::default();
    inspector.feed(bytes, now, set, keys, &mut NoReplay)
}

fn token(dir: &std::path::Path) -> std::sync::Arc<Token> {
    std::fs::create_dir(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pin"), "1234").unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ok = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "bench"])
        .args(["--so-pin", "5678", "--pin", "1234"])
        .output()
        .expect("softhsm2-util (Debian softhsm2)")
        .status
        .success();
    assert!(ok, "softhsm2-util --init-token failed");
    Token::open(&HsmConfig {
        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token: "bench".into(),
        pin: PinSource::File(dir.join("pin")),
        integrity_key: "integrity".into(),
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let token = token(dir.path());
    let mut group = c.benchmark_group("hsm");
    for (file, name, label) in [
        (FAKE_TLS, "valid-517", "fake_tls"),
        (OBFS2, "classic-abridged", "obfuscated2"),
    ] {
        let (secret, now, bytes) = vector(file, name);
        let secret = Secret::parse(&secret).unwrap();
        token.store_secret(label, &secret).unwrap();
        let mut software = SecretSet::new();
        software.push(secret).unwrap();
        let (set, keys) = Keys::with_token(&[], &[label.to_owned()], Some(token.clone())).unwrap();
        assert!(matches!(
            judge(&software, &software, &bytes, now),
            Verdict::Valid(_)
        ));
        assert!(matches!(judge(&set, &keys, &bytes, now), Verdict::Valid(_)));

        group.bench_function(format!("{label}/software"), |b| {
            b.iter_batched(
                || (),
                |()| black_box(judge(&software, &software, black_box(&bytes), now)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("{label}/softhsm2"), |b| {
            b.iter_batched(
                || (),
                |()| black_box(judge(&set, &keys, black_box(&bytes), now)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
