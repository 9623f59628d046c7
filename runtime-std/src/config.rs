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

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtguard_core::cidr::{parse_netset_line, Cidr};
use mtguard_core::mtproto::{Secret, TimeWindow, MAX_SECRETS};
use mtguard_core::policy::PolicyError;
use mtguard_core::{Level, Policy};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::pinning::fetch::ContentKind;
use crate::pinning::verifier::{OnExpired, Trust};
use mtguard_core::pins::{parse_pin_line, Pin};

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
    /// The file it was loaded from, if any.
    path: Option<PathBuf>,
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
    /// Pins written in the config.
    pub pins: Vec<Pin>,
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

    /// The pins of the config and of the pins file.
    pub fn load_pins(&self) -> anyhow::Result<Vec<Pin>> {
        let mut pins = self.pins.clone();
        if let Some(path) = &self.pins_file {
            for pin in crate::persist::pinfile::load(path, None)? {
                if !pins
                    .iter()
                    .any(|p| p.kind() == pin.kind() && p.hash() == pin.hash())
                {
                    pins.push(pin);
                }
            }
        }
        anyhow::ensure!(
            pins.len() <= crate::pinning::verifier::MAX_PINS,
            "{} pins: at most {} per host",
            pins.len(),
            crate::pinning::verifier::MAX_PINS
        );
        Ok(pins)
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

/// `[server] proxy_protocol` is the proxy's own setting.
pub use crate::proxy::ProxyProtocol;

/// `proxy_protocol` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProxyProtocol {
    None,
    V1,
    V2,
}

impl From<RawProxyProtocol> for ProxyProtocol {
    fn from(raw: RawProxyProtocol) -> Self {
        match raw {
            RawProxyProtocol::None => ProxyProtocol::None,
            RawProxyProtocol::V1 => ProxyProtocol::V1,
            RawProxyProtocol::V2 => ProxyProtocol::V2,
        }
    }
}

fn proxy_protocol_name(pp: ProxyProtocol) -> &'static str {
    match pp {
        ProxyProtocol::None => "none",
        ProxyProtocol::V1 => "v1",
        ProxyProtocol::V2 => "v2",
    }
}

/// `[lists]`: inline prefixes are parsed when the file is; list files are
/// read by [`Config::load_lists`].
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
    /// What happens to a connection whose handshake is refused.
    pub on_probe: OnProbe,
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
            on_probe: OnProbe::Close,
            mask_backend: None,
            handshake_timeout: None,
            time_skew: Duration::from_secs(120),
            time_skew_ahead: Duration::from_secs(3),
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

/// `[mtproto] on_probe` is the relay's own setting.
pub use crate::proxy::inspect::OnProbe;

/// `on_probe` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnProbe {
    Close,
    Mask,
}

/// `[crowdsec]`: the CrowdSec Local API as a bouncer (decisions in) and as
/// a machine (alerts out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdsecConfig {
    /// Base URL of the Local API, such as `http://127.0.0.1:8080/`.
    pub lapi_url: String,
    /// File holding the bouncer key (`cscli bouncers add NAME -o raw`);
    /// without it no decisions are pulled.
    pub api_key_file: Option<PathBuf>,
    /// How often the decision stream is polled.
    pub poll_interval: Duration,
    /// The machine detections are reported as (`cscli machines add`);
    /// without it nothing is reported.
    pub machine_id: Option<String>,
    /// File holding that machine's password.
    pub password_file: Option<PathBuf>,
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

/// A configuration that cannot be used, as one line:
/// `FILE[:LINE]: [KEY: ]PROBLEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: String,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    /// The file the error is in (the config file, a list file, or
    /// `command line`).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line, counting from 1, when one is known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key, as written in messages: `level`, `[limits] rate_window`,
    /// `[lists] allow[2]`, `--level`.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses `"500ms"`, `"60s"`, `"5m"`, `"2h"` or `"1d"`: digits, then one
