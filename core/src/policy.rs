//! Policy: every threshold the engine enforces, and the four security levels.
//!
//! A level is a complete preset; an operator starts from one and overrides
//! single thresholds. Validation happens here, once, so the hot path can
//! trust every number it reads.

use core::fmt;
use core::time::Duration;

/// Security level presets, from 0 (minimal, for testing) to 3 (maximum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Level {
    /// Minimal: generous limits, nobody is blocked. For testing.
    Minimal = 0,
    /// Standard: the seed's defaults (100 connections per IP, 60 s window,
    /// 300 s blocks, IP blocking on). Recommended for most deployments.
    Standard = 1,
    /// High: tighter limits, replays block at once, longer blocks.
    High = 2,
    /// Maximum: tightest limits; may refuse heavy legitimate users.
    Maximum = 3,
}

impl Level {
    /// The level for a number 0–3.
    pub fn from_number(n: u8) -> Option<Level> {
        match n {
            0 => Some(Level::Minimal),
            1 => Some(Level::Standard),
            2 => Some(Level::High),
            3 => Some(Level::Maximum),
            _ => None,
        }
    }

    /// The number 0–3 of this level.
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// Every threshold of the engine. Start from [`Policy::for_level`] and
/// override fields; [`Policy::validate`] runs when the policy is handed to the
/// engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The level this policy started from (reported, not enforced).
    pub level: Level,
    /// IPv6 clients are accounted per prefix of this length (one host owns a
    /// whole /64 in most deployments). 1–128.
    pub ipv6_prefix: u8,
    /// Concurrent connections one client may hold that are not
    /// authenticated: pending (handshake not judged yet) or judged without a
    /// secret to check against. All that someone without a secret can make.
    pub max_connections_per_client: u16,
    /// Concurrent authenticated connections (handshake valid for one of the
    /// secrets) one client may hold besides. Larger than
    /// [`Policy::max_connections_per_client`]: behind a carrier NAT one
    /// address is many people, and each Telegram client opens 3 to 8
    /// connections. Refusals at this cap are not violations. Not scaled in
    /// under-attack mode: a flood is made of strangers, and those who prove
    /// a secret are the users the mode protects.
    pub max_authenticated_per_client: u16,
    /// Length of the per-client rate window.
    pub rate_window: Duration,
    /// New connections one client may open per rate window.
    pub max_new_connections_per_window: u16,
    /// Concurrent connections across all clients (capped by the connection
    /// table's capacity).
    pub global_max_connections: u32,
    /// New connections per second across all clients (connection throttling).
    pub global_max_new_per_second: u32,
    /// Whether clients that keep violating limits are blocked. When off,
    /// violations are still refused, but nobody is blocked automatically.
    pub ip_blocking: bool,
    /// Refusals within one rate window after which a client is blocked.
    pub block_after_violations: u8,
    /// Length of a first automatic block.
    pub block_duration: Duration,
    /// Cap of an escalated block (each repeat offence doubles the duration).
    pub max_block_duration: Duration,
    /// Each automatic block is lengthened by a random part of up to this many
    /// thousandths of its duration, so a botnet cannot predict the unban.
    pub block_jitter_permille: u16,
    /// How long a client's offence history is remembered after it was last
    /// seen; escalation restarts after that.
    pub offence_memory: Duration,
    /// Failed handshakes within one rate window that mark a scanner.
    pub scanner_failures: u8,
    /// For a client with recent valid handshakes (a shared address: a
    /// carrier NAT, an office), failed handshakes mark a scanner only once
    /// they are also at least this percentage of its recent handshakes
    /// (failed and valid): one scanner or broken app among many users does
    /// not lock them out, a flood of failures still does. The same share
    /// applies to handshake timeouts. 1–100; 100 means only failures.
    pub shared_failure_percent: u8,
    /// Whether a replayed handshake blocks the client at once (otherwise it
    /// counts as a failed handshake).
    pub block_on_replay: bool,
    /// A connection that has not completed its handshake after this long is
    /// timed out (slowloris). `None` disables the deadline.
    pub handshake_timeout: Option<Duration>,
    /// Handshake timeouts within one rate window that mark a slowloris client.
    pub slowloris_timeouts: u8,
    /// Global new connections per second that switch on under-attack mode.
    /// `None` disables the mode.
    pub attack_enter_per_second: Option<u32>,
    /// Under-attack mode ends once the global rate stays below this for
    /// [`Policy::attack_cooldown`] (hysteresis).
    pub attack_exit_per_second: u32,
    /// How long the rate must stay below the exit threshold.
    pub attack_cooldown: Duration,
    /// Under attack, per-client limits are scaled to this percentage (the
    /// per-network ones too).
    pub attack_limit_percent: u8,
    /// Concurrent connections that are not authenticated (pending, or
    /// judged without a secret) one network may hold, across all its
    /// clients; 0 is off. A network is the IPv4 prefix of
    /// [`Policy::network_prefix_v4`] bits or the IPv6 prefix of
    /// [`Policy::network_prefix_v6`] bits. Authenticated connections are
    /// not counted, as they are not against
    /// [`Policy::max_connections_per_client`]: a carrier's /24 is full of
    /// real users, and only strangers are what this tier bounds. Its
    /// refusals are not violations: they never block anyone.
    pub max_connections_per_network: u32,
    /// New connections one network may open per rate window; 0 is off.
    /// A connection that authenticates is refunded, as at the client tier.
    pub max_new_connections_per_network: u16,
    /// Length of the IPv4 prefix a network is, 1–32.
    pub network_prefix_v4: u8,
    /// Length of the IPv6 prefix a network is, 1–64; when longer than
    /// [`Policy::ipv6_prefix`], that is used instead (a network never
    /// splits a client).
    pub network_prefix_v6: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::for_level(Level::Standard)
    }
}

