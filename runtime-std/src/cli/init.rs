//! `mtguard init`: a starting config, written from the operator's existing
//! proxy config (mtg or telemt, both TOML) or the commented default, and
//! the changes the proxy needs to sit behind the guard.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use mtguard::config::{toml_error, Config, ConfigError};
use mtguard_core::mtproto::Secret;
use serde::Deserialize;
use toml::Spanned;

#[derive(Args)]
pub struct InitArgs {
    /// Read mtg's config (TOML: `secret`, `bind-to`,
    /// `proxy-protocol-listener`).
    #[arg(long, value_name = "FILE", conflicts_with = "from_telemt")]
    from_mtg: Option<PathBuf>,
    /// Read telemt's config (TOML: `[server]`, `[[server.listeners]]`,
    /// `[access.users]`, `[general.modes]`, `[censorship] tls_domain`).
    #[arg(long, value_name = "FILE")]
    from_telemt: Option<PathBuf>,
    /// Write the config here (atomically) instead of to standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long, requires = "out")]
    force: bool,
}

/// The commented example: every key at its default.
const EXAMPLE: &str = include_str!("../../dist/mtguard.example.toml");

/// Where the shipped systemd unit keeps the state (`StateDirectory`).
const STATE_DIR: &str = "/var/lib/mtguard";

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let (text, advice) = match (&args.from_mtg, &args.from_telemt) {
        (Some(file), _) => {
            let plan = from_mtg(&read(file)?, &file.display().to_string())?;
            (plan.render(), plan.advice())
        }
        (_, Some(file)) => {
            let plan = from_telemt(&read(file)?, &file.display().to_string())?;
            (plan.render(), plan.advice())
        }
        (None, None) => (EXAMPLE.to_owned(), String::new()),
    };
    // What is written must start: the guard's own parser is the judge.
    Config::parse(&text, "the generated config")
        .map_err(|e| anyhow::anyhow!("bug: the generated config does not parse: {e}"))?;
    match &args.out {
        None => {
            out!("{text}")?;
            eprint!("{advice}");
        }
        Some(out) => {
            if !args.force && std::fs::symlink_metadata(out).is_ok() {
                anyhow::bail!(
                    "{} exists; not replacing it (--force replaces it)",
                    out.display()
                );
            }
            mtguard::persist::atomic::write_atomic(out, text.as_bytes())
                .with_context(|| format!("writing {}", out.display()))?;
            outln!("wrote {}", out.display())?;
            out!("{advice}")?;
            outln!("check it with: mtguard check-config {}", out.display())?;
        }
    }
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// A starting config for the guard in front of one proxy.
#[derive(Debug)]
struct Plan {
    proxy: &'static str,
    source: String,
    /// The proxy's public addresses, which the guard takes over.
    listen: Vec<SocketAddr>,
    /// Where the proxy listens from now on.
    backend: SocketAddr,
    secrets: Vec<String>,
    /// The lines to change in the proxy's config, in its own key names.
    proxy_changes: Vec<String>,
}

impl Plan {
    fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# mtguard configuration, written by `mtguard init` from {} ({}).\n\
             # Every key left out keeps its default; the commented example\n\
             # (`mtguard init` with no --from-*, or docs/configuration.md) lists them all.\n\
             # `mtguard check-config FILE` shows the effective values.\n\
             \n\
             level = 1\n\
             \n\
             [server]\n\
             # The addresses {} listened on: the guard takes them over.",
            self.source, self.proxy, self.proxy
        );
        let listen: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
        let _ = writeln!(t, "listen = [{}]", listen.join(", "));
        let _ = writeln!(
            t,
            "# {} itself, moved to loopback (see what `mtguard init` printed).\n\
             backend = \"{}\"\n\
             # The client's address reaches {} in a PROXY protocol v2 header.\n\
             proxy_protocol = \"v2\"\n\
             \n\
             [mtproto]\n\
             # The secrets {} accepts; any other handshake is refused before\n\
             # it reaches the proxy.\n\
             secrets = [",
            self.proxy, self.backend, self.proxy, self.proxy
        );
        for s in &self.secrets {
            let _ = writeln!(t, "  \"{s}\",");
        }
        let _ = writeln!(
            t,
            "]\n\
             \n\
             [state]\n\
             # The shipped systemd unit's StateDirectory.\n\
             dir = \"{STATE_DIR}\""
        );
        t
    }

    fn advice(&self) -> String {
        let mut t = format!(
            "\nChange {} ({}) so that it sits behind the guard:\n",
            self.source, self.proxy
        );
        for change in &self.proxy_changes {
            let _ = writeln!(t, "  {change}");
        }
        let _ = writeln!(
            t,
            "Restart {} first, then start mtguard (it takes over {}).",
            self.proxy,
            self.listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        t
    }
}

