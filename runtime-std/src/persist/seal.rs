//! Seals on the files mtguard keeps (state, pins), so a file changed behind
//! its back is refused at start instead of trusted.
//!
//! A sealed file is `MTGSEAL1`, one algorithm byte, a 32-byte tag, then
//! the payload. The tag is HMAC-SHA256 over the magic, the algorithm byte,
//! the file's purpose (`state`, `pins`: a sealed pins file cannot stand in
//! for a state file) and the payload. With an `[hsm]` table the key is the
//! token's integrity key, generated inside the token and never extractable,
//! so whoever can write the file but not use the token cannot forge a seal.
//!
//! Without a sealer, files are written and read plain, as before; a sealed
//! file is then refused (the key that vouches for it is missing).
//!
//! Callers that load or save a file go through [`seal_file`] and
//! [`open_file`] with the node's sealer (`crate::node::Handles::sealer`);
//! both block (a token operation) and belong on a blocking thread.

use std::sync::Arc;

use anyhow::anyhow;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::hsm::Token;

const MAGIC: &[u8; 8] = b"MTGSEAL1";
const ALG_TOKEN_HMAC: u8 = 1;
const ALG_SOFTWARE_HMAC: u8 = 2;
const HEADER: usize = MAGIC.len() + 1 + 32;

/// What a file is for; part of what the seal covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The engine's state file.
    State,
    /// The pins file.
    Pins,
}

impl Purpose {
    fn name(self) -> &'static [u8] {
        match self {
            Purpose::State => b"state",
            Purpose::Pins => b"pins",
        }
    }
}

/// The key that makes and checks seals.
pub enum Sealer {
    /// HMAC-SHA256 with the integrity key inside a PKCS#11 token.
    Token(Arc<Token>),
    /// HMAC-SHA256 with a key in memory (tests; appliances without a token).
    Software([u8; 32]),
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sealer::Token(t) => write!(f, "Sealer::Token({:?})", t.label()),
            Sealer::Software(_) => f.write_str("Sealer::Software"),
        }
    }
}

/// Why a file's seal was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum IntegrityError {
    /// The file is not sealed, but a sealer is configured.
    NotSealed,
    /// The file is sealed, but no sealer is configured to check it.
    NoKey,
    /// Sealed with the other kind of key (token vs software).
    OtherKey,
    /// The tag does not match: the file was changed, cut, or sealed for
    /// another purpose or with another key.
    Mismatch,
    /// The token could not compute the tag.
    Unavailable(String),
}

impl std::fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotSealed => f.write_str(
                "it carries no integrity seal, but [hsm] is configured: it was written \
                 without the token, or replaced",
            ),
            Self::NoKey => f.write_str(
                "it is sealed with a token key, but no [hsm] is configured to check the seal",
            ),
            Self::OtherKey => f.write_str("it is sealed with a different kind of key"),
            Self::Mismatch => f.write_str(
                "its integrity seal does not match: the file was modified outside mtguard, \
                 or sealed with another key",
            ),
            Self::Unavailable(e) => write!(f, "the seal could not be checked: {e}"),
        }
    }
}

impl std::error::Error for IntegrityError {}

impl Sealer {
    fn alg(&self) -> u8 {
        match self {
            Sealer::Token(_) => ALG_TOKEN_HMAC,
            Sealer::Software(_) => ALG_SOFTWARE_HMAC,
        }
    }

    fn tag(&self, purpose: Purpose, payload: &[u8]) -> Result<[u8; 32], IntegrityError> {
        let alg = [self.alg()];
        let parts: [&[u8]; 5] = [MAGIC, &alg, purpose.name(), &[0], payload];
        match self {
            Sealer::Token(token) => token
                .integrity_mac(&parts)
                .map_err(|e| IntegrityError::Unavailable(format!("{e:#}"))),
            Sealer::Software(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .map_err(|e| IntegrityError::Unavailable(e.to_string()))?;
                for part in parts {
                    mac.update(part);
                }
                Ok(mac.finalize().into_bytes().into())
            }
        }
    }

