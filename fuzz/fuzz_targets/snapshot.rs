//! Restoring arbitrary bytes: an error or a state that writes itself back,
//! never a panic; a refused snapshot leaves the engine as it was.
#![no_main]

use core::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mtguard_core::storage::Inline;
use mtguard_core::{BlockCause, Instant, Policy, SecurityManager, Seed};

type Small = Inline<32, 8, 8>;

fuzz_target!(|data: &[u8]| {
    let seed = Seed {
        hash_key: [5; 16],
        jitter: 9,
    };
    let mut g =
        SecurityManager::<Small>::new(Small::tables(), Policy::default(), seed, Instant::ZERO)
            .unwrap();
    let marker = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    g.block(Instant::ZERO, marker, None, BlockCause::Manual)
        .unwrap();
    match g.restore(Instant::from_secs(1), data) {
        Ok(_) => {
            let mut buf = vec![0; g.snapshot_len()];
            let n = g.write_snapshot(Instant::from_secs(1), &mut buf).unwrap();
            assert_eq!(n, buf.len());
        }
        Err(_) => assert!(
            g.is_blocked(marker),
            "a refused snapshot changed the engine"
        ),
    }
});