/// unit. No unit, a sign, a fraction or an amount past `u64::MAX`
/// milliseconds is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let unit_ms: u64 = match unit {
        _ if number.is_empty() => 0,
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    if unit_ms == 0 {
        return Err(format!(
            "invalid duration {s:?}: expected a number followed by ms, s, m, h or d"
        ));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// A duration as the config file writes it, in the largest unit that
/// divides it exactly: `5m`, `90s`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A value of a `[limits]` key: how it is written in the file and shown.
trait LimitValue: Sized + Copy {
    type Raw: for<'de> Deserialize<'de>;
    fn convert(raw: Self::Raw) -> Result<Self, String>;
    fn show(&self) -> String;
}

macro_rules! integer_limit {
    ($($t:ty),*) => {$(
        impl LimitValue for $t {
            type Raw = i64;
            fn convert(raw: i64) -> Result<Self, String> {
                <$t>::try_from(raw).map_err(|_| {
                    format!("{raw} is out of range: expected an integer from 0 to {}", <$t>::MAX)
                })
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_limit!(u8, u16, u32);

impl LimitValue for bool {
    type Raw = bool;
    fn convert(raw: bool) -> Result<Self, String> {
        Ok(raw)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// A duration as written in the file: a string, so that a bare number is
/// refused by type with a message that shows the form.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes, such as \"60s\", \"5m\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl LimitValue for Duration {
    type Raw = DurationText;
    fn convert(raw: DurationText) -> Result<Self, String> {
        parse_duration(&raw.0)
    }
    fn show(&self) -> String {
        format_duration(*self)
    }
}

/// `handshake_timeout`: a duration, or `"off"`.
impl LimitValue for Option<Duration> {
    type Raw = DurationText;
    fn convert(raw: DurationText) -> Result<Self, String> {
        if raw.0 == "off" {
            return Ok(None);
        }
        parse_duration(&raw.0)
            .map(Some)
            .map_err(|e| format!("{e}, or \"off\""))
    }
    fn show(&self) -> String {
        self.map_or("off".into(), format_duration)
    }
}

/// `attack_enter_per_second`: a rate, or 0 for off.
impl LimitValue for Option<u32> {
    type Raw = i64;
    fn convert(raw: i64) -> Result<Self, String> {
        u32::convert(raw).map(|n| (n != 0).then_some(n))
    }
    fn show(&self) -> String {
        self.map_or("off (0)".into(), |n| n.to_string())
    }
}

/// Defines [`LimitsConfig`], its raw form, and the mapping between config
/// keys and [`Policy`] fields, from one list so they cannot drift apart.
macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $key:ident => $field:ident: $ty:ty, )*) => {
        /// `[limits]`: each key set here replaces that threshold of the level
        /// preset; `None` means "the preset's value".
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct LimitsConfig {
            $( $(#[doc = $doc])* pub $key: Option<$ty>, )*
        }

        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawLimits {
            $( $key: Option<Spanned<<$ty as LimitValue>::Raw>>, )*
        }

        impl LimitsConfig {
            /// `(config key, Policy field)` of every key, in file order.
            const KEYS: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($key), stringify!($field)), )*];

            fn from_raw(raw: RawLimits, cx: &mut Parse<'_>) -> Result<Self, ConfigError> {
                Ok(LimitsConfig {
                    $( $key: match raw.$key {
                        None => None,
                        Some(value) => {
                            let key = concat!("[limits] ", stringify!($key));
                            let span = value.span();
                            cx.note(key, &span);
                            let value = <$ty as LimitValue>::convert(value.into_inner())
                                .map_err(|m| cx.error(&span, key, m))?;
                            Some(value)
                        }
                    }, )*
                })
            }

            /// Writes every key that is set over `policy`.
            pub fn apply(&self, policy: &mut Policy) {
                $( if let Some(value) = self.$key {
                    policy.$field = value;
                } )*
            }

            /// `(key, value in policy, set in the file)` of every key.
            fn rows(&self, policy: &Policy) -> Vec<(&'static str, String, bool)> {
                vec![$(
                    (stringify!($key), LimitValue::show(&policy.$field), self.$key.is_some()),
                )*]
            }
        }
    };
}

limits! {
    /// Concurrent connections one client (IPv4 address or IPv6 prefix) may hold.
    max_connections_per_ip => max_connections_per_client: u16,
    /// Length of the per-client rate window.
    rate_window => rate_window: Duration,
    /// New connections one client may open per rate window.
    max_new_connections_per_window => max_new_connections_per_window: u16,
    /// Whether clients that keep violating limits are blocked.
    ip_blocking => ip_blocking: bool,
    /// Refusals within one rate window after which a client is blocked.
    block_after_violations => block_after_violations: u8,
    /// Length of a first automatic block.
    block_duration => block_duration: Duration,
    /// Cap of an escalated block.
    max_block_duration => max_block_duration: Duration,
    /// Random lengthening of each block, in thousandths of its duration.
    block_jitter_permille => block_jitter_permille: u16,
    /// How long a client's offence history is remembered.
    offence_memory => offence_memory: Duration,
    /// IPv6 clients are accounted per prefix of this length.
    ipv6_prefix => ipv6_prefix: u8,
    /// Concurrent connections across all clients.
    global_max_connections => global_max_connections: u32,
    /// New connections per second across all clients.
    global_max_new_per_second => global_max_new_per_second: u32,
    /// Failed handshakes within one rate window that mark a scanner.
    scanner_failures => scanner_failures: u8,
    /// Handshake deadline; `Some(None)` is `"off"`.
    handshake_timeout => handshake_timeout: Option<Duration>,
    /// Handshake timeouts within one rate window that mark a slowloris client.
    slowloris_timeouts => slowloris_timeouts: u8,
    /// Whether a replayed handshake blocks at once.
    block_on_replay => block_on_replay: bool,
    /// Global new connections per second that start under-attack mode;
    /// `Some(None)` is 0, "off".
    attack_enter_per_second => attack_enter_per_second: Option<u32>,
    /// Under-attack mode ends below this rate (after the cooldown).
    attack_exit_per_second => attack_exit_per_second: u32,
    /// How long the rate must stay below the exit threshold.
    attack_cooldown => attack_cooldown: Duration,
    /// Under attack, per-client limits are scaled to this percentage.
    attack_limit_percent => attack_limit_percent: u8,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    level: Option<Spanned<i64>>,
    server: Option<RawServer>,
    limits: Option<RawLimits>,
    lists: Option<RawLists>,
    admin: Option<RawAdmin>,
    state: Option<RawState>,
    mtproto: Option<RawMtproto>,
    crowdsec: Option<Spanned<RawCrowdsec>>,
    kernel: Option<RawKernel>,
    hsm: Option<RawHsm>,
    refresh: Option<RawRefresh>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCrowdsec {
    lapi_url: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    poll_interval: Option<Spanned<DurationText>>,
    machine_id: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    nft_set: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    module: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    pin_file: Option<Spanned<String>>,
    pin_env: Option<Spanned<String>>,
    integrity_key: Option<Spanned<String>>,
}

/// `trust` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
enum RawTrust {
    #[serde(rename = "webpki")]
    WebPki,
    #[serde(rename = "pins-only")]
    PinsOnly,
}

/// `on_expired` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
enum RawOnExpired {
    #[serde(rename = "fail-closed")]
    FailClosed,
    #[serde(rename = "webpki")]
    WebPki,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    server_name: Option<Spanned<String>>,
    pins: Option<Spanned<Vec<Spanned<String>>>>,
    pins_file: Option<Spanned<String>>,
    trust: Option<Spanned<RawTrust>>,
    ca_file: Option<Spanned<String>>,
    on_expired: Option<Spanned<RawOnExpired>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRefresh {
    config_url: Option<Spanned<String>>,
    config_out: Option<Spanned<String>>,
    secret_url: Option<Spanned<String>>,
    secret_out: Option<Spanned<String>>,
    interval: Option<Spanned<DurationText>>,
    jitter: Option<Spanned<DurationText>>,
    pins: Option<Spanned<Vec<Spanned<String>>>>,
    pins_file: Option<Spanned<String>>,
    trust: Option<Spanned<RawTrust>>,
    ca_file: Option<Spanned<String>>,
    on_expired: Option<Spanned<RawOnExpired>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMtproto {
    secrets: Option<Spanned<Vec<Spanned<String>>>>,
    inspect: Option<Spanned<bool>>,
    on_probe: Option<Spanned<RawOnProbe>>,
    mask_backend: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<DurationText>>,
    time_skew: Option<Spanned<DurationText>>,
    time_skew_ahead: Option<Spanned<DurationText>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    backend: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    connect_timeout: Option<Spanned<DurationText>>,
    idle_timeout: Option<Spanned<DurationText>>,
    backend_tls: Option<RawBackendTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLists {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow_files: Vec<Spanned<String>>,
    #[serde(default)]
    deny_files: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<Spanned<String>>,
}

/// What one parse needs to turn spans into lines and paths into paths.
struct Parse<'a> {
    /// Built once per parse: every span's line comes from it.
    line_index: LineIndex,
    source: &'a str,
    base: Option<&'a Path>,
    lines: BTreeMap<String, usize>,
    /// Whether the file has an `[hsm]` table (for `hsm:` secrets).
    has_hsm: bool,
}

impl Parse<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.line_index.line(span.start)
    }

    fn note(&mut self, key: &str, span: &Range<usize>) {
        let line = self.line(span);
        self.lines.insert(key.to_owned(), line);
    }

    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.to_owned(),
            line: Some(self.line(span)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// A path from the file: relative ones are relative to the file's
    /// directory.
    fn path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if value.get_ref().is_empty() {
            return Err(self.error(&value.span(), key, "empty path"));
        }
        let path = PathBuf::from(value.get_ref());
        Ok(match self.base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        })
    }

    fn duration(
        &mut self,
        value: Option<Spanned<DurationText>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let span = value.span();
        self.note(key, &span);
        let d = parse_duration(&value.get_ref().0).map_err(|m| self.error(&span, key, m))?;
        if d.is_zero() {
            return Err(self.error(&span, key, "must be longer than zero"));
        }
        Ok(Some(d))
    }

    /// `[hsm]`, checked as a whole.
    fn hsm(&mut self, raw: RawHsm, span: &Range<usize>) -> Result<HsmConfig, ConfigError> {
        let module = match &raw.module {
            Some(m) => {
                self.note("[hsm] module", &m.span());
                self.path(m, "[hsm] module")?
            }
            None => {
                let m = "missing: the path of the token's PKCS#11 module \
                         (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)";
                return Err(self.error(span, "[hsm] module", m));
            }
        };
        let token = match &raw.token {
            Some(t) => {
                self.note("[hsm] token", &t.span());
                check_label(t.get_ref()).map_err(|m| self.error(&t.span(), "[hsm] token", m))?;
                t.get_ref().clone()
            }
            None => {
                let m = "missing: the label of the token";
                return Err(self.error(span, "[hsm] token", m));
            }
        };
        let pin = match (&raw.pin_file, &raw.pin_env) {
            (Some(f), None) => {
                self.note("[hsm] pin_file", &f.span());
                PinSource::File(self.path(f, "[hsm] pin_file")?)
            }
            (None, Some(e)) => {
                self.note("[hsm] pin_env", &e.span());
                let name = e.get_ref();
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    let m = format!("{name:?} is not an environment variable name");
                    return Err(self.error(&e.span(), "[hsm] pin_env", m));
                }
                PinSource::Env(name.clone())
            }
            (Some(_), Some(e)) => {
                let m = "give pin_file or pin_env, not both";
                return Err(self.error(&e.span(), "[hsm] pin_env", m));
            }
            (None, None) => {
                let m = "missing: the file (pin_file) or environment variable (pin_env) \
                         holding the user PIN; the PIN is never written in the config";
                return Err(self.error(span, "[hsm] pin_file", m));
            }
        };
        let integrity_key = match &raw.integrity_key {
            Some(k) => {
                self.note("[hsm] integrity_key", &k.span());
                check_label(k.get_ref())
                    .map_err(|m| self.error(&k.span(), "[hsm] integrity_key", m))?;
                k.get_ref().clone()
            }
            None => DEFAULT_INTEGRITY_KEY.to_owned(),
        };
        Ok(HsmConfig {
            module,
            token,
            pin,
            integrity_key,
        })
    }

    /// `[mtproto]`, checked as a whole.
    fn mtproto(&mut self, raw: RawMtproto) -> Result<MtprotoConfig, ConfigError> {
        let mut out = MtprotoConfig::default();
        if let Some(secrets) = &raw.secrets {
            let key = "[mtproto] secrets";
            self.note(key, &secrets.span());
            for (i, value) in secrets.get_ref().iter().enumerate() {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                if i == MAX_SECRETS {
                    let m = format!("at most {MAX_SECRETS} secrets");
                    return Err(self.error(&value.span(), &key, m));
                }
                if let Some(label) = value.get_ref().strip_prefix("hsm:") {
                    check_label(label).map_err(|m| self.error(&value.span(), &key, m))?;
                    if !self.has_hsm {
                        let m = format!(
                            "{:?} needs an [hsm] table (the token that holds it)",
                            value.get_ref()
                        );
                        return Err(self.error(&value.span(), &key, m));
                    }
                    if out.hsm_secrets.iter().any(|l| l == label) {
                        let m = format!("hsm:{label} is listed twice");
                        return Err(self.error(&value.span(), &key, m));
                    }
                    out.hsm_secrets.push(label.to_owned());
                    continue;
                }
                let secret = Secret::parse(value.get_ref()).map_err(|e| {
                    let m = format!(
                        "invalid secret: {e} (expected 32 hex digits, dd + 32 hex digits, \
                         ee + 32 hex digits + the hex of the domain, the same bytes in base64url, \
                         or hsm:<label>)"
                    );
                    self.error(&value.span(), &key, m)
                })?;
                out.secrets.push(secret);
            }
        }
        if let Some(inspect) = &raw.inspect {
            let key = "[mtproto] inspect";
            self.note(key, &inspect.span());
            if *inspect.get_ref() && out.secret_count() == 0 {
                let m = "inspection needs at least one secret in [mtproto] secrets";
                return Err(self.error(&inspect.span(), key, m));
            }
            out.inspect = Some(*inspect.get_ref());
        }
        if let Some(backend) = &raw.mask_backend {
            let key = "[mtproto] mask_backend";
            self.note(key, &backend.span());
            check_backend(backend.get_ref()).map_err(|m| self.error(&backend.span(), key, m))?;
            out.mask_backend = Some(backend.get_ref().clone());
        }
        if let Some(on_probe) = &raw.on_probe {
            let key = "[mtproto] on_probe";
            self.note(key, &on_probe.span());
            out.on_probe = match on_probe.get_ref() {
                RawOnProbe::Close => OnProbe::Close,
                RawOnProbe::Mask => OnProbe::Mask,
            };
            if out.on_probe == OnProbe::Mask && out.mask_backend.is_none() {
                let m = "\"mask\" needs [mtproto] mask_backend = \"host:port\" \
                         (the real website of the fake-TLS domain)";
                return Err(self.error(&on_probe.span(), key, m));
            }
        }
        if let Some(value) = raw.handshake_timeout {
            let key = "[mtproto] handshake_timeout";
            let span = value.span();
            self.note(key, &span);
            let t = <Option<Duration> as LimitValue>::convert(value.into_inner())
                .map_err(|m| self.error(&span, key, m))?;
            out.handshake_timeout = Some(t);
        }
        for (value, key, slot) in [
            (raw.time_skew, "[mtproto] time_skew", &mut out.time_skew),
            (
                raw.time_skew_ahead,
                "[mtproto] time_skew_ahead",
                &mut out.time_skew_ahead,
            ),
        ] {
            let Some(value) = value else { continue };
            let span = value.span();
            self.note(key, &span);
            let d = parse_duration(&value.get_ref().0).map_err(|m| self.error(&span, key, m))?;
            if d.subsec_millis() != 0 || u32::try_from(d.as_secs()).is_err() {
                let m = format!(
                    "{:?} must be whole seconds, at most {}s",
                    value.get_ref().0,
                    u32::MAX
                );
                return Err(self.error(&span, key, m));
            }
            *slot = d;
        }
        Ok(out)
    }

    /// The keys `[server.backend_tls]` and `[refresh]` share.
    fn pinning(
        &mut self,
        table: &str,
        pins: Option<Spanned<Vec<Spanned<String>>>>,
        pins_file: Option<Spanned<String>>,
        trust: Option<Spanned<RawTrust>>,
        ca_file: Option<Spanned<String>>,
        on_expired: Option<Spanned<RawOnExpired>>,
    ) -> Result<PinningConfig, ConfigError> {
        let mut out = PinningConfig {
            pins: Vec::new(),
            pins_file: None,
            trust: Trust::WebPki,
            ca_file: None,
            on_expired: None,
        };
        if let Some(pins) = &pins {
            let key = format!("{table} pins");
            self.note(&key, &pins.span());
            for (i, value) in pins.get_ref().iter().enumerate() {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                let pin = parse_pin_line(value.get_ref())
                    .map_err(|e| self.error(&value.span(), &key, e.to_string()))?
                    .ok_or_else(|| self.error(&value.span(), &key, "empty pin"))?;
                if out
                    .pins
                    .iter()
                    .any(|p| p.kind() == pin.kind() && p.hash() == pin.hash())
                {
                    return Err(self.error(&value.span(), &key, format!("{pin} is listed twice")));
                }
                if out.pins.len() == crate::pinning::verifier::MAX_PINS {
                    let m = format!(
                        "too many pins: at most {} per host",
                        crate::pinning::verifier::MAX_PINS
                    );
                    return Err(self.error(&value.span(), &key, m));
                }
                out.pins.push(pin);
            }
        }
        if let Some(file) = &pins_file {
            let key = format!("{table} pins_file");
            self.note(&key, &file.span());
            out.pins_file = Some(self.path(file, &key)?);
        }
        if let Some(trust) = &trust {
            self.note(&format!("{table} trust"), &trust.span());
            out.trust = match trust.get_ref() {
                RawTrust::WebPki => Trust::WebPki,
                RawTrust::PinsOnly => Trust::PinsOnly,
            };
        }
        if let Some(file) = &ca_file {
            let key = format!("{table} ca_file");
            self.note(&key, &file.span());
            if out.trust == Trust::PinsOnly {
                let m =
                    "trust = \"pins-only\" checks no CA: remove ca_file or use trust = \"webpki\"";
                return Err(self.error(&file.span(), &key, m));
            }
            out.ca_file = Some(self.path(file, &key)?);
        }
        if let Some(on_expired) = &on_expired {
            let key = format!("{table} on_expired");
            self.note(&key, &on_expired.span());
            out.on_expired = Some(match on_expired.get_ref() {
                RawOnExpired::FailClosed => OnExpired::FailClosed,
                RawOnExpired::WebPki => OnExpired::WebPki,
            });
            if out.trust == Trust::PinsOnly && out.on_expired == Some(OnExpired::WebPki) {
                let m = "trust = \"pins-only\" has no WebPKI validation to fall back on: use \"fail-closed\"";
                return Err(self.error(&on_expired.span(), &key, m));
            }
        }
        Ok(out)
    }

    /// `[crowdsec]`, checked as a whole.
    fn crowdsec(&mut self, raw: Spanned<RawCrowdsec>) -> Result<CrowdsecConfig, ConfigError> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let Some(url) = raw.lapi_url else {
            let m = "lapi_url is required, such as \"http://127.0.0.1:8080/\"";
            return Err(self.error(&table_span, "[crowdsec]", m));
        };
        let key = "[crowdsec] lapi_url";
        self.note(key, &url.span());
        let text = url.get_ref().trim_end_matches('/');
        if text.starts_with("https://") {
            // The HTTP client carries no root certificates (no CA file key
            // yet), so TLS to the Local API could never verify.
            let m = "https is not supported yet: use http:// on loopback or a private network";
            return Err(self.error(&url.span(), key, m));
        }
        match text.strip_prefix("http://") {
            Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {}
            _ => {
                let m = format!("invalid URL {:?}: expected http://HOST:PORT", url.get_ref());
                return Err(self.error(&url.span(), key, m));
            }
        }
        let mut out = CrowdsecConfig {
            lapi_url: format!("{text}/"),
            api_key_file: None,
            poll_interval: Duration::from_secs(10),
            machine_id: None,
            password_file: None,
        };
        if let Some(file) = &raw.api_key_file {
            let key = "[crowdsec] api_key_file";
            self.note(key, &file.span());
            out.api_key_file = Some(self.path(file, key)?);
        }
        if let Some(d) = self.duration(raw.poll_interval, "[crowdsec] poll_interval")? {
            out.poll_interval = d;
        }
        if let Some(file) = &raw.password_file {
            let key = "[crowdsec] password_file";
            self.note(key, &file.span());
            out.password_file = Some(self.path(file, key)?);
        }
        if let Some(id) = &raw.machine_id {
            let key = "[crowdsec] machine_id";
            self.note(key, &id.span());
            if id.get_ref().trim().is_empty() {
                return Err(self.error(&id.span(), key, "empty machine id"));
            }
            if out.password_file.is_none() {
                let m = "a machine needs [crowdsec] password_file too";
                return Err(self.error(&id.span(), key, m));
            }
            out.machine_id = Some(id.get_ref().clone());
        } else if let Some(file) = &raw.password_file {
            let m = "a password needs [crowdsec] machine_id too";
            return Err(self.error(&file.span(), "[crowdsec] password_file", m));
        }
        if out.api_key_file.is_none() && out.machine_id.is_none() {
            let m = "set api_key_file (to pull decisions), machine_id and password_file \
                     (to report detections), or both";
            return Err(self.error(&table_span, "[crowdsec]", m));
        }
        Ok(out)
    }

    fn backend_tls(
        &mut self,
        raw: RawBackendTls,
        backend: &str,
    ) -> Result<BackendTlsConfig, ConfigError> {
        let table = "[server.backend_tls]";
        let server_name = match &raw.server_name {
            Some(name) => {
                let key = format!("{table} server_name");
                self.note(&key, &name.span());
                name.get_ref().clone()
            }
            None => backend_host(backend).to_owned(),
        };
        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            let key = format!("{table} server_name");
            let m = format!("{server_name:?} is not a DNS name or an IP address");
            return Err(match &raw.server_name {
                Some(name) => self.error(&name.span(), &key, m),
                None => ConfigError {
                    file: self.source.to_owned(),
                    line: None,
                    key: Some(key),
                    message: format!("{m}; set server_name"),
                },
            });
        }
        let pinning = self.pinning(
            table,
            raw.pins,
            raw.pins_file,
            raw.trust,
            raw.ca_file,
            raw.on_expired,
        )?;
        Ok(BackendTlsConfig {
            server_name,
            pinning,
        })
    }

    fn refresh(&mut self, raw: RawRefresh) -> Result<RefreshConfig, ConfigError> {
        let table = "[refresh]";
        let mut files = Vec::new();
        for (url, out, kind, name) in [
            (
                raw.config_url,
                raw.config_out,
                ContentKind::ProxyConfig,
                "config",
            ),
            (
                raw.secret_url,
                raw.secret_out,
                ContentKind::ProxySecret,
                "secret",
            ),
        ] {
            match (url, out) {
                (None, None) => {}
                (Some(url), Some(out)) => {
                    let key = format!("{table} {name}_url");
                    self.note(&key, &url.span());
                    crate::pinning::fetch::url_host(url.get_ref())
                        .map_err(|e| self.error(&url.span(), &key, e.to_string()))?;
                    let out_key = format!("{table} {name}_out");
                    self.note(&out_key, &out.span());
                    let out = self.path(&out, &out_key)?;
                    files.push((url.into_inner(), out, kind));
                }
                (Some(v), None) | (None, Some(v)) => {
                    let m = format!("{name}_url and {name}_out go together");
                    return Err(self.error(&v.span(), &format!("{table} {name}_url"), m));
                }
            }
        }
        if files.is_empty() {
            return Err(ConfigError {
                file: self.source.to_owned(),
                line: None,
                key: Some(table.into()),
                message:
                    "nothing to fetch: set config_url and config_out, or secret_url and secret_out"
                        .into(),
            });
        }
        let interval = self
            .duration(raw.interval, "[refresh] interval")?
            .unwrap_or(Duration::from_secs(24 * 3600));
        if interval < Duration::from_secs(60) {
            let m = "at least \"60s\": Telegram's files change rarely";
            let line = self.lines.get("[refresh] interval").copied();
            return Err(ConfigError {
                file: self.source.to_owned(),
                line,
                key: Some("[refresh] interval".into()),
                message: m.into(),
            });
        }
        let jitter = self
            .duration(raw.jitter, "[refresh] jitter")?
            .unwrap_or(interval / 10);
        let pinning = self.pinning(
            table,
            raw.pins,
            raw.pins_file,
            raw.trust,
            raw.ca_file,
            raw.on_expired,
        )?;
        if pinning.pins.is_empty() && pinning.pins_file.is_none() {
            return Err(ConfigError {
                file: self.source.to_owned(),
                line: None,
                key: Some("[refresh] pins".into()),
                message: "a pinned fetch needs pins (or pins_file); `mtguard pin CERT.pem` prints a certificate's".into(),
            });
        }
        Ok(RefreshConfig {
            files,
            interval,
            jitter,
            pinning,
        })
    }

    fn cidrs(&mut self, values: &[Spanned<String>], key: &str) -> Result<Vec<Cidr>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                Cidr::parse(value.get_ref()).map_err(|e| {
                    let message = format!("invalid address or prefix {:?}: {e}", value.get_ref());
                    self.error(&value.span(), &key, message)
                })
            })
            .collect()
    }

    fn paths(
        &mut self,
        values: &[Spanned<String>],
        key: &str,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                self.path(value, &key)
            })
            .collect()
    }
}

