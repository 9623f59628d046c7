//! `[refusal]`: what a refused source sees. The file's values
//! ([`RefusalConfig`], `None` where the level preset applies), the values in
//! force ([`RefusalSettings`], resolved against a level), the presets, the
//! parser of the table and its `check-config` rows.
//!
//! A hard reset right after a failed handshake tells an active prober that
//! something filters this port; a real web server answers a ClientHello it
//! cannot use with its own handshake or with a TLS alert. So the answer is
//! the operator's choice, per case, and the presets of levels 2 and 3 lean
//! towards the answers a prober cannot tell from an ordinary site.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::{format_duration, parse_duration, DurationText};
use super::error::ConfigError;
use super::keys::key as k;
use super::keys::Key;
use super::parse::Parse;
use super::values::{Answer, OnProbe};
use super::MtprotoConfig;

/// The three cases a source is refused in, each with its own answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCase {
    /// The first bytes are not a valid handshake for any secret (a scanner,
    /// a probe, a wrong secret).
    FailedHandshake,
    /// A valid handshake seen before: a censor replaying a recorded one.
    Replay,
    /// A blocked or denylisted client, refused at accept.
    Blocked,
}

impl RefusalCase {
    /// Every case, in metrics order.
    pub const ALL: [RefusalCase; 3] = [
        RefusalCase::FailedHandshake,
        RefusalCase::Replay,
        RefusalCase::Blocked,
    ];

    /// The metric label, also the config key of its answer.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCase::FailedHandshake => "failed_handshake",
            RefusalCase::Replay => "replay",
            RefusalCase::Blocked => "blocked",
        }
    }
}

/// Plain defaults (the same at every level).
pub(super) mod default {
    use std::time::Duration;

    /// `drop_timeout`.
    pub const DROP_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_held`.
    pub const MAX_HELD: u32 = 1024;
    /// `max_masked`: telemt's concurrency cap of its masking fallback.
    pub const MAX_MASKED: u32 = 512;
    /// `mask_max_bytes`: telemt's `mask_relay_max_bytes`, 5 MiB.
    pub const MASK_MAX_BYTES: u64 = 5 * 1024 * 1024;
    /// `mask_timeout`: telemt's `mask_relay_timeout_ms`.
    pub const MASK_TIMEOUT: Duration = Duration::from_secs(60);
}

/// The most `mask_max_bytes` may be (telemt's bound, 64 MiB).
const MASK_MAX_BYTES_CAP: u64 = 64 * 1024 * 1024;
/// The longest `delay_max`: a delay holds a connection.
const DELAY_CAP: Duration = Duration::from_secs(10);
/// The longest `drop_timeout`.
const DROP_TIMEOUT_CAP: Duration = Duration::from_secs(600);

/// `[refusal]` as the file writes it: `None` where the level preset
/// applies (see [`RefusalConfig::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalConfig {
    /// The answer to a failed handshake.
    pub failed_handshake: Option<Answer>,
    /// The answer to a replayed handshake.
    pub replay: Option<Answer>,
    /// The answer to a blocked or denylisted client.
    pub blocked: Option<Answer>,
    /// How long a dropped connection is held before it is closed.
    pub drop_timeout: Duration,
    /// Connections held at once (dropped, delayed, or blocked ones waiting
    /// for their first bytes to be masked); beyond, a reset.
    pub max_held: u32,
    /// Masked connections at once; beyond, a reset.
    pub max_masked: u32,
    /// Bytes one masked connection may move, both directions together.
    pub mask_max_bytes: u64,
    /// How long one masked connection may last.
    pub mask_timeout: Duration,
    /// The shortest delay before an answer.
    pub delay_min: Option<Duration>,
    /// The longest delay before an answer.
    pub delay_max: Option<Duration>,
    /// Whether a malformed ClientHello or an unknown SNI, when its answer
    /// is a reset, gets the TLS alert a real server sends instead.
    pub tls_alerts: Option<bool>,
}

impl Default for RefusalConfig {
    fn default() -> Self {
        RefusalConfig {
            failed_handshake: None,
            replay: None,
            blocked: None,
            drop_timeout: default::DROP_TIMEOUT,
            max_held: default::MAX_HELD,
            max_masked: default::MAX_MASKED,
            mask_max_bytes: default::MASK_MAX_BYTES,
            mask_timeout: default::MASK_TIMEOUT,
            delay_min: None,
            delay_max: None,
            tls_alerts: None,
        }
    }
}

/// The answers in force, resolved against a level: what the relay reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalSettings {
    /// The answer to a failed handshake.
    pub failed_handshake: Answer,
    /// The answer to a replayed handshake.
    pub replay: Answer,
    /// The answer to a blocked or denylisted client.
    pub blocked: Answer,
    /// The cover site, `host:port` (`[mtproto] mask_backend`); `None`: no
    /// answer is [`Answer::Mask`].
    pub mask_backend: Option<String>,
    /// How long a dropped connection is held before it is closed.
    pub drop_timeout: Duration,
    /// Connections held at once; beyond, a reset.
    pub max_held: u32,
    /// Masked connections at once; beyond, a reset.
    pub max_masked: u32,
    /// Bytes one masked connection may move, both directions together.
    pub mask_max_bytes: u64,
    /// How long one masked connection may last.
    pub mask_timeout: Duration,
    /// The shortest delay before an answer (after the first bytes).
    pub delay_min: Duration,
    /// The longest; equal to `delay_min` for a fixed delay.
    pub delay_max: Duration,
    /// TLS alerts instead of a reset for a malformed hello or unknown SNI.
    pub tls_alerts: bool,
}

