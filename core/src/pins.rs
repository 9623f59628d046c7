//! Certificate pins: the upstream keys and certificates we agree to talk to.
//!
//! Two conventions exist, and both are supported. RFC 7469 and OkHttp pin the
//! SHA-256 of the SubjectPublicKeyInfo, which survives a renewal that keeps
//! the key; MTProxy's seed pins the SHA-256 of the whole DER certificate,
//! which changes with every renewal. A chain passes if any of its
//! certificates matches any pin that has not expired, so pinning an
//! intermediate CA, or a backup key not yet in use, works as it does in
//! OkHttp.
//!
//! Pins files hold one pin a line, optionally with an expiry date (as Android
//! pin-sets carry) and a label:
//!
//! ```text
//! # upstream proxy, pinned 2026-01-10
//! sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFGc= expires=2027-01-01 # current key
//! cert-sha256/c5b6e022a943c3750b6852518db99a31c40bab78e1d3e19e9cd0c630642890be
//! ```
//!
//! ```
//! use mtguard_core::pins::{parse_pin_line, PinSet, PinVerdict};
//!
//! let file = "# upstream\n\
//!     sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFGc= expires=2027-01-01 # current key\n";
//! let mut pins: PinSet = PinSet::new();
//! for line in file.lines() {
//!     if let Some(pin) = parse_pin_line(line).unwrap() {
//!         pins.add(pin).unwrap();
//!     }
//! }
//! // 2027-01-01T00:00:00Z is 1798761600: from then on the pin no longer counts.
//! let peer_chain: [&[u8]; 0] = [];
//! assert_eq!(pins.verify(&peer_chain, 1_798_761_599), PinVerdict::NoMatch);
//! assert_eq!(pins.verify(&peer_chain, 1_798_761_600), PinVerdict::NoUnexpiredPins);
//! ```

use core::fmt;
use core::str::FromStr;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::der::{self, DerError};

/// Longest label a pin can carry, in bytes.
pub const LABEL_MAX: usize = 32;

/// Pins a [`PinSet`] holds unless told otherwise: the seed's limit.
pub const DEFAULT_CAPACITY: usize = 100;

const SPKI_PREFIX: &str = "sha256/";
const CERT_PREFIX: &str = "cert-sha256/";
/// Padded standard base64 of 32 bytes.
const SPKI_TEXT_LEN: usize = 44;
const CERT_TEXT_LEN: usize = 64;
const SECONDS_PER_DAY: u64 = 86_400;

/// What a pin's hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinKind {
    /// SHA-256 of the DER SubjectPublicKeyInfo (RFC 7469, OkHttp), written
    /// `sha256/<base64>`.
    Spki,
    /// SHA-256 of the whole DER certificate (MTProxy seed), written
    /// `cert-sha256/<hex>`.
    Certificate,
}

impl PinKind {
    /// The prefix of this kind's text form, slash included.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Spki => SPKI_PREFIX,
            Self::Certificate => CERT_PREFIX,
        }
    }
}

/// One pinned hash, with an optional expiry and label.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin {
    kind: PinKind,
    hash: [u8; 32],
    label: heapless::String<LABEL_MAX>,
    expires: Option<u64>,
}

impl Pin {
    /// A pin on `hash`, without expiry or label.
    pub const fn new(kind: PinKind, hash: [u8; 32]) -> Self {
        Self {
            kind,
            hash,
            label: heapless::String::new(),
            expires: None,
        }
    }

    /// The pin of kind `kind` that `cert_der` presents.
    pub fn of_certificate(cert_der: &[u8], kind: PinKind) -> Result<Self, DerError> {
        let hash = match kind {
            PinKind::Spki => spki_pin(cert_der)?,
            PinKind::Certificate => cert_pin(cert_der),
        };
        Ok(Self::new(kind, hash))
    }