    /// `payload` with a seal for `purpose`.
    pub fn seal(&self, purpose: Purpose, payload: &[u8]) -> Result<Vec<u8>, IntegrityError> {
        let tag = self.tag(purpose, payload)?;
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(self.alg());
        out.extend_from_slice(&tag);
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// The payload of a file sealed for `purpose` with this key.
    pub fn open<'a>(&self, purpose: Purpose, file: &'a [u8]) -> Result<&'a [u8], IntegrityError> {
        if !is_sealed(file) {
            return Err(IntegrityError::NotSealed);
        }
        if file[MAGIC.len()] != self.alg() {
            return Err(IntegrityError::OtherKey);
        }
        let (tag, payload) = file[MAGIC.len() + 1..].split_at(32);
        let expected = self.tag(purpose, payload)?;
        if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)) {
            Ok(payload)
        } else {
            Err(IntegrityError::Mismatch)
        }
    }
}

/// Whether `file` starts like a sealed file.
pub fn is_sealed(file: &[u8]) -> bool {
    file.len() >= HEADER && file.starts_with(MAGIC)
}

/// What to write for a file of `purpose` holding `payload`: sealed with
/// `sealer`, or `payload` itself without one.
pub fn seal_file(
    sealer: Option<&Sealer>,
    purpose: Purpose,
    payload: &[u8],
) -> anyhow::Result<Vec<u8>> {
    match sealer {
        Some(sealer) => sealer
            .seal(purpose, payload)
            .map_err(|e| anyhow!("sealing the {} file: {e}", name(purpose))),
        None => Ok(payload.to_vec()),
    }
}

/// The payload of a file of `purpose` read from disk, after checking its
/// seal with `sealer`; without one, a plain file is its own payload and a
/// sealed one is refused (the key that vouches for it is missing).
pub fn open_file(
    sealer: Option<&Sealer>,
    purpose: Purpose,
    file: &[u8],
) -> Result<Vec<u8>, IntegrityError> {
    match sealer {
        Some(sealer) => sealer.open(purpose, file).map(<[u8]>::to_vec),
        None if is_sealed(file) => Err(IntegrityError::NoKey),
        None => Ok(file.to_vec()),
    }
}

fn name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::State => "state",
        Purpose::Pins => "pins",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_opens_only_unchanged_for_its_purpose_and_key() {
        let sealer = Sealer::Software([7; 32]);
        let sealed = sealer.seal(Purpose::State, b"blocks and pins").unwrap();
        assert_eq!(
            sealer.open(Purpose::State, &sealed).unwrap(),
            b"blocks and pins"
        );
        assert_eq!(
            sealer.open(Purpose::Pins, &sealed),
            Err(IntegrityError::Mismatch)
        );
        assert_eq!(
            Sealer::Software([8; 32]).open(Purpose::State, &sealed),
            Err(IntegrityError::Mismatch)
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(sealer.open(Purpose::State, &bad).is_err(), "byte {i}");
        }
        assert!(sealer
            .open(Purpose::State, &sealed[..sealed.len() - 1])
            .is_err());
        assert_eq!(
            sealer.open(Purpose::State, b"plain"),
            Err(IntegrityError::NotSealed)
        );
    }

    #[test]
    fn without_a_sealer_plain_files_pass_and_sealed_ones_are_refused() {
        assert_eq!(open_file(None, Purpose::State, b"plain").unwrap(), b"plain");
        assert_eq!(seal_file(None, Purpose::State, b"plain").unwrap(), b"plain");
        let sealed = Sealer::Software([1; 32])
            .seal(Purpose::State, b"x")
            .unwrap();
        assert_eq!(
            open_file(None, Purpose::State, &sealed),
            Err(IntegrityError::NoKey)
        );
    }
}
