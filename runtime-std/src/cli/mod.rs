//! The `mtguard` command line: the arguments, the logging, the runtime,
//! and one module per command, each owning its clap arguments.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[macro_use]
mod out;
mod check_config;
mod demo;
mod fetch;
mod generate;
mod hsm;
mod init;
mod link;
mod pin;
mod run;

/// A security gateway for MTProto proxies.
#[derive(Parser)]
#[command(version = mtguard::VERSION_AND_COMMIT, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Guard the backend proxy (with no --config, on the embedded default:
    /// listen 127.0.0.1:4443, backend 127.0.0.1:8443, admin 127.0.0.1:9900).
    Run(run::RunArgs),
    /// Validate a config file and print the effective policy.
    CheckConfig(check_config::CheckConfigArgs),
    /// Print the tg:// and https://t.me links clients import the proxy
    /// with (the secret in its canonical hex form).
    Link(link::LinkArgs),
    /// Manage the PKCS#11 token of the config's [hsm] table: its status,
    /// the proxy secrets it holds.
    Hsm(hsm::HsmArgs),
    /// Print the pins (SPKI and certificate SHA-256) of every certificate
    /// in a PEM or DER file, as pins files and `--pin` take them.
    Pin(pin::PinArgs),
    /// Download a file over HTTPS, pinned, check that it looks like a
    /// Telegram proxy config or secret, and replace OUT atomically. On any
    /// failure OUT is left untouched and the exit status is non-zero.
    Fetch(fetch::FetchArgs),
    /// Write the config block an appliance image reads at boot (address or
    /// DHCP, backend, secrets, policy, NTP server).
    ApplianceConfig(mtguard::appliance::ApplianceConfigArgs),
    /// A self-contained run on loopback: the guard, an echo backend,
    /// legitimate clients, a flood and a scanner; ends with a report.
    Demo(demo::DemoArgs),
    /// Write a starting config, from an mtg or telemt config or the
    /// commented default, and print what to change on the proxy's side.
    Init(init::InitArgs),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(hide = true)]
    Completions(generate::CompletionsArgs),
    /// Print the manual page (or write them all with --dir).
    #[command(hide = true)]
    Man(generate::ManArgs),
}

impl Cli {
    /// Runs the command; an error is printed as one line and fails the
    /// process.
    pub fn dispatch(self) -> ExitCode {
        let format = self.log_format;
        let result = match self.command {
            Command::Run(args) => run::run(args, format),
            Command::CheckConfig(args) => check_config::check_config(args),
            Command::Link(args) => link::link(args),
            Command::Hsm(args) => hsm::hsm(args),
            Command::Pin(args) => pin::print_pins(args),
            Command::Fetch(args) => fetch::fetch(args, format),
            Command::ApplianceConfig(args) => mtguard::appliance::run(args),
            Command::Demo(args) => demo::demo(args),
            Command::Init(args) => init::init(args),
            Command::Completions(args) => generate::completions(args),
            Command::Man(args) => generate::man(args),
        };
        match result.and_then(|()| Ok(out::flush()?)) {
            Ok(()) => ExitCode::SUCCESS,
            // The reader closed the pipe (`| head`): it has what it wanted.
            Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mtguard: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

fn init_logging_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colours only for a person at a terminal: a pipe, a file or the journal
/// gets plain text, and NO_COLOR (set and not empty, as no-color.org
/// says) turns them off there too.
fn colours() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
