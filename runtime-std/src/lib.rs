//! mtguard's server runtime: drives the core on tokio.
//!
//! The binary (`src/main.rs`) is a thin command line over these modules, so
//! the integration tests in `tests/` can drive the same code.

pub mod admin;
pub mod appliance;
pub mod config;
pub mod crowdsec;
pub mod demo;
pub mod engine;
pub mod fetch;
pub mod hsm;
pub mod integrity;
pub mod kernel;
pub mod mtproto;
pub mod pinfile;
pub mod proxy;
pub mod server;
pub mod state;
pub mod tls;

/// Seconds since the Unix epoch (0 if the clock is before it): the clock of
/// pin expiries, fake-TLS timestamps and CrowdSec alerts.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
