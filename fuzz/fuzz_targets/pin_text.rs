//! Pin text and pins-file lines: no panic, and what parses prints back to
//! text that parses to the same pin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_core::pins::{parse_pin_line, Pin};

fuzz_target!(|text: &str| {
    if let Ok(pin) = Pin::parse(text) {
        let printed = pin.to_string();
        assert_eq!(Pin::parse(&printed).unwrap(), pin);
    }
    if let Ok(Some(pin)) = parse_pin_line(text) {
        let line = pin.display_line().to_string();
        let again = parse_pin_line(&line).unwrap().unwrap();
        assert_eq!(again.kind(), pin.kind());
        assert_eq!(again.hash(), pin.hash());
        assert_eq!(again.label(), pin.label());
    }
});
