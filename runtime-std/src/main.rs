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
    /// Manage the PKCS#11 token of the config's [hsm] table: its status,
    /// the proxy secrets it holds.
    Hsm {
        /// Config file (TOML) with an [hsm] table.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Print the pins (SPKI and certificate SHA-256) of every certificate
    /// in a PEM or DER file, as pins files and `--pin` take them.
    Pin {
        /// PEM (any number of certificates) or DER (one certificate).
        file: PathBuf,
    },
    /// Download a file over HTTPS, pinned, check that it looks like a
    /// Telegram proxy config or secret, and replace OUT atomically. On any
    /// failure OUT is left untouched and the exit status is non-zero.
    Fetch {
        /// https:// URL, e.g. https://core.telegram.org/getProxyConfig.
        url: String,
        /// A pin: sha256/<base64> (SPKI) or cert-sha256/<hex>, optionally
        /// followed by " expires=YYYY-MM-DD". Repeat for backups.
        #[arg(long = "pin")]
        pins: Vec<String>,
        /// A pins file (one pin a line), in addition to --pin.
        #[arg(long)]
        pins_file: Option<PathBuf>,
        /// Trust the CAs of this file (PEM or DER) instead of the built-in
        /// Mozilla roots.
        #[arg(long, conflicts_with = "pins_only")]
        ca: Option<PathBuf>,
        /// No CA validation: accept the server on a pin of its leaf
        /// certificate alone (self-signed or private-CA servers).
        #[arg(long)]
        pins_only: bool,
        /// When every pin has expired: refuse (fail-closed, the default),
        /// or accept on CA validation alone (webpki).
        #[arg(long, value_enum, default_value_t = ExpiredArg::FailClosed)]
        on_expired: ExpiredArg,
        /// What the file must be; guessed from the URL or OUT when absent.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// The file to replace.
        #[arg(long)]
        out: PathBuf,
        /// Seconds the whole download may take.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Write the config block an appliance image reads at boot (address or
    /// DHCP, backend, secrets, policy, NTP server).
    ApplianceConfig(mtguard::appliance::ApplianceConfigArgs),
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

#[derive(Subcommand)]
enum HsmCommand {
    /// Module, token and the mechanisms mtguard needs.
    Status,
    /// The secret keys in the token, with their kind and protection.
    List,
    /// Make a new secret with the token's random generator, store it as a
    /// sensitive, non-extractable key and print the client links (once:
    /// the token will not give the secret out again).
    GenerateSecret {
        /// Label of the new key; use it in [mtproto] secrets as hsm:LABEL.
        #[arg(long)]
        label: String,
        /// Fake-TLS domain: makes an ee secret. Without it, a dd secret.
        #[arg(long)]
        domain: Option<String>,
        /// A classic secret (any transport) instead of dd; not with --domain.
        #[arg(long, conflicts_with = "domain")]
        classic: bool,
        /// The proxy's public host name or address, for the links.
        #[arg(long)]
        server: String,
        /// The proxy's public port, for the links.
        #[arg(long)]
        port: u16,
    },
    /// Store an existing secret, read from standard input (any form
    /// `mtguard link` accepts), as a sensitive, non-extractable key.
    ImportSecret {
        /// Label of the new key; use it in [mtproto] secrets as hsm:LABEL.
        #[arg(long)]
        label: String,
    },
    /// Check a pins file and seal it with the token's integrity key: with
    /// [hsm] configured, `mtguard run` refuses a pins file without the seal.
    SealPins {
        /// The pins file (plain text as written by hand, or already sealed).
        file: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExpiredArg {
    FailClosed,
    Webpki,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Config,
    Secret,
}

fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

fn init_logging_at(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
        Command::Hsm { config, command } => hsm(&config, command),
        Command::Pin { file } => print_pins(&file),
        Command::ApplianceConfig(args) => mtguard::appliance::run(args),
        Command::Fetch {
            url,
            pins,
            pins_file,
            ca,
            pins_only,
            on_expired,
            kind,
            out,
            timeout,
        } => fetch_options(
            url, pins, pins_file, ca, pins_only, on_expired, kind, out, timeout,
        )
        .and_then(|opts| {
            // The error message already says what a warning would; errors
            // (a fallback on WebPKI alone) still show.
            init_logging_at(cli.log_format, "error");
            let rt = runtime()?;
            let fetched = rt.block_on(mtguard::fetch::fetch(&opts, None))?;
            if fetched.changed {
                println!("{}: wrote {} bytes", opts.out.display(), fetched.bytes);
            } else {
                println!(
                    "{}: unchanged ({} bytes)",
                    opts.out.display(),
                    fetched.bytes
                );
            }
            Ok(())
        }),
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
    check_server(server)?;
    for link in mtguard::mtproto::links(server, port, &secret) {
        println!("{link}");
    }
    Ok(())
}

fn check_server(server: &str) -> anyhow::Result<()> {
    if server.is_empty()
        || !server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    {
        anyhow::bail!("--server: {server:?} is not a host name or an IP address");
    }
    Ok(())
}

fn hsm(config: &std::path::Path, command: HsmCommand) -> anyhow::Result<()> {
    use mtguard::hsm::Token;
    use mtguard_core::mtproto::Secret;

    let config = mtguard::config::Config::load(config)?;
    let Some(hsm) = &config.hsm else {
        anyhow::bail!("{}: no [hsm] table", config.source_name());
    };
    let label_ok = |label: &str| {
        mtguard::config::check_label(label).map_err(|m| anyhow::anyhow!("--label: {m}"))
    };
    // Check the arguments before touching the token.
    match &command {
        HsmCommand::GenerateSecret {
            label,
            domain,
            server,
            ..
        } => {
            label_ok(label)?;
            check_server(server)?;
            if let Some(d) = domain {
                let mut bytes = vec![0xee; 17];
                bytes.extend_from_slice(d.as_bytes());
                Secret::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("--domain {d:?}: {e}"))?;
            }
        }
        HsmCommand::ImportSecret { label } => label_ok(label)?,
        HsmCommand::Status | HsmCommand::List | HsmCommand::SealPins { .. } => {}
    }
    let token = Token::open(hsm)?;
    match command {
        HsmCommand::SealPins { file } => {
            // Read it as plain text (or, if already sealed, through the
            // seal): sealing is how the operator vouches for hand-written
            // pins, so every line is validated before the seal is made.
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let text = if mtguard::integrity::is_sealed(&bytes) {
                let sealer = mtguard::integrity::Sealer::Token(token.clone());
                let payload = sealer
                    .open(mtguard::integrity::Purpose::Pins, &bytes)
                    .map_err(|e| anyhow::anyhow!("{} is refused: {e}", file.display()))?;
                String::from_utf8(payload.to_vec())?
            } else {
                String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", file.display()))?
            };
            let pins = mtguard::pinfile::parse(&text, &file.display().to_string())?;
            mtguard::integrity::install(Some(mtguard::integrity::Sealer::Token(token.clone())));
            mtguard::pinfile::save(&file, &pins)?;
            println!(
                "{}: {} pins sealed with the token's integrity key",
                file.display(),
                pins.len()
            );
        }
        HsmCommand::Status => {
            let status = token.status()?;
            println!("module: {}", status.library);
            println!("token: {}", status.token);
            println!("mechanisms mtguard uses:");
            for (name, available) in &status.mechanisms {
                println!(
                    "  {name}: {}",
                    if *available { "available" } else { "MISSING" }
                );
            }
            println!("all mechanisms: {}", status.all_mechanisms.join(" "));
        }
        HsmCommand::List => {
            let keys = token.list()?;
            if keys.is_empty() {
                println!("no secret keys in token {:?}", token.label());
            }
            for k in keys {
                println!(
                    "{}\t{}\tsensitive={}\textractable={}",
                    k.label, k.kind, k.sensitive, k.extractable
                );
            }
        }
        HsmCommand::GenerateSecret {
            label,
            domain,
            classic,
            server,
            port,
        } => {
            let key = token.random_key()?;
            let mut bytes = Vec::new();
            match (&domain, classic) {
                (Some(_), _) => bytes.push(0xee),
                (None, false) => bytes.push(0xdd),
                (None, true) => {}
            }
            bytes.extend_from_slice(&key);
            if let Some(d) = &domain {
                bytes.extend_from_slice(d.as_bytes());
            }
            let secret = Secret::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            bytes.fill(0);
            token.store_secret(&label, &secret)?;
            eprintln!(
                "stored as {label:?} in token {:?} (sensitive, not extractable); \
                 use \"hsm:{label}\" in [mtproto] secrets. The links below are shown once; \
                 the backend proxy needs the same secret:",
                token.label()
            );
            for link in mtguard::mtproto::links(&server, port, &secret) {
                println!("{link}");
            }
        }
        HsmCommand::ImportSecret { label } => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
                .map_err(|e| anyhow::anyhow!("reading the secret from standard input: {e}"))?;
            let secret = Secret::parse(&text)
                .map_err(|e| anyhow::anyhow!("the secret on standard input: {e}"))?;
            text.clear();
            token.store_secret(&label, &secret)?;
            eprintln!(
                "stored as {label:?} in token {:?} (sensitive, not extractable); \
                 use \"hsm:{label}\" in [mtproto] secrets",
                token.label()
            );
        }
    }
    Ok(())
}

fn check_config(file: &std::path::Path, level: Option<u8>) -> anyhow::Result<()> {
    let config = mtguard::config::Config::load(file)?;
    let policy = config.effective_policy(level)?;
    let lists = config.load_lists()?;
    // The level's pin policy on what the files hold; at run time the
    // backend's count also includes pins saved in the state.
    let level = policy.level.number();
    if let Some(tls) = &config.server.backend_tls {
        let pins = tls.pinning.load_pins()?;
        if let Err(e) = mtguard::tls::check_backup_pins(
            level,
            &format!("backend {}", config.server.backend),
            &pins,
        ) {
            println!("warning: {e:#} (pins in the state directory are not counted here)");
        }
    }
    if let Some(refresh) = &config.refresh {
        let pins = refresh.pinning.load_pins()?;
        for (url, _, _) in &refresh.files {
            mtguard::tls::check_backup_pins(level, url, &pins)?;
        }
    }
    println!("{}: valid", file.display());
    println!("{}", config.describe(&policy));
    println!(
        "lists: {} allow prefixes, {} deny prefixes",
        lists.allow.len(),
        lists.deny.len()
    );
    Ok(())
}

fn print_pins(file: &std::path::Path) -> anyhow::Result<()> {
    let certs = mtguard::tls::load_certs(file)?;
    for (i, cert) in certs.iter().enumerate() {
        let (spki, whole) = mtguard_core::pins::presented_pins(cert)
            .map_err(|e| anyhow::anyhow!("{}: certificate {i}: {e:?}", file.display()))?;
        println!("# certificate {i} of {}", file.display());
        println!("{spki}");
        println!("{whole}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fetch_options(
    url: String,
    pins: Vec<String>,
    pins_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    pins_only: bool,
    on_expired: ExpiredArg,
    kind: Option<KindArg>,
    out: PathBuf,
    timeout: u64,
) -> anyhow::Result<mtguard::fetch::FetchOptions> {
    use mtguard::fetch::ContentKind;
    use mtguard::tls::{OnExpired, Trust};
    let mut all = Vec::new();
    for text in &pins {
        let pin = mtguard_core::pins::parse_pin_line(text)
            .map_err(|e| anyhow::anyhow!("--pin {text:?}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("--pin {text:?}: empty"))?;
        all.push(pin);
    }
    if let Some(path) = &pins_file {
        all.extend(mtguard::pinfile::load(path)?);
    }
    anyhow::ensure!(
        !all.is_empty(),
        "give at least one --pin (or --pins-file); `mtguard pin CERT.pem` prints a certificate's pins"
    );
    anyhow::ensure!(
        all.len() <= mtguard::tls::MAX_PINS,
        "{} pins given: at most {} per host",
        all.len(),
        mtguard::tls::MAX_PINS
    );
    let trust = if pins_only {
        Trust::PinsOnly
    } else {
        Trust::WebPki
    };
    let on_expired = match on_expired {
        ExpiredArg::FailClosed => OnExpired::FailClosed,
        ExpiredArg::Webpki => {
            anyhow::ensure!(
                !pins_only,
                "--on-expired webpki needs CA validation, not --pins-only"
            );
            OnExpired::WebPki
        }
    };
    let kind = match kind {
        Some(KindArg::Config) => ContentKind::ProxyConfig,
        Some(KindArg::Secret) => ContentKind::ProxySecret,
        None => ContentKind::guess(&url, &out).ok_or_else(|| {
            anyhow::anyhow!("cannot tell from the URL or --out whether this is a proxy config or a secret: give --kind")
        })?,
    };
    Ok(mtguard::fetch::FetchOptions {
        url,
        pins: all,
        trust,
        ca_file: ca,
        on_expired,
        out,
        kind,
        timeout: Duration::from_secs(timeout.max(1)),
    })
}
