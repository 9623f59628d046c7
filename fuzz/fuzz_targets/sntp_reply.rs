//! SNTP replies, as the appliance's clock reads them from the network:
//! the first 8 bytes are the request's nonce, the rest the reply. Never a
//! panic; a reply that sets the clock answers that nonce and comes from a
//! synchronised server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtguard_embassy::sntp::{parse_reply, request};

fuzz_target!(|data: &[u8]| {
    let Some((nonce, reply)) = data.split_first_chunk::<8>() else {
        return;
    };
    let sent = request(*nonce);
    assert_eq!(&sent[40..48], nonce);
    if let Ok(unix) = parse_reply(reply, *nonce) {
        assert_eq!(&reply[24..32], nonce, "accepted a reply to another request");
        assert_eq!(
            reply[0] & 7,
            4,
            "accepted a packet that is not a server reply"
        );
        assert!(reply[0] >> 6 != 3, "accepted an unsynchronised server");
        assert!(
            (1..=15).contains(&reply[1]),
            "accepted stratum {}",
            reply[1]
        );
        // NTP time fits 136 years from its era's start.
        assert!(unix < (1u64 << 33), "time beyond the NTP eras: {unix}");
    }
});
