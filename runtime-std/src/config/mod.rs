//! The TOML configuration file: parsing, defaults, and the effective policy.
//!
//! Every key is optional. An absent `[limits]` key takes the value of the
//! chosen level's preset ([`Policy::for_level`]); every other absent key
//! takes the value of [`Config::embedded_default`]. Unknown keys and tables
//! are errors, and every error names the file, the line and the key:
//!
//! ```text
//! mtguard.toml:12: [limits] rate_window: invalid duration "5x": expected a number followed by ms, s, m, h or d
//! ```
//!
//! Parsing happens in two passes over the text: serde fills the raw structs
//! below (where every value keeps its byte span), and when serde refuses
//! something, the span of its error is looked up in the spanned document
//! tree to find the key it belongs to.
//!
//! The module is a leaf: it imports nothing else of the crate and does no
//! I/O. Reading the file, the list files and the pins files is the
//! bootstrap's job (`crate::server::bootstrap`), so that `check-config` and `run` load
//! them through the same code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mtguard_core::cidr::Cidr;
use mtguard_core::mtproto::{Secret, TimeWindow};
use mtguard_core::pins::PinSet;
use mtguard_core::policy::PolicyError;

use error::mentions;
use mtguard_core::{Level, Policy};

mod describe;
mod duration;
mod error;
mod keys;
mod parse;
mod refusal;
mod values;

pub use duration::{format_duration, parse_duration};
pub use error::{toml_error, ConfigError};
pub use keys::{key, Key, LimitsConfig, KEYS};
pub use parse::{line_scan_bytes, LineIndex};
pub use refusal::{
    preset as refusal_preset, preset_delay, preset_tls_alerts, RefusalCase, RefusalConfig,
    RefusalSettings,
};
pub use values::{
    url_host, Answer, ContentKind, OnExpired, OnProbe, ProxyProtocol, Trust, UrlError,
};

/// The whole configuration, as read from a file or embedded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Security level 0–3: the preset every absent `[limits]` key comes from.
    pub level: u8,
    /// `[server]`: where to listen and where to forward.
    pub server: ServerConfig,
    /// `[limits]`: overrides of single thresholds of the level preset.
    pub limits: LimitsConfig,
    /// `[lists]`: allow and deny lists.
    pub lists: ListsConfig,
    /// `[admin]`: the admin API.
    pub admin: AdminConfig,
    /// `[state]`: persistence.
    pub state: StateConfig,
    /// `[mtproto]`: handshake inspection.
    pub mtproto: MtprotoConfig,
    /// `[refusal]`: what a refused source sees (see
    /// [`Config::refusal_settings`] for the values in force).
    pub refusal: RefusalConfig,
    /// `[crowdsec]`: shared decisions; `None` without the table.
    pub crowdsec: Option<CrowdsecConfig>,
    /// `[kernel]`: the nftables mirror of blocks.
    pub kernel: KernelConfig,
    /// `[hsm]`: the PKCS#11 token holding `hsm:` secrets and the key that
    /// seals the state file; `None` without the table.
    pub hsm: Option<HsmConfig>,
    /// `[refresh]`: pinned downloads of Telegram's proxy files.
    pub refresh: Option<RefreshConfig>,
    /// The name errors and [`Config::describe`] use for the file.
    source_name: String,
    /// Line of every key set in the file, by its display name
    /// (`[limits] rate_window`, `[lists] deny_files[0]`).
    lines: BTreeMap<String, usize>,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Addresses the guard accepts clients on (at least one).
    pub listen: Vec<SocketAddr>,
    /// The proxy behind the guard, `host:port` (a name is resolved when
    /// connecting; an IPv6 address is written in brackets).
    pub backend: String,
    /// Whether the backend is told the client's address with a PROXY
    /// protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// How long connecting to the backend may take.
    pub connect_timeout: Duration,
    /// A connection with no traffic in either direction for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// `[server.backend_tls]`: speak TLS to the backend, pinned.
    pub backend_tls: Option<BackendTlsConfig>,
}

