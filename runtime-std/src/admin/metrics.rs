//! `GET /metrics`: the engine's numbers and the node's telemetry, in the
//! OpenMetrics text format or the classic one as the scraper asks (see
//! [`super::exposition`]; documented in docs/metrics.md, which
//! tests/tests/docs_metrics.rs keeps equal to what is served).

use super::exposition::Format;
use super::ops_metrics::{self, ProcessCollector};
use super::*;

/// The metrics in the OpenMetrics text format, read from the engine and
/// the node's `telemetry` now.
pub fn render_metrics(guard: &Guard, telemetry: &Arc<Telemetry>) -> String {
    render_metrics_as(guard, telemetry, Format::OpenMetrics)
}

/// The metrics in `format`, read from the engine and the node's
/// `telemetry` now.
pub fn render_metrics_as(guard: &Guard, telemetry: &Arc<Telemetry>, format: Format) -> String {
    let snapshot = guard.with(|e, _| Snapshot {
        stats: *e.stats(),
        active: e.active_connections(),
        tracked: e.tracked_clients(),
        blocked: e.blocked_clients(),
        under_attack: e.under_attack(),
        client_capacity: e.client_capacity(),
        connection_capacity: e.connection_capacity(),
        networks: e.tracked_networks(),
        network_capacity: e.network_capacity(),
        pins: e.pins().len(),
        level: e.policy().level,
        observer_drops: guard.observer_drops(),
        telemetry: telemetry.clone(),
        shared: SharedAddresses::read(e),
    });
    let mut registry = Registry::default();
    // The process metrics keep the names every client library gives them.
    registry.register_collector(Box::new(ProcessCollector));
    let ours = registry.sub_registry_with_prefix("mtguard");
    ours.register_collector(Box::new(snapshot));
    ours.register_collector(Box::new(Operations(telemetry.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    match format {
        Format::OpenMetrics => out,
        Format::Classic => super::exposition::to_classic(&out),
    }
}

/// The operations metrics (build, relay, backend, reloads, saves, token).
#[derive(Debug)]
struct Operations(Arc<Telemetry>);

impl prometheus_client::collector::Collector for Operations {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        ops_metrics::encode(&mut e, &self.0)
    }
}

/// The engine's numbers at one scrape.
#[derive(Debug)]
pub(super) struct Snapshot {
    stats: Stats,
    active: u32,
    tracked: u32,
    blocked: u32,
    under_attack: bool,
    client_capacity: usize,
    connection_capacity: usize,
    networks: u32,
    network_capacity: usize,
    pins: usize,
    level: Level,
    observer_drops: u64,
    telemetry: Arc<Telemetry>,
    shared: SharedAddresses,
}

// ----- carrier NAT (issue 20): pending vs authenticated, shared addresses -----

/// What tells the people behind one address from an attacker, at one
/// scrape.
#[derive(Debug)]
pub(super) struct SharedAddresses {
    pending: u32,
    authenticated: u32,
    shared: u32,
    cap_refusals: [u64; 2],
}

impl SharedAddresses {
    pub(super) fn read(e: &crate::engine::Engine) -> Self {
        SharedAddresses {
            pending: e.active_connections() - e.authenticated_connections(),
            authenticated: e.authenticated_connections(),
            shared: e.shared_clients(),
            cap_refusals: e.stats().authenticated_cap_refusals,
        }
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            e,
            "connections_pending",
            "Connections open now that have not proved a secret.",
            self.pending.into(),
        )?;
        gauge(
            e,
            "connections_authenticated",
            "Connections open now whose handshake was valid for a secret.",
            self.authenticated.into(),
        )?;
        labelled_counters(
            e,
            "authenticated_cap_refusals",
            "Refusals at the per-client authenticated cap, by where they met it.",
            "at",
            CapRefusal::ALL.map(|c| (c.as_str(), self.cap_refusals[c as usize])),
        )?;
        gauge(
            e,
            "shared_clients",
            "Clients treated as shared addresses now (recent valid handshakes).",
            self.shared.into(),
        )
    }
}

// ----- end of carrier NAT -----

pub(super) fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub(super) fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

pub(super) fn labelled_counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'static str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in series {
        let labels = [(label, value)];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let e = &mut e;
        counter(
            e,
            "connections_accepted",
            "Connections admitted.",
            s.accepted,
        )?;
        labelled_counters(
            e,
            "connections_rejected",
            "Connections refused, by reason.",
            "reason",
            RejectReason::ALL.map(|r| (r.as_str(), s.rejected[r as usize])),
        )?;
        labelled_counters(
            e,
            "handshakes",
            "Handshakes judged, by result.",
            "result",
            HandshakeOutcome::ALL.map(|h| (h.as_str(), s.handshakes[h as usize])),
        )?;
        labelled_counters(
            e,
            "handshake_failures",
            "MTProto handshakes refused by the inspection, by reason.",
            "reason",
            self.telemetry.handshake_failures.counts(),
        )?;
        labelled_counters(
            e,
            "detections",
            "Abusive clients detected, by kind.",
            "kind",
            [
                ("scanner", s.scanners),
                ("replay", s.replays),
                ("slowloris", s.slowloris),
            ],
        )?;
        counter(
            e,
            "blocks",
            "Blocks started (automatic and manual).",
            s.blocks,
        )?;
        counter(
            e,
            "unblocks",
            "Blocks ended (expired or lifted).",
            s.unblocks,
        )?;
        counter(
            e,
            "table_evictions",
            "Idle clients evicted from the client table to make room.",
            s.evictions,
        )?;
        counter(
            e,
            "network_evictions",
            "Idle networks evicted from the network table to make room.",
            s.network_evictions,
        )?;
        counter(
            e,
            "attacks",
            "Times under-attack mode switched on.",
            s.attacks,
        )?;
        counter(
            e,
            "events_dropped",
            "Engine events dropped because the queue was full.",
            s.events_dropped,
        )?;
        counter(
            e,
            "stale_connection_ids",
            "Handler calls with a connection id that was no longer live.",
            s.stale_connection_ids,
        )?;
        counter(
            e,
            "pin_failures",
            "Upstream certificate chains that matched no pin (backend and refresh).",
            s.pin_failures,
        )?;
        gauge(
            e,
            "connections_active",
            "Connections open now.",
            self.active.into(),
        )?;
        gauge(
            e,
            "tracked_clients",
            "Clients in the client table.",
            self.tracked.into(),
        )?;
        gauge(
            e,
            "blocked_clients",
            "Clients blocked now.",
            self.blocked.into(),
        )?;
        gauge(
            e,
            "under_attack",
            "1 while under-attack mode is on, else 0.",
            self.under_attack.into(),
        )?;
        gauge(
            e,
            "client_table_capacity",
            "Clients the client table holds.",
            self.client_capacity as u64,
        )?;
        gauge(
            e,
            "connection_table_capacity",
            "Connections the connection table holds.",
            self.connection_capacity as u64,
        )?;
        gauge(
            e,
            "tracked_networks",
            "Networks in the network table (0 while the network tier was never on).",
            self.networks.into(),
        )?;
        gauge(
            e,
            "network_table_capacity",
            "Networks the network table holds.",
            self.network_capacity as u64,
        )?;
        gauge(e, "pins", "Certificate pins configured.", self.pins as u64)?;
        self.shared.encode(e)?;
        fleet_metrics(e, self.observer_drops, &self.telemetry)?;
        gauge(
            e,
            "security_level",
            "Security level the policy started from (0-3).",
            self.level.number().into(),
        )
    }
}

