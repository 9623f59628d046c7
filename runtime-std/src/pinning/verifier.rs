//! Certificate pinning for every TLS connection mtguard makes upstream.
//!
//! [`PinnedVerifier`] is a rustls [`ServerCertVerifier`]. With
//! [`Trust::WebPki`] it first validates the chain the ordinary way (the
//! Mozilla roots of `webpki-roots`, or the CAs of a file given in the config,
//! then the server name), and then requires the chain to match a pin: the
//! SHA-256 of the SubjectPublicKeyInfo or of the whole certificate, of any
//! certificate *on the validated path* (leaf, intermediates, and the root if
//! the server sent it), pins that have not expired only. Pins are checked
//! against the validated path, not against whatever the server appended:
//! otherwise anyone with a CA-valid certificate for the name could append
//! the (public) pinned intermediate and pass.
//!
//! [`Trust::PinsOnly`] is for operators' own backends with a self-signed or
//! private-CA certificate: no CA and no name check, the pin is the identity.
//! Then only the leaf counts, since nothing ties an extra certificate in the
//! chain to the key that signs the handshake. The handshake signature is
//! checked in both modes, so a pinned certificate without its key is useless.
//!
//! Validation runs inside the rustls handshake, so in the task that makes the
//! connection; nothing here blocks other connections.

use crate::unix_now;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use mtguard_core::pins::{presented_pins, PinSet, PinVerdict};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{OnExpired, Trust};
use crate::engine::Guard;

/// Most pins one pinned host can have: the core's pin-set capacity.
pub const MAX_PINS: usize = mtguard_core::pins::DEFAULT_CAPACITY;

/// The level policy on pin counts: from level 2 on, every pinned host needs
/// at least two unexpired pins, so that a key change has a backup to land
/// on (RFC 7469 section 2.5 requires a backup pin) instead of cutting the
/// host off.
pub fn check_backup_pins(
    level: u8,
    host: &str,
    pins: &[mtguard_core::pins::Pin],
) -> anyhow::Result<()> {
    if level < 2 {
        return Ok(());
    }
    let now = unix_now();
    let usable = pins.iter().filter(|p| !p.is_expired(now)).count();
    anyhow::ensure!(
        usable >= 2,
        "{host}: level {level} needs at least 2 unexpired pins for every pinned host \
         (the current key and a backup, as RFC 7469 requires); it has {usable}. \
         Add a backup pin, or run at level 1"
    );
    Ok(())
}

/// Where a verifier reads its pins.
#[derive(Clone)]
pub enum PinSource {
    /// A fixed set (the `fetch` command, `[refresh]`).
    Fixed {
        /// The pins.
        pins: Arc<PinSet>,
        /// The engine a chain that matches none is reported to (as an
        /// event and in its `pin_failures` count), inside `mtguard run`.
        report: Option<Arc<Guard>>,
    },
    /// The engine's set, read at every handshake, so a pin added or removed
    /// through the admin API applies to the next connection. Mismatches go
    /// through the engine: an event and its `pin_failures` count.
    Engine(Arc<Guard>),
}

/// A rustls verifier that validates, then requires a pin match.
pub struct PinnedVerifier {
    host: String,
    pins: PinSource,
    trust: Trust,
    on_expired: OnExpired,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    last_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("host", &self.host)
            .field("trust", &self.trust)
            .field("on_expired", &self.on_expired)
            .finish_non_exhaustive()
    }
}

/// The ring provider: the project uses ring, never aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots WebPKI validation trusts: the CAs of `ca_file` (PEM or DER)
/// when given, else the Mozilla roots compiled in from `webpki-roots`, so
/// the result does not depend on what the host has installed.
pub fn roots(ca_file: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        store
            .add(cert)
            .with_context(|| format!("{}: a certificate is not a usable CA", path.display()))?;
    }
    Ok(store)
}

