//! Client keys and prefix sets, checked against a linear-scan model.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::BTreeSet;

use mtguard_core::addr::{map_ip, ClientKey, DEFAULT_IPV6_PREFIX};
use mtguard_core::cidr::{
    parse_netset_line, Cidr, CidrEntry, CidrError, CidrSet, CidrSetError, Origin,
};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// The obvious implementation the set must agree with.
#[derive(Default)]
struct Model(Vec<(Cidr, Origin)>);

impl Model {
    fn matching(&self, bits: u128) -> Option<Cidr> {
        self.0
            .iter()
            .map(|&(c, _)| c)
            .filter(|c| c.contains_bits(bits))
            .max_by_key(|c| c.mapped_len())
    }

    fn boundaries(&self) -> Vec<u128> {
        self.0
            .iter()
            .flat_map(|(c, _)| {
                [
                    c.first().wrapping_sub(1),
                    c.first(),
                    c.last(),
                    c.last().wrapping_add(1),
                ]
            })
            .collect()
    }
}

fn check<S: AsRef<[CidrEntry]> + AsMut<[CidrEntry]>>(
    set: &CidrSet<S>,
    model: &Model,
    probes: &[u128],
) {
    let mut expected: Vec<_> = model.0.clone();
    expected.sort_by_key(|&(c, _)| c);
    let got: Vec<_> = set.iter().map(|e| (e.cidr(), e.origin())).collect();
    assert_eq!(got, expected);
    assert_eq!(set.len(), model.0.len());
    for &bits in probes.iter().chain(&model.boundaries()) {
        assert_eq!(set.matching(bits), model.matching(bits), "at {:#x}", bits);
        assert_eq!(set.contains_bits(bits), model.matching(bits).is_some());
    }
}

/// Addresses crowded into a few small regions of both families, so that
/// random prefixes over them nest often and also sit side by side.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, 0u8..4, any::<u8>()).prop_map(|(b, c, d)| IpAddr::V4(Ipv4Addr::new(
            10,
            b,
            c * 64,
            d
        ))),
        (0u16..4, 0u16..4, 0u16..3).prop_map(|(a, b, c)| IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            a,
            b << 12,
            0,
            0,
            0,
            c
        ))),
        // The edges of the space and of the IPv4 part of it.
        prop_oneof![
            Just(ip("0.0.0.0")),
            Just(ip("255.255.255.255")),
            Just(ip("::")),
            Just(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Just(ip("::fffe:ffff:ffff")),
        ],
    ]
}

fn prefix() -> impl Strategy<Value = Cidr> {
    (address(), any::<u8>()).prop_map(|(addr, len)| match addr {
        IpAddr::V4(_) => Cidr::new(addr, len % 33).unwrap(),
        IpAddr::V6(_) => Cidr::new(addr, len % 129).unwrap(),
    })
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![Just(Origin::Config), Just(Origin::Manual)]
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Cidr, Origin),
    Remove(Cidr),
    RemoveOrigin(Origin),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (prefix(), origin()).prop_map(|(c, o)| Op::Insert(c, o)),
        4 => prefix().prop_map(Op::Remove),
        1 => origin().prop_map(Op::RemoveOrigin),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn set_agrees_with_linear_scan(
        ops in prop::collection::vec(op(), 1..120),
        probes in prop::collection::vec(address(), 16),
    ) {
        const CAPACITY: usize = 40;
        let mut set = CidrSet::new([CidrEntry::EMPTY; CAPACITY]);
        let mut model = Model::default();
        let probes: Vec<u128> = probes.into_iter().map(map_ip).collect();
        for op in ops {
            match op {
                Op::Insert(c, o) => {
                    let got = set.insert(c, o);
                    let full = model.0.len() == CAPACITY;
                    match model.0.iter_mut().find(|(m, _)| *m == c) {
                        Some(entry) => {
                            prop_assert_eq!(got, Ok(false));
                            if o == Origin::Manual {
                                entry.1 = Origin::Manual;
                            }
                        }
                        None if full => {
                            prop_assert_eq!(got, Err(CidrSetError::Full { capacity: CAPACITY }));
                        }
                        None => {
                            prop_assert_eq!(got, Ok(true));
                            model.0.push((c, o));
                        }
                    }
                }
                Op::Remove(c) => {
                    let present = model.0.iter().any(|(m, _)| *m == c);
                    model.0.retain(|(m, _)| *m != c);
                    prop_assert_eq!(set.remove(c), present);
                }
                Op::RemoveOrigin(o) => {
                    let before = model.0.len();
                    model.0.retain(|&(_, m)| m != o);
                    prop_assert_eq!(set.remove_origin(o), before - model.0.len());
                }
                Op::Clear => {
                    model.0.clear();
                    set.clear();
                }
            }
            check(&set, &model, &probes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The bulk build is the one-by-one insertion, only faster: same
    /// entries, same origins, same lookups, and `Full` exactly when the
    /// items hold more distinct prefixes than fit. Lists run past the
    /// capacity with repeats, so compactions in the middle are exercised.
    #[test]
    fn bulk_build_equals_inserting_one_by_one(
        items in prop::collection::vec((prefix(), origin()), 0..120),
        repeat in 0usize..3,
        probes in prop::collection::vec(address(), 16),
    ) {
        const CAPACITY: usize = 40;
        let items: Vec<(Cidr, Origin)> = items
            .iter()
            .chain(items.iter().take(repeat * 30))
            .copied()
            .collect();
        let mut one_by_one = CidrSet::new([CidrEntry::EMPTY; CAPACITY]);
        let mut full = false;
        for &(c, o) in &items {
            if one_by_one.insert(c, o).is_err() {
                full = true;
                break;
            }
        }
        let bulk = CidrSet::build([CidrEntry::EMPTY; CAPACITY], items.iter().copied());
        if full {
            prop_assert_eq!(bulk.err(), Some(CidrSetError::Full { capacity: CAPACITY }));
        } else {
            let bulk = bulk.unwrap();
            let model = Model(one_by_one.iter().map(|e| (e.cidr(), e.origin())).collect());
            let probes: Vec<u128> = probes.into_iter().map(map_ip).collect();
            check(&bulk, &model, &probes);
        }
    }
}

#[test]
fn bulk_build_refuses_as_soon_as_one_too_many_is_read() {
    let mut read = 0usize;
    let items = (0..1_000_000u32).map(|i| {
        read += 1;
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 256));
        (Cidr::new(addr, 24).unwrap(), Origin::Config)
    });
    let err = CidrSet::build(vec![CidrEntry::EMPTY; 100].into_boxed_slice(), items).err();
    assert_eq!(err, Some(CidrSetError::Full { capacity: 100 }));
    // The 101st distinct prefix decides it; the other 999,899 stay unread.
    assert_eq!(read, 101);
}

