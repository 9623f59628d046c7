//! The network tier on virtual time (issue 17): connection and rate limits
//! per IPv4 /24 and IPv6 /48 above the per-client ones. Its refusals never
//! block; authenticated connections leave its count; its table evicts only
//! idle networks and fails closed for new networks only.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::time::Duration;

use mtguard_core::storage::Inline;
use mtguard_core::{
    Authentication, ConnectionId, Event, HandshakeOutcome, Instant, Level, NetworkInfo, Policy,
    RejectReason, SecurityManager, Seed, Storage, Verdict,
};

type Roomy = Inline<1024, 2048, 8>;

const SEED: Seed = Seed {
    hash_key: [0x17; 16],
    jitter: 17,
};

/// Level 1 without jitter, under-attack mode or deadlines, with the
/// network tier set to `conns` pending connections and `rate` new ones per
/// 60-second window (0: off).
fn tier(conns: u32, rate: u16) -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.block_jitter_permille = 0;
    p.attack_enter_per_second = None;
    p.handshake_timeout = None;
    p.max_connections_per_network = conns;
    p.max_new_connections_per_network = rate;
    p
}

fn guard(p: Policy) -> Box<SecurityManager<Roomy>> {
    Box::new(SecurityManager::new(Roomy::tables(), p, SEED, Instant::ZERO).unwrap())
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn admit<S: Storage>(g: &mut SecurityManager<S>, t: u64, ip: IpAddr) -> ConnectionId {
    match g.handle_connect(at(t), ip) {
        Verdict::Admit(c) => c,
        Verdict::Reject(r) => panic!("{ip} refused at {t} ms: {r:?}"),
    }
}

fn refused<S: Storage>(g: &mut SecurityManager<S>, t: u64, ip: IpAddr) -> RejectReason {
    match g.handle_connect(at(t), ip) {
        Verdict::Admit(c) => panic!("{ip} admitted at {t} ms as {c:?}"),
        Verdict::Reject(r) => r,
    }
}

fn rejected<S: Storage>(g: &SecurityManager<S>, r: RejectReason) -> u64 {
    g.stats().rejected[r as usize]
}

#[test]
fn the_256_clients_of_one_slash_24_meet_its_cap_and_the_next_slash_24_is_served() {
    let mut g = guard(tier(200, 0));
    let mut held = Vec::new();
    for host in 0..=255u8 {
        let ip = v4(198, 51, 100, host);
        match g.handle_connect(at(1), ip) {
            Verdict::Admit(c) => held.push(c),
            Verdict::Reject(r) => assert_eq!(r, RejectReason::NetworkConnections, "{ip}"),
        }
    }
    assert_eq!(held.len(), 200);
    assert_eq!(rejected(&g, RejectReason::NetworkConnections), 56);
    let info = g.network_info(v4(198, 51, 100, 9)).unwrap();
    assert_eq!(
        info,
        NetworkInfo {
            network: v4(198, 51, 100, 0),
            prefix: 24,
            live_connections: 200,
            authenticated_connections: 0,
        }
    );
    // The neighbouring /24 is another network, with a cap of its own.
    for host in 0..200u8 {
        admit(&mut g, 2, v4(198, 51, 101, host));
    }
    // Refusals at the network tier are no violations: one client knocking
    // 50 times, past `block_after_violations` (20), is refused, not blocked.
    for t in 0..50 {
        assert_eq!(
            refused(&mut g, 10 + t, v4(198, 51, 100, 250)),
            RejectReason::NetworkConnections
        );
    }
    assert!(!g.is_blocked(v4(198, 51, 100, 250)));
    assert_eq!(g.blocked_clients(), 0);
    assert_eq!(g.tracked_networks(), 2);
}

#[test]
fn ipv6_clients_group_into_their_slash_48() {
    let mut g = guard(tier(6, 0));
    // Six /64 clients of 2001:db8:1::/48, one connection each.
    for sub in 0..6u16 {
        let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, sub, 0, 0, 0, 1));
        admit(&mut g, 1, ip);
    }
    let seventh = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0xffff, 1, 2, 3, 4));
    assert_eq!(
        refused(&mut g, 2, seventh),
        RejectReason::NetworkConnections
    );
    let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
    admit(&mut g, 3, other);
    let info = g.network_info(seventh).unwrap();
    assert_eq!(info.network, "2001:db8:1::".parse::<IpAddr>().unwrap());
    assert_eq!((info.prefix, info.live_connections), (48, 6));
    // IPv4-mapped peers are IPv4: their /24, not an IPv6 network.
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    admit(&mut g, 4, mapped);
    assert_eq!(
        g.network_info(v4(192, 0, 2, 200)).unwrap().live_connections,
        1
    );
}

