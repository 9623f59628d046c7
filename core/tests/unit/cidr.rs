//! Unit tests of `src/cidr.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use std::string::ToString;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_and_displays_both_families() {
    for s in [
        "192.0.2.0/24",
        "0.0.0.0/0",
        "10.1.2.3/32",
        "2001:db8::/32",
        "::/0",
    ] {
        assert_eq!(cidr(s).to_string(), s);
    }
    assert_eq!(cidr(" 10.1.2.3\n").to_string(), "10.1.2.3/32");
    assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
    assert_eq!(cidr("192.0.2.77/24").to_string(), "192.0.2.0/24");
    assert_eq!(cidr("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
    assert_eq!(cidr("10.0.0.0/008").prefix_len(), 8);
}

#[test]
fn parse_errors() {
    use CidrError::*;
    for (s, e) in [
        ("", Empty),
        ("  ", Empty),
        ("abc", BadAddress),
        ("300.1.1.1", BadAddress),
        ("/24", BadAddress),
        ("1.2.3.4 /24", BadAddress),
        ("1.2.3.4/", BadPrefixLength),
        ("1.2.3.4/+24", BadPrefixLength),
        ("1.2.3.4/-1", BadPrefixLength),
        ("1.2.3.4/2 4", BadPrefixLength),
        ("1.2.3.4/24/8", BadPrefixLength),
        ("1.2.3.4/33", PrefixTooLong { max: 32 }),
        ("1.2.3.4/99999", PrefixTooLong { max: 32 }),
        ("2001:db8::/129", PrefixTooLong { max: 128 }),
    ] {
        assert_eq!(Cidr::parse(s), Err(e), "{s:?}");
    }
    assert_eq!(
        CidrError::PrefixTooLong { max: 32 }.to_string(),
        "IPv4 prefix length exceeds 32"
    );
}

#[test]
fn ipv4_lives_in_the_mapped_space() {
    let c = cidr("192.0.2.0/24");
    assert!(c.is_ipv4());
    assert_eq!(c.mapped_len(), 120);
    assert_eq!(c.network(), ip("192.0.2.0"));
    assert_eq!(c.first(), map_ip(ip("192.0.2.0")));
    assert_eq!(c.last(), map_ip(ip("192.0.2.255")));
    assert!(c.contains(ip("192.0.2.9")));
    assert!(c.contains(ip("::ffff:192.0.2.9")));
    assert!(!c.contains(ip("192.0.3.0")));
    // All of IPv4, and nothing else.
    let all = cidr("0.0.0.0/0");
    assert!(all.contains(ip("255.255.255.255")));
    assert!(!all.contains(ip("::1")));
    assert!(!cidr("::/80").is_ipv4());
}

#[test]
fn from_mapped_is_strict() {
    let c = cidr("2001:db8::/32");
    assert_eq!(Cidr::from_mapped(c.network_bits(), c.mapped_len()), Ok(c));
    assert_eq!(Cidr::from_mapped(1, 127), Err(CidrError::HostBitsSet));
    assert_eq!(
        Cidr::from_mapped(0, 129),
        Err(CidrError::PrefixTooLong { max: 128 })
    );
    assert_eq!(Cidr::from_mapped(!0, 128).map(|c| c.last()), Ok(!0));
}

#[test]
fn netset_lines() {
    assert_eq!(parse_netset_line(""), Ok(None));
    assert_eq!(parse_netset_line("   \r"), Ok(None));
    assert_eq!(parse_netset_line("# Maintainer: FireHOL"), Ok(None));
    assert_eq!(parse_netset_line("  #"), Ok(None));
    assert_eq!(
        parse_netset_line("1.2.3.0/24 # spam"),
        Ok(Some(cidr("1.2.3.0/24")))
    );
    assert_eq!(parse_netset_line("1.2.3.4\r"), Ok(Some(cidr("1.2.3.4/32"))));
    assert_eq!(
        parse_netset_line("1.2.3.4 junk"),
        Err(CidrError::BadAddress)
    );
}

#[test]
fn most_specific_match_wins() {
    let mut set = CidrSet::new([CidrEntry::EMPTY; 8]);
    for s in ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16"] {
        assert_eq!(set.insert(cidr(s), Origin::Config), Ok(true));
    }
    let m = |set: &CidrSet<_>, s: &str| set.matching(map_ip(ip(s)));
    assert_eq!(m(&set, "10.1.2.3"), Some(cidr("10.1.2.0/24")));
    assert_eq!(m(&set, "10.1.3.0"), Some(cidr("10.1.0.0/16")));
    // Past a sibling's end, the walk climbs to the common parent.
    assert_eq!(m(&set, "10.3.0.0"), Some(cidr("10.0.0.0/8")));
    assert_eq!(m(&set, "11.0.0.0"), None);
    assert_eq!(m(&set, "9.255.255.255"), None);
    assert!(set.remove(cidr("10.1.0.0/16")));
    assert_eq!(m(&set, "10.1.2.3"), Some(cidr("10.1.2.0/24")));
    assert_eq!(m(&set, "10.1.3.0"), Some(cidr("10.0.0.0/8")));
    assert!(!set.remove(cidr("10.1.0.0/16")));
}

