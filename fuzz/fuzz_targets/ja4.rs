//! The JA4 parser fed arbitrary first records: it must never panic, what
//! it writes must read back with `Ja4::parse`, the inspector must give the
//! same fingerprint for the same bytes, and the count table must stay
//! sorted and bounded.
//!
//! Input: the bytes a client sends first, raw (the JA4 vectors of
//! core/tests/vectors/ja4.txt make the seeds as they are).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_core::ja4::{Ja4, Ja4Counts};
use mtguard_core::mtproto::{replay::Entry, Inspector, ReplayCache, Secret, SecretSet, TimeWindow};

fuzz_target!(|bytes: &[u8]| {
    let ja4 = Ja4::of_record(bytes);
    if let Some(ja4) = ja4 {
        let text = ja4.as_str();
        assert_eq!(text.len(), 36);
        assert!(text.starts_with('t'));
        assert_eq!(Ja4::parse(text), Some(ja4));
    }

    // A fake-TLS listener buffers up to a whole record and fingerprints
    // what it holds, whatever its verdict.
    let mut secrets = SecretSet::new();
    let ee = "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d";
    secrets.push(Secret::parse(ee).unwrap()).unwrap();
    let mut replay = ReplayCache::new([Entry::EMPTY; 4], [3; 16], TimeWindow::default()).unwrap();
    let mut inspector: Box<Inspector> = Box::default();
    let _ = inspector.feed(bytes, 1_800_000_000, &secrets, &secrets, &mut replay);
    let held = &bytes[..bytes.len().min(mtguard_core::mtproto::RECORD_MAX)];
    assert_eq!(inspector.ja4(), Ja4::of_record(held));

    // The bytes' fingerprint and ones derived from them, in a small table.
    let mut table = Ja4Counts::<4>::new([7; 16]);
    for (i, b) in bytes.iter().take(64).enumerate() {
        let text = format!("t13d{:02}00h2_{:012x}_000000000000", b % 100, i % 7);
        table.record(&Ja4::parse(&text).unwrap());
        if let Some(ja4) = &ja4 {
            table.record(ja4);
        }
    }
    let counts: Vec<u64> = table.top().map(|c| c.count).collect();
    assert!(counts.len() <= 4);
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
    assert!(table.top().all(|c| c.overcount < c.count));
});
