//! `mtguard link`: the links clients import the proxy with.

use clap::Args;

#[derive(Args)]
pub struct LinkArgs {
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
}

pub fn link(args: LinkArgs) -> anyhow::Result<()> {
    print_links(&args.server, args.port, &args.secret)
}

fn print_links(server: &str, port: u16, secret: &str) -> anyhow::Result<()> {
    let secret = mtguard_core::mtproto::Secret::parse(secret)
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    check_server(server)?;
    for link in mtguard::proxy::inspect::links(server, port, &secret) {
        println!("{link}");
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
