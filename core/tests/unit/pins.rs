//! Unit tests of `src/pins.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use crate::der::tests::ed25519_cert;
use std::string::{String, ToString};
use std::{format, vec};

/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
/// openssl dgst -sha256 -binary | base64` of the test certificate.
const ED25519_SPKI_PIN: &str = "sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFGc=";
/// `openssl dgst -sha256` of the same certificate in DER.
const ED25519_CERT_PIN: &str =
    "cert-sha256/c5b6e022a943c3750b6852518db99a31c40bab78e1d3e19e9cd0c630642890be";

const COUNTING: [u8; 32] = {
    let mut hash = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        hash[i] = i as u8;
        i += 1;
    }
    hash
};
const COUNTING_B64: &str = "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const COUNTING_HEX: &str =
    "cert-sha256/000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn line(text: &str) -> Pin {
    parse_pin_line(text).unwrap().unwrap()
}

fn date(text: &str) -> Result<u64, PinError> {
    parse_date(text)
}

#[test]
fn text_forms_decode_to_the_same_bytes() {
    assert_eq!(
        Pin::parse(COUNTING_B64).unwrap(),
        Pin::new(PinKind::Spki, COUNTING)
    );
    assert_eq!(
        Pin::parse(COUNTING_HEX).unwrap(),
        Pin::new(PinKind::Certificate, COUNTING)
    );
    let upper = format!("cert-sha256/{}", &COUNTING_HEX[12..].to_uppercase());
    assert_eq!(Pin::parse(&upper).unwrap().hash(), &COUNTING);
}

#[test]
fn text_forms_round_trip() {
    for text in [
        COUNTING_B64,
        COUNTING_HEX,
        ED25519_SPKI_PIN,
        ED25519_CERT_PIN,
    ] {
        let pin: Pin = text.parse().unwrap();
        assert_eq!(pin.to_string(), text);
    }
    for kind in [PinKind::Spki, PinKind::Certificate] {
        for fill in [0x00, 0x5a, 0xff] {
            let pin = Pin::new(kind, [fill; 32]);
            assert_eq!(Pin::parse(&pin.to_string()).unwrap(), pin);
        }
    }
}

#[test]
fn presented_pins_of_a_real_certificate() {
    let cert = ed25519_cert();
    let (spki, whole) = presented_pins(&cert).unwrap();
    assert_eq!(spki.to_string(), ED25519_SPKI_PIN);
    assert_eq!(whole.to_string(), ED25519_CERT_PIN);
    assert_eq!(spki_pin(&cert).unwrap(), *spki.hash());
    assert_eq!(cert_pin(&cert), *whole.hash());
    assert_eq!(
        presented_pins(&cert[1..]),
        Err(DerError::UnexpectedTag {
            expected: der::SEQUENCE,
            found: 0x82,
        })
    );
}

#[test]
fn every_pin_error() {
    use PinError::*;
    let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let too_long = format!("sha256/{b64} # {}", "x".repeat(LABEL_MAX + 1));
    let cases = [
        (
            "sha1/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            UnknownPrefix,
        ),
        (
            "SHA256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            UnknownPrefix,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
            WrongLength {
                kind: PinKind::Spki,
                found: 43,
            },
        ),
        (
            "sha256/",
            WrongLength {
                kind: PinKind::Spki,
                found: 0,
            },
        ),
        // A bad character, no padding (33 bytes), "==" (31 bytes), and
        // non-zero bits after the last byte.
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8*",
            BadBase64,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A",
            BadBase64,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
            BadBase64,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
            BadBase64,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-_",
            BadBase64,
        ),
        (
            "cert-sha256/000102",
            WrongLength {
                kind: PinKind::Certificate,
                found: 6,
            },
        ),
        (
            "cert-sha256/000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g",
            BadHex,
        ),
        (
            "cert-sha256/+00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            BadHex,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= expires=2024-02-30",
            BadDate,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= expires=",
            BadDate,
        ),
        (&too_long, LabelTooLong { max: LABEL_MAX }),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= #\u{7}bell",
            BadLabel,
        ),
        (
            "sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= expires 2030-01-01",
            TrailingGarbage,
        ),
    ];
    for (text, error) in cases {
        assert_eq!(parse_pin_line(text), Err(error), "{text}");
        assert!(!error.to_string().is_empty());
    }
    assert_eq!(
        Pin::new(PinKind::Spki, COUNTING).with_label("tab\there"),
        Err(BadLabel)
    );
    assert_eq!(
        Pin::parse(&format!("sha256/{b64}")).unwrap().hash(),
        &COUNTING
    );
    assert_eq!(
        Pin::parse("sha256/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= "),
        Err(WrongLength {
            kind: PinKind::Spki,
            found: 45
        })
    );
}