    /// Parses the text form of a pin alone: `sha256/<44 characters of
    /// padded standard base64>` or `cert-sha256/<64 hex digits>`, in either
    /// case.
    pub fn parse(text: &str) -> Result<Self, PinError> {
        if let Some(base64) = text.strip_prefix(SPKI_PREFIX) {
            Ok(Self::new(PinKind::Spki, decode_base64(base64)?))
        } else if let Some(hex) = text.strip_prefix(CERT_PREFIX) {
            Ok(Self::new(PinKind::Certificate, decode_hex(hex)?))
        } else {
            Err(PinError::UnknownPrefix)
        }
    }

    /// This pin, no longer counting from `expires` (Unix seconds) on, or
    /// never expiring if `None`.
    pub const fn with_expiry(mut self, expires: Option<u64>) -> Self {
        self.expires = expires;
        self
    }

    /// This pin, labelled. Control characters are refused so that a label
    /// can never break the one-pin-a-line file it is written back to.
    pub fn with_label(mut self, label: &str) -> Result<Self, PinError> {
        if label.chars().any(char::is_control) {
            return Err(PinError::BadLabel);
        }
        self.label = heapless::String::try_from(label)
            .map_err(|_| PinError::LabelTooLong { max: LABEL_MAX })?;
        Ok(self)
    }

    /// What the hash covers.
    pub const fn kind(&self) -> PinKind {
        self.kind
    }

    /// The pinned SHA-256.
    pub const fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The label, empty if none.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Unix seconds from which the pin no longer counts, if it expires.
    pub const fn expires(&self) -> Option<u64> {
        self.expires
    }

    /// Whether the pin no longer counts at `now_unix` (Unix seconds).
    pub const fn is_expired(&self, now_unix: u64) -> bool {
        match self.expires {
            Some(expires) => now_unix >= expires,
            None => false,
        }
    }

    /// The whole pins-file line for this pin, as [`parse_pin_line`] reads
    /// it: the pin, then `expires=YYYY-MM-DD` and `# label` when present.
    ///
    /// Files hold dates, not times: an expiry that is not at midnight UTC is
    /// written as the day it falls in, so the pin read back expires earlier,
    /// never later, than this one.
    pub fn display_line(&self) -> PinLine<'_> {
        PinLine(self)
    }
}

impl fmt::Display for Pin {
    /// The text form of the pin alone, as [`Pin::parse`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.prefix())?;
        match self.kind {
            PinKind::Spki => fmt::Display::fmt(&Base64Display::new(&self.hash, &BASE64), f),
            PinKind::Certificate => self.hash.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

impl fmt::Debug for Pin {
    // The text form, so that logs and test failures show what an operator
    // would find in the pins file rather than 32 decimal bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin")
            .field("pin", &format_args!("{self}"))
            .field("expires", &self.expires)
            .field("label", &self.label.as_str())
            .finish()
    }
}

impl FromStr for Pin {
    type Err = PinError;

    fn from_str(text: &str) -> Result<Self, PinError> {
        Self::parse(text)
    }
}

/// A pin displayed as a pins-file line; see [`Pin::display_line`].
#[derive(Clone, Copy, Debug)]
pub struct PinLine<'a>(&'a Pin);

impl fmt::Display for PinLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pin = self.0;
        write!(f, "{pin}")?;
        if let Some(expires) = pin.expires {
            let days = (expires / SECONDS_PER_DAY).min(days_from_civil(MAX_YEAR, 12, 31));
            let (year, month, day) = civil_from_days(days);
            write!(f, " expires={year:04}-{month:02}-{day:02}")?;
        }
        if !pin.label.is_empty() {
            write!(f, " # {}", pin.label)?;
        }
        Ok(())
    }
}

