//! The per-client table: a chained hash table over a fixed slab of slots,
//! with two LRU lists of idle clients for eviction; and the per-network
//! table, a second one of the same kind whose slots count a network's
//! connections (issue 17: one provider or NAT pool owns a whole IPv4 /24).
//!
//! Both are run by one [`SlotIndex`]: its methods take the slots as an
//! argument and are generic over [`Indexed`], so the network table reuses
//! the chains, the free list and the LRU lists of the client table instead
//! of a second copy of them.
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
    /// The network slot it is counted in, `NIL` when the network tier was
    /// off at its admission (or it is allowlisted).
    pub(crate) network: u32,
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
        network: NIL,
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

/// State of one network (an IPv4 prefix, by default a /24, or an IPv6
/// prefix, by default a /48). 40 bytes: the key is stored in 64 bits (the
/// IPv4 network, or the top 64 bits of the IPv6 one, whose prefix is at most
/// 64 bits long) with its family in `flags`.
///
/// No timer: an idle network is not forgotten on a deadline but stays on
/// the idle list, keeping its rate window, until a new network needs its
/// slot. A network that opens and closes connections quickly is idle most
/// of the time, and forgetting it would forget its rate.
#[derive(Clone, Copy, Debug)]
pub struct NetworkSlot {
    key: u64,
    lru_prev: u32,
    lru_next: u32,
    chain: u32,
    /// Index of the rate window `opened` belongs to.
    pub(crate) window: u32,
    /// Connections admitted from this network and not yet closed.
    pub(crate) live: u32,
    /// Of `live`, the authenticated ones: they leave the network's
    /// connection limit as they leave their client's.
    pub(crate) authed: u32,
    pub(crate) opened: [u16; 2],
    flags: u8,
}

/// Flag of a [`NetworkSlot`] holding an IPv4 network: part of the key.
const V4_NETWORK: u8 = 1 << 7;

impl NetworkSlot {
    /// An unused slot.
    pub const EMPTY: NetworkSlot = NetworkSlot {
        key: 0,
        lru_prev: NIL,
        lru_next: NIL,
        chain: NIL,
        window: 0,
        live: 0,
        authed: 0,
        opened: [0; 2],
        flags: 0,
    };

    /// Moves `opened` to window `index`, as [`ClientSlot::roll`] does.
    pub(crate) fn roll(&mut self, index: u32) {
        if index == self.window {
            return;
        }
        self.opened = if index == self.window.wrapping_add(1) {
            [self.opened[1], 0]
        } else {
            [0; 2]
        };
        self.window = index;
    }
}

/// What [`SlotIndex`] needs of a slot: its key, its hash chain, its place on
/// an idle list and the flags that say which.
pub(crate) trait Indexed: Copy {
    /// An unused slot.
    const EMPTY: Self;
    fn key(&self) -> u128;
    fn set_key(&mut self, key: u128);
    fn chain(&self) -> u32;
    fn set_chain(&mut self, next: u32);
    fn lru(&self) -> (u32, u32);
    fn set_lru(&mut self, prev: u32, next: u32);
    fn flags(&self) -> u8;
    fn set_flags(&mut self, flags: u8);
}

impl Indexed for ClientSlot {
    const EMPTY: Self = ClientSlot::EMPTY;
    fn key(&self) -> u128 {
        self.key
    }
    fn set_key(&mut self, key: u128) {
        self.key = key;
    }
    fn chain(&self) -> u32 {
        self.chain
    }
    fn set_chain(&mut self, next: u32) {
        self.chain = next;
    }
    fn lru(&self) -> (u32, u32) {
        (self.lru_prev, self.lru_next)
    }
    fn set_lru(&mut self, prev: u32, next: u32) {
        self.lru_prev = prev;
        self.lru_next = next;
    }
    fn flags(&self) -> u8 {
        self.flags
    }
    fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
}

