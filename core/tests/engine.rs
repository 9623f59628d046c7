//! The engine on virtual time: every rule of the policy, exactly, in
//! microseconds of test time.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::time::Duration;

use mtguard_core::cidr::{Cidr, CidrEntry, Origin};
use mtguard_core::storage::{Borrowed, Inline, Tables};
use mtguard_core::table::{ClientSlot, ConnSlot, NetworkSlot};
use mtguard_core::{
    BlockCause, ConnectionId, Event, HandshakeOutcome, Instant, Level, Policy, RejectReason,
    SecurityManager, Seed, UnblockCause, Verdict,
};

type Small = Inline<64, 512, 32>;

const SEED: Seed = Seed {
    hash_key: [0x5a; 16],
    jitter: 7,
};

fn quiet_policy() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.block_jitter_permille = 0;
    p.attack_enter_per_second = None;
    p.handshake_timeout = None;
    p
}

fn guard(policy: Policy) -> SecurityManager<Small> {
    SecurityManager::new(Small::tables(), policy, SEED, Instant::ZERO).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn admit<S: mtguard_core::Storage>(
    g: &mut SecurityManager<S>,
    t: Instant,
    ip: IpAddr,
) -> ConnectionId {
    match g.handle_connect(t, ip) {
        Verdict::Admit(c) => c,
        Verdict::Reject(r) => panic!("{ip} refused at {t:?}: {r:?}"),
    }
}

fn refused<S: mtguard_core::Storage>(
    g: &mut SecurityManager<S>,
    t: Instant,
    ip: IpAddr,
) -> RejectReason {
    match g.handle_connect(t, ip) {
        Verdict::Admit(c) => panic!("{ip} admitted at {t:?} as {c:?}"),
        Verdict::Reject(r) => r,
    }
}

fn events<S: mtguard_core::Storage>(g: &mut SecurityManager<S>) -> Vec<Event> {
    core::iter::from_fn(|| g.poll_event()).collect()
}

/// Drives time forward as a runtime would: wake at every `poll_timeout`.
fn run_until<S: mtguard_core::Storage>(g: &mut SecurityManager<S>, t: Instant) {
    while let Some(d) = g.poll_timeout() {
        if d > t {
            break;
        }
        g.handle_timeout(d);
        if g.poll_timeout() == Some(d) {
            break;
        }
    }
    g.handle_timeout(t);
}

#[test]
fn the_limit_th_connection_is_admitted_and_the_next_refused_until_one_closes() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 100;
    p.max_new_connections_per_window = 1_000;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 2);
    let conns: Vec<_> = (0..100).map(|i| admit(&mut g, at(i), ip)).collect();
    assert_eq!(
        refused(&mut g, at(200), ip),
        RejectReason::TooManyConnections
    );
    assert_eq!(g.active_connections(), 100);
    g.handle_close(at(300), conns[17]).unwrap();
    admit(&mut g, at(301), ip);
    assert_eq!(
        refused(&mut g, at(302), ip),
        RejectReason::TooManyConnections
    );
    // Another client is unaffected.
    admit(&mut g, at(303), v4(127, 0, 0, 3));
    assert_eq!(
        g.stats().rejected[RejectReason::TooManyConnections as usize],
        2
    );
}

#[test]
fn the_rate_window_slides_and_refusals_do_not_consume_it() {
    let mut p = quiet_policy();
    p.rate_window = Duration::from_secs(10);
    p.max_new_connections_per_window = 5;
    p.block_after_violations = 100;
    let mut g = guard(p);
    let ip = v4(127, 0, 1, 1);
    for i in 0..5 {
        let c = admit(&mut g, at(i), ip);
        g.handle_close(at(i), c).unwrap();
    }
    assert_eq!(refused(&mut g, at(9_999), ip), RejectReason::RateLimited);
    // Half-way through the next window half of the previous window still
    // counts: 5 * 5/10 = 2.5 -> 2, so three more fit.
    for _ in 0..3 {
        let c = admit(&mut g, at(15_000), ip);
        g.handle_close(at(15_000), c).unwrap();
    }
    assert_eq!(refused(&mut g, at(15_000), ip), RejectReason::RateLimited);
    // Two windows later everything is forgotten.
    for _ in 0..5 {
        let c = admit(&mut g, at(30_000), ip);
        g.handle_close(at(30_000), c).unwrap();
    }
}