/// Parses one line of a pins file: `PIN [expires=YYYY-MM-DD] [# label]`.
///
/// Blank lines and comment lines give `Ok(None)`. The expiry is the start
/// (00:00:00 UTC) of the given day: a pin marked `expires=2027-01-01` counts
/// through the last second of 2026. Everything after the first `#` is the
/// label, trimmed; neither base64, hex nor dates contain a `#`.
pub fn parse_pin_line(line: &str) -> Result<Option<Pin>, PinError> {
    let (body, label) = match line.split_once('#') {
        Some((body, label)) => (body, label.trim()),
        None => (line, ""),
    };
    let mut words = body.split_ascii_whitespace();
    let Some(pin) = words.next() else {
        return Ok(None);
    };
    let mut pin = Pin::parse(pin)?;
    if let Some(word) = words.next() {
        let date = word
            .strip_prefix("expires=")
            .ok_or(PinError::TrailingGarbage)?;
        pin.expires = Some(parse_date(date)?);
    }
    if words.next().is_some() {
        return Err(PinError::TrailingGarbage);
    }
    if !label.is_empty() {
        pin = pin.with_label(label)?;
    }
    Ok(Some(pin))
}

/// Why a pin or pins-file line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinError {
    /// The pin starts with neither `sha256/` nor `cert-sha256/`.
    UnknownPrefix,
    /// The text after the prefix has the wrong number of characters.
    WrongLength {
        /// The prefix the pin started with.
        kind: PinKind,
        /// How many characters followed it.
        found: usize,
    },
    /// The text after `sha256/` is not padded standard base64 of 32 bytes.
    BadBase64,
    /// The text after `cert-sha256/` holds something else than hex digits.
    BadHex,
    /// `expires=` is not followed by a real date `YYYY-MM-DD` in 1970..=9999.
    BadDate,
    /// The label has more than [`LABEL_MAX`] bytes.
    LabelTooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The label contains a control character.
    BadLabel,
    /// Something other than `expires=...` or a `#` label follows the pin.
    TrailingGarbage,
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPrefix => write!(
                f,
                "pin must start with {SPKI_PREFIX} (key hash) or {CERT_PREFIX} (certificate hash)"
            ),
            Self::WrongLength {
                kind: PinKind::Spki,
                found,
            } => write!(
                f,
                "{SPKI_PREFIX} pin needs {SPKI_TEXT_LEN} base64 characters, found {found}"
            ),
            Self::WrongLength {
                kind: PinKind::Certificate,
                found,
            } => write!(
                f,
                "{CERT_PREFIX} pin needs {CERT_TEXT_LEN} hex digits, found {found}"
            ),
            Self::BadBase64 => write!(
                f,
                "{SPKI_PREFIX} pin is not standard base64 (A-Z a-z 0-9 + /) of 32 bytes ending in one '='"
            ),
            Self::BadHex => write!(f, "{CERT_PREFIX} pin contains a character that is not a hex digit"),
            Self::BadDate => f.write_str(
                "expires= needs a date YYYY-MM-DD that exists, from 1970-01-01 to 9999-12-31",
            ),
            Self::LabelTooLong { max } => write!(f, "label is longer than {max} bytes"),
            Self::BadLabel => f.write_str("label contains a control character"),
            Self::TrailingGarbage => f.write_str(
                "unexpected text after the pin: only expires=YYYY-MM-DD and a # label may follow",
            ),
        }
    }
}

impl core::error::Error for PinError {}

/// SHA-256 of the SubjectPublicKeyInfo of `cert_der`: its [`PinKind::Spki`]
/// pin.
pub fn spki_pin(cert_der: &[u8]) -> Result<[u8; 32], DerError> {
    Ok(sha256(der::certificate_spki(cert_der)?))
}

/// SHA-256 of `cert_der` as it is: its [`PinKind::Certificate`] pin.
pub fn cert_pin(cert_der: &[u8]) -> [u8; 32] {
    sha256(cert_der)
}

/// Both pins that `cert_der` presents, key first then certificate, for
/// telling an operator what the peer actually sent.
pub fn presented_pins(cert_der: &[u8]) -> Result<(Pin, Pin), DerError> {
    Ok((
        Pin::of_certificate(cert_der, PinKind::Spki)?,
        Pin::of_certificate(cert_der, PinKind::Certificate)?,
    ))
}

/// A fixed-capacity set of pins, kept in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinSet<const N: usize = DEFAULT_CAPACITY> {
    pins: heapless::Vec<Pin, N>,
}

