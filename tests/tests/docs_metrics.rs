//! docs/metrics.md against `GET /metrics`: every family the admin API
//! exposes is documented, every documented one is exposed, with the same
//! type, label and label values. The CrowdSec and nftables tables are only
//! exposed while those run; their telemetry is marked running here (what
//! the bouncer and the mirror do at start), so those tables are checked
//! too, and checked absent on a node without them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mtguard::admin::{self, AdminSettings};
use mtguard::node::Handles;
use mtguard_core::Policy;
use mtguard_tests::{http_request, test_guard};

/// One series family: its type, and its label with the label's values
/// (`None`: no label).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    label: Option<(String, Vec<String>)>,
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
        if cells.len() != 6 || !cells[1].starts_with("`mtguard_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let label = (cells[3] != "—").then(|| {
            let (label, values) = cells[3]
                .split_once(':')
                .unwrap_or_else(|| panic!("{name}: labels {:?} not `label`: values", cells[3]));
            let values = values
                .split(',')
                .map(|v| v.trim().trim_matches('`').to_owned())
                .collect();
            (label.trim().trim_matches('`').to_owned(), values)
        });
        let family = Family {
            kind: cells[2].to_owned(),
            label,
        };
        let old = sections
            .entry(section.clone())
            .or_default()
            .insert(name.clone(), family);
        assert!(old.is_none(), "{name} is documented twice");
    }
    sections
}

/// The families of an OpenMetrics scrape, named as Prometheus stores the
/// series (a counter's with `_total`).
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
        let base = name.strip_suffix("_total").unwrap_or(name);
        let kind = kinds
            .get(base)
            .or_else(|| kinds.get(name))
            .unwrap_or_else(|| panic!("{name} has no # TYPE line"))
            .clone();
        let family = families
            .entry(name.to_owned())
            .or_insert(Family { kind, label: None });
        if let Some(labels) = labels {
            let (label, value) = labels.split_once('=').unwrap();
            let value = value.trim_matches('"').to_owned();
            match &mut family.label {
                Some((l, values)) => {
                    assert_eq!(l, label, "{name}: one label per family");
                    values.push(value);
                }
                None => family.label = Some((label.to_owned(), vec![value])),
            }
        }
    }
    families
}

/// `GET /metrics` of an admin API serving `node`.
fn scrape(node: Handles) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let settings = Arc::new(AdminSettings {
        token: "docs-metrics-token-0123456789abcd".to_owned(),
        state_dir: None,
        pins_file: None,
    });
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    rt.spawn(node.guard.clone().drive());
    rt.spawn(admin::serve(listener, Arc::new(node), settings, stopped));
    let (status, body) = http_request(addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    body
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
        assert_eq!(
            family, &exposed[name],
            "{what}: {name} as documented (left) and as exposed (right)"
        );
    }
}

const ALWAYS: &str = "Always present";
const CROWDSEC: &str = "With `[crowdsec]`";
const NFTABLES: &str = "With `[kernel] nft_set`";

#[test]
fn the_metrics_page_lists_exactly_what_a_plain_node_exposes() {
    let docs = documented();
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        [ALWAYS, CROWDSEC, NFTABLES],
        "the sections of docs/metrics.md this test knows"
    );
    let node = Handles::new(test_guard(Policy::default()));
    assert_same(ALWAYS, &docs[ALWAYS], &exposed(&scrape(node)));
}

#[test]
fn the_crowdsec_and_nftables_tables_match_while_those_run() {
    let docs = documented();
    let node = Handles::new(test_guard(Policy::default()));
    // What the bouncer and the mirror set when they start.
    let t = &node.telemetry;
    t.crowdsec.bouncer.store(true, Ordering::Relaxed);
    t.nftables.enabled.store(true, Ordering::Relaxed);
    let mut all = Families::new();
    for section in [ALWAYS, CROWDSEC, NFTABLES] {
        all.extend(docs[section].clone());
    }
    assert_same("with CrowdSec and nftables", &all, &exposed(&scrape(node)));
}
