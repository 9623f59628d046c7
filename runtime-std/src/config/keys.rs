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
            pub(super) const KEYS: &'static [(Key, &'static str)] =
                &[$( (key::limits::$key, stringify!($field)), )*];

            pub(super) fn from_raw(raw: RawLimits, cx: &mut Parse<'_>) -> Result<Self, ConfigError> {
                Ok(LimitsConfig {
                    $( $key: match raw.$key {
                        None => None,
                        Some(value) => {
                            // Names the key through its declaration, so a
                            // `[limits]` key without one does not compile.
                            let key = key::limits::$key.path();
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
            pub(super) fn rows(&self, policy: &Policy) -> Vec<(Key, String, bool)> {
                vec![$(
                    (key::limits::$key, LimitValue::show(&policy.$field), self.$key.is_some()),
                )*]
            }
        }
    };
}

limits! {
    /// Concurrent connections one client (IPv4 address or IPv6 prefix) may hold.
    max_connections_per_ip => max_connections_per_client: u16,
    /// Concurrent authenticated connections one client may hold besides.
    max_authenticated_per_ip => max_authenticated_per_client: u16,
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
    /// Share of failed handshakes that marks a shared address a scanner.
    shared_failure_percent => shared_failure_percent: u8,
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
    /// Concurrent connections one network may hold that have not proved a
    /// secret; 0 is off.
    max_connections_per_network => max_connections_per_network: u32,
    /// New connections one network may open per rate window; 0 is off.
    max_new_connections_per_network => max_new_connections_per_network: u16,
    /// IPv4 networks are prefixes of this length.
    network_prefix_v4 => network_prefix_v4: u8,
    /// IPv6 networks are prefixes of this length.
    network_prefix_v6 => network_prefix_v6: u8,
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
    /// `table name` (`name` at the top level), spelt once by `keys!`.
    path: &'static str,
}

impl Key {
    /// The key as errors and `check-config` name it: `level`,
    /// `[limits] rate_window`.
    pub const fn path(&self) -> &'static str {
        self.path
    }
}

/// Declares every key once: a constant per key in a module per table
/// (`key::server::listen`), so the parser, `check-config` and the
/// reference name a key through its declaration and a typo does not
/// compile; and [`KEYS`], all of them in the reference's order.
macro_rules! keys {
    ($( $(#[doc = $mdoc:literal])* $module:ident $table:tt {
        $( $name:ident: $ty:literal, $default:literal, $doc:literal; )*
    } )*) => {
        /// The declarations one by one, a module per table
        /// (`key::server::listen`).
        pub mod key {
            $(
                $(#[doc = $mdoc])*
                // Each constant is spelt as the file spells its key, so the
                // name cannot drift from the key.
                #[allow(non_upper_case_globals)]
                pub mod $module {
                    use super::super::Key;

                    /// The table as the file and errors write it.
                    pub const TABLE: &str = $table;
                    $(
                        #[doc = $doc]
                        pub const $name: Key = Key {
                            table: $table,
                            name: stringify!($name),
                            ty: $ty,
                            default: $default,
                            doc: $doc,
                            path: keys!(@path $table $name),
                        };
                    )*
                }
            )*
        }

        /// Every key of the config file, table by table in the reference's order.
        pub const KEYS: &[Key] = &[$( $( key::$module::$name, )* )*];
    };
    (@path "" $name:ident) => { stringify!($name) };
    (@path $table:tt $name:ident) => { concat!($table, " ", stringify!($name)) };
}

keys! {
    /// The top-level keys.
    top "" {
        level: r#"integer 0–3"#,
            r#"`1`"#,
            r#"Security level: 0 minimal, for testing (generous limits, nobody is blocked); 1 standard, recommended; 2 high; 3 maximum, may refuse heavy legitimate users. Every `[limits]` key left out takes this level's preset (see [Security levels](#security-levels)). `--level` overrides it."#;
    }
    /// The keys of `[server]`.
    server "[server]" {
        listen: r#"array of strings"#,
            r#"`["127.0.0.1:4443"]`"#,
            r#"Addresses that accept clients: one or more `IP:port` (IPv6: `"[::]:443"`)."#;
        backend: r#"string"#,
            r#"`"127.0.0.1:8443"`"#,
            r#"The MTProto proxy behind the guard, `host:port`. A host name is resolved when connecting. IPv6 is written `"[::1]:8443"`."#;
        proxy_protocol: r#"string"#,
            r#"`"none"`"#,
            r#"The PROXY protocol header sent to the backend with the client's address: `"none"`, `"v1"` (text) or `"v2"` (binary). mtg and telemt accept it; the original MTProxy does not."#;
        connect_timeout: r#"duration"#,
            r#"`"5s"`"#,
            r#"How long connecting to the backend may take. With `[server.backend_tls]`, the TLS handshake has the same limit."#;
        idle_timeout: r#"duration"#,
            r#"`"10m"`"#,
            r#"A connection with no traffic in either direction for this long is closed."#;
    }
    /// The keys of `[server.backend_tls]`.
    backend_tls "[server.backend_tls]" {
        server_name: r#"string"#,
            r#"host of `backend`"#,
            r#"The name the backend's certificate must be valid for, also sent as SNI: a DNS name or an IP address."#;
        pins: r#"array of strings"#,
            r#"`[]`"#,
            r#"Pins, each `"sha256/<base64>"` (SPKI) or `"cert-sha256/<hex>"` (whole certificate), optionally followed by ` expires=YYYY-MM-DD` and `# label`. At most 100."#;
        pins_file: r#"path"#,
            r#"unset"#,
            r#"A pins file (one pin a line, same syntax). It is read at start and **rewritten** after every change made through `/v1/pins`."#;
        trust: r#"string"#,
            r#"`"webpki"`"#,
            r#"`"webpki"`: a chain to a trusted root, valid for `server_name`, and a pin on that validated chain. `"pins-only"`: no CA check and no name check; the leaf certificate must match a pin (for self-signed or private-CA backends)."#;
        ca_file: r#"path"#,
            r#"built-in Mozilla roots"#,
            r#"A PEM or DER file of the CAs to trust instead of the roots compiled in from `webpki-roots` (not allowed with `"pins-only"`)."#;
        on_expired: r#"string"#,
            r#"`"webpki"` at levels 0–1, `"fail-closed"` at 2–3"#,
            r#"What happens once no unexpired pin is left: `"fail-closed"` refuses every connection; `"webpki"` accepts on CA validation alone and logs an error at every connection. With `"pins-only"` trust it always fails closed."#;
    }
    /// The keys of `[limits]`.
    limits "[limits]" {
        max_connections_per_ip: r#"integer 1–65535"#,
            r#"`100`"#,
            r#"Concurrent connections one client may hold that have not proved a secret: pending (handshake not judged yet) or, without `[mtproto]` secrets, all of them."#;
        max_authenticated_per_ip: r#"integer 1–65535"#,
            r#"`1000`"#,
            r#"Concurrent authenticated connections (handshake valid for one of the `[mtproto]` secrets) one client may hold besides. Behind a carrier NAT one address is many people. Refusals at this cap never lead to a block. See [Many users behind one address](carrier-nat.md)."#;
        rate_window: r#"duration"#,
            r#"`"60s"`"#,
            r#"Length of the per-client rate window (at most `"1d"`)."#;
        max_new_connections_per_window: r#"integer 1–65535"#,
            r#"`300`"#,
            r#"New connections one client may open per rate window."#;
        ip_blocking: r#"boolean"#,
            r#"`true`"#,
            r#"Whether clients that keep violating limits are blocked. When `false`, violations are still refused, but nobody is blocked automatically."#;
        block_after_violations: r#"integer 1–255"#,
            r#"`20`"#,
            r#"Refused connections within one rate window after which a client is blocked."#;
        block_duration: r#"duration"#,
            r#"`"5m"`"#,
            r#"Length of a first automatic block. Each repeat offence doubles it."#;
        max_block_duration: r#"duration"#,
            r#"`"1d"`"#,
            r#"Cap of an escalated block. It must not be shorter than `block_duration`."#;
        block_jitter_permille: r#"integer 0–1000"#,
            r#"`100`"#,
            r#"Each block is lengthened by a random part of up to this many thousandths of its duration, so a botnet cannot predict the unban."#;
        offence_memory: r#"duration"#,
            r#"`"1d"`"#,
            r#"How long a client's offence history is kept after it was last seen. Escalation starts over after that."#;
        ipv6_prefix: r#"integer 1–128"#,
            r#"`64`"#,
            r#"IPv6 clients are counted per prefix of this many bits."#;
        global_max_connections: r#"integer ≥ 1"#,
            r#"`50000`"#,
            r#"Concurrent connections across all clients (also capped by the connection table's size)."#;
        global_max_new_per_second: r#"integer ≥ 1"#,
            r#"`5000`"#,
            r#"New connections per second across all clients."#;
        scanner_failures: r#"integer 1–255"#,
            r#"`10`"#,
            r#"Failed handshakes within one rate window that mark a client as a scanner."#;
        shared_failure_percent: r#"integer 1–100"#,
            r#"`50`"#,
            r#"For a client with recent valid handshakes or authenticated connections (a shared address), failed handshakes (and handshake timeouts) mark it only once they are also at least this percentage of its recent handshakes. `100`: never while it has valid ones."#;
        handshake_timeout: r#"duration or `"off"`"#,
            r#"`"10s"`"#,
            r#"A connection that has not completed its handshake after this long is closed (slowloris defence). `"off"` disables the deadline. `[mtproto] handshake_timeout` replaces it when set."#;
        slowloris_timeouts: r#"integer 1–255"#,
            r#"`10`"#,
            r#"Handshake timeouts within one rate window that mark a slowloris client."#;
        block_on_replay: r#"boolean"#,
            r#"`false`"#,
            r#"Whether a replayed handshake blocks the client at once. Otherwise it counts as a failed handshake."#;
        attack_enter_per_second: r#"integer, `0` = off"#,
            r#"`2000`"#,
            r#"Under-attack mode starts when new connections across all clients reach this rate per second. Per-client limits then shrink to `attack_limit_percent`. `0` turns the mode off."#;
        attack_exit_per_second: r#"integer"#,
            r#"`1000`"#,
            r#"The mode ends once the rate stays below this for `attack_cooldown`. It must not exceed `attack_enter_per_second`."#;
        attack_cooldown: r#"duration"#,
            r#"`"30s"`"#,
            r#"How long the rate must stay below `attack_exit_per_second`."#;
        attack_limit_percent: r#"integer 1–100"#,
            r#"`50`"#,
            r#"Under attack, per-client limits are scaled to this percentage (the per-network ones too)."#;
        max_connections_per_network: r#"integer, `0` = off"#,
            r#"`0`"#,
            r#"Off at levels 0 and 1 (`0`), `500` at level 2, `200` at 3. Concurrent connections one network (an IPv4 prefix of `network_prefix_v4` bits, an IPv6 prefix of `network_prefix_v6` bits) may hold across all its clients that have not proved a secret, as `max_connections_per_ip` counts them: authenticated connections do not count. Checked after the per-client limits. Its refusals (`network_connections`) never lead to a block. See [Limits per network](networks.md)."#;
        max_new_connections_per_network: r#"integer 0–65535, `0` = off"#,
            r#"`0`"#,
            r#"Off at levels 0 and 1 (`0`), `1000` at level 2, `400` at 3. New connections one network may open per rate window. A connection that proves a secret is refunded. Its refusals (`network_rate`) never lead to a block."#;
        network_prefix_v4: r#"integer 1–32"#,
            r#"`24`"#,
            r#"IPv4 clients are grouped into networks of this many bits."#;
        network_prefix_v6: r#"integer 1–64"#,
            r#"`48`"#,
            r#"IPv6 clients are grouped into networks of this many bits; at most `ipv6_prefix` (a longer value counts as `ipv6_prefix`, so a network never splits a client)."#;
    }
    /// The keys of `[lists]`.
    lists "[lists]" {
        allow: r#"array of strings"#,
            r#"`[]`"#,
            r#"Addresses or CIDR prefixes (`"192.0.2.7"`, `"10.0.0.0/8"`, `"2001:db8::/32"`) that are never limited or blocked."#;
        deny: r#"array of strings"#,
            r#"`[]`"#,
            r#"Addresses or CIDR prefixes that are always refused."#;
        allow_files: r#"array of paths"#,
            r#"`[]`"#,
            r#"Netset files of allowed prefixes."#;
        deny_files: r#"array of paths"#,
            r#"`[]`"#,
            r#"Netset files of denied prefixes, for example FireHOL's `firehol_level1.netset`."#;
    }
    /// The keys of `[mtproto]`.
    mtproto "[mtproto]" {
        secrets: r#"array of strings"#,
            r#"`[]`"#,
            r#"The proxy's secrets: classic (32 hex digits), `"dd"` + 32 hex digits, or `"ee"` + 32 hex digits + the hex of the fake-TLS domain. Base64url of the same bytes also works. With `[hsm]`, an entry may also be `"hsm:<label>"`, a key in the token; these follow the inline secrets, each label once. At most 16."#;
        inspect: r#"boolean"#,
            r#"`true` when `secrets` is set, else `false`"#,
            r#"Whether handshakes are inspected. `false` keeps the secrets in the file but forwards every connection uninspected. `true` without secrets is an error."#;
        on_probe: r#"string"#,
            r#"unset (the `[refusal]` presets apply)"#,
            r#"What happens to a connection whose handshake is refused: `"close"` resets it, `"mask"` relays it byte for byte to `mask_backend`. The older form of `[refusal] failed_handshake` and `replay` (`"close"` is `"reset"`); a `[refusal]` key set beside it wins."#;
        mask_backend: r#"string"#,
            r#"unset"#,
            r#"`host:port` of the cover site: the real website of the fake-TLS domain, where every `"mask"` answer of `[refusal]` relays. Required by an answer `"mask"` written in the file."#;
        handshake_timeout: r#"duration or `"off"`"#,
            r#"unset (`[limits] handshake_timeout` applies)"#,
            r#"The deadline for the first bytes. When set, it replaces `[limits] handshake_timeout`."#;
        time_skew: r#"duration"#,
            r#"`"120s"`"#,
            r#"How far a fake-TLS ClientHello's timestamp may lag behind the guard's clock. Whole seconds."#;
        time_skew_ahead: r#"duration"#,
            r#"`"3s"`"#,
            r#"How far the timestamp may run ahead of the guard's clock. Whole seconds."#;
    }
    /// The keys of `[refusal]`.
    refusal "[refusal]" {
        failed_handshake: r#"string"#,
            r#"`"reset"` at levels 0–1; `"mask"` at 2–3 with a `mask_backend`, else `"reset"`"#,
            r#"What a source whose handshake failed (no secret's, not a handshake at all) sees: `"reset"` a TCP reset at once; `"drop"` no answer, the connection held silently for `drop_timeout`; `"mask"` the cover site (`[mtproto] mask_backend`), as if the handshake had reached it. See [What a refused source sees](mtproto.md#what-a-refused-source-sees)."#;
        replay: r#"string"#,
            r#"`"reset"` at levels 0–1; `"mask"` at 2–3 with a `mask_backend`, else `"reset"`"#,
            r#"The same for a replayed handshake: a censor replaying a recorded ClientHello expects the real site's answer."#;
        blocked: r#"string"#,
            r#"`"reset"` at levels 0–1; `"drop"` at 2; `"mask"` at 3 with a `mask_backend`, else `"drop"`"#,
            r#"The same for a blocked or denylisted client, refused at accept before a byte is read. With `"mask"`, its first bytes are read (within the handshake deadline) and only then is the cover site connected, so a flood costs at most `max_masked` cover-site connections. Other refusals at accept (rate and connection limits) are always reset."#;
        drop_timeout: r#"duration"#,
            r#"`"30s"`"#,
            r#"How long a dropped connection is held (what it sends is read and discarded) before it is closed. At most `"10m"`."#;
        max_held: r#"integer 0–65535"#,
            r#"`1024`"#,
            r#"Connections held at once: dropped, waiting out a delay, or blocked and waiting for their first bytes to be masked. One more is reset instead (counted in `mtguard_refusal_cap_reached_total{cap="held"}`)."#;
        max_masked: r#"integer 0–65535"#,
            r#"`512`"#,
            r#"Masked connections at once, each one cover-site connection. One more is reset instead (`mtguard_refusal_cap_reached_total{cap="masked"}`)."#;
        mask_max_bytes: r#"integer 1–67108864"#,
            r#"`5242880`"#,
            r#"Bytes one masked connection may move, both directions together, the bytes already read included; then it is cut (`mtguard_masked_cut_total{bound="bytes"}`), so the guard is no open relay to the cover site."#;
        mask_timeout: r#"duration"#,
            r#"`"60s"`"#,
            r#"How long one masked connection may last; then it is cut (`mtguard_masked_cut_total{bound="time"}`)."#;
        delay_min: r#"duration"#,
            r#"`"0s"` at levels 0–2, `"20ms"` at 3"#,
            r#"Timing normalisation: a reset or a mask waits a random delay from `delay_min` to `delay_max` after the first bytes are judged, so failing takes about as long as a handshake with the proxy would. Not a drop (silent anyway) nor a TLS alert (a server sends it at once). At most `"10s"`. A delayed connection is held (`max_held`)."#;
        delay_max: r#"duration"#,
            r#"`"0s"` at levels 0–1, `"100ms"` at 2, `"250ms"` at 3"#,
            r#"The longest such delay; not shorter than `delay_min`. At most `"10s"`."#;
        tls_alerts: r#"boolean"#,
            r#"`false` at levels 0–1, `true` at 2–3"#,
            r#"Where the answer to a failed handshake is `"reset"`: a malformed ClientHello gets the fatal TLS alert `decode_error`, one whose SNI names no secret's domain `unrecognized_name`, as a real server sends (then the connection is closed), instead of a bare reset."#;
    }
    /// The keys of `[refresh]`.
    refresh "[refresh]" {
        config_url: r#"string"#,
            r#"unset"#,
            r#"The URL of `proxy-multi.conf` (for example `"https://core.telegram.org/getProxyConfig"`). Set it together with `config_out`, or neither."#;
        config_out: r#"path"#,
            r#"unset"#,
            r#"The file `config_url` replaces."#;
        secret_url: r#"string"#,
            r#"unset"#,
            r#"The URL of the proxy secret (`"https://core.telegram.org/getProxySecret"`). Set it together with `secret_out`, or neither. At least one of the two pairs is needed."#;
        secret_out: r#"path"#,
            r#"unset"#,
            r#"The file `secret_url` replaces."#;
        interval: r#"duration"#,
            r#"`"1d"`"#,
            r#"Time between rounds, at least `"60s"`."#;
        jitter: r#"duration"#,
            r#"a tenth of `interval`"#,
            r#"Each round starts up to this much later, at random, so guards do not fetch in step."#;
        pins: r#"array of strings"#,
            r#"`[]`"#,
            r#"Pins for the hosts of the URLs, as in `[server.backend_tls]`. Pins (or a pins file) are required."#;
        pins_file: r#"path"#,
            r#"unset"#,
            r#"A pins file for those hosts, as in `[server.backend_tls]`."#;
        trust: r#"string"#,
            r#"`"webpki"`"#,
            r#"As in `[server.backend_tls]`."#;
        ca_file: r#"path"#,
            r#"built-in Mozilla roots"#,
            r#"As in `[server.backend_tls]`."#;
        on_expired: r#"string"#,
            r#"`"webpki"` at levels 0–1, `"fail-closed"` at 2–3"#,
            r#"As in `[server.backend_tls]`."#;
    }
    /// The keys of `[admin]`.
    admin "[admin]" {
        listen: r#"string"#,
            r#"`"127.0.0.1:9900"`"#,
            r#"The address of the admin API and the Prometheus metrics; `"off"` disables it. A non-loopback address is allowed, but then the bearer token is all that protects `/v1/` (and `/metrics` needs none), so keep it on loopback unless you must."#;
        token_file: r#"path"#,
            r#"unset (`<state dir>/admin.token`)"#,
            r#"A file holding the admin API's bearer token (not readable by group or others). Without it, the token is `<state dir>/admin.token`, generated on the first start. See [admin-api.md](admin-api.md#authentication)."#;
    }
    /// The keys of `[state]`.
    state "[state]" {
        dir: r#"path"#,
            r#"`$STATE_DIRECTORY`, else per-user data directory"#,
            r#"The directory of the persisted state (and of the generated admin token). Unset, it is the first path of `$STATE_DIRECTORY` (which systemd sets from the unit's `StateDirectory=`; several are separated by `:`), else the platform's local data directory plus `mtguard` (on Linux `$XDG_DATA_HOME/mtguard` or `~/.local/share/mtguard`), else `$HOME/.local/share/mtguard`, else `./mtguard-state`. The shipped systemd units set `StateDirectory=mtguard`, so under them it is `/var/lib/mtguard`."#;
    }
    /// The keys of `[hsm]`.
    hsm "[hsm]" {
        module: r#"path"#,
            r#"required"#,
            r#"Path of the token vendor's PKCS#11 module (SoftHSM2 on Debian: `/usr/lib/softhsm/libsofthsm2.so`)."#;
        token: r#"string"#,
            r#"required"#,
            r#"The token's label (1 to 32 printable ASCII characters)."#;
        pin_file: r#"path"#,
            r#"unset"#,
            r#"A file holding the user PIN (surrounding whitespace ignored). Exactly one of `pin_file` and `pin_env` must be set."#;
        pin_env: r#"string"#,
            r#"unset"#,
            r#"The name of the environment variable holding the user PIN."#;
        integrity_key: r#"string"#,
            r#"`"mtguard-integrity"`"#,
            r#"The label of the token key that seals the state file and pins files. It is generated in the token on first use."#;
    }
    /// The keys of `[crowdsec]`.
    crowdsec "[crowdsec]" {
        lapi_url: r#"string"#,
            r#"required"#,
            r#"The CrowdSec Local API, `http://HOST:PORT` on loopback or a private network, or `https://HOST:PORT` (its certificate checked against `ca_cert_path`, else the Mozilla roots)."#;
        api_key_file: r#"path"#,
            r#"unset"#,
            r#"A file holding a bouncer key (`cscli bouncers add mtguard -o raw`). With it, the guard follows the decision stream."#;
        poll_interval: r#"duration"#,
            r#"`"10s"`"#,
            r#"How often the decision stream is polled."#;
        machine_id: r#"string"#,
            r#"unset"#,
            r#"A machine registered with `cscli machines add NAME --password ...`. With it, the guard reports its blocks and detections as alerts. Needs `password_file`."#;
        password_file: r#"path"#,
            r#"unset"#,
            r#"A file holding that machine's password."#;
        api_url: r#"string"#,
            r#"unset"#,
            r#"Another name for `lapi_url`, the one CrowdSec's bouncers use; set one of the two."#;
        api_key: r#"string"#,
            r#"unset"#,
            r#"The bouncer key itself, as CrowdSec's bouncers take it, instead of `api_key_file`; set one of the two. The config then holds a secret: keep it unreadable by other users (the package installs it `root:mtguard` 0640)."#;
        update_frequency: r#"duration"#,
            r#"`"10s"`"#,
            r#"Another name for `poll_interval`, the one CrowdSec's bouncers use; set one of the two."#;
        ca_cert_path: r#"path"#,
            r#"unset"#,
            r#"With an `https` `lapi_url`: the PEM file of the CA that signed the Local API's certificate (CrowdSec's `api.server.tls` `cert_file`). Unset: the Mozilla roots. The certificate must name the URL's host."#;
        cert_path: r#"path"#,
            r#"unset"#,
            r#"With an `https` `lapi_url`: a client certificate (PEM) to present; a Local API with TLS authentication accepts it instead of a bouncer key (OU in `bouncers_allowed_ou`) or a machine password (`agents_allowed_ou`). Needs `key_path`."#;
        key_path: r#"path"#,
            r#"unset"#,
            r#"The private key (PEM) of `cert_path`."#;
        insecure_skip_verify: r#"boolean"#,
            r#"`false`"#,
            r#"Accepted only as `false`, so bouncer configs carry over: the guard always verifies the Local API's certificate (set `ca_cert_path` for a private CA)."#;
    }
    /// The keys of `[kernel]`.
    kernel "[kernel]" {
        nft_set: r#"string"#,
            r#"`"off"`"#,
            r#"`"FAMILY TABLE SET"` (`"inet mtguard blocked"` with the shipped ruleset). Every block is mirrored into that nftables set (IPv4 clients) and into `SET6` (IPv6 client prefixes), with the block's remaining time as the element's timeout. FAMILY is `ip`, `ip6` or `inet`. It needs the `nft` command and `CAP_NET_ADMIN`, and the sets must exist at start."#;
    }
}

/// The defaults that are plain values, in one place: `embedded_default`
/// and the parser take them from here, and the test
/// `writing_every_documented_default_changes_nothing` holds them to the
/// declarations' `default` text.
pub(super) mod default {
    use std::time::Duration;

    /// `[server] connect_timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[server] idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    /// `[server] listen`'s one address, on loopback.
    pub const LISTEN_PORT: u16 = 4443;
    /// `[server] backend`.
    pub const BACKEND: &str = "127.0.0.1:8443";
    /// `[admin] listen`'s port, on loopback.
    pub const ADMIN_PORT: u16 = 9900;
    /// `level`.
    pub const LEVEL: u8 = 1;
    /// `[mtproto] time_skew`.
    pub const TIME_SKEW: Duration = Duration::from_secs(120);
    /// `[mtproto] time_skew_ahead`.
    pub const TIME_SKEW_AHEAD: Duration = Duration::from_secs(3);
    /// `[crowdsec] poll_interval`.
    pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
    /// `[refresh] interval`.
    pub const REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
}

/// The keys `[server.backend_tls]` and `[refresh]` share, so the code that
/// reads and shows them takes one table's declarations.
pub(super) struct PinningKeys {
    pub(super) pins: Key,
    pub(super) pins_file: Key,
    pub(super) trust: Key,
    pub(super) ca_file: Key,
    pub(super) on_expired: Key,
}

impl PinningKeys {
    /// The table, as `check-config` heads its rows.
    pub(super) const fn table(&self) -> &'static str {
        self.pins.table
    }
}

/// `[server.backend_tls]`'s pinning keys.
pub(super) const BACKEND_TLS_PINNING: PinningKeys = PinningKeys {
    pins: key::backend_tls::pins,
    pins_file: key::backend_tls::pins_file,
    trust: key::backend_tls::trust,
    ca_file: key::backend_tls::ca_file,
    on_expired: key::backend_tls::on_expired,
};

/// `[refresh]`'s pinning keys.
pub(super) const REFRESH_PINNING: PinningKeys = PinningKeys {
    pins: key::refresh::pins,
    pins_file: key::refresh::pins_file,
    trust: key::refresh::trust,
    ca_file: key::refresh::ca_file,
    on_expired: key::refresh::on_expired,
};

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
        let parsed: Vec<&str> = LimitsConfig::KEYS.iter().map(|(k, _)| k.name).collect();
        assert_eq!(declared, parsed);
    }
}

