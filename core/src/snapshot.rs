//! The snapshot: everything that must survive a restart, as bytes.
//!
//! Format version 1, all integers little-endian:
//!
//! ```text
//! header   16 B   "MTGS" | version u16 = 1 | flags u16 = 0 | body length u32 | zero u32
//! body            four sections, in this order, each: tag u8 | count u32 | records
//!   0x01 clients  key u128 | state u8 | offences u8 | remaining ms u64      (26 B each)
//!                 state: bit 0 blocked, bit 1 until lifted, bits 2-4 cause
//!                 remaining: of the block if blocked, else of the offence memory
//!   0x02 allow    network u128 (IPv4 mapped to ::ffff:0:0/96) | length u8  (17 B each)
//!   0x03 deny     as allow; only entries added at run time (manual), config
//!                 entries are reloaded from the config instead
//!   0x04 pins     kind u8 (0 SPKI, 1 certificate) | SHA-256 [32] |
//!                 expires u64 (Unix seconds, u64::MAX: never) | label length u8 | label
//! trailer  32 B   SHA-256 of header and body
//! ```
//!
//! Times are stored as what remains, not as instants, because the runtime's
//! monotonic clock restarts with the process. The checksum catches torn or
//! corrupted files; authenticity (a key in the HSM) is the runtime's layer on
//! top. Decoding validates the whole input before it changes anything, so a
//! bad snapshot leaves the engine exactly as it was.

use core::fmt;

use sha2::{Digest, Sha256};

/// First bytes of every snapshot.
pub const MAGIC: [u8; 4] = *b"MTGS";
/// The format version this crate writes and reads.
pub const VERSION: u16 = 1;
pub(crate) const HEADER_LEN: usize = 16;
pub(crate) const CHECKSUM_LEN: usize = 32;
pub(crate) const CLIENT_RECORD: usize = 26;
pub(crate) const PREFIX_RECORD: usize = 17;
pub(crate) const PIN_RECORD_FIXED: usize = 1 + 32 + 8 + 1;
pub(crate) const SECTION_HEADER: usize = 5;

/// Section tags, in the order they appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Section {
    /// Blocked clients and clients with an offence history.
    Clients = 1,
    /// Allowlist entries added at run time.
    Allow = 2,
    /// Denylist entries added at run time.
    Deny = 3,
    /// Certificate pins.
    Pins = 4,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Clients => "clients",
            Section::Allow => "allow",
            Section::Deny => "deny",
            Section::Pins => "pins",
        }
    }
}

/// Why a snapshot could not be written or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The output buffer is smaller than [`crate::SecurityManager::snapshot_len`].
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// Shorter than a header and a checksum.
    TooShort,
    /// Does not start with `MTGS`.
    BadMagic,
    /// Written by a format version this build does not read.
    UnsupportedVersion(u16),
    /// Reserved header fields are not zero.
    ReservedBits,
    /// The header's body length disagrees with the input's length (a
    /// truncated or extended file).
    LengthMismatch,
    /// The checksum does not match: the file is corrupt.
    ChecksumMismatch,
    /// A section is missing or out of order.
    UnexpectedSection {
        /// The section expected here.
        expected: Section,
        /// The tag found.
        found: u8,
    },
    /// A section ends before its records do.
    Truncated(Section),
    /// A record holds an impossible value.
    BadRecord {
        /// Its section.
        section: Section,
        /// Its index within the section.
        index: u32,
        /// What is wrong.
        problem: &'static str,
    },
    /// More records than the table can hold.
    TooMany {
        /// The section.
        section: Section,
        /// Records in the snapshot.
        count: u32,
        /// Room in the table.
        capacity: usize,
    },
    /// Bytes follow the last section.
    TrailingBytes,
    /// Restoring needs an engine with no live connection.
    Busy,
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            SnapshotError::TooShort => f.write_str("too short to be a snapshot"),
            SnapshotError::BadMagic => f.write_str("not an mtguard snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "snapshot format version {v} is not supported (this build reads {VERSION})"
                )
            }
            SnapshotError::ReservedBits => f.write_str("reserved header fields are not zero"),
            SnapshotError::LengthMismatch => {
                f.write_str("length does not match the header (truncated or extended)")
            }
            SnapshotError::ChecksumMismatch => {
                f.write_str("checksum mismatch: the snapshot is corrupt")
            }
            SnapshotError::UnexpectedSection { expected, found } => write!(
                f,
                "expected section {} ({}), found tag {found}",
                *expected as u8,
                expected.name()
            ),
            SnapshotError::Truncated(s) => write!(f, "section {} is truncated", s.name()),
            SnapshotError::BadRecord {
                section,
                index,
                problem,
            } => write!(f, "record {index} of section {}: {problem}", section.name()),
            SnapshotError::TooMany {
                section,
                count,
                capacity,
            } => write!(
                f,
                "section {} has {count} records but the table has room for {capacity}",
                section.name()
            ),
            SnapshotError::TrailingBytes => f.write_str("bytes after the last section"),
            SnapshotError::Busy => f.write_str("cannot restore while connections are live"),
        }
    }
}

impl core::error::Error for SnapshotError {}

/// Writes into a buffer whose size was checked beforehand.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Writer { out, at: 0 }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn header(&mut self, body_len: u32) {
        self.bytes(&MAGIC);
        self.u16(VERSION);
        self.u16(0);
        self.u32(body_len);
        self.u32(0);
    }
    /// Appends the checksum of everything written so far.
    pub(crate) fn finish(mut self) -> usize {
        let digest = Sha256::digest(&self.out[..self.at]);
        self.bytes(&digest);
        self.at
    }
}

/// Reads a validated snapshot body; every read checks bounds.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks header, length and checksum; returns a reader over the body.
    pub(crate) fn open(data: &'a [u8]) -> Result<Self, SnapshotError> {
        if data.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(SnapshotError::TooShort);
        }
        if data[..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u16::from_le_bytes([data[4], data[5]]);
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        if data[6..8] != [0, 0] || data[12..16] != [0; 4] {
            return Err(SnapshotError::ReservedBits);
        }
        let body_len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
        if Some(data.len()) != body_len.checked_add(HEADER_LEN + CHECKSUM_LEN) {
            return Err(SnapshotError::LengthMismatch);
        }
        let (signed, sum) = data.split_at(data.len() - CHECKSUM_LEN);
        if Sha256::digest(signed).as_slice() != sum {
            return Err(SnapshotError::ChecksumMismatch);
        }
        Ok(Reader {
            data: &signed[HEADER_LEN..],
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize, s: Section) -> Result<&'a [u8], SnapshotError> {
        if self.data.len() < n {
            return Err(SnapshotError::Truncated(s));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, s: Section) -> Result<u8, SnapshotError> {
        Ok(self.take(1, s)?[0])
    }

    pub(crate) fn u32(&mut self, s: Section) -> Result<u32, SnapshotError> {
        let b = self.take(4, s)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, s: Section) -> Result<u64, SnapshotError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, s)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn u128(&mut self, s: Section) -> Result<u128, SnapshotError> {
        let mut a = [0; 16];
        a.copy_from_slice(self.take(16, s)?);
        Ok(u128::from_le_bytes(a))
    }

    /// Reads a section header, checking its tag; returns its record count.
    pub(crate) fn section(&mut self, expected: Section) -> Result<u32, SnapshotError> {
        let tag = self.u8(expected)?;
        if tag != expected as u8 {
            return Err(SnapshotError::UnexpectedSection {
                expected,
                found: tag,
            });
        }
        self.u32(expected)
    }
}
