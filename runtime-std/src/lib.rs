//! mtguard's server runtime: drives the core on tokio.
//!
//! The binary (`src/main.rs`) is a thin command line over these modules, so
//! the integration tests in `tests/` can drive the same code.

pub mod admin;
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
