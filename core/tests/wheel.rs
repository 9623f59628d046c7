//! The timing wheel against its contract: a model-based property test
//! (random schedules, reschedules, cancels, partial and full polls, time
//! jumps forwards and backwards, checked against a plain map) and unit tests
//! for the edges the engine relies on.

use std::collections::BTreeMap;

use mtguard_core::wheel::{Timed, TimerLink, TimerWheel};
use mtguard_core::Instant;
use proptest::prelude::*;

const DAY: u64 = 86_400_000;
const SLOTS: u32 = 64;

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Polls until `None`, returning the indexes in order.
fn drain<T: Timed>(wheel: &mut TimerWheel, slots: &mut [T], now: u64) -> Vec<u32> {
    std::iter::from_fn(|| wheel.poll_expired(slots, at(now))).collect()
}

// ----- model-based property test -----

#[derive(Clone, Debug)]
enum When {
    /// This many ms after the model's time.
    After(u64),
    /// At or before the model's time (as a fraction of it, in 1/256ths).
    Past(u8),
    Never,
}

#[derive(Clone, Debug)]
enum Op {
    /// Indexes up to 67 include a few out of range of the 64 slots.
    Schedule(u32, When),
    Cancel(u32),
    /// Advance time, then poll at most `budget` times (to exhaustion if
    /// `None`), as an engine whose event queue fills up does.
    Poll {
        advance: u64,
        budget: Option<u8>,
    },
    /// Poll to exhaustion with a `now` this far before the model's time.
    Rewind(u64),
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        4 => (0..130u64).prop_map(When::After),
        3 => (0..600_000u64).prop_map(When::After),
        3 => (0..1000 * DAY).prop_map(When::After),
        1 => any::<u8>().prop_map(When::Past),
        1 => Just(When::Never),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let advance = prop_oneof![0..70u64, 0..5_000u64, 0..3_600_000u64, 0..120 * DAY];
    prop_oneof![
        5 => (0..SLOTS + 4, when()).prop_map(|(i, w)| Op::Schedule(i, w)),
        2 => (0..SLOTS + 4).prop_map(Op::Cancel),
        4 => (advance, proptest::option::of(0..8u8))
            .prop_map(|(advance, budget)| Op::Poll { advance, budget }),
        1 => (0..10_000u64).prop_map(Op::Rewind),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    when: u64,
    /// When it became due: its deadline, or the wheel's time when it was
    /// scheduled if that was later. With `seq`, the order of expiry.
    due: u64,
    /// Number of the `schedule` call that last placed it.
    seq: u64,
}

struct Harness {
    wheel: TimerWheel,
    slots: Vec<TimerLink>,
    model: BTreeMap<u32, Entry>,
    /// The latest `now` passed to the wheel.
    now: u64,
    seq: u64,
    /// `(due, seq)` of the last entry returned: returns must increase.
    last: Option<(u64, u64)>,
}

impl Harness {
    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Schedule(i, ref w) => {
                let when = match *w {
                    When::After(d) => self.now.saturating_add(d),
                    When::Past(f) => self.now / 256 * u64::from(f),
                    When::Never => u64::MAX,
                };
                self.seq += 1;
                self.wheel.schedule(&mut self.slots, i, at(when));
                if i < SLOTS {
                    let due = when.max(self.wheel.time().as_millis());
                    let seq = self.seq;
                    self.model.insert(i, Entry { when, due, seq });
                }
            }
            Op::Cancel(i) => {
                let was = self.model.remove(&i).is_some();
                prop_assert_eq!(self.wheel.cancel(&mut self.slots, i), was);
            }
            Op::Poll { advance, budget } => {
                self.now = self.now.saturating_add(advance);
                self.poll(self.now, budget)?;
            }
            Op::Rewind(back) => self.poll(self.now.saturating_sub(back), None)?,
        }
        self.check()
    }

    fn poll(&mut self, now: u64, budget: Option<u8>) -> Result<(), TestCaseError> {
        let before = self.wheel.time().as_millis();
        let mut polls = 0;
        loop {
            if budget.is_some_and(|b| polls == b) {
                return Ok(());
            }
            polls += 1;
            let Some(i) = self.wheel.poll_expired(&mut self.slots, at(now)) else {
                break;
            };
            let time = self.wheel.time().as_millis();
            prop_assert!(time <= self.now);
            let entry = self.model.remove(&i);
            prop_assert!(entry.is_some(), "{} returned but not scheduled", i);
            let Entry { when, due, seq } = entry.unwrap();
            prop_assert!(when <= time, "{} due {} fired early at {}", i, when, time);
            prop_assert!(!self.slots[i as usize].is_scheduled());
            prop_assert!(self.last < Some((due, seq)), "out of order");
            self.last = Some((due, seq));
        }
        // Never late: nothing at or before the effective `now` is left.
        let time = self.wheel.time().as_millis();
        prop_assert_eq!(time, now.max(before));
        let late = self.model.iter().find(|(_, e)| e.when <= time);
        prop_assert!(late.is_none(), "{:?} left behind at {}", late, time);
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.wheel.len(), self.model.len());
        for (i, link) in self.slots.iter().enumerate() {
            let model = self.model.get(&(i as u32)).map(|e| at(e.when));
            prop_assert_eq!(link.deadline(), model);
        }
        let time = self.wheel.time().as_millis();
        let next = self.wheel.next_deadline().map(Instant::as_millis);
        let min_due = self.model.values().map(|e| e.due).min();
        match self.model.values().map(|e| e.when).min() {
            None => prop_assert_eq!(next, None),
            Some(min) => {
                prop_assert!(next.is_some());
                let next = next.unwrap();
                prop_assert!(next >= time);
                prop_assert!(Some(next) <= min_due, "next {} after {:?}", next, min_due);
                if min <= time {
                    // Due already: poll at once.
                    prop_assert_eq!(next, time);
                } else if (min ^ time) < 64 {
                    // The earliest entry is in level 0: exact.
                    prop_assert_eq!(next, min);
                } else {
                    prop_assert!(next <= min, "next {} after earliest {}", next, min);
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wheel_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut h = Harness {
            wheel: TimerWheel::new(),
            slots: vec![TimerLink::UNSCHEDULED; SLOTS as usize],
            model: BTreeMap::new(),
            now: 0,
            seq: 0,
            last: None,
        };
        for op in &ops {
            h.apply(op)?;
        }
        // Whatever is left fires by the end of time, and only once.
        h.now = u64::MAX;
        h.poll(u64::MAX, None)?;
        prop_assert!(h.wheel.is_empty());
    }
}

// ----- unit tests -----

#[test]
fn fires_at_300_seconds_not_a_millisecond_before() {
    let mut slots = [TimerLink::UNSCHEDULED; 10];
    let mut wheel = TimerWheel::new();
    for i in 0..10 {
        wheel.schedule(&mut slots, i, Instant::from_secs(300));
    }
    assert_eq!(wheel.len(), 10);
    assert_eq!(wheel.poll_expired(&mut slots, at(299_999)), None);
    assert_eq!(wheel.time(), at(299_999));
    assert_eq!(wheel.next_deadline(), Some(Instant::from_secs(300)));
    // Equal deadlines fire in the order they were scheduled.
    assert_eq!(
        drain(&mut wheel, &mut slots, 300_000),
        (0..10).collect::<Vec<_>>()
    );
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
}

#[test]
fn a_long_jump_visits_occupied_slots_only() {
    // A wheel that ticked every millisecond would visit 300,000 slots here.
    // This one cascades the entries from level 3 (2^18 ms slots) down one
    // slot per level: 4 lists, however many entries share them.
    let mut slots = [TimerLink::UNSCHEDULED; 10];
    let mut wheel = TimerWheel::new();
    for i in 0..10 {
        wheel.schedule(&mut slots, i, Instant::from_secs(300));
    }
    assert_eq!(drain(&mut wheel, &mut slots, 300_000).len(), 10);
    assert_eq!(wheel.slots_visited(), 4);

    // A 10^12 ms jump (31 years) past timers spread over it, beyond the
    // wheel's 795-day range, and at Instant::MAX: the work is a few lists
    // per timer, not per block or per millisecond.
    let mut slots = [TimerLink::UNSCHEDULED; 10];
    let mut wheel = TimerWheel::new();
    for i in 0..9 {
        wheel.schedule(&mut slots, i, at(u64::from(i) * 111_111_111_111 + 7));
    }
    wheel.schedule(&mut slots, 9, Instant::MAX);
    assert_eq!(
        drain(&mut wheel, &mut slots, 1_000_000_000_000),
        (0..9).collect::<Vec<_>>()
    );
    assert!(wheel.slots_visited() <= 2 * 10, "{}", wheel.slots_visited());
    assert_eq!(wheel.len(), 1);
}

#[test]
fn next_deadline_converges_to_the_exact_deadline() {
    let mut slots = [TimerLink::UNSCHEDULED; 2];
    let mut wheel = TimerWheel::new();
    let when = 300_000 + 12_345;
    wheel.schedule(&mut slots, 0, at(when));
    wheel.schedule(&mut slots, 1, at(when + 1));
    // Woken at each next_deadline, as the engine is, the wheel cascades the
    // entry one level per wake-up and is never late.
    let mut wakes = 0;
    let fired = loop {
        let next = wheel.next_deadline().unwrap();
        assert!(next <= at(when));
        wakes += 1;
        if let Some(i) = wheel.poll_expired(&mut slots, next) {
            break (i, next);
        }
    };
    assert_eq!(fired, (0, at(when)));
    assert!(wakes <= 6, "{wakes}");
    // The other one is now in level 0: exact.
    assert_eq!(wheel.next_deadline(), Some(at(when + 1)));
}

#[test]
fn past_deadlines_fire_on_the_next_poll() {
    let mut slots = [TimerLink::UNSCHEDULED; 3];
    let mut wheel = TimerWheel::new();
    assert_eq!(wheel.poll_expired(&mut slots, at(1_000)), None);
    wheel.schedule(&mut slots, 0, at(400));
    wheel.schedule(&mut slots, 1, at(1_000));
    wheel.schedule(&mut slots, 2, at(1_001));
    // Due now: the caller is told to poll at once.
    assert_eq!(wheel.next_deadline(), Some(at(1_000)));
    assert_eq!(drain(&mut wheel, &mut slots, 1_000), [0, 1]);
    assert_eq!(wheel.next_deadline(), Some(at(1_001)));
}

#[test]
fn now_going_backwards_is_the_wheel_time() {
    let mut slots = [TimerLink::UNSCHEDULED; 2];
    let mut wheel = TimerWheel::new();
    wheel.schedule(&mut slots, 0, at(1_010));
    wheel.schedule(&mut slots, 1, at(5_000));
    assert_eq!(wheel.poll_expired(&mut slots, at(1_000)), None);
    assert_eq!(wheel.poll_expired(&mut slots, at(5)), None);
    assert_eq!(wheel.time(), at(1_000));
    assert_eq!(wheel.poll_expired(&mut slots, at(1_009)), None);
    assert_eq!(wheel.poll_expired(&mut slots, at(1_010)), Some(0));
    assert_eq!(wheel.poll_expired(&mut slots, at(0)), None);
    assert_eq!(wheel.time(), at(1_010));
    assert_eq!(wheel.len(), 1);
}

#[test]
fn cancel_reports_whether_it_was_scheduled() {
    let mut slots = [TimerLink::UNSCHEDULED; 2];
    let mut wheel = TimerWheel::new();
    assert!(!wheel.cancel(&mut slots, 0));
    wheel.schedule(&mut slots, 0, at(50));
    assert!(slots[0].is_scheduled());
    assert_eq!(slots[0].deadline(), Some(at(50)));
    assert!(wheel.cancel(&mut slots, 0));
    assert!(!wheel.cancel(&mut slots, 0));
    assert_eq!(slots[0], TimerLink::UNSCHEDULED);
    assert_eq!(slots[0].deadline(), None);
    assert!(wheel.is_empty());
    assert_eq!(drain(&mut wheel, &mut slots, 100), []);
}

#[test]
fn out_of_range_indexes_are_ignored() {
    let mut slots = [TimerLink::UNSCHEDULED; 2];
    let mut wheel = TimerWheel::new();
    for i in [2, 1_000, u32::MAX - 1, u32::MAX] {
        wheel.schedule(&mut slots, i, at(10));
        assert!(!wheel.cancel(&mut slots, i));
    }
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
    assert_eq!(drain(&mut wheel, &mut slots, 100), []);
}

#[test]
fn instant_max_is_never_early_and_fires_at_max() {
    let mut slots = [TimerLink::UNSCHEDULED; 2];
    let mut wheel = TimerWheel::new();
    wheel.schedule(&mut slots, 0, Instant::MAX);
    wheel.schedule(&mut slots, 1, at(u64::MAX - 1));
    for now in [1, 1 << 36, 1 << 40, 1 << 63, u64::MAX - 2] {
        assert_eq!(wheel.poll_expired(&mut slots, at(now)), None);
        let next = wheel.next_deadline().unwrap();
        assert!(next > at(now) && next <= at(u64::MAX - 1), "{next:?}");
    }
    assert_eq!(wheel.next_deadline(), Some(at(u64::MAX - 1)));
    assert_eq!(drain(&mut wheel, &mut slots, u64::MAX), [1, 0]);
    assert!(wheel.slots_visited() < 20, "{}", wheel.slots_visited());
    // At the end of time, MAX is in the past: due at once.
    wheel.schedule(&mut slots, 0, Instant::MAX);
    assert_eq!(wheel.poll_expired(&mut slots, at(0)), Some(0));
}

#[test]
fn expired_entries_can_be_cancelled_or_moved_before_they_are_returned() {
    let mut slots = [TimerLink::UNSCHEDULED; 4];
    let mut wheel = TimerWheel::new();
    for i in 0..4 {
        wheel.schedule(&mut slots, i, at(10));
    }
    assert_eq!(wheel.poll_expired(&mut slots, at(10)), Some(0));
    // 1, 2 and 3 are expired, not yet returned.
    assert_eq!(wheel.next_deadline(), Some(at(10)));
    assert!(slots[1].is_scheduled());
    assert!(wheel.cancel(&mut slots, 1));
    wheel.schedule(&mut slots, 2, at(20));
    wheel.schedule(&mut slots, 3, at(10)); // still due: moves to the back
    assert_eq!(wheel.len(), 2);
    assert_eq!(drain(&mut wheel, &mut slots, 10), [3]);
    assert_eq!(wheel.next_deadline(), Some(at(20)));
    assert_eq!(drain(&mut wheel, &mut slots, 20), [2]);
}

#[test]
fn rescheduling_many_times_fires_once_at_the_last_deadline() {
    let mut slots = [TimerLink::UNSCHEDULED; 3];
    let mut wheel = TimerWheel::new();
    wheel.schedule(&mut slots, 0, at(5_000));
    wheel.schedule(&mut slots, 2, at(5_000));
    let mut rng = Rng(1);
    for n in 0..10_000u64 {
        let when = match n % 4 {
            0 => rng.below(1_000 * DAY),
            1 => rng.below(100),
            2 => u64::MAX,
            _ => wheel.time().as_millis().saturating_sub(1),
        };
        wheel.schedule(&mut slots, 1, at(when));
        if n % 1_000 == 999 {
            // Some reschedules land on the expired list, some get polled.
            let _ = drain(&mut wheel, &mut slots, n);
            wheel.schedule(&mut slots, 1, at(n + 1));
        }
        assert!(wheel.len() <= 3);
    }
    wheel.schedule(&mut slots, 1, at(123_456));
    assert_eq!(drain(&mut wheel, &mut slots, 123_455), []);
    assert_eq!(drain(&mut wheel, &mut slots, 123_456), [1]);
    assert!(wheel.is_empty());
}

#[test]
fn many_entries_fire_once_in_deadline_order() {
    const N: usize = 65_536;
    let mut slots = vec![TimerLink::UNSCHEDULED; N];
    let mut wheel = TimerWheel::new();
    let mut rng = Rng(0xDEAD_BEEF);
    let mut deadline = vec![0; N];
    for (i, d) in deadline.iter_mut().enumerate() {
        // Many collide on the same millisecond; a few are beyond the range.
        *d = match rng.below(4) {
            0 => rng.below(2_000),
            1 => rng.below(600_000),
            2 => rng.below(1_000 * DAY),
            _ => rng.below(3_000 * DAY),
        };
        wheel.schedule(&mut slots, i as u32, at(*d));
    }
    assert_eq!(wheel.len(), N);
    // Driven as the engine drives it: sleep until next_deadline, then poll.
    let mut fired = vec![false; N];
    let mut last = None;
    let mut wakes = 0;
    while let Some(next) = wheel.next_deadline() {
        wakes += 1;
        while let Some(i) = wheel.poll_expired(&mut slots, next) {
            let i = i as usize;
            assert!(!fired[i], "{i} fired twice");
            fired[i] = true;
            assert!(deadline[i] <= next.as_millis());
            // By deadline; ties in the order they were scheduled.
            assert!(Some((deadline[i], i)) > last, "out of order");
            last = Some((deadline[i], i));
        }
    }
    assert!(fired.iter().all(|&f| f));
    assert!(wheel.is_empty());
    // Roughly one wake-up per distinct deadline, plus a few cascades each.
    assert!(wakes < 6 * N, "{wakes}");
}

#[test]
fn works_on_slots_that_embed_a_link() {
    #[derive(Clone, Copy)]
    struct Conn {
        id: u32,
        timer: TimerLink,
    }
    impl Timed for Conn {
        fn timer(&self) -> &TimerLink {
            &self.timer
        }
        fn timer_mut(&mut self) -> &mut TimerLink {
            &mut self.timer
        }
    }
    let mut conns: Vec<Conn> = (0..4)
        .map(|id| Conn {
            id,
            timer: TimerLink::UNSCHEDULED,
        })
        .collect();
    let mut wheel = TimerWheel::new();
    // An empty wheel advances without touching any slot.
    assert_eq!(wheel.poll_expired::<Conn>(&mut [], at(1 << 40)), None);
    wheel.schedule(&mut conns, 3, at((1 << 40) + 30_000));
    wheel.schedule(&mut conns, 1, at((1 << 40) + 10_000));
    let order: Vec<u32> = drain(&mut wheel, &mut conns, 1 << 41)
        .into_iter()
        .map(|i| conns[i as usize].id)
        .collect();
    assert_eq!(order, [1, 3]);
    assert!(conns.iter().all(|c| !c.timer().is_scheduled()));
}

#[test]
fn sizes() {
    assert_eq!(std::mem::size_of::<TimerLink>(), 16);
    assert!(std::mem::size_of::<TimerWheel>() <= 1_664);
}

/// xorshift64*: deterministic randomness for the larger unit tests.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