impl<const N: usize> PinSet<N> {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            pins: heapless::Vec::new(),
        }
    }

    /// Adds `pin`. A pin with the same kind and hash as one already present
    /// is refused whatever its label or expiry: silently keeping either
    /// expiry would surprise whoever wrote the other.
    pub fn add(&mut self, pin: Pin) -> Result<(), PinSetError> {
        if self.position(pin.kind, &pin.hash).is_some() {
            return Err(PinSetError::Duplicate);
        }
        self.pins
            .push(pin)
            .map_err(|_| PinSetError::Full { capacity: N })
    }

    /// Removes and returns the pin of kind `kind` on `hash`, if present.
    /// The others keep their order.
    pub fn remove(&mut self, kind: PinKind, hash: &[u8; 32]) -> Option<Pin> {
        let index = self.position(kind, hash)?;
        Some(self.pins.remove(index))
    }

    /// Removes every pin.
    pub fn clear(&mut self) {
        self.pins.clear();
    }

    /// The pin at `index`, in the order pins were added; the index
    /// [`PinVerdict::Match`] reports.
    pub fn get(&self, index: usize) -> Option<&Pin> {
        self.pins.get(index)
    }

    /// The pins, in the order they were added.
    pub fn as_slice(&self) -> &[Pin] {
        &self.pins
    }

    /// Iterates over the pins in the order they were added.
    pub fn iter(&self) -> core::slice::Iter<'_, Pin> {
        self.pins.iter()
    }

    /// How many pins the set holds.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether the set holds no pin.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// How many pins the set can hold.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Judges `chain`, the DER certificates a peer presented, leaf first,
    /// at `now_unix` (Unix seconds).
    ///
    /// The chain matches if any of its certificates matches any unexpired
    /// pin. Every certificate is compared with every pin, in constant time,
    /// so the time taken does not tell which pin matched. An empty chain
    /// matches nothing.
    ///
    /// A certificate that cannot be walked makes the whole chain
    /// [`PinVerdict::Malformed`], even if another certificate matched: the
    /// TLS stack accepted these bytes as a certificate and we cannot read
    /// them as one, and a disagreement between two parsers over what a peer
    /// sent deserves a loud failure rather than a quiet match. It also makes
    /// the verdict independent of where in the chain the pinned certificate
    /// sits. With no usable pin the chain is not read at all.
    pub fn verify(&self, chain: &[&[u8]], now_unix: u64) -> PinVerdict {
        if self.pins.is_empty() {
            return PinVerdict::Empty;
        }
        if self.pins.iter().all(|pin| pin.is_expired(now_unix)) {
            return PinVerdict::NoUnexpiredPins;
        }

        let mut matched = Choice::from(0);
        // u64, not usize: subtle selects only fixed-width integers.
        let mut pin_index = 0u64;
        let mut chain_index = 0u64;
        for (c, cert) in chain.iter().enumerate() {
            let spki_hash = match spki_pin(cert) {
                Ok(hash) => hash,
                Err(error) => {
                    return PinVerdict::Malformed {
                        chain_index: c,
                        error,
                    }
                }
            };
            let cert_hash = cert_pin(cert);
            for (p, pin) in self.pins.iter().enumerate() {
                let presented = match pin.kind {
                    PinKind::Spki => &spki_hash,
                    PinKind::Certificate => &cert_hash,
                };
                let usable = Choice::from(u8::from(!pin.is_expired(now_unix)));
                let hit = pin.hash.ct_eq(presented) & usable;
                let first = hit & !matched;
                pin_index.conditional_assign(&(p as u64), first);
                chain_index.conditional_assign(&(c as u64), first);
                matched |= hit;
            }
        }

        if bool::from(matched) {
            PinVerdict::Match {
                pin_index: pin_index as usize,
                chain_index: chain_index as usize,
            }
        } else {
            PinVerdict::NoMatch
        }
    }

    fn position(&self, kind: PinKind, hash: &[u8; 32]) -> Option<usize> {
        self.pins
            .iter()
            .position(|pin| pin.kind == kind && pin.hash == *hash)
    }
}

