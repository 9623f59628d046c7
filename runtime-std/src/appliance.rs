//! `mtguard appliance-config`: writes the config block one appliance image
//! reads at boot (format: the `mtguard-config-block` crate, which the
//! firmware uses too).
//!
//! The policy, secrets, backend, listen port, timeouts and fake-TLS window
//! come from a server config file when one is given, through the server's
//! own parser and validation (`server::bootstrap::load_config`, `effective_policy`), so an
//! appliance and a server given one file enforce one policy. What only the
//! appliance has (its address or DHCP, gateway, MAC, NTP server) comes from
//! the command line, which also overrides the file. What the appliance
//! cannot do (HSM secrets, PROXY protocol, TLS to the backend, masking,
//! allow and deny lists) is refused rather than silently dropped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use mtguard_config_block::{ApplianceConfig, Network, BLOCK_MAX};
use mtguard_core::mtproto::{Secret, SecretSet};

use crate::config::{Answer, Config, OnProbe, ProxyProtocol};

/// The NTP port when `--ntp` names none.
const NTP_PORT: u16 = 123;

/// `mtguard appliance-config`.
#[derive(clap::Args, Debug)]
pub struct ApplianceConfigArgs {
    /// Where to write the block (replaced atomically; QEMU loads it with
    /// `-device loader,file=FILE,addr=0x3ff000`).
    #[arg(long)]
    pub out: PathBuf,
    /// A server config file (TOML): level, [limits], [mtproto] secrets and
    /// time skew, [server] backend, port of the first listen address and
    /// timeouts.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Security level 0-3, overriding the config's.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub level: Option<u8>,
    /// The appliance's address with its prefix, e.g. 192.168.1.20/24.
    #[arg(long, conflicts_with = "dhcp", required_unless_present = "dhcp")]
    pub address: Option<String>,
    /// Take the address from a DHCPv4 server instead.
    #[arg(long)]
    pub dhcp: bool,
    /// The default gateway (with --address).
    #[arg(long, requires = "address")]
    pub gateway: Option<Ipv4Addr>,
    /// The proxy behind the appliance, IPv4:PORT (overrides [server]
    /// backend).
    #[arg(long)]
    pub backend: Option<SocketAddrV4>,
    /// The TCP port clients connect to (default: the port of the config's
    /// first listen address, else 443).
    #[arg(long)]
    pub port: Option<u16>,
    /// A proxy secret (classic, dd or ee); repeat for more. Replaces the
    /// config's secrets.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// The SNTP server, IPv4[:PORT]. Without one the appliance has no
    /// clock and refuses fake-TLS (ee) clients.
    #[arg(long)]
    pub ntp: Option<String>,
    /// The Ethernet address, 6 hex bytes separated by colons (default: a
    /// random locally administered one).
    #[arg(long)]
    pub mac: Option<String>,
}

/// Writes the block `args` describe.
pub fn run(args: ApplianceConfigArgs) -> anyhow::Result<()> {
    let config = build(&args)?;
    let mut block = vec![0u8; BLOCK_MAX];
    let n = config
        .encode(&mut block)
        .map_err(|e| anyhow!("cannot write the block: {e}"))?;
    block.truncate(n);
    write_atomically(&args.out, &block)?;
    // Through a handle, not println!: a closed stdout must not panic.
    use std::io::Write as _;
    writeln!(
        std::io::stdout().lock(),
        "{}: {n} bytes: {}",
        args.out.display(),
        summary(&config)
    )?;
    Ok(())
}

