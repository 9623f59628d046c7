//! Expiry: an intrusive hierarchical timing wheel over caller-owned slots.
//!
//! Every table slot that can time out embeds a [`TimerLink`]; the wheel
//! threads doubly linked lists through the slots by index and keeps only the
//! list heads and one occupancy bitmap per level. Scheduling and cancelling
//! are O(1), polling costs O(1) per expired entry plus the cascades, and
//! nothing is allocated: a table of 65,536 slots needs no memory beyond the
//! 16 bytes of link in each slot.
//!
//! The layout follows tokio's timer (Varghese & Lauck's hierarchical wheel):
//! six levels of 64 slots, level `n` slots being `64^n` ms wide, so the
//! levels together span `64^6` ms (about 795 days). An entry lives in the
//! level given by the highest 6-bit digit in which its deadline differs from
//! the wheel's time, in the slot given by that digit of its deadline. When
//! the wheel's time reaches the start of a slot above level 0, the entries in
//! it are *cascaded*: re-filed against the new time, which puts each one at a
//! lower level (or on the expired list). An entry therefore cascades at most
//! five times before it fires (a deadline beyond the wheel's range once more
//! per 795 days it waits), and a poll skips empty slots by reading the
//! bitmaps instead of ticking through milliseconds.
//!
//! Deadlines beyond the top level's block wait on an overflow list, which is
//! re-filed when the wheel's time enters the next 795-day block. Because
//! everything else in the wheel is due before that, the wheel can then jump
//! straight to the earliest overflow deadline, so even `Instant::MAX` costs
//! one pass rather than one per block.
//!
//! An entry's list is a function of its deadline and the wheel's time (see
//! `TimerWheel::list_for`), and the wheel only advances its time in ways that
//! keep that function constant for every linked entry. That is why the link
//! needs no "which list am I on" field.
//!
//! # Contract
//!
//! - Pass the same slice (same length, same entries) to every call on one
//!   wheel. Indexes out of range of it are ignored by [`TimerWheel::schedule`]
//!   and [`TimerWheel::cancel`] and never stored, so the wheel never panics on
//!   them; if the slice shrinks while entries are scheduled, the entries it
//!   no longer holds are dropped without being returned.
//! - Do not overwrite or copy a [`TimerLink`] while it is scheduled (for
//!   example by resetting the slot that holds it): cancel it first. Doing so
//!   corrupts the wheel's lists; it cannot cause undefined behaviour (the
//!   crate has no `unsafe`), but timers may then fire late or not at all.
//!
//! # Ordering
//!
//! Each entry becomes *due* at its deadline, or, if that is at or before the
//! wheel's time when it is scheduled, at that moment. [`TimerWheel::poll_expired`]
//! returns entries in non-decreasing order of the time they became due;
//! entries due in the same millisecond come out in the order of their latest
//! [`TimerWheel::schedule`] call.

use crate::time::Instant;

/// Bits of the deadline each level resolves.
const SLOT_BITS: u32 = 6;
/// Slots per level; one bit each in a `u64` occupancy bitmap.
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels in the wheel.
const LEVELS: usize = 6;
/// Span of the top level, in ms (2^36 ms, about 795 days). Deadlines whose
/// top-level block differs from the wheel time's wait on the overflow list.
const RANGE: u64 = 1 << (SLOT_BITS * LEVELS as u32);

/// "No entry": the end of a list, or an empty list head.
const NIL: u32 = u32::MAX;
/// Value of [`TimerLink::next`] for an entry on no list. Reserving it (and
/// [`NIL`]) caps valid indexes at `u32::MAX - 2`.
const UNLINKED: u32 = u32::MAX - 1;

/// The wheel's link embedded in every slot that can time out.
///
/// Its fields are private: only [`TimerWheel`] changes them. A slot that is
/// not scheduled holds [`TimerLink::UNSCHEDULED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerLink {
    /// Deadline in ms since the epoch; meaningful only while scheduled.
    when: u64,
    /// Previous entry of the list; for the head, the tail, which makes
    /// appending O(1) without storing a tail per list.
    prev: u32,
    /// Next entry of the list, [`NIL`] at the tail, [`UNLINKED`] when the
    /// entry is on no list.
    next: u32,
}

impl TimerLink {
    /// A link that is not scheduled; the initial value of every slot.
    pub const UNSCHEDULED: TimerLink = TimerLink {
        when: 0,
        prev: NIL,
        next: UNLINKED,
    };