impl Policy {
    /// The complete preset of a level.
    pub const fn for_level(level: Level) -> Policy {
        const fn s(secs: u64) -> Duration {
            Duration::from_secs(secs)
        }
        match level {
            Level::Minimal => Policy {
                level,
                ipv6_prefix: 64,
                max_connections_per_client: 1_000,
                max_authenticated_per_client: 10_000,
                rate_window: s(60),
                max_new_connections_per_window: 10_000,
                global_max_connections: 1_000_000,
                global_max_new_per_second: 100_000,
                ip_blocking: false,
                block_after_violations: 50,
                block_duration: s(60),
                max_block_duration: s(3_600),
                block_jitter_permille: 0,
                offence_memory: s(3_600),
                scanner_failures: 100,
                shared_failure_percent: 100,
                block_on_replay: false,
                handshake_timeout: Some(s(30)),
                slowloris_timeouts: 100,
                attack_enter_per_second: None,
                attack_exit_per_second: 0,
                attack_cooldown: s(30),
                attack_limit_percent: 100,
                max_connections_per_network: 0,
                max_new_connections_per_network: 0,
                network_prefix_v4: 24,
                network_prefix_v6: 48,
            },
            Level::Standard => Policy {
                level,
                ipv6_prefix: 64,
                max_connections_per_client: 100,
                max_authenticated_per_client: 1_000,
                rate_window: s(60),
                max_new_connections_per_window: 300,
                global_max_connections: 50_000,
                global_max_new_per_second: 5_000,
                ip_blocking: true,
                block_after_violations: 20,
                block_duration: s(300),
                max_block_duration: s(86_400),
                block_jitter_permille: 100,
                offence_memory: s(86_400),
                scanner_failures: 10,
                shared_failure_percent: 50,
                block_on_replay: false,
                handshake_timeout: Some(s(10)),
                slowloris_timeouts: 10,
                attack_enter_per_second: Some(2_000),
                attack_exit_per_second: 1_000,
                attack_cooldown: s(30),
                attack_limit_percent: 50,
                max_connections_per_network: 0,
                max_new_connections_per_network: 0,
                network_prefix_v4: 24,
                network_prefix_v6: 48,
            },
            Level::High => Policy {
                level,
                ipv6_prefix: 64,
                max_connections_per_client: 50,
                max_authenticated_per_client: 500,
                rate_window: s(60),
                max_new_connections_per_window: 120,
                global_max_connections: 30_000,
                global_max_new_per_second: 2_000,
                ip_blocking: true,
                block_after_violations: 10,
                block_duration: s(600),
                max_block_duration: s(7 * 86_400),
                block_jitter_permille: 200,
                offence_memory: s(7 * 86_400),
                scanner_failures: 5,
                shared_failure_percent: 34,
                block_on_replay: true,
                handshake_timeout: Some(s(10)),
                slowloris_timeouts: 5,
                attack_enter_per_second: Some(1_000),
                attack_exit_per_second: 500,
                attack_cooldown: s(60),
                attack_limit_percent: 25,
                max_connections_per_network: 500,
                max_new_connections_per_network: 1_000,
                network_prefix_v4: 24,
                network_prefix_v6: 48,
            },
            Level::Maximum => Policy {
                level,
                ipv6_prefix: 48,
                max_connections_per_client: 20,
                max_authenticated_per_client: 200,
                rate_window: s(60),
                max_new_connections_per_window: 60,
                global_max_connections: 10_000,
                global_max_new_per_second: 1_000,
                ip_blocking: true,
                block_after_violations: 5,
                block_duration: s(3_600),
                max_block_duration: s(30 * 86_400),
                block_jitter_permille: 250,
                offence_memory: s(30 * 86_400),
                scanner_failures: 3,
                shared_failure_percent: 25,
                block_on_replay: true,
                handshake_timeout: Some(s(5)),
                slowloris_timeouts: 3,
                attack_enter_per_second: Some(500),
                attack_exit_per_second: 250,
                attack_cooldown: s(120),
                attack_limit_percent: 25,
                max_connections_per_network: 200,
                max_new_connections_per_network: 400,
                network_prefix_v4: 24,
                network_prefix_v6: 48,
            },
        }
    }

