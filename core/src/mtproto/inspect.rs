//! The incremental inspector and the two handshake checks.

use core::fmt;

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::keys::KeyOps;
use super::replay::{Fingerprint, ReplayRefusal, ReplayStore};
use super::secret::{Secret, SecretKind, SecretSet};
use super::{Accepted, Handshake, Invalid, Transport, Verdict};
use crate::ja4::Ja4;
use crate::reader::Reader;

/// Longest TLS record: a 5-byte header and 2^14 bytes of payload
/// (RFC 8446, 5.1). The default buffer of an [`Inspector`], so that any
/// ClientHello TLS allows is judged, not refused for its size.
pub const RECORD_MAX: usize = 5 + (1 << 14);

/// Largest DC index magnitude taken as plausible. Telegram's production DCs
/// are 1 to 5 (negative for media), and proxies map a few more; an index in
/// the thousands, or zero, is what random bytes decrypt to, not a client.
/// Test-DC indices (10000 and up, as some clients encode them) are refused.
pub const DC_MAX: u16 = 1000;

const HEADER_LEN: usize = 64;
/// A TLS handshake record offered as TLS 1.0 for compatibility, as every
/// client does for its ClientHello.
const TLS_START: [u8; 3] = [0x16, 0x03, 0x01];
/// The fourth byte on which MTProxy decides "fake-TLS" for good
/// (`net-tcp-rpc-ext-server.c`): official clients keep `16 03 01 02` out of
/// their obfuscated2 headers, and no other start.
const TLS_ONLY_LEN_HIGH: u8 = 0x02;
const RECORD_HEADER: usize = 5;
const RANDOM: core::ops::Range<usize> = 11..43;
/// Record header, handshake header, version, random, session id length and
/// a 32-byte session id: anything shorter cannot be a valid hello.
const HELLO_MIN: usize = RECORD_HEADER + 4 + 2 + 32 + 1 + 32;
// A matching secret's index is selected as a byte (see `judge_fake_tls`).
const _: () = assert!(super::MAX_SECRETS <= 256);

/// Judges one connection's first bytes. `N` is the buffer size in bytes: the
/// longest fake-TLS record, header included, it can judge (longer ones are
/// refused as oversized); at least 64, for the obfuscated2 header.
///
/// On a listener with fake-TLS secrets only, a client must start with
/// `16 03 01` (a TLS handshake record); on one without, its first 64 bytes
/// are an obfuscated2 header. `ee` secrets accept fake-TLS only, as MTProxy
/// does once it has a domain: a bare obfuscated2 header under an `ee` key
/// would let a censor's prober skip the TLS disguise.
///
/// A listener with both kinds cannot tell them apart by `16 03 01` alone:
/// an obfuscated2 header's first bytes are random, and official clients
/// avoid only `16 03 01 02`, on which MTProxy decides. So `16 03 01 02` is
/// read as TLS only; after any other `16 03 01 xx` the inspector waits for
/// 64 bytes and judges them as an obfuscated2 header first, and only if no
/// obfuscated2 secret accepts them reads the bytes as a ClientHello (whose
/// record is never shorter than 64 bytes, so no hello is decided earlier).
/// An obfuscated2 client sends its 64 bytes and its first packet without
/// waiting for an answer, so it is never left waiting for a TLS record
/// length its random bytes happened to spell.
///
/// Once decided, the verdict does not change: later calls return it again.
///
/// A buffer too small for the obfuscated2 header does not compile:
///
/// ```compile_fail
/// let _ = mtguard_core::mtproto::Inspector::<32>::new();
/// ```
#[derive(Clone)]
pub struct Inspector<const N: usize = RECORD_MAX> {
    buf: [u8; N],
    len: usize,
    verdict: Option<Verdict>,
}

impl<const N: usize> fmt::Debug for Inspector<N> {
    // The buffer is up to 16 KiB of client bytes: show how much, not what.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector")
            .field("buffered", &self.len)
            .field("verdict", &self.verdict)
            .finish()
    }
}

impl<const N: usize> Default for Inspector<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Inspector<N> {
    const FITS_HEADER: () = assert!(N >= HEADER_LEN, "the buffer must hold 64 bytes");