    /// Whether the entry is scheduled, including when it has expired but
    /// has not yet been returned by [`TimerWheel::poll_expired`].
    pub fn is_scheduled(&self) -> bool {
        self.next != UNLINKED
    }

    /// The deadline the entry was last scheduled for, if it is scheduled.
    pub fn deadline(&self) -> Option<Instant> {
        self.is_scheduled()
            .then_some(Instant::from_millis(self.when))
    }
}

impl Default for TimerLink {
    fn default() -> Self {
        TimerLink::UNSCHEDULED
    }
}

/// A slot type that embeds a [`TimerLink`], so a [`TimerWheel`] can thread
/// its lists through a slice of it.
pub trait Timed {
    /// The embedded link.
    fn timer(&self) -> &TimerLink;
    /// The embedded link, mutably; only the wheel changes its contents.
    fn timer_mut(&mut self) -> &mut TimerLink;
}

/// A bare link is its own slot, for simple users and tests.
impl Timed for TimerLink {
    fn timer(&self) -> &TimerLink {
        self
    }
    fn timer_mut(&mut self) -> &mut TimerLink {
        self
    }
}

/// Which list an entry is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    /// Due, waiting to be returned by `poll_expired`.
    Expired,
    /// `(level, slot)`.
    Slot(usize, usize),
    /// Beyond the top level's block.
    Overflow,
}

/// A hierarchical timing wheel over a caller-owned slice of [`Timed`] slots.
///
/// The wheel has its own notion of time, [`TimerWheel::time`], which
/// [`TimerWheel::poll_expired`] advances; it starts at [`Instant::ZERO`].
#[derive(Clone, Debug)]
pub struct TimerWheel {
    /// Head of each slot's list.
    heads: [[u32; SLOTS]; LEVELS],
    /// Bit `s` of `occupied[l]` is set iff `heads[l][s]` is not empty.
    occupied: [u64; LEVELS],
    /// Head of the list of deadlines beyond the top level's block.
    overflow: u32,
    /// Head of the list of due entries not yet returned.
    expired: u32,
    /// The wheel's time, in ms. Every linked entry with a deadline at or
    /// before it is on the expired list; every other one is on a slot whose
    /// start is after it, or on the overflow list.
    elapsed: u64,
    /// Scheduled entries, including expired ones not yet returned.
    len: u32,
    /// Lists emptied by polls so far; see [`TimerWheel::slots_visited`].
    visited: u64,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel::new()
    }
}

impl TimerWheel {
    /// An empty wheel whose time is [`Instant::ZERO`].
    ///
    /// A runtime whose clock is far from its epoch may first advance the
    /// empty wheel to the current time with [`TimerWheel::poll_expired`]:
    /// deadlines are then filed against that time instead of being cascaded
    /// down from zero by the first poll. Either way is correct.
    pub const fn new() -> Self {
        TimerWheel {
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            overflow: NIL,
            expired: NIL,
            elapsed: 0,
            len: 0,
            visited: 0,
        }
    }

    /// Number of scheduled entries, including expired ones not yet returned.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether no entry is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's time: every scheduled entry with a deadline at or before
    /// it has expired. It never decreases and never passes the latest `now`
    /// given to [`TimerWheel::poll_expired`]; once `poll_expired(now)` has
    /// returned `None`, it is the later of `now` and its previous value.
    pub fn time(&self) -> Instant {
        Instant::from_millis(self.elapsed)
    }

    /// Schedules entry `index` of `slots` to expire at `when`, moving it if
    /// it is already scheduled (also if it has expired and not yet been
    /// returned). A deadline at or before [`TimerWheel::time`] is due at
    /// once: the next [`TimerWheel::poll_expired`] returns it.
    ///
    /// An `index` out of range of `slots` is ignored.
    pub fn schedule<T: Timed>(&mut self, slots: &mut [T], index: u32, when: Instant) {
        let Some(link) = entry(slots, index) else {
            return;
        };
        let old = *link;
        if old.is_scheduled() {
            self.unlink(slots, index, self.list_for(old.when));
        } else {
            self.len += 1;
        }
        let when = when.as_millis();
        if let Some(link) = entry(slots, index) {
            link.when = when;
        }
        self.push_back(slots, self.list_for(when), index);
    }