#[test]
fn same_network_different_lengths() {
    let mut set = CidrSet::new([CidrEntry::EMPTY; 4]);
    set.insert(cidr("10.0.0.0/16"), Origin::Config).unwrap();
    set.insert(cidr("10.0.0.0/8"), Origin::Config).unwrap();
    set.insert(cidr("10.0.0.0/24"), Origin::Config).unwrap();
    let order: std::vec::Vec<_> = set.iter().map(|e| e.cidr().prefix_len()).collect();
    assert_eq!(order, [8, 16, 24]);
    assert_eq!(
        set.matching(map_ip(ip("10.0.1.0"))),
        Some(cidr("10.0.0.0/16"))
    );
    assert_eq!(
        set.matching(map_ip(ip("10.0.0.255"))),
        Some(cidr("10.0.0.0/24"))
    );
}

#[test]
fn manual_wins_over_config() {
    let mut set = CidrSet::new([CidrEntry::EMPTY; 4]);
    let c = cidr("192.0.2.0/24");
    assert_eq!(set.insert(c, Origin::Config), Ok(true));
    assert_eq!(set.insert(c, Origin::Manual), Ok(false));
    assert_eq!(set.insert(c, Origin::Config), Ok(false));
    assert_eq!(set.iter().next().unwrap().origin(), Origin::Manual);
    set.insert(cidr("198.51.100.0/24"), Origin::Config).unwrap();
    assert_eq!(set.remove_origin(Origin::Config), 1);
    assert_eq!(set.len(), 1);
    assert!(set.contains(ip("192.0.2.1")));
    set.clear();
    assert!(set.is_empty());
    assert!(!set.contains(ip("192.0.2.1")));
}

#[test]
fn full_at_capacity() {
    let mut set = CidrSet::new([CidrEntry::EMPTY; 2]);
    set.insert(cidr("1.0.0.0/8"), Origin::Config).unwrap();
    set.insert(cidr("2.0.0.0/8"), Origin::Config).unwrap();
    assert_eq!(
        set.insert(cidr("3.0.0.0/8"), Origin::Config),
        Err(CidrSetError::Full { capacity: 2 })
    );
    // Re-adding a present prefix needs no room.
    assert_eq!(set.insert(cidr("1.0.0.0/8"), Origin::Manual), Ok(false));
    let mut none = CidrSet::new([CidrEntry::EMPTY; 0]);
    assert_eq!(
        none.insert(cidr("1.0.0.0/8"), Origin::Config),
        Err(CidrSetError::Full { capacity: 0 })
    );
    assert!(!none.contains(ip("1.1.1.1")));
}

#[test]
fn bulk_build_links_nested_chains() {
    let list = [
        "10.1.2.0/24",
        "10.0.0.0/8",
        "10.2.0.0/16",
        "10.1.0.0/16",
        "10.1.2.0/24",
    ]
    .map(|s| (cidr(s), Origin::Config));
    let set = CidrSet::build([CidrEntry::EMPTY; 4], list).unwrap();
    let parents: std::vec::Vec<_> = set.iter().map(|e| e.parent).collect();
    // Sorted: /8, 10.1/16, 10.1.2/24, 10.2/16.
    assert_eq!(parents, [NO_PARENT, 0, 1, 0]);
    assert_eq!(
        set.matching(map_ip(ip("10.1.3.0"))),
        Some(cidr("10.1.0.0/16"))
    );
    assert_eq!(
        CidrSet::build(
            [CidrEntry::EMPTY; 0],
            [(cidr("10.0.0.0/8"), Origin::Config)]
        )
        .err(),
        Some(CidrSetError::Full { capacity: 0 })
    );
    assert!(CidrSet::build([CidrEntry::EMPTY; 0], [])
        .unwrap()
        .is_empty());
}
