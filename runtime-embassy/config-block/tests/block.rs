//! The block reads back as written, and every kind of damage is refused
//! with its own reason rather than read as some other config.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use mtguard_config_block::{ApplianceConfig, BlockError, EncodeError, Network, BLOCK_MAX};
use mtguard_core::mtproto::{Secret, SecretSet, TimeWindow};
use mtguard_core::{Level, Policy};

fn sample() -> ApplianceConfig {
    let mut secrets = SecretSet::new();
    for s in [
        "0123456789abcdef0123456789abcdef",
        "dd0123456789abcdef0123456789abcdef",
        "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d",
    ] {
        secrets.push(Secret::parse(s).unwrap()).unwrap();
    }
    let mut policy = Policy::for_level(Level::High);
    policy.max_connections_per_client = 2;
    policy.handshake_timeout = None;
    policy.attack_enter_per_second = None;
    ApplianceConfig {
        network: Network::Static {
            address: Ipv4Addr::new(10, 19, 0, 2),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 19, 0, 1)),
        },
        mac: [0x02, 0, 0x6d, 0x74, 0x67, 0x02],
        listen_port: 443,
        backend: SocketAddrV4::new(Ipv4Addr::new(10, 19, 0, 1), 8443),
        ntp: Some(SocketAddrV4::new(Ipv4Addr::new(10, 19, 0, 1), 123)),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(300_500),
        window: TimeWindow {
            ahead_secs: 3,
            behind_secs: 600,
        },
        policy,
        secrets,
        seed: [7; 32],
    }
}

fn encoded(c: &ApplianceConfig) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_MAX];
    let n = c.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn same(a: &ApplianceConfig, b: &ApplianceConfig) {
    assert_eq!(a.network, b.network);
    assert_eq!(a.mac, b.mac);
    assert_eq!(a.listen_port, b.listen_port);
    assert_eq!(a.backend, b.backend);
    assert_eq!(a.ntp, b.ntp);
    assert_eq!(a.connect_timeout, b.connect_timeout);
    assert_eq!(a.idle_timeout, b.idle_timeout);
    assert_eq!(a.window, b.window);
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.secrets.as_slice(), b.secrets.as_slice());
    assert_eq!(a.seed, b.seed);
}

#[test]
fn a_block_reads_back_as_written() {
    let c = sample();
    let block = encoded(&c);
    same(&ApplianceConfig::decode(&block).unwrap(), &c);
    // As the firmware sees it: the whole reserved area, erased after the block.
    let mut flash = vec![0xFF; BLOCK_MAX];
    flash[..block.len()].copy_from_slice(&block);
    same(&ApplianceConfig::decode(&flash).unwrap(), &c);

    let mut dhcp = sample();
    dhcp.network = Network::Dhcp;
    dhcp.ntp = None;
    dhcp.secrets = SecretSet::new();
    dhcp.policy = Policy::for_level(Level::Minimal);
    same(&ApplianceConfig::decode(&encoded(&dhcp)).unwrap(), &dhcp);
}

#[test]
fn missing_blocks_are_told_apart_from_damaged_ones() {
    assert_eq!(
        ApplianceConfig::decode(&[0; BLOCK_MAX]).unwrap_err(),
        BlockError::Missing
    );
    assert_eq!(
        ApplianceConfig::decode(&[0xFF; BLOCK_MAX]).unwrap_err(),
        BlockError::Missing
    );
    assert_eq!(
        ApplianceConfig::decode(&[]).unwrap_err(),
        BlockError::Missing
    );
}

#[test]
fn every_flipped_bit_is_refused() {
    let block = encoded(&sample());
    for i in 0..block.len() {
        for bit in 0..8 {
            let mut bad = block.clone();
            bad[i] ^= 1 << bit;
            let err = ApplianceConfig::decode(&bad).unwrap_err();
            let want: &[BlockError] = match i {
                0..4 => &[BlockError::Missing],
                4..6 => &[BlockError::Version(u16::from_le_bytes([bad[4], bad[5]]))],
                6..8 => &[BlockError::Length, BlockError::Checksum],
                _ => &[BlockError::Checksum],
            };
            assert!(want.contains(&err), "byte {i} bit {bit}: {err:?}");
        }
    }
}

#[test]
fn a_block_cut_short_is_refused() {
    let block = encoded(&sample());
    for n in 0..block.len() {
        assert!(
            ApplianceConfig::decode(&block[..n]).is_err(),
            "{n} bytes accepted"
        );
    }
}

#[test]
fn values_the_guard_cannot_run_with_are_not_written() {
    let mut c = sample();
    c.listen_port = 0;
    assert_eq!(
        c.encode(&mut [0; BLOCK_MAX]),
        Err(EncodeError::Field("listen_port"))
    );
    let mut c = sample();
    c.policy.max_connections_per_client = 0;
    assert!(matches!(
        c.encode(&mut [0; BLOCK_MAX]),
        Err(EncodeError::Field(_))
    ));
    let mut c = sample();
    c.mac = [0x01, 0, 0, 0, 0, 1];
    assert_eq!(
        c.encode(&mut [0; BLOCK_MAX]),
        Err(EncodeError::Field("mac"))
    );
    assert_eq!(sample().encode(&mut [0; 40]), Err(EncodeError::TooLarge));
}

#[test]
fn sixteen_long_domains_do_not_fit_and_say_so() {
    let mut c = sample();
    c.secrets = SecretSet::new();
    // Four 60-letter labels: 247 bytes, near the 253 a host name may have.
    let label = "a".repeat(60);
    let domain = format!("{label}.{label}.{label}.{label}.io");
    let hex: String = domain.bytes().map(|b| format!("{b:02x}")).collect();
    for _ in 0..16 {
        let s = format!("ee0123456789abcdef0123456789abcdef{hex}");
        c.secrets.push(Secret::parse(&s).unwrap()).unwrap();
    }
    assert_eq!(c.encode(&mut [0; BLOCK_MAX]), Err(EncodeError::TooLarge));
}

#[test]
fn unused_fields_must_be_zero_so_each_block_has_one_encoding() {
    let mut c = sample();
    c.network = Network::Dhcp;
    let block = encoded(&c);
    // Byte 8 is the DHCP flag, 9..13 the (unused) static address.
    let mut bad = block.clone();
    bad[9] = 10;
    assert_eq!(
        ApplianceConfig::decode(&fix_digest(bad)).unwrap_err(),
        BlockError::Field("network")
    );
    // The NTP server's address with port 0 ("none").
    let mut c = sample();
    c.ntp = None;
    let block = encoded(&c);
    let ntp_at = 8 + 1 + 4 + 1 + 4 + 6 + 2 + 6;
    assert_eq!(&block[ntp_at..ntp_at + 6], &[0; 6]);
    let mut bad = block.clone();
    bad[ntp_at] = 10;
    assert_eq!(
        ApplianceConfig::decode(&fix_digest(bad)).unwrap_err(),
        BlockError::Field("ntp")
    );
}

/// Recomputes the digest of a block edited on purpose.
fn fix_digest(mut block: Vec<u8>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let n = block.len() - 32;
    let d = Sha256::digest(&block[..n]);
    block[n..].copy_from_slice(&d);
    block
}