#[test]
fn error_messages_name_the_problem() {
    let wrong = PinError::WrongLength {
        kind: PinKind::Certificate,
        found: 6,
    };
    assert_eq!(
        wrong.to_string(),
        "cert-sha256/ pin needs 64 hex digits, found 6"
    );
    let wrong = PinError::WrongLength {
        kind: PinKind::Spki,
        found: 43,
    };
    assert_eq!(
        wrong.to_string(),
        "sha256/ pin needs 44 base64 characters, found 43"
    );
    assert_eq!(
        PinError::LabelTooLong { max: 32 }.to_string(),
        "label is longer than 32 bytes"
    );
    assert_eq!(
        PinSetError::Full { capacity: 100 }.to_string(),
        "pin set is full: it holds 100 pins"
    );
}

#[test]
fn known_dates() {
    assert_eq!(date("1970-01-01"), Ok(0));
    assert_eq!(date("1970-01-02"), Ok(86_400));
    assert_eq!(date("2000-03-01"), Ok(951_868_800));
    assert_eq!(date("2000-02-29"), Ok(951_782_400));
    assert_eq!(date("2024-02-29"), Ok(1_709_164_800));
    assert_eq!(date("2038-01-19"), Ok(2_147_472_000));
    assert_eq!(date("9999-12-31"), Ok(253_402_214_400));
}

#[test]
fn impossible_dates() {
    for text in [
        "2023-02-29",
        "2100-02-29",
        "1900-02-29",
        "2024-02-30",
        "2024-04-31",
        "2024-13-01",
        "2024-00-10",
        "2024-01-00",
        "2024-01-32",
        "1969-12-31",
        "0000-01-01",
        "2024-1-01",
        "2024-01-1",
        "24-01-01",
        "2024/01/01",
        "2024-01-01T",
        "+024-01-01",
        "2024-0a-01",
        "２０２４-01-01",
        "",
    ] {
        assert_eq!(date(text), Err(PinError::BadDate), "{text}");
    }
}

#[test]
fn day_counting_is_its_own_inverse() {
    // Every day from 1970 to past the end of the next 400-year era.
    let last = days_from_civil(2401, 3, 1);
    let mut expected = (1970, 1, 1);
    for days in 0..=last {
        let civil = civil_from_days(days);
        assert_eq!(civil, expected, "day {days}");
        assert_eq!(days_from_civil(civil.0, civil.1, civil.2), days);
        let (y, m, d) = expected;
        expected = if d < days_in_month(y, m) {
            (y, m, d + 1)
        } else if m < 12 {
            (y, m + 1, 1)
        } else {
            (y + 1, 1, 1)
        };
    }
}

#[test]
fn blank_and_comment_lines() {
    for text in [
        "",
        "   ",
        "\t",
        "#",
        "# sha256/whatever",
        "   # indented",
        "\r",
    ] {
        assert_eq!(parse_pin_line(text), Ok(None), "{text:?}");
    }
}

