//! `mtguard run`: guard the backend proxy.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{init_logging, runtime, LogFormat};

#[derive(Args)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Security level 0-3, overriding the config's.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
    level: Option<u8>,
    /// Move an unusable state file aside and start clean.
    #[arg(long)]
    reset_state: bool,
    /// Seconds to wait for open connections at shutdown.
    #[arg(long, default_value_t = 10)]
    drain_seconds: u64,
}

pub fn run(args: RunArgs, format: LogFormat) -> anyhow::Result<()> {
    init_logging(format);
    runtime().and_then(|rt| {
        rt.block_on(mtguard::server::run(mtguard::server::RunOptions {
            config: args.config,
            level: args.level,
            reset_state: args.reset_state,
            drain_timeout: Duration::from_secs(args.drain_seconds),
        }))
    })
}
