//! Certificate pinning of every TLS connection mtguard makes upstream: the
//! verifier, the pin fetcher and the refresh job.

pub mod fetch;
pub mod refresh;
pub mod verifier;