#[test]
fn a_300_second_block_expires_exactly_on_time_in_virtual_time() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 3;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 9);
    let _held = admit(&mut g, at(0), ip);
    for _ in 0..2 {
        assert_eq!(
            refused(&mut g, at(10), ip),
            RejectReason::TooManyConnections
        );
    }
    assert!(!g.is_blocked(ip));
    assert_eq!(
        refused(&mut g, at(10), ip),
        RejectReason::TooManyConnections
    );
    assert!(g.is_blocked(ip));
    let until = at(10 + 300_000);
    assert_eq!(
        events(&mut g),
        vec![Event::Blocked {
            client: g.client_key(ip),
            cause: BlockCause::Violations,
            until: Some(until),
            offences: 1,
        }]
    );
    assert_eq!(refused(&mut g, at(20), ip), RejectReason::Blocked);
    assert_eq!(g.blocked_clients(), 1);
    run_until(&mut g, at(10 + 299_999));
    assert!(g.is_blocked(ip), "one millisecond early");
    run_until(&mut g, until);
    assert!(!g.is_blocked(ip));
    assert_eq!(
        events(&mut g),
        vec![Event::Unblocked {
            client: g.client_key(ip),
            cause: UnblockCause::Expired,
        }]
    );
    assert_eq!(g.blocked_clients(), 0);
}

#[test]
fn repeat_offenders_get_doubling_blocks_up_to_the_cap() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    p.block_duration = Duration::from_secs(100);
    p.max_block_duration = Duration::from_secs(350);
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 10);
    let _held = admit(&mut g, at(0), ip);
    let mut t = 1;
    for expected in [100_000, 200_000, 350_000, 350_000] {
        // A fresh window each time, so only this one refusal counts.
        t += 120_000;
        refused(&mut g, at(t), ip);
        let until = g.blocks().next().unwrap().until.unwrap();
        assert_eq!(until.as_millis() - t, expected);
        run_until(&mut g, until);
        assert!(!g.is_blocked(ip));
        t = until.as_millis();
    }
    assert_eq!(g.blocks().count(), 0);
}

#[test]
fn jitter_comes_from_the_seed_and_stays_within_its_bound() {
    let run = |jitter: u64| -> Vec<u64> {
        let mut p = quiet_policy();
        p.max_connections_per_client = 1;
        p.block_after_violations = 1;
        p.block_jitter_permille = 100;
        let seed = Seed {
            hash_key: [1; 16],
            jitter,
        };
        let mut g = SecurityManager::<Small>::new(Small::tables(), p, seed, Instant::ZERO).unwrap();
        (0..20u8)
            .map(|i| {
                let ip = v4(10, 0, 0, i);
                admit(&mut g, at(0), ip);
                refused(&mut g, at(0), ip);
                g.blocks()
                    .find(|b| b.client == g.client_key(ip))
                    .unwrap()
                    .until
                    .unwrap()
                    .as_millis()
            })
            .collect()
    };
    let a = run(1);
    assert_eq!(a, run(1), "same seed, same unban moments");
    assert_ne!(a, run(2), "another seed, other unban moments");
    assert!(a.iter().all(|&d| (300_000..=330_000).contains(&d)));
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() > 10, "jitter spreads unban moments: {a:?}");
}

#[test]
fn with_ip_blocking_off_violations_are_refused_but_nobody_is_blocked() {
    let mut p = quiet_policy();
    p.ip_blocking = false;
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    p.scanner_failures = 1;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 11);
    let c = admit(&mut g, at(0), ip);
    for _ in 0..50 {
        assert_eq!(refused(&mut g, at(1), ip), RejectReason::TooManyConnections);
    }
    g.handle_handshake(at(2), c, HandshakeOutcome::Invalid)
        .unwrap();
    assert!(!g.is_blocked(ip));
    assert_eq!(g.blocked_clients(), 0);
    assert_eq!(
        events(&mut g),
        vec![Event::ScannerDetected {
            client: g.client_key(ip)
        }]
    );
}

#[test]
fn manual_blocks_with_and_without_duration_and_unblock() {
    let mut g = guard(quiet_policy());
    let a = v4(127, 0, 0, 20);
    let b = v4(127, 0, 0, 21);
    g.block(at(0), a, Some(Duration::from_secs(60)), BlockCause::Manual)
        .unwrap();
    g.block(at(0), b, None, BlockCause::Manual).unwrap();
    assert_eq!(refused(&mut g, at(1), a), RejectReason::Blocked);
    assert_eq!(refused(&mut g, at(1), b), RejectReason::Blocked);
    run_until(&mut g, at(60_000));
    admit(&mut g, at(60_000), a);
    run_until(&mut g, at(86_400_000 * 30));
    assert_eq!(
        refused(&mut g, at(86_400_000 * 30), b),
        RejectReason::Blocked
    );
    assert!(g.unblock(at(86_400_000 * 30), b));
    assert!(!g.unblock(at(86_400_000 * 30), b));
    admit(&mut g, at(86_400_000 * 30), b);
    let evs = events(&mut g);
    assert!(evs.contains(&Event::Unblocked {
        client: g.client_key(b),
        cause: UnblockCause::Manual
    }));
}

