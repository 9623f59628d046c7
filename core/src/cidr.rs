//! CIDR prefixes and the fixed-capacity prefix sets behind the allow and deny
//! lists.
//!
//! Prefixes of both families live in the shared space of [`crate::addr`], so
//! one set holds IPv4 and IPv6 prefixes and an IPv4 peer reported as
//! `::ffff:a.b.c.d` matches the IPv4 prefixes. The flip side: an IPv6 prefix
//! that covers `::ffff:0:0/96`, such as `::/0`, covers every IPv4 address
//! too.
//!
//! ```
//! use mtguard_core::cidr::{parse_netset_line, CidrEntry, CidrSet, Origin};
//! use core::net::IpAddr;
//!
//! let netset = "# FireHOL level1\n192.0.2.0/24\n198.51.100.7 # a single host\n\n2001:db8::/32\n";
//! let mut deny = CidrSet::new([CidrEntry::EMPTY; 16]);
//! for line in netset.lines() {
//!     if let Some(cidr) = parse_netset_line(line).unwrap() {
//!         deny.insert(cidr, Origin::Config).unwrap();
//!     }
//! }
//! assert_eq!(deny.len(), 3);
//! assert!(deny.contains("192.0.2.200".parse::<IpAddr>().unwrap()));
//! assert!(deny.contains("::ffff:198.51.100.7".parse::<IpAddr>().unwrap()));
//! assert!(!deny.contains("198.51.100.8".parse::<IpAddr>().unwrap()));
//! ```

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;

use crate::addr::{is_v4, map_ip, netmask, unmap};

/// An IPv4 or IPv6 prefix: a network address and a prefix length.
///
/// Held in the shared space of [`crate::addr`], where an IPv4 /L is a /L+96.
/// The order is by network address, then shorter prefixes first, so a prefix
/// sorts before every prefix it contains.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cidr {
    // Field order matters: it is the derived order.
    bits: u128,
    len: u8,
}

impl Cidr {
    /// The prefix of `prefix_len` bits containing `addr`; `prefix_len` counts
    /// in the address's family (at most 32 for IPv4, 128 for IPv6).
    ///
    /// Host bits are cleared rather than refused: hand-written lists and
    /// some published ones say `192.0.2.1/24` for `192.0.2.0/24`.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let (max, offset) = match addr {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong { max });
        }
        let len = prefix_len + offset;
        Ok(Cidr {
            bits: map_ip(addr) & netmask(len),
            len,
        })
    }

    /// The prefix with network `bits` and length `len` in the shared space,
    /// as [`Cidr::network_bits`] and [`Cidr::mapped_len`] return them.
    ///
    /// Strict, because such values come from snapshots rather than people:
    /// host bits set mean the data is damaged.
    pub fn from_mapped(bits: u128, len: u8) -> Result<Cidr, CidrError> {
        if len > 128 {
            return Err(CidrError::PrefixTooLong { max: 128 });
        }
        if bits & !netmask(len) != 0 {
            return Err(CidrError::HostBitsSet);
        }
        Ok(Cidr { bits, len })
    }

    /// Parses `192.0.2.0/24`, `2001:db8::/32`, or a bare address as a /32 or
    /// /128, ignoring surrounding whitespace. Host bits are cleared as in
    /// [`Cidr::new`].
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            // u8's parser would also take a sign.
            Some(len) if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(CidrError::BadPrefixLength)
            }
            // Digits that overflow a u8 are too long for either family.
            Some(len) => len.parse().map_err(|_| CidrError::PrefixTooLong { max })?,
        };
        Cidr::new(addr, len)
    }

    /// The network address in the shared space; the same as [`Cidr::first`].
    pub const fn network_bits(&self) -> u128 {
        self.bits
    }

    /// The prefix length in the shared space: an IPv4 /L is L+96.
    pub const fn mapped_len(&self) -> u8 {
        self.len
    }

    /// The prefix length as its family writes it: 0..=32 for IPv4.
    pub fn prefix_len(&self) -> u8 {
        if self.is_ipv4() {
            self.len - 96
        } else {
            self.len
        }
    }

    /// Whether this is an IPv4 prefix (one within `::ffff:0:0/96`).
    pub fn is_ipv4(&self) -> bool {
        self.len >= 96 && is_v4(self.bits)
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        unmap(self.bits)
    }

    /// The lowest address of the prefix, in the shared space.
    pub const fn first(&self) -> u128 {
        self.bits
    }

    /// The highest address of the prefix, in the shared space.
    pub fn last(&self) -> u128 {
        self.bits | !netmask(self.len)
    }

    /// Whether `addr` is within the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.contains_bits(map_ip(addr))
    }

    /// Whether `bits`, an address in the shared space, is within the prefix.
    pub fn contains_bits(&self, bits: u128) -> bool {
        bits & netmask(self.len) == self.bits
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        Cidr::parse(text)
    }
}