/// The certificates of a PEM file (every `CERTIFICATE` block) or of a DER
/// file (one certificate).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    certs_from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// [`load_certs`] on bytes already read.
pub fn certs_from_bytes(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let certs = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("not a valid PEM file: {e}"))?;
        anyhow::ensure!(!certs.is_empty(), "the PEM file holds no CERTIFICATE block");
        return Ok(certs);
    }
    // A DER certificate is one SEQUENCE; anything else would only fail
    // later with a less helpful message.
    anyhow::ensure!(
        bytes.first() == Some(&0x30),
        "neither PEM (no -----BEGIN line) nor a DER certificate"
    );
    Ok(vec![CertificateDer::from(bytes.to_vec())])
}

/// `sha256/... cert-sha256/...` for every certificate of `chain`, leaf
/// first: what an operator would pin, for messages about a mismatch.
pub fn describe_presented(chain: &[&[u8]]) -> String {
    if chain.is_empty() {
        return "no certificate".into();
    }
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| match presented_pins(der) {
            Ok((spki, cert)) => format!("[{i}] {spki} {cert}"),
            Err(e) => format!("[{i}] unreadable certificate ({e:?})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl PinnedVerifier {
    /// A verifier for connections to `host` (used in messages only: the
    /// name checked is the one rustls is given), with `roots` for
    /// [`Trust::WebPki`].
    pub fn new(
        host: impl Into<String>,
        pins: PinSource,
        trust: Trust,
        on_expired: OnExpired,
        roots: RootCertStore,
    ) -> Arc<PinnedVerifier> {
        Arc::new(PinnedVerifier {
            host: host.into(),
            pins,
            trust,
            on_expired,
            roots: Arc::new(roots),
            provider: provider(),
            last_failure: Mutex::new(None),
        })
    }

    /// Why the last refused handshake was refused, with the pins the server
    /// presented.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A rustls client config that verifies with `self`.
    ///
    /// Session resumption is off: a resumed session skips certificate
    /// verification, so a pin removed through the admin API would keep
    /// admitting the old key for as long as its tickets live. Every
    /// connection pays a full handshake instead.
    pub fn client_config(self: &Arc<Self>) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config
    }

    fn refuse(&self, why: String, chain: &[&[u8]]) -> rustls::Error {
        let presented = describe_presented(chain);
        tracing::warn!(
            host = %self.host,
            presented = %presented,
            "{why}; refusing the connection"
        );
        let message = format!("{}: {why}; the server presented {presented}", self.host);
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }

    /// WebPKI validation; the DER of every certificate on the validated
    /// path, leaf first, plus the root if the server sent it.
    fn validate<'a>(
        &self,
        end_entity: &'a CertificateDer<'a>,
        intermediates: &'a [CertificateDer<'a>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<Vec<&'a [u8]>, webpki::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)?;
        let path = cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )?;
        cert.verify_is_valid_for_subject_name(server_name)?;
        let mut on_path: Vec<&'a [u8]> = vec![end_entity.as_ref()];
        for ca in path.intermediate_certificates() {
            // The path borrows the presented intermediates: find which one
            // each entry is, so the slices outlive the path.
            let der = ca.der();
            if let Some(sent) = intermediates.iter().find(|c| c.as_ref() == der.as_ref()) {
                on_path.push(sent.as_ref());
            }
        }
        let anchor_spki = path.anchor().subject_public_key_info.as_ref();
        for sent in intermediates {
            let is_anchor = mtguard_core::der::certificate_spki(sent)
                .ok()
                .and_then(der_value)
                .is_some_and(|v| v == anchor_spki);
            if is_anchor && !on_path.contains(&sent.as_ref()) {
                on_path.push(sent.as_ref());
            }
        }
        Ok(on_path)
    }
}

/// The value of a DER TLV (definite length up to 4 bytes, as a certificate's
/// fields are): webpki keeps a trust anchor's SubjectPublicKeyInfo without
/// its SEQUENCE header.
fn der_value(tlv: &[u8]) -> Option<&[u8]> {
    let first = *tlv.get(1)?;
    let header = match first {
        0..=0x7f => 2,
        0x81..=0x84 => 2 + usize::from(first & 0x7f),
        _ => return None,
    };
    tlv.get(header..)
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let cert = match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert)
}

