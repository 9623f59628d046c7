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
}

#[test]
fn eviction_prefers_clean_clients_and_follows_recency() {
    let mut slots = [ClientSlot::EMPTY; 4];
    let mut buckets = [NIL; 4];
    let mut t = ClientIndex::new(&mut slots, &mut buckets, (1, 2));
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
    let mut t = ClientIndex::new(&mut slots, &mut buckets, (3, 4));
    let a = t.insert(&mut slots, &mut buckets, 1).unwrap();
    t.insert(&mut slots, &mut buckets, 2).unwrap();
    assert_eq!(t.insert(&mut slots, &mut buckets, 3), None);
    t.remove(&mut slots, &mut buckets, a);
    assert!(t.insert(&mut slots, &mut buckets, 3).is_some());
    assert_eq!(t.find(&slots, &buckets, 1), None);
    assert!(t.find(&slots, &buckets, 2).is_some());
    assert!(t.find(&slots, &buckets, 3).is_some());
}
