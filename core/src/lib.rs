//! mtguard-core: every security decision of mtguard, and nothing else.
//!
//! No I/O, no clock, no randomness of its own, no allocation: the runtime
//! passes time and seeds in, gets decisions back as values and drains events.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod cidr;
pub mod der;
pub mod pins;
pub mod time;
pub mod wheel;

pub use time::Instant;