// Failures are recorded with `verify_chain(&[], now)`: the engine has no
// call that only counts a failure, and an empty chain is one that always
// fails (the core documents that it matches nothing, and an empty or
// expired set is no match either), so the call adds exactly one
// `pin_failures` and one `PinMismatch` event whatever the set holds.
impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<&[u8]> = std::iter::once(end_entity.as_ref())
            .chain(intermediates.iter().map(|c| c.as_ref()))
            .collect();
        let chain = match self.trust {
            Trust::WebPki => match self.validate(end_entity, intermediates, server_name, now) {
                Ok(path) => path,
                Err(e) => {
                    let error = webpki_error(e);
                    let _ = self.refuse(format!("certificate not valid: {error}"), &presented);
                    return Err(error);
                }
            },
            Trust::PinsOnly => vec![end_entity.as_ref()],
        };
        let now_unix = now.as_secs();
        let verdict = match &self.pins {
            PinSource::Fixed { pins, report } => {
                let verdict = pins.verify(&chain, now_unix);
                if let (false, Some(guard)) = (verdict.is_match(), report) {
                    let _ = guard.with(|e, _| e.verify_chain(&[], now_unix));
                }
                verdict
            }
            PinSource::Engine(guard) => {
                // Hashing the chain takes microseconds; the engine's lock is
                // held only to copy the pins (and to record a failure), so
                // the check does not hold up the accept path.
                let pins = guard.with(|e, _| e.pins().clone());
                let verdict = pins.verify(&chain, now_unix);
                if !verdict.is_match() {
                    let _ = guard.with(|e, _| e.verify_chain(&[], now_unix));
                }
                verdict
            }
        };
        match verdict {
            PinVerdict::Match { .. } => Ok(ServerCertVerified::assertion()),
            PinVerdict::NoUnexpiredPins | PinVerdict::Empty => {
                if self.on_expired == OnExpired::WebPki && self.trust == Trust::WebPki {
                    tracing::error!(
                        host = %self.host,
                        presented = %describe_presented(&chain),
                        "NO UNEXPIRED PIN for this host: accepted on WebPKI validation alone \
                         (on_expired = \"webpki\"); add current pins now"
                    );
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(self.refuse(
                        "every pin of this host has expired or none is set (on_expired = \"fail-closed\")"
                            .into(),
                        &presented,
                    ))
                }
            }
            PinVerdict::NoMatch => Err(self.refuse(
                format!(
                    "certificate chain matches no pin ({})",
                    match self.trust {
                        Trust::WebPki => "checked: the validated path",
                        Trust::PinsOnly => "checked: the leaf, trust = \"pins-only\"",
                    }
                ),
                &presented,
            )),
            PinVerdict::Malformed { chain_index, error } => Err(self.refuse(
                format!("certificate {chain_index} of the chain cannot be read ({error:?})"),
                &presented,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_value_strips_the_header() {
        assert_eq!(der_value(&[0x30, 0x02, 1, 2]), Some(&[1u8, 2][..]));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(der_value(&long).map(<[u8]>::len), Some(256));
        assert_eq!(der_value(&[0x30]), None);
        assert_eq!(der_value(&[0x30, 0x80]), None);
    }

    #[test]
    fn certs_from_bytes_refuses_what_is_no_certificate() {
        assert!(certs_from_bytes(b"hello").is_err());
        assert!(certs_from_bytes(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert_eq!(certs_from_bytes(&[0x30, 0x00]).unwrap().len(), 1);
    }

    #[test]
    fn the_pin_set_copied_per_handshake_is_small() {
        let bytes = std::mem::size_of::<PinSet>();
        println!("PinSet (100 pins): {bytes} bytes");
        assert!(bytes <= 12 * 1024, "{bytes}");
    }

    #[test]
    fn on_expired_defaults_by_level() {
        assert_eq!(OnExpired::default_for_level(0), OnExpired::WebPki);
        assert_eq!(OnExpired::default_for_level(1), OnExpired::WebPki);
        assert_eq!(OnExpired::default_for_level(2), OnExpired::FailClosed);
        assert_eq!(OnExpired::default_for_level(3), OnExpired::FailClosed);
    }
}
