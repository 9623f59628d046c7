//! Pins against certificates made by others.
//!
//! rcgen (from the key it signed with) and the openssl command line (from
//! the certificate, with its own ASN.1 code) produce each certificate's
//! SubjectPublicKeyInfo and hashes independently of our DER walker; every
//! pin we compute must agree with theirs.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mtguard_core::der::{certificate_spki, DerError};
use mtguard_core::pins::{
    cert_pin, presented_pins, spki_pin, Pin, PinKind, PinSet, PinSetError, PinVerdict,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData,
    SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
    PKCS_RSA_SHA256,
};
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A scratch directory for openssl's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pins-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `openssl args...` with `stdin`, returning its standard output.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command line is installed");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn openssl_text(args: &[&str], stdin: &[u8]) -> String {
    String::from_utf8(openssl(args, stdin))
        .unwrap()
        .trim()
        .to_owned()
}

/// What openssl says about a DER certificate.
struct OpensslView {
    spki: Vec<u8>,
    /// `sha256/...` as the RFC 7469 recipe computes it.
    spki_pin: String,
    /// `cert-sha256/...` from openssl's upper-case, colon-separated
    /// fingerprint.
    cert_pin: String,
}

fn openssl_view(cert_der: &[u8]) -> OpensslView {
    let pem = openssl(&["x509", "-inform", "der"], cert_der);
    let public_pem = openssl(&["x509", "-pubkey", "-noout"], &pem);
    let spki = openssl(&["pkey", "-pubin", "-outform", "der"], &public_pem);
    let digest = openssl(&["dgst", "-sha256", "-binary"], &spki);
    let base64 = openssl_text(&["base64", "-A"], &digest);
    let fingerprint = openssl_text(&["x509", "-noout", "-fingerprint", "-sha256"], &pem);
    let (_, hex) = fingerprint.split_once('=').unwrap();
    OpensslView {
        spki,
        spki_pin: format!("sha256/{base64}"),
        cert_pin: format!("cert-sha256/{}", hex.replace(':', "")),
    }
}

/// Our pins of `cert_der` must be openssl's, byte for byte and as text.
fn assert_agrees_with_openssl(cert_der: &[u8]) {
    let theirs = openssl_view(cert_der);
    assert_eq!(certificate_spki(cert_der).unwrap(), theirs.spki);

    let (spki, whole) = presented_pins(cert_der).unwrap();
    assert_eq!(spki.to_string(), theirs.spki_pin);
    assert_eq!(Pin::parse(&theirs.spki_pin).unwrap(), spki);
    assert_eq!(Pin::parse(&theirs.cert_pin).unwrap(), whole);
    assert_eq!(whole.to_string(), theirs.cert_pin.to_lowercase());
}

/// A DER certificate made by `openssl req` with `key_args`.
fn openssl_self_signed(dir: &TempDir, name: &str, key_args: &[&str]) -> Vec<u8> {
    let (key, cert) = (
        dir.path(&format!("{name}.key")),
        dir.path(&format!("{name}.pem")),
    );
    let subject = format!("/CN={name}.openssl.test");
    let mut args = vec!["req", "-x509", "-nodes", "-days", "30", "-subj", &subject];
    args.extend_from_slice(key_args);
    args.extend_from_slice(&["-keyout", &key, "-out", &cert]);
    openssl(&args, b"");
    openssl(&["x509", "-in", &cert, "-outform", "der"], b"")
}

#[test]
fn openssl_certificates_agree() {
    let dir = TempDir::new("openssl");
    for (name, key_args) in [
        ("rsa2048", &["-newkey", "rsa:2048"][..]),
        ("rsa4096", &["-newkey", "rsa:4096"][..]),
        (
            "p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        ),
        ("ed25519", &["-newkey", "ed25519"][..]),
    ] {
        let der = openssl_self_signed(&dir, name, key_args);
        assert_agrees_with_openssl(&der);
    }
}

#[test]
fn openssl_version_1_certificate_agrees() {
    // `x509 -req` without extensions writes a v1 certificate: no [0]
    // version field before the serial number.
    let dir = TempDir::new("v1");
    let (key, csr) = (dir.path("v1.key"), dir.path("v1.csr"));
    openssl(
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=v1", "-keyout", &key,
            "-out", &csr,
        ],
        b"",
    );
    let pem = openssl(
        &["x509", "-req", "-in", &csr, "-key", &key, "-days", "1"],
        b"",
    );
    let text = openssl_text(&["x509", "-noout", "-text"], &pem);
    assert!(text.contains("Version: 1 (0x0)"), "{text}");
    let der = openssl(&["x509", "-outform", "der"], &pem);
    assert_agrees_with_openssl(&der);
}

/// A CA, an intermediate and a leaf made by rcgen, with the SPKI rcgen
/// encoded from each key.
struct Chain {
    /// Leaf, intermediate, CA: the order a TLS server sends them in.
    certs: [Vec<u8>; 3],
    spkis: [Vec<u8>; 3],
}

