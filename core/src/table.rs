//! The per-client table: a chained hash table over a fixed slab of slots,
//! with two LRU lists of idle clients for eviction.
//!
//! Buckets are chosen with SipHash-1-3 under a key handed in at boot, so an
//! attacker who picks addresses cannot make them share a chain. Idle clients
//! (no live connection, no active block) sit on one of two LRU lists: clean
//! ones, and ones with an offence history. When the table is full, the least
//! recently seen clean client is evicted first; an offender is evicted only
//! when no clean client is left, so flooding the table with fresh addresses
//! does not wipe the escalation history of the attacker behind it.

use crate::wheel::{Timed, TimerLink};
use siphasher::sip::SipHasher13;

pub(crate) const NIL: u32 = u32::MAX;

const OCCUPIED: u8 = 1;
const BLOCKED: u8 = 1 << 1;
const PERMANENT: u8 = 1 << 2;
const ON_LRU: u8 = 1 << 3;
const OFFENDER_LRU: u8 = 1 << 4;
const CAUSE_SHIFT: u8 = 5;

/// State of one client. 80 bytes: 64 until carrier-NAT reputation added
/// `authed` (2 bytes), `valid` (4) and widened `failures` and `timeouts`
/// to 16 bits (2 each): 10 bytes of state, rounded up to the 16-byte
/// alignment of the `u128` key. Failures are 16-bit because the share rule
/// compares them with valid handshakes: an 8-bit count saturating at 255
/// could never reach half of 500 valid ones, and a flood would go
/// unpunished.
#[derive(Clone, Copy, Debug)]
pub struct ClientSlot {
    pub(crate) key: u128,
    pub(crate) timer: TimerLink,
    lru_prev: u32,
    lru_next: u32,
    /// Next slot in the same hash chain, or in the free list.
    chain: u32,
    /// Index of the rate window the counters below belong to.
    pub(crate) window: u32,
    pub(crate) live: u16,
    /// Of `live`, the connections authenticated (valid for a secret); the
    /// rest are pending and bound by the per-client connection limit.
    pub(crate) authed: u16,
    pub(crate) opened: [u16; 2],
    /// Valid handshakes per window: the client's reputation. While it reads
    /// above zero the client is treated as a shared address.
    pub(crate) valid: [u16; 2],
    pub(crate) violations: [u8; 2],
    pub(crate) failures: [u16; 2],
    pub(crate) timeouts: [u16; 2],
    pub(crate) offences: u8,
    flags: u8,
    /// Blocks started for this client, wrapping. A connection remembers the
    /// value at its admission: one admitted before the latest block earns
    /// no offence, so a burst that was already punished is not punished
    /// again (fail2ban's rule).
    pub(crate) epoch: u16,
}

impl ClientSlot {
    /// An unused slot.
    pub const EMPTY: ClientSlot = ClientSlot {
        key: 0,
        timer: TimerLink::UNSCHEDULED,
        lru_prev: NIL,
        lru_next: NIL,
        chain: NIL,
        window: 0,
        live: 0,
        authed: 0,
        opened: [0; 2],
        valid: [0; 2],
        violations: [0; 2],
        failures: [0; 2],
        timeouts: [0; 2],
        offences: 0,
        flags: 0,
        epoch: 0,
    };

    pub(crate) fn occupied(&self) -> bool {
        self.flags & OCCUPIED != 0
    }
    pub(crate) fn blocked(&self) -> bool {
        self.flags & BLOCKED != 0
    }
    pub(crate) fn permanent(&self) -> bool {
        self.flags & PERMANENT != 0
    }
    pub(crate) fn cause_bits(&self) -> u8 {
        self.flags >> CAUSE_SHIFT
    }
    /// Marks the client blocked. The failures and violations that led here
    /// are spent: the next offence needs its own, counted after the block.
    pub(crate) fn set_block(&mut self, permanent: bool, cause: u8) {
        self.epoch = self.epoch.wrapping_add(1);
        self.violations = [0; 2];
        self.failures = [0; 2];
        self.timeouts = [0; 2];
        self.flags &= OCCUPIED | ON_LRU | OFFENDER_LRU;
        self.flags |= BLOCKED | (cause << CAUSE_SHIFT);
        if permanent {
            self.flags |= PERMANENT;
        }
    }
    pub(crate) fn clear_block(&mut self) {
        self.flags &= OCCUPIED | ON_LRU | OFFENDER_LRU;
    }