/// A network key as [`SlotIndex`] sees it: bit 64 set for IPv4, the 64
/// stored bits below. The engine builds it with [`network_key`].
impl Indexed for NetworkSlot {
    const EMPTY: Self = NetworkSlot::EMPTY;
    fn key(&self) -> u128 {
        u128::from(self.key) | (u128::from(self.flags & V4_NETWORK != 0) << 64)
    }
    fn set_key(&mut self, key: u128) {
        // Truncation keeps the 64 stored bits; bit 64 goes to the flags.
        self.key = key as u64;
        if key >> 64 & 1 != 0 {
            self.flags |= V4_NETWORK;
        } else {
            self.flags &= !V4_NETWORK;
        }
    }
    fn chain(&self) -> u32 {
        self.chain
    }
    fn set_chain(&mut self, next: u32) {
        self.chain = next;
    }
    fn lru(&self) -> (u32, u32) {
        (self.lru_prev, self.lru_next)
    }
    fn set_lru(&mut self, prev: u32, next: u32) {
        self.lru_prev = prev;
        self.lru_next = next;
    }
    fn flags(&self) -> u8 {
        self.flags
    }
    fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
}

/// The key of the network `bits` (an address in the shared space of
/// [`crate::addr::map_ip`]) belongs to: its IPv4 prefix of `v4` bits, or
/// its IPv6 prefix of `v6` bits (at most 64). The family is part of the
/// key, so an IPv4 network and an IPv6 one never share a slot.
pub(crate) fn network_key(bits: u128, v4: u8, v6: u8) -> u128 {
    if crate::addr::is_v4(bits) {
        let mask = (!0u32).checked_shl(32 - u32::from(v4.min(32))).unwrap_or(0);
        (1u128 << 64) | u128::from(bits as u32 & mask)
    } else {
        let mask = (!0u64).checked_shl(64 - u32::from(v6.min(64))).unwrap_or(0);
        u128::from((bits >> 64) as u64 & mask)
    }
}

