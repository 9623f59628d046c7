// Unit tests for src/ja4.rs: FoxIO's worked example and edge rules from
// technical_details/JA4.md; real clients' hellos are checked against an
// independent implementation in tests/ja4.rs.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::*;

fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend((data.len() as u16).to_be_bytes());
    out.extend(data);
    out
}

fn list16(values: &[u16]) -> Vec<u8> {
    let mut out = ((values.len() * 2) as u16).to_be_bytes().to_vec();
    for v in values {
        out.extend(v.to_be_bytes());
    }
    out
}

fn alpn(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for n in names {
        list.push(n.len() as u8);
        list.extend(*n);
    }
    let mut out = (list.len() as u16).to_be_bytes().to_vec();
    out.extend(list);
    out
}

/// A TLS record holding a ClientHello with these suites and extensions.
fn record(version: u16, suites: &[u16], extensions: &[Vec<u8>]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7; 32]);
    body.push(32);
    body.extend([9; 32]);
    body.extend(list16(suites));
    body.extend([1, 0]);
    let exts: Vec<u8> = extensions.concat();
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1, 0];
    hs.extend((body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

const SUITES: [u16; 15] = [
    0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
    0x009d, 0x002f, 0x0035,
];
const SIGNATURES: [u16; 8] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
];

/// JA4.md's example hello: its extensions in its order, with data where
/// JA4 reads it.
fn example_extensions(signatures: &[u16]) -> Vec<Vec<u8>> {
    [
        0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
        0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
    ]
    .iter()
    .map(|&kind| match kind {
        0x0000 => ext(kind, b"\x00\x0e\x00\x00\x0bexample.com"),
        0x0010 => ext(kind, &alpn(&[b"h2", b"http/1.1"])),
        0x000d => ext(kind, &list16(signatures)),
        0x002b => ext(kind, &[4, 0x03, 0x04, 0x03, 0x03]),
        _ => ext(kind, &[]),
    })
    .collect()
}

#[test]
fn the_specification_example() {
    let rec = record(0x0303, &SUITES, &example_extensions(&SIGNATURES));
    let ja4 = Ja4::of_record(&rec).unwrap();
    assert_eq!(ja4.as_str(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
    // Without signature algorithms the extension list alone is hashed.
    let rec = record(0x0303, &SUITES, &example_extensions(&[]));
    assert_eq!(
        Ja4::of_record(&rec).unwrap().as_str(),
        "t13d1516h2_8daaf6152771_6d807ffa2a79"
    );
}

#[test]
fn grease_is_left_out_everywhere() {
    let mut suites = vec![0x0a0a];
    suites.extend(SUITES);
    let mut exts = vec![ext(0x1a1a, &[])];
    let mut sigs = vec![0x2a2a];
    sigs.extend(SIGNATURES);
    exts.extend(example_extensions(&sigs));
    exts.push(ext(0xfafa, &[0]));
    // A GREASE version above TLS 1.3 does not count either.
    exts.retain(|e| e[..2] != [0x00, 0x2b]);
    exts.push(ext(0x002b, &[6, 0x7a, 0x7a, 0x03, 0x04, 0x03, 0x03]));
    let rec = record(0x0303, &suites, &exts);
    assert_eq!(
        Ja4::of_record(&rec).unwrap().as_str(),
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    );
}

#[test]
fn version_sni_and_counts() {
    // No supported_versions: the legacy version; no SNI: `i`; no ALPN: 00.
    let exts = vec![ext(0x000a, &[0, 2, 0, 0x1d]), ext(0x000b, &[1, 0])];
    let rec = record(0x0302, &[0x002f, 0x0035], &exts);
    let ja4 = Ja4::of_record(&rec).unwrap();
    assert_eq!(&ja4.as_str()[..10], "t11i020200");
    for (version, chars) in [
        (0x0300, "s3"),
        (0x0002, "s2"),
        (0xfefd, "d2"),
        (0x0305, "00"),
    ] {
        let rec = record(version, &[0x002f], &exts);
        assert_eq!(&Ja4::of_record(&rec).unwrap().as_str()[1..3], chars);
    }
    // More than 99 suites are written 99, and all are hashed.
    let many: Vec<u16> = (1..=150).collect();
    let rec = record(0x0303, &many, &exts);
    let ja4 = Ja4::of_record(&rec).unwrap();
    assert_eq!(&ja4.as_str()[4..6], "99");
    let fewer = Ja4::of_record(&record(0x0303, &many[..99], &exts)).unwrap();
    assert_ne!(ja4.as_str()[11..23], fewer.as_str()[11..23]);
}

#[test]
fn empty_lists_hash_to_zeros() {
    // No suites; and only SNI and ALPN, which the extension hash leaves out.
    let exts = vec![
        ext(0x0000, b"\x00\x04\x00\x00\x01a"),
        ext(0x0010, &alpn(&[b"h2"])),
    ];
    let rec = record(0x0303, &[], &exts);
    assert_eq!(
        Ja4::of_record(&rec).unwrap().as_str(),
        "t12d0002h2_000000000000_000000000000"
    );
    // A hello without an extensions block at all (TLS 1.0 allows it).
    let mut rec = record(0x0301, &[0x002f], &[]);
    rec.truncate(rec.len() - 2);
    rec[4] -= 2;
    rec[8] -= 2;
    assert_eq!(&Ja4::of_record(&rec).unwrap().as_str()[..10], "t10i010000");
}

#[test]
fn alpn_edge_rules() {
    for (value, chars) in [
        (&b"http/1.1"[..], "h1"),
        (b"h2", "h2"),
        (b"x", "xx"),
        (b"", "00"),
        (b"\xab", "ab"),
        (b"\xab\xcd", "ad"),
        (b"\x30\xab", "3b"),
        (b"\x30\x31\xab\xcd", "3d"),
        (b"\x30\xab\xcd\x31", "01"),
    ] {
        let rec = record(0x0303, &[0x1301], &[ext(0x0010, &alpn(&[value, b"h2"]))]);
        assert_eq!(
            &Ja4::of_record(&rec).unwrap().as_str()[8..10],
            chars,
            "{value:?}"
        );
    }
    // A malformed ALPN extension is a hello without ALPN value.
    let rec = record(0x0303, &[0x1301], &[ext(0x0010, &[0, 9, 2])]);
    assert_eq!(&Ja4::of_record(&rec).unwrap().as_str()[8..10], "00");
}

#[test]
fn what_is_not_a_hello_has_no_fingerprint() {
    let good = record(0x0303, &SUITES, &example_extensions(&SIGNATURES));
    assert!(Ja4::of_record(&good).is_some());
    // Every truncation, and any first message other than a ClientHello.
    for cut in 0..good.len() {
        assert_eq!(Ja4::of_record(&good[..cut]), None, "cut at {cut}");
    }
    let mut server_hello = good.clone();
    server_hello[5] = 2;
    assert_eq!(Ja4::of_record(&server_hello), None);
    let mut alert = good.clone();
    alert[0] = 0x15;
    assert_eq!(Ja4::of_record(&alert), None);
    // Bytes after the record do not change it.
    let mut longer = good.clone();
    longer.extend([0x17, 3, 3, 0, 1, 0]);
    assert_eq!(Ja4::of_record(&longer), Ja4::of_record(&good));
    // Over the buffers: no fingerprint rather than a wrong one.
    let suites: Vec<u16> = (1..=(CIPHERS_MAX as u16 + 1)).collect();
    assert_eq!(Ja4::of_record(&record(0x0303, &suites, &[])), None);
    let exts: Vec<Vec<u8>> = (0x100..0x100 + EXTENSIONS_MAX as u16 + 1)
        .map(|k| ext(k, &[]))
        .collect();
    assert_eq!(Ja4::of_record(&record(0x0303, &[1], &exts)), None);
}

#[test]
fn parse_takes_what_of_record_writes() {
    let text = "t13d1516h2_8daaf6152771_e5627efa2ab1";
    assert_eq!(Ja4::parse(text).unwrap().as_str(), text);
    for bad in [
        "",
        "t13d1516h2_8daaf6152771_e5627efa2ab",
        "t13d1516h2_8daaf6152771_e5627efa2ab1x",
        "t13d1516h2-8daaf6152771_e5627efa2ab1",
        "t13d1516h2_8DAAF6152771_e5627efa2ab1",
        "t13d1516h _8daaf6152771_e5627efa2ab1",
        "t13d1516h2_8daaf6152771_e5627efa2abg",
    ] {
        assert_eq!(Ja4::parse(bad), None, "{bad}");
    }
}

fn fp(i: u32) -> Ja4 {
    let text = std::format!("t13d1516h2_{i:012x}_e5627efa2ab1");
    Ja4::parse(&text).unwrap()
}

#[test]
fn counts_are_kept_in_order() {
    let mut t = Ja4Counts::<4>::new([1; 16]);
    assert!(t.is_empty());
    for (i, n) in [(1, 3), (2, 5), (3, 1)] {
        for _ in 0..n {
            t.record(&fp(i));
        }
    }
    let top: Vec<(Ja4, u64)> = t.top().map(|c| (c.ja4, c.count)).collect();
    assert_eq!(top, [(fp(2), 5), (fp(1), 3), (fp(3), 1)]);
    assert_eq!(t.total(), 9);
    assert_eq!(t.get(&fp(1)).unwrap().count, 3);
    assert_eq!(t.get(&fp(9)), None);
}

#[test]
fn a_full_table_keeps_every_fingerprint_above_one_nth() {
    // Space-Saving's guarantees, checked against exact counts: a
    // fingerprint in more than 1/N of all hellos is in the table, and every
    // entry's true count lies between count - overcount and count.
    let mut t = Ja4Counts::<4>::new([2; 16]);
    let mut exact = std::collections::HashMap::new();
    let mut record = |t: &mut Ja4Counts<4>, ja4: Ja4| {
        t.record(&ja4);
        *exact.entry(ja4).or_insert(0u64) += 1;
    };
    for _ in 0..500 {
        record(&mut t, fp(1));
    }
    for _ in 0..400 {
        record(&mut t, fp(2));
    }
    // A flood of distinct fingerprints (total 1,900: 1/N is 475).
    for i in 1000..2000 {
        record(&mut t, fp(i));
    }
    assert_eq!(t.len(), 4);
    let first = t.get(&fp(1)).unwrap();
    assert_eq!((first.count, first.overcount), (500, 0));
    // A newcomer that then makes up 3 hellos in 4 gets in, after the flood.
    for i in 0..300 {
        for _ in 0..3 {
            record(&mut t, fp(7));
        }
        record(&mut t, fp(3000 + i));
    }
    assert_eq!(t.total(), 3100);
    for (ja4, &n) in &exact {
        if n * 4 > t.total() {
            assert!(t.get(ja4).is_some(), "{ja4} seen {n} times is kept");
        }
    }
    for c in t.top() {
        let n = exact[&c.ja4];
        assert!(c.count - c.overcount <= n && n <= c.count, "{c:?} for {n}");
    }
    let top: Vec<&Counted> = t.top().collect();
    assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
    assert_eq!(top.len(), 4);
}

#[test]
fn the_least_counted_entry_is_the_one_replaced() {
    // Without a flood the table is exact; the last entry is the one to go.
    let mut t = Ja4Counts::<3>::new([3; 16]);
    for (i, n) in [(1, 9), (2, 5), (3, 2)] {
        for _ in 0..n {
            t.record(&fp(i));
        }
    }
    t.record(&fp(4));
    let top: Vec<(Ja4, u64, u64)> = t.top().map(|c| (c.ja4, c.count, c.overcount)).collect();
    assert_eq!(top, [(fp(1), 9, 0), (fp(2), 5, 0), (fp(4), 3, 2)]);
    // An empty table of size 0 keeps nothing, and says so.
    let mut none = Ja4Counts::<0>::new([0; 16]);
    none.record(&fp(1));
    assert_eq!((none.len(), none.total()), (0, 1));
}

#[test]
fn a_table_entry_costs_64_bytes() {
    assert_eq!(core::mem::size_of::<Slot>(), 64);
    assert!(core::mem::size_of::<Ja4Counts<64>>() <= 64 * 64 + 48);
}
