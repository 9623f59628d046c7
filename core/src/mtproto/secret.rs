//! Proxy secrets in the forms operators write them.
//!
//! A secret is 16 bytes of key, optionally preceded by a one-byte mode and,
//! for fake-TLS, followed by the domain the proxy pretends to be:
//!
//! | form | bytes | clients may use |
//! | --- | --- | --- |
//! | classic | `key16` | abridged, intermediate, padded intermediate |
//! | `dd` | `0xdd key16` | padded intermediate only |
//! | `ee` | `0xee key16 domain` | fake-TLS (padded intermediate inside) |
//!
//! Each is written either as hex (`ee` + 32 hex digits + the hex of the
//! domain's bytes) or as base64url of the same bytes, with or without
//! padding, as `tg://proxy` links carry them. Hex is tried first, as the
//! clients do: a string that reads as a valid secret in hex means that, and
//! base64url is tried only when it does not (22 base64 characters can all be
//! hex digits). When neither reading is a valid secret, the error is the hex
//! reading's if the text is hex.

use core::fmt;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Longest domain a fake-TLS secret can carry: the longest DNS name.
pub const DOMAIN_MAX: usize = 253;

/// Secrets one listener accepts at most.
pub const MAX_SECRETS: usize = 16;

/// Longest decoded secret: mode byte, key, domain.
const BYTES_MAX: usize = 1 + 16 + DOMAIN_MAX;

const MODE_PADDED: u8 = 0xdd;
const MODE_FAKE_TLS: u8 = 0xee;

/// What a secret lets a client do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SecretKind {
    /// 16 bytes alone: obfuscated2 with any transport.
    Classic,
    /// `dd`: obfuscated2 with padded intermediate only, whose random padding
    /// hides packet sizes.
    Padded,
    /// `ee`: a TLS ClientHello for the secret's domain, then obfuscated2 with
    /// padded intermediate inside TLS records.
    FakeTls,
}

/// Why a secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SecretError {
    /// The text is empty.
    Empty,
    /// The text is neither hex nor base64url.
    NotHexOrBase64,
    /// Decoded, it is too long or too short for any form; `len` is its
    /// length in bytes.
    BadLength {
        /// Decoded length in bytes.
        len: usize,
    },
    /// 17 or more bytes whose first byte is neither `dd` nor `ee`.
    UnknownMode {
        /// The first byte.
        mode: u8,
    },
    /// A `dd` secret followed by more bytes (only `ee` carries a domain).
    TrailingBytes,
    /// An `ee` secret without a domain.
    MissingDomain,
    /// The domain is not a DNS host name (letters, digits, `-` and `.`,
    /// labels of 1 to 63 characters).
    BadDomain,
    /// The listener already holds [`MAX_SECRETS`] secrets.
    TooMany,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("secret is empty"),
            Self::NotHexOrBase64 => f.write_str("secret is neither hex nor base64url"),
            Self::BadLength { len } => write!(
                f,
                "secret decodes to {len} bytes; expected 16 (classic), 17 (dd + 16) \
                 or more (ee + 16 + domain)"
            ),
            Self::UnknownMode { mode } => write!(
                f,
                "secret starts with mode byte {mode:02x}; expected dd or ee"
            ),
            Self::TrailingBytes => f.write_str("dd secret has bytes after its 16-byte key"),
            Self::MissingDomain => f.write_str("ee secret has no domain after its 16-byte key"),
            Self::BadDomain => f.write_str("ee secret's domain is not a DNS host name"),
            Self::TooMany => write!(f, "more than {MAX_SECRETS} secrets on one listener"),
        }
    }
}

impl core::error::Error for SecretError {}

/// One proxy secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    kind: SecretKind,
    key: [u8; 16],
    domain: heapless::Vec<u8, DOMAIN_MAX>,
}

