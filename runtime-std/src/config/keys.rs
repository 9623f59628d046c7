//! The declarations of the config keys: each key once, with what the
//! parser, the defaults, `check-config` and the reference need of it.

use std::time::Duration;

use mtguard_core::Policy;
use serde::Deserialize;
use toml::Spanned;

use super::duration::{format_duration, parse_duration, DurationText};
use super::error::ConfigError;
use super::parse::Parse;

/// A value of a `[limits]` key: how it is written in the file and shown.
pub(super) trait LimitValue: Sized + Copy {
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
        pub(super) struct RawLimits {
            $( $key: Option<Spanned<<$ty as LimitValue>::Raw>>, )*
        }

        impl LimitsConfig {
            /// `(config key, Policy field)` of every key, in file order.
            pub(super) const KEYS: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($key), stringify!($field)), )*];

            pub(super) fn from_raw(raw: RawLimits, cx: &mut Parse<'_>) -> Result<Self, ConfigError> {
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
            pub(super) fn rows(&self, policy: &Policy) -> Vec<(&'static str, String, bool)> {
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

/// One config key as the reference documents it: where it lives, its
/// type, its default and what it does. [`KEYS`] holds every key once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The table (`[server]`, `[server.backend_tls]`), empty at the top level.
    pub table: &'static str,
    /// The key as the file writes it.
    pub name: &'static str,
    /// Its type, in the reference's words.
    pub ty: &'static str,
    /// Its default, in the reference's words (`[limits]`: level 1's).
    pub default: &'static str,
    /// The reference's description.
    pub doc: &'static str,
}

impl Key {
    /// The key as errors and `check-config` name it: `level`,
    /// `[limits] rate_window`.
    pub fn path(&self) -> String {
        if self.table.is_empty() {
            self.name.to_owned()
        } else {
            format!("{} {}", self.table, self.name)
        }
    }
}

/// Every key of the config file, table by table in the reference's order.
pub const KEYS: &[Key] = &[
    Key {
        table: "",
        name: "level",
        ty: r#"integer 0–3"#,
        default: r#"`1`"#,
        doc: r#"Security level: 0 minimal, for testing (generous limits, nobody is blocked); 1 standard, recommended; 2 high; 3 maximum, may refuse heavy legitimate users. Every `[limits]` key left out takes this level's preset (see [Security levels](#security-levels)). `--level` overrides it."#,
    },
    Key {
        table: "[server]",
        name: "listen",
        ty: r#"array of strings"#,
        default: r#"`["127.0.0.1:4443"]`"#,
        doc: r#"Addresses that accept clients: one or more `IP:port` (IPv6: `"[::]:443"`)."#,
    },
    Key {
        table: "[server]",
        name: "backend",
        ty: r#"string"#,
        default: r#"`"127.0.0.1:8443"`"#,
        doc: r#"The MTProto proxy behind the guard, `host:port`. A host name is resolved when connecting. IPv6 is written `"[::1]:8443"`."#,
    },
    Key {
        table: "[server]",
        name: "proxy_protocol",
        ty: r#"string"#,
        default: r#"`"none"`"#,
        doc: r#"The PROXY protocol header sent to the backend with the client's address: `"none"`, `"v1"` (text) or `"v2"` (binary). mtg and telemt accept it; the original MTProxy does not."#,
    },
    Key {
        table: "[server]",
        name: "connect_timeout",
        ty: r#"duration"#,
        default: r#"`"5s"`"#,
        doc: r#"How long connecting to the backend may take. With `[server.backend_tls]`, the TLS handshake has the same limit."#,
    },
    Key {
        table: "[server]",
        name: "idle_timeout",
        ty: r#"duration"#,
        default: r#"`"10m"`"#,
        doc: r#"A connection with no traffic in either direction for this long is closed."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "server_name",
        ty: r#"string"#,
        default: r#"host of `backend`"#,
        doc: r#"The name the backend's certificate must be valid for, also sent as SNI: a DNS name or an IP address."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "pins",
        ty: r#"array of strings"#,
        default: r#"`[]`"#,
        doc: r#"Pins, each `"sha256/<base64>"` (SPKI) or `"cert-sha256/<hex>"` (whole certificate), optionally followed by ` expires=YYYY-MM-DD` and `# label`. At most 100."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "pins_file",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"A pins file (one pin a line, same syntax). It is read at start and **rewritten** after every change made through `/v1/pins`."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "trust",
        ty: r#"string"#,
        default: r#"`"webpki"`"#,
        doc: r#"`"webpki"`: a chain to a trusted root, valid for `server_name`, and a pin on that validated chain. `"pins-only"`: no CA check and no name check; the leaf certificate must match a pin (for self-signed or private-CA backends)."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "ca_file",
        ty: r#"path"#,
        default: r#"built-in Mozilla roots"#,
        doc: r#"A PEM or DER file of the CAs to trust instead of the roots compiled in from `webpki-roots` (not allowed with `"pins-only"`)."#,
    },
    Key {
        table: "[server.backend_tls]",
        name: "on_expired",
        ty: r#"string"#,
        default: r#"`"webpki"` at levels 0–1, `"fail-closed"` at 2–3"#,
        doc: r#"What happens once no unexpired pin is left: `"fail-closed"` refuses every connection; `"webpki"` accepts on CA validation alone and logs an error at every connection. With `"pins-only"` trust it always fails closed."#,
    },
    Key {
        table: "[limits]",
        name: "max_connections_per_ip",
        ty: r#"integer 1–65535"#,
        default: r#"`100`"#,
        doc: r#"Concurrent connections one client may hold."#,
    },
    Key {
        table: "[limits]",
        name: "rate_window",
        ty: r#"duration"#,
        default: r#"`"60s"`"#,
        doc: r#"Length of the per-client rate window (at most `"1d"`)."#,
    },
    Key {
        table: "[limits]",
        name: "max_new_connections_per_window",
        ty: r#"integer 1–65535"#,
        default: r#"`300`"#,
        doc: r#"New connections one client may open per rate window."#,
    },
    Key {
        table: "[limits]",
        name: "ip_blocking",
        ty: r#"boolean"#,
        default: r#"`true`"#,
        doc: r#"Whether clients that keep violating limits are blocked. When `false`, violations are still refused, but nobody is blocked automatically."#,
    },
    Key {
        table: "[limits]",
        name: "block_after_violations",
        ty: r#"integer 1–255"#,
        default: r#"`20`"#,
        doc: r#"Refused connections within one rate window after which a client is blocked."#,
    },
    Key {
        table: "[limits]",
        name: "block_duration",
        ty: r#"duration"#,
        default: r#"`"5m"`"#,
        doc: r#"Length of a first automatic block. Each repeat offence doubles it."#,
    },
    Key {
        table: "[limits]",
        name: "max_block_duration",
        ty: r#"duration"#,
        default: r#"`"1d"`"#,
        doc: r#"Cap of an escalated block. It must not be shorter than `block_duration`."#,
    },
    Key {
        table: "[limits]",
        name: "block_jitter_permille",
        ty: r#"integer 0–1000"#,
        default: r#"`100`"#,
        doc: r#"Each block is lengthened by a random part of up to this many thousandths of its duration, so a botnet cannot predict the unban."#,
    },
    Key {
        table: "[limits]",
        name: "offence_memory",
        ty: r#"duration"#,
        default: r#"`"1d"`"#,
        doc: r#"How long a client's offence history is kept after it was last seen. Escalation starts over after that."#,
    },
    Key {
        table: "[limits]",
        name: "ipv6_prefix",
        ty: r#"integer 1–128"#,
        default: r#"`64`"#,
        doc: r#"IPv6 clients are counted per prefix of this many bits."#,
    },
    Key {
        table: "[limits]",
        name: "global_max_connections",
        ty: r#"integer ≥ 1"#,
        default: r#"`50000`"#,
        doc: r#"Concurrent connections across all clients (also capped by the connection table's size)."#,
    },
    Key {
        table: "[limits]",
        name: "global_max_new_per_second",
        ty: r#"integer ≥ 1"#,
        default: r#"`5000`"#,
        doc: r#"New connections per second across all clients."#,
    },
    Key {
        table: "[limits]",
        name: "scanner_failures",
        ty: r#"integer 1–255"#,
        default: r#"`10`"#,
        doc: r#"Failed handshakes within one rate window that mark a client as a scanner."#,
    },
    Key {
        table: "[limits]",
        name: "handshake_timeout",
        ty: r#"duration or `"off"`"#,
        default: r#"`"10s"`"#,
        doc: r#"A connection that has not completed its handshake after this long is closed (slowloris defence). `"off"` disables the deadline. `[mtproto] handshake_timeout` replaces it when set."#,
    },
    Key {
        table: "[limits]",
        name: "slowloris_timeouts",
        ty: r#"integer 1–255"#,
        default: r#"`10`"#,
        doc: r#"Handshake timeouts within one rate window that mark a slowloris client."#,
    },
    Key {
        table: "[limits]",
        name: "block_on_replay",
        ty: r#"boolean"#,
        default: r#"`false`"#,
        doc: r#"Whether a replayed handshake blocks the client at once. Otherwise it counts as a failed handshake."#,
    },
    Key {
        table: "[limits]",
        name: "attack_enter_per_second",
        ty: r#"integer, `0` = off"#,
        default: r#"`2000`"#,
        doc: r#"Under-attack mode starts when new connections across all clients reach this rate per second. Per-client limits then shrink to `attack_limit_percent`. `0` turns the mode off."#,
    },
    Key {
        table: "[limits]",
        name: "attack_exit_per_second",
        ty: r#"integer"#,
        default: r#"`1000`"#,
        doc: r#"The mode ends once the rate stays below this for `attack_cooldown`. It must not exceed `attack_enter_per_second`."#,
    },
    Key {
        table: "[limits]",
        name: "attack_cooldown",
        ty: r#"duration"#,
        default: r#"`"30s"`"#,
        doc: r#"How long the rate must stay below `attack_exit_per_second`."#,
    },
    Key {
        table: "[limits]",
        name: "attack_limit_percent",
        ty: r#"integer 1–100"#,
        default: r#"`50`"#,
        doc: r#"Under attack, per-client limits are scaled to this percentage."#,
    },
    Key {
        table: "[lists]",
        name: "allow",
        ty: r#"array of strings"#,
        default: r#"`[]`"#,
        doc: r#"Addresses or CIDR prefixes (`"192.0.2.7"`, `"10.0.0.0/8"`, `"2001:db8::/32"`) that are never limited or blocked."#,
    },
    Key {
        table: "[lists]",
        name: "deny",
        ty: r#"array of strings"#,
        default: r#"`[]`"#,
        doc: r#"Addresses or CIDR prefixes that are always refused."#,
    },
    Key {
        table: "[lists]",
        name: "allow_files",
        ty: r#"array of paths"#,
        default: r#"`[]`"#,
        doc: r#"Netset files of allowed prefixes."#,
    },
    Key {
        table: "[lists]",
        name: "deny_files",
        ty: r#"array of paths"#,
        default: r#"`[]`"#,
        doc: r#"Netset files of denied prefixes, for example FireHOL's `firehol_level1.netset`."#,
    },
    Key {
        table: "[mtproto]",
        name: "secrets",
        ty: r#"array of strings"#,
        default: r#"`[]`"#,
        doc: r#"The proxy's secrets: classic (32 hex digits), `"dd"` + 32 hex digits, or `"ee"` + 32 hex digits + the hex of the fake-TLS domain. Base64url of the same bytes also works. With `[hsm]`, an entry may also be `"hsm:<label>"`, a key in the token; these follow the inline secrets, each label once. At most 16."#,
    },
    Key {
        table: "[mtproto]",
        name: "inspect",
        ty: r#"boolean"#,
        default: r#"`true` when `secrets` is set, else `false`"#,
        doc: r#"Whether handshakes are inspected. `false` keeps the secrets in the file but forwards every connection uninspected. `true` without secrets is an error."#,
    },
    Key {
        table: "[mtproto]",
        name: "on_probe",
        ty: r#"string"#,
        default: r#"`"close"`"#,
        doc: r#"What happens to a connection whose handshake is refused. `"close"` resets it and the backend is never contacted. `"mask"` relays it byte for byte to `mask_backend`."#,
    },
    Key {
        table: "[mtproto]",
        name: "mask_backend",
        ty: r#"string"#,
        default: r#"unset"#,
        doc: r#"`host:port` of the real website of the fake-TLS domain. Required with `on_probe = "mask"`."#,
    },
    Key {
        table: "[mtproto]",
        name: "handshake_timeout",
        ty: r#"duration or `"off"`"#,
        default: r#"unset (`[limits] handshake_timeout` applies)"#,
        doc: r#"The deadline for the first bytes. When set, it replaces `[limits] handshake_timeout`."#,
    },
    Key {
        table: "[mtproto]",
        name: "time_skew",
        ty: r#"duration"#,
        default: r#"`"120s"`"#,
        doc: r#"How far a fake-TLS ClientHello's timestamp may lag behind the guard's clock. Whole seconds."#,
    },
    Key {
        table: "[mtproto]",
        name: "time_skew_ahead",
        ty: r#"duration"#,
        default: r#"`"3s"`"#,
        doc: r#"How far the timestamp may run ahead of the guard's clock. Whole seconds."#,
    },
    Key {
        table: "[refresh]",
        name: "config_url",
        ty: r#"string"#,
        default: r#"unset"#,
        doc: r#"The URL of `proxy-multi.conf` (for example `"https://core.telegram.org/getProxyConfig"`). Set it together with `config_out`, or neither."#,
    },
    Key {
        table: "[refresh]",
        name: "config_out",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"The file `config_url` replaces."#,
    },
    Key {
        table: "[refresh]",
        name: "secret_url",
        ty: r#"string"#,
        default: r#"unset"#,
        doc: r#"The URL of the proxy secret (`"https://core.telegram.org/getProxySecret"`). Set it together with `secret_out`, or neither. At least one of the two pairs is needed."#,
    },
    Key {
        table: "[refresh]",
        name: "secret_out",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"The file `secret_url` replaces."#,
    },
    Key {
        table: "[refresh]",
        name: "interval",
        ty: r#"duration"#,
        default: r#"`"1d"`"#,
        doc: r#"Time between rounds, at least `"60s"`."#,
    },
    Key {
        table: "[refresh]",
        name: "jitter",
        ty: r#"duration"#,
        default: r#"a tenth of `interval`"#,
        doc: r#"Each round starts up to this much later, at random, so guards do not fetch in step."#,
    },
    Key {
        table: "[refresh]",
        name: "pins",
        ty: r#"array of strings"#,
        default: r#"`[]`"#,
        doc: r#"Pins for the hosts of the URLs, as in `[server.backend_tls]`. Pins (or a pins file) are required."#,
    },
    Key {
        table: "[refresh]",
        name: "pins_file",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"A pins file for those hosts, as in `[server.backend_tls]`."#,
    },
    Key {
        table: "[refresh]",
        name: "trust",
        ty: r#"string"#,
        default: r#"`"webpki"`"#,
        doc: r#"As in `[server.backend_tls]`."#,
    },
    Key {
        table: "[refresh]",
        name: "ca_file",
        ty: r#"path"#,
        default: r#"built-in Mozilla roots"#,
        doc: r#"As in `[server.backend_tls]`."#,
    },
    Key {
        table: "[refresh]",
        name: "on_expired",
        ty: r#"string"#,
        default: r#"`"webpki"` at levels 0–1, `"fail-closed"` at 2–3"#,
        doc: r#"As in `[server.backend_tls]`."#,
    },
    Key {
        table: "[admin]",
        name: "listen",
        ty: r#"string"#,
        default: r#"`"127.0.0.1:9900"`"#,
        doc: r#"The address of the admin API and the Prometheus metrics; `"off"` disables it. A non-loopback address is allowed, but then the bearer token is all that protects `/v1/` (and `/metrics` needs none), so keep it on loopback unless you must."#,
    },
    Key {
        table: "[admin]",
        name: "token_file",
        ty: r#"path"#,
        default: r#"unset (`<state dir>/admin.token`)"#,
        doc: r#"A file holding the admin API's bearer token (not readable by group or others). Without it, the token is `<state dir>/admin.token`, generated on the first start. See [admin-api.md](admin-api.md#authentication)."#,
    },
    Key {
        table: "[state]",
        name: "dir",
        ty: r#"path"#,
        default: r#"per-user data directory"#,
        doc: r#"The directory of the persisted state (and of the generated admin token). The default is the platform's local data directory plus `mtguard` (on Linux `$XDG_DATA_HOME/mtguard` or `~/.local/share/mtguard`), else `$HOME/.local/share/mtguard`, else `./mtguard-state`. With the shipped systemd unit, set `"/var/lib/mtguard"`."#,
    },
    Key {
        table: "[hsm]",
        name: "module",
        ty: r#"path"#,
        default: r#"required"#,
        doc: r#"Path of the token vendor's PKCS#11 module (SoftHSM2 on Debian: `/usr/lib/softhsm/libsofthsm2.so`)."#,
    },
    Key {
        table: "[hsm]",
        name: "token",
        ty: r#"string"#,
        default: r#"required"#,
        doc: r#"The token's label (1 to 32 printable ASCII characters)."#,
    },
    Key {
        table: "[hsm]",
        name: "pin_file",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"A file holding the user PIN (surrounding whitespace ignored). Exactly one of `pin_file` and `pin_env` must be set."#,
    },
    Key {
        table: "[hsm]",
        name: "pin_env",
        ty: r#"string"#,
        default: r#"unset"#,
        doc: r#"The name of the environment variable holding the user PIN."#,
    },
    Key {
        table: "[hsm]",
        name: "integrity_key",
        ty: r#"string"#,
        default: r#"`"mtguard-integrity"`"#,
        doc: r#"The label of the token key that seals the state file and pins files. It is generated in the token on first use."#,
    },
    Key {
        table: "[crowdsec]",
        name: "lapi_url",
        ty: r#"string"#,
        default: r#"required"#,
        doc: r#"The CrowdSec Local API, `http://HOST:PORT`, on loopback or a private network. `https://` is refused for now, because the client has no CA setting yet."#,
    },
    Key {
        table: "[crowdsec]",
        name: "api_key_file",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"A file holding a bouncer key (`cscli bouncers add mtguard -o raw`). With it, the guard follows the decision stream."#,
    },
    Key {
        table: "[crowdsec]",
        name: "poll_interval",
        ty: r#"duration"#,
        default: r#"`"10s"`"#,
        doc: r#"How often the decision stream is polled."#,
    },
    Key {
        table: "[crowdsec]",
        name: "machine_id",
        ty: r#"string"#,
        default: r#"unset"#,
        doc: r#"A machine registered with `cscli machines add NAME --password ...`. With it, the guard reports its blocks and detections as alerts. Needs `password_file`."#,
    },
    Key {
        table: "[crowdsec]",
        name: "password_file",
        ty: r#"path"#,
        default: r#"unset"#,
        doc: r#"A file holding that machine's password."#,
    },
    Key {
        table: "[kernel]",
        name: "nft_set",
        ty: r#"string"#,
        default: r#"`"off"`"#,
        doc: r#"`"FAMILY TABLE SET"` (`"inet mtguard blocked"` with the shipped ruleset). Every block is mirrored into that nftables set (IPv4 clients) and into `SET6` (IPv6 client prefixes), with the block's remaining time as the element's timeout. FAMILY is `ip`, `ip6` or `inet`. It needs the `nft` command and `CAP_NET_ADMIN`, and the sets must exist at start."#,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_declarations_follow_the_limits_macro() {
        let declared: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.table == "[limits]")
            .map(|k| k.name)
            .collect();
        let parsed: Vec<&str> = LimitsConfig::KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(declared, parsed);
    }
}
