//! The appliance's config block, as the firmware reads it from flash:
//! arbitrary bytes are refused or accepted, never a panic; an accepted
//! block writes itself back to the same bytes and reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_config_block::{ApplianceConfig, BLOCK_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(config) = ApplianceConfig::decode(data) else {
        return;
    };
    let mut buf = vec![0u8; BLOCK_MAX];
    let n = config
        .encode(&mut buf)
        .expect("a block the firmware accepts can be written");
    // Only the seed's layout could differ, and it cannot: the encoding is
    // canonical, so the block is the bytes it was read from.
    assert_eq!(&buf[..n], &data[..n], "re-encoding changed the block");
    let again = ApplianceConfig::decode(&buf[..n]).expect("reads back");
    assert_eq!(again.policy, config.policy);
    assert_eq!(again.secrets.as_slice(), config.secrets.as_slice());
    assert_eq!(again.network, config.network);
    assert_eq!(again.backend, config.backend);
    assert_eq!(again.ntp, config.ntp);
});
