//! The only operations that touch secret keys.
//!
//! The inspector never reads a key: it asks a [`KeyOps`] for the two values
//! a handshake needs. [`SecretSet`] answers in software; the server's
//! `mtguard::hsm::Keys` answers from a PKCS#11 token with keys that never
//! leave it (`C_DigestUpdate` over the header part then `C_DigestKey` on a
//! 16-byte key object gives the obfuscated2 key; a 32-byte HMAC key
//! `secret || 16 zero bytes` gives the same fake-TLS digest as the 16-byte
//! secret, since HMAC zero-pads short keys). A token's answer can take
//! milliseconds: the inspector asks for keys before it touches the
//! [`ReplayStore`](super::ReplayStore), so a runtime can leave the replay
//! cache unlocked meanwhile.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::secret::SecretSet;

/// A key operation could not be carried out: no such secret, or the token
/// that holds it did not answer. The inspector refuses the handshake
/// ([`super::Invalid::KeyUnavailable`]) rather than guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyUnavailable;

impl core::fmt::Display for KeyUnavailable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the secret's key is unavailable (no such secret, or its token did not answer)")
    }
}

impl core::error::Error for KeyUnavailable {}

/// Key operations of one listener's secrets, by secret index.
pub trait KeyOps {
    /// The client-to-server obfuscated2 key: SHA-256(`header_key_part` ||
    /// key16 of secret `secret`), where `header_key_part` is bytes 8..40 of
    /// the 64-byte header.
    fn obfs2_key(
        &self,
        secret: usize,
        header_key_part: &[u8; 32],
    ) -> Result<[u8; 32], KeyUnavailable>;

    /// HMAC-SHA256 keyed with key16 of secret `secret` over the
    /// concatenation of `parts` (so a record with its random zeroed can be
    /// passed as three slices without a copy).
    fn fake_tls_hmac(&self, secret: usize, parts: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable>;
}

impl KeyOps for SecretSet {
    fn obfs2_key(
        &self,
        secret: usize,
        header_key_part: &[u8; 32],
    ) -> Result<[u8; 32], KeyUnavailable> {
        let secret = self.as_slice().get(secret).ok_or(KeyUnavailable)?;
        let mut hash = Sha256::new();
        hash.update(header_key_part);
        hash.update(secret.key());
        Ok(hash.finalize().into())
    }

    fn fake_tls_hmac(&self, secret: usize, parts: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable> {
        let secret = self.as_slice().get(secret).ok_or(KeyUnavailable)?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret.key()).map_err(|_| KeyUnavailable)?;
        for part in parts {
            mac.update(part);
        }
        Ok(mac.finalize().into_bytes().into())
    }
}
