//! Anti-replay: the fingerprints of accepted handshakes, kept for as long as
//! a replay of them could otherwise be accepted.
//!
//! An active prober records a client's first packet and plays it back to see
//! whether the server answers like a proxy. A fake-TLS ClientHello carries a
//! timestamp, so it can be replayed only within the acceptance window; the
//! cache remembers each accepted random for that long and no longer. An
//! obfuscated2 header carries no time at all, so no window bounds its
//! replays: the cache keeps it until room is needed, whatever its age, as
//! MTProxy and mtprotoproxy keep their last N handshakes. A censor that
//! replays minutes or days later is refused as long as the header is among
//! the handshakes remembered.
//!
//! The storage is a ring of [`Entry`] in insertion order (so the oldest entry
//! is always the next one to overwrite) with a chained hash index threaded
//! through the same slots, keyed with SipHash-1-3 under a key handed in at
//! boot. When the ring is full, the oldest entry is overwritten if it is an
//! obfuscated2 header or a fake-TLS random whose window has passed. A
//! fake-TLS random still inside its window is never forgotten: the new
//! handshake is refused and counted instead ([`ReplayCache::refused_full`]),
//! because forgetting it would let its replay through while its timestamp
//! is still accepted, so the cache fails closed.
//!
//! Coverage, in handshakes: an obfuscated2 header is remembered until
//! `capacity` more handshakes (of either kind) have been accepted after it.
//! A fake-TLS random is remembered for its whole window as long as accepted
//! handshakes arrive at no more than `capacity /`
//! [`TimeWindow::retention_secs`] per second on average over the window;
//! above that rate, new handshakes are refused while the oldest entry is a
//! fake-TLS random inside its window. With the default window (3 s ahead,
//! 120 s behind, so 124 s of retention):
//!
//! | preset | entries | memory | obfuscated2 replays refused | fake-TLS rate covered |
//! | --- | --- | --- | --- | --- |
//! | [`APPLIANCE_CAPACITY`] | 2,048 | 48 KiB | last 2,048 handshakes | 16/s |
//! | [`SERVER_CAPACITY`] | 262,144 | 6 MiB | last 262,144 handshakes | 2,114/s |

use core::hash::Hasher as _;

use siphasher::sip::SipHasher13;

use super::TimeWindow;

const NIL: u32 = u32::MAX;

/// The `expires` of an obfuscated2 entry: no clock ends it, only eviction
/// as the oldest entry. Fake-TLS entries expire at most one second before.
const UNTIL_EVICTED: u64 = u64::MAX;

/// Entries of the appliance preset: 48 KiB.
pub const APPLIANCE_CAPACITY: usize = 2_048;

/// Entries of the server preset: 6 MiB.
pub const SERVER_CAPACITY: usize = 262_144;

/// What identifies a handshake for replay purposes.
#[derive(Clone, Copy, Debug)]
pub enum Fingerprint<'a> {
    /// The 32-byte random of a fake-TLS ClientHello.
    FakeTls(&'a [u8; 32]),
    /// Bytes 8..56 of an obfuscated2 header: its key and IV part.
    Obfuscated2(&'a [u8; 48]),
}

/// Why [`ReplayCache::record`] refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReplayRefusal {
    /// Seen before: a fake-TLS random inside its window, an obfuscated2
    /// header still remembered.
    Replay,
    /// The oldest entry is a fake-TLS random still inside its window.
    Full,
}

impl core::fmt::Display for ReplayRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ReplayRefusal::Replay => "the handshake was seen before: a replay",
            ReplayRefusal::Full => {
                "the replay cache is full of handshakes still inside their window"
            }
        })
    }
}

impl core::error::Error for ReplayRefusal {}

/// Where an inspector records accepted handshakes: a [`ReplayCache`], or a
/// runtime's handle to one behind a lock. The inspector asks for it only
/// after the key operations, so a runtime whose keys live in a slow token
/// can take its lock for the record alone, not across the token's answer.
pub trait ReplayStore {
    /// The fake-TLS timestamp window the store remembers handshakes for.
    fn window(&self) -> TimeWindow;

    /// Remembers `fingerprint` at `now_unix` unless it is a replay or the
    /// store is full of live entries (see [`ReplayCache::record`]).
    fn record(&mut self, fingerprint: Fingerprint<'_>, now_unix: u64) -> Result<(), ReplayRefusal>;
}

impl<S: AsRef<[Entry]> + AsMut<[Entry]>> ReplayStore for ReplayCache<S> {
    fn window(&self) -> TimeWindow {
        ReplayCache::window(self)
    }

    fn record(&mut self, fingerprint: Fingerprint<'_>, now_unix: u64) -> Result<(), ReplayRefusal> {
        ReplayCache::record(self, fingerprint, now_unix)
    }
}

/// The cache's storage cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BadCapacity;

impl core::fmt::Display for BadCapacity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the replay cache needs between 1 and u32::MAX - 1 entries")
    }
}

impl core::error::Error for BadCapacity {}

