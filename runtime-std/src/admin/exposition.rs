//! The two text formats `/metrics` serves, chosen from the request's
//! `Accept` header: OpenMetrics 1.0.0 when the scraper asks for it by name
//! (Prometheus does), the classic Prometheus text format 0.0.4 otherwise
//! (`promtool check metrics`, curl, older scrapers and agents).
//!
//! prometheus-client's text encoder writes OpenMetrics only, and no
//! well-kept crate writes the classic format from its registry (the
//! `prometheus` crate has its own, incompatible metric model), so
//! [`to_classic`] converts the encoder's output. The input is ours and
//! well formed; the conversion is line by line and covers what OpenMetrics
//! adds: `# EOF`, `# UNIT`, `_created` samples, exemplars, timestamps in
//! seconds, and a counter's family named without its `_total` suffix.

use std::collections::HashMap;

/// A text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Classic,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format for a request with this `Accept` header (`None`: no
    /// header, or one that is not text).
    ///
    /// OpenMetrics only when a media range names
    /// `application/openmetrics-text` (of a version this writes, or none)
    /// with a quality above zero and at least the classic format's; a
    /// wildcard alone (`*/*`, `application/*`) gets the classic format,
    /// which every scraper reads. A header that accepts neither still gets
    /// the classic format rather than a 406, which a scraper would only
    /// report as a failed scrape.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        // The quality of each offer, from its most specific matching range
        // (RFC 9110, 12.5.1): (specificity, q).
        let mut openmetrics: Option<(u8, f32)> = None;
        let mut classic: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let Some(range) = MediaRange::parse(range) else {
                continue;
            };
            for (offer, best) in [
                (Format::OpenMetrics, &mut openmetrics),
                (Format::Classic, &mut classic),
            ] {
                if let Some(specificity) = range.matches(offer) {
                    if best.is_none_or(|(s, _)| specificity > s) {
                        *best = Some((specificity, range.q));
                    }
                }
            }
        }
        match openmetrics {
            // Specificity 2: named, not through a wildcard.
            Some((2, q)) if q > 0.0 && q >= classic.map_or(0.0, |(_, q)| q) => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }
}

/// One media range of an `Accept` header, lower-cased.
struct MediaRange {
    kind: String,
    subtype: String,
    version: Option<String>,
    q: f32,
}

impl MediaRange {
    /// `None` for a range that is not `type/subtype` or has a bad `q`
    /// (ignored, as RFC 9110 lets a server do).
    fn parse(text: &str) -> Option<MediaRange> {
        let mut parts = text.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() {
            return None;
        }
        let mut range = MediaRange {
            kind: kind.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            version: None,
            q: 1.0,
        };
        for param in parts {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => {
                    let q: f32 = value.parse().ok()?;
                    if !(0.0..=1.0).contains(&q) {
                        return None;
                    }
                    range.q = q;
                }
                "version" => range.version = Some(value.to_owned()),
                _ => {}
            }
        }
        Some(range)
    }

    /// How specifically this range names `offer`: 2 by type and subtype
    /// (and an acceptable version), 1 by `type/*`, 0 by `*/*`; `None` if it
    /// does not.
    fn matches(&self, offer: Format) -> Option<u8> {
        let (kind, subtype, versions): (_, _, &[&str]) = match offer {
            // 0.0.1 is the draft 1.0.0 grew from; a scraper asking for it
            // reads 1.0.0 (Prometheus asks for both).
            Format::OpenMetrics => ("application", "openmetrics-text", &["1.0.0", "0.0.1"]),
            Format::Classic => ("text", "plain", &["0.0.4"]),
        };
        if self.kind == "*" && self.subtype == "*" {
            return Some(0);
        }
        if self.kind != kind {
            return None;
        }
        if self.subtype == "*" {
            return Some(1);
        }
        let version_ok = self
            .version
            .as_deref()
            .is_none_or(|v| versions.contains(&v));
        (self.subtype == subtype && version_ok).then_some(2)
    }
}

/// The classic text format 0.0.4 of an OpenMetrics exposition.
///
/// Per family: `# HELP` and `# TYPE` name what the samples are called (a
/// counter `x` becomes `x_total`, an info `x` becomes the gauge
/// `x_info`); `unknown`, `stateset` and `gaugehistogram` become
/// `untyped`; `# UNIT`, `# EOF`, `_created` samples and exemplars are
/// dropped; sample timestamps go from seconds to milliseconds.
pub fn to_classic(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            types.insert(name, kind.trim());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let (sample, _) = classic_family(name, types.get(name).copied());
            out.push_str("# HELP ");
            out.push_str(&sample);
            out.push(' ');
            push_classic_help(&mut out, help);
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (sample, kind) = classic_family(name, Some(kind.trim()));
            out.push_str(&format!("# TYPE {sample} {kind}\n"));
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT`, `# EOF`: the classic format has neither.
        } else if let Some(sample) = classic_sample(line, &types) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// What the classic format calls a family's samples and its type.
fn classic_family(name: &str, kind: Option<&str>) -> (String, &'static str) {
    match kind.unwrap_or("unknown") {
        "counter" => (format!("{name}_total"), "counter"),
        "gauge" => (name.to_owned(), "gauge"),
        "histogram" => (name.to_owned(), "histogram"),
        "summary" => (name.to_owned(), "summary"),
        "info" => (format!("{name}_info"), "gauge"),
        _ => (name.to_owned(), "untyped"),
    }
}