/// CrowdSec and nftables, when they run.
pub(super) fn fleet_metrics(
    e: &mut DescriptorEncoder,
    observer_drops: u64,
    telemetry: &Telemetry,
) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    counter(
        e,
        "observer_events_dropped",
        "Blocks and detections CrowdSec or nftables missed because their queue was full.",
        observer_drops,
    )?;
    let c = &telemetry.crowdsec;
    if c.json().is_some() {
        gauge(
            e,
            "crowdsec_lapi_up",
            "1 if the last pull of the CrowdSec decision stream succeeded, else 0.",
            c.lapi_up.load(Relaxed).into(),
        )?;
        gauge(
            e,
            "crowdsec_decisions",
            "CrowdSec decisions held now.",
            c.decisions.load(Relaxed),
        )?;
        labelled_counters(
            e,
            "crowdsec_pulls",
            "Pulls of the CrowdSec decision stream, by result.",
            "result",
            [
                ("ok", c.pulls.load(Relaxed)),
                ("failed", c.pull_failures.load(Relaxed)),
            ],
        )?;
        labelled_counters(
            e,
            "crowdsec_decisions_seen",
            "CrowdSec decisions, by what was done with them.",
            "action",
            [
                ("applied", c.applied.load(Relaxed)),
                ("removed", c.removed.load(Relaxed)),
                ("ignored", c.ignored.load(Relaxed)),
            ],
        )?;
        labelled_counters(
            e,
            "crowdsec_alerts",
            "Alerts reported to the CrowdSec Local API, by result.",
            "result",
            [
                ("sent", c.alerts_sent.load(Relaxed)),
                ("failed", c.alerts_failed.load(Relaxed)),
            ],
        )?;
    }
    let k = &telemetry.nftables;
    if k.json().is_some() {
        gauge(
            e,
            "nft_elements",
            "Elements in the nftables sets mirroring the blocks.",
            k.elements.load(Relaxed),
        )?;
        labelled_counters(
            e,
            "nft_updates",
            "Runs of nft changing the sets, by result.",
            "result",
            [
                ("ok", k.updates.load(Relaxed)),
                ("failed", k.errors.load(Relaxed)),
            ],
        )?;
    }
    Ok(())
}

pub(super) async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    // Several Accept headers are one list (RFC 9110, 5.3).
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    let format = Format::negotiate((!accept.is_empty()).then_some(accept.as_str()));
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        render_metrics_as(&s.guard, &s.node.telemetry, format),
    )
        .into_response()
}