/// `192.0.2.0/24` or `2001:db8::/32`; the length is always written.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len())
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

/// Why a prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CidrError {
    /// There is nothing but whitespace.
    Empty,
    /// The part before any `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after the `/` is not a decimal number.
    BadPrefixLength,
    /// The prefix length exceeds what the address family allows.
    PrefixTooLong {
        /// The longest allowed: 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits past the prefix length are set (only [`Cidr::from_mapped`]
    /// refuses these).
    HostBitsSet,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty prefix"),
            Self::BadAddress => f.write_str("not an IPv4 or IPv6 address"),
            Self::BadPrefixLength => f.write_str("prefix length after '/' is not a decimal number"),
            Self::PrefixTooLong { max: 32 } => f.write_str("IPv4 prefix length exceeds 32"),
            Self::PrefixTooLong { max } => write!(f, "IPv6 prefix length exceeds {max}"),
            Self::HostBitsSet => f.write_str("address has bits set past the prefix length"),
        }
    }
}

impl core::error::Error for CidrError {}

/// Parses one line of a FireHOL netset (or any list with one prefix or
/// address a line): `Ok(None)` for blank lines and comments, which start at
/// `#` anywhere on the line.
pub fn parse_netset_line(line: &str) -> Result<Option<Cidr>, CidrError> {
    let text = line.split_once('#').map_or(line, |(text, _)| text).trim();
    if text.is_empty() {
        return Ok(None);
    }
    Cidr::parse(text).map(Some)
}

/// Where a prefix in a [`CidrSet`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Origin {
    /// From configuration files: replaced wholesale on reload.
    Config,
    /// Added by the operator at runtime: kept across reloads and persisted.
    Manual,
}

/// Parent of an entry nothing encloses.
const NO_PARENT: u32 = u32::MAX;

/// One slot of a [`CidrSet`]'s storage.
///
/// The prefix is stored flat rather than as a [`Cidr`], so that the origin
/// and parent fit in what would be the `Cidr`'s tail padding.
#[derive(Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CidrEntry {
    bits: u128,
    len: u8,
    origin: Origin,
    /// Index of the nearest entry enclosing this one, or [`NO_PARENT`].
    parent: u32,
}

impl CidrEntry {
    /// An unused slot, to fill storage with before handing it to
    /// [`CidrSet::new`].
    pub const EMPTY: CidrEntry = CidrEntry {
        bits: 0,
        len: 0,
        origin: Origin::Config,
        parent: NO_PARENT,
    };

    /// The prefix.
    pub const fn cidr(&self) -> Cidr {
        Cidr {
            bits: self.bits,
            len: self.len,
        }
    }

    /// Where it came from.
    pub const fn origin(&self) -> Origin {
        self.origin
    }

    fn key(&self) -> (u128, u8) {
        (self.bits, self.len)
    }
}

impl fmt::Debug for CidrEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CidrEntry")
            .field("cidr", &self.cidr())
            .field("origin", &self.origin)
            .finish()
    }
}

/// Why a prefix could not be added to a [`CidrSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CidrSetError {
    /// Every slot is in use.
    Full {
        /// How many prefixes the set holds.
        capacity: usize,
    },
}

impl fmt::Display for CidrSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { capacity } => write!(f, "prefix set is full ({capacity} prefixes)"),
        }
    }
}

impl core::error::Error for CidrSetError {}

/// A set of prefixes in caller-provided storage, answering "which prefix
/// covers this address" in O(log n).
///
/// The storage is anything that lends out a `[CidrEntry]`: an inline array,
/// a boxed slice (to keep a big table off the stack) or a borrowed slice.
/// Its length is the capacity; its previous contents are ignored.
///
/// # How lookups work
///
/// Entries are kept sorted by network address, then shorter prefixes first,
/// and each records its nearest enclosing entry (its parent). Two prefixes
/// are either nested or disjoint, so every entry containing an address A
/// encloses the last entry whose network is ≤ A (or is that entry): a binary
/// search finds that entry, and its parent chain, at most 129 prefixes of
/// strictly decreasing length, holds every match, most specific first.
///
/// Insertion and removal shift entries and recompute the parents in one
/// linear pass: O(n), which suits admin commands, while the lookup on every
/// connection stays O(log n). A whole list (a config load or reload) goes
/// in through [`CidrSet::build`] instead, in O(n log n): inserting n
/// prefixes one by one would cost O(n²).
#[derive(Clone)]
pub struct CidrSet<S> {
    storage: S,
    len: usize,
}

