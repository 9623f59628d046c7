//! MTProto handshake inspection: tell a proxy client from a scanner, a
//! prober or a replay by its first bytes, before they reach the proxy.
//!
//! A listener has up to [`MAX_SECRETS`] [`Secret`]s. Each connection gets an
//! [`Inspector`], fed the client's bytes as they arrive in pieces of any
//! size; it answers [`Verdict::NeedMore`] until it can decide, then
//! [`Verdict::Valid`] or [`Verdict::Invalid`] for good. Keys are reached only
//! through [`KeyOps`], and accepted handshakes are remembered in a
//! [`ReplayCache`] shared by the listener's connections.
//!
//! What is checked:
//! - obfuscated2 (classic and `dd` secrets): the 64-byte header decrypts,
//!   under some secret, to a known transport tag that the secret allows and
//!   a plausible DC index ([`DC_MAX`]); first bytes that MTProxy takes for
//!   another protocol (HTTP, unobfuscated MTProto) are refused at once; see
//!   [`Inspector`].
//! - fake-TLS (`ee` secrets): one well-formed TLS handshake record holding a
//!   ClientHello with a 32-byte session id, whose SNI is the secret's domain
//!   and whose random is the secret's HMAC with a timestamp inside the
//!   [`TimeWindow`]. Only secrets of the SNI's domain are tried, each of
//!   them always (the match is selected without a branch), so one hello
//!   costs one HMAC per secret of its domain and none for an SNI that names
//!   no secret's domain; the time taken does not say which secret matched.
//!   What follows the ClientHello (the obfuscated2 header in TLS
//!   application-data records, sent only after the server's reply) is not
//!   inspected.
//! - the handshake was not accepted before: a fake-TLS random inside its
//!   window, an obfuscated2 header (which carries no time) for as long as
//!   the [`ReplayCache`] has room to remember it.
//!
//! ```
//! use mtguard_core::mtproto::{replay::Entry, Inspector, ReplayCache, Secret, SecretSet, TimeWindow, Verdict};
//!
//! let mut secrets = SecretSet::new();
//! secrets.push(Secret::parse("dd0123456789abcdef0123456789abcdef").unwrap()).unwrap();
//! let mut replay =
//!     ReplayCache::new([Entry::EMPTY; 64], [7; 16], TimeWindow::default()).unwrap();
//!
//! let mut inspector: Inspector = Inspector::new();
//! let now_unix = 1_800_000_000;
//! // 64 random-looking bytes that no secret decrypts to a known tag:
//! let verdict = inspector.feed(&[0x42; 40], now_unix, &secrets, &secrets, &mut replay);
//! assert_eq!(verdict, Verdict::NeedMore);
//! let verdict = inspector.feed(&[0x42; 24], now_unix, &secrets, &secrets, &mut replay);
//! assert!(matches!(verdict, Verdict::Invalid(_)));
//! ```

mod inspect;
pub mod keys;
pub mod replay;
pub mod secret;

pub use inspect::{Inspector, DC_MAX, RECORD_MAX};
pub use keys::{KeyOps, KeyUnavailable};
pub use replay::{ReplayCache, ReplayStore};
pub use secret::{Secret, SecretError, SecretKind, SecretSet, MAX_SECRETS};

use crate::HandshakeOutcome;

/// How far a fake-TLS timestamp may stray from the server's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TimeWindow {
    /// Seconds a client's clock may run ahead of ours.
    pub ahead_secs: u32,
    /// Seconds a client's clock may lag behind ours (or a ClientHello may
    /// have taken to arrive).
    pub behind_secs: u32,
}

impl Default for TimeWindow {
    /// 3 s ahead, 120 s behind: clients sync their clock with Telegram's,
    /// so large skews are rare, and a short window bounds both replays and
    /// the replay cache.
    fn default() -> Self {
        Self {
            ahead_secs: 3,
            behind_secs: 120,
        }
    }
}

impl TimeWindow {
    /// Whether a timestamp `ts` (Unix seconds) is acceptable at `now_unix`.
    /// Both ends are included.
    pub fn contains(&self, ts: u64, now_unix: u64) -> bool {
        now_unix.saturating_sub(u64::from(self.behind_secs)) <= ts
            && ts <= now_unix.saturating_add(u64::from(self.ahead_secs))
    }

