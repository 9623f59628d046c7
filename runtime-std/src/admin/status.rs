//! `GET /v1/status`.

use super::*;

pub(super) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Minimal => "minimal",
        Level::Standard => "standard",
        Level::High => "high",
        Level::Maximum => "maximum",
    }
}

pub(super) fn stats_json(s: &Stats) -> Value {
    let rejected: serde_json::Map<String, Value> = RejectReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), s.rejected[*r as usize].into()))
        .collect();
    let handshakes: serde_json::Map<String, Value> = HandshakeOutcome::ALL
        .iter()
        .map(|h| (h.as_str().to_owned(), s.handshakes[*h as usize].into()))
        .collect();
    json!({
        "accepted": s.accepted,
        "rejected": rejected,
        "handshakes": handshakes,
        "evictions": s.evictions,
        "blocks": s.blocks,
        "unblocks": s.unblocks,
        "scanners": s.scanners,
        "replays": s.replays,
        "slowloris": s.slowloris,
        "attacks": s.attacks,
        "events_dropped": s.events_dropped,
        "stale_connection_ids": s.stale_connection_ids,
        "pin_failures": s.pin_failures,
        "authenticated": s.authenticated,
        "authenticated_cap_refusals": {
            "accept": s.authenticated_cap_refusals[CapRefusal::Accept as usize],
            "handshake": s.authenticated_cap_refusals[CapRefusal::Handshake as usize],
        },
    })
}

pub(super) async fn status(_: Authorized, State(s): State<AppState>) -> Json<Value> {
    Json(s.guard.with(|e, now| {
        let level = e.policy().level;
        json!({
            "level": level.number(),
            "level_name": level_name(level),
            "uptime_seconds": now.as_millis() / 1000,
            "active_connections": e.active_connections(),
            "pending_connections": e.active_connections() - e.authenticated_connections(),
            "authenticated_connections": e.authenticated_connections(),
            "shared_clients": e.shared_clients(),
            "tracked_clients": e.tracked_clients(),
            "blocked_clients": e.blocked_clients(),
            "client_table_capacity": e.client_capacity(),
            "connection_table_capacity": e.connection_capacity(),
            "under_attack": e.under_attack(),
            "pins": e.pins().len(),
            "pin_capacity": e.pins().capacity(),
            "stats": stats_json(e.stats()),
            "crowdsec": s.node.telemetry.crowdsec.json(),
            "kernel": s.node.telemetry.nftables.json(),
            "jobs": s.node.telemetry.jobs.json(),
            "observer_events_dropped": s.guard.observer_drops(),
        })
    }))
}