impl<S: AsRef<[CidrEntry]> + AsMut<[CidrEntry]>> CidrSet<S> {
    /// An empty set holding up to as many prefixes as `storage` has slots.
    pub fn new(storage: S) -> Self {
        CidrSet { storage, len: 0 }
    }

    /// A set of `items` in `storage`, built in O(n log n) for n items:
    /// they are copied in, sorted, merged where equal, and their nesting
    /// chains linked in one pass.
    ///
    /// The result equals inserting the items one by one into an empty set
    /// (duplicates merge and [`Origin::Manual`] wins), and so does the
    /// error: [`CidrSetError::Full`] when the items hold more distinct
    /// prefixes than `storage` has slots. That error comes as soon as it is
    /// known, without reading the rest of `items`, so an oversized list
    /// costs at most a few sorts of the storage, whatever its length.
    ///
    /// The set under construction is owned by the caller, not by whoever
    /// serves lookups: a runtime builds the next list beside the live one,
    /// away from its admission path, and swaps it in whole. On error the
    /// storage is dropped and nothing else has changed.
    ///
    /// ```
    /// use mtguard_core::cidr::{Cidr, CidrEntry, CidrSet, Origin};
    ///
    /// let list = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "10.0.0.0/8"]
    ///     .map(|s| (s.parse::<Cidr>().unwrap(), Origin::Config));
    /// let set = CidrSet::build([CidrEntry::EMPTY; 3], list).unwrap();
    /// assert_eq!(set.len(), 3);
    /// assert!(set.contains("10.1.2.3".parse().unwrap()));
    /// assert!(CidrSet::build([CidrEntry::EMPTY; 2], list).is_err());
    /// ```
    pub fn build<I>(storage: S, items: I) -> Result<Self, CidrSetError>
    where
        I: IntoIterator<Item = (Cidr, Origin)>,
    {
        let mut set = CidrSet::new(storage);
        let capacity = set.capacity();
        let entries = &mut set.storage.as_mut()[..capacity];
        // entries[..sorted] is sorted and free of duplicates (as of the last
        // compaction); entries[sorted..len] holds the items read since.
        let mut sorted = 0;
        let mut len = 0;
        for (cidr, origin) in items {
            // An item already in the sorted part takes no slot: long inputs
            // with many repeats then rarely need another compaction.
            if let Ok(i) = search(&entries[..sorted], cidr) {
                merge_origin(&mut entries[i], origin);
                continue;
            }
            if len == capacity {
                // Full of items that may still repeat each other: only a
                // compaction tells whether this one is one too many.
                len = compact(&mut entries[..len]);
                sorted = len;
                if let Ok(i) = search(&entries[..sorted], cidr) {
                    merge_origin(&mut entries[i], origin);
                    continue;
                }
                if len == capacity {
                    return Err(CidrSetError::Full { capacity });
                }
            }
            entries[len] = CidrEntry {
                bits: cidr.bits,
                len: cidr.len,
                origin,
                parent: NO_PARENT,
            };
            len += 1;
        }
        set.len = compact(&mut entries[..len]);
        set.relink();
        Ok(set)
    }

    /// How many prefixes fit.
    pub fn capacity(&self) -> usize {
        // Parents are u32 indices, with u32::MAX meaning none.
        self.storage.as_ref().len().min(NO_PARENT as usize)
    }

