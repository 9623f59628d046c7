//! The nftables mirror: every block of the engine is also an element of an
//! nftables set, with the block's remaining time as the element's timeout,
//! so the kernel drops a blocked client's SYNs (with `dist/mtguard.nft`
//! loaded) before the guard, or even the TCP handshake, costs anything.
//!
//! The kernel is spoken to through `nft`'s JSON interface (`nft -j -f -`
//! with JSON commands in, `nft -j list set` parsed): the stable, documented
//! machine interface of nftables, with nothing parsed out of text meant for
//! people. (The netlink crates for nftables either lack set elements with
//! timeouts or are thin unsafe bindings.)
//!
//! Events come from a bounded channel; events lost to a full channel, a
//! failed `nft` run or an element the kernel expired first are all repaired
//! by the reconciliation that runs at start and every
//! [`RECONCILE_INTERVAL`]: the sets are listed and made equal to the
//! engine's blocks.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mtguard_core::{ClientKey, Event};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::NftSet;
use crate::engine::Guard;
use crate::jobs::{self, Job, Shutdown};
use crate::node::Handles;
use crate::telemetry::{JobKind, NftablesStatus, Telemetry};

/// How often the sets are made equal to the engine's blocks.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// Engine events waiting for the mirror at most.
pub const QUEUE: usize = 4_096;

/// Elements one `nft` run changes at most.
const BATCH: usize = 512;

/// An element whose timeout is off by more than this is replaced.
const TOLERANCE_SECS: u64 = 2;

/// One element as the mirror wants it: the client, and its timeout in
/// whole seconds (`None`: blocked until lifted).
type Want = HashMap<ClientKey, Option<u64>>;

/// The sets of one `nft_set` setting.
pub struct Mirror {
    set: NftSet,
    ipv6_prefix: u8,
    telemetry: Arc<Telemetry>,
}

impl Mirror {
    /// A mirror into `set`; IPv6 clients are `ipv6_prefix` networks; how it
    /// is doing goes to `telemetry`.
    pub fn new(set: NftSet, ipv6_prefix: u8, telemetry: Arc<Telemetry>) -> Mirror {
        Mirror {
            set,
            ipv6_prefix,
            telemetry,
        }
    }

    fn status(&self) -> &NftablesStatus {
        &self.telemetry.nftables
    }

    fn set_for(&self, key: ClientKey) -> Option<String> {
        match (key.is_ipv4(), self.set.family.as_str()) {
            (true, "ip" | "inet") => Some(self.set.set.clone()),
            (false, "ip6" | "inet") => Some(format!("{}6", self.set.set)),
            _ => None,
        }
    }

    fn sets(&self) -> Vec<String> {
        match self.set.family.as_str() {
            "ip" => vec![self.set.set.clone()],
            "ip6" => vec![format!("{}6", self.set.set)],
            _ => vec![self.set.set.clone(), format!("{}6", self.set.set)],
        }
    }

    fn value(&self, key: ClientKey) -> Value {
        match key.to_ip() {
            IpAddr::V4(a) => json!(a.to_string()),
            IpAddr::V6(a) if self.ipv6_prefix >= 128 => json!(a.to_string()),
            IpAddr::V6(a) => json!({"prefix": {"addr": a.to_string(), "len": self.ipv6_prefix}}),
        }
    }

    fn element(&self, verb: &str, key: ClientKey, timeout: Option<Option<u64>>) -> Option<Value> {
        let name = self.set_for(key)?;
        let elem = match timeout {
            Some(Some(secs)) => json!({"elem": {"val": self.value(key), "timeout": secs.max(1)}}),
            _ => self.value(key),
        };
        Some(json!({verb: {"element": {
            "family": self.set.family,
            "table": self.set.table,
            "name": name,
            "elem": [elem],
        }}}))
    }