impl Default for RefusalSettings {
    /// Level 1 without a cover site: every refusal a reset, at once.
    fn default() -> Self {
        RefusalConfig::default().resolve(1, &MtprotoConfig::default())
    }
}

impl RefusalSettings {
    /// The answer to `case`.
    /// A mask without a cover site is a reset: resolving a config never
    /// gives one, settings built by hand (the tests') may.
    pub fn answer(&self, case: RefusalCase) -> Answer {
        let answer = match case {
            RefusalCase::FailedHandshake => self.failed_handshake,
            RefusalCase::Replay => self.replay,
            RefusalCase::Blocked => self.blocked,
        };
        if answer == Answer::Mask && self.mask_backend.is_none() {
            Answer::Reset
        } else {
            answer
        }
    }

    /// What `[mtproto] on_probe` alone means at level 1 (the relay's
    /// callers that build an inspection state by hand, the tests'): probes
    /// and replays masked to `mask_backend`, or reset.
    pub fn from_on_probe(on_probe: OnProbe, mask_backend: Option<String>) -> RefusalSettings {
        let mtproto = MtprotoConfig {
            on_probe: Some(on_probe),
            mask_backend,
            ..MtprotoConfig::default()
        };
        RefusalConfig::default().resolve(1, &mtproto)
    }
}

/// The preset of `case` at `level`. Levels 0 and 1 reset, as the guard
/// always did: cheap, and what an operator facing no active probing wants.
/// Levels 2 and 3 answer probes and replays as the cover site would (a
/// censor's prober sees the real site); a blocked client is dropped at
/// level 2 (no answer costs no cover-site connection) and masked at level
/// 3. Without a cover site, "mask" falls back to a reset for handshakes and
/// to a drop for blocked clients.
pub fn preset(case: RefusalCase, level: u8, has_mask: bool) -> Answer {
    match (case, level) {
        (_, 0 | 1) => Answer::Reset,
        (RefusalCase::FailedHandshake | RefusalCase::Replay, _) if has_mask => Answer::Mask,
        (RefusalCase::FailedHandshake | RefusalCase::Replay, _) => Answer::Reset,
        (RefusalCase::Blocked, 2) => Answer::Drop,
        (RefusalCase::Blocked, _) if has_mask => Answer::Mask,
        (RefusalCase::Blocked, _) => Answer::Drop,
    }
}

/// The delay range of `level`: none at 0 and 1; at 2 up to 100 ms, at 3
/// 20 to 250 ms, about what a handshake with a proxy across the network
/// takes, so a refusal is not told apart by its speed.
pub fn preset_delay(level: u8) -> (Duration, Duration) {
    let ms = Duration::from_millis;
    match level {
        0 | 1 => (Duration::ZERO, Duration::ZERO),
        2 => (Duration::ZERO, ms(100)),
        _ => (ms(20), ms(250)),
    }
}

/// Whether TLS alerts are on at `level`: from level 2, with the rest of
/// the probe-resistant presets.
pub fn preset_tls_alerts(level: u8) -> bool {
    level >= 2
}

