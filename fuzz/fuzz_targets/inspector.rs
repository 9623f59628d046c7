//! The MTProto inspector fed arbitrary bytes in arbitrary splits: it must
//! never panic, and every split of the same bytes must give the same verdict.
//!
//! Input layout (raw, so the test vectors make seeds as they are):
//! `[clock: u8][cuts: u8][cut: u16 LE] x cuts [bytes...]`. The clock is
//! seconds around the vectors' 1,800,000,000, so valid fake-TLS hellos
//! stay valid and the fuzzer reaches past the HMAC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_core::mtproto::{replay::Entry, Inspector, ReplayCache, Secret, SecretSet, TimeWindow};

fuzz_target!(|data: &[u8]| {
    let (clock, rest) = data.split_first().unwrap_or((&128, &[]));
    let (cuts, mut rest) = rest.split_first().unwrap_or((&0, &[]));
    let mut cut_points = Vec::new();
    for _ in 0..*cuts {
        let Some((c, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        cut_points.push(u16::from_le_bytes(*c));
        rest = tail;
    }
    let bytes = rest;
    // The secrets of the committed vectors (core/tests/vectors/), and one
    // of another key for the wrong-sni vector's SNI (www.example.org), so
    // that the lookup by SNI picks between domains.
    let mut secrets = SecretSet::new();
    for s in [
        "0123456789abcdef0123456789abcdef",
        "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d",
        "eefedcba9876543210fedcba98765432107777772e6578616d706c652e6f7267",
        "ddfedcba9876543210fedcba9876543210",
    ] {
        secrets.push(Secret::parse(s).unwrap()).unwrap();
    }
    let now = 1_800_000_000 - 128 + u64::from(*clock);
    let judge = |pieces: &[&[u8]]| {
        let mut replay =
            ReplayCache::new([Entry::EMPTY; 16], [3; 16], TimeWindow::default()).unwrap();
        let mut inspector: Box<Inspector> = Box::default();
        let mut verdict = None;
        for piece in pieces {
            verdict = Some(inspector.feed(piece, now, &secrets, &secrets, &mut replay));
        }
        verdict
    };
    let whole = judge(&[bytes]);
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cut_points {
        let next = at + usize::from(c) % (bytes.len() - at + 1);
        pieces.push(&bytes[at..next]);
        at = next;
    }
    pieces.push(&bytes[at..]);
    let split = judge(&pieces);
    assert_eq!(whole, split);
});
