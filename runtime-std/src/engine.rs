//! The core on tokio: one engine behind a lock, a driver task for its
//! timers and events, and the link from events back to connections.
//!
//! Every handler runs under a `std::sync::Mutex` held for a few hundred
//! nanoseconds and never across an `.await`; the driver task sleeps until
//! `poll_timeout()` and drains the events. The tables are allocated on the
//! heap once, at their preset sizes, and never grow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mtguard_core::cidr::{Cidr, CidrEntry, CidrSet, Origin};
use mtguard_core::storage::ServerPreset;
use mtguard_core::table::{ClientSlot, ConnSlot, NetworkSlot};
use mtguard_core::{
    Authentication, ConnectionId, Event, HandshakeOutcome, Instant, Policy, SecurityManager, Seed,
    Storage, Tables, Verdict,
};
use tokio::sync::{mpsc, oneshot, Notify};

/// Tables on the heap: boxed slices are built element by element, so even
/// the server preset's megabytes never pass through a stack.
pub struct Heap;

impl Storage for Heap {
    type Clients = Box<[ClientSlot]>;
    type Buckets = Box<[u32]>;
    type Connections = Box<[ConnSlot]>;
    type Prefixes = Box<[CidrEntry]>;
    type Networks = Box<[NetworkSlot]>;
    type NetworkBuckets = Box<[u32]>;
}

/// Table sizes. The defaults are the core's server preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Tracked clients.
    pub clients: usize,
    /// Concurrent connections.
    pub connections: usize,
    /// Prefixes in each of the allow and deny lists.
    pub prefixes: usize,
    /// Tracked networks (the network tier); as many as connections.
    pub networks: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            clients: ServerPreset::CLIENTS,
            connections: ServerPreset::CONNECTIONS,
            prefixes: ServerPreset::PREFIXES,
            networks: ServerPreset::NETWORKS,
        }
    }
}

impl Capacity {
    /// Bytes the engine's tables take, whatever the load.
    pub fn table_bytes(&self) -> usize {
        self.clients * (std::mem::size_of::<ClientSlot>() + 4)
            + self.connections * std::mem::size_of::<ConnSlot>()
            + 2 * self.prefixes * std::mem::size_of::<CidrEntry>()
            + self.networks * (std::mem::size_of::<NetworkSlot>() + 4)
    }

    fn tables(&self) -> Tables<Heap> {
        Tables {
            clients: vec![ClientSlot::EMPTY; self.clients].into_boxed_slice(),
            buckets: vec![u32::MAX; self.clients].into_boxed_slice(),
            connections: vec![ConnSlot::EMPTY; self.connections].into_boxed_slice(),
            allow: vec![CidrEntry::EMPTY; self.prefixes].into_boxed_slice(),
            deny: vec![CidrEntry::EMPTY; self.prefixes].into_boxed_slice(),
            networks: vec![NetworkSlot::EMPTY; self.networks].into_boxed_slice(),
            network_buckets: vec![u32::MAX; self.networks].into_boxed_slice(),
        }
    }
}

/// The engine type of the server.
pub type Engine = SecurityManager<Heap>;

/// Receives what the engine reports; the server logs, counts and persists.
pub trait EventSink: Send + Sync + 'static {
    /// One event, in the order the engine produced them, with the engine's
    /// clock when it did (its instants mean nothing without it).
    fn event(&self, event: &Event, now: Instant);
}

/// An engine instant as wall-clock time, given the engine's `now`: the
/// engine's clock is monotonic milliseconds since start, which no reader
/// of a log can place.
pub fn wall_clock(at: Instant, now: Instant) -> std::time::SystemTime {
    let wall_now = std::time::SystemTime::now();
    let (a, n) = (at.as_millis(), now.as_millis());
    if a >= n {
        wall_now + Duration::from_millis(a - n)
    } else {
        wall_now - Duration::from_millis(n - a)
    }
}

/// `at` in RFC 3339, UTC, to the second (`2026-12-02T04:05:06Z`).
pub fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Logs every event once with tracing.
pub struct LogEvents {
    /// The policy's IPv6 prefix, to print IPv6 clients as their prefix.
    pub ipv6_prefix: u8,
}

