//! [`ConfigError`]: one line naming the file, the line and the key; and
//! the locator that finds the key of a TOML or serde error from its span.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::parse::line_of;

/// A configuration that cannot be used, as one line:
/// `FILE[:LINE]: [KEY: ]PROBLEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub(super) file: String,
    pub(super) line: Option<usize>,
    pub(super) key: Option<String>,
    pub(super) message: String,
}

impl ConfigError {
    /// An error in `file` (a config file, a list file, `command line`), at
    /// `line` if known, about `key` if there is one.
    pub fn new(
        file: impl Into<String>,
        line: Option<usize>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            line,
            key,
            message: message.into(),
        }
    }

    /// The file the error is in (the config file, a list file, or
    /// `command line`).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line, counting from 1, when one is known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key, as written in messages: `level`, `[limits] rate_window`,
    /// `[lists] allow[2]`, `--level`.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write_one_line(f, key)?;
            f.write_str(": ")?;
        }
        write_one_line(f, &self.message)
    }
}

/// Writes `text` with its control characters escaped. Messages quote what
/// the file holds (serde echoes an unknown value, a quoted TOML key may hold
/// a newline), and an error is one line: a log reader or a supervisor that
/// splits on newlines must not see a second, forged line.
fn write_one_line(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}

impl std::error::Error for ConfigError {}

/// One step of a key path: a key or an index into an array.
enum Step {
    Key(String),
    Index(usize),
}

/// The innermost key or value of `table` whose span holds `pos`: its path,
/// whether the key itself (rather than its value) matched, and whether its
/// value is a table.
struct Found {
    path: Vec<Step>,
    width: usize,
    is_table: bool,
}

fn locate(table: &DeTable<'_>, pos: usize, path: &mut Vec<Step>, best: &mut Option<Found>) {
    for (key, value) in table.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        consider(key.span(), value.get_ref(), pos, path, best);
        locate_value(value, pos, path, best);
        path.pop();
    }
}

fn locate_value(
    value: &Spanned<DeValue<'_>>,
    pos: usize,
    path: &mut Vec<Step>,
    best: &mut Option<Found>,
) {
    consider(value.span(), value.get_ref(), pos, path, best);
    match value.get_ref() {
        DeValue::Table(table) => locate(table, pos, path, best),
        DeValue::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                path.push(Step::Index(i));
                locate_value(element, pos, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn consider(
    span: Range<usize>,
    value: &DeValue<'_>,
    pos: usize,
    path: &[Step],
    best: &mut Option<Found>,
) {
    let hit = span.contains(&pos) || (span.is_empty() && span.start == pos);
    let width = span.len();
    let better = match best {
        None => true,
        Some(b) => width < b.width || (width == b.width && path.len() > b.path.len()),
    };
    if hit && better {
        *best = Some(Found {
            path: path
                .iter()
                .map(|s| match s {
                    Step::Key(k) => Step::Key(k.clone()),
                    Step::Index(i) => Step::Index(*i),
                })
                .collect(),
            width,
            is_table: matches!(value, DeValue::Table(_)),
        });
    }
}

/// `level`, `[limits]`, `[limits] rate_window`, `[lists] allow[2]`.
fn key_name(path: &[Step], last_is_table: bool) -> Option<String> {
    let mut out = String::new();
    for (i, step) in path.iter().enumerate() {
        match step {
            Step::Key(k) if i == 0 && (path.len() > 1 || last_is_table) => {
                out.push('[');
                out.push_str(k);
                out.push(']');
            }
            Step::Key(k) if i == 0 => out.push_str(k),
            Step::Key(k) if i == 1 => {
                out.push(' ');
                out.push_str(k);
            }
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `text` holds `word` as a whole word (`block_duration` is not
/// mentioned by `max_block_duration`).
pub(super) fn mentions(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// Turns a TOML or serde error into one naming the line and the key.
/// Public because `mtguard init` reports errors in the proxies' own TOML
/// files the same way.
pub fn toml_error(error: &toml::de::Error, text: &str, source: &str) -> ConfigError {
    let mut message = error.message().trim().to_owned();
    let span = error.span();
    let line = span.as_ref().map(|s| line_of(text, s.start));
    let mut key = None;
    match (&span, DeTable::parse(text)) {
        (Some(span), Ok(doc)) => {
            let mut best = None;
            locate(doc.get_ref(), span.start, &mut Vec::new(), &mut best);
            if let Some(found) = best {
                if let Some(rest) = message.strip_prefix("unknown field") {
                    // The key is in the message; name the table it is in.
                    let what = if found.is_table && found.path.len() == 1 {
                        "unknown table"
                    } else {
                        "unknown key"
                    };
                    message = format!("{what}{rest}");
                    let table = &found.path[..found.path.len().saturating_sub(1)];
                    key = key_name(table, true);
                } else {
                    key = key_name(&found.path, found.is_table);
                }
            }
        }
        (_, Err(_)) => {
            // A syntax error: the line says where; a duplicate key is named.
            let at = span.as_ref().and_then(|s| text.get(s.clone()));
            match at {
                Some(k) if message == "duplicate key" && !k.trim().is_empty() => {
                    message = format!("invalid TOML: duplicate key `{}`", k.trim())
                }
                _ => message = format!("invalid TOML: {message}"),
            }
        }
        (None, Ok(_)) => {}
    }
    let mut message = message
        .replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false")
        .replace("expected a sequence", "expected an array");
    // Serde names the raw struct of a table; the file calls it a table.
    if let Some(at) = message.find("expected struct Raw") {
        message.truncate(at);
        message.push_str("expected a table");
    }
    ConfigError {
        file: source.to_owned(),
        line,
        key,
        message,
    }
}