#[test]
fn a_network_never_splits_a_client_and_prefixes_are_configurable() {
    // Clients aggregated to /32: the network cannot be the longer /48.
    let mut p = tier(2, 0);
    p.ipv6_prefix = 32;
    p.network_prefix_v4 = 16;
    let mut g = guard(p);
    let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
    admit(&mut g, 1, a);
    let info = g.network_info(a).unwrap();
    assert_eq!(
        (info.network, info.prefix),
        ("2001:db8::".parse().unwrap(), 32)
    );
    // A /16 of IPv4: two addresses of different /24s share it.
    admit(&mut g, 1, v4(10, 1, 2, 3));
    admit(&mut g, 1, v4(10, 1, 200, 3));
    assert_eq!(
        refused(&mut g, 1, v4(10, 1, 99, 99)),
        RejectReason::NetworkConnections
    );
    admit(&mut g, 1, v4(10, 2, 0, 1));
}

#[test]
fn closing_a_connection_frees_its_place_in_the_network() {
    let mut g = guard(tier(3, 0));
    let held: Vec<_> = (1..=3)
        .map(|h| admit(&mut g, 1, v4(203, 0, 113, h)))
        .collect();
    assert_eq!(
        refused(&mut g, 2, v4(203, 0, 113, 4)),
        RejectReason::NetworkConnections
    );
    g.handle_close(at(3), held[1]).unwrap();
    let c = admit(&mut g, 4, v4(203, 0, 113, 4));
    assert_eq!(
        g.network_info(v4(203, 0, 113, 1)).unwrap().live_connections,
        3
    );
    // A judged connection without a secret still counts: it proved nothing.
    g.handle_handshake(at(5), c, HandshakeOutcome::Valid)
        .unwrap();
    assert_eq!(
        refused(&mut g, 6, v4(203, 0, 113, 5)),
        RejectReason::NetworkConnections
    );
    for c in [held[0], held[2], c] {
        g.handle_close(at(7), c).unwrap();
    }
    let info = g.network_info(v4(203, 0, 113, 1)).unwrap();
    assert_eq!(info.live_connections, 0);
    // Idle, it is remembered (its rate window with it) until evicted.
    assert_eq!(g.tracked_networks(), 1);
}

#[test]
fn authenticated_connections_leave_the_network_count_and_are_refunded() {
    let mut g = guard(tier(4, 6));
    let held: Vec<_> = (1..=4)
        .map(|h| admit(&mut g, 1, v4(100, 64, 0, h)))
        .collect();
    assert_eq!(
        refused(&mut g, 2, v4(100, 64, 0, 9)),
        RejectReason::NetworkConnections
    );
    for c in &held[..3] {
        assert_eq!(
            g.handle_authenticated(at(3), *c).unwrap(),
            Authentication::Authenticated
        );
    }
    let info = g.network_info(v4(100, 64, 0, 1)).unwrap();
    assert_eq!(
        (info.live_connections, info.authenticated_connections),
        (4, 3)
    );
    // Three places free again, and three new connections refunded from the
    // rate window: 1 + 3 counted, so 2 more may open under the rate of 6.
    for h in 10..13 {
        admit(&mut g, 4, v4(100, 64, 0, h));
    }
    assert_eq!(
        refused(&mut g, 5, v4(100, 64, 0, 20)),
        RejectReason::NetworkConnections
    );
    // Closing an authenticated connection releases it from both counts.
    g.handle_close(at(6), held[0]).unwrap();
    let info = g.network_info(v4(100, 64, 0, 1)).unwrap();
    assert_eq!(
        (info.live_connections, info.authenticated_connections),
        (6, 2)
    );
}

