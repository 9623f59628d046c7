//! MTProto handshake inspection on the server: the state every connection of
//! the guard shares (secrets, replay cache, what to do with a probe) and the
//! per-reason failure counters the metrics show.
//!
//! The decisions are the core's ([`mtguard_core::mtproto`]); this module
//! only supplies the clock (`SystemTime`), the lock around the replay cache,
//! the random hash key, and the key operations ([`Keys`]: software, or a
//! PKCS#11 token for `hsm:` secrets, whose operations run on blocking
//! threads, see [`feed`]).

use std::sync::{Arc, Mutex};

use mtguard_core::mtproto::replay::{Entry, Fingerprint, ReplayRefusal, SERVER_CAPACITY};
use mtguard_core::mtproto::{
    Inspector, Invalid, ReplayCache, ReplayStore, Secret, SecretError, SecretSet, TimeWindow,
    Verdict,
};

use crate::config::OnProbe;
use crate::hsm::Keys;
use crate::telemetry::HandshakeFailures;

/// The replay cache of the server: 6 MiB on the heap.
pub type Replay = ReplayCache<Box<[Entry]>>;

/// The MTProto state shared by every connection of the guard.
pub struct Mtproto {
    secrets: SecretSet,
    keys: Keys,
    window: TimeWindow,
    on_probe: OnProbe,
    mask_backend: Option<String>,
    /// Shared with the state that replaces this one on a reload, as long as
    /// the time window stays the same.
    replay: Arc<Mutex<Replay>>,
}

impl std::fmt::Debug for Mtproto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtproto")
            .field("secrets", &self.secrets.as_slice().len())
            .field("on_probe", &self.on_probe)
            .field("mask_backend", &self.mask_backend)
            .finish_non_exhaustive()
    }
}

impl Mtproto {
    /// Inspection with `secrets`. `mask_backend` is required with
    /// [`OnProbe::Mask`]. `previous` is the state this one replaces (a
    /// reload): its replay cache is kept when `window` is unchanged, so a
    /// reload does not let replays of recent handshakes through.
    pub fn new(
        secrets: &[Secret],
        window: TimeWindow,
        on_probe: OnProbe,
        mask_backend: Option<String>,
        previous: Option<&Mtproto>,
    ) -> Result<Mtproto, SecretError> {
        let mut set = SecretSet::new();
        for secret in secrets {
            set.push(secret.clone())?;
        }
        let keys = Keys::software(set.clone());
        Ok(Mtproto::with_keys(
            set,
            keys,
            window,
            on_probe,
            mask_backend,
            previous,
        ))
    }

    /// Inspection with the secrets of `set` (kinds and domains) whose key
    /// operations `keys` does (see [`Keys::with_token`]); otherwise as
    /// [`Mtproto::new`].
    pub fn with_keys(
        set: SecretSet,
        keys: Keys,
        window: TimeWindow,
        on_probe: OnProbe,
        mask_backend: Option<String>,
        previous: Option<&Mtproto>,
    ) -> Mtproto {
        let replay = match previous {
            Some(p) if p.window() == window => p.replay.clone(),
            _ => Arc::new(Mutex::new(new_replay_cache(window))),
        };
        Mtproto {
            secrets: set,
            keys,
            window,
            on_probe,
            mask_backend,
            replay,
        }
    }

    /// Whether some key operation goes to a PKCS#11 token, so that feeding
    /// must happen on a blocking thread ([`feed`] sees to it).
    pub fn uses_token(&self) -> bool {
        self.keys.uses_token()
    }

    /// The secrets, by index.
    pub fn secrets(&self) -> &SecretSet {
        &self.secrets
    }

    /// What to do with a probe.
    pub fn on_probe(&self) -> OnProbe {
        self.on_probe
    }

    /// Where probes are relayed with [`OnProbe::Mask`].
    pub fn mask_backend(&self) -> Option<&str> {
        self.mask_backend.as_deref()
    }

    /// The fake-TLS timestamp window.
    pub fn window(&self) -> TimeWindow {
        self.window
    }

