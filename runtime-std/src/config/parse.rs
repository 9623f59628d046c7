//! Spans to values: serde fills the raw structs (every value keeps its
//! byte span), then each table is checked as a whole and turned into the
//! model, noting the line of every key it sets.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtguard_core::cidr::Cidr;
use mtguard_core::mtproto::{Secret, MAX_SECRETS};
use mtguard_core::pins::{parse_pin_line, PinSet, PinSetError, DEFAULT_CAPACITY};
use mtguard_core::Level;
use serde::Deserialize;
use toml::Spanned;

use super::duration::{parse_duration, DurationText};
use super::error::{toml_error, ConfigError};
use super::keys::{LimitValue, LimitsConfig, PinningKeys, RawLimits};
use super::keys::{BACKEND_TLS_PINNING, REFRESH_PINNING};
use super::*;
use key as k;

/// `proxy_protocol` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProxyProtocol {
    None,
    V1,
    V2,
}

impl From<RawProxyProtocol> for ProxyProtocol {
    fn from(raw: RawProxyProtocol) -> Self {
        match raw {
            RawProxyProtocol::None => ProxyProtocol::None,
            RawProxyProtocol::V1 => ProxyProtocol::V1,
            RawProxyProtocol::V2 => ProxyProtocol::V2,
        }
    }
}

/// `on_probe` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnProbe {
    Close,
    Mask,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    level: Option<Spanned<i64>>,
    server: Option<RawServer>,
    limits: Option<RawLimits>,
    lists: Option<RawLists>,
    admin: Option<RawAdmin>,
    state: Option<RawState>,
    mtproto: Option<RawMtproto>,
    refusal: Option<super::refusal::RawRefusal>,
    crowdsec: Option<Spanned<RawCrowdsec>>,
    kernel: Option<RawKernel>,
    hsm: Option<RawHsm>,
    refresh: Option<RawRefresh>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCrowdsec {
    lapi_url: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    poll_interval: Option<Spanned<DurationText>>,
    machine_id: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    // The names CrowdSec's own bouncers use, so their config lines carry
    // over: the first two are lapi_url and poll_interval by another name,
    // api_key is the key itself instead of a file holding it.
    api_url: Option<Spanned<String>>,
    api_key: Option<Spanned<String>>,
    update_frequency: Option<Spanned<DurationText>>,
    ca_cert_path: Option<Spanned<String>>,
    cert_path: Option<Spanned<String>>,
    key_path: Option<Spanned<String>>,
    insecure_skip_verify: Option<Spanned<bool>>,
}

/// `[crowdsec]`'s TLS keys, borrowed from the raw table whose URL keys
/// have already been taken.
struct CrowdsecTls<'a> {
    ca_cert_path: &'a Option<Spanned<String>>,
    cert_path: &'a Option<Spanned<String>>,
    key_path: &'a Option<Spanned<String>>,
    insecure_skip_verify: &'a Option<Spanned<bool>>,
}