#[test]
fn the_network_rate_window_slides() {
    let mut g = guard(tier(0, 100));
    // 100 connections from 100 clients of one /24 in the first window,
    // each closed at once: the connection cap is off, the rate binds.
    for h in 0..100u8 {
        let c = admit(&mut g, 1_000, v4(192, 0, 2, h));
        g.handle_close(at(1_000), c).unwrap();
    }
    assert_eq!(
        refused(&mut g, 1_000, v4(192, 0, 2, 200)),
        RejectReason::NetworkRate
    );
    // At the start of the next window the previous one still weighs in full.
    assert_eq!(
        refused(&mut g, 60_000, v4(192, 0, 2, 201)),
        RejectReason::NetworkRate
    );
    // Halfway through it, half of it: 50 more, then refused again.
    for h in 100..150u8 {
        let c = admit(&mut g, 90_000, v4(192, 0, 2, h));
        g.handle_close(at(90_000), c).unwrap();
    }
    assert_eq!(
        refused(&mut g, 90_000, v4(192, 0, 2, 202)),
        RejectReason::NetworkRate
    );
    // Another /24 has a rate of its own.
    admit(&mut g, 90_000, v4(192, 0, 3, 1));
    // Two windows of quiet, and the network starts over.
    for h in 0..100u8 {
        let c = admit(&mut g, 240_000, v4(192, 0, 2, h));
        g.handle_close(at(240_000), c).unwrap();
    }
    assert_eq!(rejected(&g, RejectReason::NetworkRate), 3);
    assert_eq!(g.blocked_clients(), 0);
}

#[test]
fn the_network_table_evicts_only_idle_networks_and_fails_closed_for_new_ones() {
    type TwoNetworks = Inline<64, 64, 8, 2>;
    let mut g: Box<SecurityManager<TwoNetworks>> = Box::new(
        SecurityManager::new(TwoNetworks::tables(), tier(100, 0), SEED, Instant::ZERO).unwrap(),
    );
    assert_eq!(g.network_capacity(), 2);
    let a = admit(&mut g, 1, v4(10, 0, 1, 1));
    let b = admit(&mut g, 2, v4(10, 0, 2, 1));
    g.handle_close(at(3), b).unwrap();
    // A third network evicts the idle one, never the one holding `a`.
    let c = admit(&mut g, 4, v4(10, 0, 3, 1));
    assert_eq!(g.stats().network_evictions, 1);
    assert!(g.network_info(v4(10, 0, 2, 1)).is_none());
    assert_eq!(g.network_info(v4(10, 0, 1, 1)).unwrap().live_connections, 1);
    // Both networks busy: a new one is refused, once reported...
    for t in 5..8 {
        assert_eq!(
            refused(&mut g, t, v4(10, 0, 4, 1)),
            RejectReason::NetworkTableFull
        );
    }
    let events: Vec<_> = core::iter::from_fn(|| g.poll_event()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == Event::NetworkTableFull)
            .count(),
        1
    );
    // ... while the known networks are served, and nobody is blocked.
    admit(&mut g, 8, v4(10, 0, 1, 2));
    admit(&mut g, 8, v4(10, 0, 3, 2));
    assert_eq!(g.blocked_clients(), 0);
    // Once a network is idle again, the new one takes its slot.
    g.handle_close(at(9), a).unwrap();
    assert_eq!(
        refused(&mut g, 9, v4(10, 0, 4, 1)),
        RejectReason::NetworkTableFull,
        "10.0.1.0/24 still holds 10.0.1.2"
    );
    let _ = c;
    let mut g2: Box<SecurityManager<TwoNetworks>> = Box::new(
        SecurityManager::new(TwoNetworks::tables(), tier(100, 0), SEED, Instant::ZERO).unwrap(),
    );
    let x = admit(&mut g2, 1, v4(10, 0, 1, 1));
    let _y = admit(&mut g2, 1, v4(10, 0, 2, 1));
    assert_eq!(
        refused(&mut g2, 2, v4(10, 0, 3, 1)),
        RejectReason::NetworkTableFull
    );
    g2.handle_close(at(3), x).unwrap();
    admit(&mut g2, 4, v4(10, 0, 3, 1));
    assert!(g2.network_info(v4(10, 0, 1, 1)).is_none());
    assert_eq!(g2.stats().network_evictions, 1);
}

#[test]
fn a_bad_actor_inside_a_network_is_still_blocked_by_its_own_limits() {
    // The per-client checks come first: a client over its own cap meets
    // `too_many_connections`, a violation, even while its network is full.
    let mut p = tier(30, 0);
    p.max_connections_per_client = 10;
    p.block_after_violations = 5;
    let mut g = guard(p);
    let bad = v4(198, 18, 0, 66);
    for _ in 0..10 {
        admit(&mut g, 1, bad);
    }
    for h in 1..=20 {
        admit(&mut g, 1, v4(198, 18, 0, h));
    }
    assert_eq!(
        refused(&mut g, 2, v4(198, 18, 0, 100)),
        RejectReason::NetworkConnections
    );
    for _ in 0..4 {
        assert_eq!(refused(&mut g, 3, bad), RejectReason::TooManyConnections);
    }
    assert_eq!(refused(&mut g, 3, bad), RejectReason::TooManyConnections);
    assert!(g.is_blocked(bad));
    assert_eq!(refused(&mut g, 4, bad), RejectReason::Blocked);
    assert!(!g.is_blocked(v4(198, 18, 0, 100)));
}