/// An error at `span` of `file`, named like the guard's own config errors.
fn at(
    file: &str,
    text: &str,
    span: std::ops::Range<usize>,
    key: &str,
    message: String,
) -> ConfigError {
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    ConfigError::new(file.to_owned(), Some(line), Some(key.to_owned()), message)
}

fn missing(file: &str, key: &str, message: &str) -> ConfigError {
    ConfigError::new(
        file.to_owned(),
        None,
        Some(key.to_owned()),
        message.to_owned(),
    )
}

/// The loopback address the proxy moves to: the guard's default backend,
/// or the next port when the guard listens on that one.
fn backend_for(listen: &[SocketAddr]) -> SocketAddr {
    let mut port = 8443u16;
    while listen.iter().any(|a| a.port() == port) {
        port += 1;
    }
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The addresses to listen on, with `0.0.0.0:P` dropped where `[::]:P` is
/// there too: on Linux the IPv6 wildcard takes IPv4 clients as well (unless
/// `net.ipv6.bindv6only` is set), and binding both fails.
fn dual_stack(mut listen: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let v6_any = |port| SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
    let listed = listen.clone();
    listen.retain(|a| !(a.ip() == Ipv4Addr::UNSPECIFIED && listed.contains(&v6_any(a.port()))));
    let mut seen = Vec::new();
    listen.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    listen
}

/// mtg's `bind-to`, a Go listen address: `host:port`, `[v6]:port`, or
/// `:port` for every address.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?} has no valid port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not IP:port (mtguard listens on addresses, not names)"))
}

fn check_secret(
    file: &str,
    text: &str,
    span: std::ops::Range<usize>,
    key: &str,
    secret: &str,
) -> Result<String, ConfigError> {
    Secret::parse(secret)
        .map(|s| s.to_string())
        .map_err(|e| at(file, text, span, key, e.to_string()))
}

#[derive(Deserialize)]
struct MtgFile {
    secret: Option<Spanned<String>>,
    #[serde(rename = "bind-to")]
    bind_to: Option<Spanned<String>>,
    #[serde(rename = "proxy-protocol-listener")]
    proxy_protocol_listener: Option<Spanned<bool>>,
}

fn from_mtg(text: &str, file: &str) -> Result<Plan, ConfigError> {
    let raw: MtgFile = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
    let secret = raw
        .secret
        .ok_or_else(|| missing(file, "secret", "mtg's config has no secret"))?;
    let secret = check_secret(file, text, secret.span(), "secret", secret.get_ref())?;
    let bind = raw
        .bind_to
        .ok_or_else(|| missing(file, "bind-to", "mtg's config has no bind-to"))?;
    let listen =
        parse_bind(bind.get_ref()).map_err(|m| at(file, text, bind.span(), "bind-to", m))?;
    let listen = vec![listen];
    let backend = backend_for(&listen);
    let mut proxy_changes = vec![format!("bind-to = \"{backend}\"")];
    if !raw.proxy_protocol_listener.is_some_and(|p| *p.get_ref()) {
        proxy_changes.push("proxy-protocol-listener = true".into());
    }
    proxy_changes.push("secret: unchanged (the guard checks the same one)".into());
    Ok(Plan {
        proxy: "mtg",
        source: file.to_owned(),
        listen,
        backend,
        secrets: vec![secret],
        proxy_changes,
    })
}

#[derive(Deserialize, Default)]
struct TelemtFile {
    #[serde(default)]
    general: TelemtGeneral,
    #[serde(default)]
    server: TelemtServer,
    #[serde(default)]
    censorship: TelemtCensorship,
    #[serde(default)]
    access: TelemtAccess,
}

#[derive(Deserialize, Default)]
struct TelemtGeneral {
    #[serde(default)]
    modes: TelemtModes,
}

#[derive(Deserialize)]
struct TelemtModes {
    #[serde(default)]
    classic: bool,
    #[serde(default)]
    secure: bool,
    #[serde(default = "yes")]
    tls: bool,
}

