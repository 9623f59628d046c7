//! The policy enforced end to end through the guard on loopback, each client
//! on its own 127.x.y.z source address: rate limit, automatic block and its
//! expiry, escalation, allow and deny lists (inline and from a file), and
//! under-attack mode.

use std::net::{IpAddr, Ipv4Addr};
use std::thread::sleep;
use std::time::Duration;

use mtguard::config::Config;
use mtguard_core::{Level, Policy};
use mtguard_tests::{connect_from, served, served_from, test_guard, EchoBackend, Relay};

struct Harness {
    relay: Relay,
    _backend: EchoBackend,
}

impl std::ops::Deref for Harness {
    type Target = Relay;
    fn deref(&self) -> &Relay {
        &self.relay
    }
}

fn base_policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.block_jitter_permille = 0;
    p.attack_enter_per_second = None;
    p
}

fn harness(policy: Policy, config_lists: Option<&Config>) -> Harness {
    let backend = EchoBackend::start();
    let guard = test_guard(policy);
    if let Some(config) = config_lists {
        let lists = mtguard::server::bootstrap::load_lists(config).unwrap();
        guard.set_config_lists(&lists.allow, &lists.deny).unwrap();
    }
    Harness {
        relay: Relay::start(guard, backend.addr, None),
        _backend: backend,
    }
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

impl Harness {
    /// Connects from `from`, exchanges a line and closes: was it served?
    fn try_once(&self, from: IpAddr) -> bool {
        served_from(from, self.listen)
    }

    fn blocked(&self, from: IpAddr) -> bool {
        self.guard.with(|e, _| e.is_blocked(from))
    }
}

#[test]
fn the_rate_limit_refuses_the_connection_after_the_window_allowance() {
    let mut p = base_policy();
    p.rate_window = Duration::from_secs(2);
    p.max_new_connections_per_window = 3;
    p.block_after_violations = 100;
    let h = harness(p, None);
    let client = ip(10, 0, 1);
    for _ in 0..3 {
        assert!(h.try_once(client));
    }
    assert!(!h.try_once(client), "the fourth in the window is refused");
    assert!(h.try_once(ip(10, 0, 2)), "another client is unaffected");
    // Two windows later the allowance is back.
    sleep(Duration::from_millis(4_200));
    assert!(h.try_once(client));
    let rejected = h
        .guard
        .with(|e, _| e.stats().rejected[mtguard_core::RejectReason::RateLimited as usize]);
    assert_eq!(rejected, 1);
}

#[test]
fn automatic_blocks_expire_and_repeat_offences_double_them() {
    let mut p = base_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    p.block_duration = Duration::from_millis(800);
    p.max_block_duration = Duration::from_secs(10);
    let h = harness(p, None);
    let client = ip(11, 0, 1);
    let offend = |h: &Harness| {
        h.wait_until("earlier connections to close", |e| {
            e.active_connections() == 0
        });
        let mut held = connect_from(client, h.listen).unwrap();
        assert!(served(&mut held));
        assert!(!h.try_once(client), "over the limit");
        assert!(h.blocked(client));
        drop(held);
    };
    offend(&h);
    assert!(!h.try_once(client), "blocked");
    sleep(Duration::from_millis(1_100));
    assert!(!h.blocked(client), "an 800 ms block has expired");
    assert!(h.try_once(client));
    // Second offence: 1.6 s.
    offend(&h);
    sleep(Duration::from_millis(1_100));
    assert!(h.blocked(client), "the second block lasts twice as long");
    sleep(Duration::from_millis(900));
    assert!(!h.blocked(client));
    assert!(h.try_once(client));
    let offences = h
        .guard
        .with(|e, _| e.client_info(client).map(|c| c.offences));
    assert_eq!(offences, Some(2));
}

#[test]
fn allow_and_deny_lists_inline_and_from_a_netset_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deny.netset"),
        "# FireHOL-style list\n127.13.0.0/16\n\n127.14.1.1 # one host\n",
    )
    .unwrap();
    let config_path = dir.path().join("mtguard.toml");
    std::fs::write(
        &config_path,
        "[lists]\nallow = [\"127.13.7.0/24\"]\ndeny = [\"127.12.0.0/16\"]\ndeny_files = [\"deny.netset\"]\n",
    )
    .unwrap();
    let config = mtguard::server::bootstrap::load_config(&config_path).unwrap();
    let mut p = base_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    let h = harness(p, Some(&config));
    assert!(!h.try_once(ip(12, 0, 1)), "inline deny");
    assert!(!h.try_once(ip(13, 0, 1)), "deny from the file");
    assert!(!h.try_once(ip(14, 1, 1)), "single address from the file");
    assert!(h.try_once(ip(14, 1, 2)));
    // Allow beats deny, and allowlisted clients are never limited.
    let allowed = ip(13, 7, 9);
    let held: Vec<_> = (0..5)
        .map(|_| {
            let mut c = connect_from(allowed, h.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    assert!(!h.blocked(allowed));
    drop(held);
}

#[test]
fn under_attack_mode_halves_per_client_limits_during_a_flood() {
    let mut p = base_policy();
    p.attack_enter_per_second = Some(40);
    p.attack_exit_per_second = 10;
    p.attack_cooldown = Duration::from_secs(1);
    p.attack_limit_percent = 50;
    p.max_connections_per_client = 4;
    p.block_after_violations = 100;
    let h = harness(p, None);
    // A quick burst from many addresses trips the global detector.
    for i in 0..60u8 {
        let _ = connect_from(ip(20, 1, i), h.listen);
    }
    h.wait_until("under-attack mode", |e| e.under_attack());
    h.wait_until("the burst to close", |e| e.active_connections() == 0);
    let client = ip(20, 2, 1);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect_from(client, h.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    assert!(!h.try_once(client), "two of four while under attack");
    // Calm for longer than the cooldown: the limits are back.
    // (Rates are read per second, so leaving takes two to three seconds.)
    h.wait_until("the end of under-attack mode", |e| !e.under_attack());
    assert!(
        h.try_once(client),
        "a third connection once the attack is over"
    );
    drop(held);
}