#[test]
fn the_tier_is_off_at_levels_0_and_1_and_on_at_2_and_3() {
    for n in 0..=3 {
        let level = Level::from_number(n).unwrap();
        let mut g = guard(Policy::for_level(level));
        let c = admit(&mut g, 1, v4(192, 0, 2, 1));
        g.handle_close(at(2), c).unwrap();
        assert_eq!(g.tracked_networks(), u32::from(n >= 2), "level {n}");
    }
    // Level 2: 500 pending connections per /24.
    let mut p = Policy::for_level(Level::High);
    p.attack_enter_per_second = None;
    let mut g = guard(p);
    for i in 0..500u32 {
        admit(&mut g, 1, v4(192, 0, 2, (i % 250) as u8));
    }
    assert_eq!(
        refused(&mut g, 1, v4(192, 0, 2, 251)),
        RejectReason::NetworkConnections
    );
}

#[test]
fn the_allowlist_passes_the_network_tier() {
    use mtguard_core::cidr::{Cidr, Origin};
    let mut g = guard(tier(1, 0));
    admit(&mut g, 1, v4(192, 0, 2, 1));
    assert_eq!(
        refused(&mut g, 1, v4(192, 0, 2, 2)),
        RejectReason::NetworkConnections
    );
    g.allow_mut()
        .insert(Cidr::parse("192.0.2.2/32").unwrap(), Origin::Manual)
        .unwrap();
    admit(&mut g, 2, v4(192, 0, 2, 2));
    assert_eq!(
        g.network_info(v4(192, 0, 2, 1)).unwrap().live_connections,
        1
    );
}

#[test]
fn under_attack_the_network_limits_shrink_with_the_client_ones() {
    let mut p = tier(100, 0);
    p.attack_enter_per_second = Some(50);
    p.attack_exit_per_second = 10;
    p.attack_limit_percent = 10;
    let mut g = guard(p);
    // 60 attempts in one second from elsewhere switch the mode on.
    for i in 0..60u8 {
        let _ = g.handle_connect(at(100), v4(203, 0, 113, i));
    }
    assert!(g.under_attack());
    for h in 1..=10 {
        admit(&mut g, 200, v4(198, 51, 100, h));
    }
    assert_eq!(
        refused(&mut g, 200, v4(198, 51, 100, 11)),
        RejectReason::NetworkConnections
    );
}

#[test]
fn a_reload_applies_to_new_connections_and_releases_old_ones_where_counted() {
    let mut g = guard(tier(0, 0));
    let before = admit(&mut g, 1, v4(192, 0, 2, 1));
    assert_eq!(g.tracked_networks(), 0);
    g.set_policy(tier(2, 0)).unwrap();
    // The connection from before the tier was on is not counted.
    let a = admit(&mut g, 2, v4(192, 0, 2, 2));
    admit(&mut g, 2, v4(192, 0, 2, 3));
    assert_eq!(
        refused(&mut g, 2, v4(192, 0, 2, 4)),
        RejectReason::NetworkConnections
    );
    g.handle_close(at(3), before).unwrap();
    assert_eq!(
        g.network_info(v4(192, 0, 2, 1)).unwrap().live_connections,
        2
    );
    // A shorter prefix: new connections count in the /16; `a` is released
    // from the /24 it was counted in.
    let mut p = tier(2, 0);
    p.network_prefix_v4 = 16;
    g.set_policy(p).unwrap();
    admit(&mut g, 4, v4(192, 0, 9, 1));
    g.handle_close(at(5), a).unwrap();
    let mut p = tier(2, 0);
    p.network_prefix_v4 = 24;
    g.set_policy(p).unwrap();
    assert_eq!(
        g.network_info(v4(192, 0, 2, 1)).unwrap().live_connections,
        1
    );
    // Off again: nothing is looked up, closes still release.
    g.set_policy(tier(0, 0)).unwrap();
    admit(&mut g, 6, v4(192, 0, 2, 9));
    assert_eq!(
        g.network_info(v4(192, 0, 2, 1)).unwrap().live_connections,
        1
    );
    let _ = Duration::ZERO;
}