    /// Moves the windowed counters to window `index`: the current window
    /// becomes the previous one, or both are forgotten after a gap.
    pub(crate) fn roll(&mut self, index: u32) {
        if index == self.window {
            return;
        }
        if index == self.window.wrapping_add(1) {
            self.opened = [self.opened[1], 0];
            self.valid = [self.valid[1], 0];
            self.violations = [self.violations[1], 0];
            self.failures = [self.failures[1], 0];
            self.timeouts = [self.timeouts[1], 0];
        } else {
            self.opened = [0; 2];
            self.valid = [0; 2];
            self.violations = [0; 2];
            self.failures = [0; 2];
            self.timeouts = [0; 2];
        }
        self.window = index;
    }
}

impl Timed for ClientSlot {
    fn timer(&self) -> &TimerLink {
        &self.timer
    }
    fn timer_mut(&mut self) -> &mut TimerLink {
        &mut self.timer
    }
}

/// State of one connection slot.
#[derive(Clone, Copy, Debug)]
pub struct ConnSlot {
    pub(crate) timer: TimerLink,
    /// Owning client slot, `NIL` for allowlisted clients; the next free slot
    /// while free.
    pub(crate) client: u32,
    pub(crate) generation: u32,
    /// The owning client's [`ClientSlot::epoch`] at admission.
    pub(crate) epoch: u16,
    pub(crate) state: ConnState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    Free,
    Handshaking,
    /// Judged, not authenticated: counted with the pending connections.
    Established,
    /// Judged valid for a secret: counted in its client's `authed`.
    Authenticated,
    TimedOut,
}

impl ConnSlot {
    /// An unused slot.
    pub const EMPTY: ConnSlot = ConnSlot {
        timer: TimerLink::UNSCHEDULED,
        client: NIL,
        generation: 0,
        epoch: 0,
        state: ConnState::Free,
    };
}

impl Timed for ConnSlot {
    fn timer(&self) -> &TimerLink {
        &self.timer
    }
    fn timer_mut(&mut self) -> &mut TimerLink {
        &mut self.timer
    }
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// Which idle list a client belongs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    Clean,
    Offender,
}

/// Bookkeeping of the client table; the slots and buckets themselves are
/// passed in by the engine, which owns them through its [`crate::Storage`].
#[derive(Clone, Debug)]
pub(crate) struct ClientIndex {
    hash_key: (u64, u64),
    free: u32,
    len: u32,
    idle: [List; 2],
}