impl Chain {
    fn der(&self) -> [&[u8]; 3] {
        [&self.certs[0], &self.certs[1], &self.certs[2]]
    }
}

fn rcgen_chain([ca_key, int_key, leaf_key]: [KeyPair; 3]) -> Chain {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mtguard test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_issuer = Issuer::new(ca, &ca_key);

    let mut int = CertificateParams::default();
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.distinguished_name
        .push(DnType::CommonName, "mtguard test intermediate");
    let int_cert = int.signed_by(&int_key, &ca_issuer).unwrap();
    let int_issuer = Issuer::new(int, &int_key);

    let leaf = CertificateParams::new(vec!["upstream.mtguard.test".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &int_issuer).unwrap();

    Chain {
        certs: [leaf_cert, int_cert, ca_cert].map(|cert| cert.der().to_vec()),
        spkis: [&leaf_key, &int_key, &ca_key].map(|key| key.subject_public_key_info()),
    }
}

/// ring cannot generate RSA keys; openssl makes one and rcgen signs with it.
fn rsa_key() -> KeyPair {
    let pem = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        b"",
    );
    KeyPair::from_pem_and_sign_algo(std::str::from_utf8(&pem).unwrap(), &PKCS_RSA_SHA256).unwrap()
}

fn keys(alg: &'static SignatureAlgorithm) -> [KeyPair; 3] {
    [(); 3].map(|()| {
        if alg == &PKCS_RSA_SHA256 {
            rsa_key()
        } else {
            KeyPair::generate_for(alg).unwrap()
        }
    })
}

fn p256_chain() -> Chain {
    rcgen_chain(keys(&PKCS_ECDSA_P256_SHA256))
}

#[test]
fn rcgen_chains_agree_with_their_keys() {
    let mixed = || {
        [
            rsa_key(),
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyPair::generate_for(&PKCS_ED25519).unwrap(),
        ]
    };
    let chains = [
        rcgen_chain(keys(&PKCS_ECDSA_P256_SHA256)),
        rcgen_chain(keys(&PKCS_ECDSA_P384_SHA384)),
        rcgen_chain(keys(&PKCS_ED25519)),
        rcgen_chain(keys(&PKCS_RSA_SHA256)),
        rcgen_chain(mixed()),
    ];
    for chain in &chains {
        for (cert, spki) in chain.certs.iter().zip(&chain.spkis) {
            assert_eq!(certificate_spki(cert).unwrap(), spki.as_slice());
            assert_eq!(spki_pin(cert).unwrap(), sha256(spki));
            assert_eq!(cert_pin(cert), sha256(cert));
        }
    }
    // And openssl reads rcgen's certificates as we do.
    assert_agrees_with_openssl(&chains[3].certs[0]);
    assert_agrees_with_openssl(&chains[4].certs[1]);
}

fn spki_pin_of(spki: &[u8]) -> Pin {
    Pin::new(PinKind::Spki, sha256(spki))
}

fn set_of<const N: usize>(pins: impl IntoIterator<Item = Pin>) -> PinSet<N> {
    let mut set = PinSet::new();
    for pin in pins {
        set.add(pin).unwrap();
    }
    set
}

#[test]
fn verify_matches_any_certificate_of_the_chain() {
    let chain = p256_chain();
    let other = p256_chain();
    let decoy = spki_pin_of(&other.spkis[0]);

    for (index, spki) in chain.spkis.iter().enumerate() {
        let set: PinSet<4> = set_of([decoy.clone(), spki_pin_of(spki)]);
        assert_eq!(
            set.verify(&chain.der(), NOW),
            PinVerdict::Match {
                pin_index: 1,
                chain_index: index
            },
            "SPKI pin on certificate {index}"
        );
    }

    // The leaf alone, as some servers send it, still matches its own pin but
    // not one on its intermediate.
    let leaf_only = [chain.der()[0]];
    let on_leaf: PinSet<1> = set_of([spki_pin_of(&chain.spkis[0])]);
    assert!(on_leaf.verify(&leaf_only, NOW).is_match());
    let on_intermediate: PinSet<1> = set_of([spki_pin_of(&chain.spkis[1])]);
    assert_eq!(on_intermediate.verify(&leaf_only, NOW), PinVerdict::NoMatch);
}

#[test]
fn verify_matches_by_certificate_hash() {
    let chain = p256_chain();
    let by_cert = Pin::new(PinKind::Certificate, sha256(&chain.certs[1]));
    let set: PinSet<1> = set_of([by_cert]);
    assert_eq!(
        set.verify(&chain.der(), NOW),
        PinVerdict::Match {
            pin_index: 0,
            chain_index: 1
        }
    );

    // Kinds are not interchangeable: a certificate pin holding the SPKI
    // hash, or an SPKI pin holding the certificate hash, matches nothing.
    let swapped: PinSet<2> = set_of([
        Pin::new(PinKind::Certificate, sha256(&chain.spkis[0])),
        Pin::new(PinKind::Spki, sha256(&chain.certs[0])),
    ]);
    assert_eq!(swapped.verify(&chain.der(), NOW), PinVerdict::NoMatch);
}

