//! Unit tests of `src/wheel.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use std::vec;
use std::vec::Vec;

/// Checks every structural invariant: list links, bitmaps, the list each
/// entry is on being `list_for` its deadline, slot starts after the
/// wheel's time, and `len`.
fn check(wheel: &TimerWheel, slots: &[TimerLink]) {
    let mut lists = vec![
        (List::Expired, wheel.expired),
        (List::Overflow, wheel.overflow),
    ];
    for level in 0..LEVELS {
        for slot in 0..SLOTS {
            let head = wheel.heads[level][slot];
            assert_eq!((wheel.occupied[level] >> slot) & 1 == 1, head != NIL);
            lists.push((List::Slot(level, slot), head));
        }
    }
    let mut seen = vec![false; slots.len()];
    for (list, head) in lists {
        if let List::Slot(level, slot) = list {
            if head != NIL {
                let shift = level as u32 * SLOT_BITS;
                let start = (wheel.elapsed & !((1u64 << (shift + SLOT_BITS)) - 1))
                    + ((slot as u64) << shift);
                assert!(start > wheel.elapsed, "slot {list:?} left behind");
            }
        }
        let mut prev = NIL;
        let mut i = head;
        while i != NIL {
            let link = slots[i as usize];
            assert!(!seen[i as usize], "entry {i} on two lists");
            seen[i as usize] = true;
            assert_eq!(wheel.list_for(link.when), list, "entry {i} misfiled");
            if prev != NIL {
                assert_eq!(link.prev, prev);
            }
            prev = i;
            i = link.next;
        }
        if head != NIL {
            assert_eq!(
                slots[head as usize].prev, prev,
                "head's prev is not the tail"
            );
        }
    }
    for (i, link) in slots.iter().enumerate() {
        assert_eq!(link.is_scheduled(), seen[i], "entry {i}");
    }
    assert_eq!(wheel.len(), seen.iter().filter(|&&s| s).count());
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn invariants_hold_under_random_operations() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut slots = [TimerLink::UNSCHEDULED; 48];
    let mut wheel = TimerWheel::new();
    let mut now = 0u64;
    for _ in 0..20_000 {
        let i = rng.below(slots.len() as u64) as u32;
        match rng.below(8) {
            0..=3 => {
                let span = [70, 5_000, 1 << 24, 1 << 40][rng.below(4) as usize];
                let when = match rng.below(20) {
                    0 => u64::MAX,
                    1 => rng.below(now + 1),
                    _ => now.saturating_add(rng.below(span)),
                };
                wheel.schedule(&mut slots, i, Instant::from_millis(when));
            }
            4 => {
                wheel.cancel(&mut slots, i);
            }
            _ => {
                let span = [64, 4_096, 1 << 22, 1 << 37][rng.below(4) as usize];
                now = now.saturating_add(rng.below(span));
                // Stop early sometimes, as an engine with a full event
                // queue does, leaving entries on the expired list.
                for _ in 0..rng.below(6) {
                    let Some(i) = wheel.poll_expired(&mut slots, Instant::from_millis(now)) else {
                        break;
                    };
                    check(&wheel, &slots);
                    assert!(!slots[i as usize].is_scheduled());
                }
            }
        }
        check(&wheel, &slots);
    }
}

#[test]
fn entries_move_down_at_most_once_per_level() {
    // An entry scheduled at the top level lands one level lower on every
    // cascade, so the slots visited until it fires are at most LEVELS.
    let mut slots = [TimerLink::UNSCHEDULED; 1];
    let mut wheel = TimerWheel::new();
    let when = RANGE - 1;
    wheel.schedule(&mut slots, 0, Instant::from_millis(when));
    assert_eq!(wheel.list_for(when), List::Slot(LEVELS - 1, SLOTS - 1));
    let mut levels = Vec::new();
    while let Some(at) = wheel.next_deadline() {
        levels.push(wheel.list_for(when));
        if wheel.poll_expired(&mut slots, at).is_some() {
            break;
        }
    }
    assert_eq!(wheel.time().as_millis(), when);
    assert_eq!(wheel.slots_visited(), LEVELS as u64);
    assert_eq!(
        levels,
        (0..LEVELS)
            .rev()
            .map(|l| List::Slot(l, SLOTS - 1))
            .collect::<Vec<_>>()
    );
}

#[test]
fn link_is_small() {
    assert_eq!(core::mem::size_of::<TimerLink>(), 16);
}