/// How a pinned host's certificate is trusted: the keys `pins`,
/// `pins_file`, `trust`, `ca_file` and `on_expired` that
/// `[server.backend_tls]` and `[refresh]` share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinningConfig {
    /// Pins written in the config: the core's set, so the rules of a pin
    /// list (no duplicate, at most
    /// [`mtguard_core::pins::DEFAULT_CAPACITY`]) are its own.
    pub pins: PinSet,
    /// A pins file (already resolved), read at start.
    pub pins_file: Option<PathBuf>,
    /// WebPKI and pins, or pins alone.
    pub trust: Trust,
    /// CAs replacing the built-in roots (already resolved).
    pub ca_file: Option<PathBuf>,
    /// What to do once every pin has expired; `None`: the level's default
    /// ([`OnExpired::default_for_level`]).
    pub on_expired: Option<OnExpired>,
}

impl PinningConfig {
    /// `on_expired`, or the default of `level`; pins-only always fails
    /// closed (there is nothing to fall back on).
    pub fn on_expired(&self, level: u8) -> OnExpired {
        match self.trust {
            Trust::PinsOnly => OnExpired::FailClosed,
            Trust::WebPki => self
                .on_expired
                .unwrap_or_else(|| OnExpired::default_for_level(level)),
        }
    }
}

/// `[server.backend_tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// The name the backend's certificate must be valid for (and the SNI);
    /// defaults to the host of `[server] backend`.
    pub server_name: String,
    /// Pins and trust. The pins are the engine's: the admin API's
    /// `/v1/pins` changes them at run time.
    pub pinning: PinningConfig,
}

/// `[refresh]`: Telegram's proxy files, fetched pinned on an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshConfig {
    /// What to fetch: URL, file to replace, and what it must look like.
    pub files: Vec<(String, PathBuf, ContentKind)>,
    /// Time between two rounds, before jitter.
    pub interval: Duration,
    /// Each round starts up to this much later than `interval`, at random,
    /// so a fleet of guards does not fetch in step.
    pub jitter: Duration,
    /// Pins and trust for the hosts of the URLs.
    pub pinning: PinningConfig,
}

/// `[lists]`: inline prefixes are parsed when the file is; list files are
/// read by the bootstrap (`crate::server::bootstrap`) when it builds a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListsConfig {
    /// Prefixes that are never limited or blocked.
    pub allow: Vec<Cidr>,
    /// Prefixes that are always refused.
    pub deny: Vec<Cidr>,
    /// Netset files of allowed prefixes (already resolved against the config
    /// file's directory).
    pub allow_files: Vec<PathBuf>,
    /// Netset files of denied prefixes (already resolved).
    pub deny_files: Vec<PathBuf>,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin API; `None` when configured as `"off"`.
    pub listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token (already resolved).
    pub token_file: Option<PathBuf>,
}

/// `[mtproto]`: MTProto handshake inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtprotoConfig {
    /// The proxy's secrets (classic, `dd` or `ee`) written inline, in the
    /// order written.
    pub secrets: Vec<Secret>,
    /// Labels of the secrets written `hsm:<label>`, in the order written:
    /// keys in the `[hsm]` token. Their indices follow the inline ones.
    pub hsm_secrets: Vec<String>,
    /// `inspect` as written; absent, inspection is on when there are
    /// secrets (see [`MtprotoConfig::inspecting`]).
    pub inspect: Option<bool>,
    /// What happens to a connection whose handshake is refused, if the
    /// file says (`[refusal] failed_handshake` and `replay` replace it;
    /// unset, the level's preset applies).
    pub on_probe: Option<OnProbe>,
    /// Where probes go with `on_probe = "mask"`: `host:port` of the real
    /// website of the fake-TLS domain.
    pub mask_backend: Option<String>,
    /// Overrides `[limits] handshake_timeout` when set (`Some(None)` is
    /// `"off"`).
    pub handshake_timeout: Option<Option<Duration>>,
    /// How far in the past a fake-TLS timestamp may be.
    pub time_skew: Duration,
    /// How far in the future a fake-TLS timestamp may be.
    pub time_skew_ahead: Duration,
}

