//! Proxy secrets and the state-sealing key kept in a PKCS#11 token.
//!
//! The token is found by its label in the vendor's module, never by slot
//! number (slots are renumbered when tokens come and go). The user PIN is
//! read from a file or an environment variable, never from the command line
//! (where `ps` shows it) and never logged.
//!
//! What a secret labelled `L` is inside the token: one secret key object
//! (`CKO_SECRET_KEY`, `CKK_GENERIC_SECRET`) labelled `L`, sensitive and not
//! extractable, whose `CKA_ID` holds the public half of the secret (the
//! mode byte `00`, `dd` or `ee`, then the fake-TLS domain):
//! - an `ee` secret is stored as the 32-byte HMAC key `key16 || 16 zero
//!   bytes`: HMAC zero-pads a key shorter than the hash block, so this key
//!   gives the same HMAC-SHA256 as the 16-byte secret, and tokens refuse
//!   HMAC keys under 32 bytes (SoftHSM2 does);
//! - a classic or `dd` secret is stored as the 16-byte key itself, and the
//!   obfuscated2 key SHA-256(header bytes 8..40 || key16) is computed by the
//!   token as a multi-part digest: `C_DigestInit`, `C_DigestUpdate(header
//!   part)`, `C_DigestKey(key)`, `C_DigestFinal`. The key never leaves the
//!   token; the derived AES key does (the guard decrypts one block with it).
//!
//! Sessions: a cryptoki `Session` is `Send` but not `Sync`, so the token
//! keeps a small pool ([`POOL_SESSIONS`]) and lends each to one thread at a
//! time. Every operation blocks, and is called from blocking threads only
//! (`spawn_blocking`), never from the async executor's.
//!
//! Failure: an operation that fails marks the token down, drops its
//! sessions and finalizes the module; the next attempts reopen it with a
//! doubling backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]). While it is down
//! every key operation answers [`KeyUnavailable`], so the handshakes that
//! need the token are refused (fail closed) and everything else keeps
//! working. Each change between up and down is logged once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use mtguard_core::mtproto::{KeyOps, KeyUnavailable, Secret, SecretKind, SecretSet};

use crate::config::{HsmConfig, PinSource};

/// Sessions the token lends out at once; more concurrent operations wait
/// for one to come back. Tokens serialize most work internally, so a few
/// sessions keep it busy without tying up many of its (often scarce)
/// session slots.
pub const POOL_SESSIONS: usize = 4;
/// First wait before reopening a token that failed.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to reopen it.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long an operation waits for a free session before giving up.
const SESSION_WAIT: Duration = Duration::from_secs(2);

const MODE_CLASSIC: u8 = 0x00;
const MODE_PADDED: u8 = 0xdd;
const MODE_FAKE_TLS: u8 = 0xee;