#[test]
fn scanners_are_detected_once_and_blocked() {
    let mut p = quiet_policy();
    p.scanner_failures = 3;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 30);
    for i in 0..2 {
        let c = admit(&mut g, at(i), ip);
        g.handle_handshake(at(i), c, HandshakeOutcome::Invalid)
            .unwrap();
        g.handle_close(at(i), c).unwrap();
    }
    assert!(events(&mut g).is_empty());
    let c = admit(&mut g, at(5), ip);
    g.handle_handshake(at(5), c, HandshakeOutcome::Invalid)
        .unwrap();
    let evs = events(&mut g);
    assert_eq!(
        evs[0],
        Event::ScannerDetected {
            client: g.client_key(ip)
        }
    );
    assert!(matches!(
        evs[1],
        Event::Blocked {
            cause: BlockCause::Scanner,
            ..
        }
    ));
    assert_eq!(refused(&mut g, at(6), ip), RejectReason::Blocked);
    assert_eq!(g.stats().scanners, 1);
    assert_eq!(g.stats().handshakes[HandshakeOutcome::Invalid as usize], 3);
    // Only the first judgement of a connection counts.
    g.handle_handshake(at(7), c, HandshakeOutcome::Invalid)
        .unwrap();
    assert_eq!(g.stats().handshakes[HandshakeOutcome::Invalid as usize], 3);
}

#[test]
fn a_replay_blocks_at_once_at_level_2_and_counts_as_a_failure_at_level_1() {
    for (level, blocked) in [(Level::Standard, false), (Level::High, true)] {
        let mut p = Policy::for_level(level);
        p.block_jitter_permille = 0;
        let mut g = guard(p);
        let ip = v4(127, 0, 0, 40);
        let c = admit(&mut g, at(0), ip);
        g.handle_handshake(at(1), c, HandshakeOutcome::Replay)
            .unwrap();
        assert_eq!(g.is_blocked(ip), blocked, "{level:?}");
        let evs = events(&mut g);
        assert_eq!(
            evs[0],
            Event::ReplayDetected {
                client: g.client_key(ip)
            }
        );
        assert_eq!(g.stats().replays, 1);
    }
}

#[test]
fn handshakes_that_never_complete_time_out_and_mark_slowloris() {
    let mut p = quiet_policy();
    p.handshake_timeout = Some(Duration::from_secs(10));
    p.slowloris_timeouts = 3;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 50);
    let conns: Vec<_> = (0..3).map(|i| admit(&mut g, at(i * 1_000), ip)).collect();
    let ok = admit(&mut g, at(500), v4(127, 0, 0, 51));
    g.handle_handshake(at(600), ok, HandshakeOutcome::Valid)
        .unwrap();
    assert_eq!(g.poll_timeout().map(|t| t <= at(10_000)), Some(true));
    run_until(&mut g, at(9_999));
    assert!(events(&mut g).is_empty());
    run_until(&mut g, at(12_000));
    let evs = events(&mut g);
    let timeouts: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::HandshakeTimeout { connection } => Some(*connection),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, conns);
    assert!(evs.contains(&Event::SlowlorisDetected {
        client: g.client_key(ip)
    }));
    assert!(g.is_blocked(ip));
    assert!(!g.is_blocked(v4(127, 0, 0, 51)));
    for c in conns {
        g.handle_close(at(12_001), c).unwrap();
    }
    assert_eq!(g.active_connections(), 1);
    assert_eq!(g.stats().handshakes[HandshakeOutcome::Timeout as usize], 3);
}

#[test]
fn under_attack_mode_tightens_limits_and_leaves_with_hysteresis() {
    let mut p = quiet_policy();
    p.attack_enter_per_second = Some(100);
    p.attack_exit_per_second = 50;
    p.attack_cooldown = Duration::from_secs(5);
    p.attack_limit_percent = 10;
    p.max_connections_per_client = 20;
    p.global_max_new_per_second = 100_000;
    let mut g = guard(p);
    for i in 0..100u32 {
        admit(&mut g, at(10), v4(10, 1, 0, (i % 50) as u8));
    }
    assert!(g.under_attack());
    assert_eq!(
        events(&mut g),
        vec![Event::UnderAttack {
            rate_per_second: 100
        }]
    );
    // A client may now hold 2 connections, not 20.
    let ip = v4(127, 0, 0, 60);
    admit(&mut g, at(20), ip);
    admit(&mut g, at(20), ip);
    assert_eq!(
        refused(&mut g, at(20), ip),
        RejectReason::TooManyConnections
    );
    // Quiet from here on: the mode ends 5 s after the rate fell below 50/s.
    run_until(&mut g, at(2_000));
    assert!(g.under_attack(), "the rate is still high within the window");
    run_until(&mut g, at(20_000));
    assert!(!g.under_attack());
    assert_eq!(events(&mut g), vec![Event::AttackOver]);
    admit(&mut g, at(20_001), ip);
}

