//! Certificate pinning of every TLS connection mtguard makes upstream: the
//! verifier and the pin fetcher.

pub mod fetch;
pub mod verifier;