impl EventSink for LogEvents {
    fn event(&self, event: &Event, now: Instant) {
        let show = |k: &mtguard_core::ClientKey| k.display(self.ipv6_prefix).to_string();
        match event {
            Event::Blocked {
                client,
                cause,
                until,
                offences,
            } => tracing::warn!(
                client = show(client),
                cause = cause.as_str(),
                offences,
                // An indefinite block (until unblocked) has no end to show.
                until = until.map_or_else(
                    || "unblocked by hand".to_string(),
                    |u| rfc3339(wall_clock(u, now))
                ),
                "client blocked"
            ),
            Event::Unblocked { client, cause } => {
                tracing::info!(client = show(client), cause = ?cause, "client unblocked")
            }
            Event::ScannerDetected { client } => {
                tracing::warn!(
                    client = show(client),
                    "scanner detected: repeated handshake failures"
                )
            }
            Event::ReplayDetected { client } => {
                tracing::warn!(client = show(client), "replayed handshake detected")
            }
            Event::SlowlorisDetected { client } => {
                tracing::warn!(
                    client = show(client),
                    "slowloris detected: handshakes never complete"
                )
            }
            Event::UnderAttack { rate_per_second } => {
                tracing::warn!(rate_per_second, "under attack: per-client limits tightened")
            }
            Event::AttackOver => tracing::info!("attack over: limits restored"),
            Event::ClientTableFull => tracing::error!(
                "client table full of busy or blocked clients: refusing new clients"
            ),
            Event::NetworkTableFull => tracing::error!(
                "network table full of networks with live connections: refusing new networks"
            ),
            Event::PinMismatch => tracing::warn!("certificate chain matched no pin"),
            Event::HandshakeTimeout { .. } => {}
        }
    }
}

/// The engine shared by every task of the server.
pub struct Guard {
    engine: Mutex<Engine>,
    epoch: std::time::Instant,
    /// Wakes the driver when a handler may have moved `poll_timeout` earlier
    /// or queued events.
    wake: Notify,
    /// When the driver will wake on its own, in engine milliseconds.
    driver_wakes_at: AtomicU64,
    /// Connections waiting for their first bytes: the driver closes them on
    /// `HandshakeTimeout`.
    pending: Mutex<HashMap<ConnectionId, oneshot::Sender<()>>>,
    sink: Box<dyn EventSink>,
    /// Consumers of blocks, unblocks and detections (CrowdSec, nftables):
    /// bounded channels fed with `try_send`, so a slow consumer loses
    /// events (counted) instead of slowing admission.
    observers: Mutex<Vec<mpsc::Sender<Event>>>,
    has_observers: AtomicBool,
    observer_drops: AtomicU64,
    /// The lists of the config and the ranges shared decisions deny; both
    /// go into the engine's lists as config entries (not persisted).
    lists: Mutex<ListSources>,
}

#[derive(Clone, Default)]
struct ListSources {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    external_deny: Vec<Cidr>,
}

/// Cryptographically random seed for the engine's hash key and jitter.
pub fn random_seed() -> Seed {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let mut hash_key = [0u8; 16];
    hash_key.copy_from_slice(&bytes[..16]);
    let mut jitter = [0u8; 8];
    jitter.copy_from_slice(&bytes[16..]);
    Seed {
        hash_key,
        jitter: u64::from_le_bytes(jitter),
    }
}