#[test]
fn global_limits_refuse_without_punishing_clients() {
    let mut p = quiet_policy();
    p.global_max_connections = 3;
    p.global_max_new_per_second = 1_000;
    let mut g = guard(p);
    let conns: Vec<_> = (0..3)
        .map(|i| admit(&mut g, at(0), v4(10, 0, 0, i)))
        .collect();
    assert_eq!(
        refused(&mut g, at(0), v4(10, 0, 0, 9)),
        RejectReason::GlobalConnectionLimit
    );
    g.handle_close(at(1), conns[0]).unwrap();
    admit(&mut g, at(1), v4(10, 0, 0, 9));

    let mut p = quiet_policy();
    p.global_max_new_per_second = 5;
    let mut g = guard(p);
    for i in 0..5 {
        admit(&mut g, at(1_000), v4(10, 0, 1, i));
    }
    assert_eq!(
        refused(&mut g, at(1_000), v4(10, 0, 1, 9)),
        RejectReason::GlobalRateLimit
    );
    assert_eq!(g.blocked_clients(), 0);
    admit(&mut g, at(3_000), v4(10, 0, 1, 9));
}

#[test]
fn ipv6_clients_are_accounted_per_prefix() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 2;
    let mut g = guard(p);
    let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
    let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 0, 0, 9));
    let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
    admit(&mut g, at(0), a);
    admit(&mut g, at(0), b);
    assert_eq!(refused(&mut g, at(0), a), RejectReason::TooManyConnections);
    admit(&mut g, at(0), other);
    assert_eq!(g.client_key(a), g.client_key(b));
    assert_ne!(g.client_key(a), g.client_key(other));
}

#[test]
fn allowlist_wins_over_denylist_and_blocks() {
    let mut g = guard(quiet_policy());
    g.deny_mut()
        .insert("127.1.0.0/16".parse::<Cidr>().unwrap(), Origin::Config)
        .unwrap();
    g.allow_mut()
        .insert("127.1.2.0/24".parse::<Cidr>().unwrap(), Origin::Config)
        .unwrap();
    assert_eq!(
        refused(&mut g, at(0), v4(127, 1, 3, 4)),
        RejectReason::Denylisted
    );
    admit(&mut g, at(0), v4(127, 1, 2, 4));
    assert_eq!(
        g.block(at(0), v4(127, 1, 2, 4), None, BlockCause::Manual),
        Err(mtguard_core::manager::CommandError::Allowlisted)
    );
    // Allowlisted clients are never limited.
    for _ in 0..500 {
        admit(&mut g, at(1), v4(127, 1, 2, 5));
    }
    assert_eq!(
        g.tracked_clients(),
        0,
        "allowlisted clients take no client slot"
    );
}

#[test]
fn a_full_table_evicts_the_least_recently_seen_idle_client_and_never_a_busy_one() {
    type Tiny = Inline<4, 64, 4>;
    let mut g =
        SecurityManager::<Tiny>::new(Tiny::tables(), quiet_policy(), SEED, Instant::ZERO).unwrap();
    let ips: Vec<_> = (1..=6).map(|i| v4(127, 0, 9, i)).collect();
    let held = admit(&mut g, at(0), ips[0]); // live: never evicted
    g.block(at(0), ips[1], None, BlockCause::Manual).unwrap(); // blocked: never evicted
    for (t, ip) in [(1, ips[2]), (2, ips[3])] {
        let c = admit(&mut g, at(t), ip);
        g.handle_close(at(t), c).unwrap();
    }
    assert_eq!(g.tracked_clients(), 4);
    // ips[2] was seen least recently among the idle ones.
    let c = admit(&mut g, at(3), ips[4]);
    assert_eq!(g.stats().evictions, 1);
    assert_eq!(g.tracked_clients(), 4);
    g.handle_close(at(4), c).unwrap();
    // Touch ips[3] so ips[4] becomes the least recently seen.
    let c = admit(&mut g, at(5), ips[3]);
    g.handle_close(at(5), c).unwrap();
    admit(&mut g, at(6), ips[5]).to_bits();
    assert_eq!(g.stats().evictions, 2);
    // Everything left is live or blocked now? ips[3] is idle; take it and
    // then nothing can be evicted.
    admit(&mut g, at(7), ips[3]);
    assert_eq!(
        refused(&mut g, at(8), v4(127, 0, 9, 99)),
        RejectReason::ClientTableFull
    );
    assert_eq!(
        refused(&mut g, at(9), v4(127, 0, 9, 98)),
        RejectReason::ClientTableFull
    );
    let full_events = events(&mut g)
        .into_iter()
        .filter(|e| *e == Event::ClientTableFull)
        .count();
    assert_eq!(full_events, 1, "one event per episode");
    // Known clients keep being served.
    let second = admit(&mut g, at(10), ips[0]);
    assert!(g.is_blocked(ips[1]));
    g.handle_close(at(11), held).unwrap();
    g.handle_close(at(11), second).unwrap();
    admit(&mut g, at(12), v4(127, 0, 9, 99));
}