/// One of a key and its other name, with the path of the one written
/// (errors name what the file says); both written is an error.
fn one_of<T>(
    cx: &Parse<'_>,
    (a, a_key): (Option<Spanned<T>>, &'static str),
    (b, b_key): (Option<Spanned<T>>, &'static str),
) -> Result<Option<(Spanned<T>, &'static str)>, ConfigError> {
    match (a, b) {
        (Some(_), Some(b)) => {
            let m = format!("the same setting as {a_key}: set one of them");
            Err(cx.error(&b.span(), b_key, m))
        }
        (Some(a), None) => Ok(Some((a, a_key))),
        (None, Some(b)) => Ok(Some((b, b_key))),
        (None, None) => Ok(None),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    nft_set: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    module: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    pin_file: Option<Spanned<String>>,
    pin_env: Option<Spanned<String>>,
    integrity_key: Option<Spanned<String>>,
}

/// `trust` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
enum RawTrust {
    #[serde(rename = "webpki")]
    WebPki,
    #[serde(rename = "pins-only")]
    PinsOnly,
}

/// `on_expired` as the file writes it.
#[derive(Clone, Copy, Deserialize)]
enum RawOnExpired {
    #[serde(rename = "fail-closed")]
    FailClosed,
    #[serde(rename = "webpki")]
    WebPki,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    server_name: Option<Spanned<String>>,
    pins: Option<Spanned<Vec<Spanned<String>>>>,
    pins_file: Option<Spanned<String>>,
    trust: Option<Spanned<RawTrust>>,
    ca_file: Option<Spanned<String>>,
    on_expired: Option<Spanned<RawOnExpired>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRefresh {
    config_url: Option<Spanned<String>>,
    config_out: Option<Spanned<String>>,
    secret_url: Option<Spanned<String>>,
    secret_out: Option<Spanned<String>>,
    interval: Option<Spanned<DurationText>>,
    jitter: Option<Spanned<DurationText>>,
    pins: Option<Spanned<Vec<Spanned<String>>>>,
    pins_file: Option<Spanned<String>>,
    trust: Option<Spanned<RawTrust>>,
    ca_file: Option<Spanned<String>>,
    on_expired: Option<Spanned<RawOnExpired>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMtproto {
    secrets: Option<Spanned<Vec<Spanned<String>>>>,
    inspect: Option<Spanned<bool>>,
    on_probe: Option<Spanned<RawOnProbe>>,
    mask_backend: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<DurationText>>,
    time_skew: Option<Spanned<DurationText>>,
    time_skew_ahead: Option<Spanned<DurationText>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    backend: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    connect_timeout: Option<Spanned<DurationText>>,
    idle_timeout: Option<Spanned<DurationText>>,
    backend_tls: Option<RawBackendTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLists {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow_files: Vec<Spanned<String>>,
    #[serde(default)]
    deny_files: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<Spanned<String>>,
}

/// What one parse needs to turn spans into lines and paths into paths.
pub(super) struct Parse<'a> {
    /// Built once per parse: every span's line comes from it.
    line_index: LineIndex,
    source: &'a str,
    base: Option<&'a Path>,
    lines: BTreeMap<String, usize>,
    /// Whether the file has an `[hsm]` table (for `hsm:` secrets).
    has_hsm: bool,
}

impl Parse<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.line_index.line(span.start)
    }

    pub(super) fn note(&mut self, key: &str, span: &Range<usize>) {
        let line = self.line(span);
        self.lines.insert(key.to_owned(), line);
    }

    pub(super) fn error(
        &self,
        span: &Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.source.to_owned(),
            line: Some(self.line(span)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// A path from the file: relative ones are relative to the file's
    /// directory.
    fn path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if value.get_ref().is_empty() {
            return Err(self.error(&value.span(), key, "empty path"));
        }
        let path = PathBuf::from(value.get_ref());
        Ok(match self.base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        })
    }

    fn duration(
        &mut self,
        value: Option<Spanned<DurationText>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let span = value.span();
        self.note(key, &span);
        let d = parse_duration(&value.get_ref().0).map_err(|m| self.error(&span, key, m))?;
        if d.is_zero() {
            return Err(self.error(&span, key, "must be longer than zero"));
        }
        Ok(Some(d))
    }

    /// `[hsm]`, checked as a whole.
    fn hsm(&mut self, raw: RawHsm, span: &Range<usize>) -> Result<HsmConfig, ConfigError> {
        let module = match &raw.module {
            Some(m) => {
                self.note(k::hsm::module.path(), &m.span());
                self.path(m, k::hsm::module.path())?
            }
            None => {
                let m = "missing: the path of the token's PKCS#11 module \
                         (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)";
                return Err(self.error(span, k::hsm::module.path(), m));
            }
        };
        let token = match &raw.token {
            Some(t) => {
                self.note(k::hsm::token.path(), &t.span());
                check_label(t.get_ref())
                    .map_err(|m| self.error(&t.span(), k::hsm::token.path(), m))?;
                t.get_ref().clone()
            }
            None => {
                let m = "missing: the label of the token";
                return Err(self.error(span, k::hsm::token.path(), m));
            }
        };
        let pin = match (&raw.pin_file, &raw.pin_env) {
            (Some(f), None) => {
                self.note(k::hsm::pin_file.path(), &f.span());
                PinSource::File(self.path(f, k::hsm::pin_file.path())?)
            }
            (None, Some(e)) => {
                self.note(k::hsm::pin_env.path(), &e.span());
                let name = e.get_ref();
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    let m = format!("{name:?} is not an environment variable name");
                    return Err(self.error(&e.span(), k::hsm::pin_env.path(), m));
                }
                PinSource::Env(name.clone())
            }
            (Some(_), Some(e)) => {
                let m = "give pin_file or pin_env, not both";
                return Err(self.error(&e.span(), k::hsm::pin_env.path(), m));
            }
            (None, None) => {
                let m = "missing: the file (pin_file) or environment variable (pin_env) \
                         holding the user PIN; the PIN is never written in the config";
                return Err(self.error(span, k::hsm::pin_file.path(), m));
            }
        };
        let integrity_key = match &raw.integrity_key {
            Some(k) => {
                self.note(k::hsm::integrity_key.path(), &k.span());
                check_label(k.get_ref())
                    .map_err(|m| self.error(&k.span(), k::hsm::integrity_key.path(), m))?;
                k.get_ref().clone()
            }
            None => DEFAULT_INTEGRITY_KEY.to_owned(),
        };
        Ok(HsmConfig {
            module,
            token,
            pin,
            integrity_key,
        })
    }

    /// `[mtproto]`, checked as a whole.
    fn mtproto(&mut self, raw: RawMtproto) -> Result<MtprotoConfig, ConfigError> {
        let mut out = MtprotoConfig::default();
        if let Some(secrets) = &raw.secrets {
            let key = k::mtproto::secrets.path();
            self.note(key, &secrets.span());
            for (i, value) in secrets.get_ref().iter().enumerate() {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                if i == MAX_SECRETS {
                    let m = format!("at most {MAX_SECRETS} secrets");
                    return Err(self.error(&value.span(), &key, m));
                }
                if let Some(label) = value.get_ref().strip_prefix("hsm:") {
                    check_label(label).map_err(|m| self.error(&value.span(), &key, m))?;
                    if !self.has_hsm {
                        let m = format!(
                            "{:?} needs an [hsm] table (the token that holds it)",
                            value.get_ref()
                        );
                        return Err(self.error(&value.span(), &key, m));
                    }
                    if out.hsm_secrets.iter().any(|l| l == label) {
                        let m = format!("hsm:{label} is listed twice");
                        return Err(self.error(&value.span(), &key, m));
                    }
                    out.hsm_secrets.push(label.to_owned());
                    continue;
                }
                let secret = Secret::parse(value.get_ref()).map_err(|e| {
                    let m = format!(
                        "invalid secret: {e} (expected 32 hex digits, dd + 32 hex digits, \
                         ee + 32 hex digits + the hex of the domain, the same bytes in base64url, \
                         or hsm:<label>)"
                    );
                    self.error(&value.span(), &key, m)
                })?;
                out.secrets.push(secret);
            }
        }
        if let Some(inspect) = &raw.inspect {
            let key = k::mtproto::inspect.path();
            self.note(key, &inspect.span());
            if *inspect.get_ref() && out.secret_count() == 0 {
                let m = "inspection needs at least one secret in [mtproto] secrets";
                return Err(self.error(&inspect.span(), key, m));
            }
            out.inspect = Some(*inspect.get_ref());
        }
        if let Some(backend) = &raw.mask_backend {
            let key = k::mtproto::mask_backend.path();
            self.note(key, &backend.span());
            check_backend(backend.get_ref()).map_err(|m| self.error(&backend.span(), key, m))?;
            out.mask_backend = Some(backend.get_ref().clone());
        }
        if let Some(on_probe) = &raw.on_probe {
            let key = k::mtproto::on_probe.path();
            self.note(key, &on_probe.span());
            out.on_probe = Some(match on_probe.get_ref() {
                RawOnProbe::Close => OnProbe::Close,
                RawOnProbe::Mask => OnProbe::Mask,
            });
            if out.on_probe == Some(OnProbe::Mask) && out.mask_backend.is_none() {
                let m = "\"mask\" needs [mtproto] mask_backend = \"host:port\" \
                         (the real website of the fake-TLS domain)";
                return Err(self.error(&on_probe.span(), key, m));
            }
        }
        if let Some(value) = raw.handshake_timeout {
            let key = k::mtproto::handshake_timeout.path();
            let span = value.span();
            self.note(key, &span);
            let t = <Option<Duration> as LimitValue>::convert(value.into_inner())
                .map_err(|m| self.error(&span, key, m))?;
            out.handshake_timeout = Some(t);
        }
        for (value, key, slot) in [
            (
                raw.time_skew,
                k::mtproto::time_skew.path(),
                &mut out.time_skew,
            ),
            (
                raw.time_skew_ahead,
                k::mtproto::time_skew_ahead.path(),
                &mut out.time_skew_ahead,
            ),
        ] {
            let Some(value) = value else { continue };
            let span = value.span();
            self.note(key, &span);
            let d = parse_duration(&value.get_ref().0).map_err(|m| self.error(&span, key, m))?;
            if d.subsec_millis() != 0 || u32::try_from(d.as_secs()).is_err() {
                let m = format!(
                    "{:?} must be whole seconds, at most {}s",
                    value.get_ref().0,
                    u32::MAX
                );
                return Err(self.error(&span, key, m));
            }
            *slot = d;
        }
        Ok(out)
    }

    /// The keys `[server.backend_tls]` and `[refresh]` share.
    fn pinning(
        &mut self,
        keys: &PinningKeys,
        pins: Option<Spanned<Vec<Spanned<String>>>>,
        pins_file: Option<Spanned<String>>,
        trust: Option<Spanned<RawTrust>>,
        ca_file: Option<Spanned<String>>,
        on_expired: Option<Spanned<RawOnExpired>>,
    ) -> Result<PinningConfig, ConfigError> {
        let mut out = PinningConfig {
            pins: PinSet::new(),
            pins_file: None,
            trust: Trust::WebPki,
            ca_file: None,
            on_expired: None,
        };
        if let Some(pins) = &pins {
            let key = keys.pins.path();
            self.note(key, &pins.span());
            for (i, value) in pins.get_ref().iter().enumerate() {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                let pin = parse_pin_line(value.get_ref())
                    .map_err(|e| self.error(&value.span(), &key, e.to_string()))?
                    .ok_or_else(|| self.error(&value.span(), &key, "empty pin"))?;
                let text = pin.to_string();
                // The set's own rules; only the wording is the config's.
                out.pins.add(pin).map_err(|e| {
                    let m = match e {
                        PinSetError::Duplicate => format!("{text} is listed twice"),
                        PinSetError::Full { .. } => {
                            format!("too many pins: at most {DEFAULT_CAPACITY} per host")
                        }
                    };
                    self.error(&value.span(), &key, m)
                })?;
            }
        }
        if let Some(file) = &pins_file {
            let key = keys.pins_file.path();
            self.note(key, &file.span());
            out.pins_file = Some(self.path(file, key)?);
        }
        if let Some(trust) = &trust {
            self.note(keys.trust.path(), &trust.span());
            out.trust = match trust.get_ref() {
                RawTrust::WebPki => Trust::WebPki,
                RawTrust::PinsOnly => Trust::PinsOnly,
            };
        }
        if let Some(file) = &ca_file {
            let key = keys.ca_file.path();
            self.note(key, &file.span());
            if out.trust == Trust::PinsOnly {
                let m =
                    "trust = \"pins-only\" checks no CA: remove ca_file or use trust = \"webpki\"";
                return Err(self.error(&file.span(), key, m));
            }
            out.ca_file = Some(self.path(file, key)?);
        }
        if let Some(on_expired) = &on_expired {
            let key = keys.on_expired.path();
            self.note(key, &on_expired.span());
            out.on_expired = Some(match on_expired.get_ref() {
                RawOnExpired::FailClosed => OnExpired::FailClosed,
                RawOnExpired::WebPki => OnExpired::WebPki,
            });
            if out.trust == Trust::PinsOnly && out.on_expired == Some(OnExpired::WebPki) {
                let m = "trust = \"pins-only\" has no WebPKI validation to fall back on: use \"fail-closed\"";
                return Err(self.error(&on_expired.span(), key, m));
            }
        }
        Ok(out)
    }

    /// `[crowdsec]`, checked as a whole.
    fn crowdsec(&mut self, raw: Spanned<RawCrowdsec>) -> Result<CrowdsecConfig, ConfigError> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let url = one_of(
            self,
            (raw.lapi_url, k::crowdsec::lapi_url.path()),
            (raw.api_url, k::crowdsec::api_url.path()),
        )?;
        let Some((url, key)) = url else {
            let m = "lapi_url is required (or api_url, its bouncers' name), such as \"http://127.0.0.1:8080/\"";
            return Err(self.error(&table_span, k::crowdsec::TABLE, m));
        };
        // Noted under both names: check-config shows lapi_url's line.
        self.note(key, &url.span());
        self.note(k::crowdsec::lapi_url.path(), &url.span());
        let text = url.get_ref().trim_end_matches('/');
        let (https, host) = match text.strip_prefix("https://") {
            Some(host) => (true, Some(host)),
            None => (false, text.strip_prefix("http://")),
        };
        match host {
            Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {}
            _ => {
                let m = format!(
                    "invalid URL {:?}: expected http://HOST:PORT or https://HOST:PORT",
                    url.get_ref()
                );
                return Err(self.error(&url.span(), key, m));
            }
        }
        let mut out = CrowdsecConfig {
            lapi_url: format!("{text}/"),
            api_key_file: None,
            api_key: None,
            poll_interval: super::keys::default::POLL_INTERVAL,
            machine_id: None,
            password_file: None,
            ca_cert_path: None,
            client_cert: None,
        };
        let tls = CrowdsecTls {
            ca_cert_path: &raw.ca_cert_path,
            cert_path: &raw.cert_path,
            key_path: &raw.key_path,
            insecure_skip_verify: &raw.insecure_skip_verify,
        };
        self.crowdsec_tls(&tls, https, &mut out)?;
        if let Some(file) = &raw.api_key_file {
            let key = k::crowdsec::api_key_file.path();
            self.note(key, &file.span());
            out.api_key_file = Some(self.path(file, key)?);
        }
        if let Some(inline) = &raw.api_key {
            let key = k::crowdsec::api_key.path();
            if raw.api_key_file.is_some() {
                let m = "the same setting as [crowdsec] api_key_file: set one of them";
                return Err(self.error(&inline.span(), key, m));
            }
            self.note(key, &inline.span());
            let text = inline.get_ref().trim();
            if text.is_empty() || text.contains(char::is_whitespace) {
                let m = "must be one token without spaces (cscli bouncers add NAME -o raw)";
                return Err(self.error(&inline.span(), key, m));
            }
            out.api_key = Some(super::ApiKey(text.to_owned()));
        }
        let poll = one_of(
            self,
            (raw.poll_interval, k::crowdsec::poll_interval.path()),
            (raw.update_frequency, k::crowdsec::update_frequency.path()),
        )?;
        if let Some((value, key)) = poll {
            let span = value.span();
            if let Some(d) = self.duration(Some(value), key)? {
                self.note(k::crowdsec::poll_interval.path(), &span);
                out.poll_interval = d;
            }
        }
        if let Some(file) = &raw.password_file {
            let key = k::crowdsec::password_file.path();
            self.note(key, &file.span());
            out.password_file = Some(self.path(file, key)?);
        }
        if let Some(id) = &raw.machine_id {
            let key = k::crowdsec::machine_id.path();
            self.note(key, &id.span());
            if id.get_ref().trim().is_empty() {
                return Err(self.error(&id.span(), key, "empty machine id"));
            }
            if out.password_file.is_none() {
                let m = "a machine needs [crowdsec] password_file too";
                return Err(self.error(&id.span(), key, m));
            }
            out.machine_id = Some(id.get_ref().clone());
        } else if let Some(file) = &raw.password_file {
            let m = "a password needs [crowdsec] machine_id too";
            return Err(self.error(&file.span(), k::crowdsec::password_file.path(), m));
        }
        if out.api_key_file.is_none()
            && out.api_key.is_none()
            && out.client_cert.is_none()
            && out.machine_id.is_none()
        {
            let m = "set api_key_file, api_key or cert_path and key_path (to pull decisions), \
                     machine_id and password_file (to report detections), or both";
            return Err(self.error(&table_span, k::crowdsec::TABLE, m));
        }
        Ok(out)
    }

    /// `[crowdsec]`'s TLS keys: only with an `https` URL, the certificate
    /// and its key together, and verification never off.
    fn crowdsec_tls(
        &mut self,
        raw: &CrowdsecTls<'_>,
        https: bool,
        out: &mut CrowdsecConfig,
    ) -> Result<(), ConfigError> {
        if let Some(skip) = raw.insecure_skip_verify {
            let key = k::crowdsec::insecure_skip_verify.path();
            self.note(key, &skip.span());
            if *skip.get_ref() {
                let m = "the guard always verifies the Local API's certificate: \
                         set ca_cert_path to the CA that signed it instead";
                return Err(self.error(&skip.span(), key, m));
            }
        }
        let tls_keys = [
            (raw.ca_cert_path, k::crowdsec::ca_cert_path.path()),
            (raw.cert_path, k::crowdsec::cert_path.path()),
            (raw.key_path, k::crowdsec::key_path.path()),
        ];
        for (value, key) in tls_keys {
            let Some(value) = value else { continue };
            if !https {
                let m = "only for an https:// lapi_url: over http there is no certificate to check or present";
                return Err(self.error(&value.span(), key, m));
            }
            self.note(key, &value.span());
        }
        if let Some(ca) = raw.ca_cert_path {
            out.ca_cert_path = Some(self.path(ca, k::crowdsec::ca_cert_path.path())?);
        }
        match (raw.cert_path, raw.key_path) {
            (Some(cert), Some(key)) => {
                out.client_cert = Some(super::ClientCert {
                    cert_path: self.path(cert, k::crowdsec::cert_path.path())?,
                    key_path: self.path(key, k::crowdsec::key_path.path())?,
                });
            }
            (Some(cert), None) => {
                let m = "a client certificate needs [crowdsec] key_path too";
                return Err(self.error(&cert.span(), k::crowdsec::cert_path.path(), m));
            }
            (None, Some(key)) => {
                let m = "a client key needs [crowdsec] cert_path too";
                return Err(self.error(&key.span(), k::crowdsec::key_path.path(), m));
            }
            (None, None) => {}
        }
        Ok(())
    }

    fn backend_tls(
        &mut self,
        raw: RawBackendTls,
        backend: &str,
    ) -> Result<BackendTlsConfig, ConfigError> {
        let key = k::backend_tls::server_name.path();
        let server_name = match &raw.server_name {
            Some(name) => {
                self.note(key, &name.span());
                name.get_ref().clone()
            }
            None => backend_host(backend).to_owned(),
        };
        if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            let m = format!("{server_name:?} is not a DNS name or an IP address");
            return Err(match &raw.server_name {
                Some(name) => self.error(&name.span(), key, m),
                None => ConfigError {
                    file: self.source.to_owned(),
                    line: None,
                    key: Some(key.to_owned()),
                    message: format!("{m}; set server_name"),
                },
            });
        }
        let pinning = self.pinning(
            &BACKEND_TLS_PINNING,
            raw.pins,
            raw.pins_file,
            raw.trust,
            raw.ca_file,
            raw.on_expired,
        )?;
        Ok(BackendTlsConfig {
            server_name,
            pinning,
        })
    }

    fn refresh(&mut self, raw: RawRefresh) -> Result<RefreshConfig, ConfigError> {
        let mut files = Vec::new();
        for (url, out, kind, url_key, out_key) in [
            (
                raw.config_url,
                raw.config_out,
                ContentKind::ProxyConfig,
                k::refresh::config_url,
                k::refresh::config_out,
            ),
            (
                raw.secret_url,
                raw.secret_out,
                ContentKind::ProxySecret,
                k::refresh::secret_url,
                k::refresh::secret_out,
            ),
        ] {
            match (url, out) {
                (None, None) => {}
                (Some(url), Some(out)) => {
                    let key = url_key.path();
                    self.note(key, &url.span());
                    url_host(url.get_ref())
                        .map_err(|e| self.error(&url.span(), key, e.to_string()))?;
                    self.note(out_key.path(), &out.span());
                    let out = self.path(&out, out_key.path())?;
                    files.push((url.into_inner(), out, kind));
                }
                (Some(v), None) | (None, Some(v)) => {
                    let m = format!("{} and {} go together", url_key.name, out_key.name);
                    return Err(self.error(&v.span(), url_key.path(), m));
                }
            }
        }
        if files.is_empty() {
            return Err(ConfigError {
                file: self.source.to_owned(),
                line: None,
                key: Some(k::refresh::TABLE.into()),
                message:
                    "nothing to fetch: set config_url and config_out, or secret_url and secret_out"
                        .into(),
            });
        }
        let interval = self
            .duration(raw.interval, k::refresh::interval.path())?
            .unwrap_or(super::keys::default::REFRESH_INTERVAL);
        if interval < Duration::from_secs(60) {
            let m = "at least \"60s\": Telegram's files change rarely";
            let line = self.lines.get(k::refresh::interval.path()).copied();
            return Err(ConfigError {
                file: self.source.to_owned(),
                line,
                key: Some(k::refresh::interval.path().into()),
                message: m.into(),
            });
        }
        let jitter = self
            .duration(raw.jitter, k::refresh::jitter.path())?
            .unwrap_or(interval / 10);
        let pinning = self.pinning(
            &REFRESH_PINNING,
            raw.pins,
            raw.pins_file,
            raw.trust,
            raw.ca_file,
            raw.on_expired,
        )?;
        if pinning.pins.is_empty() && pinning.pins_file.is_none() {
            return Err(ConfigError {
                file: self.source.to_owned(),
                line: None,
                key: Some(k::refresh::pins.path().into()),
                message: "a pinned fetch needs pins (or pins_file); `mtguard pin CERT.pem` prints a certificate's".into(),
            });
        }
        Ok(RefreshConfig {
            files,
            interval,
            jitter,
            pinning,
        })
    }

    fn cidrs(&mut self, values: &[Spanned<String>], key: &str) -> Result<Vec<Cidr>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                Cidr::parse(value.get_ref()).map_err(|e| {
                    let message = format!("invalid address or prefix {:?}: {e}", value.get_ref());
                    self.error(&value.span(), &key, message)
                })
            })
            .collect()
    }

    fn paths(
        &mut self,
        values: &[Spanned<String>],
        key: &str,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let key = format!("{key}[{i}]");
                self.note(&key, &value.span());
                self.path(value, &key)
            })
            .collect()
    }
}

