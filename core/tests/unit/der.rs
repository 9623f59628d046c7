//! Unit tests of `src/der.rs`, kept outside `src/` so that the
//! crate's own sources never name the standard library: the tests run on
//! the host and use it, the core never does.

extern crate std;

use super::*;
use base64::Engine as _;
use std::vec::Vec;

/// `openssl req -x509 -newkey ed25519 -subj /CN=der.test.mtguard`: 334
/// bytes, with long-form lengths (`82 01 4a`, `81 fd`) and a version.
const ED25519_CERT_B64: &str = "\
    MIIBSjCB/aADAgECAhR/bpLPRBxehH5adHdTercmsREB2DAFBgMrZXAwGzEZMBcGA1UEAwwQZGVy\
    LnRlc3QubXRndWFyZDAeFw0yNjExMjkwMjA2MjJaFw0zNjExMjYwMjA2MjJaMBsxGTAXBgNVBAMM\
    EGRlci50ZXN0Lm10Z3VhcmQwKjAFBgMrZXADIQCP/beK2Sbl1NBvydMZEV1u/TFzgoD/pMVnfZrO\
    DAn3m6NTMFEwHQYDVR0OBBYEFHikEjHwKpWoHgMmm7upVLU+HWvZMB8GA1UdIwQYMBaAFHikEjHw\
    KpWoHgMmm7upVLU+HWvZMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EAxy2SsuS4PCkGOQeOqnMV\
    0mpEdVQbw2XsMeTAmiUIS3YwMKz89eMla2EWOTMRdRs5k1CUDUZEW7x6NGDQjxK0Dg==";