    /// An inspector that has seen nothing.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS_HEADER;
        Self {
            buf: [0; N],
            len: 0,
            verdict: None,
        }
    }

    /// Feeds the next bytes the client sent. `secrets` says which kinds and
    /// domains the listener has; `keys` does the key operations for the same
    /// indices (the `SecretSet` itself, in software); `replay` (a
    /// [`ReplayCache`](super::ReplayCache) or a handle to one, see
    /// [`ReplayStore`]) is shared by every connection of the listener and
    /// sets the timestamp window. It is used after the key operations only.
    pub fn feed<K, R>(
        &mut self,
        input: &[u8],
        now_unix: u64,
        secrets: &SecretSet,
        keys: &K,
        replay: &mut R,
    ) -> Verdict
    where
        K: KeyOps + ?Sized,
        R: ReplayStore + ?Sized,
    {
        if let Some(verdict) = self.verdict {
            return verdict;
        }
        // Bytes beyond the buffer are beyond any handshake it can accept;
        // the checks below refuse an over-long record from its header.
        let take = input.len().min(N - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;

        let verdict = self.judge(now_unix, secrets, keys, replay);
        if verdict != Verdict::NeedMore {
            self.verdict = Some(verdict);
        }
        verdict
    }

    /// The JA4 fingerprint of the ClientHello this connection began with,
    /// once its whole first record has been fed: valid clients and probes
    /// alike, whatever the verdict, except an accepted obfuscated2 header
    /// (whose random bytes may start like a record). `None` for anything
    /// else, and for a record longer than the buffer. See [`Ja4`].
    pub fn ja4(&self) -> Option<Ja4> {
        if let Some(Verdict::Valid(Accepted {
            handshake: Handshake::Obfuscated2 { .. },
            ..
        })) = self.verdict
        {
            return None;
        }
        Ja4::of_record(&self.buf[..self.len])
    }

    fn judge<K, R>(&self, now_unix: u64, secrets: &SecretSet, keys: &K, replay: &mut R) -> Verdict
    where
        K: KeyOps + ?Sized,
        R: ReplayStore + ?Sized,
    {
        let seen = &self.buf[..self.len];
        let prefix = seen.len().min(TLS_START.len());
        if secrets.has_fake_tls() && seen[..prefix] == TLS_START[..prefix] {
            if !secrets.has_obfuscated2() {
                if prefix < TLS_START.len() {
                    return Verdict::NeedMore;
                }
                return self.judge_fake_tls(now_unix, secrets, keys, replay);
            }
            return self.judge_tls_or_obfuscated2(now_unix, secrets, keys, replay);
        }
        if !secrets.has_obfuscated2() {
            return Verdict::Invalid(Invalid::BadSecretOrTag);
        }
        if is_other_protocol(seen) {
            return Verdict::Invalid(Invalid::OtherProtocol);
        }
        match seen.first_chunk::<HEADER_LEN>() {
            Some(header) => judge_obfuscated2(header, now_unix, secrets, keys, replay),
            None => Verdict::NeedMore,
        }
    }

    /// A start of `16 03 01` on a listener with both kinds of secret.
    ///
    /// Every answer depends on a prefix only once it is given, so that any
    /// split of the same bytes reaches the same verdict: the obfuscated2
    /// reading depends on the first 64 bytes, the TLS reading on the record
    /// header and then the whole record.
    fn judge_tls_or_obfuscated2<K, R>(
        &self,
        now_unix: u64,
        secrets: &SecretSet,
        keys: &K,
        replay: &mut R,
    ) -> Verdict
    where
        K: KeyOps + ?Sized,
        R: ReplayStore + ?Sized,
    {
        let seen = &self.buf[..self.len];
        let Some(&len_high) = seen.get(TLS_START.len()) else {
            return Verdict::NeedMore;
        };
        // No client starts an obfuscated2 header so, or with a zero second
        // word: only the TLS reading is left.
        if len_high == TLS_ONLY_LEN_HIGH || is_other_protocol(seen) {
            return self.judge_fake_tls(now_unix, secrets, keys, replay);
        }
        let Some(header) = seen.first_chunk::<HEADER_LEN>() else {
            return Verdict::NeedMore;
        };
        match judge_obfuscated2(header, now_unix, secrets, keys, replay) {
            // A client of ours, or its replay: the obfuscated2 reading stands.
            v @ (Verdict::Valid(_)
            | Verdict::Invalid(Invalid::Replay | Invalid::ReplayCacheFull)) => v,
            // No secret takes it for a client: perhaps a ClientHello.
            _ => self.judge_fake_tls(now_unix, secrets, keys, replay),
        }
    }

    fn judge_fake_tls<K, R>(
        &self,
        now_unix: u64,
        secrets: &SecretSet,
        keys: &K,
        replay: &mut R,
    ) -> Verdict
    where
        K: KeyOps + ?Sized,
        R: ReplayStore + ?Sized,
    {
        let seen = &self.buf[..self.len];
        let Some(header) = seen.first_chunk::<RECORD_HEADER>() else {
            return Verdict::NeedMore;
        };
        let total = RECORD_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if total > RECORD_MAX || total > N {
            return Verdict::Invalid(Invalid::OversizedHello);
        }
        if total < HELLO_MIN {
            return Verdict::Invalid(Invalid::MalformedHello);
        }
        let Some(record) = seen.get(..total) else {
            return Verdict::NeedMore;
        };
        let Some(sni) = parse_client_hello(record) else {
            return Verdict::Invalid(Invalid::MalformedHello);
        };

        // Every `ee` secret names its domain, and the SNI names the one the
        // client wants: only secrets of that domain can match, so the HMAC
        // is computed for those alone (one, on a listener of distinct
        // domains), not for every secret. A hello whose SNI names no
        // secret's domain costs no HMAC. Its time can tell a prober only
        // whether the name it sent is a secret's domain, which is no
        // secret: every client's hello carries it in clear.
        let Some(sni) = sni else {
            return Verdict::Invalid(Invalid::WrongSni);
        };
        let same_domain = |secret: &Secret| {
            // Host names compare without regard to case (RFC 4343).
            secret.kind() == SecretKind::FakeTls && sni.eq_ignore_ascii_case(secret.domain_bytes())
        };

        let mut random = [0u8; 32];
        random.copy_from_slice(&record[RANDOM]);
        let zeroed = [0u8; 32];
        let parts: [&[u8]; 3] = [&record[..RANDOM.start], &zeroed, &record[RANDOM.end..]];
        // Every candidate's HMAC is computed and the match is selected
        // without a branch on it, so the time taken depends on how many
        // secrets share the SNI's domain, not on which of them matched.
        let mut found = Choice::from(0);
        let mut matched: u8 = 0;
        let mut stamp: u32 = 0;
        let mut unavailable = false;
        let mut candidates = false;
        for (index, secret) in secrets.as_slice().iter().enumerate() {
            if !same_domain(secret) {
                continue;
            }
            candidates = true;
            let Ok(digest) = keys.fake_tls_hmac(index, &parts) else {
                unavailable = true;
                continue;
            };
            // The random is attacker-chosen: compare in constant time so the
            // time taken reveals nothing about how many digest bytes matched.
            let hit = digest[..28].ct_eq(&random[..28]);
            let mut xored = [0u8; 4];
            for (s, (r, d)) in xored.iter_mut().zip(random[28..].iter().zip(&digest[28..])) {
                *s = r ^ d;
            }
            // The first match wins, as when secrets were tried in order.
            let first = hit & !found;
            let index = u8::try_from(index).unwrap_or(u8::MAX);
            matched.conditional_assign(&index, first);
            stamp.conditional_assign(&u32::from_le_bytes(xored), first);
            found |= hit;
        }
        if !candidates {
            return Verdict::Invalid(Invalid::WrongSni);
        }
        if !bool::from(found) {
            return Verdict::Invalid(if unavailable {
                Invalid::KeyUnavailable
            } else {
                Invalid::HmacMismatch
            });
        }
        if !replay.window().contains(u64::from(stamp), now_unix) {
            return Verdict::Invalid(Invalid::Timestamp);
        }
        remember(replay, Fingerprint::FakeTls(&random), now_unix).unwrap_or(Verdict::Valid(
            Accepted {
                secret: usize::from(matched),
                handshake: Handshake::FakeTls,
                len: total,
            },
        ))
    }
}

