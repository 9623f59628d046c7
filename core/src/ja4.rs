//! JA4 fingerprints of TLS ClientHellos, and a bounded count of the most
//! frequent ones.
//!
//! JA4 (FoxIO's `technical_details/JA4.md`) names a TLS client by what its
//! ClientHello offers, not by anything it can pick per connection: `t13d1516h2_8daaf6152771_e5627efa2ab1`
//! reads as TLS over TCP (`t`), version 1.3 (`13`, the highest
//! supported_versions entry, else the hello's legacy version), SNI present
//! (`d`, else `i`), 15 cipher suites and 16 extensions (GREASE left out,
//! capped at 99), first ALPN value `h2` (its first and last characters;
//! `00` without one); then the first 12 hex digits of SHA-256 over the
//! sorted cipher suites; then the same over the sorted extensions without
//! SNI and ALPN, `_`, and the signature algorithms in the hello's order.
//! A hash of an empty list is written `000000000000`.
//!
//! [`Ja4::of_record`] computes it from the first TLS record of a connection
//! with no allocation. The lists are sorted in fixed buffers of
//! [`CIPHERS_MAX`] and [`EXTENSIONS_MAX`] entries; a hello that offers more
//! (no client does: they offer tens) has no fingerprint here rather than a
//! wrong one. [`Ja4Counts`] keeps the most frequent fingerprints in a table
//! of fixed size.

use core::fmt;
use core::hash::Hasher as _;

use sha2::{Digest, Sha256};

use crate::reader::Reader;
use siphasher::sip::SipHasher13;

/// Most cipher suites a fingerprinted hello may offer. A 16 KiB record can
/// list 8,000; real clients list tens, and `openssl s_client -cipher ALL`
/// under 200.
pub const CIPHERS_MAX: usize = 512;

/// Most extensions a fingerprinted hello may carry. About 60 types are
/// assigned, and TLS forbids listing one twice.
pub const EXTENSIONS_MAX: usize = 128;

/// Length of every JA4 string.
pub const LEN: usize = 36;

const SNI: u16 = 0x0000;
const SIGNATURE_ALGORITHMS: u16 = 0x000d;
const ALPN: u16 = 0x0010;
const SUPPORTED_VERSIONS: u16 = 0x002b;
const ZERO_HASH: &[u8; 12] = b"000000000000";

/// A JA4 fingerprint: 36 ASCII characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ja4([u8; LEN]);

impl Ja4 {
    /// The fingerprint of the ClientHello that the TLS record at the start of
    /// `bytes` holds (a handshake record, `16 03 xx`, whose first message is
    /// a whole ClientHello); `None` if it holds none, or the hello offers
    /// more than [`CIPHERS_MAX`] suites or [`EXTENSIONS_MAX`] extensions.
    /// Bytes after the record are ignored.
    pub fn of_record(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let header = r.take(5)?;
        if header[0] != 0x16 || header[1] != 0x03 {
            return None;
        }
        let mut record = Reader(r.take(usize::from(u16::from_be_bytes([header[3], header[4]])))?);
        let handshake = record.take(4)?;
        let body_len = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if handshake[0] != 1 {
            return None;
        }
        // A hello longer than its record continues in the next one, which
        // the inspector does not read: no fingerprint rather than a guess.
        Self::of_client_hello(record.take(body_len)?)
    }

