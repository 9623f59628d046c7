//! The `mtguard` command line: parse the arguments, run the command (see
//! `cli/`, one module per command).
#![forbid(unsafe_code)]
// println! panics on a closed pipe: commands print with cli/out.rs's outln!.
#![deny(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    cli::Cli::parse().dispatch()
}