/// Whether the first bytes are ones that MTProxy reads as another protocol
/// (unobfuscated abridged or intermediate MTProto, HTTP, unobfuscated full
/// MTProto with a zero second word; `tcp_rpcs_compact_parse_execute` in
/// MTProxy's net/net-tcp-rpc-ext-server.c), which clients therefore never
/// put at the start of an obfuscated2 header. Refusing them early answers a
/// short HTTP probe at once instead of waiting for 64 bytes that never come.
fn is_other_protocol(seen: &[u8]) -> bool {
    if seen.first() == Some(&0xef) {
        return true;
    }
    if let Some(word) = seen.first_chunk::<4>() {
        if matches!(
            word,
            [0xee, 0xee, 0xee, 0xee]
                | [0xdd, 0xdd, 0xdd, 0xdd]
                | b"HEAD"
                | b"POST"
                | b"GET "
                | b"OPTI"
        ) {
            return true;
        }
    }
    seen.get(4..8) == Some(&[0; 4])
}

/// Tries every non-fake-TLS secret on a 64-byte obfuscated2 header.
///
/// Only the last AES block is decrypted: CTR mode lets the keystream start at
/// byte 48, and bytes 56..62 (tag and DC) are all that is checked.
fn judge_obfuscated2<K, R>(
    header: &[u8; HEADER_LEN],
    now_unix: u64,
    secrets: &SecretSet,
    keys: &K,
    replay: &mut R,
) -> Verdict
where
    K: KeyOps + ?Sized,
    R: ReplayStore + ?Sized,
{
    let mut key_part = [0u8; 32];
    key_part.copy_from_slice(&header[8..40]);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&header[40..56]);

    // Wrong secrets are the common case; report the most telling thing any
    // secret showed, the first one that got past a random tag.
    let mut reason = Invalid::BadSecretOrTag;
    let mut note = |found| {
        if reason == Invalid::BadSecretOrTag {
            reason = found;
        }
    };
    for (index, secret) in secrets.as_slice().iter().enumerate() {
        if secret.kind() == SecretKind::FakeTls {
            continue;
        }
        let Ok(key) = keys.obfs2_key(index, &key_part) else {
            note(Invalid::KeyUnavailable);
            continue;
        };
        let mut block = [0u8; 16];
        block.copy_from_slice(&header[48..64]);
        let mut cipher = ctr::Ctr128BE::<Aes256>::new(&key.into(), &iv.into());
        cipher.seek(48u64);
        cipher.apply_keystream(&mut block);

        let Some(transport) = Transport::from_tag([block[8], block[9], block[10], block[11]])
        else {
            continue;
        };
        if secret.kind() == SecretKind::Padded && transport != Transport::PaddedIntermediate {
            note(Invalid::TagNotAllowed);
            continue;
        }
        let dc = i16::from_le_bytes([block[12], block[13]]);
        if dc == 0 || dc.unsigned_abs() > DC_MAX {
            note(Invalid::BadDc);
            continue;
        }
        let mut key_iv = [0u8; 48];
        key_iv.copy_from_slice(&header[8..56]);
        return remember(replay, Fingerprint::Obfuscated2(&key_iv), now_unix).unwrap_or(
            Verdict::Valid(Accepted {
                secret: index,
                handshake: Handshake::Obfuscated2 { transport, dc },
                len: HEADER_LEN,
            }),
        );
    }
    Verdict::Invalid(reason)
}