#[test]
fn full_lines() {
    let pin = line(&format!(
        "  {COUNTING_B64}   expires=2024-02-29   # backup key #2 \r"
    ));
    assert_eq!(pin.kind(), PinKind::Spki);
    assert_eq!(pin.hash(), &COUNTING);
    assert_eq!(pin.expires(), Some(1_709_164_800));
    assert_eq!(pin.label(), "backup key #2");

    let pin = line(&format!("{COUNTING_HEX}#seed"));
    assert_eq!(
        (pin.kind(), pin.expires(), pin.label()),
        (PinKind::Certificate, None, "seed")
    );

    let pin = line(COUNTING_B64);
    assert_eq!((pin.expires(), pin.label()), (None, ""));

    let exactly = "x".repeat(LABEL_MAX);
    assert_eq!(
        line(&format!("{COUNTING_B64} # {exactly}")).label(),
        exactly
    );
    let multibyte = "é".repeat(LABEL_MAX / 2 + 1);
    assert_eq!(
        parse_pin_line(&format!("{COUNTING_B64} # {multibyte}")),
        Err(PinError::LabelTooLong { max: LABEL_MAX })
    );
}

#[test]
fn only_one_expiry_and_nothing_else() {
    for rest in [
        "expires=2030-01-01 expires=2031-01-01",
        "expires=2030-01-01 extra",
        "expiry=2030-01-01",
        "label",
        "EXPIRES=2030-01-01",
    ] {
        assert_eq!(
            parse_pin_line(&format!("{COUNTING_B64} {rest}")),
            Err(PinError::TrailingGarbage),
            "{rest}"
        );
    }
}

#[test]
fn lines_round_trip() {
    for text in [
        COUNTING_B64.to_string(),
        format!("{COUNTING_HEX} expires=2024-02-29"),
        format!("{COUNTING_B64} # primary"),
        format!("{COUNTING_HEX} expires=1970-01-01 # a # in the label"),
        format!(
            "{COUNTING_B64} expires=9999-12-31 # {}",
            "y".repeat(LABEL_MAX)
        ),
    ] {
        let pin = line(&text);
        assert_eq!(pin.display_line().to_string(), text);
        assert_eq!(line(&pin.display_line().to_string()), pin);
    }
}

#[test]
fn written_expiry_never_outlives_the_pin() {
    let noon = 1_709_164_800 + 12 * 3600;
    let pin = Pin::new(PinKind::Spki, COUNTING).with_expiry(Some(noon));
    let written = line(&pin.display_line().to_string());
    assert_eq!(written.expires(), Some(1_709_164_800));

    let far = Pin::new(PinKind::Spki, COUNTING).with_expiry(Some(u64::MAX));
    let text = far.display_line().to_string();
    assert!(text.ends_with(" expires=9999-12-31"), "{text}");
}

#[test]
fn expiry_boundary() {
    let pin = Pin::new(PinKind::Spki, COUNTING).with_expiry(Some(1000));
    assert!(!pin.is_expired(999));
    assert!(pin.is_expired(1000));
    assert!(!Pin::new(PinKind::Spki, COUNTING).is_expired(u64::MAX));
}

fn numbered(i: u8) -> Pin {
    Pin::new(PinKind::Spki, [i; 32])
}

#[test]
fn set_capacity_and_duplicates() {
    let mut set: PinSet = PinSet::new();
    assert_eq!(set.capacity(), DEFAULT_CAPACITY);
    for i in 0..100 {
        set.add(numbered(i)).unwrap();
    }
    assert_eq!(
        set.add(numbered(200)),
        Err(PinSetError::Full { capacity: 100 })
    );
    assert_eq!(set.len(), 100);

    let mut set = PinSet::<4>::new();
    set.add(numbered(1)).unwrap();
    let relabelled = numbered(1)
        .with_label("other")
        .unwrap()
        .with_expiry(Some(5));
    assert_eq!(set.add(relabelled), Err(PinSetError::Duplicate));
    // Same hash, other kind: a different pin.
    set.add(Pin::new(PinKind::Certificate, [1; 32])).unwrap();
    assert_eq!(set.len(), 2);
}

