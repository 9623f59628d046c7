//! `mtguard link`: the links clients import the proxy with.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "secret"])))]
pub struct LinkArgs {
    /// The proxy's public host name or address.
    #[arg(long)]
    server: String,
    /// The proxy's public port (with --config, the port of its first
    /// [server] listen address unless given).
    #[arg(long, required_unless_present = "config")]
    port: Option<u16>,
    /// Config file (TOML) whose [mtproto] secrets to print links for, one
    /// set of links per secret, in the order written.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The secret: 32 hex digits, dd + 32 hex digits, ee + 32 hex digits
    /// + hex of the domain, or the same bytes in base64url.
    ///
    /// Every local user can read it in the process list: prefer --config.
    #[arg(long)]
    secret: Option<String>,
}

pub fn link(args: LinkArgs) -> anyhow::Result<()> {
    check_server(&args.server)?;
    if let Some(secret) = &args.secret {
        eprintln!(
            "mtguard: warning: a secret on the command line is visible to every local user \
             (ps, /proc/PID/cmdline); `mtguard link --config FILE` reads it from the config"
        );
        let secret = mtguard_core::mtproto::Secret::parse(secret)
            .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
        let port = args.port.expect("clap requires --port without --config");
        return print_links(&args.server, port, &[secret]);
    }
    let file = args
        .config
        .expect("clap requires --config without --secret");
    let config = mtguard::server::bootstrap::load_config(&file)?;
    let port = match args.port {
        Some(port) => port,
        None => config
            .server
            .listen
            .first()
            .map(|a| a.port())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no [server] listen address; give --port",
                    file.display()
                )
            })?,
    };
    // A token's keys never leave it: their links were shown once, when
    // `mtguard hsm generate-secret` made them.
    for label in &config.mtproto.hsm_secrets {
        eprintln!(
            "mtguard: hsm:{label} is held in the [hsm] token, which does not reveal it; \
             its links were printed when it was generated"
        );
    }
    if config.mtproto.secrets.is_empty() && config.mtproto.hsm_secrets.is_empty() {
        anyhow::bail!(
            "{}: [mtproto] secrets is empty: no links to print",
            file.display()
        );
    }
    print_links(&args.server, port, &config.mtproto.secrets)
}

fn print_links(
    server: &str,
    port: u16,
    secrets: &[mtguard_core::mtproto::Secret],
) -> anyhow::Result<()> {
    for secret in secrets {
        for link in mtguard::proxy::inspect::links(server, port, secret) {
            outln!("{link}")?;
        }
    }
    Ok(())
}

pub(super) fn check_server(server: &str) -> anyhow::Result<()> {
    if server.is_empty()
        || !server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    {
        anyhow::bail!("--server: {server:?} is not a host name or an IP address");
    }
    Ok(())
}
