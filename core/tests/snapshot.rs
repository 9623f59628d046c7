//! Snapshot round trips, and refusal of every truncation and corruption.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use mtguard_core::cidr::{Cidr, Origin};
use mtguard_core::pins::{Pin, PinKind};
use mtguard_core::snapshot::SnapshotError;
use mtguard_core::storage::Inline;
use mtguard_core::{BlockCause, Instant, Level, Policy, SecurityManager, Seed, Verdict};
use sha2::{Digest, Sha256};

type Small = Inline<64, 64, 16>;

fn policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.block_jitter_permille = 0;
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    p
}

fn guard(seed: u8) -> SecurityManager<Small> {
    let seed = Seed {
        hash_key: [seed; 16],
        jitter: 3,
    };
    SecurityManager::new(Small::tables(), policy(), seed, Instant::ZERO).unwrap()
}

fn ip(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, d))
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A guard with one of everything a snapshot holds.
fn populated() -> SecurityManager<Small> {
    let mut g = guard(1);
    // An automatic block (offence 1) that will have 200 s left at t=100 s.
    let c = match g.handle_connect(at(0), ip(1)) {
        Verdict::Admit(c) => c,
        v => panic!("{v:?}"),
    };
    // Over the limit of one: refused, and the violation blocks.
    assert!(matches!(g.handle_connect(at(0), ip(1)), Verdict::Reject(_)));
    g.handle_close(at(1), c).unwrap();
    // A permanent manual block and a timed one.
    g.block(at(0), ip(2), None, BlockCause::Manual).unwrap();
    g.block(
        at(0),
        ip(3),
        Some(Duration::from_secs(1_000)),
        BlockCause::External,
    )
    .unwrap();
    // An offender whose block has ended.
    let c = match g.handle_connect(at(0), ip(4)) {
        Verdict::Admit(c) => c,
        v => panic!("{v:?}"),
    };
    // Over the limit of one: refused, and the violation blocks.
    assert!(matches!(g.handle_connect(at(0), ip(4)), Verdict::Reject(_)));
    g.unblock(at(2), ip(4));
    g.handle_close(at(2), c).unwrap();
    g.allow_mut()
        .insert("10.9.0.0/16".parse::<Cidr>().unwrap(), Origin::Manual)
        .unwrap();
    g.deny_mut()
        .insert("2001:db8::/32".parse::<Cidr>().unwrap(), Origin::Manual)
        .unwrap();
    // Config entries are not persisted: the config brings them back.
    g.deny_mut()
        .insert("192.0.2.0/24".parse::<Cidr>().unwrap(), Origin::Config)
        .unwrap();
    g.add_pin(
        Pin::new(PinKind::Spki, [7; 32])
            .with_label("primary")
            .unwrap(),
    )
    .unwrap();
    g.add_pin(Pin::new(PinKind::Certificate, [9; 32]).with_expiry(Some(1_900_000_000)))
        .unwrap();
    g
}

fn snapshot(g: &SecurityManager<Small>, now: Instant) -> Vec<u8> {
    let mut buf = vec![0; g.snapshot_len()];
    let n = g.write_snapshot(now, &mut buf).unwrap();
    assert_eq!(n, buf.len());
    buf
}

#[test]
fn round_trip_keeps_blocks_with_their_remaining_time_offences_lists_and_pins() {
    let g = populated();
    let bytes = snapshot(&g, at(100_000));
    // A new process: its clock starts again at zero, with another hash key.
    let mut h = guard(2);
    let restored = h.restore(at(5), &bytes).unwrap();
    assert_eq!(restored.clients, 4);
    assert_eq!(restored.blocks, 3);
    assert_eq!((restored.allow, restored.deny, restored.pins), (1, 1, 2));

    let mut blocks: Vec<_> = h
        .blocks()
        .map(|b| (b.client, b.cause, b.until, b.offences))
        .collect();
    blocks.sort_by_key(|b| b.0);
    let key = |d| h.client_key(ip(d));
    assert_eq!(
        blocks,
        vec![
            (key(1), BlockCause::Violations, Some(at(5 + 200_000)), 1),
            (key(2), BlockCause::Manual, None, 0),
            // Started at t=1 ms, the latest time the engine had seen.
            (key(3), BlockCause::External, Some(at(5 + 900_001)), 0),
        ]
    );
    assert_eq!(h.client_info(ip(4)).unwrap().offences, 1);
    assert!(h
        .allowlist()
        .contains(IpAddr::V4(Ipv4Addr::new(10, 9, 1, 1))));
    assert!(h.is_blocked("2001:db8::1".parse().unwrap()));
    assert!(
        !h.is_blocked("192.0.2.1".parse().unwrap()),
        "config entries are not persisted"
    );
    assert_eq!(h.pins().len(), 2);
    assert_eq!(h.pins().as_slice(), g.pins().as_slice());
    // The restored state writes the same snapshot at the matching moment.
    assert_eq!(snapshot(&h, at(5)), {
        let mut again = guard(3);
        again.restore(at(5), &bytes).unwrap();
        snapshot(&again, at(5))
    });
}

