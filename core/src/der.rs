//! Just enough DER to find a certificate's SubjectPublicKeyInfo.
//!
//! Pinning needs one field of a certificate, without allocation. The X.509
//! crates do not offer that: x509-parser needs `std`, x509-cert decodes
//! through `der` with its `alloc` feature, and rustls-webpki hands out the
//! SubjectPublicKeyInfo only as an owned re-encoding behind its `alloc`
//! feature. Walking to that field is a few dozen lines, so we do it here,
//! borrowing from the input and never recursing.
//!
//! The reader is strict DER: definite lengths only, in their shortest form.
//! rustls-webpki, which validates these certificates on servers, refuses
//! non-minimal lengths too, so tolerating them would widen what we parse
//! without admitting any certificate that a verified handshake delivers.

use core::fmt;

/// Universal tag of `INTEGER`.
pub const INTEGER: u8 = 0x02;
/// Universal tag of `BIT STRING`.
pub const BIT_STRING: u8 = 0x03;
/// Universal tag of a constructed `SEQUENCE`.
pub const SEQUENCE: u8 = 0x30;
/// Context-specific constructed tag `[0]`, as used by a certificate's
/// `version` field.
pub const CONTEXT_0: u8 = 0xa0;

/// Lengths of more than four bytes describe elements of 4 GiB or more, which
/// no certificate is; refusing them also keeps the value within `u32`.
const MAX_LENGTH_BYTES: usize = 4;

/// Why a DER input could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DerError {
    /// The input ended inside a tag, a length or a value.
    Truncated,
    /// The length was the BER indefinite form (`0x80`), which DER forbids.
    IndefiniteLength,
    /// The length was not in its shortest form, which DER requires.
    NonMinimalLength,
    /// The length used more than four bytes.
    LengthTooLong,
    /// The tag used the multi-byte (high tag number) form, which nothing we
    /// read uses.
    UnsupportedTag,
    /// An element had another tag than the structure requires there.
    UnexpectedTag {
        /// The tag the structure requires.
        expected: u8,
        /// The tag found in the input.
        found: u8,
    },
    /// Bytes followed the end of a structure that must fill its container.
    TrailingData,
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("DER input ends inside an element"),
            Self::IndefiniteLength => f.write_str("DER forbids indefinite lengths"),
            Self::NonMinimalLength => f.write_str("DER length is not in its shortest form"),
            Self::LengthTooLong => f.write_str("DER length uses more than 4 bytes"),
            Self::UnsupportedTag => f.write_str("DER tag uses the multi-byte form"),
            Self::UnexpectedTag { expected, found } => {
                write!(f, "expected DER tag {expected:#04x}, found {found:#04x}")
            }
            Self::TrailingData => f.write_str("unexpected bytes after a DER structure"),
        }
    }
}

impl core::error::Error for DerError {}

/// One element read from DER input, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet.
    pub tag: u8,
    /// The contents octets.
    pub value: &'a [u8],
    /// The whole element: tag, length and contents octets.
    pub encoded: &'a [u8],
}

/// Reads the element at the start of `input`, returning it and the bytes
/// after it.
pub fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, after_tag) = input.split_first().ok_or(DerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(DerError::UnsupportedTag);
    }
    let (&first, after_first) = after_tag.split_first().ok_or(DerError::Truncated)?;

    let (len, after_len) = if first < 0x80 {
        (usize::from(first), after_first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 {
            return Err(DerError::IndefiniteLength);
        }
        if count > MAX_LENGTH_BYTES {
            return Err(DerError::LengthTooLong);
        }
        let (bytes, rest) = after_first
            .split_at_checked(count)
            .ok_or(DerError::Truncated)?;
        // A leading zero byte, or a long form for what fits the short form,
        // could have been written shorter.
        if bytes[0] == 0 {
            return Err(DerError::NonMinimalLength);
        }
        let len = bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        if len < 0x80 {
            return Err(DerError::NonMinimalLength);
        }
        // A length beyond the address space cannot fit in the input either.
        (usize::try_from(len).map_err(|_| DerError::Truncated)?, rest)
    };

    let (value, rest) = after_len.split_at_checked(len).ok_or(DerError::Truncated)?;
    let encoded = &input[..input.len() - rest.len()];
    Ok((
        Tlv {
            tag,
            value,
            encoded,
        },
        rest,
    ))
}

/// Reads the element at the start of `input`, which must have tag `tag`.
pub fn read_expected(input: &[u8], tag: u8) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(DerError::UnexpectedTag {
            expected: tag,
            found: tlv.tag,
        });
    }
    Ok((tlv, rest))
}

/// Like [`read_expected`], for an element that must be the whole of `input`.
pub fn read_all(input: &[u8], tag: u8) -> Result<Tlv<'_>, DerError> {
    match read_expected(input, tag)? {
        (tlv, []) => Ok(tlv),
        _ => Err(DerError::TrailingData),
    }
}

/// The encoded SubjectPublicKeyInfo (tag, length and contents) of the X.509
/// certificate `cert_der`: the bytes that RFC 7469 and OkHttp pins hash.
///
/// Only the structure leading to that field is checked: the certificate and
/// its TBSCertificate must be well-formed SEQUENCEs whose outer layer fills
/// `cert_der`, the fields before the key must carry their tags, and the key
/// must be an AlgorithmIdentifier followed by a BIT STRING. Signatures, names
/// and dates are for the TLS stack to judge.
pub fn certificate_spki(cert_der: &[u8]) -> Result<&[u8], DerError> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
    //                            signatureValue }
    let certificate = read_all(cert_der, SEQUENCE)?;
    let (tbs, rest) = read_expected(certificate.value, SEQUENCE)?;
    let (_signature_algorithm, rest) = read_expected(rest, SEQUENCE)?;
    read_all(rest, BIT_STRING)?;

    // TBSCertificate ::= SEQUENCE { version [0] EXPLICIT DEFAULT v1,
    //     serialNumber, signature, issuer, validity, subject,
    //     subjectPublicKeyInfo, ... }
    let mut fields = tbs.value;
    if fields.first() == Some(&CONTEXT_0) {
        fields = read_tlv(fields)?.1;
    }
    for tag in [INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE] {
        fields = read_expected(fields, tag)?.1;
    }
    let (spki, _extensions) = read_expected(fields, SEQUENCE)?;

    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier,
    //                                     subjectPublicKey BIT STRING }
    let (_algorithm, key) = read_expected(spki.value, SEQUENCE)?;
    read_all(key, BIT_STRING)?;
    Ok(spki.encoded)
}

#[cfg(test)]
pub(crate) mod tests {
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
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0x8f, 0xfd, 0xb7,
        0x8a, 0xd9, 0x26, 0xe5, 0xd4, 0xd0, 0x6f, 0xc9, 0xd3, 0x19, 0x11, 0x5d, 0x6e, 0xfd, 0x31,
        0x73, 0x82, 0x80, 0xff, 0xa4, 0xc5, 0x67, 0x7d, 0x9a, 0xce, 0x0c, 0x09, 0xf7, 0x9b,
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
}
