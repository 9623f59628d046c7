//! docs/metrics.md against `GET /metrics`: every family the admin API
//! exposes is documented, every documented one is exposed, with the same
//! type, labels and label values, in both text formats (which must expose
//! the same families). The CrowdSec, nftables and `[hsm]` tables are only
//! exposed while those run; their telemetry is marked running here (what
//! the bouncer, the mirror and the token monitor do at start), so those
//! tables are checked too, and checked absent on a node without them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use mtguard::node::Handles;
use mtguard::telemetry::JobKind;
use mtguard_core::Policy;
use mtguard_tests::{http_request, test_guard, AdminInProcess};

/// One series family: its type, and its labels in order, each with its
/// values (`None`: values that vary, such as a version; the docs name the
/// label only).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: Vec<(String, Option<Vec<String>>)>,
}

type Families = BTreeMap<String, Family>;

/// The tables of docs/metrics.md, by section heading.
fn documented() -> BTreeMap<String, Families> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).expect("docs/metrics.md");
    let mut sections: BTreeMap<String, Families> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| metric | type | labels | meaning |` splits into six cells.
        let ours = ["`mtguard_", "`process_"];
        if cells.len() != 6 || !ours.iter().any(|p| cells[1].starts_with(p)) {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let labels = if cells[3] == "—" {
            Vec::new()
        } else if cells[3].contains(':') {
            // `label`: `value`, `value`, ...; `label`: `value`, ...
            cells[3]
                .split(';')
                .map(|part| {
                    let (label, values) = part.split_once(':').unwrap_or_else(|| {
                        panic!("{name}: `label`: values, separated by `;`: {part}")
                    });
                    let values = values
                        .split(',')
                        .map(|v| v.trim().trim_matches('`').to_owned())
                        .collect();
                    (label.trim().trim_matches('`').to_owned(), Some(values))
                })
                .collect()
        } else {
            // `label`, `label`: labels whose values vary.
            cells[3]
                .split(',')
                .map(|l| (l.trim().trim_matches('`').to_owned(), None))
                .collect()
        };
        let family = Family {
            kind: cells[2].to_owned(),
            labels,
        };
        let old = sections
            .entry(section.clone())
            .or_default()
            .insert(name.clone(), family);
        assert!(old.is_none(), "{name} is documented twice");
    }
    sections
}

/// The families of a scrape in either text format, named as Prometheus
/// stores the series (a counter's with `_total`).
fn exposed(scrape: &str) -> Families {
    let mut kinds = BTreeMap::new();
    let mut families: Families = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            kinds.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.split_once(' ').unwrap().0;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, Some(labels.trim_end_matches('}'))),
            None => (series, None),
        };
        // OpenMetrics names a counter's family without `_total`, the
        // classic format with it.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let kind = kinds
            .get(base)
            .or_else(|| kinds.get(name))
            .unwrap_or_else(|| panic!("{name} has no # TYPE line"))
            .clone();
        let family = families.entry(name.to_owned()).or_insert(Family {
            kind,
            labels: Vec::new(),
        });
        // Our label values hold no comma or quote.
        for pair in labels.into_iter().flat_map(|l| l.split(',')) {
            let (label, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"').to_owned();
            match family.labels.iter_mut().find(|(l, _)| l == label) {
                Some((_, Some(values))) => {
                    if !values.contains(&value) {
                        values.push(value);
                    }
                }
                _ => family.labels.push((label.to_owned(), Some(vec![value]))),
            }
        }
    }
    families
}

/// `GET /metrics` of an admin API serving `node`, in the classic format
/// (no Accept header) and in OpenMetrics (asked for by name).
fn scrape(node: Handles) -> (String, String) {
    let guard = node.guard.clone();
    let admin = AdminInProcess::start(node, "docs-metrics-token-0123456789abcd", None);
    admin.runtime.spawn(guard.drive());
    let addr = admin.addr;
    let (status, classic) = http_request(addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200, "{classic}");
    let openmetrics = openmetrics_request(addr);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(!classic.contains("# EOF"), "{classic}");
    (classic, openmetrics)
}

/// `GET /metrics` with `Accept: application/openmetrics-text`: the body.
fn openmetrics_request(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    // axum sends a body of known length as is, not chunked.
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    body.to_owned()
}

/// The families of both formats of one node, checked equal.
fn exposed_both(node: Handles) -> Families {
    let (classic, openmetrics) = scrape(node);
    let families = exposed(&classic);
    assert_eq!(
        families,
        exposed(&openmetrics),
        "the classic format (left) and OpenMetrics (right) expose different families"
    );
    families
}

/// Both directions, with the difference spelled out on failure.
fn assert_same(what: &str, documented: &Families, exposed: &Families) {
    let undocumented: Vec<_> = exposed
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let missing: Vec<_> = documented
        .keys()
        .filter(|k| !exposed.contains_key(*k))
        .collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{what}: exposed but not in docs/metrics.md: {undocumented:?}; \
         documented but not exposed: {missing:?}"
    );
    for (name, family) in documented {
        let mut exposed = exposed[name].clone();
        // Labels documented without values vary (a version): their names
        // and order are compared, not their values.
        for ((_, values), (_, documented)) in exposed.labels.iter_mut().zip(&family.labels) {
            if documented.is_none() {
                *values = None;
            }
        }
        assert_eq!(
            family, &exposed,
            "{what}: {name} as documented (left) and as exposed (right)"
        );
    }
}

const ALWAYS: &str = "Always present";
const OPERATIONS: &str = "Operations";
const PROCESS: &str = "Process";
const CROWDSEC: &str = "With `[crowdsec]`";
const NFTABLES: &str = "With `[kernel] nft_set`";
const HSM: &str = "With `[hsm]`";

/// The sections every node exposes.
const PLAIN: [&str; 3] = [ALWAYS, OPERATIONS, PROCESS];

fn sections(docs: &BTreeMap<String, Families>, names: &[&str]) -> Families {
    let mut all = Families::new();
    for section in names {
        all.extend(docs[*section].clone());
    }
    all
}

#[test]
fn the_metrics_page_lists_exactly_what_a_plain_node_exposes() {
    let docs = documented();
    let mut known = [ALWAYS, OPERATIONS, PROCESS, CROWDSEC, NFTABLES, HSM];
    known.sort();
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        known,
        "the sections of docs/metrics.md this test knows"
    );
    let node = Handles::new(test_guard(Policy::default()));
    assert_same(
        "a plain node",
        &sections(&docs, &PLAIN),
        &exposed_both(node),
    );
}

#[test]
fn the_crowdsec_nftables_and_hsm_tables_match_while_those_run() {
    let docs = documented();
    let node = Handles::new(test_guard(Policy::default()));
    // What the bouncer, the mirror and the token monitor set when they
    // start.
    let t = &node.telemetry;
    t.crowdsec.bouncer.store(true, Ordering::Relaxed);
    t.nftables.enabled.store(true, Ordering::Relaxed);
    t.jobs
        .get(JobKind::TokenMonitor)
        .running
        .store(true, Ordering::Relaxed);
    let mut all = sections(&docs, &PLAIN);
    all.extend(sections(&docs, &[CROWDSEC, NFTABLES, HSM]));
    assert_same(
        "with CrowdSec, nftables and a token",
        &all,
        &exposed_both(node),
    );
}