#[cfg(test)]
mod default_tests {
    use super::*;
    use crate::config::Config;

    /// A table that parses on its own, so that one key can be added to it:
    /// the keys each table requires, none of them with a plain default.
    fn table_text(table: &str) -> String {
        match table {
            "" => String::new(),
            "[hsm]" => "[hsm]\nmodule = \"m.so\"\ntoken = \"t\"\npin_env = \"PIN\"\n".into(),
            "[crowdsec]" => {
                "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080/\"\napi_key_file = \"k\"\n".into()
            }
            "[refresh]" => "[refresh]\nconfig_url = \"https://core.telegram.org/getProxyConfig\"\n\
                            config_out = \"o\"\npins_file = \"p\"\n"
                .into(),
            t => format!("{t}\n"),
        }
    }

    /// The value of a default the reference writes as one TOML value in
    /// backticks (`` `"5s"` ``); `None` for one it describes in words.
    fn plain_default(key: &Key) -> Option<&'static str> {
        let inner = key.default.strip_prefix('`')?.strip_suffix('`')?;
        (!inner.contains('`')).then_some(inner)
    }

    fn parse(text: &str) -> (Config, mtguard_core::Policy) {
        let mut config = Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{text}: {e}"));
        let policy = config.effective_policy(None).unwrap();
        // Only where a value came from may differ; a `[limits]` key is
        // compared through the policy it makes (set or left to level 1's
        // preset, the reference's default).
        config.lines.clear();
        config.limits = LimitsConfig::default();
        (config, policy)
    }

    /// Writing a key's documented default changes nothing: the default the
    /// reference states is the one the parser and `embedded_default` use.
    #[test]
    fn writing_every_documented_default_changes_nothing() {
        let mut described = Vec::new();
        for key in KEYS {
            let Some(value) = plain_default(key) else {
                described.push(key.path());
                continue;
            };
            let base = table_text(key.table);
            let with = format!("{base}{} = {value}\n", key.name);
            assert_eq!(
                parse(&with),
                parse(&base),
                "{}: the documented default {} is not the default",
                key.path(),
                key.default
            );
        }
        // Every other default is described in words: each must be one the
        // parser cannot be told in the file, listed here on purpose.
        assert_eq!(
            described,
            [
                "[server.backend_tls] server_name",
                "[server.backend_tls] pins_file",
                "[server.backend_tls] ca_file",
                "[server.backend_tls] on_expired",
                "[mtproto] inspect",
                "[mtproto] on_probe",
                "[mtproto] mask_backend",
                "[mtproto] handshake_timeout",
                "[refusal] failed_handshake",
                "[refusal] replay",
                "[refusal] blocked",
                "[refusal] delay_min",
                "[refusal] delay_max",
                "[refusal] tls_alerts",
                "[refresh] config_url",
                "[refresh] config_out",
                "[refresh] secret_url",
                "[refresh] secret_out",
                "[refresh] jitter",
                "[refresh] pins_file",
                "[refresh] ca_file",
                "[refresh] on_expired",
                "[admin] token_file",
                "[state] dir",
                "[hsm] module",
                "[hsm] token",
                "[hsm] pin_file",
                "[hsm] pin_env",
                "[crowdsec] lapi_url",
                "[crowdsec] api_key_file",
                "[crowdsec] machine_id",
                "[crowdsec] password_file",
                "[crowdsec] api_url",
                "[crowdsec] api_key",
                "[crowdsec] ca_cert_path",
                "[crowdsec] cert_path",
                "[crowdsec] key_path",
            ]
        );
    }
}