#[test]
fn bulk_build_fits_a_full_list_given_with_repeats() {
    // Exactly capacity distinct prefixes, each given three times, manual
    // the last time for some: fits, and manual wins.
    let distinct: Vec<Cidr> = (0..64u32)
        .map(|i| Cidr::new(IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i * 4)), 30).unwrap())
        .collect();
    let items = distinct
        .iter()
        .map(|&c| (c, Origin::Config))
        .chain(distinct.iter().rev().map(|&c| (c, Origin::Config)))
        .chain(distinct.iter().step_by(2).map(|&c| (c, Origin::Manual)));
    let set = CidrSet::build([CidrEntry::EMPTY; 64], items).unwrap();
    assert_eq!(set.len(), 64);
    let manual = set.iter().filter(|e| e.origin() == Origin::Manual).count();
    assert_eq!(manual, 32);
    assert!(set.iter().map(|e| e.cidr()).eq(distinct.iter().copied()));
}

#[test]
fn full_at_exactly_capacity() {
    fn fill<S: AsRef<[CidrEntry]> + AsMut<[CidrEntry]>>(mut set: CidrSet<S>) {
        let capacity = set.capacity();
        for i in 0..capacity {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32 * 256));
            assert_eq!(
                set.insert(Cidr::new(addr, 24).unwrap(), Origin::Config),
                Ok(true)
            );
        }
        assert_eq!(set.len(), capacity);
        let err = set
            .insert(cidr("2001:db8::/32"), Origin::Manual)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("prefix set is full ({capacity} prefixes)")
        );
        assert_eq!(set.len(), capacity);
        // Present prefixes can still be re-added, and removal makes room.
        assert_eq!(set.insert(cidr("10.0.0.0/24"), Origin::Manual), Ok(false));
        assert!(set.remove(cidr("10.0.1.0/24")));
        assert_eq!(set.insert(cidr("2001:db8::/32"), Origin::Manual), Ok(true));
    }
    fill(CidrSet::new([CidrEntry::EMPTY; 100]));
    fill(CidrSet::new(vec![CidrEntry::EMPTY; 77].into_boxed_slice()));
    let mut borrowed = [CidrEntry::EMPTY; 5];
    fill(CidrSet::new(&mut borrowed[..]));
}

/// SplitMix64: a fixed, dependency-free source of test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An IPv4 prefix shaped like FireHOL level1's: mostly /24s and single
    /// hosts, some mid-sized blocks, a few large bogons.
    fn firehol_prefix(&mut self) -> Cidr {
        let len = match self.next() % 100 {
            0..=1 => 8 + (self.next() % 5) as u8,
            2..=19 => 13 + (self.next() % 11) as u8,
            20..=69 => 24,
            _ => 32,
        };
        let addr = Ipv4Addr::from(self.next() as u32);
        Cidr::new(IpAddr::V4(addr), len).unwrap()
    }
}

