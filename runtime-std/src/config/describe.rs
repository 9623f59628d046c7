//! What `mtguard check-config` prints: every effective value and where it
//! came from.

use std::path::PathBuf;

use mtguard_core::{Level, Policy};

use super::*;

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
        row("[server]", String::new(), "");
        row("listen", listen.join(", "), &origin("[server] listen"));
        row(
            "backend",
            self.server.backend.clone(),
            &origin("[server] backend"),
        );
        row(
            "proxy_protocol",
            proxy_protocol_name(self.server.proxy_protocol).to_owned(),
            &origin("[server] proxy_protocol"),
        );
        row(
            "connect_timeout",
            format_duration(self.server.connect_timeout),
            &origin("[server] connect_timeout"),
        );
        row(
            "idle_timeout",
            format_duration(self.server.idle_timeout),
            &origin("[server] idle_timeout"),
        );
        row(
            "handshake_timeout",
            policy
                .handshake_timeout
                .map_or("off".into(), format_duration),
            &self.handshake_timeout_source(policy),
        );
        row("[admin]", String::new(), "");
        row(
            "listen",
            self.admin.listen.map_or("off".into(), |a| a.to_string()),
            &origin("[admin] listen"),
        );
        row(
            "token_file",
            path_or_none(&self.admin.token_file),
            &origin("[admin] token_file"),
        );
        row("[state]", String::new(), "");
        row(
            "dir",
            self.state.dir.display().to_string(),
            &origin("[state] dir"),
        );
        row("[lists]", String::new(), "");
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
        row("allow", format!("{} inline", self.lists.allow.len()), "");
        row("allow_files", files(&self.lists.allow_files), "");
        row("deny", format!("{} inline", self.lists.deny.len()), "");
        row("deny_files", files(&self.lists.deny_files), "");
        let m = &self.mtproto;
        row("[mtproto]", String::new(), "");
        row(
            "secrets",
            if m.hsm_secrets.is_empty() {
                m.secrets.len().to_string()
            } else {
                format!(
                    "{} ({} in the token)",
                    m.secret_count(),
                    m.hsm_secrets.len()
                )
            },
            &origin("[mtproto] secrets"),
        );
        row(
            "inspect",
            m.inspecting().to_string(),
            &origin("[mtproto] inspect"),
        );
        row(
            "on_probe",
            m.on_probe.as_str().to_owned(),
            &origin("[mtproto] on_probe"),
        );
        row(
            "mask_backend",
            m.mask_backend.clone().unwrap_or_else(|| "(none)".into()),
            &origin("[mtproto] mask_backend"),
        );
        row(
            "time_skew",
            format_duration(m.time_skew),
            &origin("[mtproto] time_skew"),
        );
        row(
            "time_skew_ahead",
            format_duration(m.time_skew_ahead),
            &origin("[mtproto] time_skew_ahead"),
        );
        row("[crowdsec]", String::new(), "");
        match &self.crowdsec {
            None => row("lapi_url", "(off)".into(), "default"),
            Some(c) => {
                row(
                    "lapi_url",
                    c.lapi_url.clone(),
                    &origin("[crowdsec] lapi_url"),
                );
                row(
                    "api_key_file",
                    path_or_none(&c.api_key_file),
                    &origin("[crowdsec] api_key_file"),
                );
                row(
                    "poll_interval",
                    format_duration(c.poll_interval),
                    &origin("[crowdsec] poll_interval"),
                );
                row(
                    "machine_id",
                    c.machine_id.clone().unwrap_or_else(|| "(none)".into()),
                    &origin("[crowdsec] machine_id"),
                );
                row(
                    "password_file",
                    path_or_none(&c.password_file),
                    &origin("[crowdsec] password_file"),
                );
            }
        }
        row("[kernel]", String::new(), "");
        row(
            "nft_set",
            self.kernel
                .nft_set
                .as_ref()
                .map_or("off".into(), |s| s.to_string()),
            &origin("[kernel] nft_set"),
        );
        if let Some(h) = &self.hsm {
            row("[hsm]", String::new(), "");
            row(
                "module",
                h.module.display().to_string(),
                &origin("[hsm] module"),
            );
            row("token", h.token.clone(), &origin("[hsm] token"));
            let pin = match &h.pin {
                PinSource::File(p) => format!("file {}", p.display()),
                PinSource::Env(v) => format!("environment variable {v}"),
            };
            let pin_key = match &h.pin {
                PinSource::File(_) => "[hsm] pin_file",
                PinSource::Env(_) => "[hsm] pin_env",
            };
            row("pin", pin, &origin(pin_key));
            row(
                "integrity_key",
                h.integrity_key.clone(),
                &origin("[hsm] integrity_key"),
            );
        }
        // `extra`: the table's own rows, `(key, value, source)`.
        let mut pinned = |table: &str, p: &PinningConfig, extra: &[(&str, String, String)]| {
            row(table, String::new(), "");
            for (key, value, source) in extra {
                row(key, value.clone(), source);
            }
            row(
                "pins",
                format!("{} inline", p.pins.len()),
                &origin(&format!("{table} pins")),
            );
            row(
                "pins_file",
                path_or_none(&p.pins_file),
                &origin(&format!("{table} pins_file")),
            );
            row(
                "trust",
                p.trust.as_str().to_owned(),
                &origin(&format!("{table} trust")),
            );
            row(
                "ca_file",
                p.ca_file
                    .as_ref()
                    .map_or("(built-in roots)".into(), |f| f.display().to_string()),
                &origin(&format!("{table} ca_file")),
            );
            row(
                "on_expired",
                p.on_expired(level).as_str().to_owned(),
                &at(&format!("{table} on_expired"))
                    .unwrap_or_else(|| format!("level {level} default")),
            );
        };
        if let Some(tls) = &self.server.backend_tls {
            let source = at("[server.backend_tls] server_name")
                .unwrap_or_else(|| "default (the host of [server] backend)".into());
            pinned(
                "[server.backend_tls]",
                &tls.pinning,
                &[("server_name", tls.server_name.clone(), source)],
            );
        }
        if let Some(refresh) = &self.refresh {
            let mut extra = Vec::new();
            for (url, out, kind) in &refresh.files {
                let name = match kind {
                    ContentKind::ProxyConfig => "config",
                    ContentKind::ProxySecret => "secret",
                };
                extra.push((
                    "fetch",
                    format!("{url} -> {}", out.display()),
                    origin(&format!("[refresh] {name}_url")),
                ));
            }
            extra.push((
                "interval",
                format_duration(refresh.interval),
                origin("[refresh] interval"),
            ));
            extra.push((
                "jitter",
                format_duration(refresh.jitter),
                at("[refresh] jitter").unwrap_or_else(|| "default (a tenth of interval)".into()),
            ));
            pinned("[refresh]", &refresh.pinning, &extra);
        }
        row("[limits]", String::new(), "");
        let preset = format!("level {level} preset");
        for (key, value, from_file) in self.limits.rows(policy) {
            // `[mtproto] handshake_timeout` overrides the `[limits]` key
            // (see `effective_policy`), so it is the true source when set.
            let mtproto_key = "[mtproto] handshake_timeout";
            let source = match at(&format!("[limits] {key}")) {
                _ if key == "handshake_timeout" && self.mtproto.handshake_timeout.is_some() => {
                    format!("{mtproto_key}, {}", origin(mtproto_key))
                }
                Some(at) if from_file => at,
                _ if from_file => self.source_name.clone(),
                _ => preset.clone(),
            };
            row(key, value, &source);
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
            if let Some(s) = at("[mtproto] handshake_timeout") {
                return s;
            }
        }
        if self.limits.handshake_timeout.is_some() {
            if let Some(s) = at("[limits] handshake_timeout") {
                return s;
            }
        }
        format!("level {} preset", policy.level.number())
    }
}
