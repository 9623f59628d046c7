//! Durations as the config file writes them: `"500ms"`, `"60s"`, `"5m"`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Parses `"500ms"`, `"60s"`, `"5m"`, `"2h"` or `"1d"`: digits, then one
/// unit. No unit, a sign, a fraction or an amount past `u64::MAX`
/// milliseconds is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if s.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let unit_ms: u64 = match unit {
        _ if number.is_empty() => 0,
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    if unit_ms == 0 {
        return Err(format!(
            "invalid duration {s:?}: expected a number followed by ms, s, m, h or d"
        ));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// A duration as the config file writes it, in the largest unit that
/// divides it exactly: `5m`, `90s`, `1500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A duration as written in the file: a string, so that a bare number is
/// refused by type with a message that shows the form.
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes, such as \"60s\", \"5m\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_str(Visitor)
    }
}