/// One remembered fingerprint, and the head of one hash chain. 24 bytes.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// SipHash-1-3 of the fingerprint.
    hash: u64,
    /// Unix second from which the entry no longer counts;
    /// [`UNTIL_EVICTED`] for an obfuscated2 header.
    expires: u64,
    /// Next entry in the same hash chain.
    chain: u32,
    /// First entry of the chain of the bucket with this entry's index.
    head: u32,
}

impl Entry {
    /// An unused entry.
    pub const EMPTY: Entry = Entry {
        hash: 0,
        expires: 0,
        chain: NIL,
        head: NIL,
    };

    fn counts_at(&self, now: u64) -> bool {
        self.expires == UNTIL_EVICTED || self.expires > now
    }
}

/// A fixed-capacity, keyed replay cache over caller-provided storage.
#[derive(Debug)]
pub struct ReplayCache<S> {
    slots: S,
    hash_key: [u8; 16],
    window: TimeWindow,
    /// Ring position of the next insertion: the oldest entry once full.
    next: u32,
    len: u32,
    /// Latest `now` seen, so a clock stepping back cannot reorder the ring.
    now: u64,
    replays: u64,
    refused_full: u64,
}

impl<S: AsRef<[Entry]> + AsMut<[Entry]>> ReplayCache<S> {
    /// A cache over `slots` (every entry [`Entry::EMPTY`]), hashing with
    /// `hash_key` (random, from the runtime), covering `window`. Refuses
    /// storage of zero entries or of more than `u32::MAX - 1`.
    pub fn new(mut slots: S, hash_key: [u8; 16], window: TimeWindow) -> Result<Self, BadCapacity> {
        let cap = slots.as_ref().len();
        if cap == 0 || cap >= NIL as usize {
            return Err(BadCapacity);
        }
        slots.as_mut().fill(Entry::EMPTY);
        Ok(Self {
            slots,
            hash_key,
            window,
            next: 0,
            len: 0,
            now: 0,
            replays: 0,
            refused_full: 0,
        })
    }

    /// The acceptance window the cache covers.
    pub const fn window(&self) -> TimeWindow {
        self.window
    }

    /// Entries the storage holds.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// Replays refused so far.
    pub const fn replays(&self) -> u64 {
        self.replays
    }

    /// Handshakes refused so far because the oldest entry was a fake-TLS
    /// random still inside its window.
    pub const fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// Remembers `fingerprint` at `now_unix` unless it is a replay or the
    /// cache is full and its oldest entry is a fake-TLS random still inside
    /// its window. An obfuscated2 fingerprint is remembered until evicted,
    /// a fake-TLS one until its window ends.
    pub fn record(
        &mut self,
        fingerprint: Fingerprint<'_>,
        now_unix: u64,
    ) -> Result<(), ReplayRefusal> {
        self.now = self.now.max(now_unix);
        let now = self.now;
        let hash = self.hash(fingerprint);
        let bucket = self.bucket(hash);
        let slots = self.slots.as_mut();

        let mut i = slots[bucket].head;
        while i != NIL {
            let e = &slots[i as usize];
            if e.hash == hash && e.counts_at(now) {
                self.replays += 1;
                return Err(ReplayRefusal::Replay);
            }
            i = e.chain;
        }

        let slot = self.next;
        if self.len as usize == slots.len() {
            let oldest = slots[slot as usize];
            if oldest.expires != UNTIL_EVICTED && oldest.counts_at(now) {
                self.refused_full += 1;
                return Err(ReplayRefusal::Full);
            }
            self.unlink(slot);
        } else {
            self.len += 1;
        }
        let slots = self.slots.as_mut();
        let expires = match fingerprint {
            Fingerprint::FakeTls(_) => now
                .saturating_add(u64::from(self.window.retention_secs()))
                .min(UNTIL_EVICTED - 1),
            Fingerprint::Obfuscated2(_) => UNTIL_EVICTED,
        };
        slots[slot as usize].hash = hash;
        slots[slot as usize].expires = expires;
        slots[slot as usize].chain = slots[bucket].head;
        slots[bucket].head = slot;
        self.next = (slot + 1) % slots.len() as u32;
        Ok(())
    }

    fn hash(&self, fingerprint: Fingerprint<'_>) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.hash_key);
        // A kind byte keeps a 32-byte random from ever equalling the prefix
        // of a 48-byte header part.
        match fingerprint {
            Fingerprint::FakeTls(random) => {
                h.write_u8(1);
                h.write(random);
            }
            Fingerprint::Obfuscated2(key_iv) => {
                h.write_u8(2);
                h.write(key_iv);
            }
        }
        h.finish()
    }

    fn bucket(&self, hash: u64) -> usize {
        // Multiply-shift maps the hash onto any capacity without a division.
        ((u128::from(hash) * self.slots.as_ref().len() as u128) >> 64) as usize
    }