impl Default for TelemtModes {
    /// telemt's documented defaults: fake TLS only.
    fn default() -> Self {
        TelemtModes {
            classic: false,
            secure: false,
            tls: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
struct TelemtServer {
    port: Option<u16>,
    listen_addr_ipv4: Option<Spanned<String>>,
    listen_addr_ipv6: Option<Spanned<String>>,
    proxy_protocol: Option<bool>,
    #[serde(default)]
    listeners: Vec<TelemtListener>,
}

#[derive(Deserialize)]
struct TelemtListener {
    ip: Spanned<String>,
    port: Option<u16>,
    proxy_protocol: Option<bool>,
}

#[derive(Deserialize, Default)]
struct TelemtCensorship {
    tls_domain: Option<Spanned<String>>,
    #[serde(default)]
    tls_domains: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct TelemtAccess {
    users: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    #[serde(default)]
    user_enabled: BTreeMap<String, bool>,
}

/// telemt's default `[censorship] tls_domain`.
const TELEMT_TLS_DOMAIN: &str = "petrovich.ru";

fn from_telemt(text: &str, file: &str) -> Result<Plan, ConfigError> {
    let raw: TelemtFile = toml::from_str(text).map_err(|e| toml_error(&e, text, file))?;
    let port = raw.server.port.unwrap_or(443);
    let ip = |s: &Spanned<String>, key: &str| -> Result<IpAddr, ConfigError> {
        s.get_ref().parse().map_err(|_| {
            at(
                file,
                text,
                s.span(),
                key,
                format!("{:?} is not an IP address", s.get_ref()),
            )
        })
    };
    let mut listen = Vec::new();
    let mut changes = Vec::new();
    let mut pp_off = false;
    if raw.server.listeners.is_empty() {
        let v4 = match &raw.server.listen_addr_ipv4 {
            Some(s) => ip(s, "[server] listen_addr_ipv4")?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        listen.push(SocketAddr::new(v4, port));
        // telemt's documented default is "::", so it listens on IPv6 too
        // unless told otherwise.
        let v6 = match &raw.server.listen_addr_ipv6 {
            Some(s) => ip(s, "[server] listen_addr_ipv6")?,
            None => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        listen.push(SocketAddr::new(v6, port));
        changes.push("[server] listen_addr_ipv4 = \"127.0.0.1\"".to_owned());
        changes.push("[server] listen_addr_ipv6 = \"::1\"".to_owned());
    } else {
        for (i, l) in raw.server.listeners.iter().enumerate() {
            let key = format!("[[server.listeners]][{i}] ip");
            listen.push(SocketAddr::new(ip(&l.ip, &key)?, l.port.unwrap_or(port)));
            pp_off |= l.proxy_protocol == Some(false);
        }
        changes.push(
            "[[server.listeners]]: keep one, with ip = \"127.0.0.1\" and the port below".to_owned(),
        );
    }
    let listen = dual_stack(listen);
    let backend = backend_for(&listen);
    changes.insert(0, format!("[server] port = {}", backend.port()));
    // A listener's own proxy_protocol overrides [server]'s.
    let server_pp = raw.server.proxy_protocol;
    let pp_on = if raw.server.listeners.is_empty() {
        server_pp == Some(true)
    } else {
        raw.server
            .listeners
            .iter()
            .all(|l| l.proxy_protocol.or(server_pp) == Some(true))
    };
    if !pp_on {
        changes.push("[server] proxy_protocol = true".to_owned());
    }
    if pp_off {
        changes.push(
            "[[server.listeners]] proxy_protocol = false: remove it (it overrides [server])"
                .to_owned(),
        );
    }
    changes.push(
        "[server] proxy_protocol_trusted_cidrs = [\"127.0.0.1/32\"] (only the guard may send the header)"
            .to_owned(),
    );

    let users = raw.access.users.ok_or_else(|| {
        missing(
            file,
            "[access] users",
            "telemt's config has no [access.users]",
        )
    })?;
    let users_span = users.span();
    let users = users.into_inner();
    let modes = &raw.general.modes;
    if !(modes.classic || modes.secure || modes.tls) {
        return Err(missing(
            file,
            "[general.modes]",
            "every mode is off: telemt accepts no client",
        ));
    }
    let mut domains = Vec::new();
    if modes.tls {
        match &raw.censorship.tls_domain {
            Some(d) => domains.push(d.clone()),
            None => domains.push(Spanned::new(0..0, TELEMT_TLS_DOMAIN.to_owned())),
        }
        domains.extend(raw.censorship.tls_domains.iter().cloned());
    }
    let mut secrets = Vec::new();
    for (name, key) in &users {
        if raw.access.user_enabled.get(name) == Some(&false) {
            continue;
        }
        let what = format!("[access.users] {name}");
        let hex = key.get_ref();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(at(
                file,
                text,
                key.span(),
                &what,
                "must be exactly 32 hex digits, as telemt requires".to_owned(),
            ));
        }
        let hex = hex.to_ascii_lowercase();
        if modes.classic {
            secrets.push(check_secret(file, text, key.span(), &what, &hex)?);
        }
        if modes.secure {
            secrets.push(check_secret(
                file,
                text,
                key.span(),
                &what,
                &format!("dd{hex}"),
            )?);
        }
        for d in &domains {
            let domain_hex: String = d.get_ref().bytes().map(|b| format!("{b:02x}")).collect();
            let span = if d.span().is_empty() {
                key.span()
            } else {
                d.span()
            };
            secrets.push(check_secret(
                file,
                text,
                span,
                "[censorship] tls_domain",
                &format!("ee{hex}{domain_hex}"),
            )?);
        }
    }
    if secrets.is_empty() {
        return Err(at(
            file,
            text,
            users_span,
            "[access] users",
            "no enabled user".to_owned(),
        ));
    }
    let max = mtguard_core::mtproto::MAX_SECRETS;
    if secrets.len() > max {
        return Err(at(
            file,
            text,
            users_span,
            "[access] users",
            format!(
                "{} users and modes make {} secrets; the guard holds at most {max}",
                users.len(),
                secrets.len()
            ),
        ));
    }
    changes.push("[access.users]: unchanged (the guard checks the same secrets)".to_owned());
    Ok(Plan {
        proxy: "telemt",
        source: file.to_owned(),
        listen,
        backend,
        secrets,
        proxy_changes: changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTG: &str = include_str!("../../../tests/fixtures/init/mtg.toml");
    const MTG_BROKEN: &str = include_str!("../../../tests/fixtures/init/mtg-broken.toml");
    const TELEMT: &str = include_str!("../../../tests/fixtures/init/telemt.toml");
    const TELEMT_LISTENERS: &str =
        include_str!("../../../tests/fixtures/init/telemt-listeners.toml");
    const TELEMT_BROKEN: &str = include_str!("../../../tests/fixtures/init/telemt-broken.toml");

    fn parsed(plan: &Plan) -> Config {
        Config::parse(&plan.render(), "generated").unwrap()
    }

    #[test]
    fn mtg_config_becomes_a_guard_in_front_of_mtg_on_loopback() {
        let plan = from_mtg(MTG, "mtg.toml").unwrap();
        let config = parsed(&plan);
        assert_eq!(config.server.listen, vec!["0.0.0.0:443".parse().unwrap()]);
        assert_eq!(config.server.backend, "127.0.0.1:8443");
        assert_eq!(
            config.server.proxy_protocol,
            mtguard::config::ProxyProtocol::V2
        );
        assert_eq!(config.state.dir, Path::new(STATE_DIR));
        assert_eq!(config.mtproto.secret_count(), 1);
        assert_eq!(
            plan.secrets,
            ["ee367a189aee18fa31c190054efd4a8e9573746f726167652e676f6f676c65617069732e636f6d"]
        );
        let advice = plan.advice();
        assert!(advice.contains("bind-to = \"127.0.0.1:8443\""), "{advice}");
        assert!(
            advice.contains("proxy-protocol-listener = true"),
            "{advice}"
        );
    }

    #[test]
    fn mtg_base64_secret_and_port_only_bind_are_read() {
        // mtg also takes the secret in base64url and a Go ":port" address.
        let text = "secret = \"7gEjRWeJq83vASNFZ4mrze9leGFtcGxlLmNvbQ\"\nbind-to = \":8443\"\nproxy-protocol-listener = true\n";
        let plan = from_mtg(text, "m.toml").unwrap();
        assert_eq!(
            plan.secrets,
            ["ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d"]
        );
        assert_eq!(plan.listen, vec!["0.0.0.0:8443".parse().unwrap()]);
        // The guard took 8443, so the proxy moves one port up.
        assert_eq!(plan.backend, "127.0.0.1:8444".parse().unwrap());
        assert!(!plan.advice().contains("proxy-protocol-listener"));
        parsed(&plan);
    }

    #[test]
    fn malformed_mtg_configs_name_the_line_and_key() {
        let e = from_mtg(MTG_BROKEN, "mtg-broken.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mtg-broken.toml:4: secret: "), "{e}");
        let e = from_mtg("secret = \"ee00\"\nbind-to = \"0.0.0.0:443\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m.toml:1: secret: "), "{e}");
        let good = "secret = \"0123456789abcdef0123456789abcdef\"\n";
        let e = from_mtg(
            &format!("{good}bind-to = \"proxy.example:443\"\n"),
            "m.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("m.toml:2: bind-to: "), "{e}");
        let e = from_mtg(good, "m.toml").unwrap_err().to_string();
        assert!(e.contains("bind-to"), "{e}");
        let e = from_mtg("bind-to = [\n", "m.toml").unwrap_err().to_string();
        assert!(e.starts_with("m.toml:"), "{e}");
    }

    #[test]
    fn telemt_config_becomes_one_secret_per_user_and_mode() {
        let plan = from_telemt(TELEMT, "telemt.toml").unwrap();
        let config = parsed(&plan);
        // telemt's defaults: 0.0.0.0 and ::, one dual-stack socket.
        assert_eq!(config.server.listen, vec!["[::]:443".parse().unwrap()]);
        assert_eq!(config.server.backend, "127.0.0.1:8443");
        // alice and bob, tls and secure; carol is disabled.
        assert_eq!(
            plan.secrets,
            [
                "dd00112233445566778899aabbccddeeff",
                "ee00112233445566778899aabbccddeeff6578616d706c652e636f6d",
                "dd0123456789abcdef0123456789abcdef",
                "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d",
            ]
        );
        assert_eq!(config.mtproto.secret_count(), 4);
        let advice = plan.advice();
        assert!(advice.contains("[server] port = 8443"), "{advice}");
        assert!(
            advice.contains("listen_addr_ipv4 = \"127.0.0.1\""),
            "{advice}"
        );
        assert!(advice.contains("listen_addr_ipv6 = \"::1\""), "{advice}");
        assert!(
            advice.contains("[server] proxy_protocol = true"),
            "{advice}"
        );
    }

    #[test]
    fn telemt_listeners_are_taken_over() {
        let plan = from_telemt(TELEMT_LISTENERS, "t.toml").unwrap();
        let config = parsed(&plan);
        assert_eq!(
            config.server.listen,
            vec![
                "192.0.2.10:443".parse().unwrap(),
                "[2001:db8::10]:8443".parse().unwrap()
            ]
        );
        // Only tls by default, with telemt's default domain.
        assert_eq!(
            plan.secrets,
            ["ee0123456789abcdef0123456789abcdef706574726f766963682e7275"]
        );
        assert!(plan.advice().contains("[[server.listeners]]"));
        // proxy_protocol is already on there.
        assert!(!plan.advice().contains("proxy_protocol = true"));
    }

    #[test]
    fn wildcard_listeners_on_one_port_become_one_dual_stack_socket() {
        let text = "[[server.listeners]]\nip = \"0.0.0.0\"\n[[server.listeners]]\nip = \"::\"\n\
                    [[server.listeners]]\nip = \"0.0.0.0\"\nport = 8080\n\
                    [access.users]\na = \"0123456789abcdef0123456789abcdef\"\n";
        let plan = from_telemt(text, "t.toml").unwrap();
        let want: Vec<SocketAddr> =
            vec!["[::]:443".parse().unwrap(), "0.0.0.0:8080".parse().unwrap()];
        assert_eq!(plan.listen, want);
        parsed(&plan);
    }

    #[test]
    fn a_listeners_own_proxy_protocol_overrides_the_servers() {
        let users = "[access.users]\na = \"0123456789abcdef0123456789abcdef\"\n";
        let on = format!("[[server.listeners]]\nip = \"0.0.0.0\"\nproxy_protocol = true\n{users}");
        let advice = from_telemt(&on, "t.toml").unwrap().advice();
        assert!(!advice.contains("proxy_protocol = true"), "{advice}");
        let off = format!(
            "[server]\nproxy_protocol = true\n[[server.listeners]]\nip = \"0.0.0.0\"\n\
             proxy_protocol = false\n{users}"
        );
        let advice = from_telemt(&off, "t.toml").unwrap().advice();
        assert!(
            advice.contains("[server] proxy_protocol = true"),
            "{advice}"
        );
        assert!(
            advice.contains("proxy_protocol = false: remove it"),
            "{advice}"
        );
    }

    #[test]
    fn malformed_telemt_configs_name_the_line_and_key() {
        let e = from_telemt(TELEMT_BROKEN, "telemt-broken.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("telemt-broken.toml:9: [access.users] alice: "),
            "{e}"
        );
        let e = from_telemt("[server]\nport = \"x\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:2: "), "{e}");
        assert!(e.contains("port"), "{e}");
        let e = from_telemt("[server]\nport = 443\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[access] users"), "{e}");
        let e = from_telemt(
            "[server]\nlisten_addr_ipv4 = \"any\"\n[access.users]\na = \"0123456789abcdef0123456789abcdef\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("t.toml:2: [server] listen_addr_ipv4: "),
            "{e}"
        );
    }

    #[test]
    fn the_default_is_the_commented_example_and_parses() {
        let config = Config::parse(EXAMPLE, "example").unwrap();
        assert_eq!(config.server.backend, "127.0.0.1:8443");
    }
}
