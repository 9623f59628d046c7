//! The `mtguard` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// A security gateway for MTProto proxies.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
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
    Run {
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
    },
    /// Validate a config file and print the effective policy.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
        /// Security level 0-3, overriding the config's.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
        level: Option<u8>,
    },
    /// Print the tg:// and https://t.me links clients import the proxy
    /// with (the secret in its canonical hex form).
    Link {
        /// The proxy's public host name or address.
        #[arg(long)]
        server: String,
        /// The proxy's public port.
        #[arg(long)]
        port: u16,
        /// The secret: 32 hex digits, dd + 32 hex digits, ee + 32 hex digits
        /// + hex of the domain, or the same bytes in base64url.
        #[arg(long)]
        secret: String,
    },
    /// A self-contained run on loopback: the guard, an echo backend,
    /// legitimate clients, a flood and a scanner; ends with a report.
    Demo {
        /// How long the demo runs, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// No progress bars (for logs and tests).
        #[arg(long)]
        no_progress: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file, level } => check_config(&file, level),
        Command::Link {
            server,
            port,
            secret,
        } => link(&server, port, &secret),
        Command::Run {
            config,
            level,
            reset_state,
            drain_seconds,
        } => {
            init_logging(cli.log_format);
            runtime().and_then(|rt| {
                rt.block_on(mtguard::server::run(mtguard::server::RunOptions {
                    config,
                    level,
                    reset_state,
                    drain_timeout: Duration::from_secs(drain_seconds),
                }))
            })
        }
        Command::Demo {
            seconds,
            no_progress,
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let report = mtguard::demo::run_demo(mtguard::demo::DemoOptions {
                    duration: Duration::from_secs(seconds),
                    progress: !no_progress,
                    ..Default::default()
                })
                .await?;
                println!("{}", report.render());
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mtguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn link(server: &str, port: u16, secret: &str) -> anyhow::Result<()> {
    let secret = mtguard_core::mtproto::Secret::parse(secret)
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    if server.is_empty()
        || !server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    {
        anyhow::bail!("--server: {server:?} is not a host name or an IP address");
    }
    for link in mtguard::mtproto::links(server, port, &secret) {
        println!("{link}");
    }
    Ok(())
}

fn check_config(file: &std::path::Path, level: Option<u8>) -> anyhow::Result<()> {
    let config = mtguard::config::Config::load(file)?;
    let policy = config.effective_policy(level)?;
    let lists = config.load_lists()?;
    println!("{}: valid", file.display());
    println!("{}", config.describe(&policy));
    println!(
        "lists: {} allow prefixes, {} deny prefixes",
        lists.allow.len(),
        lists.deny.len()
    );
    Ok(())
}