#[test]
fn idle_offenders_outlive_clean_clients_under_eviction_pressure() {
    type Tiny = Inline<2, 64, 4>;
    let mut p = quiet_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 1;
    p.block_duration = Duration::from_secs(1);
    p.max_block_duration = Duration::from_secs(1);
    let mut g = SecurityManager::<Tiny>::new(Tiny::tables(), p, SEED, Instant::ZERO).unwrap();
    let attacker = v4(127, 0, 7, 1);
    let c = admit(&mut g, at(0), attacker);
    refused(&mut g, at(0), attacker);
    g.handle_close(at(1), c).unwrap();
    run_until(&mut g, at(2_000));
    assert!(!g.is_blocked(attacker));
    // Rotate fresh addresses through the remaining slot: the attacker's
    // offence history stays, the clean clients are the ones evicted.
    for i in 0..50 {
        let c = admit(&mut g, at(3_000 + i), v4(127, 0, 8, i as u8));
        g.handle_close(at(3_000 + i), c).unwrap();
    }
    let c = admit(&mut g, at(4_000), attacker);
    refused(&mut g, at(4_000), attacker);
    g.handle_close(at(4_000), c).unwrap();
    let block = g.blocks().next().unwrap();
    assert_eq!(block.offences, 2, "escalation survived the flood");
}

#[test]
fn stale_connection_ids_are_refused_and_counted() {
    let mut g = guard(quiet_policy());
    let c = admit(&mut g, at(0), v4(127, 0, 0, 70));
    g.handle_close(at(1), c).unwrap();
    assert!(g.handle_close(at(2), c).is_err());
    assert!(g
        .handle_handshake(at(2), c, HandshakeOutcome::Valid)
        .is_err());
    // The slot is reused with a new generation; the old id stays dead.
    let d = admit(&mut g, at(3), v4(127, 0, 0, 71));
    assert_ne!(c, d);
    assert!(g.handle_close(at(4), c).is_err());
    assert_eq!(g.active_connections(), 1);
    assert_eq!(g.stats().stale_connection_ids, 3);
}

#[test]
fn a_clock_that_steps_back_neither_reopens_windows_nor_shortens_blocks() {
    let mut p = quiet_policy();
    p.max_new_connections_per_window = 1;
    p.block_after_violations = 100;
    let mut g = guard(p);
    let ip = v4(127, 0, 0, 80);
    admit(&mut g, at(120_000), ip);
    assert_eq!(refused(&mut g, at(0), ip), RejectReason::RateLimited);
    g.block(at(0), ip, Some(Duration::from_secs(10)), BlockCause::Manual)
        .unwrap();
    assert_eq!(
        g.blocks().next().unwrap().until,
        Some(at(130_000)),
        "measured from the latest time seen"
    );
}

#[test]
fn idle_clients_are_forgotten_after_two_windows() {
    let mut g = guard(quiet_policy());
    for i in 0..10 {
        let c = admit(&mut g, at(0), v4(127, 0, 3, i));
        g.handle_close(at(0), c).unwrap();
    }
    assert_eq!(g.tracked_clients(), 10);
    run_until(&mut g, at(119_999));
    assert_eq!(g.tracked_clients(), 10);
    run_until(&mut g, at(120_000));
    assert_eq!(g.tracked_clients(), 0);
    assert_eq!(g.poll_timeout(), None, "nothing left to wake up for");
}

/// Addresses an attacker would pick against an unkeyed table: all equal
/// modulo 65,536, so `addr % buckets` puts every one in the same bucket.
#[test]
fn addresses_colliding_under_an_unkeyed_hash_still_cost_o1_each() {
    const N: usize = 65_536;
    let mut clients = vec![ClientSlot::EMPTY; N];
    let mut buckets = vec![u32::MAX; N];
    let mut conns = vec![ConnSlot::EMPTY; 1_024];
    let mut allow = vec![CidrEntry::EMPTY; 4];
    let mut deny = vec![CidrEntry::EMPTY; 4];
    let mut networks = vec![NetworkSlot::EMPTY; 1_024];
    let mut network_buckets = vec![u32::MAX; 1_024];
    let tables: Tables<Borrowed<'_>> = Tables {
        clients: &mut clients,
        buckets: &mut buckets,
        connections: &mut conns,
        allow: &mut allow,
        deny: &mut deny,
        networks: &mut networks,
        network_buckets: &mut network_buckets,
    };
    let mut p = quiet_policy();
    p.global_max_new_per_second = u32::MAX;
    p.handshake_timeout = None;
    let mut g = SecurityManager::new(tables, p, SEED, Instant::ZERO).unwrap();
    let colliding: Vec<IpAddr> = (0..50_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from((i << 16) | 1)))
        .collect();
    for ip in &colliding {
        let c = admit(&mut g, at(1), *ip);
        g.handle_close(at(1), c).unwrap();
    }
    assert_eq!(g.tracked_clients(), 50_000);
    let longest = colliding.iter().map(|ip| g.chain_len(*ip)).max().unwrap();
    // With 50,000 keys in 65,536 buckets under a random hash the longest
    // chain is about 8; an unkeyed modulo hash would make it 50,000.
    assert!(longest <= 12, "longest chain {longest}");
}