thread_local! {
    /// Bytes of config text scanned for newlines on this thread, so a test
    /// can check that finding the lines of n values costs O(text), not
    /// O(n × text).
    static LINE_SCAN_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many bytes of config text this thread has scanned to turn byte
/// offsets into line numbers so far (a cost counter for tests).
#[doc(hidden)]
pub fn line_scan_bytes() -> u64 {
    LINE_SCAN_BYTES.with(|c| c.get())
}

fn count_scan(bytes: usize) {
    LINE_SCAN_BYTES.with(|c| c.set(c.get() + bytes as u64));
}

/// Where each line of a text starts, to turn byte offsets into line numbers
/// in O(log lines) each after one pass over the text.
///
/// A config names the line of every value it notes (a 200,000-entry inline
/// list notes 200,000), so counting newlines from the start for each one
/// would cost O(values × text): minutes for such a list.
#[derive(Clone, Debug)]
pub struct LineIndex {
    /// Byte offset of the start of every line after the first.
    starts: Vec<usize>,
}

impl LineIndex {
    /// The index of `text`: one pass over its bytes.
    pub fn new(text: &str) -> LineIndex {
        count_scan(text.len());
        let starts = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        LineIndex { starts }
    }

    /// The line, counting from 1, of byte `offset` (an offset past the end
    /// counts as the end).
    pub fn line(&self, offset: usize) -> usize {
        // Lines that start at or before `offset`, plus the first line.
        self.starts.partition_point(|&s| s <= offset) + 1
    }
}

/// The line, counting from 1, of byte `offset` of `text`, for the one-off
/// lookups (a TOML error) that need no index.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    count_scan(end);
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// One step of a key path: a key or an index into an array.
enum Step {
    Key(String),
    Index(usize),
}

/// The innermost key or value of `table` whose span holds `pos`: its path,
/// whether the key itself (rather than its value) matched, and whether its
/// value is a table.
struct Found {
    path: Vec<Step>,
    width: usize,
    is_table: bool,
}

fn locate(table: &DeTable<'_>, pos: usize, path: &mut Vec<Step>, best: &mut Option<Found>) {
    for (key, value) in table.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        consider(key.span(), value.get_ref(), pos, path, best);
        locate_value(value, pos, path, best);
        path.pop();
    }
}