    /// Checks that every threshold makes sense; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |field, problem| Err(PolicyError { field, problem });
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return fail("ipv6_prefix", "must be between 1 and 128");
        }
        if self.max_connections_per_client == 0 {
            return fail("max_connections_per_client", "must be at least 1");
        }
        if self.max_authenticated_per_client == 0 {
            return fail("max_authenticated_per_client", "must be at least 1");
        }
        if self.rate_window < Duration::from_millis(1) {
            return fail("rate_window", "must be at least 1 ms");
        }
        if self.rate_window > Duration::from_secs(86_400) {
            return fail("rate_window", "must be at most 24 hours");
        }
        if self.max_new_connections_per_window == 0 {
            return fail("max_new_connections_per_window", "must be at least 1");
        }
        if self.global_max_connections == 0 {
            return fail("global_max_connections", "must be at least 1");
        }
        if self.global_max_new_per_second == 0 {
            return fail("global_max_new_per_second", "must be at least 1");
        }
        if self.block_after_violations == 0 {
            return fail("block_after_violations", "must be at least 1");
        }
        if self.block_duration < Duration::from_millis(1) {
            return fail("block_duration", "must be at least 1 ms");
        }
        if self.max_block_duration < self.block_duration {
            return fail(
                "max_block_duration",
                "must not be shorter than block_duration",
            );
        }
        if self.block_jitter_permille > 1000 {
            return fail("block_jitter_permille", "must be at most 1000");
        }
        if self.scanner_failures == 0 {
            return fail("scanner_failures", "must be at least 1");
        }
        if self.shared_failure_percent == 0 || self.shared_failure_percent > 100 {
            return fail("shared_failure_percent", "must be between 1 and 100");
        }
        if self.slowloris_timeouts == 0 {
            return fail("slowloris_timeouts", "must be at least 1");
        }
        if self.handshake_timeout == Some(Duration::ZERO) {
            return fail("handshake_timeout", "must be longer than zero");
        }
        if let Some(enter) = self.attack_enter_per_second {
            if self.attack_exit_per_second > enter {
                return fail(
                    "attack_exit_per_second",
                    "must not exceed attack_enter_per_second (hysteresis)",
                );
            }
        }
        if self.attack_limit_percent == 0 || self.attack_limit_percent > 100 {
            return fail("attack_limit_percent", "must be between 1 and 100");
        }
        if self.network_prefix_v4 == 0 || self.network_prefix_v4 > 32 {
            return fail("network_prefix_v4", "must be between 1 and 32");
        }
        if self.network_prefix_v6 == 0 || self.network_prefix_v6 > 64 {
            return fail("network_prefix_v6", "must be between 1 and 64");
        }
        Ok(())
    }

    /// Whether the network tier is on: either of its limits is set.
    pub fn network_tier(&self) -> bool {
        self.max_connections_per_network != 0 || self.max_new_connections_per_network != 0
    }
}