/// The block's config, from the file (if any) and the command line.
pub fn build(args: &ApplianceConfigArgs) -> anyhow::Result<ApplianceConfig> {
    let file = match &args.config {
        Some(path) => Some(crate::server::bootstrap::load_config(path)?),
        None => None,
    };
    let server = file.clone().unwrap_or_else(Config::embedded_default);
    if let Some(file) = &file {
        refuse_server_only(file)?;
    }
    let policy = server.effective_policy(args.level)?;

    let network = if args.dhcp {
        Network::Dhcp
    } else {
        let text = args.address.as_deref().unwrap_or_default();
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| anyhow!("--address: {text:?} needs a prefix length, e.g. /24"))?;
        Network::Static {
            address: ip
                .parse()
                .map_err(|_| anyhow!("--address: {ip:?} is not an IPv4 address"))?,
            prefix: prefix
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| anyhow!("--address: prefix {prefix:?} is not 0 to 32"))?,
            gateway: args.gateway,
        }
    };

    let backend = match args.backend {
        Some(b) => b,
        None if file.is_some() => parse_backend(&server.server.backend)?,
        None => bail!("--backend is required without --config"),
    };
    let port = args
        .port
        .or_else(|| {
            file.as_ref()
                .and_then(|f| f.server.listen.first().map(SocketAddr::port))
        })
        .unwrap_or(443);

    let mut secrets = SecretSet::new();
    if args.secrets.is_empty() {
        for s in &server.mtproto.secrets {
            secrets
                .push(s.clone())
                .map_err(|e| anyhow!("[mtproto] secrets: {e}"))?;
        }
    } else {
        for text in &args.secrets {
            let s = Secret::parse(text).map_err(|e| anyhow!("--secret {text:?}: {e}"))?;
            secrets.push(s).map_err(|e| anyhow!("--secret: {e}"))?;
        }
    }
    if server.mtproto.inspect == Some(false) && !secrets.as_slice().is_empty() {
        bail!("[mtproto] inspect = false: the appliance inspects whenever it has secrets; remove them instead");
    }

    let ntp = args.ntp.as_deref().map(parse_ntp).transpose()?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow!("the operating system's random source failed: {e}"))?;
    let mac = match &args.mac {
        Some(text) => parse_mac(text)?,
        None => {
            let mut mac = [0u8; 6];
            getrandom::fill(&mut mac[1..])
                .map_err(|e| anyhow!("the operating system's random source failed: {e}"))?;
            // Locally administered, unicast.
            mac[0] = 0x02;
            mac
        }
    };
    Ok(ApplianceConfig {
        network,
        mac,
        listen_port: port,
        backend,
        ntp,
        connect_timeout: server.server.connect_timeout,
        idle_timeout: server.server.idle_timeout,
        window: server.mtproto.window(),
        policy,
        secrets,
        seed,
    })
}

fn refuse_server_only(file: &Config) -> anyhow::Result<()> {
    let name = file.source_name();
    let refuse = |what: &str| Err(anyhow!("{name}: {what} is not supported by the appliance"));
    if !file.mtproto.hsm_secrets.is_empty() {
        return refuse("an hsm: secret");
    }
    if file.server.proxy_protocol != ProxyProtocol::None {
        return refuse("[server] proxy_protocol");
    }
    if file.server.backend_tls.is_some() {
        return refuse("[server.backend_tls]");
    }
    if file.mtproto.on_probe == Some(OnProbe::Mask) {
        return refuse("[mtproto] on_probe = \"mask\" (probes are reset)");
    }
    let r = &file.refusal;
    let written = [r.failed_handshake, r.replay, r.blocked];
    if written.iter().flatten().any(|a| *a != Answer::Reset) {
        return refuse("a [refusal] answer other than \"reset\" (refusals are reset)");
    }
    let lists = &file.lists;
    if !(lists.allow.is_empty()
        && lists.deny.is_empty()
        && lists.allow_files.is_empty()
        && lists.deny_files.is_empty())
    {
        return refuse("[lists]");
    }
    Ok(())
}

fn parse_backend(text: &str) -> anyhow::Result<SocketAddrV4> {
    text.parse().map_err(|_| {
        anyhow!("[server] backend {text:?}: the appliance needs an IPv4 address and port (no names: it has no DNS); give --backend")
    })
}

fn parse_ntp(text: &str) -> anyhow::Result<SocketAddrV4> {
    if let Ok(a) = text.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| anyhow!("--ntp: {text:?} is not IPv4[:PORT]"))?;
    Ok(SocketAddrV4::new(ip, NTP_PORT))
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bad = || anyhow!("--mac: {text:?} is not six hex bytes like 02:00:6d:74:67:01");
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for b in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Replaces `path` with `data` through a temporary file in the same
/// directory, so a failed write leaves the previous block intact.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("--out {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One line for the operator, secrets by count only.
fn summary(c: &ApplianceConfig) -> String {
    let net = match c.network {
        Network::Dhcp => "dhcp".to_owned(),
        Network::Static {
            address,
            prefix,
            gateway,
        } => match gateway {
            Some(g) => format!("{address}/{prefix} via {g}"),
            None => format!("{address}/{prefix}"),
        },
    };
    let ntp = c.ntp.map_or("no ntp (fake-TLS refused)".to_owned(), |n| {
        format!("ntp {n}")
    });
    format!(
        "address {net}, port {}, backend {}, level {}, {} secret(s), {ntp}, idle {}",
        c.listen_port,
        c.backend,
        c.policy.level.number(),
        c.secrets.as_slice().len(),
        humantime::format_duration(Duration::from_secs(c.idle_timeout.as_secs()))
    )
}