    /// Unschedules entry `index` of `slots`. Returns whether it was
    /// scheduled (an expired entry not yet returned counts as scheduled); an
    /// `index` out of range of `slots` returns `false`.
    pub fn cancel<T: Timed>(&mut self, slots: &mut [T], index: u32) -> bool {
        match entry(slots, index) {
            Some(link) if link.is_scheduled() => {
                let list = self.list_for(link.when);
                self.unlink(slots, index, list);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    /// When [`TimerWheel::poll_expired`] must next be called; `None` when no
    /// entry is scheduled.
    ///
    /// If an entry is due (its deadline is at or before
    /// [`TimerWheel::time`], for example because it was scheduled in the
    /// past), this is `time()`, which is at most the latest `now` polled: the
    /// caller polls at once. Otherwise it is never later than the earliest
    /// deadline; it is exactly that deadline when the entry is within the
    /// wheel time's current 64 ms slot of level 0, and may otherwise be the
    /// start of the slot holding the entry: polling then cascades the entry
    /// closer, after which this must be asked again (at most once per level).
    ///
    /// So it is never later than the time the earliest entry became due.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.expired != NIL {
            return Some(self.time());
        }
        self.next_due().map(|(_, at)| Instant::from_millis(at))
    }

    /// Advances the wheel to `now` and returns one expired entry, unlinked
    /// (its link is [`TimerLink::UNSCHEDULED`] again), or `None` when no
    /// scheduled entry has a deadline at or before `now`.
    ///
    /// Never early: a returned entry's deadline is at or before
    /// [`TimerWheel::time`], which never passes the latest `now` given. Never
    /// late: once this has returned `None`, no scheduled entry has a deadline
    /// at or before `now`. Call it until it returns `None`; the caller may
    /// also stop early and continue later. A `now` before
    /// [`TimerWheel::time`] is treated as `time()`: the wheel never goes
    /// back.
    ///
    /// Entries come out in the order described in the [module
    /// docs](self#ordering). Each call costs O(1) plus the cascading of the
    /// slots the wheel crosses, which it finds from the occupancy bitmaps
    /// without visiting empty ones.
    #[must_use = "an expired entry not handled is lost: the wheel has unlinked it"]
    pub fn poll_expired<T: Timed>(&mut self, slots: &mut [T], now: Instant) -> Option<u32> {
        let now = now.as_millis().max(self.elapsed);
        loop {
            if self.expired != NIL {
                let index = self.expired;
                if self.unlink(slots, index, List::Expired) {
                    self.len -= 1;
                    return Some(index);
                }
                // The slice no longer holds the entry (a broken contract):
                // drop the list rather than return it again and again.
                self.expired = NIL;
                continue;
            }
            match self.next_due() {
                Some((list, at)) if at <= now => self.refile(slots, list, at, now),
                _ => {
                    // Nothing is due by `now`, so every slot start stays
                    // after the new time and no entry changes list.
                    self.elapsed = now;
                    return None;
                }
            }
        }
    }

    /// Lists the wheel has emptied so far (slot lists it cascaded or fired,
    /// overflow passes): the work of polling, for tests. A naive wheel that
    /// ticks every millisecond would visit one slot per millisecond.
    #[doc(hidden)]
    pub fn slots_visited(&self) -> u64 {
        self.visited
    }

    /// The list an entry due at `when` belongs on at the wheel's current
    /// time.
    ///
    /// For a deadline after the wheel's time, the highest 6-bit digit in
    /// which the two differ picks the level: above it they agree, so the
    /// entry is due within the wheel time's current slot of the next level
    /// up, and in a later slot of this level than the wheel time's. Polls
    /// only move the time within a slot, or to the start of the next
    /// occupied slot, whose entries they then re-file; so the result for a
    /// linked entry never changes without the wheel moving the entry.
    fn list_for(&self, when: u64) -> List {
        if when <= self.elapsed {
            return List::Expired;
        }
        let diff = self.elapsed ^ when; // not zero: `when > elapsed`
        if diff >= RANGE {
            return List::Overflow;
        }
        let level = diff.ilog2() / SLOT_BITS;
        let slot = (when >> (level * SLOT_BITS)) as usize % SLOTS;
        List::Slot(level as usize, slot)
    }

    /// The earliest non-empty list other than the expired one, and when it
    /// is due: the start of its slot.
    fn next_due(&self) -> Option<(List, u64)> {
        // Each level's entries are due within the wheel time's current slot
        // of the level above, which ends before any slot of that level is
        // due: so the lowest non-empty level holds the earliest slot. Within
        // a level, every occupied slot lies after the wheel time's slot
        // (nothing is left behind, see `list_for`), so unlike tokio's ring
        // the bitmap needs no rotation: its lowest set bit is the next slot.
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                let shift = level as u32 * SLOT_BITS;
                let level_start = self.elapsed & !((1u64 << (shift + SLOT_BITS)) - 1);
                let at = level_start + ((slot as u64) << shift);
                return Some((List::Slot(level, slot), at));
            }
        }
        // Overflow deadlines lie in a later top-level block than the wheel's
        // time, so none is due before the next block starts. (When the
        // wheel's time is in the last block, `list_for` files nothing here.)
        (self.overflow != NIL).then(|| {
            (
                List::Overflow,
                (self.elapsed | (RANGE - 1)).saturating_add(1),
            )
        })
    }

    /// Empties `list`, which is due at `at` (at most `now`), advancing the
    /// wheel's time to `at` (for the overflow list, maybe further) and
    /// re-filing its entries against it: due ones go to the expired list,
    /// the others to lower levels.
    fn refile<T: Timed>(&mut self, slots: &mut [T], list: List, at: u64, now: u64) {
        self.visited += 1;
        let first = core::mem::replace(self.head_mut(list), NIL);
        if let List::Slot(level, slot) = list {
            self.occupied[level] &= !(1 << slot);
            self.elapsed = at;
        } else {
            // The overflow list is due only when every level is empty, so
            // the time may jump past `at` to its earliest deadline (or to
            // `now`) instead of re-filing far entries once per 795 days.
            // Both are at least `at` (overflow deadlines lie in later
            // blocks), so the time only moves forward.
            let mut earliest = u64::MAX;
            let mut i = first;
            while let Some(link) = entry(slots, i) {
                earliest = earliest.min(link.when);
                i = link.next;
            }
            self.elapsed = earliest.min(now);
        }
        // The detached list's links are overwritten as its entries are
        // re-filed, so read each `next` before moving the entry.
        let mut i = first;
        while let Some((when, next)) = entry(slots, i).map(|l| (l.when, l.next)) {
            self.push_back(slots, self.list_for(when), i);
            i = next;
        }
    }

    fn head_mut(&mut self, list: List) -> &mut u32 {
        match list {
            List::Expired => &mut self.expired,
            List::Slot(level, slot) => &mut self.heads[level][slot],
            List::Overflow => &mut self.overflow,
        }
    }

    /// Appends unlinked entry `i` to `list`.
    fn push_back<T: Timed>(&mut self, slots: &mut [T], list: List, i: u32) {
        let head = *self.head_mut(list);
        let tail = if head == NIL {
            *self.head_mut(list) = i;
            if let List::Slot(level, slot) = list {
                self.occupied[level] |= 1 << slot;
            }
            i
        } else {
            let tail = entry(slots, head).map_or(NIL, |l| l.prev);
            set_next(slots, tail, i);
            set_prev(slots, head, i);
            tail
        };
        if let Some(link) = entry(slots, i) {
            link.prev = tail;
            link.next = NIL;
        }
    }

    /// Removes entry `i` from `list`, which must be the list it is on.
    /// Returns `false` (and does nothing) if `i` is out of range of `slots`
    /// or not linked.
    fn unlink<T: Timed>(&mut self, slots: &mut [T], i: u32, list: List) -> bool {
        let Some(link) = entry(slots, i) else {
            return false;
        };
        let TimerLink { prev, next, .. } = *link;
        if next == UNLINKED {
            return false;
        }
        *link = TimerLink::UNSCHEDULED;
        let head = *self.head_mut(list);
        if head == i {
            *self.head_mut(list) = next;
            if next != NIL {
                // The head's `prev` is the tail; the new head inherits it.
                set_prev(slots, next, prev);
            } else if let List::Slot(level, slot) = list {
                self.occupied[level] &= !(1 << slot);
            }
        } else {
            set_next(slots, prev, next);
            // If `i` was the tail, its predecessor becomes the tail, which
            // the head's `prev` records.
            set_prev(slots, if next == NIL { head } else { next }, prev);
        }
        true
    }
}

/// The link of entry `i`, if `slots` holds one. Indexes that collide with
/// the sentinels are never valid, so they are never stored.
fn entry<T: Timed>(slots: &mut [T], i: u32) -> Option<&mut TimerLink> {
    if i >= UNLINKED {
        return None;
    }
    slots.get_mut(i as usize).map(T::timer_mut)
}

fn set_prev<T: Timed>(slots: &mut [T], i: u32, prev: u32) {
    if let Some(link) = entry(slots, i) {
        link.prev = prev;
    }
}

fn set_next<T: Timed>(slots: &mut [T], i: u32, next: u32) {
    if let Some(link) = entry(slots, i) {
        link.next = next;
    }
}

#[cfg(test)]
#[path = "../tests/unit/wheel.rs"]
mod tests;