#[test]
fn remove_keeps_order() {
    let mut set = PinSet::<4>::new();
    for i in 0..4 {
        set.add(numbered(i)).unwrap();
    }
    assert_eq!(set.remove(PinKind::Spki, &[1; 32]), Some(numbered(1)));
    assert_eq!(set.remove(PinKind::Spki, &[1; 32]), None);
    assert_eq!(set.remove(PinKind::Certificate, &[2; 32]), None);
    let left: vec::Vec<u8> = set.iter().map(|pin| pin.hash()[0]).collect();
    assert_eq!(left, [0, 2, 3]);
    assert_eq!(set.get(1), Some(&numbered(2)));
    set.clear();
    assert!(set.is_empty());
    set.add(numbered(9)).unwrap();
    assert_eq!(set.as_slice(), [numbered(9)]);
}

#[test]
fn verify_against_a_real_certificate() {
    let cert = ed25519_cert();
    let chain: [&[u8]; 1] = [&cert];
    let spki = Pin::parse(ED25519_SPKI_PIN).unwrap();
    let whole = Pin::parse(ED25519_CERT_PIN).unwrap();

    let mut set = PinSet::<4>::new();
    assert_eq!(set.verify(&chain, 0), PinVerdict::Empty);
    set.add(numbered(7)).unwrap();
    assert_eq!(set.verify(&chain, 0), PinVerdict::NoMatch);
    set.add(whole.clone().with_expiry(Some(100))).unwrap();
    assert_eq!(
        set.verify(&chain, 99),
        PinVerdict::Match {
            pin_index: 1,
            chain_index: 0
        }
    );
    assert_eq!(set.verify(&chain, 100), PinVerdict::NoMatch);
    set.add(spki).unwrap();
    assert_eq!(
        set.verify(&chain, 100),
        PinVerdict::Match {
            pin_index: 2,
            chain_index: 0
        }
    );
    // Both match: the first in set order is reported.
    assert_eq!(
        set.verify(&chain, 0),
        PinVerdict::Match {
            pin_index: 1,
            chain_index: 0
        }
    );
    assert!(set.verify(&chain, 0).is_match());
    assert_eq!(set.verify(&[], 0), PinVerdict::NoMatch);

    let bad: [&[u8]; 2] = [&cert, &cert[..10]];
    assert_eq!(
        set.verify(&bad, 0),
        PinVerdict::Malformed {
            chain_index: 1,
            error: DerError::Truncated
        }
    );
}

#[test]
fn only_expired_pins() {
    let cert = ed25519_cert();
    let mut set = PinSet::<2>::new();
    set.add(Pin::parse(ED25519_SPKI_PIN).unwrap().with_expiry(Some(10)))
        .unwrap();
    set.add(numbered(3).with_expiry(Some(20))).unwrap();
    let chain = [cert.as_slice()];
    assert!(set.verify(&chain, 9).is_match());
    assert_eq!(set.verify(&chain, 10), PinVerdict::NoMatch);
    assert_eq!(set.verify(&chain, 20), PinVerdict::NoUnexpiredPins);
    // Nothing could match, so the chain is not even read.
    assert_eq!(set.verify(&[&b"junk"[..]], 20), PinVerdict::NoUnexpiredPins);
}

#[test]
fn labels() {
    let pin = Pin::new(PinKind::Spki, COUNTING)
        .with_label("primary")
        .unwrap();
    assert_eq!(pin.label(), "primary");
    assert_eq!(pin.to_string(), COUNTING_B64, "Display shows the pin alone");
    assert_eq!(
        format!("{pin:?}"),
        format!("Pin {{ pin: {COUNTING_B64}, expires: None, label: \"primary\" }}")
    );
    assert_eq!(
        pin.display_line().to_string(),
        format!("{COUNTING_B64} # primary")
    );
    let long: String = "z".repeat(LABEL_MAX + 1);
    assert_eq!(
        Pin::new(PinKind::Spki, COUNTING).with_label(&long),
        Err(PinError::LabelTooLong { max: LABEL_MAX })
    );
    assert_eq!(
        Pin::new(PinKind::Spki, COUNTING).with_label("two\nlines"),
        Err(PinError::BadLabel)
    );
}