#[test]
fn construction_rejects_unusable_tables_and_policies() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 0;
    let err = SecurityManager::<Small>::new(Small::tables(), p, SEED, Instant::ZERO)
        .err()
        .unwrap();
    assert!(err.to_string().contains("max_connections_per_client"));
    type NoConns = Inline<4, 0, 1>;
    assert!(SecurityManager::<NoConns>::new(
        NoConns::tables(),
        quiet_policy(),
        SEED,
        Instant::ZERO
    )
    .is_err());
}

/// The memory an attack can make the engine use, for both presets: the
/// docs/core.md quotes these numbers.
#[test]
fn memory_is_a_number_we_can_state() {
    use core::mem::size_of;
    use mtguard_core::storage::{AppliancePreset, ServerPreset};
    assert_eq!(size_of::<ClientSlot>(), 80);
    assert_eq!(size_of::<ConnSlot>(), 32);
    assert_eq!(size_of::<CidrEntry>(), 32);
    assert_eq!(size_of::<NetworkSlot>(), 40);
    let fixed = size_of::<SecurityManager<Borrowed<'static>>>();
    let tables = |clients: usize, conns: usize, prefixes: usize, networks: usize| {
        clients * (size_of::<ClientSlot>() + size_of::<u32>())
            + conns * size_of::<ConnSlot>()
            + 2 * prefixes * size_of::<CidrEntry>()
            + networks * (size_of::<NetworkSlot>() + size_of::<u32>())
    };
    let server = tables(
        ServerPreset::CLIENTS,
        ServerPreset::CONNECTIONS,
        ServerPreset::PREFIXES,
        ServerPreset::NETWORKS,
    );
    let appliance = tables(
        AppliancePreset::CLIENTS,
        AppliancePreset::CONNECTIONS,
        AppliancePreset::PREFIXES,
        AppliancePreset::NETWORKS,
    );
    // The network table is as long as the connection table (see
    // `Tables::networks`): 44 bytes per connection slot more.
    assert_eq!(ServerPreset::NETWORKS, ServerPreset::CONNECTIONS);
    assert_eq!(AppliancePreset::NETWORKS, AppliancePreset::CONNECTIONS);
    println!(
        "network tier: server {} B, appliance {} B",
        ServerPreset::NETWORKS * 44,
        AppliancePreset::NETWORKS * 44
    );
    println!("engine without tables: {fixed} B");
    println!("server preset tables: {server} B");
    println!("appliance preset tables: {appliance} B");
    println!(
        "appliance engine inline: {} B",
        size_of::<SecurityManager<AppliancePreset>>()
    );
    // 8,126,464 and 110,592 before the network tier (issue 17).
    assert_eq!(server, 8_126_464 + 2_883_584);
    assert_eq!(appliance, 110_592 + 11_264);
    assert!(fixed < 32 * 1024, "{fixed}");
    assert!(size_of::<SecurityManager<AppliancePreset>>() < appliance + 32 * 1024);
}

// ----- one burst is one offence (issue 14, item 3) -----

/// Level 1 as shipped (jitter on), without under-attack mode so that the
/// burst meets the per-client rules only.
fn level1() -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.attack_enter_per_second = None;
    p
}

/// The one block of `ip`: `(until - started, offences, cause)`.
fn the_block<S: mtguard_core::Storage>(
    g: &SecurityManager<S>,
    ip: IpAddr,
    started: Instant,
) -> (Option<u64>, u8, BlockCause) {
    let key = g.client_key(ip);
    let b = g.blocks().find(|b| b.client == key).expect("a block");
    (
        b.until.map(|u| u.as_millis() - started.as_millis()),
        b.offences,
        b.cause,
    )
}

fn blocked_events(evs: &[Event]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, Event::Blocked { .. }))
        .count()
}