/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der` of
/// the certificate above.
const ED25519_SPKI: [u8; 44] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0x8f, 0xfd, 0xb7, 0x8a,
    0xd9, 0x26, 0xe5, 0xd4, 0xd0, 0x6f, 0xc9, 0xd3, 0x19, 0x11, 0x5d, 0x6e, 0xfd, 0x31, 0x73, 0x82,
    0x80, 0xff, 0xa4, 0xc5, 0x67, 0x7d, 0x9a, 0xce, 0x0c, 0x09, 0xf7, 0x9b,
];

pub(crate) fn ed25519_cert() -> Vec<u8> {
    let mut buf = [0u8; 400];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(ED25519_CERT_B64, &mut buf)
        .unwrap();
    buf[..n].to_vec()
}

/// A structurally valid certificate around `tbs_fields`, with a dummy
/// signature: the walker never looks at signatures.
fn wrap_certificate(tbs_fields: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = std::vec![tag];
        match value.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(value);
        out
    }
    let mut body = tlv(SEQUENCE, tbs_fields);
    body.extend(tlv(SEQUENCE, &[0x06, 0x03, 0x2b, 0x65, 0x70]));
    body.extend(tlv(BIT_STRING, &[0x00, 0xaa]));
    tlv(SEQUENCE, &body)
}

/// serialNumber, then empty signature, issuer, validity and subject.
const FIELDS_BEFORE_SPKI: [u8; 11] = [
    0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00,
];

fn v1_fields(spki: &[u8]) -> Vec<u8> {
    let mut fields = FIELDS_BEFORE_SPKI.to_vec();
    fields.extend_from_slice(spki);
    fields
}

#[test]
fn short_and_long_form_lengths() {
    let (tlv, rest) = read_tlv(&[0x04, 0x02, 0xaa, 0xbb, 0xcc]).unwrap();
    assert_eq!(
        (tlv.tag, tlv.value, rest),
        (0x04, &[0xaa, 0xbb][..], &[0xcc][..])
    );
    assert_eq!(tlv.encoded, &[0x04, 0x02, 0xaa, 0xbb]);

    let mut long = std::vec![0x04, 0x81, 0x80];
    long.extend([0x55; 0x80]);
    let (tlv, rest) = read_tlv(&long).unwrap();
    assert_eq!(
        (tlv.value.len(), tlv.encoded.len(), rest.len()),
        (0x80, 0x83, 0)
    );

    let mut long = std::vec![0x04, 0x82, 0x01, 0x00];
    long.extend([0x55; 0x101]);
    let (tlv, rest) = read_tlv(&long).unwrap();
    assert_eq!((tlv.value.len(), rest), (0x100, &[0x55][..]));

    let mut long = std::vec![0x04, 0x83, 0x01, 0x00, 0x00];
    long.extend([0u8; 0x1_0000]);
    assert_eq!(read_tlv(&long).unwrap().0.value.len(), 0x1_0000);
}

#[test]
fn four_length_bytes_are_read_and_five_refused() {
    // 0x0100_0000 bytes are not there: the length was understood.
    let input = [0x04, 0x84, 0x01, 0x00, 0x00, 0x00, 0xaa];
    assert_eq!(read_tlv(&input), Err(DerError::Truncated));
    let input = [0x04, 0x84, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(read_tlv(&input), Err(DerError::Truncated));
    let input = [0x04, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00];
    assert_eq!(read_tlv(&input), Err(DerError::LengthTooLong));
    assert_eq!(read_tlv(&[0x04, 0xff]), Err(DerError::LengthTooLong));
}

#[test]
fn indefinite_length_is_refused() {
    let input = [0x30, 0x80, 0x02, 0x01, 0x00, 0x00, 0x00];
    assert_eq!(read_tlv(&input), Err(DerError::IndefiniteLength));
}

#[test]
fn non_minimal_lengths_are_refused() {
    assert_eq!(
        read_tlv(&[0x04, 0x81, 0x01, 0xaa]),
        Err(DerError::NonMinimalLength)
    );
    assert_eq!(
        read_tlv(&[0x04, 0x81, 0x7f]),
        Err(DerError::NonMinimalLength)
    );
    let mut padded = std::vec![0x04, 0x82, 0x00, 0x80];
    padded.extend([0u8; 0x80]);
    assert_eq!(read_tlv(&padded), Err(DerError::NonMinimalLength));
}

#[test]
fn truncated_headers_and_values() {
    assert_eq!(read_tlv(&[]), Err(DerError::Truncated));
    assert_eq!(read_tlv(&[0x30]), Err(DerError::Truncated));
    assert_eq!(read_tlv(&[0x30, 0x82, 0x01]), Err(DerError::Truncated));
    assert_eq!(
        read_tlv(&[0x30, 0x03, 0x00, 0x00]),
        Err(DerError::Truncated)
    );
}

#[test]
fn high_tag_numbers_are_refused() {
    assert_eq!(
        read_tlv(&[0x1f, 0x81, 0x00, 0x00]),
        Err(DerError::UnsupportedTag)
    );
    assert_eq!(read_tlv(&[0xbf, 0x01, 0x00]), Err(DerError::UnsupportedTag));
}

#[test]
fn read_expected_and_read_all() {
    assert_eq!(
        read_expected(&[0x02, 0x01, 0x05], SEQUENCE),
        Err(DerError::UnexpectedTag {
            expected: SEQUENCE,
            found: INTEGER
        })
    );
    assert_eq!(
        read_all(&[0x02, 0x01, 0x05], INTEGER).unwrap().value,
        &[0x05]
    );
    assert_eq!(
        read_all(&[0x02, 0x01, 0x05, 0x00], INTEGER),
        Err(DerError::TrailingData)
    );
}

#[test]
fn spki_of_a_real_certificate() {
    assert_eq!(certificate_spki(&ed25519_cert()).unwrap(), ED25519_SPKI);
}

#[test]
fn every_truncation_of_a_real_certificate_is_an_error() {
    let cert = ed25519_cert();
    for len in 0..cert.len() {
        assert!(
            certificate_spki(&cert[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut cert = ed25519_cert();
    cert.push(0x00);
    assert_eq!(certificate_spki(&cert), Err(DerError::TrailingData));
}

#[test]
fn bytes_after_the_signature_inside_the_certificate_are_refused() {
    let cert = ed25519_cert();
    // Grow the outer length (82 01 4a) by one and append a byte inside.
    let mut grown = cert.clone();
    grown[3] += 1;
    grown.push(0x00);
    assert_eq!(certificate_spki(&grown), Err(DerError::TrailingData));
}

#[test]
fn version_is_optional() {
    let spki = ED25519_SPKI;
    let v1 = wrap_certificate(&v1_fields(&spki));
    assert_eq!(certificate_spki(&v1).unwrap(), spki);

    let mut v3 = std::vec![CONTEXT_0, 0x03, INTEGER, 0x01, 0x02];
    v3.extend(v1_fields(&spki));
    v3.extend([0xa3, 0x02, 0x30, 0x00]); // empty extensions
    assert_eq!(certificate_spki(&wrap_certificate(&v3)).unwrap(), spki);
}

#[test]
fn missing_or_mistagged_fields_are_refused() {
    // Without a subject the key sits where the subject belongs, and
    // nothing follows it.
    let mut fields = FIELDS_BEFORE_SPKI[..9].to_vec();
    fields.extend(ED25519_SPKI);
    assert_eq!(
        certificate_spki(&wrap_certificate(&fields)),
        Err(DerError::Truncated)
    );

    let mut fields = v1_fields(&ED25519_SPKI);
    fields[0] = BIT_STRING; // serialNumber must be an INTEGER
    assert_eq!(
        certificate_spki(&wrap_certificate(&fields)),
        Err(DerError::UnexpectedTag {
            expected: INTEGER,
            found: BIT_STRING
        })
    );
}

#[test]
fn spki_must_be_algorithm_and_bit_string() {
    let not_bits = [
        0x30, 0x09, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x00,
    ];
    assert_eq!(
        certificate_spki(&wrap_certificate(&v1_fields(&not_bits))),
        Err(DerError::UnexpectedTag {
            expected: BIT_STRING,
            found: 0x04
        })
    );
    let extra = [
        0x30, 0x0b, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x00, 0x05, 0x00,
    ];
    assert_eq!(
        certificate_spki(&wrap_certificate(&v1_fields(&extra))),
        Err(DerError::TrailingData)
    );
}

#[test]
fn flipped_bytes_never_panic() {
    let cert = ed25519_cert();
    for i in 0..cert.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = cert.clone();
            bad[i] ^= mask;
            let _ = certificate_spki(&bad);
        }
    }
}