impl RefusalConfig {
    /// The settings in force at `level`: each key the file sets, else (for
    /// handshakes) `[mtproto] on_probe` when the file sets it, else the
    /// level's preset.
    pub fn resolve(&self, level: u8, mtproto: &MtprotoConfig) -> RefusalSettings {
        let has_mask = mtproto.mask_backend.is_some();
        let on_probe = mtproto.on_probe.map(|p| match p {
            OnProbe::Close => Answer::Reset,
            OnProbe::Mask => Answer::Mask,
        });
        let answer = |set: Option<Answer>, case| {
            let legacy = match case {
                RefusalCase::Blocked => None,
                _ => on_probe,
            };
            set.or(legacy)
                .unwrap_or_else(|| preset(case, level, has_mask))
        };
        let (preset_min, preset_max) = preset_delay(level);
        // One bound set alone moves the other's preset out of its way, so
        // a level change never makes a file's range invalid.
        let (delay_min, delay_max) = match (self.delay_min, self.delay_max) {
            (Some(min), Some(max)) => (min, max),
            (Some(min), None) => (min, preset_max.max(min)),
            (None, Some(max)) => (preset_min.min(max), max),
            (None, None) => (preset_min, preset_max),
        };
        RefusalSettings {
            failed_handshake: answer(self.failed_handshake, RefusalCase::FailedHandshake),
            replay: answer(self.replay, RefusalCase::Replay),
            blocked: answer(self.blocked, RefusalCase::Blocked),
            mask_backend: mtproto.mask_backend.clone(),
            drop_timeout: self.drop_timeout,
            max_held: self.max_held,
            max_masked: self.max_masked,
            mask_max_bytes: self.mask_max_bytes,
            mask_timeout: self.mask_timeout,
            delay_min,
            delay_max,
            tls_alerts: self.tls_alerts.unwrap_or_else(|| preset_tls_alerts(level)),
        }
    }
}

/// An answer as the file writes it.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAnswer {
    Reset,
    Drop,
    Mask,
}