/// A PKCS#11 token opened by label, with its session pool.
pub struct Token {
    module: PathBuf,
    label: String,
    pin: AuthPin,
    integrity_key: String,
    state: Mutex<State>,
    returned: Condvar,
    /// Numbers each opening of the module, so a session lent out by one
    /// opening is never returned into the next.
    epochs: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Token {
    // The PIN stays out of every Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

struct State {
    open: Option<Open>,
    /// The module marked down while some of its sessions were lent out.
    retired: Option<Open>,
    /// Whether the last state logged was "up".
    up: bool,
    failures: u32,
    next_attempt: Instant,
    /// Why it is down, for `status` and the log.
    last_error: Option<String>,
}

struct Open {
    ctx: Pkcs11,
    slot: Slot,
    idle: Vec<Session>,
    lent: usize,
    /// Object handles by label; valid until the module is finalized.
    handles: HashMap<String, ObjectHandle>,
    /// Sessions opened since the module was opened: a session lent out
    /// before a reopen is not given back to the new pool.
    epoch: u64,
}

/// What `mtguard hsm status` shows.
#[derive(Debug)]
pub struct Status {
    /// Module description and version.
    pub library: String,
    /// Token label, model, serial number.
    pub token: String,
    /// Mechanisms mtguard uses, with whether the token offers them.
    pub mechanisms: Vec<(&'static str, bool)>,
    /// Every mechanism the token lists.
    pub all_mechanisms: Vec<String>,
}

/// One secret key in the token, as `mtguard hsm list` shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Its label.
    pub label: String,
    /// What it is: `classic`, `dd`, `ee <domain>`, or `other`.
    pub kind: String,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
}

/// Reads the user PIN from where the config says, without logging it.
fn read_pin(source: &PinSource) -> anyhow::Result<AuthPin> {
    let pin = match source {
        PinSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("[hsm] pin_file: cannot read {}", path.display()))?,
        PinSource::Env(var) => std::env::var(var).map_err(|_| {
            anyhow!("[hsm] pin_env: the environment variable {var} is not set or not UTF-8")
        })?,
    };
    let pin = pin.trim();
    if pin.is_empty() {
        bail!("[hsm]: the user PIN is empty");
    }
    Ok(AuthPin::from(pin.to_owned()))
}

fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

impl Token {
    /// Opens the token of `config` and logs in: errors name what is wrong
    /// (the module, the token label, the PIN).
    pub fn open(config: &HsmConfig) -> anyhow::Result<Arc<Token>> {
        let pin = read_pin(&config.pin)?;
        let token = Token {
            module: config.module.clone(),
            label: config.token.clone(),
            pin,
            integrity_key: config.integrity_key.clone(),
            state: Mutex::new(State {
                open: None,
                retired: None,
                up: true,
                failures: 0,
                next_attempt: Instant::now(),
                last_error: None,
            }),
            returned: Condvar::new(),
            epochs: std::sync::atomic::AtomicU64::new(0),
        };
        let open = token.connect()?;
        token.lock().open = Some(open);
        Ok(Arc::new(token))
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the token answered the last operation.
    pub fn is_up(&self) -> bool {
        let s = self.lock();
        s.open.is_some() && s.up
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the module, finds the token by label, opens a session and logs
    /// the user in.
    fn connect(&self) -> anyhow::Result<Open> {
        let module = &self.module;
        if !module.exists() {
            bail!(
                "[hsm] module: the PKCS#11 module {} does not exist",
                module.display()
            );
        }
        let ctx = Pkcs11::new(module).map_err(|e| {
            anyhow!(
                "[hsm] module: cannot load the PKCS#11 module {}: {e}",
                module.display()
            )
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| {
                anyhow!(
                    "[hsm] module {}: C_Initialize failed: {e}",
                    module.display()
                )
            })?;
        let result = self.find_and_login(&ctx);
        if result.is_err() {
            let _ = ctx.finalize();
        }
        result
    }

    fn find_and_login(&self, ctx: &Pkcs11) -> anyhow::Result<Open> {
        let slots = ctx
            .get_slots_with_initialized_token()
            .map_err(|e| anyhow!("[hsm] listing the module's tokens failed: {e}"))?;
        let mut labels = Vec::new();
        let mut found = None;
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim_end().to_owned();
            if label == self.label {
                found = Some(slot);
                break;
            }
            labels.push(label);
        }
        let Some(slot) = found else {
            bail!(
                "[hsm] token: no token labelled {:?} in {} (tokens present: {})",
                self.label,
                self.module.display(),
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels
                        .iter()
                        .map(|l| format!("{l:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        };
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| anyhow!("[hsm] token {:?}: cannot open a session: {e}", self.label))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) => {}
            Err(e) if rv(&e) == Some(RvError::UserAlreadyLoggedIn) => {}
            Err(e) if rv(&e) == Some(RvError::PinIncorrect) => bail!(
                "[hsm] token {:?}: the user PIN was refused (wrong PIN)",
                self.label
            ),
            Err(e) if rv(&e) == Some(RvError::PinLocked) => bail!(
                "[hsm] token {:?}: the user PIN is locked (too many wrong PINs)",
                self.label
            ),
            Err(e) => bail!("[hsm] token {:?}: login failed: {e}", self.label),
        }
        Ok(Open {
            ctx: ctx.clone(),
            slot,
            idle: vec![session],
            lent: 0,
            handles: HashMap::new(),
            epoch: self
                .epochs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Runs `op` with a session of the pool; reopens the token if it is
    /// down and its backoff has passed; marks it down if `op` fails.
    fn with_session<T>(
        &self,
        op: impl FnOnce(&Session, &mut Handles<'_>) -> Result<T, Unavailable>,
    ) -> Result<T, KeyUnavailable> {
        let (session, epoch, mut handles) = self.borrow()?;
        let mut cache = Handles {
            cached: &mut handles,
        };
        let result = op(&session, &mut cache);
        let mut s = self.lock();
        let failed = match &result {
            Err(Unavailable::Token(e)) => Some(e.to_string()),
            _ => None,
        };
        if let Some(open) = s.open.as_mut().filter(|o| o.epoch == epoch) {
            open.lent -= 1;
            if failed.is_none() {
                open.idle.push(session);
                open.handles.extend(handles);
            } else {
                drop(session);
            }
        } else {
            // Lent before the token was marked down: the module it belongs
            // to is finalized once its last session is back.
            drop(session);
            if let Some(retired) = s.retired.as_mut().filter(|r| r.epoch == epoch) {
                retired.lent -= 1;
                if retired.lent == 0 {
                    if let Some(retired) = s.retired.take() {
                        let _ = retired.ctx.finalize();
                    }
                }
            }
        }
        self.returned.notify_all();
        match (result, failed) {
            (Ok(value), _) => {
                self.mark_up(&mut s);
                Ok(value)
            }
            (Err(_), Some(error)) => {
                if s.open.as_ref().is_some_and(|o| o.epoch == epoch) {
                    self.mark_down(&mut s, error);
                }
                Err(KeyUnavailable)
            }
            (Err(_), None) => Err(KeyUnavailable),
        }
    }

    /// Takes a session from the pool, opening one (or the whole token) if
    /// needed.
    fn borrow(&self) -> Result<(Session, u64, HashMap<String, ObjectHandle>), KeyUnavailable> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut s = self.lock();
        loop {
            if s.open.is_none() {
                // C_Finalize and C_Initialize wait until no operation of
                // the old module is in flight.
                if Instant::now() < s.next_attempt || s.retired.is_some() {
                    return Err(KeyUnavailable);
                }
                match self.connect() {
                    Ok(open) => {
                        s.open = Some(open);
                        self.mark_up(&mut s);
                    }
                    Err(e) => {
                        self.mark_down(&mut s, format!("{e:#}"));
                        return Err(KeyUnavailable);
                    }
                }
            }
            let open = s.open.as_mut().ok_or(KeyUnavailable)?;
            if let Some(session) = open.idle.pop() {
                open.lent += 1;
                return Ok((session, open.epoch, open.handles.clone()));
            }
            if open.lent < POOL_SESSIONS {
                match open.ctx.open_rw_session(open.slot) {
                    Ok(session) => {
                        open.lent += 1;
                        return Ok((session, open.epoch, open.handles.clone()));
                    }
                    Err(e) => {
                        self.mark_down(&mut s, format!("opening a session: {e}"));
                        return Err(KeyUnavailable);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(KeyUnavailable);
            }
            s = self
                .returned
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn mark_up(&self, s: &mut State) {
        s.failures = 0;
        s.last_error = None;
        if !s.up {
            s.up = true;
            tracing::info!(token = %self.label, "HSM token is back: handshakes that need it are checked again");
        }
    }

    /// Drops the sessions, finalizes the module (once no operation is in
    /// flight on it: C_Finalize under a running call is undefined) and
    /// schedules a reopen.
    fn mark_down(&self, s: &mut State, error: String) {
        if let Some(mut open) = s.open.take() {
            open.idle.clear();
            if open.lent == 0 {
                let _ = open.ctx.finalize();
            } else {
                s.retired = Some(open);
            }
        }
        let shift = s.failures.min(10);
        let wait = BACKOFF_MIN.saturating_mul(1 << shift).min(BACKOFF_MAX);
        s.failures = s.failures.saturating_add(1);
        s.next_attempt = Instant::now() + wait;
        if s.up {
            s.up = false;
            tracing::error!(
                token = %self.label,
                error = %error,
                "HSM token unavailable: refusing the handshakes that need it until it returns; retrying with backoff"
            );
        }
        s.last_error = Some(error);
    }

    /// Probes the token (`C_GetTokenInfo`) and, if it is down, tries to
    /// reopen it when its backoff has passed. Called periodically so that
    /// the token's loss and return are noticed without traffic.
    pub fn check(&self) -> bool {
        let mut s = self.lock();
        let Some(open) = s.open.as_ref() else {
            drop(s);
            return self.with_session(|_, _| Ok(())).is_ok();
        };
        // Session calls can be answered from the module's memory; token
        // information is read from the token itself (SoftHSM2 fails it once
        // the token's directory is gone). Under the lock, so the module
        // cannot be finalized meanwhile.
        match open.ctx.get_token_info(open.slot) {
            Ok(_) => true,
            Err(e) => {
                self.mark_down(&mut s, format!("token information: {e}"));
                self.returned.notify_all();
                false
            }
        }
    }

    /// Module, token and mechanism information.
    pub fn status(&self) -> anyhow::Result<Status> {
        let s = self.lock();
        let open = s
            .open
            .as_ref()
            .ok_or_else(|| anyhow!("the token is not open"))?;
        let lib = open.ctx.get_library_info()?;
        let info = open.ctx.get_token_info(open.slot)?;
        let mechs = open.ctx.get_mechanism_list(open.slot)?;
        let used = [
            ("SHA256_HMAC (fake-TLS)", MechanismType::SHA256_HMAC),
            ("SHA256 + C_DigestKey (obfuscated2)", MechanismType::SHA256),
            (
                "GENERIC_SECRET_KEY_GEN (integrity key)",
                MechanismType::GENERIC_SECRET_KEY_GEN,
            ),
        ];
        Ok(Status {
            library: format!(
                "{} {} ({}), {}",
                lib.manufacturer_id().trim(),
                lib.library_description().trim(),
                lib.library_version(),
                self.module.display()
            ),
            token: format!(
                "{:?}, model {}, serial {}, {}",
                info.label().trim_end(),
                info.model().trim(),
                info.serial_number().trim(),
                if s.up { "up" } else { "down" }
            ),
            mechanisms: used
                .iter()
                .map(|(name, m)| (*name, mechs.contains(m)))
                .collect(),
            all_mechanisms: mechs.iter().map(|m| m.to_string()).collect(),
        })
    }

    /// Every secret key in the token.
    pub fn list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        self.with_session(|session, _| {
            let keys = session
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                .map_err(Unavailable::Token)?;
            let mut out = Vec::new();
            for key in keys {
                let attrs = session
                    .get_attributes(
                        key,
                        &[
                            AttributeType::Label,
                            AttributeType::Id,
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                        ],
                    )
                    .map_err(Unavailable::Token)?;
                let mut info = KeyInfo {
                    label: String::new(),
                    kind: "other".into(),
                    sensitive: false,
                    extractable: true,
                };
                for a in attrs {
                    match a {
                        Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into(),
                        Attribute::Id(id) => {
                            if let Some(public) = public_of(&id) {
                                info.kind = describe(&public);
                            }
                        }
                        Attribute::Sensitive(b) => info.sensitive = b,
                        Attribute::Extractable(b) => info.extractable = b,
                        _ => {}
                    }
                }
                out.push(info);
            }
            out.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(out)
        })
        .map_err(|_| self.down_error())
    }

    fn down_error(&self) -> anyhow::Error {
        let why = self.lock().last_error.clone();
        anyhow!(
            "token {:?} did not answer{}",
            self.label,
            why.map(|w| format!(": {w}")).unwrap_or_default()
        )
    }

    /// The public half of the secret labelled `label` (its kind and domain;
    /// the key bytes in it are zero), for the inspector's [`SecretSet`].
    pub fn describe_secret(&self, label: &str) -> anyhow::Result<Secret> {
        let found = self.with_session(|session, handles| {
            let Some(key) = handles.find(session, label)? else {
                return Ok(None);
            };
            let attrs = session
                .get_attributes(key, &[AttributeType::Id])
                .map_err(Unavailable::Token)?;
            Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Id(id) => public_of(&id),
                _ => None,
            }))
        });
        match found {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => bail!(
                "hsm:{label}: token {:?} has no mtguard secret labelled {label:?} \
                 (create it with `mtguard hsm generate-secret --label {label}` or import-secret)",
                self.label
            ),
            Err(_) => Err(self.down_error()),
        }
    }

    /// Stores `secret` under `label` as a sensitive, non-extractable key.
    /// Refuses a label already taken.
    pub fn store_secret(&self, label: &str, secret: &Secret) -> anyhow::Result<()> {
        let public = public_bytes(secret);
        let mut value = secret.key().to_vec();
        if secret.kind() == SecretKind::FakeTls {
            // secret || zeros: the same HMAC-SHA256 as the 16-byte secret.
            value.extend_from_slice(&[0; 16]);
        }
        let fake_tls = secret.kind() == SecretKind::FakeTls;
        let result = self.with_session(|session, handles| {
            if handles.find(session, label)?.is_some() {
                return Ok(false);
            }
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Modifiable(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(public.clone()),
                Attribute::Sign(fake_tls),
                Attribute::Verify(fake_tls),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Value(value.clone()),
            ];
            session
                .create_object(&template)
                .map_err(Unavailable::Token)?;
            Ok(true)
        });
        zero(&mut value);
        match result {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "token {:?} already has a key labelled {label:?}; choose another label",
                self.label
            ),
            Err(_) => Err(self.down_error()),
        }
    }

    /// 16 random bytes from the token's generator.
    pub fn random_key(&self) -> anyhow::Result<[u8; 16]> {
        self.with_session(|session, _| {
            let mut key = [0u8; 16];
            session
                .generate_random_slice(&mut key)
                .map_err(Unavailable::Token)?;
            Ok(key)
        })
        .map_err(|_| self.down_error())
    }

    /// HMAC-SHA256 of the concatenation of `parts` under the fake-TLS key
    /// labelled `label`.
    pub fn hmac(&self, label: &str, parts: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable> {
        self.with_session(|session, handles| {
            let key = handles
                .find(session, label)?
                .ok_or(Unavailable::NoSuchKey)?;
            hmac_sha256(session, key, parts)
        })
    }

    /// SHA-256(`prefix` || key) of the 16-byte key labelled `label`,
    /// computed inside the token with `C_DigestKey`.
    pub fn digest_with_key(&self, label: &str, prefix: &[u8]) -> Result<[u8; 32], KeyUnavailable> {
        self.with_session(|session, handles| {
            let key = handles
                .find(session, label)?
                .ok_or(Unavailable::NoSuchKey)?;
            session
                .digest_init(&Mechanism::Sha256)
                .map_err(Unavailable::Token)?;
            session.digest_update(prefix).map_err(Unavailable::Token)?;
            session.digest_key(key).map_err(Unavailable::Token)?;
            let digest = session.digest_final().map_err(Unavailable::Token)?;
            digest.try_into().map_err(|_| Unavailable::NoSuchKey)
        })
    }

    /// HMAC-SHA256 of `parts` under the integrity key, generated inside the
    /// token (32 random bytes, sensitive, non-extractable) on first use.
    pub fn integrity_mac(&self, parts: &[&[u8]]) -> anyhow::Result<[u8; 32]> {
        let label = self.integrity_key.clone();
        self.with_session(|session, handles| {
            let key = match handles.find(session, &label)? {
                Some(key) => key,
                None => {
                    let template = [
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Modifiable(false),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Sign(true),
                        Attribute::Verify(true),
                        Attribute::ValueLen(32.into()),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                    ];
                    let key = session
                        .generate_key(&Mechanism::GenericSecretKeyGen, &template)
                        .map_err(Unavailable::Token)?;
                    handles.cached.insert(label.clone(), key);
                    key
                }
            };
            hmac_sha256(session, key, parts)
        })
        .map_err(|_| self.down_error())
    }
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`, in the token.
fn hmac_sha256(
    session: &Session,
    key: ObjectHandle,
    parts: &[&[u8]],
) -> Result<[u8; 32], Unavailable> {
    session
        .sign_init(&Mechanism::Sha256Hmac, key)
        .map_err(Unavailable::Token)?;
    for part in parts {
        session.sign_update(part).map_err(Unavailable::Token)?;
    }
    let mac = session.sign_final().map_err(Unavailable::Token)?;
    mac.try_into().map_err(|_| Unavailable::NoSuchKey)
}

/// Why an operation inside [`Token::with_session`] failed: the token
/// itself (it is then reopened), or a key that is not there (it is not).
enum Unavailable {
    Token(CkError),
    NoSuchKey,
}

/// Object handles by label for one operation, filled from the token.
struct Handles<'a> {
    cached: &'a mut HashMap<String, ObjectHandle>,
}

impl Handles<'_> {
    fn find(
        &mut self,
        session: &Session,
        label: &str,
    ) -> Result<Option<ObjectHandle>, Unavailable> {
        if let Some(h) = self.cached.get(label) {
            return Ok(Some(*h));
        }
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(Unavailable::Token)?;
        let first = found.first().copied();
        if let Some(h) = first {
            self.cached.insert(label.to_owned(), h);
        }
        Ok(first)
    }
}

/// The `CKA_ID` of a secret: its mode byte and its domain.
fn public_bytes(secret: &Secret) -> Vec<u8> {
    let mode = match secret.kind() {
        SecretKind::Classic => MODE_CLASSIC,
        SecretKind::Padded => MODE_PADDED,
        SecretKind::FakeTls => MODE_FAKE_TLS,
    };
    let mut id = vec![mode];
    id.extend_from_slice(secret.domain().as_bytes());
    id
}

/// The public half of a secret from its `CKA_ID`, with a zero key.
fn public_of(id: &[u8]) -> Option<Secret> {
    let (&mode, domain) = id.split_first()?;
    let mut bytes = Vec::with_capacity(17 + domain.len());
    match mode {
        MODE_CLASSIC if domain.is_empty() => {}
        MODE_PADDED | MODE_FAKE_TLS => bytes.push(mode),
        _ => return None,
    }
    bytes.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(domain);
    Secret::from_bytes(&bytes).ok()
}

fn describe(public: &Secret) -> String {
    match public.kind() {
        SecretKind::Classic => "classic".into(),
        SecretKind::Padded => "dd".into(),
        SecretKind::FakeTls => format!("ee {}", public.domain()),
    }
}

fn zero(bytes: &mut [u8]) {
    bytes.fill(0);
    // Keeps the compiler from dropping the wipe of a buffer never read
    // again; best effort (the allocator may have copied it before).
    std::hint::black_box(bytes);
}

/// The key operations of one listener: software for inline secrets, the
/// token for `hsm:` ones, by secret index.
pub struct Keys {
    software: SecretSet,
    /// `Some(label)` where the secret at that index is in the token.
    labels: Vec<Option<String>>,
    token: Option<Arc<Token>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Software keys only.
    pub fn software(set: SecretSet) -> Keys {
        Keys {
            labels: vec![None; set.as_slice().len()],
            software: set,
            token: None,
        }
    }

    /// `inline` secrets in software followed by `hsm_labels` in `token`.
    /// Returns the listener's [`SecretSet`] (token secrets carry a zero key
    /// there; only their kind and domain are read) and the key operations.
    pub fn with_token(
        inline: &[Secret],
        hsm_labels: &[String],
        token: Option<Arc<Token>>,
    ) -> anyhow::Result<(SecretSet, Keys)> {
        let mut set = SecretSet::new();
        let mut labels = Vec::new();
        for secret in inline {
            set.push(secret.clone())
                .map_err(|e| anyhow!("[mtproto] secrets: {e}"))?;
            labels.push(None);
        }
        if !hsm_labels.is_empty() {
            let t = token
                .as_ref()
                .ok_or_else(|| anyhow!("[mtproto] secrets: hsm: secrets need an [hsm] table"))?;
            for label in hsm_labels {
                let public = t.describe_secret(label)?;
                set.push(public)
                    .map_err(|e| anyhow!("[mtproto] secrets: {e}"))?;
                labels.push(Some(label.clone()));
            }
        }
        Ok((
            set.clone(),
            Keys {
                software: set,
                labels,
                token,
            },
        ))
    }

    /// Whether any key operation goes to the token (and so must run on a
    /// blocking thread).
    pub fn uses_token(&self) -> bool {
        self.labels.iter().any(Option::is_some)
    }

    fn token_label(&self, index: usize) -> Option<(&Token, &str)> {
        let label = self.labels.get(index)?.as_deref()?;
        Some((self.token.as_deref()?, label))
    }
}

impl KeyOps for Keys {
    fn obfs2_key(
        &self,
        secret: usize,
        header_key_part: &[u8; 32],
    ) -> Result<[u8; 32], KeyUnavailable> {
        match self.token_label(secret) {
            Some((token, label)) => token.digest_with_key(label, header_key_part),
            None if self.labels.get(secret) == Some(&None) => {
                self.software.obfs2_key(secret, header_key_part)
            }
            None => Err(KeyUnavailable),
        }
    }

    fn fake_tls_hmac(&self, secret: usize, parts: &[&[u8]]) -> Result<[u8; 32], KeyUnavailable> {
        match self.token_label(secret) {
            Some((token, label)) => token.hmac(label, parts),
            None if self.labels.get(secret) == Some(&None) => {
                self.software.fake_tls_hmac(secret, parts)
            }
            None => Err(KeyUnavailable),
        }
    }
}