fn locate_value(
    value: &Spanned<DeValue<'_>>,
    pos: usize,
    path: &mut Vec<Step>,
    best: &mut Option<Found>,
) {
    consider(value.span(), value.get_ref(), pos, path, best);
    match value.get_ref() {
        DeValue::Table(table) => locate(table, pos, path, best),
        DeValue::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                path.push(Step::Index(i));
                locate_value(element, pos, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn consider(
    span: Range<usize>,
    value: &DeValue<'_>,
    pos: usize,
    path: &[Step],
    best: &mut Option<Found>,
) {
    let hit = span.contains(&pos) || (span.is_empty() && span.start == pos);
    let width = span.len();
    let better = match best {
        None => true,
        Some(b) => width < b.width || (width == b.width && path.len() > b.path.len()),
    };
    if hit && better {
        *best = Some(Found {
            path: path
                .iter()
                .map(|s| match s {
                    Step::Key(k) => Step::Key(k.clone()),
                    Step::Index(i) => Step::Index(*i),
                })
                .collect(),
            width,
            is_table: matches!(value, DeValue::Table(_)),
        });
    }
}

/// `level`, `[limits]`, `[limits] rate_window`, `[lists] allow[2]`.
fn key_name(path: &[Step], last_is_table: bool) -> Option<String> {
    let mut out = String::new();
    for (i, step) in path.iter().enumerate() {
        match step {
            Step::Key(k) if i == 0 && (path.len() > 1 || last_is_table) => {
                out.push('[');
                out.push_str(k);
                out.push(']');
            }
            Step::Key(k) if i == 0 => out.push_str(k),
            Step::Key(k) if i == 1 => {
                out.push(' ');
                out.push_str(k);
            }
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `text` holds `word` as a whole word (`block_duration` is not
/// mentioned by `max_block_duration`).
fn mentions(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Turns a TOML or serde error into one naming the line and the key.
fn toml_error(error: &toml::de::Error, text: &str, source: &str) -> ConfigError {
    let mut message = error.message().trim().to_owned();
    let span = error.span();
    let line = span.as_ref().map(|s| line_of(text, s.start));
    let mut key = None;
    match (&span, DeTable::parse(text)) {
        (Some(span), Ok(doc)) => {
            let mut best = None;
            locate(doc.get_ref(), span.start, &mut Vec::new(), &mut best);
            if let Some(found) = best {
                if let Some(rest) = message.strip_prefix("unknown field") {
                    // The key is in the message; name the table it is in.
                    let what = if found.is_table && found.path.len() == 1 {
                        "unknown table"
                    } else {
                        "unknown key"
                    };
                    message = format!("{what}{rest}");
                    let table = &found.path[..found.path.len().saturating_sub(1)];
                    key = key_name(table, true);
                } else {
                    key = key_name(&found.path, found.is_table);
                }
            }
        }
        (_, Err(_)) => {
            // A syntax error: the line says where; a duplicate key is named.
            let at = span.as_ref().and_then(|s| text.get(s.clone()));
            match at {
                Some(k) if message == "duplicate key" && !k.trim().is_empty() => {
                    message = format!("invalid TOML: duplicate key `{}`", k.trim())
                }
                _ => message = format!("invalid TOML: {message}"),
            }
        }
        (None, Ok(_)) => {}
    }
    let mut message = message
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false")
        .replace("expected a sequence", "expected an array");
    // Serde names the raw struct of a table; the file calls it a table.
    if let Some(at) = message.find("expected struct Raw") {
        message.truncate(at);
        message.push_str("expected a table");
    }
    ConfigError {
        file: source.to_owned(),
        line,
        key,
        message,
    }
}

/// Where the `[hsm]` table starts, for errors about keys missing from it.
fn hsm_table_span(text: &str) -> Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("[hsm]") {
            return offset..offset + line.len();
        }
        offset += line.len();
    }
    0..0
}

/// The host of a `host:port` backend, without brackets around IPv6.
fn backend_host(backend: &str) -> &str {
    let host = backend.rsplit_once(':').map_or(backend, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn check_backend(backend: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid backend {backend:?}: {why}; expected host:port such as 127.0.0.1:8443, proxy.internal:443 or [::1]:8443"
        ))
    };
    let Some((host, port)) = backend.rsplit_once(':') else {
        return bad("no port");
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be between 1 and 65535"),
        Ok(_) => {}
    }
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address in brackets");
        }
    } else if host.contains(':') {
        return bad("an IPv6 address must be written in brackets");
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return bad("invalid host name");
    }
    Ok(())
}

/// The per-user state directory: the platform's local data directory (on
/// Linux `$XDG_DATA_HOME` or `~/.local/share`) plus `mtguard`, else
/// `$HOME/.local/share/mtguard`, else `./mtguard-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = dirs::data_local_dir() {
        return dir.join("mtguard");
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share/mtguard"),
        _ => PathBuf::from("mtguard-state"),
    }
}

impl Config {
    /// The configuration used when no file is given: listen on
    /// `127.0.0.1:4443`, forward to `127.0.0.1:8443`, admin API on
    /// `127.0.0.1:9900`, level 1, no PROXY protocol, 5 s connect timeout,
    /// 10 min idle timeout, state in [`default_state_dir`].
    pub fn embedded_default() -> Config {
        let local = |port| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
        Config {
            level: 1,
            server: ServerConfig {
                listen: vec![local(4443)],
                backend: "127.0.0.1:8443".into(),
                proxy_protocol: ProxyProtocol::None,
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(600),
                backend_tls: None,
            },
            limits: LimitsConfig::default(),
            lists: ListsConfig::default(),
            admin: AdminConfig {
                listen: Some(local(9900)),
                token_file: None,
            },
            state: StateConfig {
                dir: default_state_dir(),
            },
            mtproto: MtprotoConfig::default(),
            crowdsec: None,
            kernel: KernelConfig::default(),
            hsm: None,
            refresh: None,
            source_name: "embedded default".into(),
            path: None,
            lines: BTreeMap::new(),
        }
    }

    /// Reads and parses the file at `path`; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        let mut config = Config::parse_in(&text, &name, base)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Parses a config text; `source_name` names it in errors. Relative
    /// paths in it stay relative (to the working directory).
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, source_name, None)
    }

    fn parse_in(text: &str, source_name: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, source_name))?;
        let mut cx = Parse {
            line_index: LineIndex::new(text),
            source: source_name,
            base,
            lines: BTreeMap::new(),
            has_hsm: raw.hsm.is_some(),
        };
        let mut config = Config::embedded_default();
        config.source_name = source_name.to_owned();

        if let Some(level) = raw.level {
            cx.note("level", &level.span());
            let n = *level.get_ref();
            config.level = match u8::try_from(n).ok().and_then(Level::from_number) {
                Some(l) => l.number(),
                None => {
                    let m = format!("must be 0, 1, 2 or 3 (got {n})");
                    return Err(cx.error(&level.span(), "level", m));
                }
            };
        }

        let server = raw.server.unwrap_or_default();
        if let Some(listen) = server.listen {
            let key = "[server] listen";
            cx.note(key, &listen.span());
            if listen.get_ref().is_empty() {
                return Err(cx.error(&listen.span(), key, "must list at least one address"));
            }
            config.server.listen = listen
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    a.get_ref().parse().map_err(|_| {
                        let m = format!(
                            "invalid address {:?}: expected IP:port such as 0.0.0.0:443 or [::]:443",
                            a.get_ref()
                        );
                        cx.error(&a.span(), &format!("{key}[{i}]"), m)
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(backend) = server.backend {
            let key = "[server] backend";
            cx.note(key, &backend.span());
            check_backend(backend.get_ref()).map_err(|m| cx.error(&backend.span(), key, m))?;
            config.server.backend = backend.into_inner();
        }
        if let Some(pp) = server.proxy_protocol {
            cx.note("[server] proxy_protocol", &pp.span());
            config.server.proxy_protocol = pp.into_inner().into();
        }
        if let Some(d) = cx.duration(server.connect_timeout, "[server] connect_timeout")? {
            config.server.connect_timeout = d;
        }
        if let Some(d) = cx.duration(server.idle_timeout, "[server] idle_timeout")? {
            config.server.idle_timeout = d;
        }
        if let Some(tls) = server.backend_tls {
            config.server.backend_tls = Some(cx.backend_tls(tls, &config.server.backend)?);
        }

        config.limits = LimitsConfig::from_raw(raw.limits.unwrap_or_default(), &mut cx)?;

        let lists = raw.lists.unwrap_or_default();
        config.lists = ListsConfig {
            allow: cx.cidrs(&lists.allow, "[lists] allow")?,
            deny: cx.cidrs(&lists.deny, "[lists] deny")?,
            allow_files: cx.paths(&lists.allow_files, "[lists] allow_files")?,
            deny_files: cx.paths(&lists.deny_files, "[lists] deny_files")?,
        };

        let admin = raw.admin.unwrap_or_default();
        if let Some(listen) = admin.listen {
            let key = "[admin] listen";
            cx.note(key, &listen.span());
            config.admin.listen = match listen.get_ref().as_str() {
                "off" => None,
                text => Some(text.parse().map_err(|_| {
                    let m = format!(
                        "invalid address {text:?}: expected IP:port such as 127.0.0.1:9900, or \"off\""
                    );
                    cx.error(&listen.span(), key, m)
                })?),
            };
        }
        if let Some(token) = admin.token_file {
            let key = "[admin] token_file";
            cx.note(key, &token.span());
            config.admin.token_file = Some(cx.path(&token, key)?);
        }

        if let Some(dir) = raw.state.unwrap_or_default().dir {
            let key = "[state] dir";
            cx.note(key, &dir.span());
            config.state.dir = cx.path(&dir, key)?;
        }

        if let Some(hsm) = raw.hsm {
            let span = hsm_table_span(text);
            config.hsm = Some(cx.hsm(hsm, &span)?);
        }
        config.mtproto = cx.mtproto(raw.mtproto.unwrap_or_default())?;
        if let Some(refresh) = raw.refresh {
            config.refresh = Some(cx.refresh(refresh)?);
        }

        if let Some(crowdsec) = raw.crowdsec {
            config.crowdsec = Some(cx.crowdsec(crowdsec)?);
        }
        if let Some(set) = raw.kernel.unwrap_or_default().nft_set {
            let key = "[kernel] nft_set";
            cx.note(key, &set.span());
            config.kernel.nft_set = match set.get_ref().trim() {
                "off" => None,
                text => Some(
                    NftSet::parse(text)
                        .map_err(|m| cx.error(&set.span(), key, format!("{m}, or \"off\"")))?,
                ),
            };
        }

        config.lines = cx.lines;
        Ok(config)
    }

    /// The name of the file in messages (`embedded default` without one).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The file the configuration was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
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
                line: self.lines.get("level").copied(),
                key: Some("level".into()),
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
        let config_key = |field: &'static str| -> &'static str {
            LimitsConfig::KEYS
                .iter()
                .find(|(_, f)| *f == field)
                .map_or(field, |(k, _)| *k)
        };
        let key = config_key(error.field);
        let mut problem = error.problem.to_owned();
        for (k, f) in LimitsConfig::KEYS {
            if k != f {
                problem = problem.replace(f, k);
            }
        }
        // The key, then every other key the problem mentions, with their
        // values and origins: the cause may be a key the file did set.
        let rows = self.limits.rows(policy);
        let preset = policy.level.number();
        let mut line = None;
        let mut notes = Vec::new();
        let mentioned = rows.iter().filter(|r| r.0 == key).chain(
            rows.iter()
                .filter(|r| r.0 != key && mentions(&problem, r.0)),
        );
        for (k, value, from_file) in mentioned {
            let k_line = self.lines.get(&format!("[limits] {k}")).copied();
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
            key: Some(format!("[limits] {key}")),
            message,
        }
    }

    /// The allow and deny lists: the inline prefixes and those of every list
    /// file (one address or prefix a line, `#` starts a comment), sorted
    /// and without duplicates.
    pub fn load_lists(&self) -> Result<Lists, ConfigError> {
        let read = |inline: &[Cidr], files: &[PathBuf], key: &str| {
            let mut out = inline.to_vec();
            for (i, file) in files.iter().enumerate() {
                let name = file.display().to_string();
                let text = std::fs::read_to_string(file).map_err(|e| {
                    let index_key = format!("{key}[{i}]");
                    ConfigError {
                        file: self.source_name.clone(),
                        line: self.lines.get(&index_key).copied(),
                        key: Some(index_key),
                        message: format!("cannot read list file {name:?}: {e}"),
                    }
                })?;
                for (n, line) in text.lines().enumerate() {
                    match parse_netset_line(line) {
                        Ok(Some(cidr)) => out.push(cidr),
                        Ok(None) => {}
                        Err(e) => {
                            return Err(ConfigError {
                                file: name,
                                line: Some(n + 1),
                                key: None,
                                message: format!(
                                    "invalid address or prefix {:?}: {e} (list file of {key}; one address or prefix a line, # starts a comment)",
                                    line.split('#').next().unwrap_or("").trim()
                                ),
                            })
                        }
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        };
        Ok(Lists {
            allow: read(
                &self.lists.allow,
                &self.lists.allow_files,
                "[lists] allow_files",
            )?,
            deny: read(
                &self.lists.deny,
                &self.lists.deny_files,
                "[lists] deny_files",
            )?,
        })
    }

    /// The effective configuration for `mtguard check-config`: the server
    /// settings, and every threshold of `policy` with where it came from
    /// (the file or the level preset).
    pub fn describe(&self, policy: &Policy) -> String {
        use std::fmt::Write as _;
        let level = policy.level.number();
        let level_name = match policy.level {
            Level::Minimal => "minimal",
            Level::Standard => "standard",
            Level::High => "high",
            Level::Maximum => "maximum",
        };
        let mut out = String::new();
        let _ = writeln!(out, "config: {}", self.source_name);
        let _ = write!(out, "level: {level} ({level_name})");
        if level != self.level {
            let _ = write!(
                out,
                ", from the command line (the file says {})",
                self.level
            );
        }
        out.push('\n');

        let mut row = |key: &str, value: String, origin: &str| {
            let line = format!("  {key:<32} {value:<24} {origin}");
            out.push_str(line.trim_end());
            out.push('\n');
        };
        // Where a value came from: `FILE:LINE` of its key, else the default.
        let at = |key: &str| {
            self.lines
                .get(key)
                .map(|line| format!("{}:{line}", self.source_name))
        };
        let origin = |key: &str| at(key).unwrap_or_else(|| "default".into());
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let path_or_none = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(none)".into(), |p| p.display().to_string())
        };
        row("[server]", String::new(), "");
        row("listen", listen.join(", "), &origin("[server] listen"));
        row(
            "backend",
            self.server.backend.clone(),
            &origin("[server] backend"),
        );
        row(
            "proxy_protocol",
            proxy_protocol_name(self.server.proxy_protocol).to_owned(),
            &origin("[server] proxy_protocol"),
        );
        row(
            "connect_timeout",
            format_duration(self.server.connect_timeout),
            &origin("[server] connect_timeout"),
        );
        row(
            "idle_timeout",
            format_duration(self.server.idle_timeout),
            &origin("[server] idle_timeout"),
        );
        row(
            "handshake_timeout",
            policy
                .handshake_timeout
                .map_or("off".into(), format_duration),
            &self.handshake_timeout_source(policy),
        );
        row("[admin]", String::new(), "");
        row(
            "listen",
            self.admin.listen.map_or("off".into(), |a| a.to_string()),
            &origin("[admin] listen"),
        );
        row(
            "token_file",
            path_or_none(&self.admin.token_file),
            &origin("[admin] token_file"),
        );
        row("[state]", String::new(), "");
        row(
            "dir",
            self.state.dir.display().to_string(),
            &origin("[state] dir"),
        );
        row("[lists]", String::new(), "");
        let files = |f: &[PathBuf]| {
            if f.is_empty() {
                "(none)".into()
            } else {
                f.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        row("allow", format!("{} inline", self.lists.allow.len()), "");
        row("allow_files", files(&self.lists.allow_files), "");
        row("deny", format!("{} inline", self.lists.deny.len()), "");
        row("deny_files", files(&self.lists.deny_files), "");
        let m = &self.mtproto;
        row("[mtproto]", String::new(), "");
        row(
            "secrets",
            if m.hsm_secrets.is_empty() {
                m.secrets.len().to_string()
            } else {
                format!(
                    "{} ({} in the token)",
                    m.secret_count(),
                    m.hsm_secrets.len()
                )
            },
            &origin("[mtproto] secrets"),
        );
        row(
            "inspect",
            m.inspecting().to_string(),
            &origin("[mtproto] inspect"),
        );
        row(
            "on_probe",
            m.on_probe.as_str().to_owned(),
            &origin("[mtproto] on_probe"),
        );
        row(
            "mask_backend",
            m.mask_backend.clone().unwrap_or_else(|| "(none)".into()),
            &origin("[mtproto] mask_backend"),
        );
        row(
            "time_skew",
            format_duration(m.time_skew),
            &origin("[mtproto] time_skew"),
        );
        row(
            "time_skew_ahead",
            format_duration(m.time_skew_ahead),
            &origin("[mtproto] time_skew_ahead"),
        );
        row("[crowdsec]", String::new(), "");
        match &self.crowdsec {
            None => row("lapi_url", "(off)".into(), "default"),
            Some(c) => {
                row(
                    "lapi_url",
                    c.lapi_url.clone(),
                    &origin("[crowdsec] lapi_url"),
                );
                row(
                    "api_key_file",
                    path_or_none(&c.api_key_file),
                    &origin("[crowdsec] api_key_file"),
                );
                row(
                    "poll_interval",
                    format_duration(c.poll_interval),
                    &origin("[crowdsec] poll_interval"),
                );
                row(
                    "machine_id",
                    c.machine_id.clone().unwrap_or_else(|| "(none)".into()),
                    &origin("[crowdsec] machine_id"),
                );
                row(
                    "password_file",
                    path_or_none(&c.password_file),
                    &origin("[crowdsec] password_file"),
                );
            }
        }
        row("[kernel]", String::new(), "");
        row(
            "nft_set",
            self.kernel
                .nft_set
                .as_ref()
                .map_or("off".into(), |s| s.to_string()),
            &origin("[kernel] nft_set"),
        );
        if let Some(h) = &self.hsm {
            row("[hsm]", String::new(), "");
            row(
                "module",
                h.module.display().to_string(),
                &origin("[hsm] module"),
            );
            row("token", h.token.clone(), &origin("[hsm] token"));
            let pin = match &h.pin {
                PinSource::File(p) => format!("file {}", p.display()),
                PinSource::Env(v) => format!("environment variable {v}"),
            };
            let pin_key = match &h.pin {
                PinSource::File(_) => "[hsm] pin_file",
                PinSource::Env(_) => "[hsm] pin_env",
            };
            row("pin", pin, &origin(pin_key));
            row(
                "integrity_key",
                h.integrity_key.clone(),
                &origin("[hsm] integrity_key"),
            );
        }
        // `extra`: the table's own rows, `(key, value, source)`.
        let mut pinned = |table: &str, p: &PinningConfig, extra: &[(&str, String, String)]| {
            row(table, String::new(), "");
            for (key, value, source) in extra {
                row(key, value.clone(), source);
            }
            row(
                "pins",
                format!("{} inline", p.pins.len()),
                &origin(&format!("{table} pins")),
            );
            row(
                "pins_file",
                path_or_none(&p.pins_file),
                &origin(&format!("{table} pins_file")),
            );
            row(
                "trust",
                p.trust.as_str().to_owned(),
                &origin(&format!("{table} trust")),
            );
            row(
                "ca_file",
                p.ca_file
                    .as_ref()
                    .map_or("(built-in roots)".into(), |f| f.display().to_string()),
                &origin(&format!("{table} ca_file")),
            );
            row(
                "on_expired",
                p.on_expired(level).as_str().to_owned(),
                &at(&format!("{table} on_expired"))
                    .unwrap_or_else(|| format!("level {level} default")),
            );
        };
        if let Some(tls) = &self.server.backend_tls {
            let source = at("[server.backend_tls] server_name")
                .unwrap_or_else(|| "default (the host of [server] backend)".into());
            pinned(
                "[server.backend_tls]",
                &tls.pinning,
                &[("server_name", tls.server_name.clone(), source)],
            );
        }
        if let Some(refresh) = &self.refresh {
            let mut extra = Vec::new();
            for (url, out, kind) in &refresh.files {
                let name = match kind {
                    ContentKind::ProxyConfig => "config",
                    ContentKind::ProxySecret => "secret",
                };
                extra.push((
                    "fetch",
                    format!("{url} -> {}", out.display()),
                    origin(&format!("[refresh] {name}_url")),
                ));
            }
            extra.push((
                "interval",
                format_duration(refresh.interval),
                origin("[refresh] interval"),
            ));
            extra.push((
                "jitter",
                format_duration(refresh.jitter),
                at("[refresh] jitter").unwrap_or_else(|| "default (a tenth of interval)".into()),
            ));
            pinned("[refresh]", &refresh.pinning, &extra);
        }
        row("[limits]", String::new(), "");
        let preset = format!("level {level} preset");
        for (key, value, from_file) in self.limits.rows(policy) {
            // `[mtproto] handshake_timeout` overrides the `[limits]` key
            // (see `effective_policy`), so it is the true source when set.
            let mtproto_key = "[mtproto] handshake_timeout";
            let source = match at(&format!("[limits] {key}")) {
                _ if key == "handshake_timeout" && self.mtproto.handshake_timeout.is_some() => {
                    format!("{mtproto_key}, {}", origin(mtproto_key))
                }
                Some(at) if from_file => at,
                _ if from_file => self.source_name.clone(),
                _ => preset.clone(),
            };
            row(key, value, &source);
        }
        out
    }

    /// Where the effective handshake deadline comes from: `[mtproto]`
    /// overrides `[limits]`, which overrides the level preset.
    fn handshake_timeout_source(&self, policy: &Policy) -> String {
        let at = |key: &str| {
            self.lines
                .get(key)
                .map(|line| format!("{key}, {}:{line}", self.source_name))
        };
        if self.mtproto.handshake_timeout.is_some() {
            if let Some(s) = at("[mtproto] handshake_timeout") {
                return s;
            }
        }
        if self.limits.handshake_timeout.is_some() {
            if let Some(s) = at("[limits] handshake_timeout") {
                return s;
            }
        }
        format!("level {} preset", policy.level.number())
    }
}