/// OpenMetrics escapes `\`, newline and `"` in HELP; the classic format
/// only the first two, and would show `\"` as written.
fn push_classic_help(out: &mut String, help: &str) {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push_str("\\\\"),
        }
    }
}

/// A sample line in the classic format; `None` for one the classic format
/// has no place for (`_created`).
fn classic_sample(line: &str, types: &HashMap<&str, &str>) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = "";
    if rest.starts_with('{') {
        let end = label_set_end(rest)?;
        labels = &rest[..=end];
        rest = &rest[end + 1..];
    }
    // An exemplar follows ` # `; label values cannot hold it, they are
    // behind us.
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let timestamp = fields.next();
    if let Some(family) = name.strip_suffix("_created") {
        if matches!(
            types.get(family).copied(),
            Some("counter" | "histogram" | "summary" | "gaugehistogram")
        ) {
            return None;
        }
    }
    let mut sample = format!("{name}{labels} {value}");
    if let Some(ts) = timestamp.and_then(|t| t.parse::<f64>().ok()) {
        sample.push_str(&format!(" {}", (ts * 1000.0).round() as i64));
    }
    Some(sample)
}

/// The index of the `}` closing the label set `text` starts with,
/// skipping quoted values (which may hold `}` and escaped quotes).
fn label_set_end(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate(accept: &str) -> Format {
        Format::negotiate(Some(accept))
    }

    #[test]
    fn no_header_gets_the_classic_format() {
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(negotiate(""), Format::Classic);
    }

    #[test]
    fn prometheus_gets_openmetrics() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,\
            text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prometheus), Format::OpenMetrics);
        assert_eq!(
            negotiate("application/openmetrics-text; version=\"1.0.0\"; charset=utf-8"),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate("Application/OpenMetrics-Text"),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate("application/openmetrics-text;version=0.0.1"),
            Format::OpenMetrics
        );
    }

    #[test]
    fn wildcards_and_plain_text_get_the_classic_format() {
        assert_eq!(negotiate("*/*"), Format::Classic);
        assert_eq!(negotiate("application/*"), Format::Classic);
        assert_eq!(negotiate("text/plain"), Format::Classic);
        assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Classic);
        assert_eq!(negotiate("application/json"), Format::Classic);
        assert_eq!(negotiate("garbage, ;;, /"), Format::Classic);
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(
            negotiate("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
            Format::Classic
        );
        assert_eq!(
            negotiate("text/plain;q=0.5, application/openmetrics-text;q=0.9"),
            Format::OpenMetrics
        );
        // A tie goes to the one named.
        assert_eq!(
            negotiate("application/openmetrics-text, text/plain"),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0"),
            Format::Classic
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0, */*"),
            Format::Classic
        );
        // A wildcard's quality counts against the named format.
        assert_eq!(
            negotiate("application/openmetrics-text;q=0.2, */*;q=0.8"),
            Format::Classic
        );
        // A bad q drops its range only.
        assert_eq!(
            negotiate("application/openmetrics-text;q=2, text/plain"),
            Format::Classic
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=x"),
            Format::Classic
        );
    }

    #[test]
    fn the_most_specific_range_sets_the_quality() {
        // `text/plain;q=0` refuses the classic format even though `*/*`
        // takes anything: OpenMetrics, named, wins.
        assert_eq!(
            negotiate("*/*;q=1, text/plain;q=0, application/openmetrics-text;q=0.1"),
            Format::OpenMetrics
        );
        // An OpenMetrics version this does not write is not a match.
        assert_eq!(
            negotiate("application/openmetrics-text;version=2.0.0"),
            Format::Classic
        );
    }

    #[test]
    fn counters_are_named_by_their_samples() {
        let om = "# HELP mtguard_blocks Blocks started.\n\
                  # TYPE mtguard_blocks counter\n\
                  mtguard_blocks_total 3\n\
                  mtguard_blocks_created 1700000000.5\n\
                  # HELP mtguard_under_attack 1 while on.\n\
                  # TYPE mtguard_under_attack gauge\n\
                  # UNIT mtguard_under_attack bool\n\
                  mtguard_under_attack 0\n\
                  # EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP mtguard_blocks_total Blocks started.\n\
             # TYPE mtguard_blocks_total counter\n\
             mtguard_blocks_total 3\n\
             # HELP mtguard_under_attack 1 while on.\n\
             # TYPE mtguard_under_attack gauge\n\
             mtguard_under_attack 0\n"
        );
    }

    #[test]
    fn labels_exemplars_timestamps_and_help_escapes() {
        let om = "# HELP x_requests Say \\\"hi\\\" \\\\ there.\n\
                  # TYPE x_requests counter\n\
                  x_requests_total{path=\"/a b # }\\\"\"} 7 1.25 # {trace=\"t\"} 1 1.0\n\
                  # TYPE x_build info\n\
                  x_build_info{version=\"1\"} 1\n\
                  # TYPE x_odd unknown\n\
                  x_odd 2\n\
                  # EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP x_requests_total Say \"hi\" \\\\ there.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total{path=\"/a b # }\\\"\"} 7 1250\n\
             # TYPE x_build_info gauge\n\
             x_build_info{version=\"1\"} 1\n\
             # TYPE x_odd untyped\n\
             x_odd 2\n"
        );
    }
}