    /// Seconds a fingerprint accepted at `now` must be remembered: a
    /// ClientHello stamped up to `ahead` seconds in the future stays
    /// acceptable for `behind` seconds after its stamp, that is until
    /// `now + ahead + behind` inclusive.
    pub const fn retention_secs(&self) -> u32 {
        self.ahead_secs
            .saturating_add(self.behind_secs)
            .saturating_add(1)
    }
}

/// The transport a client asked for in its obfuscated2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Transport {
    /// Tag `ef ef ef ef`.
    Abridged,
    /// Tag `ee ee ee ee`.
    Intermediate,
    /// Tag `dd dd dd dd`: the only one `dd` secrets and fake-TLS allow.
    PaddedIntermediate,
}

impl Transport {
    /// The transport whose tag is `tag`, if any.
    pub const fn from_tag(tag: [u8; 4]) -> Option<Self> {
        match tag {
            [0xef, 0xef, 0xef, 0xef] => Some(Self::Abridged),
            [0xee, 0xee, 0xee, 0xee] => Some(Self::Intermediate),
            [0xdd, 0xdd, 0xdd, 0xdd] => Some(Self::PaddedIntermediate),
            _ => None,
        }
    }
}

/// What kind of handshake was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Handshake {
    /// An obfuscated2 header.
    Obfuscated2 {
        /// The transport the client asked for.
        transport: Transport,
        /// The DC index: negative for media DCs.
        dc: i16,
    },
    /// A fake-TLS ClientHello. The obfuscated2 header inside (always padded
    /// intermediate) comes after the server's reply and is not inspected.
    FakeTls,
}

/// An accepted handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Accepted {
    /// Index of the secret it was made with, in the [`SecretSet`].
    pub secret: usize,
    /// What it was.
    pub handshake: Handshake,
    /// Its length in bytes from the start of the stream: 64 for obfuscated2,
    /// the whole record for fake-TLS. Bytes after it were not inspected.
    pub len: usize,
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Invalid {
    /// No secret decrypts the obfuscated2 header to a known tag (a wrong
    /// secret or a scanner), or a listener with only fake-TLS secrets got
    /// something other than a TLS handshake record.
    BadSecretOrTag,
    /// The first bytes are another protocol's (HTTP, unobfuscated MTProto)
    /// that clients never begin an obfuscated2 header with; refused as soon
    /// as they arrive.
    OtherProtocol,
    /// A known tag that the secret does not allow (a `dd` secret allows
    /// padded intermediate only).
    TagNotAllowed,
    /// The DC index is zero or beyond [`DC_MAX`].
    BadDc,
    /// The TLS record or its ClientHello does not parse, or the session id
    /// is not 32 bytes.
    MalformedHello,
    /// The TLS record is longer than TLS allows or than the inspector's
    /// buffer holds.
    OversizedHello,
    /// The ClientHello's random is not the HMAC of any fake-TLS secret
    /// whose domain its SNI names (a valid HMAC under a secret of another
    /// domain is not looked for, and is refused so too).
    HmacMismatch,
    /// The HMAC matches but the timestamp is outside the [`TimeWindow`].
    Timestamp,
    /// The ClientHello has no SNI, or its SNI names no fake-TLS secret's
    /// domain; refused before any HMAC is computed.
    WrongSni,
    /// The handshake was accepted before (a fake-TLS random inside its
    /// window; an obfuscated2 header at any age the cache still holds).
    Replay,
    /// The replay cache is full and its oldest entry is a fake-TLS random
    /// still inside its window; the guard fails closed rather than forget
    /// it.
    ReplayCacheFull,
    /// A key operation failed (see [`KeyUnavailable`]).
    KeyUnavailable,
}

impl Invalid {
    /// The outcome to report to [`crate::SecurityManager::handle_handshake`].
    pub const fn outcome(self) -> HandshakeOutcome {
        match self {
            Self::Replay => HandshakeOutcome::Replay,
            _ => HandshakeOutcome::Invalid,
        }
    }
}

/// The inspector's answer so far.
#[must_use = "a handshake's verdict decides whether the connection is served"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// Not enough bytes to decide yet.
    NeedMore,
    /// A client of this proxy.
    Valid(Accepted),
    /// Not one.
    Invalid(Invalid),
}

impl Verdict {
    /// The outcome to report to the engine, once decided.
    pub const fn outcome(self) -> Option<HandshakeOutcome> {
        match self {
            Self::NeedMore => None,
            Self::Valid(_) => Some(HandshakeOutcome::Valid),
            Self::Invalid(reason) => Some(reason.outcome()),
        }
    }
}
