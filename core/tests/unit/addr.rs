//! Unit tests of `src/addr.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use std::string::ToString;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv4_and_mapped_ipv6_are_one_client() {
    let a = ClientKey::new(ip("1.2.3.4"), 64);
    let b = ClientKey::new(ip("::ffff:1.2.3.4"), 64);
    assert_eq!(a, b);
    assert!(a.is_ipv4());
    assert_eq!(a.bits(), 0xffff_0102_0304);
    assert_eq!(a.to_ip(), ip("1.2.3.4"));
    assert_eq!(a.display(64).to_string(), "1.2.3.4");
}

#[test]
fn ipv4_is_never_aggregated() {
    assert_ne!(
        ClientKey::new(ip("1.2.3.4"), 1),
        ClientKey::new(ip("1.2.3.5"), 1)
    );
}

#[test]
fn ipv6_is_aggregated_to_the_prefix() {
    let k = ClientKey::new(ip("2001:db8:1:2:3:4:5:6"), 64);
    assert_eq!(k, ClientKey::new(ip("2001:db8:1:2::"), 64));
    assert_ne!(k, ClientKey::new(ip("2001:db8:1:3::"), 64));
    assert!(!k.is_ipv4());
    assert_eq!(k.to_ip(), ip("2001:db8:1:2::"));
    assert_eq!(k.display(64).to_string(), "2001:db8:1:2::/64");

    let k48 = ClientKey::new(ip("2001:db8:1:2::1"), 48);
    assert_eq!(k48, ClientKey::new(ip("2001:db8:1:ffff::"), 48));
    assert_eq!(k48.display(48).to_string(), "2001:db8:1::/48");
}

#[test]
fn prefix_extremes() {
    let a = ip("2001:db8::1");
    assert_eq!(ClientKey::new(a, 128).to_ip(), a);
    assert_eq!(ClientKey::new(a, 200), ClientKey::new(a, 128));
    assert_eq!(
        ClientKey::new(a, 128).display(128).to_string(),
        "2001:db8::1"
    );
    assert_eq!(ClientKey::new(a, 0).bits(), 0);
    assert_eq!(ClientKey::new(a, 1).to_ip(), ip("::"));
    assert_eq!(ClientKey::new(ip("8000::1"), 1).to_ip(), ip("8000::"));
}

#[test]
fn ipv6_keys_never_look_like_ipv4() {
    // The addresses closest to ::ffff:0:0/96 that are not in it.
    for addr in ["::fffe:1.2.3.4", "::1:ffff:1.2.3.4", "::ffff:0:0:0"] {
        for len in 0..=128 {
            assert!(!ClientKey::new(ip(addr), len).is_ipv4(), "{addr}/{len}");
        }
    }
}

#[test]
fn round_trips_through_bits() {
    let k = ClientKey::new(ip("2001:db8::7"), 64);
    assert_eq!(ClientKey::from_bits(k.bits()), k);
    assert_eq!(unmap(map_ip(ip("10.0.0.1"))), ip("10.0.0.1"));
    assert_eq!(unmap(map_ip(ip("::ffff:10.0.0.1"))), ip("10.0.0.1"));
    assert_eq!(unmap(map_ip(ip("2001:db8::7"))), ip("2001:db8::7"));
}

#[test]
fn netmask_lengths() {
    assert_eq!(netmask(0), 0);
    assert_eq!(netmask(1), 1 << 127);
    assert_eq!(netmask(128), !0);
    assert_eq!(netmask(96), V4_MASK);
}

#[test]
fn debug_is_readable() {
    let k = ClientKey::new(ip("192.0.2.1"), 64);
    assert_eq!(std::format!("{k:?}"), "ClientKey(192.0.2.1)");
}