impl Default for MtprotoConfig {
    fn default() -> Self {
        MtprotoConfig {
            secrets: Vec::new(),
            hsm_secrets: Vec::new(),
            inspect: None,
            on_probe: None,
            mask_backend: None,
            handshake_timeout: None,
            time_skew: keys::default::TIME_SKEW,
            time_skew_ahead: keys::default::TIME_SKEW_AHEAD,
        }
    }
}

impl MtprotoConfig {
    /// Whether handshakes are inspected: `inspect` if written, else whether
    /// there are secrets.
    pub fn inspecting(&self) -> bool {
        self.inspect.unwrap_or(self.secret_count() > 0)
    }

    /// Inline and `hsm:` secrets together.
    pub fn secret_count(&self) -> usize {
        self.secrets.len() + self.hsm_secrets.len()
    }

    /// The fake-TLS timestamp window.
    pub fn window(&self) -> TimeWindow {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        TimeWindow {
            ahead_secs: secs(self.time_skew_ahead),
            behind_secs: secs(self.time_skew),
        }
    }
}

/// `[crowdsec]`: the CrowdSec Local API as a bouncer (decisions in) and as
/// a machine (alerts out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdsecConfig {
    /// Base URL of the Local API, such as `http://127.0.0.1:8080/`.
    pub lapi_url: String,
    /// File holding the bouncer key (`cscli bouncers add NAME -o raw`);
    /// without it (or `api_key`) no decisions are pulled.
    pub api_key_file: Option<PathBuf>,
    /// The bouncer key written in the config (`api_key`, as CrowdSec's
    /// bouncers take it).
    pub api_key: Option<ApiKey>,
    /// How often the decision stream is polled.
    pub poll_interval: Duration,
    /// The machine detections are reported as (`cscli machines add`);
    /// without it nothing is reported.
    pub machine_id: Option<String>,
    /// File holding that machine's password.
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed an `https` Local API's certificate;
    /// without it, the Mozilla roots.
    pub ca_cert_path: Option<PathBuf>,
    /// Client certificate and key (PEM) presented to an `https` Local API,
    /// which accepts them instead of a bouncer key or a machine password
    /// when its TLS authentication is on.
    pub client_cert: Option<ClientCert>,
}

/// `[crowdsec] cert_path` and `key_path`, which go together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate chain, PEM.
    pub cert_path: PathBuf,
    /// Its private key, PEM.
    pub key_path: PathBuf,
}

/// A bouncer key written inline; its `Debug` does not show it, so a
/// printed config does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// `[kernel]`: blocks mirrored into nftables sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Family, table and set; `None` when the mirror is off.
    pub nft_set: Option<NftSet>,
}

/// `nft_set = "inet mtguard blocked"`: IPv4 clients go into the set of that
/// name, IPv6 clients (prefixes) into the same name with a `6` appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftSet {
    /// `ip`, `ip6` or `inet`.
    pub family: String,
    /// The table.
    pub table: String,
    /// The IPv4 set; the IPv6 set is this name plus `6`.
    pub set: String,
}

impl NftSet {
    /// Parses `"FAMILY TABLE SET"`.
    pub fn parse(text: &str) -> Result<NftSet, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [family, table, set] = words[..] else {
            return Err(format!(
                "{text:?}: expected \"FAMILY TABLE SET\" such as \"inet mtguard blocked\""
            ));
        };
        if !matches!(family, "ip" | "ip6" | "inet") {
            return Err(format!("family {family:?}: expected ip, ip6 or inet"));
        }
        for name in [table, set] {
            let ok = name.len() <= 60
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(format!(
                    "{name:?} is not an nftables name (a letter, then letters, digits, _ or -)"
                ));
            }
        }
        Ok(NftSet {
            family: family.into(),
            table: table.into(),
            set: set.into(),
        })
    }
}

