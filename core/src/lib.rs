//! mtguard-core: every security decision of mtguard, and nothing else.
//!
//! No I/O, no clock, no randomness of its own, no allocation: the runtime
//! passes time and seeds in, gets decisions back as values and drains events.
//! Every table has a capacity fixed before the first packet arrives, so the
//! memory an attack can make the engine use is a number known in advance.
//!
//! A runtime drives one [`SecurityManager`]:
//!
//! ```
//! use mtguard_core::{
//!     storage::Inline, Event, HandshakeOutcome, Instant, Policy, SecurityManager, Seed, Verdict,
//! };
//! use core::net::{IpAddr, Ipv4Addr};
//!
//! type Small = Inline<64, 64, 16>;
//! let seed = Seed { hash_key: [7; 16], jitter: 42 };
//! let mut guard =
//!     SecurityManager::<Small>::new(Small::tables(), Policy::default(), seed, Instant::ZERO)
//!         .unwrap();
//! let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
//! // At accept, before reading a byte:
//! let Verdict::Admit(conn) = guard.handle_connect(Instant::from_millis(5), client) else {
//!     panic!("a first connection is admitted");
//! };
//! // After judging the first bytes, and when the connection ends:
//! guard.handle_handshake(Instant::from_millis(9), conn, HandshakeOutcome::Valid).unwrap();
//! guard.handle_close(Instant::from_millis(20), conn).unwrap();
//! // After every handler: drain events, then sleep until poll_timeout().
//! while let Some(event) = guard.poll_event() {
//!     let _: Event = event;
//! }
//! if let Some(at) = guard.poll_timeout() {
//!     guard.handle_timeout(at);
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod cidr;
pub mod der;
pub mod event;
pub mod ja4;
pub mod manager;
pub mod mtproto;
pub mod pins;
pub mod policy;
mod reader;
pub mod snapshot;
pub mod storage;
pub mod table;
pub mod time;
pub mod wheel;

pub use addr::ClientKey;
pub use event::{
    BlockCause, ConnectionId, Event, HandshakeOutcome, RejectReason, UnblockCause, Verdict,
};
pub use manager::{
    Authentication, CapRefusal, ClientInfo, NetworkInfo, SecurityManager, Seed, Stats,
};
pub use policy::{Level, Policy};
pub use storage::{AppliancePreset, ServerPreset, Storage, Tables};
pub use time::Instant;