impl Secret {
    /// Parses a secret in any of the forms in the [module docs](self).
    /// Surrounding whitespace is ignored; hex is read in either case.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty);
        }
        let mut bytes = [0u8; BYTES_MAX];
        let hex_error = match decode_hex(text, &mut bytes).map(|n| Self::from_bytes(&bytes[..n])) {
            Some(Ok(secret)) => return Ok(secret),
            Some(Err(e)) => Some(e),
            None => None,
        };
        match decode_base64url(text, &mut bytes).map(|n| Self::from_bytes(&bytes[..n])) {
            Some(Ok(secret)) => Ok(secret),
            Some(Err(e)) => Err(hex_error.unwrap_or(e)),
            None => Err(hex_error.unwrap_or(SecretError::NotHexOrBase64)),
        }
    }

    /// The secret whose decoded bytes are `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        let len = bytes.len();
        if !(16..=BYTES_MAX).contains(&len) {
            return Err(SecretError::BadLength { len });
        }
        if len == 16 {
            return Ok(Self::new(SecretKind::Classic, key_of(bytes), &[]));
        }
        let (mode, rest) = (bytes[0], &bytes[1..]);
        let (key, domain) = rest.split_at(16);
        match mode {
            MODE_PADDED if domain.is_empty() => Ok(Self::new(SecretKind::Padded, key_of(key), &[])),
            MODE_PADDED => Err(SecretError::TrailingBytes),
            MODE_FAKE_TLS if domain.is_empty() => Err(SecretError::MissingDomain),
            MODE_FAKE_TLS if !is_host_name(domain) => Err(SecretError::BadDomain),
            MODE_FAKE_TLS => Ok(Self::new(SecretKind::FakeTls, key_of(key), domain)),
            mode => Err(SecretError::UnknownMode { mode }),
        }
    }

    fn new(kind: SecretKind, key: [u8; 16], domain: &[u8]) -> Self {
        Self {
            kind,
            key,
            // Callers checked the length.
            domain: heapless::Vec::from_slice(domain).unwrap_or_default(),
        }
    }

    /// What the secret lets a client do.
    pub const fn kind(&self) -> SecretKind {
        self.kind
    }

    /// The 16-byte key that obfuscated2 and the fake-TLS HMAC use.
    pub const fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// The fake-TLS domain's bytes, without the UTF-8 check of
    /// [`Secret::domain`]: the inspector compares it with every hello's SNI.
    pub(crate) fn domain_bytes(&self) -> &[u8] {
        &self.domain
    }

    /// The fake-TLS domain, empty for other kinds. Always ASCII.
    pub fn domain(&self) -> &str {
        // `from_bytes` admits only ASCII host names.
        core::str::from_utf8(&self.domain).unwrap_or_default()
    }
}

impl fmt::Display for Secret {
    /// The canonical form: lower-case hex of every byte, mode and domain
    /// included, as `tg://proxy?...&secret=` links carry it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SecretKind::Classic => {}
            SecretKind::Padded => write!(f, "{MODE_PADDED:02x}")?,
            SecretKind::FakeTls => write!(f, "{MODE_FAKE_TLS:02x}")?,
        }
        self.key
            .iter()
            .chain(self.domain.iter())
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Secret {
    // Never print the key: Debug output ends up in logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("kind", &self.kind)
            .field("domain", &self.domain())
            .finish_non_exhaustive()
    }
}

/// The secrets of one listener, in the order a handshake's secret index
/// refers to.
#[derive(Clone, Debug, Default)]
pub struct SecretSet {
    secrets: heapless::Vec<Secret, MAX_SECRETS>,
}

impl SecretSet {
    /// No secrets.
    pub const fn new() -> Self {
        Self {
            secrets: heapless::Vec::new(),
        }
    }

    /// Adds `secret`; its index is the number of secrets added before it.
    pub fn push(&mut self, secret: Secret) -> Result<usize, SecretError> {
        self.secrets
            .push(secret)
            .map_err(|_| SecretError::TooMany)?;
        Ok(self.secrets.len() - 1)
    }

    /// The secrets, by index.
    pub fn as_slice(&self) -> &[Secret] {
        &self.secrets
    }

    /// Whether any secret is a fake-TLS one.
    pub fn has_fake_tls(&self) -> bool {
        self.secrets.iter().any(|s| s.kind == SecretKind::FakeTls)
    }

    /// Whether any secret accepts a bare obfuscated2 header.
    pub fn has_obfuscated2(&self) -> bool {
        self.secrets.iter().any(|s| s.kind != SecretKind::FakeTls)
    }
}

fn key_of(bytes: &[u8]) -> [u8; 16] {
    let mut key = [0; 16];
    key.copy_from_slice(&bytes[..16]);
    key
}

/// Decodes even-length hex into `out`, or `None` if `text` is not hex or
/// does not fit.
fn decode_hex(text: &str, out: &mut [u8]) -> Option<usize> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) || text.len() / 2 > out.len() {
        return None;
    }
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(text.len() / 2)
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decode_base64url(text: &str, out: &mut [u8]) -> Option<usize> {
    let engine = if text.ends_with('=') {
        URL_SAFE
    } else {
        URL_SAFE_NO_PAD
    };
    engine.decode_slice(text, out).ok()
}

fn is_host_name(name: &[u8]) -> bool {
    name.split(|&b| b == b'.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && label[0] != b'-'
            && label[label.len() - 1] != b'-'
    })
}

#[cfg(test)]
#[path = "../../tests/unit/secret.rs"]
mod tests;