#[test]
fn verify_refuses_other_keys() {
    let chain = p256_chain();
    let other = p256_chain();
    let set: PinSet = set_of(
        other.spkis.iter().map(|spki| spki_pin_of(spki)).chain(
            other
                .certs
                .iter()
                .map(|cert| Pin::new(PinKind::Certificate, sha256(cert))),
        ),
    );
    assert_eq!(set.verify(&chain.der(), NOW), PinVerdict::NoMatch);
    assert!(set.verify(&other.der(), NOW).is_match());
}

#[test]
fn expired_pins_are_ignored() {
    let chain = p256_chain();
    let leaf = spki_pin_of(&chain.spkis[0]);
    let unrelated = spki_pin_of(&p256_chain().spkis[0]);

    let set: PinSet<2> = set_of([leaf.clone().with_expiry(Some(NOW)), unrelated.clone()]);
    assert_eq!(set.verify(&chain.der(), NOW), PinVerdict::NoMatch);
    assert_eq!(
        set.verify(&chain.der(), NOW - 1),
        PinVerdict::Match {
            pin_index: 0,
            chain_index: 0
        }
    );

    let set: PinSet<2> = set_of([
        leaf.with_expiry(Some(NOW)),
        unrelated.with_expiry(Some(NOW - 86_400)),
    ]);
    assert_eq!(set.verify(&chain.der(), NOW), PinVerdict::NoUnexpiredPins);
    assert_eq!(
        PinSet::<2>::new().verify(&chain.der(), NOW),
        PinVerdict::Empty
    );
}

#[test]
fn hundred_pins_and_no_more() {
    let chain = p256_chain();
    let mut set: PinSet = PinSet::new();
    for i in 0..99u8 {
        set.add(Pin::new(PinKind::Spki, [i; 32])).unwrap();
    }
    set.add(spki_pin_of(&chain.spkis[2])).unwrap();
    assert_eq!(set.len(), 100);
    assert_eq!(
        set.add(spki_pin_of(&chain.spkis[0])),
        Err(PinSetError::Full { capacity: 100 })
    );
    assert_eq!(
        set.verify(&chain.der(), NOW),
        PinVerdict::Match {
            pin_index: 99,
            chain_index: 2
        }
    );
}

#[test]
fn a_malformed_certificate_anywhere_fails_the_chain() {
    let chain = p256_chain();
    let set: PinSet<1> = set_of([spki_pin_of(&chain.spkis[0])]);
    let [leaf, int, ca] = chain.der();
    let cut = &int[..int.len() - 1];
    assert_eq!(
        set.verify(&[leaf, cut, ca], NOW),
        PinVerdict::Malformed {
            chain_index: 1,
            error: DerError::Truncated
        }
    );
    let mut padded = ca.to_vec();
    padded.push(0);
    assert_eq!(
        set.verify(&[leaf, int, &padded], NOW),
        PinVerdict::Malformed {
            chain_index: 2,
            error: DerError::TrailingData
        }
    );
}

#[test]
fn truncated_and_corrupted_certificates_never_panic() {
    let chain = rcgen_chain(keys(&PKCS_RSA_SHA256));
    let cert = &chain.certs[0];
    let spki = &chain.spkis[0];
    let set: PinSet<2> = set_of([
        spki_pin_of(spki),
        Pin::new(PinKind::Certificate, sha256(cert)),
    ]);

    for len in 0..cert.len() {
        let prefix = &cert[..len];
        assert!(certificate_spki(prefix).is_err(), "prefix of {len} bytes");
        assert!(matches!(
            set.verify(&[prefix], NOW),
            PinVerdict::Malformed { chain_index: 0, .. }
        ));
    }

    // Where rcgen put the key, found without our walker.
    let spki_at = cert
        .windows(spki.len())
        .position(|window| window == spki.as_slice())
        .unwrap();
    for i in 0..cert.len() {
        for mask in [0x01, 0x40, 0x80, 0xff] {
            let mut bad = cert.clone();
            bad[i] ^= mask;
            let verdict = set.verify(&[&bad], NOW);
            if let Ok(found) = certificate_spki(&bad) {
                assert_eq!(found[0], 0x30);
            }
            // The certificate hash changed; so did the key if the flip
            // landed in it.
            if (spki_at..spki_at + spki.len()).contains(&i) {
                assert!(!verdict.is_match(), "flip {mask:#04x} at {i}: {verdict:?}");
            }
        }
    }
}