thread_local! {
    /// Bytes of config text scanned for newlines on this thread, so a test
    /// can check that finding the lines of n values costs O(text), not
    /// O(n × text).
    static LINE_SCAN_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many bytes of config text this thread has scanned to turn byte
/// offsets into line numbers so far (a cost counter for tests).
#[doc(hidden)]
pub fn line_scan_bytes() -> u64 {
    LINE_SCAN_BYTES.with(|c| c.get())
}

pub(super) fn count_scan(bytes: usize) {
    LINE_SCAN_BYTES.with(|c| c.set(c.get() + bytes as u64));
}

/// Where each line of a text starts, to turn byte offsets into line numbers
/// in O(log lines) each after one pass over the text.
///
/// A config names the line of every value it notes (a 200,000-entry inline
/// list notes 200,000), so counting newlines from the start for each one
/// would cost O(values × text): minutes for such a list.
#[derive(Clone, Debug)]
pub struct LineIndex {
    /// Byte offset of the start of every line after the first.
    starts: Vec<usize>,
}

impl LineIndex {
    /// The index of `text`: one pass over its bytes.
    pub fn new(text: &str) -> LineIndex {
        count_scan(text.len());
        let starts = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        LineIndex { starts }
    }

    /// The line, counting from 1, of byte `offset` (an offset past the end
    /// counts as the end).
    pub fn line(&self, offset: usize) -> usize {
        // Lines that start at or before `offset`, plus the first line.
        self.starts.partition_point(|&s| s <= offset) + 1
    }
}

/// The line, counting from 1, of byte `offset` of `text`, for the one-off
/// lookups (a TOML error) that need no index.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    count_scan(end);
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where the `[hsm]` table starts, for errors about keys missing from it.
fn hsm_table_span(text: &str) -> Range<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(k::hsm::TABLE) {
            return offset..offset + line.len();
        }
        offset += line.len();
    }
    0..0
}