    /// How many prefixes are in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, sorted by network address, then shorter prefixes first.
    pub fn iter(&self) -> core::slice::Iter<'_, CidrEntry> {
        self.entries().iter()
    }

    /// Adds `cidr` and returns whether it was new.
    ///
    /// A prefix already present stays where it is, but [`Origin::Manual`]
    /// wins: the operator added it on purpose, so it survives a reload that
    /// drops it from the configuration, and is persisted. The reverse does
    /// not happen: a config load never demotes a manual entry.
    pub fn insert(&mut self, cidr: Cidr, origin: Origin) -> Result<bool, CidrSetError> {
        let capacity = self.capacity();
        let len = self.len;
        let entries = self.storage.as_mut();
        match search(&entries[..len], cidr) {
            Ok(i) => {
                if origin == Origin::Manual {
                    entries[i].origin = Origin::Manual;
                }
                Ok(false)
            }
            Err(_) if len == capacity => Err(CidrSetError::Full { capacity }),
            Err(i) => {
                entries.copy_within(i..len, i + 1);
                entries[i] = CidrEntry {
                    bits: cidr.bits,
                    len: cidr.len,
                    origin,
                    parent: NO_PARENT,
                };
                self.len += 1;
                self.relink();
                Ok(true)
            }
        }
    }

    /// Removes `cidr`, whatever its origin, and returns whether it was
    /// present. Prefixes it contains stay.
    pub fn remove(&mut self, cidr: Cidr) -> bool {
        let len = self.len;
        let entries = self.storage.as_mut();
        let Ok(i) = search(&entries[..len], cidr) else {
            return false;
        };
        entries.copy_within(i + 1..len, i);
        self.len -= 1;
        self.relink();
        true
    }

    /// Removes every prefix of `origin` (the config entries, before a reload
    /// inserts the new ones) and returns how many went.
    pub fn remove_origin(&mut self, origin: Origin) -> usize {
        let len = self.len;
        let entries = self.storage.as_mut();
        let mut kept = 0;
        for i in 0..len {
            if entries[i].origin != origin {
                entries[kept] = entries[i];
                kept += 1;
            }
        }
        self.len = kept;
        self.relink();
        len - kept
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether a prefix in the set contains `addr`.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.contains_bits(map_ip(addr))
    }

    /// Whether a prefix in the set contains `bits`, an address in the shared
    /// space.
    pub fn contains_bits(&self, bits: u128) -> bool {
        self.matching(bits).is_some()
    }

    /// The most specific prefix in the set containing `bits`, an address in
    /// the shared space.
    pub fn matching(&self, bits: u128) -> Option<Cidr> {
        let entries = self.entries();
        let last = entries.partition_point(|e| e.bits <= bits).checked_sub(1)?;
        let i = enclosing(entries, last as u32, bits)?;
        Some(entries[i].cidr())
    }

    fn entries(&self) -> &[CidrEntry] {
        &self.storage.as_ref()[..self.len]
    }

    /// Recomputes every parent after a change.
    fn relink(&mut self) {
        let len = self.len;
        let entries = &mut self.storage.as_mut()[..len];
        for i in 0..len {
            // Of the entries before i, i-1 is the last whose network is ≤
            // that of i, so the walk that serves lookups, started there,
            // finds i's nearest enclosing entry. It climbs past only entries
            // that end before i, which no later walk reaches again, so the
            // whole pass is linear.
            let parent = match i.checked_sub(1) {
                Some(prev) => enclosing(entries, prev as u32, entries[i].bits),
                None => None,
            };
            entries[i].parent = parent.map_or(NO_PARENT, |p| p as u32);
        }
    }
}

impl<S: AsRef<[CidrEntry]>> fmt::Debug for CidrSet<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(&self.storage.as_ref()[..self.len])
            .finish()
    }
}

/// Sorts `entries` and merges equal prefixes (the manual origin wins);
/// returns how many distinct ones now lead the slice.
fn compact(entries: &mut [CidrEntry]) -> usize {
    entries.sort_unstable_by_key(CidrEntry::key);
    let mut kept: usize = 0;
    for i in 0..entries.len() {
        let e = entries[i];
        match kept.checked_sub(1) {
            Some(last) if entries[last].key() == e.key() => {
                merge_origin(&mut entries[last], e.origin)
            }
            _ => {
                entries[kept] = e;
                kept += 1;
            }
        }
    }
    kept
}

/// The origin a prefix has once `origin` is added again: as in
/// [`CidrSet::insert`], a manual entry is never demoted.
fn merge_origin(entry: &mut CidrEntry, origin: Origin) {
    if origin == Origin::Manual {
        entry.origin = Origin::Manual;
    }
}

/// The position of `cidr` in sorted `entries`, or where it would go.
fn search(entries: &[CidrEntry], cidr: Cidr) -> Result<usize, usize> {
    entries.binary_search_by(|e| e.key().cmp(&(cidr.bits, cidr.len)))
}

/// The first entry containing `bits` on the parent chain starting at `at`.
///
/// Parents precede their children, so the walk always ends.
fn enclosing(entries: &[CidrEntry], mut at: u32, bits: u128) -> Option<usize> {
    while at != NO_PARENT {
        let e = &entries[at as usize];
        if e.cidr().contains_bits(bits) {
            return Some(at as usize);
        }
        at = e.parent;
    }
    None
}

#[cfg(test)]
#[path = "../tests/unit/cidr.rs"]
mod tests;