    /// Runs `nft -j -f -` with `commands` as one transaction.
    fn apply(&self, commands: Vec<Value>) -> Result<(), String> {
        if commands.is_empty() {
            return Ok(());
        }
        let input = json!({"nftables": commands}).to_string();
        let mut child = Command::new("nft")
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| format!("writing to nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for nft: {e}"))?;
        if out.status.success() {
            self.status().updates.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(format!(
                "nft -j -f - failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The elements of the sets now: client and seconds left (`None`: no
    /// timeout).
    pub fn list(&self) -> Result<Want, String> {
        let mut out = Want::new();
        for name in self.sets() {
            let output = Command::new("nft")
                .args([
                    "-j",
                    "list",
                    "set",
                    &self.set.family,
                    &self.set.table,
                    &name,
                ])
                .output()
                .map_err(|e| format!("running nft: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "nft -j list set {} {} {name} failed: {} (is dist/mtguard.nft loaded?)",
                    self.set.family,
                    self.set.table,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            let doc: Value = serde_json::from_slice(&output.stdout)
                .map_err(|e| format!("nft -j list set: bad JSON: {e}"))?;
            for (key, left) in parse_set_listing(&doc, self.ipv6_prefix) {
                out.insert(key, left);
            }
        }
        Ok(out)
    }

    /// Makes the sets equal to `want`.
    pub fn reconcile(&self, want: &Want) -> Result<(), String> {
        let have = self.list()?;
        let mut commands = Vec::new();
        for (key, left) in &have {
            let keep = match (want.get(key), left) {
                (Some(None), None) => true,
                (Some(Some(w)), Some(h)) => w.abs_diff(*h) <= TOLERANCE_SECS,
                _ => false,
            };
            if !keep {
                commands.extend(self.element("delete", *key, None));
            }
        }
        for (key, timeout) in want {
            let present = match (have.get(key), timeout) {
                (Some(None), None) => true,
                (Some(Some(h)), Some(w)) => w.abs_diff(*h) <= TOLERANCE_SECS,
                _ => false,
            };
            if !present {
                commands.extend(self.element("add", *key, Some(*timeout)));
            }
        }
        self.status().reconciles.fetch_add(1, Ordering::Relaxed);
        for chunk in commands.chunks(BATCH) {
            self.apply(chunk.to_vec())?;
        }
        self.status()
            .elements
            .store(want.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The elements of a `nft -j list set` answer: `"192.0.2.7"` or
/// `{"elem": {"val": ..., "timeout": T, "expires": E}}`, a value being an
/// address or `{"prefix": {"addr", "len"}}`.
pub fn parse_set_listing(doc: &Value, ipv6_prefix: u8) -> Vec<(ClientKey, Option<u64>)> {
    let mut out = Vec::new();
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return out;
    };
    for item in items {
        let Some(elems) = item
            .get("set")
            .and_then(|s| s.get("elem"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for e in elems {
            let (val, left) = match e.get("elem") {
                Some(inner) => (
                    inner.get("val"),
                    inner
                        .get("expires")
                        .or_else(|| inner.get("timeout"))
                        .and_then(Value::as_u64),
                ),
                None => (Some(e), None),
            };
            let addr = match val {
                Some(Value::String(s)) => s.parse::<IpAddr>().ok(),
                Some(v) => v
                    .get("prefix")
                    .and_then(|p| p.get("addr"))
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                None => None,
            };
            if let Some(addr) = addr {
                out.push((ClientKey::new(addr, ipv6_prefix), left));
            }
        }
    }
    out
}

/// The engine's blocks as elements: seconds left, rounded up.
fn wanted(guard: &Guard) -> Want {
    guard.with(|e, now| {
        e.blocks()
            .map(|b| {
                let left = b
                    .until
                    .map(|u| u.as_millis().saturating_sub(now.as_millis()).div_ceil(1000));
                (b.client, left)
            })
            .collect()
    })
}

/// Checks that the sets exist, then reconciles; an error stops the start
/// (a mirror that cannot work should be noticed at once, not in a flood).
/// Then the mirror job keeps the sets equal to the engine's blocks.
pub fn start(node: &Arc<Handles>, set: NftSet, shutdown: &Shutdown) -> anyhow::Result<()> {
    let guard = &node.guard;
    let prefix = guard.with(|e, _| e.policy().ipv6_prefix);
    let mirror = Mirror::new(set.clone(), prefix, node.telemetry.clone());
    // Subscribed first: a block decided during the reconciliation waits
    // in the queue instead of being missed.
    let events = guard.subscribe(QUEUE);
    let want = wanted(guard);
    mirror
        .reconcile(&want)
        .map_err(|e| anyhow::anyhow!("[kernel] nft_set = \"{set}\": {e}"))?;
    mirror.status().enabled.store(true, Ordering::Relaxed);
    tracing::info!(nft_set = %set, "mirroring blocks into nftables");
    let present = want.keys().map(|k| (*k, ())).collect();
    let job = MirrorJob {
        mirror,
        events,
        present,
    };
    jobs::spawn(job, node, shutdown);
    Ok(())
}

/// The mirror job: applies each block and unblock as it comes, and
/// reconciles the whole sets every [`RECONCILE_INTERVAL`].
struct MirrorJob {
    mirror: Mirror,
    events: mpsc::Receiver<Event>,
    /// The elements the sets hold, as far as the mirror knows.
    present: HashMap<ClientKey, ()>,
}

impl Job for MirrorJob {
    const KIND: JobKind = JobKind::Nftables;

    async fn run(self, node: Arc<Handles>, mut shutdown: Shutdown) {
        let MirrorJob {
            mirror,
            mut events,
            mut present,
        } = self;
        let guard = &node.guard;
        let job = node.telemetry.jobs.get(Self::KIND);
        let mirror = Arc::new(mirror);
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.tick().await;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            batch.clear();
            let full = tokio::select! {
                n = events.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    false
                }
                _ = tick.tick() => true,
                () = jobs::stopped(&mut shutdown) => return,
            };
            let m = mirror.clone();
            let result = if full {
                let want = wanted(guard);
                present = want.keys().map(|k| (*k, ())).collect();
                tokio::task::spawn_blocking(move || m.reconcile(&want)).await
            } else {
                let now = guard.now();
                let mut commands = Vec::new();
                for event in &batch {
                    match *event {
                        Event::Blocked { client, until, .. } => {
                            let left = until.map(|u| {
                                u.as_millis().saturating_sub(now.as_millis()).div_ceil(1000)
                            });
                            // Re-adding an element does not change its
                            // timeout: a longer block replaces it.
                            if present.insert(client, ()).is_some() {
                                commands.extend(mirror.element("delete", client, None));
                            }
                            commands.extend(mirror.element("add", client, Some(left)));
                        }
                        Event::Unblocked { client, .. } if present.remove(&client).is_some() => {
                            commands.extend(mirror.element("delete", client, None));
                        }
                        _ => {}
                    }
                }
                mirror
                    .status()
                    .elements
                    .store(present.len() as u64, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || m.apply(commands)).await
            };
            let Err(e) = result.unwrap_or_else(|j| Err(j.to_string())) else {
                job.succeeded();
                continue;
            };
            if full {
                mirror.status().error(&e);
                job.failed(&e);
                tracing::warn!(error = %e, "nftables reconciliation failed; retrying later");
                continue;
            }
            // Most often an element the kernel expired a moment before the
            // engine (deleting it fails the transaction), or one a dropped
            // event left out: not an error if the sets can be repaired from
            // the engine.
            tracing::debug!(error = %e, "nftables update failed; reconciling");
            let want = wanted(guard);
            present = want.keys().map(|k| (*k, ())).collect();
            let m = mirror.clone();
            match tokio::task::spawn_blocking(move || m.reconcile(&want)).await {
                Ok(Err(e)) => {
                    mirror.status().error(&e);
                    job.failed(&e);
                    tracing::warn!(error = %e, "nftables update failed; retrying later");
                }
                _ => job.succeeded(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_of_both_families_parse() {
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"set": {"family": "inet", "name": "blocked", "table": "mtguard", "type": "ipv4_addr",
              "flags": ["timeout"], "elem": [
                {"elem": {"val": "10.0.0.3", "timeout": 300, "expires": 297}},
                "10.0.0.4"]}},
            {"set": {"family": "inet", "name": "blocked6", "table": "mtguard", "type": "ipv6_addr",
              "flags": ["interval", "timeout"], "elem": [
                {"elem": {"val": {"prefix": {"addr": "2001:db8:1:2::", "len": 64}}, "timeout": 60, "expires": 59}}]}}]}"#,
        )
        .unwrap();
        let got = parse_set_listing(&doc, 64);
        let key = |s: &str| ClientKey::new(s.parse().unwrap(), 64);
        assert_eq!(
            got,
            vec![
                (key("10.0.0.3"), Some(297)),
                (key("10.0.0.4"), None),
                (key("2001:db8:1:2::"), Some(59)),
            ]
        );
    }
}
