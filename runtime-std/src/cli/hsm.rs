//! `mtguard hsm`: the PKCS#11 token of the config's `[hsm]` table.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::link::check_server;

#[derive(Args)]
pub struct HsmArgs {
    /// Config file (TOML) with an [hsm] table.
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    command: HsmCommand,
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

pub fn hsm(args: HsmArgs) -> anyhow::Result<()> {
    run_hsm(&args.config, args.command)
}

fn run_hsm(config: &std::path::Path, command: HsmCommand) -> anyhow::Result<()> {
    use mtguard::hsm::Token;
    use mtguard_core::mtproto::Secret;

    let config = mtguard::server::bootstrap::load_config(config)?;
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
            let text = if mtguard::persist::seal::is_sealed(&bytes) {
                let sealer = mtguard::persist::seal::Sealer::Token(token.clone());
                let payload = sealer
                    .open(mtguard::persist::seal::Purpose::Pins, &bytes)
                    .map_err(|e| anyhow::anyhow!("{} is refused: {e}", file.display()))?;
                String::from_utf8(payload.to_vec())?
            } else {
                String::from_utf8(bytes)
                    .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", file.display()))?
            };
            let pins = mtguard::persist::pinfile::parse(&text, &file.display().to_string())?;
            let sealer = mtguard::persist::seal::Sealer::Token(token.clone());
            mtguard::persist::pinfile::save(&file, &pins, Some(&sealer))?;
            outln!(
                "{}: {} pins sealed with the token's integrity key",
                file.display(),
                pins.len()
            )?;
        }
        HsmCommand::Status => {
            let status = token.status()?;
            outln!("module: {}", status.library)?;
            outln!("token: {}", status.token)?;
            outln!("mechanisms mtguard uses:")?;
            for (name, available) in &status.mechanisms {
                outln!(
                    "  {name}: {}",
                    if *available { "available" } else { "MISSING" }
                )?;
            }
            outln!("all mechanisms: {}", status.all_mechanisms.join(" "))?;
        }
        HsmCommand::List => {
            let keys = token.list()?;
            if keys.is_empty() {
                outln!("no secret keys in token {:?}", token.label())?;
            }
            for k in keys {
                outln!(
                    "{}\t{}\tsensitive={}\textractable={}",
                    k.label,
                    k.kind,
                    k.sensitive,
                    k.extractable
                )?;
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
            for link in mtguard::proxy::inspect::links(&server, port, &secret) {
                outln!("{link}")?;
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