/// Records an otherwise valid handshake; `Some` refusal if it cannot be.
fn remember<R: ReplayStore + ?Sized>(
    replay: &mut R,
    fingerprint: Fingerprint<'_>,
    now_unix: u64,
) -> Option<Verdict> {
    match replay.record(fingerprint, now_unix) {
        Ok(()) => None,
        Err(ReplayRefusal::Replay) => Some(Verdict::Invalid(Invalid::Replay)),
        Err(ReplayRefusal::Full) => Some(Verdict::Invalid(Invalid::ReplayCacheFull)),
    }
}

/// Checks that `record` is one TLS record holding exactly one ClientHello
/// with a 32-byte session id (RFC 8446, 4.1.2), and returns its SNI host
/// name, if any.
fn parse_client_hello(record: &[u8]) -> Option<Option<&[u8]>> {
    let mut r = Reader(record.get(RECORD_HEADER..)?);
    // Handshake type 1 (client_hello), whose 24-bit length fills the record:
    // a hello split over records, or followed by another message, is not
    // what a client sends.
    let header = r.take(4)?;
    let body_len =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if header[0] != 1 || body_len != r.0.len() {
        return None;
    }
    let _legacy_version = r.take(2)?;
    let _random = r.take(32)?;
    if r.vec8()?.len() != 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None;
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == 0 {
            if sni.is_some() {
                return None; // RFC 8446 forbids duplicate extensions
            }
            sni = Some(host_name(data)?);
        }
    }
    Some(sni)
}

/// The host name in a server_name extension (RFC 6066, 3).
fn host_name(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return Some(name);
        }
    }
    None
}
