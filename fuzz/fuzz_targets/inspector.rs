//! The MTProto inspector fed arbitrary bytes in arbitrary splits: it must
//! never panic, and every split of the same bytes must give the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_core::mtproto::{replay::Entry, Inspector, ReplayCache, Secret, SecretSet, TimeWindow};

fuzz_target!(|input: (Vec<u8>, Vec<u16>, u32)| {
    let (bytes, cuts, now) = input;
    let mut secrets = SecretSet::new();
    for s in [
        "0123456789abcdef0123456789abcdef",
        "dd00112233445566778899aabbccddeeff",
        "ee00112233445566778899aabbccddeeff6578616d706c652e636f6d",
    ] {
        secrets.push(Secret::parse(s).unwrap()).unwrap();
    }
    let now = 1_700_000_000 + u64::from(now % 1_000_000);
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
    let whole = judge(&[&bytes]);
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        let next = at + usize::from(c) % (bytes.len() - at + 1);
        pieces.push(&bytes[at..next]);
        at = next;
    }
    pieces.push(&bytes[at..]);
    let split = judge(&pieces);
    assert_eq!(whole, split);
});