/// The host of a `host:port` backend, without brackets around IPv6.
fn backend_host(backend: &str) -> &str {
    let host = backend.rsplit_once(':').map_or(backend, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn check_backend(backend: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid backend {backend:?}: {why}; expected host:port such as 127.0.0.1:8443, proxy.internal:443 or [::1]:8443"
        ))
    };
    let Some((host, port)) = backend.rsplit_once(':') else {
        return bad("no port");
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be between 1 and 65535"),
        Ok(_) => {}
    }
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address in brackets");
        }
    } else if host.contains(':') {
        return bad("an IPv6 address must be written in brackets");
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return bad("invalid host name");
    }
    Ok(())
}

impl Config {
    /// Parses a config text; `source_name` names it in errors. Relative
    /// paths in it stay relative (to the working directory).
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, source_name, None)
    }

    /// Parses a config text read from a file; `source_name` names it in
    /// errors, and relative paths in it are resolved against `base` (the
    /// file's directory).
    pub fn parse_in(
        text: &str,
        source_name: &str,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, source_name))?;
        let mut cx = Parse {
            line_index: LineIndex::new(text),
            source: source_name,
            base,
            lines: BTreeMap::new(),
            has_hsm: raw.hsm.is_some(),
        };
        let mut config = Config::embedded_default();
        config.source_name = source_name.to_owned();

        if let Some(level) = raw.level {
            cx.note(k::top::level.path(), &level.span());
            let n = *level.get_ref();
            config.level = match u8::try_from(n).ok().and_then(Level::from_number) {
                Some(l) => l.number(),
                None => {
                    let m = format!("must be 0, 1, 2 or 3 (got {n})");
                    return Err(cx.error(&level.span(), k::top::level.path(), m));
                }
            };
        }

        let server = raw.server.unwrap_or_default();
        if let Some(listen) = server.listen {
            let key = k::server::listen.path();
            cx.note(key, &listen.span());
            if listen.get_ref().is_empty() {
                return Err(cx.error(&listen.span(), key, "must list at least one address"));
            }
            config.server.listen = listen
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    a.get_ref().parse().map_err(|_| {
                        let m = format!(
                            "invalid address {:?}: expected IP:port such as 0.0.0.0:443 or [::]:443",
                            a.get_ref()
                        );
                        cx.error(&a.span(), &format!("{key}[{i}]"), m)
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(backend) = server.backend {
            let key = k::server::backend.path();
            cx.note(key, &backend.span());
            check_backend(backend.get_ref()).map_err(|m| cx.error(&backend.span(), key, m))?;
            config.server.backend = backend.into_inner();
        }
        if let Some(pp) = server.proxy_protocol {
            cx.note(k::server::proxy_protocol.path(), &pp.span());
            config.server.proxy_protocol = pp.into_inner().into();
        }
        if let Some(d) = cx.duration(server.connect_timeout, k::server::connect_timeout.path())? {
            config.server.connect_timeout = d;
        }
        if let Some(d) = cx.duration(server.idle_timeout, k::server::idle_timeout.path())? {
            config.server.idle_timeout = d;
        }
        if let Some(tls) = server.backend_tls {
            config.server.backend_tls = Some(cx.backend_tls(tls, &config.server.backend)?);
        }

        config.limits = LimitsConfig::from_raw(raw.limits.unwrap_or_default(), &mut cx)?;

        let lists = raw.lists.unwrap_or_default();
        config.lists = ListsConfig {
            allow: cx.cidrs(&lists.allow, k::lists::allow.path())?,
            deny: cx.cidrs(&lists.deny, k::lists::deny.path())?,
            allow_files: cx.paths(&lists.allow_files, k::lists::allow_files.path())?,
            deny_files: cx.paths(&lists.deny_files, k::lists::deny_files.path())?,
        };

        let admin = raw.admin.unwrap_or_default();
        if let Some(listen) = admin.listen {
            let key = k::admin::listen.path();
            cx.note(key, &listen.span());
            config.admin.listen = match listen.get_ref().as_str() {
                "off" => None,
                text => Some(text.parse().map_err(|_| {
                    let m = format!(
                        "invalid address {text:?}: expected IP:port such as 127.0.0.1:9900, or \"off\""
                    );
                    cx.error(&listen.span(), key, m)
                })?),
            };
        }
        if let Some(token) = admin.token_file {
            let key = k::admin::token_file.path();
            cx.note(key, &token.span());
            config.admin.token_file = Some(cx.path(&token, key)?);
        }

        if let Some(dir) = raw.state.unwrap_or_default().dir {
            let key = k::state::dir.path();
            cx.note(key, &dir.span());
            config.state.dir = cx.path(&dir, key)?;
        }

        if let Some(hsm) = raw.hsm {
            let span = hsm_table_span(text);
            config.hsm = Some(cx.hsm(hsm, &span)?);
        }
        config.mtproto = cx.mtproto(raw.mtproto.unwrap_or_default())?;
        config.refusal = cx.refusal(raw.refusal.unwrap_or_default(), &config.mtproto)?;
        if let Some(refresh) = raw.refresh {
            config.refresh = Some(cx.refresh(refresh)?);
        }

        if let Some(crowdsec) = raw.crowdsec {
            config.crowdsec = Some(cx.crowdsec(crowdsec)?);
        }
        if let Some(set) = raw.kernel.unwrap_or_default().nft_set {
            let key = k::kernel::nft_set.path();
            cx.note(key, &set.span());
            config.kernel.nft_set = match set.get_ref().trim() {
                "off" => None,
                text => Some(
                    NftSet::parse(text)
                        .map_err(|m| cx.error(&set.span(), key, format!("{m}, or \"off\"")))?,
                ),
            };
        }

        config.lines = cx.lines;
        Ok(config)
    }
}
