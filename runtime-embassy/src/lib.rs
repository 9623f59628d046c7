//! The appliance runtime arrives with its own issue; the crate exists now so
//! the workspace has its final shape and its no_std build is checked.
#![no_std]
#![forbid(unsafe_code)]

pub use mtguard_core as core_engine;