#[test]
fn firehol_sized_list_fits_and_agrees() {
    let mut rng = Rng(0x006d_7467_7561_7264);
    let mut set = CidrSet::new(vec![CidrEntry::EMPTY; 8192].into_boxed_slice());
    let mut distinct = BTreeSet::new();
    for _ in 0..4500 {
        let c = rng.firehol_prefix();
        assert_eq!(set.insert(c, Origin::Config), Ok(distinct.insert(c)));
    }
    assert_eq!(set.len(), distinct.len());
    assert!(set.len() > 4400);
    let model = Model(distinct.iter().map(|&c| (c, Origin::Config)).collect());
    let probes: Vec<u128> = (0..20_000)
        .map(|_| map_ip(IpAddr::V4(Ipv4Addr::from(rng.next() as u32))))
        .collect();
    check(&set, &model, &probes);
    // The bulk build of the same list, as a reload makes it, is the same set.
    let mut rng = Rng(0x006d_7467_7561_7264);
    let list = (0..4500).map(|_| (rng.firehol_prefix(), Origin::Config));
    let bulk = CidrSet::build(vec![CidrEntry::EMPTY; 8192].into_boxed_slice(), list).unwrap();
    check(&bulk, &model, &probes);
    // Dropping the config, as a reload does, leaves nothing behind.
    assert_eq!(set.remove_origin(Origin::Config), distinct.len());
    assert!(set.is_empty());
    assert!(!set.contains_bits(probes[0]));
}

#[test]
fn mapped_ipv4_is_ipv4() {
    let mapped = ip("::ffff:1.2.3.4");
    assert_eq!(map_ip(mapped), map_ip(ip("1.2.3.4")));
    assert_eq!(
        ClientKey::new(mapped, 64),
        ClientKey::new(ip("1.2.3.4"), 64)
    );
    assert_eq!(ClientKey::new(mapped, 64).to_ip(), ip("1.2.3.4"));
    let mut set = CidrSet::new([CidrEntry::EMPTY; 2]);
    set.insert(cidr("1.2.3.0/24"), Origin::Config).unwrap();
    assert!(set.contains(mapped));
    assert_eq!(set.matching(map_ip(mapped)), Some(cidr("1.2.3.0/24")));
    assert_eq!(cidr("::ffff:1.2.3.4"), cidr("1.2.3.4"));
}

#[test]
fn ipv6_clients_are_aggregated() {
    let p = DEFAULT_IPV6_PREFIX;
    let a = ClientKey::new(ip("2001:db8:aa:1::1"), p);
    assert_eq!(
        a,
        ClientKey::new(ip("2001:db8:aa:1:ffff:ffff:ffff:ffff"), p)
    );
    assert_ne!(a, ClientKey::new(ip("2001:db8:aa:2::1"), p));
    assert_eq!(a.display(p).to_string(), "2001:db8:aa:1::/64");

    let b = ClientKey::new(ip("2001:db8:aa:1::1"), 48);
    assert_eq!(b, ClientKey::new(ip("2001:db8:aa:ffff::1"), 48));
    assert_ne!(b, ClientKey::new(ip("2001:db8:ab::1"), 48));
    assert_eq!(b.display(48).to_string(), "2001:db8:aa::/48");
    assert_eq!(ClientKey::from_bits(b.bits()), b);
}

#[test]
fn parse_errors_say_what_is_wrong() {
    for (text, err, message) in [
        (
            "1.2.3.4/33",
            CidrError::PrefixTooLong { max: 32 },
            "IPv4 prefix length exceeds 32",
        ),
        (
            "2001:db8::/129",
            CidrError::PrefixTooLong { max: 128 },
            "IPv6 prefix length exceeds 128",
        ),
        (
            "300.1.1.1",
            CidrError::BadAddress,
            "not an IPv4 or IPv6 address",
        ),
        ("abc", CidrError::BadAddress, "not an IPv4 or IPv6 address"),
        (
            "1.2.3.4/x",
            CidrError::BadPrefixLength,
            "prefix length after '/' is not a decimal number",
        ),
        ("", CidrError::Empty, "empty prefix"),
    ] {
        assert_eq!(text.parse::<Cidr>(), Err(err), "{text:?}");
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn netset_file() {
    let netset = "\
#
# firehol_level1
#
# An ipset made from blocklists that provide the maximum
# of protection, with the minimum of false positives.
#

0.0.0.0/8
1.10.16.0/20
5.188.10.179 # single host
224.0.0.0/3
  # indented comment
2001:db8::/32\r
";
    let parsed: Vec<Cidr> = netset
        .lines()
        .filter_map(|l| parse_netset_line(l).unwrap())
        .collect();
    let shown: Vec<String> = parsed.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        shown,
        [
            "0.0.0.0/8",
            "1.10.16.0/20",
            "5.188.10.179/32",
            "224.0.0.0/3",
            "2001:db8::/32"
        ]
    );
    assert_eq!(
        parse_netset_line("1.2.3.4/33 # bad"),
        Err(CidrError::PrefixTooLong { max: 32 })
    );
}

#[test]
fn sizes() {
    // 16 + 1 + 1 + 4 bytes, padded to u128's alignment: 32 on x86_64,
    // 24 where u128 aligns to 8 (thumbv7em).
    assert!(size_of::<CidrEntry>() <= 32);
    assert_eq!(size_of::<ClientKey>(), 16);
}