#[test]
fn thirty_garbage_connections_at_once_are_one_offence() {
    let p = level1();
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 3);
    let conns: Vec<_> = (0..30).map(|i| admit(&mut g, at(i), ip)).collect();
    for (i, c) in conns.iter().enumerate() {
        g.handle_handshake(at(100 + i as u64), *c, HandshakeOutcome::Invalid)
            .unwrap();
    }
    // The threshold was reached by the tenth failure, at 109 ms.
    let (d, offences, cause) = the_block(&g, ip, at(109));
    assert_eq!((offences, cause), (1, BlockCause::Scanner));
    let d = d.unwrap();
    assert!((300_000..=330_000).contains(&d), "block of {d} ms");
    assert_eq!(blocked_events(&events(&mut g)), 1);
    assert_eq!(g.stats().blocks, 1);
    assert_eq!(g.stats().handshakes[HandshakeOutcome::Invalid as usize], 30);
}

#[test]
fn thirty_silent_connections_timing_out_together_are_one_offence() {
    let mut p = level1();
    p.handshake_timeout = Some(Duration::from_secs(10));
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 4);
    for _ in 0..30 {
        admit(&mut g, at(0), ip);
    }
    run_until(&mut g, at(10_000));
    let evs = events(&mut g);
    let timeouts = evs
        .iter()
        .filter(|e| matches!(e, Event::HandshakeTimeout { .. }))
        .count();
    assert_eq!(timeouts, 30, "every connection was timed out");
    assert_eq!(blocked_events(&evs), 1);
    let (d, offences, cause) = the_block(&g, ip, at(10_000));
    assert_eq!((offences, cause), (1, BlockCause::Slowloris));
    assert!((300_000..=330_000).contains(&d.unwrap()));
}

#[test]
fn thirty_replays_at_level_2_are_one_offence() {
    let mut p = Policy::for_level(Level::High);
    p.attack_enter_per_second = None;
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 5);
    let conns: Vec<_> = (0..30).map(|i| admit(&mut g, at(i), ip)).collect();
    for c in conns {
        g.handle_handshake(at(50), c, HandshakeOutcome::Replay)
            .unwrap();
    }
    let (d, offences, cause) = the_block(&g, ip, at(50));
    assert_eq!((offences, cause), (1, BlockCause::Replay));
    // Level 2: 600 s plus up to 20 % jitter.
    assert!((600_000..=720_000).contains(&d.unwrap()));
    let evs = events(&mut g);
    assert_eq!(blocked_events(&evs), 1);
    // Every replay is still detected and counted: only the offence is not.
    let detected = evs
        .iter()
        .filter(|e| matches!(e, Event::ReplayDetected { .. }))
        .count();
    assert_eq!((detected, g.stats().replays), (30, 30));
}

#[test]
fn an_offence_after_the_block_has_ended_still_escalates() {
    let p = level1();
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 6);
    let conns: Vec<_> = (0..30).map(|i| admit(&mut g, at(i), ip)).collect();
    for c in &conns {
        g.handle_handshake(at(40), *c, HandshakeOutcome::Invalid)
            .unwrap();
        g.handle_close(at(40), *c).unwrap();
    }
    let (d, offences, _) = the_block(&g, ip, at(40));
    assert_eq!(offences, 1);
    let end = at(40 + d.unwrap());
    run_until(&mut g, end);
    assert!(!g.is_blocked(ip));
    // The same burst again once the block is over: a second offence, whose
    // block doubles.
    let t = end.as_millis() + 1;
    let conns: Vec<_> = (0..30).map(|_| admit(&mut g, at(t), ip)).collect();
    for c in &conns {
        g.handle_handshake(at(t), *c, HandshakeOutcome::Invalid)
            .unwrap();
    }
    let (d, offences, cause) = the_block(&g, ip, at(t));
    assert_eq!((offences, cause), (2, BlockCause::Scanner));
    assert!((600_000..=660_000).contains(&d.unwrap()), "{d:?}");
    assert_eq!(g.stats().blocks, 2);
}

#[test]
fn connections_admitted_before_a_block_earn_nothing_after_it_is_lifted() {
    let mut p = quiet_policy();
    p.scanner_failures = 3;
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 7);
    let conns: Vec<_> = (0..9).map(|i| admit(&mut g, at(i), ip)).collect();
    for c in &conns[..3] {
        g.handle_handshake(at(20), *c, HandshakeOutcome::Invalid)
            .unwrap();
    }
    assert!(g.is_blocked(ip));
    // The operator lifts the block; the six connections still open from
    // before it fail now: the block they belong to is over and forgiven.
    assert!(g.unblock(at(30), ip));
    for c in &conns[3..] {
        g.handle_handshake(at(40), *c, HandshakeOutcome::Invalid)
            .unwrap();
    }
    assert!(!g.is_blocked(ip));
    assert_eq!(g.client_info(ip).unwrap().offences, 1);
    // A connection admitted after the block counts afresh: three new
    // failures are the next offence, one or two are not.
    let fresh: Vec<_> = (0..3).map(|_| admit(&mut g, at(50), ip)).collect();
    for c in &fresh[..2] {
        g.handle_handshake(at(60), *c, HandshakeOutcome::Invalid)
            .unwrap();
    }
    assert!(
        !g.is_blocked(ip),
        "the evidence of the first block was spent"
    );
    g.handle_handshake(at(60), fresh[2], HandshakeOutcome::Invalid)
        .unwrap();
    assert_eq!(g.client_info(ip).unwrap().offences, 2);
}

