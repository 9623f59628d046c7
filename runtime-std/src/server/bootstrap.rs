//! A config turned into a plan, then the plan applied: the one road from a
//! `Config` to a running node, for `run`, SIGHUP and `check-config` alike.
//!
//! [`Plan::build`] does every check and every load a config needs (the
//! policy, every list file, every pins file through the seal, every
//! `hsm:` label in the token, the CA file, the backend's name) and changes
//! nothing: not the engine, not the listeners, not the process's sealer.
//! So `check-config` describes what `run` would do by building the same
//! plan, and a reload that fails anywhere in it leaves the node as it was.
//!
//! [`Plan::apply`] then changes the node. Only its first step can fail:
//! the list swap, whose room depends on manual entries added at run time
//! (the engine checks that room and swaps all or nothing). Every later
//! step was checked by `build` against the node, so `apply` either
//! changes nothing (the swap refused) or everything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use mtguard_core::cidr::{parse_netset_line, Cidr};
use mtguard_core::pins::{Pin, PinSet, PinSetError};
use mtguard_core::Policy;

use crate::config::{Config, ConfigError, Lists, OnExpired, PinningConfig, Trust};
use crate::engine::Guard;
use crate::hsm::{Keys, Token};
use crate::persist::seal::{self as integrity, Purpose, Sealer};
use crate::pinning::verifier::{PinSource, PinnedVerifier};
use crate::proxy::inspect::Mtproto;
use crate::proxy::{BackendTls, ProxySettings};

/// The `[hsm]` token of a config, opened, and the sealer made of its
/// integrity key. `run` opens it once at start (`[hsm]` changes need a
/// restart); `check-config`, `fetch --config` and `hsm` open it the same
/// way, so they check seals as `run` would.
#[derive(Default)]
pub struct Keyring {
    /// The open token, if the config has `[hsm]`.
    pub token: Option<Arc<Token>>,
    /// The key that seals the state and pins files; `None` without `[hsm]`.
    pub sealer: Option<Arc<Sealer>>,
}

impl Keyring {
    /// Opens the token of `config`'s `[hsm]` table, if any. A token that
    /// cannot be opened (module, label, PIN, integrity key) is an error.
    pub fn open(config: &Config) -> anyhow::Result<Keyring> {
        let Some(hsm) = &config.hsm else {
            return Ok(Keyring::default());
        };
        let token = Token::open(hsm)?;
        Ok(Keyring {
            sealer: Some(Arc::new(Sealer::Token(token.clone()))),
            token: Some(token),
        })
    }
}

/// Reads and parses the config file at `path`; relative paths in it are
/// resolved against its directory. The config module does no I/O: this is
/// where the file's text comes from.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            name.clone(),
            None,
            None,
            format!("cannot read the config file: {e}"),
        )
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty());
    Config::parse_in(&text, &name, base)
}

