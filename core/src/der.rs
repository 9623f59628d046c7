//! Just enough DER to find a certificate's SubjectPublicKeyInfo.
//!
//! Pinning needs one field of a certificate, without allocation. The X.509
//! crates do not offer that: x509-parser needs the standard library, x509-cert decodes
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
#[path = "../tests/unit/der.rs"]
pub(crate) mod tests;
