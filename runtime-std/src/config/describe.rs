//! What `mtguard check-config` prints: every effective value and where it
//! came from.

use std::path::PathBuf;

use mtguard_core::{Level, Policy};

use super::keys::{PinningKeys, BACKEND_TLS_PINNING, REFRESH_PINNING};
use super::*;
use key as k;

fn proxy_protocol_name(pp: ProxyProtocol) -> &'static str {
    match pp {
        ProxyProtocol::None => "none",
        ProxyProtocol::V1 => "v1",
        ProxyProtocol::V2 => "v2",
    }
}

impl Config {
    /// The effective configuration for `mtguard check-config`: the server
    /// settings, and every threshold of `policy` with where it came from
    /// (the file or the level preset).
    pub fn describe(&self, policy: &Policy) -> String {
        use std::fmt::Write as _;
        let level = policy.level.number();
        let level_name = match policy.level {
            Level::Minimal => "minimal",
            Level::Standard => "standard",
            Level::High => "high",
            Level::Maximum => "maximum",
        };
        let mut out = String::new();
        let _ = writeln!(out, "config: {}", self.source_name);
        let _ = write!(out, "level: {level} ({level_name})");
        if level != self.level {
            let _ = write!(
                out,
                ", from the command line (the file says {})",
                self.level
            );
        }
        out.push('\n');

        let mut row = |key: &str, value: String, origin: &str| {
            let line = format!("  {key:<32} {value:<24} {origin}");
            out.push_str(line.trim_end());
            out.push('\n');
        };
        // Where a value came from: `FILE:LINE` of its key, else the default.
        let at = |key: &str| {
            self.lines
                .get(key)
                .map(|line| format!("{}:{line}", self.source_name))
        };
        let origin = |key: &str| at(key).unwrap_or_else(|| "default".into());
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let path_or_none = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(none)".into(), |p| p.display().to_string())
        };
        row(k::server::TABLE, String::new(), "");
        row(
            k::server::listen.name,
            listen.join(", "),
            &origin(k::server::listen.path()),
        );
        row(
            k::server::backend.name,
            self.server.backend.clone(),
            &origin(k::server::backend.path()),
        );
        row(
            k::server::proxy_protocol.name,
            proxy_protocol_name(self.server.proxy_protocol).to_owned(),
            &origin(k::server::proxy_protocol.path()),
        );
        row(
            k::server::connect_timeout.name,
            format_duration(self.server.connect_timeout),
            &origin(k::server::connect_timeout.path()),
        );
        row(
            k::server::idle_timeout.name,
            format_duration(self.server.idle_timeout),
            &origin(k::server::idle_timeout.path()),
        );
        row(
            k::limits::handshake_timeout.name,
            policy
                .handshake_timeout
                .map_or("off".into(), format_duration),
            &self.handshake_timeout_source(policy),
        );
        row(k::admin::TABLE, String::new(), "");
        row(
            k::admin::listen.name,
            self.admin.listen.map_or("off".into(), |a| a.to_string()),
            &origin(k::admin::listen.path()),
        );
        row(
            k::admin::token_file.name,
            path_or_none(&self.admin.token_file),
            &origin(k::admin::token_file.path()),
        );
        row(k::state::TABLE, String::new(), "");
        // Unset in the file, the directory is systemd's or the per-user one.
        let state_origin = at(k::state::dir.path()).unwrap_or_else(|| {
            if super::state_directory().as_ref() == Some(&self.state.dir) {
                "$STATE_DIRECTORY".into()
            } else {
                "default".into()
            }
        });
        row(
            k::state::dir.name,
            self.state.dir.display().to_string(),
            &state_origin,
        );
        row(k::lists::TABLE, String::new(), "");
        let files = |f: &[PathBuf]| {
            if f.is_empty() {
                "(none)".into()
            } else {
                f.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        row(
            k::lists::allow.name,
            format!("{} inline", self.lists.allow.len()),
            "",
        );
        row(
            k::lists::allow_files.name,
            files(&self.lists.allow_files),
            "",
        );
        row(
            k::lists::deny.name,
            format!("{} inline", self.lists.deny.len()),
            "",
        );
        row(k::lists::deny_files.name, files(&self.lists.deny_files), "");
        let m = &self.mtproto;
        row(k::mtproto::TABLE, String::new(), "");
        row(
            k::mtproto::secrets.name,
            if m.hsm_secrets.is_empty() {
                m.secrets.len().to_string()
            } else {
                format!(
                    "{} ({} in the token)",
                    m.secret_count(),
                    m.hsm_secrets.len()
                )
            },
            &origin(k::mtproto::secrets.path()),
        );
        row(
            k::mtproto::inspect.name,
            m.inspecting().to_string(),
            &origin(k::mtproto::inspect.path()),
        );
        row(
            k::mtproto::on_probe.name,
            m.on_probe
                .map_or("(unset)".into(), |p| p.as_str().to_owned()),
            &origin(k::mtproto::on_probe.path()),
        );
        row(
            k::mtproto::mask_backend.name,
            m.mask_backend.clone().unwrap_or_else(|| "(none)".into()),
            &origin(k::mtproto::mask_backend.path()),
        );
        row(
            k::mtproto::time_skew.name,
            format_duration(m.time_skew),
            &origin(k::mtproto::time_skew.path()),
        );
        row(
            k::mtproto::time_skew_ahead.name,
            format_duration(m.time_skew_ahead),
            &origin(k::mtproto::time_skew_ahead.path()),
        );
        row(k::refusal::TABLE, String::new(), "");
        for (key, value, origin) in self.refusal_rows(level, &at) {
            row(key, value, &origin);
        }
        row(k::crowdsec::TABLE, String::new(), "");
        match &self.crowdsec {
            None => row(k::crowdsec::lapi_url.name, "(off)".into(), "default"),
            Some(c) => {
                row(
                    k::crowdsec::lapi_url.name,
                    c.lapi_url.clone(),
                    &origin(k::crowdsec::lapi_url.path()),
                );
                row(
                    k::crowdsec::api_key_file.name,
                    path_or_none(&c.api_key_file),
                    &origin(k::crowdsec::api_key_file.path()),
                );
                if c.api_key.is_some() {
                    row(
                        k::crowdsec::api_key.name,
                        "(set, not shown)".into(),
                        &origin(k::crowdsec::api_key.path()),
                    );
                }
                row(
                    k::crowdsec::poll_interval.name,
                    format_duration(c.poll_interval),
                    &origin(k::crowdsec::poll_interval.path()),
                );
                row(
                    k::crowdsec::machine_id.name,
                    c.machine_id.clone().unwrap_or_else(|| "(none)".into()),
                    &origin(k::crowdsec::machine_id.path()),
                );
                row(
                    k::crowdsec::password_file.name,
                    path_or_none(&c.password_file),
                    &origin(k::crowdsec::password_file.path()),
                );
                if c.lapi_url.starts_with("https://") {
                    row(
                        k::crowdsec::ca_cert_path.name,
                        c.ca_cert_path.as_ref().map_or_else(
                            || "(none: the Mozilla roots)".into(),
                            |p| p.display().to_string(),
                        ),
                        &origin(k::crowdsec::ca_cert_path.path()),
                    );
                    let (cert, key) = match &c.client_cert {
                        Some(cc) => (
                            cc.cert_path.display().to_string(),
                            cc.key_path.display().to_string(),
                        ),
                        None => ("(none)".into(), "(none)".into()),
                    };
                    row(
                        k::crowdsec::cert_path.name,
                        cert,
                        &origin(k::crowdsec::cert_path.path()),
                    );
                    row(
                        k::crowdsec::key_path.name,
                        key,
                        &origin(k::crowdsec::key_path.path()),
                    );
                }
            }
        }
        row(k::kernel::TABLE, String::new(), "");
        row(
            k::kernel::nft_set.name,
            self.kernel
                .nft_set
                .as_ref()
                .map_or("off".into(), |s| s.to_string()),
            &origin(k::kernel::nft_set.path()),
        );
        if let Some(h) = &self.hsm {
            row(k::hsm::TABLE, String::new(), "");
            row(
                k::hsm::module.name,
                h.module.display().to_string(),
                &origin(k::hsm::module.path()),
            );
            row(
                k::hsm::token.name,
                h.token.clone(),
                &origin(k::hsm::token.path()),
            );
            let pin = match &h.pin {
                PinSource::File(p) => format!("file {}", p.display()),
                PinSource::Env(v) => format!("environment variable {v}"),
            };
            let pin_key = match &h.pin {
                PinSource::File(_) => k::hsm::pin_file.path(),
                PinSource::Env(_) => k::hsm::pin_env.path(),
            };
            row("pin", pin, &origin(pin_key));
            row(
                k::hsm::integrity_key.name,
                h.integrity_key.clone(),
                &origin(k::hsm::integrity_key.path()),
            );
        }
        // `extra`: the table's own rows, `(key, value, source)`.
        let mut pinned =
            |keys: &PinningKeys, p: &PinningConfig, extra: &[(&str, String, String)]| {
                row(keys.table(), String::new(), "");
                for (key, value, source) in extra {
                    row(key, value.clone(), source);
                }
                row(
                    keys.pins.name,
                    format!("{} inline", p.pins.len()),
                    &origin(keys.pins.path()),
                );
                row(
                    keys.pins_file.name,
                    path_or_none(&p.pins_file),
                    &origin(keys.pins_file.path()),
                );
                row(
                    keys.trust.name,
                    p.trust.as_str().to_owned(),
                    &origin(keys.trust.path()),
                );
                row(
                    keys.ca_file.name,
                    p.ca_file
                        .as_ref()
                        .map_or("(built-in roots)".into(), |f| f.display().to_string()),
                    &origin(keys.ca_file.path()),
                );
                row(
                    keys.on_expired.name,
                    p.on_expired(level).as_str().to_owned(),
                    &at(keys.on_expired.path()).unwrap_or_else(|| format!("level {level} default")),
                );
            };
        if let Some(tls) = &self.server.backend_tls {
            let name = k::backend_tls::server_name;
            let source = at(name.path())
                .unwrap_or_else(|| format!("default (the host of {})", k::server::backend.path()));
            pinned(
                &BACKEND_TLS_PINNING,
                &tls.pinning,
                &[(name.name, tls.server_name.clone(), source)],
            );
        }
        if let Some(refresh) = &self.refresh {
            let mut extra = Vec::new();
            for (url, out, kind) in &refresh.files {
                let url_key = match kind {
                    ContentKind::ProxyConfig => k::refresh::config_url,
                    ContentKind::ProxySecret => k::refresh::secret_url,
                };
                extra.push((
                    "fetch",
                    format!("{url} -> {}", out.display()),
                    origin(url_key.path()),
                ));
            }
            extra.push((
                k::refresh::interval.name,
                format_duration(refresh.interval),
                origin(k::refresh::interval.path()),
            ));
            extra.push((
                k::refresh::jitter.name,
                format_duration(refresh.jitter),
                at(k::refresh::jitter.path()).unwrap_or_else(|| {
                    format!("default (a tenth of {})", k::refresh::interval.name)
                }),
            ));
            pinned(&REFRESH_PINNING, &refresh.pinning, &extra);
        }
        row(k::limits::TABLE, String::new(), "");
        let preset = format!("level {level} preset");
        for (key, value, from_file) in self.limits.rows(policy) {
            // `[mtproto] handshake_timeout` overrides the `[limits]` key
            // (see `effective_policy`), so it is the true source when set.
            let mtproto_key = k::mtproto::handshake_timeout.path();
            let source = match at(key.path()) {
                _ if key == k::limits::handshake_timeout
                    && self.mtproto.handshake_timeout.is_some() =>
                {
                    format!("{mtproto_key}, {}", origin(mtproto_key))
                }
                Some(at) if from_file => at,
                _ if from_file => self.source_name.clone(),
                _ => preset.clone(),
            };
            row(key.name, value, &source);
        }
        out
    }

    /// Where the effective handshake deadline comes from: `[mtproto]`
    /// overrides `[limits]`, which overrides the level preset.
    fn handshake_timeout_source(&self, policy: &Policy) -> String {
        let at = |key: &str| {
            self.lines
                .get(key)
                .map(|line| format!("{key}, {}:{line}", self.source_name))
        };
        if self.mtproto.handshake_timeout.is_some() {
            if let Some(s) = at(k::mtproto::handshake_timeout.path()) {
                return s;
            }
        }
        if self.limits.handshake_timeout.is_some() {
            if let Some(s) = at(k::limits::handshake_timeout.path()) {
                return s;
            }
        }
        format!("level {} preset", policy.level.number())
    }
}
