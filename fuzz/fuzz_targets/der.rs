//! The DER walker and the pin computations on arbitrary certificates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_core::der::certificate_spki;
use mtguard_core::pins::{presented_pins, Pin, PinKind, PinSet};

fuzz_target!(|cert: &[u8]| {
    let spki = certificate_spki(cert);
    if let Ok(spki) = spki {
        // The SPKI lies inside the certificate.
        assert!(spki.len() <= cert.len());
    }
    let _ = presented_pins(cert);
    let mut set: PinSet = PinSet::new();
    set.add(Pin::new(PinKind::Spki, [1; 32])).unwrap();
    let _ = set.verify(&[cert, cert], 0);
});