impl Guard {
    /// A guard with tables of `capacity`, enforcing `policy`.
    pub fn new(
        policy: Policy,
        capacity: Capacity,
        sink: Box<dyn EventSink>,
    ) -> anyhow::Result<Arc<Guard>> {
        let engine = SecurityManager::new(capacity.tables(), policy, random_seed(), Instant::ZERO)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(Guard {
            engine: Mutex::new(engine),
            epoch: std::time::Instant::now(),
            wake: Notify::new(),
            driver_wakes_at: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            sink,
            observers: Mutex::new(Vec::new()),
            has_observers: AtomicBool::new(false),
            observer_drops: AtomicU64::new(0),
            lists: Mutex::new(ListSources::default()),
        }))
    }

    /// Now, on the engine's clock (milliseconds since the guard started).
    pub fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Runs `f` on the engine under its lock, then hands the events it
    /// produced to the sink (outside the lock) and wakes the driver, whose
    /// next deadline may have moved. Keep `f` short.
    pub fn with<R>(&self, f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
        let (r, next) = self.locked(|engine, now| (f(engine, now), engine.poll_timeout()));
        // Waking the driver costs a lock round trip: do it only when the
        // engine now wants it earlier than it planned to wake.
        let planned = self.driver_wakes_at.load(Ordering::Relaxed);
        if next.is_some_and(|t| t.as_millis() < planned) {
            self.wake.notify_one();
        }
        r
    }

    fn locked<R>(&self, f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
        let (r, events, now) = {
            let mut engine = self.lock();
            let now = self.now();
            let r = f(&mut engine, now);
            let events: Vec<Event> = std::iter::from_fn(|| engine.poll_event()).collect();
            (r, events, now)
        };
        self.dispatch(&events, now);
        r
    }

    fn dispatch(&self, events: &[Event], now: Instant) {
        for event in events {
            if let Event::HandshakeTimeout { connection } = event {
                if let Some(tx) = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(connection)
                {
                    let _ = tx.send(());
                }
            }
            self.sink.event(event, now);
            if self.has_observers.load(Ordering::Relaxed)
                && matches!(
                    event,
                    Event::Blocked { .. }
                        | Event::Unblocked { .. }
                        | Event::ScannerDetected { .. }
                        | Event::ReplayDetected { .. }
                        | Event::SlowlorisDetected { .. }
                )
            {
                for tx in self
                    .observers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    if tx.try_send(*event).is_err() {
                        self.observer_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// A bounded stream of the engine's blocks, unblocks and detections,
    /// from now on. When the receiver lags by `capacity` events, further
    /// ones are dropped and counted ([`Guard::observer_drops`]).
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        self.has_observers.store(true, Ordering::Relaxed);
        rx
    }

    /// Events dropped because an observer's channel was full.
    pub fn observer_drops(&self) -> u64 {
        self.observer_drops.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock cannot leave the engine half
        // updated in a way that matters more than stopping the server would.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides on a new connection from `ip`. On admission, the returned
    /// receiver fires if the connection's handshake deadline passes.
    pub fn connect(&self, ip: IpAddr) -> Result<Admitted, mtguard_core::RejectReason> {
        let verdict = self.with(|e, now| e.handle_connect(now, ip));
        match verdict {
            Verdict::Admit(id) => {
                let (tx, rx) = oneshot::channel();
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, tx);
                Ok(Admitted { id, timed_out: rx })
            }
            Verdict::Reject(reason) => Err(reason),
        }
    }

    /// Reports the outcome of a connection's handshake.
    pub fn handshake(&self, id: ConnectionId, outcome: HandshakeOutcome) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let _ = self.with(|e, now| e.handle_handshake(now, id, outcome));
    }

    /// Reports that a connection's handshake is valid for one of the
    /// secrets. `false`: its client holds its authenticated cap, and the
    /// connection must be closed (no violation is counted).
    pub fn authenticated(&self, id: ConnectionId) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        !matches!(
            self.with(|e, now| e.handle_authenticated(now, id)),
            Ok(Authentication::Refused(_))
        )
    }

    /// Reports that a connection closed.
    pub fn close(&self, id: ConnectionId) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let _ = self.with(|e, now| e.handle_close(now, id));
    }

    /// Replaces the config lists (a start or a reload); manual entries stay.
    /// Both lists are checked for room before either changes.
    pub fn set_config_lists(&self, allow: &[Cidr], deny: &[Cidr]) -> anyhow::Result<()> {
        self.update_lists(|sources| {
            sources.allow = allow.to_vec();
            sources.deny = deny.to_vec();
        })
    }

    /// Replaces the ranges shared decisions deny (CrowdSec `Range`
    /// decisions); they sit in the denylist beside the config's entries.
    pub fn set_external_deny(&self, ranges: &[Cidr]) -> anyhow::Result<()> {
        self.update_lists(|sources| sources.external_deny = ranges.to_vec())
    }

    /// Changes the list sources and the engine's lists together: when the
    /// engine has no room, neither changes.
    fn update_lists(&self, change: impl FnOnce(&mut ListSources)) -> anyhow::Result<()> {
        let mut sources = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = sources.clone();
        change(&mut next);
        let mut deny = next.deny.clone();
        deny.extend_from_slice(&next.external_deny);
        deny.sort_unstable();
        deny.dedup();
        self.apply_lists(&next.allow, &deny)?;
        *sources = next;
        Ok(())
    }

    /// Replaces the config entries of both lists, keeping the manual ones.
    ///
    /// The new sets are built beside the live ones, outside the engine lock
    /// (a full list takes a millisecond or more, while every accept would
    /// wait); under the lock the manual entries are checked to be those
    /// the build started from, and the sets are swapped in whole. Should an
    /// operator have changed a manual entry meanwhile, the build is redone.
    fn apply_lists(&self, allow: &[Cidr], deny: &[Cidr]) -> anyhow::Result<()> {
        type Set = CidrSet<Box<[CidrEntry]>>;
        fn manual(set: &Set) -> Vec<Cidr> {
            set.iter()
                .filter(|e| e.origin() == Origin::Manual)
                .map(|e| e.cidr())
                .collect()
        }
        fn build(
            name: &str,
            capacity: usize,
            manual: &[Cidr],
            list: &[Cidr],
        ) -> anyhow::Result<Set> {
            let room = capacity.saturating_sub(manual.len());
            // Refused before any work when the count alone says so; the
            // build refuses the rest (lists with repeats) as soon as known.
            let too_many = || {
                anyhow::anyhow!(
                    "[lists] {name}: {} prefixes but the table has room for {room} (besides entries added at run time)",
                    list.len()
                )
            };
            if list.len() > room {
                return Err(too_many());
            }
            let items = manual
                .iter()
                .map(|&c| (c, Origin::Manual))
                .chain(list.iter().map(|&c| (c, Origin::Config)));
            CidrSet::build(vec![CidrEntry::EMPTY; capacity].into_boxed_slice(), items)
                .map_err(|_| too_many())
        }
        for _ in 0..3 {
            let (capacity, manual_allow, manual_deny) = self.with(|e, _| {
                (
                    (e.allowlist().capacity(), e.denylist().capacity()),
                    manual(e.allowlist()),
                    manual(e.denylist()),
                )
            });
            let mut next_allow = build("allow", capacity.0, &manual_allow, allow)?;
            let mut next_deny = build("deny", capacity.1, &manual_deny, deny)?;
            let swapped = self.with(|e, _| {
                if manual(e.allowlist()) != manual_allow || manual(e.denylist()) != manual_deny {
                    return false;
                }
                std::mem::swap(e.allow_mut(), &mut next_allow);
                std::mem::swap(e.deny_mut(), &mut next_deny);
                true
            });
            // The replaced sets are freed here, outside the lock.
            drop((next_allow, next_deny));
            if swapped {
                return Ok(());
            }
        }
        anyhow::bail!("[lists] the run-time entries kept changing during the reload; try again")
    }

    /// Drives the engine's timers until the process ends. Call once.
    pub async fn drive(self: Arc<Self>) {
        loop {
            let next = self.locked(|engine, now| {
                if engine.poll_timeout().is_some_and(|t| t <= now) {
                    engine.handle_timeout(now);
                }
                engine.poll_timeout()
            });
            self.driver_wakes_at
                .store(next.map_or(u64::MAX, |t| t.as_millis()), Ordering::Relaxed);
            let sleep = match next {
                Some(t) => {
                    Duration::from_millis(t.as_millis().saturating_sub(self.now().as_millis()))
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// An admitted connection.
pub struct Admitted {
    /// Its id for the engine.
    pub id: ConnectionId,
    /// Fires when the engine times out its handshake (slowloris).
    pub timed_out: oneshot::Receiver<()>,
}
