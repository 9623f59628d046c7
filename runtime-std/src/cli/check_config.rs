//! `mtguard check-config`: the plan `run` would build, printed.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct CheckConfigArgs {
    /// Config file (TOML).
    file: PathBuf,
    /// Security level 0-3, overriding the config's.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
    level: Option<u8>,
}

pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    check(&args.file, args.level)
}

fn check(file: &std::path::Path, level: Option<u8>) -> anyhow::Result<()> {
    use mtguard::server::bootstrap::{Keyring, Plan};
    let config = mtguard::server::bootstrap::load_config(file)?;
    // The same token opening and plan as `run`: what passes here passes
    // there, but for what only the running node knows (the state's pins,
    // manual list entries).
    let keyring = Keyring::open(&config)?;
    let plan = Plan::build(config, level, &keyring, None)?;
    let mut unchecked = Vec::new();
    if plan.backend_tls.is_some() {
        if let Err(e) = mtguard::pinning::verifier::check_backup_pins(
            plan.policy.level.number(),
            &format!("backend {}", plan.config.server.backend),
            &plan.backend_pins,
        ) {
            unchecked.push(format!(
                "warning: {e:#} (pins in the state directory are not counted here)"
            ));
        }
    }
    if plan.mtproto.is_none() {
        // Without secrets no connection can prove it is a real user, so
        // the people behind one carrier NAT share one stranger's limits.
        unchecked.push(format!(
            "note: no MTProto inspection (no [mtproto] secrets, or inspect = false): the guard cannot tell users behind one \
             address (a carrier NAT, an office) from one attacker; all their \
             connections share max_connections_per_ip = {} and can be blocked \
             together. Give the proxy's secrets, or allowlist known NAT ranges: \
             see docs/carrier-nat.md",
            plan.policy.max_connections_per_client
        ));
    }
    outln!("{}: valid", file.display())?;
    for w in unchecked {
        outln!("{w}")?;
    }
    out!("{}", plan.describe())?;
    Ok(())
}
