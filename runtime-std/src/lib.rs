//! mtguard's server runtime: drives the core on tokio.
//!
//! The binary (`src/main.rs`) is a thin command line over these modules, so
//! the integration tests in `tests/` can drive the same code.
//!
//! No `unsafe` here: the one raw socket option the load tools need
//! (`IP_BIND_ADDRESS_NO_PORT`) lives in the tests crate.
#![forbid(unsafe_code)]

pub mod admin;
pub mod appliance;
pub mod config;
pub mod demo;
pub mod engine;
pub mod episode;
pub mod fleet;
pub mod hsm;
pub mod jobs;
pub mod loadgen;
pub mod node;
pub mod persist;
pub mod pinning;
pub mod proxy;
pub mod server;
pub mod telemetry;

/// The commit the binary was built from (12 hex digits), or "unknown"
/// when it was built outside a git checkout without `MTGUARD_COMMIT` (see
/// build.rs).
pub const COMMIT: &str = env!("MTGUARD_COMMIT");

/// What `mtguard --version` prints after the name: the version and the
/// commit.
pub const VERSION_AND_COMMIT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MTGUARD_COMMIT"),
    ")"
);

/// Seconds since the Unix epoch (0 if the clock is before it): the clock of
/// pin expiries, fake-TLS timestamps and CrowdSec alerts.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