impl From<RawAnswer> for Answer {
    fn from(raw: RawAnswer) -> Self {
        match raw {
            RawAnswer::Reset => Answer::Reset,
            RawAnswer::Drop => Answer::Drop,
            RawAnswer::Mask => Answer::Mask,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefusal {
    failed_handshake: Option<Spanned<RawAnswer>>,
    replay: Option<Spanned<RawAnswer>>,
    blocked: Option<Spanned<RawAnswer>>,
    drop_timeout: Option<Spanned<DurationText>>,
    max_held: Option<Spanned<i64>>,
    max_masked: Option<Spanned<i64>>,
    mask_max_bytes: Option<Spanned<i64>>,
    mask_timeout: Option<Spanned<DurationText>>,
    delay_min: Option<Spanned<DurationText>>,
    delay_max: Option<Spanned<DurationText>>,
    tls_alerts: Option<Spanned<bool>>,
}

impl Parse<'_> {
    /// `[refusal]`, checked as a whole; `mtproto` is parsed already (its
    /// `mask_backend` is the cover site).
    pub(super) fn refusal(
        &mut self,
        raw: RawRefusal,
        mtproto: &MtprotoConfig,
    ) -> Result<RefusalConfig, ConfigError> {
        let mut out = RefusalConfig::default();
        for (value, key, slot) in [
            (
                raw.failed_handshake,
                k::refusal::failed_handshake,
                &mut out.failed_handshake,
            ),
            (raw.replay, k::refusal::replay, &mut out.replay),
            (raw.blocked, k::refusal::blocked, &mut out.blocked),
        ] {
            let Some(value) = value else { continue };
            let span = value.span();
            self.note(key.path(), &span);
            let answer = Answer::from(value.into_inner());
            if answer == Answer::Mask && mtproto.mask_backend.is_none() {
                let m = "\"mask\" needs [mtproto] mask_backend = \"host:port\" \
                         (the cover site: the real website of the fake-TLS domain)";
                return Err(self.error(&span, key.path(), m));
            }
            *slot = Some(answer);
        }
        let limit = |cx: &mut Self, value: Spanned<i64>, key: Key, min: i64, max: i64| {
            let span = value.span();
            cx.note(key.path(), &span);
            let n = *value.get_ref();
            if !(min..=max).contains(&n) {
                let m = format!("{n} is out of range: expected an integer from {min} to {max}");
                return Err(cx.error(&span, key.path(), m));
            }
            Ok(n)
        };
        if let Some(v) = raw.max_held {
            out.max_held = limit(self, v, k::refusal::max_held, 0, 65535)? as u32;
        }
        if let Some(v) = raw.max_masked {
            out.max_masked = limit(self, v, k::refusal::max_masked, 0, 65535)? as u32;
        }
        if let Some(v) = raw.mask_max_bytes {
            let cap = MASK_MAX_BYTES_CAP as i64;
            out.mask_max_bytes = limit(self, v, k::refusal::mask_max_bytes, 1, cap)? as u64;
        }
        // Durations that may be zero (a delay) or must not be, each with
        // its cap.
        let duration = |cx: &mut Self,
                        value: Spanned<DurationText>,
                        key: Key,
                        zero: bool,
                        cap: Option<Duration>| {
            let span = value.span();
            cx.note(key.path(), &span);
            let d =
                parse_duration(&value.get_ref().0).map_err(|m| cx.error(&span, key.path(), m))?;
            if d.is_zero() && !zero {
                return Err(cx.error(&span, key.path(), "must be longer than zero"));
            }
            if let Some(cap) = cap.filter(|&cap| d > cap) {
                let m = format!("at most \"{}\"", format_duration(cap));
                return Err(cx.error(&span, key.path(), m));
            }
            Ok(d)
        };
        if let Some(v) = raw.drop_timeout {
            out.drop_timeout = duration(
                self,
                v,
                k::refusal::drop_timeout,
                false,
                Some(DROP_TIMEOUT_CAP),
            )?;
        }
        if let Some(v) = raw.mask_timeout {
            out.mask_timeout = duration(self, v, k::refusal::mask_timeout, false, None)?;
        }
        if let Some(v) = raw.delay_min {
            out.delay_min = Some(duration(
                self,
                v,
                k::refusal::delay_min,
                true,
                Some(DELAY_CAP),
            )?);
        }
        if let Some(v) = raw.delay_max {
            let span = v.span();
            let max = duration(self, v, k::refusal::delay_max, true, Some(DELAY_CAP))?;
            if let Some(min) = out.delay_min.filter(|&min| min > max) {
                let m = format!(
                    "must not be shorter than delay_min (\"{}\")",
                    format_duration(min)
                );
                return Err(self.error(&span, k::refusal::delay_max.path(), m));
            }
            out.delay_max = Some(max);
        }
        if let Some(v) = raw.tls_alerts {
            self.note(k::refusal::tls_alerts.path(), &v.span());
            out.tls_alerts = Some(v.into_inner());
        }
        Ok(out)
    }
}

impl super::Config {
    /// The refusal settings in force at `level` (the policy's: `--level`
    /// included).
    pub fn refusal_settings(&self, level: u8) -> RefusalSettings {
        self.refusal.resolve(level, &self.mtproto)
    }

    /// `check-config`'s rows of `[refusal]` at `level`: `(key, value,
    /// origin)`, the origin given the file's `FILE:LINE` of a key, if set.
    pub(super) fn refusal_rows(
        &self,
        level: u8,
        at: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(&'static str, String, String)> {
        let s = self.refusal_settings(level);
        let from_level = format!("level {level} preset");
        let on_probe = k::mtproto::on_probe.path();
        let answer_origin = |key: Key, case: RefusalCase| match at(key.path()) {
            Some(at) => at,
            None if case != RefusalCase::Blocked && self.mtproto.on_probe.is_some() => {
                format!(
                    "{on_probe}, {}",
                    at(on_probe).unwrap_or_else(|| "set".into())
                )
            }
            None if s.answer(case) != preset(case, level, true) => {
                format!("{from_level} (no [mtproto] mask_backend)")
            }
            None => from_level.clone(),
        };
        let plain = |key: Key| at(key.path()).unwrap_or_else(|| "default".into());
        let levelled = |key: Key| at(key.path()).unwrap_or_else(|| from_level.clone());
        vec![
            (
                k::refusal::failed_handshake.name,
                s.failed_handshake.as_str().into(),
                answer_origin(k::refusal::failed_handshake, RefusalCase::FailedHandshake),
            ),
            (
                k::refusal::replay.name,
                s.replay.as_str().into(),
                answer_origin(k::refusal::replay, RefusalCase::Replay),
            ),
            (
                k::refusal::blocked.name,
                s.blocked.as_str().into(),
                answer_origin(k::refusal::blocked, RefusalCase::Blocked),
            ),
            (
                k::refusal::drop_timeout.name,
                format_duration(s.drop_timeout),
                plain(k::refusal::drop_timeout),
            ),
            (
                k::refusal::max_held.name,
                s.max_held.to_string(),
                plain(k::refusal::max_held),
            ),
            (
                k::refusal::max_masked.name,
                s.max_masked.to_string(),
                plain(k::refusal::max_masked),
            ),
            (
                k::refusal::mask_max_bytes.name,
                s.mask_max_bytes.to_string(),
                plain(k::refusal::mask_max_bytes),
            ),
            (
                k::refusal::mask_timeout.name,
                format_duration(s.mask_timeout),
                plain(k::refusal::mask_timeout),
            ),
            (
                k::refusal::delay_min.name,
                format_duration(s.delay_min),
                levelled(k::refusal::delay_min),
            ),
            (
                k::refusal::delay_max.name,
                format_duration(s.delay_max),
                levelled(k::refusal::delay_max),
            ),
            (
                k::refusal::tls_alerts.name,
                s.tls_alerts.to_string(),
                levelled(k::refusal::tls_alerts),
            ),
        ]
    }
}