    /// Replays refused so far by the replay cache.
    pub fn replays(&self) -> u64 {
        self.lock().replays()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the next bytes of a connection to its inspector, at the current
    /// wall-clock time. With token keys
    /// ([`Mtproto::uses_token`]) this blocks: call it on a blocking thread,
    /// or through [`feed`].
    pub fn feed(&self, inspector: &mut Inspector, bytes: &[u8]) -> Verdict {
        let now_unix = crate::unix_now();
        // The lock is taken for the replay record only, not across a key
        // operation that may wait for a token.
        let mut replay = Locked {
            cache: &self.replay,
            window: self.window,
        };
        inspector.feed(bytes, now_unix, &self.secrets, &self.keys, &mut replay)
    }
}

/// The shared replay cache as the inspector's [`ReplayStore`], locked for
/// each record only.
struct Locked<'a> {
    cache: &'a Mutex<Replay>,
    window: TimeWindow,
}

impl ReplayStore for Locked<'_> {
    fn window(&self) -> TimeWindow {
        self.window
    }

    fn record(&mut self, fingerprint: Fingerprint<'_>, now_unix: u64) -> Result<(), ReplayRefusal> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(fingerprint, now_unix)
    }
}

/// Feeds `bytes` to the connection's inspector from async code. Software
/// keys answer at once, inline; token keys block, so the inspector (moved,
/// not copied: it is boxed) and the bytes go to a blocking thread and come
/// back. `inspector` is `None` only if a previous call was cancelled
/// midway; the handshake is then refused. A refusal is counted by reason
/// in `failures`.
pub async fn feed(
    mtproto: &Arc<Mtproto>,
    inspector: &mut Option<Box<Inspector>>,
    bytes: &[u8],
    failures: &HandshakeFailures,
) -> Verdict {
    let verdict = feed_uncounted(mtproto, inspector, bytes).await;
    if let Verdict::Invalid(reason) = verdict {
        failures.record(reason);
    }
    verdict
}

async fn feed_uncounted(
    mtproto: &Arc<Mtproto>,
    inspector: &mut Option<Box<Inspector>>,
    bytes: &[u8],
) -> Verdict {
    if !mtproto.uses_token() {
        return match inspector.as_deref_mut() {
            Some(inspector) => mtproto.feed(inspector, bytes),
            None => Verdict::Invalid(Invalid::KeyUnavailable),
        };
    }
    let Some(mut owned) = inspector.take() else {
        return Verdict::Invalid(Invalid::KeyUnavailable);
    };
    let (m, bytes) = (mtproto.clone(), bytes.to_vec());
    match tokio::task::spawn_blocking(move || {
        let verdict = m.feed(&mut owned, &bytes);
        (owned, verdict)
    })
    .await
    {
        Ok((owned, verdict)) => {
            *inspector = Some(owned);
            verdict
        }
        Err(_) => Verdict::Invalid(Invalid::KeyUnavailable),
    }
}

/// A fresh inspector on the heap (it holds a 16 KiB buffer).
pub fn new_inspector() -> Box<Inspector> {
    Box::new(Inspector::new())
}

/// An empty server-sized replay cache with a random hash key.
fn new_replay_cache(window: TimeWindow) -> Replay {
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).expect("the operating system's random source failed");
    let slots = vec![Entry::EMPTY; SERVER_CAPACITY].into_boxed_slice();
    ReplayCache::new(slots, key, window).expect("the server preset is a valid capacity")
}

/// The `tg://proxy` and `https://t.me/proxy` links of a proxy at
/// `server:port` with `secret` (written in its canonical hex form).
pub fn links(server: &str, port: u16, secret: &Secret) -> [String; 2] {
    let query = format!("server={server}&port={port}&secret={secret}");
    [
        format!("tg://proxy?{query}"),
        format!("https://t.me/proxy?{query}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_the_canonical_secret() {
        let s = Secret::parse("DD0123456789ABCDEF0123456789ABCDEF").unwrap();
        let [tg, https] = links("proxy.example", 443, &s);
        assert_eq!(
            tg,
            "tg://proxy?server=proxy.example&port=443&secret=dd0123456789abcdef0123456789abcdef"
        );
        assert!(https.starts_with("https://t.me/proxy?server=proxy.example&port=443&secret=dd"));
    }
}
