//! JA4 fingerprints against an independent implementation: the first
//! records of openssl s_client, curl, wget, Python's ssl module and the
//! fake-TLS hellos of fake_tls.txt, with the JA4 that ja4plus (PyPI)
//! computed for each (tests/vectors/ja4_generate.py).

use mtguard_core::ja4::Ja4;
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{Inspector, ReplayCache, Secret, SecretSet, TimeWindow, Verdict};

const VECTORS: &str = include_str!("vectors/ja4.txt");
const FAKE_TLS: &str = include_str!("vectors/fake_tls.txt");

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// (name, expected JA4, record).
fn vectors() -> Vec<(String, String, Vec<u8>)> {
    VECTORS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].into(), f[1].into(), hex(f[2]))
        })
        .collect()
}

#[test]
fn every_vector_matches_ja4plus() {
    let vs = vectors();
    for source in ["openssl-", "curl-", "python-ssl", "fake-tls-"] {
        assert!(
            vs.iter().any(|(n, _, _)| n.starts_with(source)),
            "vectors from {source}"
        );
    }
    for (name, expected, record) in &vs {
        let ja4 = Ja4::of_record(record).unwrap_or_else(|| panic!("{name}: no fingerprint"));
        assert_eq!(ja4.as_str(), expected, "{name}");
        assert_eq!(Ja4::parse(expected), Some(ja4), "{name}");
    }
}

#[test]
fn the_inspector_fingerprints_valid_clients_and_probes_once_the_record_is_in() {
    // The fake-TLS listener of the vectors: a plain TLS client is a probe
    // to it (refused), a fake-TLS client valid; both are fingerprinted.
    let secret = FAKE_TLS
        .lines()
        .find(|l| l.starts_with("valid-517 "))
        .unwrap()
        .split(' ')
        .collect::<Vec<_>>();
    let mut secrets = SecretSet::new();
    secrets.push(Secret::parse(secret[1]).unwrap()).unwrap();
    let now: u64 = secret[2].parse().unwrap();
    for (name, expected, record) in vectors() {
        let mut replay =
            ReplayCache::new(vec![Entry::EMPTY; 8], [1; 16], TimeWindow::default()).unwrap();
        let mut inspector: Box<Inspector> = Box::default();
        let half = record.len() / 2;
        let v = inspector.feed(&record[..half], now, &secrets, &secrets, &mut replay);
        assert_eq!((v, inspector.ja4()), (Verdict::NeedMore, None), "{name}");
        let v = inspector.feed(&record[half..], now, &secrets, &secrets, &mut replay);
        let valid = matches!(v, Verdict::Valid(_));
        assert_eq!(valid, name.starts_with("fake-tls-valid-"), "{name}: {v:?}");
        assert_eq!(
            inspector.ja4().map(|j| j.to_string()),
            Some(expected),
            "{name}"
        );
    }
}

#[test]
fn an_accepted_obfuscated2_header_has_no_fingerprint() {
    // An obfuscated2 header is random bytes, even when they start 16 03 01.
    let line = include_str!("vectors/tls_prefix.txt")
        .lines()
        .find(|l| l.starts_with("tls-16030107-abridged "))
        .unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    let mut secrets = SecretSet::new();
    for s in f[1].split(',') {
        secrets.push(Secret::parse(s).unwrap()).unwrap();
    }
    let mut replay =
        ReplayCache::new(vec![Entry::EMPTY; 8], [1; 16], TimeWindow::default()).unwrap();
    let mut inspector: Box<Inspector> = Box::default();
    let v = inspector.feed(&hex(f[3]), 1_800_000_000, &secrets, &secrets, &mut replay);
    assert!(matches!(v, Verdict::Valid(_)), "{v:?}");
    assert_eq!(inspector.ja4(), None);
}
