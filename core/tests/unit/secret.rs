//! Unit tests of `src/mtproto/secret.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use std::string::ToString;

const KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn every_form_round_trips_to_canonical_hex() {
    let classic = Secret::parse(KEY).unwrap();
    assert_eq!(classic.kind(), SecretKind::Classic);
    assert_eq!(classic.to_string(), KEY);

    let dd = Secret::parse(&["DD", &KEY.to_uppercase()].concat()).unwrap();
    assert_eq!(dd.kind(), SecretKind::Padded);
    assert_eq!(dd.to_string(), ["dd", KEY].concat());

    // "ee" + key + hex("example.com")
    let ee_hex = ["ee", KEY, "6578616d706c652e636f6d"].concat();
    let ee = Secret::parse(&ee_hex).unwrap();
    assert_eq!(ee.kind(), SecretKind::FakeTls);
    assert_eq!(ee.domain(), "example.com");
    assert_eq!(ee.to_string(), ee_hex);

    // The same bytes in base64url, padded and not (Python's
    // base64.urlsafe_b64encode).
    let b64 = "7gEjRWeJq83vASNFZ4mrze9leGFtcGxlLmNvbQ==";
    assert_eq!(Secret::parse(b64).unwrap(), ee);
    assert_eq!(Secret::parse(b64.trim_end_matches('=')).unwrap(), ee);

    let classic = Secret::parse("-_8-ASNFZ4mrze8BI0VniQ").unwrap();
    assert_eq!(classic.to_string(), "fbff3e0123456789abcdef0123456789");
    // All hex digits, but 11 bytes as hex: the base64url reading holds.
    let classic = Secret::parse("0123456789abcdef01234A").unwrap();
    assert_eq!(classic.to_string(), "d35db7e39ebbf3d69b71d79fd35db7e0");
}

#[test]
fn malformed_secrets_say_what_is_wrong() {
    assert_eq!(Secret::parse(" "), Err(SecretError::Empty));
    assert_eq!(Secret::parse("xyz!"), Err(SecretError::NotHexOrBase64));
    assert_eq!(
        Secret::parse("0123"),
        Err(SecretError::BadLength { len: 2 })
    );
    assert_eq!(
        Secret::parse(&["ab", KEY].concat()),
        Err(SecretError::UnknownMode { mode: 0xab })
    );
    assert_eq!(
        Secret::parse(&["dd", KEY, "00"].concat()),
        Err(SecretError::TrailingBytes)
    );
    assert_eq!(
        Secret::parse(&["ee", KEY].concat()),
        Err(SecretError::MissingDomain)
    );
    // "a..b", "-a", and a control byte
    for domain in ["612e2e62", "2d61", "610a"] {
        assert_eq!(
            Secret::parse(&["ee", KEY, domain].concat()),
            Err(SecretError::BadDomain)
        );
    }
}

#[test]
fn debug_hides_the_key() {
    let s = Secret::parse(KEY).unwrap();
    let shown = std::format!("{s:?}");
    assert!(!shown.contains("0123") && !shown.contains("[1, 35"));
}

#[test]
fn a_set_holds_sixteen() {
    let mut set = SecretSet::new();
    for i in 0..MAX_SECRETS {
        assert_eq!(set.push(Secret::parse(KEY).unwrap()), Ok(i));
    }
    assert_eq!(
        set.push(Secret::parse(KEY).unwrap()),
        Err(SecretError::TooMany)
    );
}