impl fmt::Display for NftSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.set)
    }
}

/// `[hsm]`: a PKCS#11 token. The PIN itself is never part of the config:
/// it is read from `pin_file` or the environment variable `pin_env` when
/// the token is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmConfig {
    /// The PKCS#11 module (shared library) of the token's vendor.
    pub module: PathBuf,
    /// The token's label (never its slot number, which can change when
    /// tokens come and go).
    pub token: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Label of the token key that seals the state file.
    pub integrity_key: String,
}

/// Where the user PIN of the token is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (surrounding whitespace ignored).
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

/// Default `[hsm] integrity_key`.
pub const DEFAULT_INTEGRITY_KEY: &str = "mtguard-integrity";

/// Longest label accepted for a token or a key: PKCS#11 token labels are
/// 32 bytes; key labels have no limit, but a short one fits every tool.
pub const LABEL_MAX: usize = 32;

/// Whether `label` can name a token or a key: printable ASCII without
/// leading or trailing spaces, 1 to [`LABEL_MAX`] bytes.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > LABEL_MAX {
        return Err(format!("label {label:?} must be 1 to {LABEL_MAX} bytes"));
    }
    if !label.bytes().all(|b| (0x20..0x7f).contains(&b)) || label.trim() != label {
        return Err(format!(
            "label {label:?} must be printable ASCII without surrounding spaces"
        ));
    }
    Ok(())
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    /// Directory of the persisted state (blocks, manual list entries).
    pub dir: PathBuf,
}

/// The prefixes of both lists, inline entries and list files together,
/// sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lists {
    /// Allowed prefixes.
    pub allow: Vec<Cidr>,
    /// Denied prefixes.
    pub deny: Vec<Cidr>,
}

/// The state directory when `[state] dir` is unset: the first path of
/// `$STATE_DIRECTORY` (set by systemd from the unit's `StateDirectory=`,
/// several joined by `:`), else the per-user one: the platform's local
/// data directory (on Linux `$XDG_DATA_HOME` or `~/.local/share`) plus
/// `mtguard`, else `$HOME/.local/share/mtguard`, else `./mtguard-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = state_directory() {
        return dir;
    }
    if let Some(dir) = dirs::data_local_dir() {
        return dir.join("mtguard");
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share/mtguard"),
        _ => PathBuf::from("mtguard-state"),
    }
}

/// The state directory systemd gives the service, if it gives one.
fn state_directory() -> Option<PathBuf> {
    state_directory_env(std::env::var_os("STATE_DIRECTORY").as_deref())
}

/// The first path of a `$STATE_DIRECTORY` value. systemd only ever sets
/// absolute paths; a relative one would move with the working directory,
/// so it is not taken.
fn state_directory_env(value: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let first = value?.as_bytes().split(|&b| b == b':').next()?;
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(first));
    path.is_absolute().then_some(path)
}

impl Config {
    /// The configuration used when no file is given: listen on
    /// `127.0.0.1:4443`, forward to `127.0.0.1:8443`, admin API on
    /// `127.0.0.1:9900`, level 1, no PROXY protocol, 5 s connect timeout,
    /// 10 min idle timeout, state in [`default_state_dir`].
    pub fn embedded_default() -> Config {
        let local = |port| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
        use keys::default as d;
        Config {
            level: d::LEVEL,
            server: ServerConfig {
                listen: vec![local(d::LISTEN_PORT)],
                backend: d::BACKEND.into(),
                proxy_protocol: ProxyProtocol::None,
                connect_timeout: d::CONNECT_TIMEOUT,
                idle_timeout: d::IDLE_TIMEOUT,
                backend_tls: None,
            },
            limits: LimitsConfig::default(),
            lists: ListsConfig::default(),
            admin: AdminConfig {
                listen: Some(local(d::ADMIN_PORT)),
                token_file: None,
            },
            state: StateConfig {
                dir: default_state_dir(),
            },
            mtproto: MtprotoConfig::default(),
            refusal: RefusalConfig::default(),
            crowdsec: None,
            kernel: KernelConfig::default(),
            hsm: None,
            refresh: None,
            source_name: "embedded default".into(),
            lines: BTreeMap::new(),
        }
    }