    /// The fingerprint of a ClientHello message body (after the 4-byte
    /// handshake header, RFC 8446 4.1.2).
    pub fn of_client_hello(body: &[u8]) -> Option<Self> {
        let mut r = Reader(body);
        let legacy_version = r.u16()?;
        r.take(32)?; // random
        r.vec8()?; // session id
        let suites = r.vec16()?;
        if !suites.len().is_multiple_of(2) {
            return None;
        }
        r.vec8()?; // compression methods
                   // TLS 1.2 and earlier hellos may end here, without extensions.
        let extensions = if r.0.is_empty() { &[][..] } else { r.vec16()? };

        let mut ciphers = heapless::Vec::<u16, CIPHERS_MAX>::new();
        for s in suites
            .chunks_exact(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
        {
            if !is_grease(s) {
                ciphers.push(s).ok()?;
            }
        }

        let mut kinds = heapless::Vec::<u16, EXTENSIONS_MAX>::new();
        let mut count = 0usize;
        let mut sni = false;
        let mut alpn = *b"00";
        let mut version = None;
        let mut signatures: &[u8] = &[];
        let mut seen_signatures = false;
        let mut e = Reader(extensions);
        while !e.0.is_empty() {
            let kind = e.u16()?;
            let data = e.vec16()?;
            if is_grease(kind) {
                continue;
            }
            count += 1;
            match kind {
                SNI => sni = true,
                ALPN => alpn = alpn_chars(data),
                SUPPORTED_VERSIONS => version = highest_version(data),
                SIGNATURE_ALGORITHMS if !seen_signatures => {
                    seen_signatures = true;
                    signatures = Reader(data).vec16().unwrap_or_default();
                }
                _ => {}
            }
            if kind != SNI && kind != ALPN {
                kinds.push(kind).ok()?;
            }
        }

        let mut out = [0u8; LEN];
        out[0] = b't';
        out[1..3].copy_from_slice(&version_chars(version.unwrap_or(legacy_version)));
        out[3] = if sni { b'd' } else { b'i' };
        out[4..6].copy_from_slice(&two_digits(ciphers.len()));
        out[6..8].copy_from_slice(&two_digits(count));
        out[8..10].copy_from_slice(&alpn);
        out[10] = b'_';
        out[23] = b'_';

        ciphers.sort_unstable();
        out[11..23].copy_from_slice(&if ciphers.is_empty() {
            *ZERO_HASH
        } else {
            let mut h = Sha256::new();
            hash_list(&mut h, ciphers.iter().copied());
            truncated(h)
        });

        kinds.sort_unstable();
        out[24..36].copy_from_slice(&if kinds.is_empty() {
            *ZERO_HASH
        } else {
            let mut h = Sha256::new();
            hash_list(&mut h, kinds.iter().copied());
            // GREASE signature algorithms are left out too, as FoxIO's
            // Rust implementation does.
            let mut algs = signatures
                .chunks_exact(2)
                .map(|s| u16::from_be_bytes([s[0], s[1]]))
                .filter(|&s| !is_grease(s))
                .peekable();
            if algs.peek().is_some() {
                h.update(b"_");
                hash_list(&mut h, algs);
            }
            truncated(h)
        });
        Some(Self(out))
    }

    /// A fingerprint as written, e.g. in a configuration: 36 characters,
    /// `_` at 10 and 23, lower-case hex after the first 10, which are ASCII
    /// letters and digits. `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; LEN] = text.as_bytes().try_into().ok()?;
        let well_formed = bytes.iter().enumerate().all(|(i, &b)| match i {
            10 | 23 => b == b'_',
            0..10 => b.is_ascii_alphanumeric(),
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
        well_formed.then_some(Self(bytes))
    }

    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only (see `of_client_hello` and `parse`).
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The fingerprint's 36 ASCII bytes.
    pub const fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ja4({})", self.as_str())
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Ja4 {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=str}", self.as_str())
    }
}

/// GREASE values (RFC 8701): `0x?a?a` with both bytes equal.
const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

fn highest_version(data: &[u8]) -> Option<u16> {
    Reader(data)
        .vec8()?
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .filter(|&v| !is_grease(v))
        .max()
}

fn version_chars(version: u16) -> [u8; 2] {
    match version {
        0x0304 => *b"13",
        0x0303 => *b"12",
        0x0302 => *b"11",
        0x0301 => *b"10",
        0x0300 => *b"s3",
        0x0002 => *b"s2",
        0xfeff => *b"d1",
        0xfefd => *b"d2",
        0xfefc => *b"d3",
        _ => *b"00",
    }
}

fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// The first and last characters of the first ALPN value, when both are
/// ASCII letters or digits; else the first and last hex digits of the
/// value (FoxIO's JA4.md: `0x30 0xAB` gives `3b`); `00` without a value.
/// The ja4plus package writes `9` for a byte of 0x80 or more instead; the
/// specification's text is followed here.
fn alpn_chars(data: &[u8]) -> [u8; 2] {
    let first = Reader(data).vec16().and_then(|list| Reader(list).vec8());
    match first {
        Some(&[a, .., b]) | Some(&[a @ b]) => {
            if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() {
                [a, b]
            } else {
                [HEX[usize::from(a >> 4)], HEX[usize::from(b & 0xf)]]
            }
        }
        _ => *b"00",
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Feeds `values` to `h` as JA4 writes lists: 4 lower-case hex digits each,
/// comma-separated.
fn hash_list(h: &mut Sha256, values: impl Iterator<Item = u16>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            h.update(b",");
        }
        let hex = [
            HEX[usize::from(v >> 12)],
            HEX[usize::from(v >> 8 & 0xf)],
            HEX[usize::from(v >> 4 & 0xf)],
            HEX[usize::from(v & 0xf)],
        ];
        h.update(hex);
    }
}

fn truncated(h: Sha256) -> [u8; 12] {
    let digest = h.finalize();
    let mut out = [0u8; 12];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// One fingerprint's count in a [`Ja4Counts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The fingerprint.
    pub ja4: Ja4,
    /// Hellos counted for it: exact while `overcount` is 0, otherwise at
    /// most `overcount` more than it really had.
    pub count: u64,
    /// The count of the entry it replaced when the table was full, which
    /// `count` includes (the Space-Saving algorithm's error bound).
    pub overcount: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    counted: Counted,
}

/// The most frequent fingerprints, in a table of `N` entries (64 bytes
/// each: 36 of fingerprint, 8 of keyed hash, 16 of counts, and padding).
///
/// When the table is full, a new fingerprint replaces the least counted one
/// and takes over its count plus one, recording that count as its
/// overcount (Metwally, Agrawal and El Abbadi's Space-Saving): any
/// fingerprint seen in more than 1/`N` of all hellos is in the table, and
/// an entry's true count lies between `count - overcount` and `count`. A
/// flood of distinct fingerprints turns over the least counted entries;
/// it displaces one seen more often only once the flood itself outnumbers
/// it `N` to 1. Entries are kept sorted by count, highest first, so the
/// top is a prefix and the least counted is last.
///
/// Fingerprints are attacker-chosen: entries are found by a SipHash keyed
/// with the `hash_key` given at construction (compared before the
/// fingerprint itself), so a scan of the table costs `N` integer compares
/// whatever the fingerprints.
#[derive(Clone)]
pub struct Ja4Counts<const N: usize> {
    slots: heapless::Vec<Slot, N>,
    hash_key: [u8; 16],
    total: u64,
}

impl<const N: usize> fmt::Debug for Ja4Counts<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ja4Counts")
            .field("entries", &self.slots.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Ja4Counts<N> {
    /// An empty table; `hash_key` should be random (see the type's docs).
    pub const fn new(hash_key: [u8; 16]) -> Self {
        Self {
            slots: heapless::Vec::new(),
            hash_key,
            total: 0,
        }
    }

    /// Counts one hello with fingerprint `ja4`.
    pub fn record(&mut self, ja4: &Ja4) {
        self.total = self.total.saturating_add(1);
        let hash = self.hash(ja4);
        let found = self
            .slots
            .iter()
            .position(|s| s.hash == hash && s.counted.ja4 == *ja4);
        let at = match found {
            Some(at) => {
                let c = &mut self.slots[at].counted;
                c.count = c.count.saturating_add(1);
                at
            }
            None => {
                let slot = |count, overcount| Slot {
                    hash,
                    counted: Counted {
                        ja4: *ja4,
                        count,
                        overcount,
                    },
                };
                match self.slots.last() {
                    _ if !self.slots.is_full() => {
                        // Fits: the table holds N < usize::MAX entries.
                        let _ = self.slots.push(slot(1, 0));
                        self.slots.len() - 1
                    }
                    Some(least) => {
                        let min = least.counted.count;
                        let at = self.slots.len() - 1;
                        self.slots[at] = slot(min.saturating_add(1), min);
                        at
                    }
                    None => return, // N == 0: nothing is kept
                }
            }
        };
        // Keep the order: move the entry up past those now counted less.
        let mut at = at;
        while at > 0 && self.slots[at - 1].counted.count < self.slots[at].counted.count {
            self.slots.swap(at - 1, at);
            at -= 1;
        }
    }

    /// The counted fingerprints, most counted first.
    pub fn top(&self) -> impl Iterator<Item = &Counted> + '_ {
        self.slots.iter().map(|s| &s.counted)
    }

    /// The count of `ja4`, if it is in the table.
    pub fn get(&self, ja4: &Ja4) -> Option<&Counted> {
        let hash = self.hash(ja4);
        self.slots
            .iter()
            .find(|s| s.hash == hash && s.counted.ja4 == *ja4)
            .map(|s| &s.counted)
    }

    /// Hellos counted in all, those no longer in the table included.
    pub const fn total(&self) -> u64 {
        self.total
    }

    /// Fingerprints in the table.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing was counted yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn hash(&self, ja4: &Ja4) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.hash_key);
        h.write(&ja4.0);
        h.finish()
    }
}

#[cfg(test)]
#[path = "../tests/unit/ja4.rs"]
mod tests;