#[test]
fn every_truncation_is_refused_and_changes_nothing() {
    let bytes = snapshot(&populated(), at(100_000));
    let mut h = guard(2);
    h.block(at(0), ip(77), None, BlockCause::Manual).unwrap();
    for len in 0..bytes.len() {
        let err = h.restore(at(1), &bytes[..len]).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TooShort | SnapshotError::LengthMismatch),
            "length {len}: {err:?}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        h.restore(at(1), &longer),
        Err(SnapshotError::LengthMismatch)
    );
    assert!(
        h.is_blocked(ip(77)),
        "a refused snapshot leaves the engine as it was"
    );
    assert_eq!(h.blocks().count(), 1);
}

#[test]
fn every_single_byte_corruption_is_refused() {
    let bytes = snapshot(&populated(), at(100_000));
    let mut h = guard(2);
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            assert!(
                h.restore(at(1), &bad).is_err(),
                "byte {i} ^ {flip:#x} accepted"
            );
        }
    }
    assert_eq!(h.blocks().count(), 0);
}

/// Re-signs a body so the record checks, not the checksum, must catch it.
fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() - 32;
    let sum = Sha256::digest(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum);
    bytes
}

#[test]
fn records_with_impossible_values_are_refused_even_with_a_valid_checksum() {
    let g = populated();
    let bytes = snapshot(&g, at(100_000));
    let mut h = guard(2);
    // Header 16, section tag and count 5: the first record's state byte is
    // at 16 + 5 + 16.
    let state_at = 16 + 5 + 16;
    let mut bad = bytes.clone();
    bad[state_at] = 0xff;
    assert!(matches!(
        h.restore(at(1), &resign(bad)),
        Err(SnapshotError::BadRecord { .. })
    ));
    let mut bad = bytes.clone();
    bad[16] = 9;
    assert!(matches!(
        h.restore(at(1), &resign(bad)),
        Err(SnapshotError::UnexpectedSection { .. })
    ));
    let mut bad = bytes.clone();
    bad[4] = 2;
    assert_eq!(
        h.restore(at(1), &resign(bad)),
        Err(SnapshotError::UnsupportedVersion(2))
    );
    // A count larger than the records present.
    let mut bad = bytes.clone();
    bad[17] = 200;
    assert!(h.restore(at(1), &resign(bad)).is_err());
    assert_eq!(h.blocks().count(), 0);
}

#[test]
fn a_buffer_too_small_is_an_error_not_a_partial_write() {
    let g = populated();
    let mut buf = vec![0xaa; g.snapshot_len() - 1];
    assert_eq!(
        g.write_snapshot(at(0), &mut buf),
        Err(SnapshotError::BufferTooSmall {
            needed: g.snapshot_len()
        })
    );
    assert!(buf.iter().all(|&b| b == 0xaa));
}

#[test]
fn restore_refuses_while_connections_are_live() {
    let bytes = snapshot(&populated(), at(0));
    let mut h = guard(2);
    let Verdict::Admit(_) = h.handle_connect(at(0), ip(50)) else {
        panic!()
    };
    assert_eq!(h.restore(at(0), &bytes), Err(SnapshotError::Busy));
}

#[test]
fn state_generation_moves_with_every_persistent_change() {
    let mut g = guard(1);
    let g0 = g.state_generation();
    g.block(at(0), ip(1), None, BlockCause::Manual).unwrap();
    let g1 = g.state_generation();
    assert!(g1 > g0);
    g.unblock(at(0), ip(1));
    assert!(g.state_generation() > g1);
}