/// The address and prefix length a [`network_key`] stands for.
pub(crate) fn network_of(key: u128, v4: u8, v6: u8) -> (core::net::IpAddr, u8) {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if key >> 64 & 1 != 0 {
        (IpAddr::V4(Ipv4Addr::from(key as u32)), v4)
    } else {
        (IpAddr::V6(Ipv6Addr::from(key << 64)), v6)
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

/// Bookkeeping of one table (the client table or the network table); the
/// slots and buckets themselves are passed in by the engine, which owns
/// them through its [`crate::Storage`].
#[derive(Clone, Debug)]
pub(crate) struct SlotIndex {
    hash_key: (u64, u64),
    free: u32,
    len: u32,
    idle: [List; 2],
}

impl SlotIndex {
    /// Threads every slot onto the free list and empties every bucket.
    pub(crate) fn new<T: Indexed>(
        slots: &mut [T],
        buckets: &mut [u32],
        hash_key: (u64, u64),
    ) -> Self {
        for b in buckets.iter_mut() {
            *b = NIL;
        }
        let n = slots.len();
        for (i, s) in slots.iter_mut().enumerate() {
            *s = T::EMPTY;
            s.set_chain(if i + 1 < n { (i + 1) as u32 } else { NIL });
        }
        SlotIndex {
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
    /// [`SlotIndex::find_at`] and [`SlotIndex::insert_at`]: the SipHash
    /// is most of the cost of a lookup.
    pub(crate) fn bucket(&self, key: u128, buckets: usize) -> usize {
        let mut h = SipHasher13::new_with_keys(self.hash_key.0, self.hash_key.1);
        core::hash::Hasher::write(&mut h, &key.to_le_bytes());
        let h = core::hash::Hasher::finish(&h);
        // Lemire's multiply-shift maps the hash onto any table size without
        // a division and without requiring a power of two.
        (((h >> 32) * buckets as u64) >> 32) as usize
    }

    pub(crate) fn find<T: Indexed>(&self, slots: &[T], buckets: &[u32], key: u128) -> Option<u32> {
        self.find_at(slots, buckets, self.bucket(key, buckets.len()), key)
    }

    /// [`SlotIndex::find`] with the bucket already computed.
    pub(crate) fn find_at<T: Indexed>(
        &self,
        slots: &[T],
        buckets: &[u32],
        bucket: usize,
        key: u128,
    ) -> Option<u32> {
        let mut i = buckets[bucket];
        while i != NIL {
            let s = &slots[i as usize];
            if s.key() == key {
                return Some(i);
            }
            i = s.chain();
        }
        None
    }

    /// Length of the chain `key` falls into; for the hash-flooding tests.
    pub(crate) fn chain_len<T: Indexed>(&self, slots: &[T], buckets: &[u32], key: u128) -> usize {
        let mut i = buckets[self.bucket(key, buckets.len())];
        let mut n = 0;
        while i != NIL {
            n += 1;
            i = slots[i as usize].chain();
        }
        n
    }

    /// Takes a free slot for `key` (which must not be present). `None` when
    /// no slot is free; the caller evicts and retries.
    pub(crate) fn insert<T: Indexed>(
        &mut self,
        slots: &mut [T],
        buckets: &mut [u32],
        key: u128,
    ) -> Option<u32> {
        self.insert_at(slots, buckets, self.bucket(key, buckets.len()), key)
    }

    /// [`SlotIndex::insert`] with the bucket already computed.
    pub(crate) fn insert_at<T: Indexed>(
        &mut self,
        slots: &mut [T],
        buckets: &mut [u32],
        b: usize,
        key: u128,
    ) -> Option<u32> {
        let i = self.free;
        if i == NIL {
            return None;
        }
        let s = &mut slots[i as usize];
        self.free = s.chain();
        *s = T::EMPTY;
        s.set_flags(OCCUPIED);
        s.set_key(key);
        s.set_chain(buckets[b]);
        buckets[b] = i;
        self.len += 1;
        Some(i)
    }

    /// Frees slot `i`. The caller has already cancelled its timer.
    pub(crate) fn remove<T: Indexed>(&mut self, slots: &mut [T], buckets: &mut [u32], i: u32) {
        self.unlink_idle(slots, i);
        let key = slots[i as usize].key();
        let b = self.bucket(key, buckets.len());
        let next = slots[i as usize].chain();
        if buckets[b] == i {
            buckets[b] = next;
        } else {
            let mut j = buckets[b];
            while j != NIL {
                if slots[j as usize].chain() == i {
                    slots[j as usize].set_chain(next);
                    break;
                }
                j = slots[j as usize].chain();
            }
        }
        slots[i as usize] = T::EMPTY;
        slots[i as usize].set_chain(self.free);
        self.free = i;
        self.len -= 1;
    }

    /// Puts `i` at the most recently seen end of its idle list (moving it if
    /// it was on one already).
    pub(crate) fn touch_idle<T: Indexed>(&mut self, slots: &mut [T], i: u32, which: Idle) {
        self.unlink_idle(slots, i);
        let l = which as usize;
        let tail = self.idle[l].tail;
        {
            let s = &mut slots[i as usize];
            s.set_lru(tail, NIL);
            let mut flags = s.flags() | ON_LRU;
            if which == Idle::Offender {
                flags |= OFFENDER_LRU;
            }
            s.set_flags(flags);
        }
        if tail == NIL {
            self.idle[l].head = i;
        } else {
            let t = &mut slots[tail as usize];
            let (prev, _) = t.lru();
            t.set_lru(prev, i);
        }
        self.idle[l].tail = i;
    }

    /// Takes `i` off whichever idle list it is on; it has become busy.
    pub(crate) fn unlink_idle<T: Indexed>(&mut self, slots: &mut [T], i: u32) {
        let s = slots[i as usize];
        if s.flags() & ON_LRU == 0 {
            return;
        }
        let l = if s.flags() & OFFENDER_LRU != 0 { 1 } else { 0 };
        let (prev, next) = s.lru();
        if prev == NIL {
            self.idle[l].head = next;
        } else {
            let p = &mut slots[prev as usize];
            let (pp, _) = p.lru();
            p.set_lru(pp, next);
        }
        if next == NIL {
            self.idle[l].tail = prev;
        } else {
            let n = &mut slots[next as usize];
            let (_, nn) = n.lru();
            n.set_lru(prev, nn);
        }
        let s = &mut slots[i as usize];
        s.set_lru(NIL, NIL);
        s.set_flags(s.flags() & !(ON_LRU | OFFENDER_LRU));
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