    /// The name of the file in messages (`embedded default` without one).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The line, counting from 1, of `key` (as errors name it:
    /// `[limits] rate_window`, `[lists] deny_files[0]`) if the file set it.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    /// The policy to run: the preset of `level_override` (the command line's
    /// `--level`) or else of the file's `level`, with every `[limits]` key of
    /// the file applied over it, validated.
    pub fn effective_policy(&self, level_override: Option<u8>) -> Result<Policy, ConfigError> {
        let level = match level_override {
            Some(n) => Level::from_number(n).ok_or_else(|| ConfigError {
                file: "command line".into(),
                line: None,
                key: Some("--level".into()),
                message: format!("must be 0, 1, 2 or 3 (got {n})"),
            })?,
            None => Level::from_number(self.level).ok_or_else(|| ConfigError {
                file: self.source_name.clone(),
                line: self.lines.get(key::top::level.path()).copied(),
                key: Some(key::top::level.path().into()),
                message: format!("must be 0, 1, 2 or 3 (got {})", self.level),
            })?,
        };
        let mut policy = Policy::for_level(level);
        self.limits.apply(&mut policy);
        if let Some(timeout) = self.mtproto.handshake_timeout {
            policy.handshake_timeout = timeout;
        }
        policy
            .validate()
            .map_err(|e| self.policy_error(e, &policy))?;
        Ok(policy)
    }

    /// A validation error of the core, in the file's terms.
    fn policy_error(&self, error: PolicyError, policy: &Policy) -> ConfigError {
        // A field every `[limits]` key maps to; one without a key (a core
        // field the file cannot set) is still named in `[limits]` terms.
        let declared = LimitsConfig::KEYS
            .iter()
            .find(|(_, f)| *f == error.field)
            .map(|(k, _)| *k);
        let key = declared.map_or(error.field, |k| k.name);
        let mut problem = error.problem.to_owned();
        for (k, f) in LimitsConfig::KEYS {
            if k.name != *f {
                problem = problem.replace(f, k.name);
            }
        }
        // The key, then every other key the problem mentions, with their
        // values and origins: the cause may be a key the file did set.
        let rows = self.limits.rows(policy);
        let preset = policy.level.number();
        let mut line = None;
        let mut notes = Vec::new();
        let mentioned = rows.iter().filter(|r| r.0.name == key).chain(
            rows.iter()
                .filter(|r| r.0.name != key && mentions(&problem, r.0.name)),
        );
        for (k, value, from_file) in mentioned {
            let k_line = self.lines.get(k.path()).copied();
            let k = k.name;
            let origin = match k_line {
                Some(n) if *from_file => format!("set on line {n}"),
                _ if *from_file => "set in the file".to_owned(),
                _ => format!("from the level {preset} preset"),
            };
            line = line.or(k_line.filter(|_| *from_file));
            notes.push(format!("{k} is {value}, {origin}"));
        }
        let message = if notes.is_empty() {
            problem
        } else {
            format!("{problem} ({})", notes.join("; "))
        };
        ConfigError {
            file: self.source_name.clone(),
            line,
            key: Some(declared.map_or_else(
                || format!("{} {key}", key::limits::TABLE),
                |k| k.path().to_owned(),
            )),
            message,
        }
    }
}
