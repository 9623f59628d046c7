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
