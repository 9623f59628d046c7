//! The `mtguard` command line: parse the arguments, run the command (see
//! `cli/`, one module per command).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    cli::Cli::parse().dispatch()
}
