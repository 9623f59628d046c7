//! Unit tests of `src/table.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;

#[test]
fn client_state_is_80_bytes() {
    // 64 before carrier-NAT reputation; see the doc of `ClientSlot`.
    assert_eq!(core::mem::size_of::<ClientSlot>(), 80);
    std::println!(
        "size_of ClientSlot = {}, ConnSlot = {}",
        core::mem::size_of::<ClientSlot>(),
        core::mem::size_of::<ConnSlot>()
    );
    assert!(core::mem::size_of::<ConnSlot>() <= 32);
    // The network slot keeps its key in 64 bits and its family in a flag.
    assert_eq!(core::mem::size_of::<NetworkSlot>(), 40);
}

#[test]
fn network_keys_cut_at_the_prefix_and_keep_the_families_apart() {
    use crate::addr::map_ip;
    use core::net::IpAddr;
    let ip = |s: &str| map_ip(s.parse::<IpAddr>().unwrap());
    let k = |s: &str| network_key(ip(s), 24, 48);
    assert_eq!(k("192.0.2.1"), k("192.0.2.254"));
    assert_ne!(k("192.0.2.1"), k("192.0.3.1"));
    assert_eq!(k("::ffff:192.0.2.9"), k("192.0.2.1"));
    assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:ffff::1"));
    assert_ne!(k("2001:db8:1::1"), k("2001:db8:2::1"));
    // 0.0.0.0/24 and the IPv6 network ::/48 differ only by the family bit.
    assert_ne!(k("0.0.0.1"), k("::1:0:0:0:1"));
    assert_eq!(
        network_of(k("192.0.2.77"), 24, 48),
        ("192.0.2.0".parse().unwrap(), 24)
    );
    assert_eq!(
        network_of(k("2001:db8:1:2::1"), 24, 48),
        ("2001:db8:1::".parse().unwrap(), 48)
    );
    assert_eq!(
        network_key(ip("10.1.2.3"), 32, 64),
        network_key(ip("10.1.2.3"), 32, 64)
    );
    assert_ne!(
        network_key(ip("10.1.2.3"), 32, 64),
        network_key(ip("10.1.2.4"), 32, 64)
    );
    assert_eq!(
        network_key(ip("10.1.2.3"), 1, 1),
        network_key(ip("127.0.0.1"), 1, 1)
    );
    // The stored form gives the same key back.
    let mut s = NetworkSlot::EMPTY;
    for key in [k("192.0.2.1"), k("2001:db8:1::1"), k("0.0.0.1")] {
        s.set_key(key);
        assert_eq!(s.key(), key);
    }
}

#[test]
fn the_network_table_evicts_only_idle_networks_least_recently_seen_first() {
    let mut slots = [NetworkSlot::EMPTY; 3];
    let mut buckets = [NIL; 3];
    let mut t = SlotIndex::new(&mut slots, &mut buckets, (5, 6));
    let a = t
        .insert(&mut slots, &mut buckets, 1 << 64 | 0x0a00_0000)
        .unwrap();
    let b = t
        .insert(&mut slots, &mut buckets, 1 << 64 | 0x0a00_0100)
        .unwrap();
    let c = t
        .insert(&mut slots, &mut buckets, 0x2001_0db8_0000_0000)
        .unwrap();
    assert_eq!(t.insert(&mut slots, &mut buckets, 7), None);
    // Busy networks are on no list: nothing to evict.
    assert_eq!(t.eviction_candidate(), None);
    t.touch_idle(&mut slots, b, Idle::Clean);
    t.touch_idle(&mut slots, a, Idle::Clean);
    assert_eq!(t.eviction_candidate(), Some(b));
    t.touch_idle(&mut slots, b, Idle::Clean);
    assert_eq!(t.eviction_candidate(), Some(a));
    t.unlink_idle(&mut slots, a);
    assert_eq!(t.eviction_candidate(), Some(b));
    t.remove(&mut slots, &mut buckets, b);
    assert_eq!(t.find(&slots, &buckets, 1 << 64 | 0x0a00_0100), None);
    assert_eq!(t.find(&slots, &buckets, 1 << 64 | 0x0a00_0000), Some(a));
    assert_eq!(t.find(&slots, &buckets, 0x2001_0db8_0000_0000), Some(c));
    assert_eq!(t.len(), 2);
}

#[test]
fn eviction_prefers_clean_clients_and_follows_recency() {
    let mut slots = [ClientSlot::EMPTY; 4];
    let mut buckets = [NIL; 4];
    let mut t = SlotIndex::new(&mut slots, &mut buckets, (1, 2));
    let a = t.insert(&mut slots, &mut buckets, 10).unwrap();
    let b = t.insert(&mut slots, &mut buckets, 11).unwrap();
    let c = t.insert(&mut slots, &mut buckets, 12).unwrap();
    t.touch_idle(&mut slots, a, Idle::Offender);
    t.touch_idle(&mut slots, b, Idle::Clean);
    t.touch_idle(&mut slots, c, Idle::Clean);
    assert_eq!(t.eviction_candidate(), Some(b));
    t.touch_idle(&mut slots, b, Idle::Clean);
    assert_eq!(t.eviction_candidate(), Some(c));
    t.remove(&mut slots, &mut buckets, c);
    t.remove(&mut slots, &mut buckets, b);
    assert_eq!(t.eviction_candidate(), Some(a));
    t.unlink_idle(&mut slots, a);
    assert_eq!(t.eviction_candidate(), None);
    assert_eq!(t.find(&slots, &buckets, 10), Some(a));
    assert_eq!(t.find(&slots, &buckets, 11), None);
    assert_eq!(t.len(), 1);
}

#[test]
fn full_table_refuses_insert_until_a_slot_is_freed() {
    let mut slots = [ClientSlot::EMPTY; 2];
    let mut buckets = [NIL; 2];
    let mut t = SlotIndex::new(&mut slots, &mut buckets, (3, 4));
    let a = t.insert(&mut slots, &mut buckets, 1).unwrap();
    t.insert(&mut slots, &mut buckets, 2).unwrap();
    assert_eq!(t.insert(&mut slots, &mut buckets, 3), None);
    t.remove(&mut slots, &mut buckets, a);
    assert!(t.insert(&mut slots, &mut buckets, 3).is_some());
    assert_eq!(t.find(&slots, &buckets, 1), None);
    assert!(t.find(&slots, &buckets, 2).is_some());
    assert!(t.find(&slots, &buckets, 3).is_some());
}
