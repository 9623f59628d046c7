//! The configuration reference, docs/configuration.md, against the key
//! declarations (`mtguard::config::KEYS`) and the parser: a key added,
//! renamed or re-documented in one place and not the others fails here.

use std::collections::BTreeSet;
use std::path::Path;

use mtguard::config::{Config, KEYS};

/// `(table, key, type, default, description)` of every row of the
/// reference's `### [table]` sections (`### Top level` is the table "").
fn documented() -> Vec<(String, String, String, String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut table: Option<String> = None;
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            table = Some(if h == "Top level" {
                String::new()
            } else {
                h.into()
            });
            continue;
        }
        if line.starts_with("## ") {
            table = None;
        }
        let Some(t) = &table else { continue };
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 4, "key | type | default | description: {line}");
        rows.push((
            t.clone(),
            cells[0].trim_matches('`').to_owned(),
            cells[1].to_owned(),
            cells[2].to_owned(),
            cells[3].to_owned(),
        ));
    }
    rows
}

#[test]
fn the_reference_documents_every_declared_key_as_declared() {
    let docs = documented();
    let declared: Vec<_> = KEYS
        .iter()
        .map(|k| {
            (
                k.table.to_owned(),
                k.name.to_owned(),
                k.ty.to_owned(),
                k.default.to_owned(),
                k.doc.to_owned(),
            )
        })
        .collect();
    for row in &declared {
        assert!(
            docs.contains(row),
            "docs/configuration.md lacks or differs from the declaration of {} {}; the row should read:\n| `{}` | {} | {} | {} |",
            row.0, row.1, row.1, row.2, row.3, row.4
        );
    }
    for row in &docs {
        assert!(
            declared.contains(row),
            "docs/configuration.md documents {} {}, which no declaration in runtime-std/src/config/keys.rs matches",
            row.0,
            row.1
        );
    }
    assert_eq!(docs.len(), declared.len());
}

/// The keys the parser accepts in `table`, as its unknown-key error lists
/// them.
fn accepted(table: &str) -> BTreeSet<String> {
    let text = if table.is_empty() {
        "zz_not_a_key = 1\n".to_owned()
    } else {
        // `[server.backend_tls]` needs nothing else; `[hsm]` and the
        // others fail on the unknown key before their own checks.
        format!("{table}\nzz_not_a_key = 1\n")
    };
    let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
    // serde writes "expected `a`", "expected `a` or `b`", or "expected
    // one of `a`, `b`, ...".
    let list = err
        .split_once("expected ")
        .map(|(_, l)| l.strip_prefix("one of ").unwrap_or(l))
        .unwrap_or_else(|| panic!("{table}: {err}"));
    list.split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().trim_matches('`').to_owned())
        .collect()
}

#[test]
fn the_parser_accepts_exactly_the_declared_keys() {
    let tables: BTreeSet<&str> = KEYS.iter().map(|k| k.table).collect();
    for table in tables {
        let declared: BTreeSet<String> = KEYS
            .iter()
            .filter(|k| k.table == table)
            .map(|k| k.name.to_owned())
            .collect();
        let mut parsed = accepted(table);
        // Sub-tables are keys of their parent to serde, not config keys.
        for sub in KEYS.iter().map(|k| k.table) {
            let inner = sub.trim_matches(['[', ']']);
            let outer = table.trim_matches(['[', ']']);
            let name = if outer.is_empty() {
                inner.to_owned()
            } else {
                match inner.strip_prefix(&format!("{outer}.")) {
                    Some(rest) => rest.to_owned(),
                    None => continue,
                }
            };
            parsed.remove(&name);
        }
        assert_eq!(parsed, declared, "the keys of {table:?}");
    }
}