    fn unlink(&mut self, slot: u32) {
        let bucket = self.bucket(self.slots.as_ref()[slot as usize].hash);
        let slots = self.slots.as_mut();
        let next = slots[slot as usize].chain;
        if slots[bucket].head == slot {
            slots[bucket].head = next;
            return;
        }
        let mut i = slots[bucket].head;
        while i != NIL {
            if slots[i as usize].chain == slot {
                slots[i as usize].chain = next;
                return;
            }
            i = slots[i as usize].chain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: TimeWindow = TimeWindow {
        ahead_secs: 3,
        behind_secs: 120,
    };

    fn fp(n: u32) -> [u8; 32] {
        let mut r = [0u8; 32];
        r[..4].copy_from_slice(&n.to_le_bytes());
        r
    }

    #[test]
    fn replays_are_refused_until_the_retention_ends() {
        let mut c = ReplayCache::new([Entry::EMPTY; 8], [1; 16], W).unwrap();
        assert_eq!(c.record(Fingerprint::FakeTls(&fp(1)), 1000), Ok(()));
        let last = 1000 + u64::from(W.retention_secs()) - 1;
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(1)), last),
            Err(ReplayRefusal::Replay)
        );
        assert_eq!(c.record(Fingerprint::FakeTls(&fp(1)), last + 1), Ok(()));
        assert_eq!(c.replays(), 1);
    }

    #[test]
    fn full_of_live_entries_fails_closed_then_recovers() {
        let mut c = ReplayCache::new([Entry::EMPTY; 4], [2; 16], W).unwrap();
        for n in 0..4 {
            assert_eq!(
                c.record(Fingerprint::FakeTls(&fp(n)), 10 + u64::from(n)),
                Ok(())
            );
        }
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(9)), 20),
            Err(ReplayRefusal::Full)
        );
        assert_eq!(c.refused_full(), 1);
        // Every old fingerprint is still refused as a replay, none forgotten.
        for n in 0..4 {
            assert_eq!(
                c.record(Fingerprint::FakeTls(&fp(n)), 20),
                Err(ReplayRefusal::Replay)
            );
        }
        // Once the oldest has left the window, it alone makes room.
        let t = 10 + u64::from(W.retention_secs());
        assert_eq!(c.record(Fingerprint::FakeTls(&fp(9)), t), Ok(()));
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(10)), t),
            Err(ReplayRefusal::Full)
        );
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(1)), t),
            Err(ReplayRefusal::Replay)
        );
    }

    #[test]
    fn kinds_do_not_collide_and_chains_survive_overwrites() {
        let mut c = ReplayCache::new([Entry::EMPTY; 3], [3; 16], W).unwrap();
        let mut header = [0u8; 48];
        header[..32].copy_from_slice(&fp(5));
        assert_eq!(c.record(Fingerprint::FakeTls(&fp(5)), 0), Ok(()));
        assert_eq!(c.record(Fingerprint::Obfuscated2(&header), 0), Ok(()));
        // Cycle many times through a tiny ring: lookups stay exact.
        for round in 1..200u32 {
            let t = u64::from(round) * u64::from(W.retention_secs());
            assert_eq!(c.record(Fingerprint::FakeTls(&fp(round)), t), Ok(()));
            assert_eq!(
                c.record(Fingerprint::FakeTls(&fp(round)), t),
                Err(ReplayRefusal::Replay)
            );
        }
    }

    #[test]
    fn obfuscated2_entries_outlive_any_window_and_give_way_when_oldest() {
        let header = |n: u8| [n; 48];
        const YEARS: u64 = 10 * 365 * 86_400;
        let mut c = ReplayCache::new([Entry::EMPTY; 2], [4; 16], W).unwrap();
        assert_eq!(c.record(Fingerprint::Obfuscated2(&header(1)), 0), Ok(()));
        assert_eq!(
            c.record(Fingerprint::Obfuscated2(&header(1)), YEARS),
            Err(ReplayRefusal::Replay)
        );
        // A live fake-TLS random behind it: the obfuscated2 header is the
        // oldest and makes room, the random never does inside its window.
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(1)), YEARS + 1_000),
            Ok(())
        );
        assert_eq!(
            c.record(Fingerprint::Obfuscated2(&header(2)), YEARS + 1_001),
            Ok(())
        );
        assert_eq!(
            c.record(Fingerprint::Obfuscated2(&header(3)), YEARS + 1_002),
            Err(ReplayRefusal::Full)
        );
        assert_eq!(
            c.record(Fingerprint::FakeTls(&fp(1)), YEARS + 1_002),
            Err(ReplayRefusal::Replay)
        );
        // Its window over, the random goes first; the newer header stays.
        let t = YEARS + 1_000 + u64::from(W.retention_secs());
        assert_eq!(c.record(Fingerprint::Obfuscated2(&header(3)), t), Ok(()));
        assert_eq!(
            c.record(Fingerprint::Obfuscated2(&header(2)), t),
            Err(ReplayRefusal::Replay)
        );
        // The first header was evicted to make room: forgotten, as the
        // last N handshakes are all a bounded memory can hold.
        assert_eq!(c.record(Fingerprint::Obfuscated2(&header(1)), t), Ok(()));
        assert_eq!(c.refused_full(), 1);
    }

    #[test]
    fn zero_capacity_is_refused() {
        let empty: [Entry; 0] = [];
        assert_eq!(ReplayCache::new(empty, [0; 16], W).err(), Some(BadCapacity));
    }
}