/// A policy field with an impossible value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The field, named as in [`Policy`] (and in the server's config).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl core::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_preset_is_valid_and_level_1_carries_the_seed_defaults() {
        for n in 0..=3 {
            let level = Level::from_number(n).unwrap();
            Policy::for_level(level).validate().unwrap();
            assert_eq!(level.number(), n);
        }
        assert_eq!(Level::from_number(4), None);
        let p = Policy::for_level(Level::Standard);
        assert_eq!(p.max_connections_per_client, 100);
        assert_eq!(p.rate_window, Duration::from_secs(60));
        assert_eq!(p.block_duration, Duration::from_secs(300));
        assert!(p.ip_blocking);
    }

    #[test]
    fn levels_tighten_monotonically() {
        let ps = [0, 1, 2, 3].map(|n| Policy::for_level(Level::from_number(n).unwrap()));
        for w in ps.windows(2) {
            assert!(w[1].max_connections_per_client < w[0].max_connections_per_client);
            assert!(w[1].max_new_connections_per_window < w[0].max_new_connections_per_window);
            assert!(w[1].scanner_failures < w[0].scanner_failures);
            assert!(w[1].max_authenticated_per_client < w[0].max_authenticated_per_client);
            assert!(w[1].shared_failure_percent <= w[0].shared_failure_percent);
            // Authenticated connections get more room than strangers at
            // every level: that is the point of telling them apart.
            assert!(w[1].max_authenticated_per_client > w[1].max_connections_per_client);
            assert!(w[1].block_duration >= w[0].block_duration);
        }
    }

    #[test]
    fn the_network_tier_is_off_at_levels_0_and_1_and_tightens_from_2_to_3() {
        let ps = [0, 1, 2, 3].map(|n| Policy::for_level(Level::from_number(n).unwrap()));
        assert!(!ps[0].network_tier() && !ps[1].network_tier());
        assert!(ps[2].network_tier() && ps[3].network_tier());
        assert!(ps[3].max_connections_per_network < ps[2].max_connections_per_network);
        assert!(ps[3].max_new_connections_per_network < ps[2].max_new_connections_per_network);
        for p in &ps[2..] {
            // A network holds many clients: its limits are several clients' worth.
            assert!(p.max_connections_per_network >= 10 * u32::from(p.max_connections_per_client));
            assert!(p.max_new_connections_per_network > p.max_new_connections_per_window);
        }
        for p in &ps {
            assert_eq!((p.network_prefix_v4, p.network_prefix_v6), (24, 48));
        }
    }

    #[test]
    fn validation_names_the_field() {
        let broken = [
            Policy {
                max_block_duration: Duration::from_secs(1),
                ..Policy::default()
            },
            Policy {
                attack_exit_per_second: 5_000,
                ..Policy::default()
            },
            Policy {
                ipv6_prefix: 129,
                ..Policy::default()
            },
            Policy {
                network_prefix_v4: 33,
                ..Policy::default()
            },
            Policy {
                network_prefix_v6: 65,
                ..Policy::default()
            },
        ];
        let fields = broken.map(|p| p.validate().unwrap_err().field);
        assert_eq!(
            fields,
            [
                "max_block_duration",
                "attack_exit_per_second",
                "ipv6_prefix",
                "network_prefix_v4",
                "network_prefix_v6"
            ]
        );
    }
}