/// The allow and deny lists of `config`: the inline prefixes and those of
/// every list file (one address or prefix a line, `#` starts a comment),
/// sorted and without duplicates.
pub fn load_lists(config: &Config) -> Result<Lists, ConfigError> {
    let read = |inline: &[Cidr], files: &[PathBuf], key: &str| {
        let mut out = inline.to_vec();
        for (i, file) in files.iter().enumerate() {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| {
                let index_key = format!("{key}[{i}]");
                ConfigError::new(
                    config.source_name(),
                    config.line(&index_key),
                    Some(index_key),
                    format!("cannot read list file {name:?}: {e}"),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                match parse_netset_line(line) {
                    Ok(Some(cidr)) => out.push(cidr),
                    Ok(None) => {}
                    Err(e) => {
                        return Err(ConfigError::new(
                            name,
                            Some(n + 1),
                            None,
                            format!(
                                "invalid address or prefix {:?}: {e} (list file of {key}; one address or prefix a line, # starts a comment)",
                                line.split('#').next().unwrap_or("").trim()
                            ),
                        ))
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    };
    let lists = &config.lists;
    Ok(Lists {
        allow: read(&lists.allow, &lists.allow_files, "[lists] allow_files")?,
        deny: read(&lists.deny, &lists.deny_files, "[lists] deny_files")?,
    })
}

/// The pins of `pinning` (inline and pins file), the file read through
/// `sealer`'s seal; `table` names the table in errors. A file pin equal to
/// an inline one counts once; the set's capacity bounds the rest.
pub fn load_pins(
    pinning: &PinningConfig,
    sealer: Option<&Sealer>,
    table: &str,
) -> anyhow::Result<Vec<Pin>> {
    let mut pins = pinning.pins.clone();
    if let Some(path) = &pinning.pins_file {
        // Pins past the capacity, kept only to count them in the error: a
        // file holds at most a set's worth, so they fit one more set.
        let mut over: PinSet = PinSet::new();
        for pin in load_pins_file(path, sealer)? {
            if let Err(PinSetError::Full { .. }) = pins.add(pin.clone()) {
                let _ = over.add(pin);
            }
        }
        anyhow::ensure!(
            over.is_empty(),
            "{table} pins: {} pins: at most {} per host",
            pins.len() + over.len(),
            pins.capacity()
        );
    }
    Ok(pins.as_slice().to_vec())
}

/// One pins file, its seal checked with `sealer`.
pub fn load_pins_file(path: &Path, sealer: Option<&Sealer>) -> anyhow::Result<Vec<Pin>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the pins file {}", path.display()))?;
    let payload = integrity::open_file(sealer, Purpose::Pins, &bytes).map_err(|e| {
        let hint = match e {
            integrity::IntegrityError::NoKey => {
                "; give the config whose [hsm] token sealed it".to_owned()
            }
            _ => format!(
                "; after checking its pins, seal it with `mtguard hsm --config FILE seal-pins {}`",
                path.display()
            ),
        };
        anyhow::anyhow!("pins file {} is refused: {e}{hint}", path.display())
    })?;
    let text = String::from_utf8(payload)
        .map_err(|_| anyhow::anyhow!("pins file {} is not UTF-8 text", path.display()))?;
    crate::persist::pinfile::parse(&text, &path.display().to_string())
}

/// What `[server.backend_tls]` becomes: everything the verifier needs,
/// checked and loaded.
pub struct BackendTlsPlan {
    /// The name the certificate must be valid for, and the SNI.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// WebPKI and pins, or pins alone.
    pub trust: Trust,
    /// The level's (or the file's) choice once every pin has expired.
    pub on_expired: OnExpired,
    /// The CAs (empty with pins alone).
    pub roots: rustls::RootCertStore,
}

/// The running node a reload is checked against.
pub struct Node<'a> {
    /// The engine.
    pub guard: &'a Guard,
    /// The configuration in force.
    pub config: &'a Config,
    /// The inspection state in force (its replay cache is carried over).
    pub mtproto: Option<Arc<Mtproto>>,
}

/// A config with everything loaded and checked, ready to apply.
pub struct Plan {
    /// The configuration.
    pub config: Config,
    /// The effective policy (level preset, `[limits]`, `[mtproto]
    /// handshake_timeout`), validated.
    pub policy: Policy,
    /// The allow and deny lists, inline and from files.
    pub lists: Lists,
    /// The backend's pins of the config and its pins file (the engine also
    /// holds those of the state and of the admin API).
    pub backend_pins: Vec<Pin>,
    /// `[server.backend_tls]`, loaded.
    pub backend_tls: Option<BackendTlsPlan>,
    /// The MTProto inspection state; `None` without inspection.
    pub mtproto: Option<Arc<Mtproto>>,
    /// The `[refresh]` pins, checked against the level policy.
    pub refresh_pins: Option<Arc<PinSet>>,
    /// Sections that changed but apply only on restart (a reload).
    pub restart_only: Vec<&'static str>,
}

/// What applying a plan gives the listeners.
pub struct Applied {
    /// The relay's settings.
    pub settings: Arc<ProxySettings>,
    /// The inspection state.
    pub mtproto: Option<Arc<Mtproto>>,
}

impl Plan {
    /// Checks and loads everything `config` needs, changing nothing.
    /// `node` is the running node of a reload (`None` at start and in
    /// `check-config`): the plan is then also checked against it (`[hsm]`
    /// unchanged, `ipv6_prefix` unchanged, the backend's merged pin set
    /// within capacity and the level policy). Token lookups block: call it
    /// on a blocking thread in async code.
    pub fn build(
        config: Config,
        level_override: Option<u8>,
        keyring: &Keyring,
        node: Option<&Node<'_>>,
    ) -> anyhow::Result<Plan> {
        if let Some(node) = node {
            if config.hsm != node.config.hsm {
                anyhow::bail!("[hsm] changes only on restart");
            }
        }
        let policy = config.effective_policy(level_override)?;
        let level = policy.level.number();
        let lists = load_lists(&config)?;
        let sealer = keyring.sealer.as_deref();
        let (backend_pins, backend_tls) = match &config.server.backend_tls {
            None => (Vec::new(), None),
            Some(tls) => {
                let p = &tls.pinning;
                let pins = load_pins(p, sealer, "[server.backend_tls]")
                    .context("[server.backend_tls] pins")?;
                let roots = match p.trust {
                    Trust::WebPki => crate::pinning::verifier::roots(p.ca_file.as_deref())
                        .context("[server.backend_tls] ca_file")?,
                    Trust::PinsOnly => rustls::RootCertStore::empty(),
                };
                let server_name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                    .context("[server.backend_tls] server_name")?;
                let plan = BackendTlsPlan {
                    server_name,
                    trust: p.trust,
                    on_expired: p.on_expired(level),
                    roots,
                };
                (pins, Some(plan))
            }
        };
        let refresh_pins = match &config.refresh {
            None => None,
            Some(refresh) => {
                let pins =
                    load_pins(&refresh.pinning, sealer, "[refresh]").context("[refresh] pins")?;
                for (url, _, _) in &refresh.files {
                    crate::pinning::verifier::check_backup_pins(level, url, &pins)?;
                }
                let mut set = PinSet::new();
                for pin in pins {
                    let text = pin.to_string();
                    set.add(pin)
                        .map_err(|e| anyhow::anyhow!("[refresh] pin {text}: {e}"))?;
                }
                Some(Arc::new(set))
            }
        };
        if let Some(crowdsec) = &config.crowdsec {
            // Reads the Local API's CA and the client certificate, so a bad
            // file fails check-config as it would fail the start.
            crate::fleet::crowdsec::http_client(crowdsec)?;
        }
        let previous = node.and_then(|n| n.mtproto.clone());
        let mtproto = mtproto_state(&config, keyring.token.as_ref(), previous.as_ref())?;
        let mut restart_only = Vec::new();
        if let Some(node) = node {
            let running = node.guard.with(|e, _| e.policy().ipv6_prefix);
            if policy.ipv6_prefix != running {
                anyhow::bail!(
                    "[limits] ipv6_prefix: {} in force, {} asked: it changes only on restart",
                    running,
                    policy.ipv6_prefix
                );
            }
            let current = node.config;
            if config.crowdsec != current.crowdsec || config.kernel != current.kernel {
                restart_only.push("[crowdsec] and [kernel]");
            }
            if config.server.listen != current.server.listen
                || config.admin.listen != current.admin.listen
            {
                restart_only.push("listen addresses");
            }
            if config.refresh != current.refresh {
                restart_only.push("[refresh]");
            }
            if config.state != current.state || config.admin.token_file != current.admin.token_file
            {
                restart_only.push("[state] and [admin] token_file");
            }
        }
        let plan = Plan {
            config,
            policy,
            lists,
            backend_pins,
            backend_tls,
            mtproto,
            refresh_pins,
            restart_only,
        };
        if let Some(node) = node {
            plan.check_pins(node.guard)?;
        }
        Ok(plan)
    }

    /// The backend's pin set once this plan is applied: the engine's pins
    /// plus the plan's, checked against the pin table's capacity and the
    /// level policy. Changes nothing.
    pub fn check_pins(&self, guard: &Guard) -> anyhow::Result<()> {
        if self.backend_tls.is_none() {
            return Ok(());
        }
        let mut all = guard.with(|e, _| e.pins().clone());
        for pin in &self.backend_pins {
            match all.add(pin.clone()) {
                Ok(()) | Err(PinSetError::Duplicate) => {}
                Err(full @ PinSetError::Full { capacity }) => anyhow::bail!(
                    "[server.backend_tls] pin {pin}: {full} (the {}st is refused)",
                    capacity + 1
                ),
            }
        }
        let host = format!("backend {}", self.config.server.backend);
        crate::pinning::verifier::check_backup_pins(
            self.policy.level.number(),
            &host,
            all.as_slice(),
        )
    }

    /// Applies the plan to the node. Only the list swap can fail, and it
    /// comes first: on an error nothing has changed. After it, nothing
    /// fails: the policy, the pins and the rest were checked by
    /// [`Plan::build`] (or [`Plan::check_pins`] at start).
    pub fn apply(&self, guard: &Arc<Guard>) -> anyhow::Result<Applied> {
        guard.set_config_lists(&self.lists.allow, &self.lists.deny)?;
        let policy = self.policy;
        let pins = &self.backend_pins;
        let (policy_result, refused) = guard.with(|e, _| {
            let policy_result = e.set_policy(policy);
            let mut refused = Vec::new();
            for pin in pins {
                match e.add_pin(pin.clone()) {
                    Ok(()) | Err(PinSetError::Duplicate) => {}
                    Err(err) => refused.push(format!("{pin}: {err}")),
                }
            }
            (policy_result, refused)
        });
        // Checked by `build`; reachable only through a bug, which must be
        // seen rather than turn a half-done apply into a refused one.
        if let Err(e) = policy_result {
            tracing::error!(error = %e, "policy not applied although checked");
        }
        // Only a pin added through the admin API between the check and now
        // can fill the table; fewer pins admit fewer certificates.
        for r in refused {
            tracing::error!(pin = %r, "[server.backend_tls] pin not added: the pin table filled up meanwhile");
        }
        if self.backend_tls.is_some() && guard.with(|e, _| e.pins().is_empty()) {
            tracing::warn!(
                backend = %self.config.server.backend,
                "[server.backend_tls] has no pin yet: add some with POST /v1/pins"
            );
        }
        Ok(Applied {
            settings: self.settings(guard),
            mtproto: self.mtproto.clone(),
        })
    }

    fn settings(&self, guard: &Arc<Guard>) -> Arc<ProxySettings> {
        let server = &self.config.server;
        let backend_tls = self.backend_tls.as_ref().map(|tls| {
            let verifier = PinnedVerifier::new(
                server.backend.clone(),
                PinSource::Engine(guard.clone()),
                tls.trust,
                tls.on_expired,
                tls.roots.clone(),
            );
            BackendTls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(verifier.client_config())),
                server_name: tls.server_name.clone(),
            }
        });
        Arc::new(ProxySettings {
            backend: server.backend.clone(),
            proxy_protocol: server.proxy_protocol,
            connect_timeout: server.connect_timeout,
            idle_timeout: server.idle_timeout,
            backend_tls,
            refusal: self.config.refusal_settings(self.policy.level.number()),
        })
    }

    /// What `check-config` prints: every effective value with its source,
    /// and what was loaded (list sizes, pins).
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.config.describe(&self.policy);
        let _ = writeln!(
            out,
            "lists: {} allow prefixes, {} deny prefixes",
            self.lists.allow.len(),
            self.lists.deny.len()
        );
        if self.backend_tls.is_some() {
            let _ = writeln!(
                out,
                "backend pins loaded: {} (pins in the state directory are added at start)",
                self.backend_pins.len()
            );
            for pin in &self.backend_pins {
                let _ = writeln!(out, "  {pin}");
            }
        }
        if let Some(pins) = &self.refresh_pins {
            let _ = writeln!(out, "refresh pins loaded: {}", pins.len());
            for pin in pins.iter() {
                let _ = writeln!(out, "  {pin}");
            }
        }
        if let Some(m) = &self.mtproto {
            let _ = writeln!(
                out,
                "inspecting MTProto handshakes: {} secrets ({} looked up in the token)",
                m.secrets().as_slice().len(),
                self.config.mtproto.hsm_secrets.len()
            );
        }
        out
    }
}

/// The MTProto inspection state of `config`, or `None` without
/// inspection. `previous` is the state it replaces (a reload), whose replay
/// cache it shares when the time window is unchanged (sharing changes
/// nothing until the new state is put in force).
fn mtproto_state(
    config: &Config,
    token: Option<&Arc<Token>>,
    previous: Option<&Arc<Mtproto>>,
) -> anyhow::Result<Option<Arc<Mtproto>>> {
    let m = &config.mtproto;
    if !m.inspecting() {
        return Ok(None);
    }
    let (set, keys) = Keys::with_token(&m.secrets, &m.hsm_secrets, token.cloned())?;
    let state = Mtproto::with_keys(
        set,
        keys,
        m.window(),
        m.on_probe.unwrap_or_default(),
        m.mask_backend.clone(),
        previous.map(|p| &**p),
    );
    Ok(Some(Arc::new(state)))
}