impl ClientIndex {
    /// Threads every slot onto the free list and empties every bucket.
    pub(crate) fn new(slots: &mut [ClientSlot], buckets: &mut [u32], hash_key: (u64, u64)) -> Self {
        for b in buckets.iter_mut() {
            *b = NIL;
        }
        let n = slots.len();
        for (i, s) in slots.iter_mut().enumerate() {
            *s = ClientSlot::EMPTY;
            s.chain = if i + 1 < n { (i + 1) as u32 } else { NIL };
        }
        ClientIndex {
            hash_key,
            free: if n == 0 { NIL } else { 0 },
            len: 0,
            idle: [List::EMPTY; 2],
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    pub(crate) fn hash_key(&self) -> (u64, u64) {
        self.hash_key
    }

    /// The bucket of `key`. Admission computes it once and passes it to
    /// [`ClientIndex::find_at`] and [`ClientIndex::insert_at`]: the SipHash
    /// is most of the cost of a lookup.
    pub(crate) fn bucket(&self, key: u128, buckets: usize) -> usize {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        core::hash::Hasher::write(&mut h, &key.to_le_bytes());
        let h = core::hash::Hasher::finish(&h);
        // Lemire's multiply-shift maps the hash onto any table size without
        // a division and without requiring a power of two.
        (((h >> 32) * buckets as u64) >> 32) as usize
    }

    pub(crate) fn find(&self, slots: &[ClientSlot], buckets: &[u32], key: u128) -> Option<u32> {
        self.find_at(slots, buckets, self.bucket(key, buckets.len()), key)
    }

    /// [`ClientIndex::find`] with the bucket already computed.
    pub(crate) fn find_at(
        &self,
        slots: &[ClientSlot],
        buckets: &[u32],
        bucket: usize,
        key: u128,
    ) -> Option<u32> {
        let mut i = buckets[bucket];
        while i != NIL {
            let s = &slots[i as usize];
            if s.key == key {
                return Some(i);
            }
            i = s.chain;
        }
        None
    }

    /// Length of the chain `key` falls into; for the hash-flooding tests.
    pub(crate) fn chain_len(&self, slots: &[ClientSlot], buckets: &[u32], key: u128) -> usize {
        let mut i = buckets[self.bucket(key, buckets.len())];
        let mut n = 0;
        while i != NIL {
            n += 1;
            i = slots[i as usize].chain;
        }
        n
    }

    /// Takes a free slot for `key` (which must not be present). `None` when
    /// no slot is free; the caller evicts and retries.
    pub(crate) fn insert(
        &mut self,
        slots: &mut [ClientSlot],
        buckets: &mut [u32],
        key: u128,
    ) -> Option<u32> {
        self.insert_at(slots, buckets, self.bucket(key, buckets.len()), key)
    }

    /// [`ClientIndex::insert`] with the bucket already computed.
    pub(crate) fn insert_at(
        &mut self,
        slots: &mut [ClientSlot],
        buckets: &mut [u32],
        b: usize,
        key: u128,
    ) -> Option<u32> {
        let i = self.free;
        if i == NIL {
            return None;
        }
        let s = &mut slots[i as usize];
        self.free = s.chain;
        *s = ClientSlot::EMPTY;
        s.key = key;
        s.flags = OCCUPIED;
        s.chain = buckets[b];
        buckets[b] = i;
        self.len += 1;
        Some(i)
    }

    /// Frees slot `i`. The caller has already cancelled its timer.
    pub(crate) fn remove(&mut self, slots: &mut [ClientSlot], buckets: &mut [u32], i: u32) {
        self.unlink_idle(slots, i);
        let key = slots[i as usize].key;
        let b = self.bucket(key, buckets.len());
        let next = slots[i as usize].chain;
        if buckets[b] == i {
            buckets[b] = next;
        } else {
            let mut j = buckets[b];
            while j != NIL {
                if slots[j as usize].chain == i {
                    slots[j as usize].chain = next;
                    break;
                }
                j = slots[j as usize].chain;
            }
        }
        slots[i as usize] = ClientSlot::EMPTY;
        slots[i as usize].chain = self.free;
        self.free = i;
        self.len -= 1;
    }

    /// Puts `i` at the most recently seen end of its idle list (moving it if
    /// it was on one already).
    pub(crate) fn touch_idle(&mut self, slots: &mut [ClientSlot], i: u32, which: Idle) {
        self.unlink_idle(slots, i);
        let l = which as usize;
        let tail = self.idle[l].tail;
        {
            let s = &mut slots[i as usize];
            s.lru_prev = tail;
            s.lru_next = NIL;
            s.flags |= ON_LRU;
            if which == Idle::Offender {
                s.flags |= OFFENDER_LRU;
            }
        }
        if tail == NIL {
            self.idle[l].head = i;
        } else {
            slots[tail as usize].lru_next = i;
        }
        self.idle[l].tail = i;
    }

    /// Takes `i` off whichever idle list it is on; it has become busy.
    pub(crate) fn unlink_idle(&mut self, slots: &mut [ClientSlot], i: u32) {
        let s = slots[i as usize];
        if s.flags & ON_LRU == 0 {
            return;
        }
        let l = if s.flags & OFFENDER_LRU != 0 { 1 } else { 0 };
        if s.lru_prev == NIL {
            self.idle[l].head = s.lru_next;
        } else {
            slots[s.lru_prev as usize].lru_next = s.lru_next;
        }
        if s.lru_next == NIL {
            self.idle[l].tail = s.lru_prev;
        } else {
            slots[s.lru_next as usize].lru_prev = s.lru_prev;
        }
        let s = &mut slots[i as usize];
        s.lru_prev = NIL;
        s.lru_next = NIL;
        s.flags &= !(ON_LRU | OFFENDER_LRU);
    }

    /// The slot to evict: the least recently seen clean idle client, else
    /// the least recently seen idle offender, else none.
    pub(crate) fn eviction_candidate(&self) -> Option<u32> {
        [self.idle[0].head, self.idle[1].head]
            .into_iter()
            .find(|&h| h != NIL)
    }
}

#[cfg(test)]
#[path = "../tests/unit/table.rs"]
mod tests;