#[test]
fn an_operators_block_is_never_shortened_nor_turned_into_an_offence() {
    for duration in [
        Some(Duration::from_secs(3_600)),
        Some(Duration::from_secs(5)),
        None,
    ] {
        let mut p = level1();
        p.handshake_timeout = Some(Duration::from_secs(10));
        let mut g = guard(p);
        let ip = v4(127, 0, 14, 8);
        let conns: Vec<_> = (0..30).map(|_| admit(&mut g, at(0), ip)).collect();
        g.block(at(1), ip, duration, BlockCause::Manual).unwrap();
        let before = g.blocks().next().unwrap();
        for c in &conns[..15] {
            g.handle_handshake(at(2), *c, HandshakeOutcome::Invalid)
                .unwrap();
        }
        let after = g.blocks().next().unwrap();
        assert_eq!(after, before, "{duration:?}");
        assert_eq!(after.offences, 0);
        // The other fifteen time out, after a five-second block has ended:
        // still the operator's block's connections, still no offence.
        run_until(&mut g, at(10_000));
        let info = g.client_info(ip).unwrap();
        assert_eq!(info.offences, 0, "{duration:?}");
        assert_eq!(info.blocked, duration != Some(Duration::from_secs(5)));
        if info.blocked {
            assert_eq!(g.blocks().next().unwrap(), before);
        }
    }
}

#[test]
fn a_block_spends_the_violations_that_caused_it() {
    let mut p = quiet_policy();
    p.max_connections_per_client = 1;
    p.block_after_violations = 3;
    p.block_duration = Duration::from_secs(5);
    p.rate_window = Duration::from_secs(60);
    let mut g = guard(p);
    let ip = v4(127, 0, 14, 9);
    let _held = admit(&mut g, at(0), ip);
    for _ in 0..3 {
        refused(&mut g, at(1), ip);
    }
    assert!(g.is_blocked(ip));
    run_until(&mut g, at(5_001));
    assert!(!g.is_blocked(ip));
    // Same rate window: one more refusal is one violation, not the fourth.
    assert_eq!(
        refused(&mut g, at(5_002), ip),
        RejectReason::TooManyConnections
    );
    assert!(!g.is_blocked(ip));
    assert_eq!(g.client_info(ip).unwrap().offences, 1);
}

/// Every error of the core is a `core::error::Error`, so a runtime can box
/// it, put it behind `?` into `anyhow`, or walk its chain, without a
/// wrapper of its own; the messages are the ones `Display` gives.
#[test]
fn every_core_error_is_a_core_error_with_its_message() {
    use mtguard_core::cidr::{CidrError, CidrSetError};
    use mtguard_core::der::DerError;
    use mtguard_core::manager::{CommandError, NewError, TablesError, UnknownConnection};
    use mtguard_core::mtproto::replay::{BadCapacity, ReplayRefusal};
    use mtguard_core::mtproto::{KeyUnavailable, SecretError};
    use mtguard_core::pins::{PinError, PinSetError};
    use mtguard_core::policy::PolicyError;
    use mtguard_core::snapshot::SnapshotError;

    fn message(e: &dyn core::error::Error) -> String {
        assert!(e.source().is_none(), "{e}: the message carries the cause");
        e.to_string()
    }
    let policy = PolicyError {
        field: "rate_window",
        problem: "must be positive",
    };
    let cases: [(&dyn core::error::Error, &str); 16] = [
        (&CommandError::Allowlisted, "the address is allowlisted"),
        (&UnknownConnection, "not a live connection"),
        (&TablesError::BucketsMismatch, "bucket table"),
        (&NewError::Policy(policy), "invalid policy: rate_window"),
        (&NewError::Tables(TablesError::Empty("clients")), "clients"),
        (&policy, "rate_window: must be positive"),
        (&PinError::BadBase64, ""),
        (&PinSetError::Full { capacity: 100 }, "100"),
        (&CidrError::HostBitsSet, ""),
        (&CidrSetError::Full { capacity: 4 }, "4 prefixes"),
        (&DerError::IndefiniteLength, "indefinite"),
        (&SecretError::Empty, ""),
        (&SnapshotError::BadMagic, ""),
        (&ReplayRefusal::Replay, "seen before"),
        (&BadCapacity, "replay cache"),
        (&KeyUnavailable, "key"),
    ];
    for (e, needle) in cases {
        let text = message(e);
        assert!(!text.is_empty(), "{e:?} has no message");
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
    assert_eq!(
        TablesError::Empty("connections").to_string(),
        NewError::Tables(TablesError::Empty("connections")).to_string()
    );
}