impl<const N: usize> Default for PinSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, const N: usize> IntoIterator for &'a PinSet<N> {
    type Item = &'a Pin;
    type IntoIter = core::slice::Iter<'a, Pin>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Why a pin was not added to a [`PinSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinSetError {
    /// The set already holds as many pins as it can.
    Full {
        /// How many pins the set can hold.
        capacity: usize,
    },
    /// The set already holds a pin of the same kind on the same hash.
    Duplicate,
}

impl fmt::Display for PinSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { capacity } => write!(f, "pin set is full: it holds {capacity} pins"),
            Self::Duplicate => f.write_str("the same pin is already in the set"),
        }
    }
}

impl core::error::Error for PinSetError {}

/// What [`PinSet::verify`] concluded about a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinVerdict {
    /// A certificate matched an unexpired pin.
    Match {
        /// Index in the [`PinSet`] of the pin that matched; of the first one,
        /// in set order, that matched the first matching certificate.
        pin_index: usize,
        /// Index in the chain of the first certificate that matched.
        chain_index: usize,
    },
    /// No certificate matched any unexpired pin.
    NoMatch,
    /// Every pin has expired, so nothing could match. Whether to refuse the
    /// peer or fall back to ordinary validation is the caller's policy.
    NoUnexpiredPins,
    /// The set holds no pin.
    Empty,
    /// A certificate of the chain could not be walked.
    Malformed {
        /// Index in the chain of the first certificate that could not be
        /// walked.
        chain_index: usize,
        /// What was wrong with it.
        error: DerError,
    },
}

impl PinVerdict {
    /// Whether the chain matched a pin.
    pub const fn is_match(&self) -> bool {
        matches!(self, Self::Match { .. })
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn decode_base64(text: &str) -> Result<[u8; 32], PinError> {
    if text.len() != SPKI_TEXT_LEN {
        return Err(PinError::WrongLength {
            kind: PinKind::Spki,
            found: text.chars().count(),
        });
    }
    // decode_slice wants room for its estimate of 44 characters: 33 bytes.
    // Only one '=' gives 32; "==" gives 31, and no padding is refused.
    let mut buf = [0u8; 33];
    match BASE64.decode_slice(text, &mut buf) {
        Ok(32) => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&buf[..32]);
            Ok(hash)
        }
        _ => Err(PinError::BadBase64),
    }
}

fn decode_hex(text: &str) -> Result<[u8; 32], PinError> {
    if text.len() != CERT_TEXT_LEN {
        return Err(PinError::WrongLength {
            kind: PinKind::Certificate,
            found: text.chars().count(),
        });
    }
    fn nibble(c: u8) -> Result<u8, PinError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(PinError::BadHex),
        }
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(hash)
}

const MIN_YEAR: u64 = 1970;
const MAX_YEAR: u64 = 9999;

/// `YYYY-MM-DD` to Unix seconds at 00:00:00 UTC of that day.
fn parse_date(text: &str) -> Result<u64, PinError> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(PinError::BadDate);
    }
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit()
                .then(|| acc * 10 + u64::from(d - b'0'))
                .ok_or(PinError::BadDate)
        })
    };
    let (year, month, day) = (number(&b[..4])?, number(&b[5..7])?, number(&b[8..])?);
    if year < MIN_YEAR || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month)
    {
        return Err(PinError::BadDate);
    }
    Ok(days_from_civil(year, month, day) * SECONDS_PER_DAY)
}

const fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

const fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Day counting after Howard Hinnant's `days_from_civil` and
// `civil_from_days` (https://howardhinnant.github.io/date_algorithms.html):
// years start in March so that the leap day is the last day of a year, and
// 400-year eras repeat exactly. Unsigned, because nothing before 1970 is
// accepted.

/// Days from 1970-01-01 to the given date, which must be valid and not
/// earlier than 1970-01-01.
const fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` days after 1970-01-01, as (year, month, day).
const fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
#[path = "../tests/unit/pins.rs"]
mod tests;
