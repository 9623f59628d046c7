//! The engine: one entry point for every decision.
//!
//! Its methods sort as quinn-proto's `Connection` does: getters on `&self`;
//! `handle_*` for what happened in the world; commands from the operator
//! (block, unblock, lists, pins); and `poll_*` for what the runtime must do
//! next, called after every handler until they return `None`.

use core::net::IpAddr;
use core::time::Duration;

use heapless::Deque;

use crate::addr::{map_ip, ClientKey};
use crate::cidr::{Cidr, CidrSet, Origin};
use crate::event::{
    BlockCause, ConnectionId, Event, HandshakeOutcome, RejectReason, UnblockCause, Verdict,
};
use crate::pins::{Pin, PinKind, PinSet, PinSetError, PinVerdict};
use crate::policy::{Policy, PolicyError};
use crate::snapshot::{self, Section, SnapshotError};
use crate::storage::{Storage, Tables};
use crate::table::{ClientIndex, ClientSlot, ConnSlot, ConnState, Idle, NIL};
use crate::time::duration_millis;
use crate::wheel::TimerWheel;
use crate::Instant;

/// Events the queue holds before it drops new ones (and counts them). The
/// runtime drains after every handler, so this only has to absorb the events
/// of one call; timer work stops early rather than overflow it.
pub const EVENT_CAPACITY: usize = 256;

/// The most events one timer expiry can emit (unblock, detection, block).
const EVENTS_PER_EXPIRY: usize = 3;

/// Randomness handed in by the runtime at construction: the core has none of
/// its own, which keeps every run reproducible from its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    /// SipHash key of the client table. Must be secret and random per boot,
    /// or an attacker can choose addresses that share one hash chain.
    pub hash_key: [u8; 16],
    /// Seeds the block-duration jitter, so unban moments are unpredictable.
    pub jitter: u64,
}

/// Counters for metrics. All monotonic except where noted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections admitted.
    pub accepted: u64,
    /// Connections refused, indexed by [`RejectReason`] as `usize`.
    pub rejected: [u64; 8],
    /// Handshakes judged, indexed by [`HandshakeOutcome`] as `usize`.
    pub handshakes: [u64; 4],
    /// Idle clients evicted to make room for new ones.
    pub evictions: u64,
    /// Blocks started (automatic and manual).
    pub blocks: u64,
    /// Blocks ended (expired or lifted).
    pub unblocks: u64,
    /// Scanners detected.
    pub scanners: u64,
    /// Replays detected.
    pub replays: u64,
    /// Slowloris clients detected.
    pub slowloris: u64,
    /// Times under-attack mode switched on.
    pub attacks: u64,
    /// Events dropped because the runtime did not drain the queue.
    pub events_dropped: u64,
    /// Handler calls with a connection id that is not (or no longer) live.
    pub stale_connection_ids: u64,
    /// Certificate chains that matched no pin.
    pub pin_failures: u64,
}

/// A command that could not be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The client table is full of clients that cannot be evicted.
    ClientTableFull,
    /// The address is allowlisted; the allowlist takes precedence over
    /// blocks, so blocking it would have no effect.
    Allowlisted,
}

impl core::fmt::Display for CommandError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CommandError::ClientTableFull => {
                "the client table is full of clients with live connections or active blocks"
            }
            CommandError::Allowlisted => {
                "the address is allowlisted, and the allowlist takes precedence over blocks"
            }
        })
    }
}

/// The connection id is not live: it was closed already, or never issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownConnection;

/// One client as seen by [`SecurityManager::client_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's key (its address, or its IPv6 prefix).
    pub client: ClientKey,
    /// Connections it holds now.
    pub live_connections: u16,
    /// Whether it is blocked.
    pub blocked: bool,
    /// Automatic blocks it has earned and that are still remembered.
    pub offences: u8,
}

/// A block as listed by [`SecurityManager::blocks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The blocked client.
    pub client: ClientKey,
    /// Why.
    pub cause: BlockCause,
    /// When it ends; `None` until lifted.
    pub until: Option<Instant>,
    /// Automatic blocks this client has earned.
    pub offences: u8,
}

/// Two counts, the previous and the current window, read as a sliding
/// window: `prev * (unelapsed part of the window) + curr`. HAProxy's rate
/// counters work the same way. Chosen over GCRA because the policy is stated
/// as "N per window", which this expresses exactly, and because it costs a
/// few bytes per counter: one window index serves all four counters of a
/// client, where GCRA needs a 64-bit timestamp for each.
fn sliding(prev: u32, curr: u32, into_window_ms: u64, window_ms: u64) -> u32 {
    let rest = window_ms.saturating_sub(into_window_ms);
    let weighted = u64::from(prev) * rest / window_ms;
    (weighted as u32).saturating_add(curr)
}

/// Global counters over one-second windows: admitted connections (for the
/// global rate limit) and attempts (for flood detection).
#[derive(Clone, Copy, Debug, Default)]
struct GlobalRate {
    second: u64,
    admitted: [u32; 2],
    attempts: [u32; 2],
}

impl GlobalRate {
    fn roll(&mut self, now: Instant) {
        let second = now.as_millis() / 1000;
        if second == self.second {
            return;
        }
        if second == self.second + 1 {
            self.admitted = [self.admitted[1], 0];
            self.attempts = [self.attempts[1], 0];
        } else {
            self.admitted = [0; 2];
            self.attempts = [0; 2];
        }
        self.second = second;
    }
    fn admitted(&self, now: Instant) -> u32 {
        sliding(
            self.admitted[0],
            self.admitted[1],
            now.as_millis() % 1000,
            1000,
        )
    }
    fn attempts(&self, now: Instant) -> u32 {
        sliding(
            self.attempts[0],
            self.attempts[1],
            now.as_millis() % 1000,
            1000,
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Attack {
    active: bool,
    calm_since: Option<Instant>,
    next_check: Instant,
}

/// The security engine. See the crate documentation for how a runtime
/// drives it.
pub struct SecurityManager<S: Storage> {
    policy: Policy,
    clients: S::Clients,
    buckets: S::Buckets,
    index: ClientIndex,
    client_timers: TimerWheel,
    connections: S::Connections,
    conn_free: u32,
    conn_live: u32,
    conn_timers: TimerWheel,
    allow: CidrSet<S::Prefixes>,
    deny: CidrSet<S::Prefixes>,
    pins: PinSet,
    events: Deque<Event, EVENT_CAPACITY>,
    stats: Stats,
    rng: u64,
    global: GlobalRate,
    attack: Attack,
    table_full_reported: bool,
    blocked: u32,
    generation: u64,
    now: Instant,
}

/// Why the tables handed to [`SecurityManager::new`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TablesError {
    /// A table has no room at all.
    Empty(&'static str),
    /// `buckets` must be as long as `clients`.
    BucketsMismatch,
    /// More than `u32::MAX - 1` slots: indices are 32-bit.
    TooLarge(&'static str),
}

impl<S: Storage> SecurityManager<S> {
    /// An engine over `tables` enforcing `policy`. Time starts at `now`.
    pub fn new(
        mut tables: Tables<S>,
        policy: Policy,
        seed: Seed,
        now: Instant,
    ) -> Result<Self, NewError> {
        policy.validate().map_err(NewError::Policy)?;
        let clients = tables.clients.as_mut();
        let buckets = tables.buckets.as_mut();
        let conns = tables.connections.as_mut();
        if clients.is_empty() {
            return Err(NewError::Tables(TablesError::Empty("clients")));
        }
        if conns.is_empty() {
            return Err(NewError::Tables(TablesError::Empty("connections")));
        }
        if buckets.len() != clients.len() {
            return Err(NewError::Tables(TablesError::BucketsMismatch));
        }
        if clients.len() >= NIL as usize {
            return Err(NewError::Tables(TablesError::TooLarge("clients")));
        }
        if conns.len() >= NIL as usize {
            return Err(NewError::Tables(TablesError::TooLarge("connections")));
        }
        let k0 = u64::from_le_bytes(seed.hash_key[..8].try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(seed.hash_key[8..].try_into().unwrap_or([0; 8]));
        let index = ClientIndex::new(clients, buckets, (k0, k1));
        let n = conns.len();
        for (i, c) in conns.iter_mut().enumerate() {
            *c = ConnSlot::EMPTY;
            c.client = if i + 1 < n { (i + 1) as u32 } else { NIL };
        }
        let mut client_timers = TimerWheel::new();
        let mut conn_timers = TimerWheel::new();
        // Advance the empty wheels to `now` so deadlines are measured from
        // the runtime's epoch without a first cascade from zero.
        client_timers.poll_expired::<ClientSlot>(&mut [], now);
        conn_timers.poll_expired::<ConnSlot>(&mut [], now);
        Ok(SecurityManager {
            policy,
            clients: tables.clients,
            buckets: tables.buckets,
            index,
            client_timers,
            connections: tables.connections,
            conn_free: 0,
            conn_live: 0,
            conn_timers,
            allow: CidrSet::new(tables.allow),
            deny: CidrSet::new(tables.deny),
            pins: PinSet::new(),
            events: Deque::new(),
            stats: Stats::default(),
            rng: seed.jitter,
            global: GlobalRate::default(),
            attack: Attack::default(),
            table_full_reported: false,
            blocked: 0,
            generation: 0,
            now,
        })
    }

    // ----- getters -----

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections admitted and not yet closed.
    pub fn active_connections(&self) -> u32 {
        self.conn_live
    }

    /// Clients currently tracked in the client table.
    pub fn tracked_clients(&self) -> u32 {
        self.index.len()
    }

    /// Clients currently blocked.
    pub fn blocked_clients(&self) -> u32 {
        self.blocked
    }

    /// Capacity of the client table.
    pub fn client_capacity(&self) -> usize {
        self.clients.as_ref().len()
    }

    /// Capacity of the connection table.
    pub fn connection_capacity(&self) -> usize {
        self.connections.as_ref().len()
    }

    /// Whether under-attack mode is on.
    pub fn under_attack(&self) -> bool {
        self.attack.active
    }

    /// Grows by one with every change to what a snapshot would contain
    /// (blocks, offences, manual lists, pins): a runtime saves state when it
    /// differs from the value at its last save.
    pub fn state_generation(&self) -> u64 {
        self.generation
    }

    /// The client key `ip` is accounted under (IPv6 aggregated to the
    /// policy's prefix).
    pub fn client_key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::new(ip, self.policy.ipv6_prefix)
    }

    /// Whether `ip` would be refused as blocked or denylisted right now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let bits = map_ip(ip);
        if self.allow.contains_bits(bits) {
            return false;
        }
        if self.deny.contains_bits(bits) {
            return true;
        }
        let key = self.client_key(ip).bits();
        self.index
            .find(self.clients.as_ref(), self.buckets.as_ref(), key)
            .is_some_and(|i| self.clients.as_ref()[i as usize].blocked())
    }

    /// What the engine knows about the client `ip` belongs to; `None` when
    /// it is not tracked.
    pub fn client_info(&self, ip: IpAddr) -> Option<ClientInfo> {
        let key = self.client_key(ip).bits();
        let i = self
            .index
            .find(self.clients.as_ref(), self.buckets.as_ref(), key)?;
        let s = &self.clients.as_ref()[i as usize];
        Some(ClientInfo {
            client: ClientKey::from_bits(s.key),
            live_connections: s.live,
            blocked: s.blocked(),
            offences: s.offences,
        })
    }

    /// Every active block, in table order.
    pub fn blocks(&self) -> impl Iterator<Item = BlockInfo> + '_ {
        self.clients
            .as_ref()
            .iter()
            .filter(|s| s.occupied() && s.blocked())
            .map(|s| BlockInfo {
                client: ClientKey::from_bits(s.key),
                cause: BlockCause::from_bits(s.cause_bits()).unwrap_or(BlockCause::Manual),
                until: if s.permanent() {
                    None
                } else {
                    s.timer.deadline()
                },
                offences: s.offences,
            })
    }

    /// Length of the hash chain `ip`'s client key falls into. Exposed for
    /// the hash-flooding tests and benchmarks: with a keyed hash it stays
    /// short whatever addresses an attacker picks.
    #[doc(hidden)]
    pub fn chain_len(&self, ip: IpAddr) -> usize {
        let key = self.client_key(ip).bits();
        self.index
            .chain_len(self.clients.as_ref(), self.buckets.as_ref(), key)
    }

    // ----- poll -----

    /// When [`SecurityManager::handle_timeout`] must next be called; `None`
    /// when nothing is pending. May be earlier than strictly needed, never
    /// later.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.client_timers.next_deadline();
        for t in [
            self.conn_timers.next_deadline(),
            self.attack.active.then_some(self.attack.next_check),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- handle -----

    /// A client at `ip` has just connected. Decide before reading a byte.
    pub fn handle_connect(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        let now = self.advance(now);
        self.global.roll(now);
        self.global.attempts[1] = self.global.attempts[1].saturating_add(1);
        self.check_attack(now);
        let bits = map_ip(ip);
        if self.allow.contains_bits(bits) {
            return self.open_connection(now, NIL);
        }
        if self.deny.contains_bits(bits) {
            return self.reject(RejectReason::Denylisted);
        }
        let key = ClientKey::new(ip, self.policy.ipv6_prefix).bits();
        let bucket = self.index.bucket(key, self.buckets.as_ref().len());
        let found = self
            .index
            .find_at(self.clients.as_ref(), self.buckets.as_ref(), bucket, key);
        if let Some(i) = found {
            if self.clients.as_ref()[i as usize].blocked() {
                return self.reject(RejectReason::Blocked);
            }
        }
        let global_max = self
            .policy
            .global_max_connections
            .min(self.connections.as_ref().len() as u32);
        if self.conn_live >= global_max {
            return self.reject(RejectReason::GlobalConnectionLimit);
        }
        if self.global.admitted(now) >= self.policy.global_max_new_per_second {
            return self.reject(RejectReason::GlobalRateLimit);
        }
        let i = match found {
            Some(i) => i,
            None => match self.insert_client(key, bucket) {
                Some(i) => i,
                None => return self.reject(RejectReason::ClientTableFull),
            },
        };
        let (max_conns, max_new) = self.client_limits();
        let window = self.window_index(now);
        let into = self.offset_in_window(now);
        let window_ms = self.window_ms();
        let slot = &mut self.clients.as_mut()[i as usize];
        slot.roll(window);
        let opened = sliding(
            u32::from(slot.opened[0]),
            u32::from(slot.opened[1]),
            into,
            window_ms,
        );
        let live = slot.live;
        if live >= max_conns {
            return self.violation(now, i, RejectReason::TooManyConnections);
        }
        if opened >= u32::from(max_new) {
            return self.violation(now, i, RejectReason::RateLimited);
        }
        let verdict = self.open_connection(now, i);
        if let Verdict::Admit(_) = verdict {
            let slot = &mut self.clients.as_mut()[i as usize];
            slot.opened[1] = slot.opened[1].saturating_add(1);
            slot.live += 1;
            if slot.live == 1 {
                self.index.unlink_idle(self.clients.as_mut(), i);
                self.client_timers.cancel(self.clients.as_mut(), i);
            }
        } else {
            self.make_idle_if_idle(now, i);
        }
        verdict
    }

    /// The runtime judged the first bytes of `conn`. Only the first judgement
    /// of a connection counts.
    pub fn handle_handshake(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        outcome: HandshakeOutcome,
    ) -> Result<(), UnknownConnection> {
        let now = self.advance(now);
        let c = self.live_connection(conn)?;
        let slot = self.connections.as_ref()[c as usize];
        if slot.state != ConnState::Handshaking {
            return Ok(());
        }
        self.conn_timers.cancel(self.connections.as_mut(), c);
        self.connections.as_mut()[c as usize].state = ConnState::Established;
        self.judge(now, slot, outcome);
        Ok(())
    }

    /// `conn` has closed (for any reason, including after a rejection of its
    /// handshake or a [`Event::HandshakeTimeout`]).
    pub fn handle_close(
        &mut self,
        now: Instant,
        conn: ConnectionId,
    ) -> Result<(), UnknownConnection> {
        let now = self.advance(now);
        let c = self.live_connection(conn)?;
        self.conn_timers.cancel(self.connections.as_mut(), c);
        let client = {
            let slot = &mut self.connections.as_mut()[c as usize];
            let client = slot.client;
            slot.state = ConnState::Free;
            slot.client = self.conn_free;
            client
        };
        self.conn_free = c;
        self.conn_live -= 1;
        if client != NIL {
            let slot = &mut self.clients.as_mut()[client as usize];
            slot.live = slot.live.saturating_sub(1);
            self.make_idle_if_idle(now, client);
        }
        Ok(())
    }

    /// Does the work that is due: ends blocks, forgets idle clients, times
    /// out handshakes, re-evaluates under-attack mode.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        while self.events.len() + EVENTS_PER_EXPIRY <= EVENT_CAPACITY {
            let Some(i) = self.client_timers.poll_expired(self.clients.as_mut(), now) else {
                break;
            };
            self.client_timer_fired(now, i);
        }
        while self.events.len() + EVENTS_PER_EXPIRY <= EVENT_CAPACITY {
            let Some(c) = self
                .conn_timers
                .poll_expired(self.connections.as_mut(), now)
            else {
                break;
            };
            self.connection_timer_fired(now, c);
        }
        if self.attack.active && now >= self.attack.next_check {
            self.global.roll(now);
            self.check_attack(now);
        }
    }

    // ----- operator commands -----

    /// Replaces the policy (a configuration reload). The IPv6 prefix cannot
    /// change while clients are tracked under the old one.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), PolicyError> {
        policy.validate()?;
        if policy.ipv6_prefix != self.policy.ipv6_prefix {
            return Err(PolicyError {
                field: "ipv6_prefix",
                problem: "cannot change while running; restart to apply",
            });
        }
        self.policy = policy;
        Ok(())
    }

    /// Blocks the client `ip` belongs to, for `duration` (`None`: until
    /// unblocked). Replaces any block it already has.
    pub fn block(
        &mut self,
        now: Instant,
        ip: IpAddr,
        duration: Option<Duration>,
        cause: BlockCause,
    ) -> Result<(), CommandError> {
        if self.allow.contains_bits(map_ip(ip)) {
            return Err(CommandError::Allowlisted);
        }
        let key = self.client_key(ip);
        self.block_key(now, key, duration, cause)
    }

    /// Blocks a client by its key (as listed by [`SecurityManager::blocks`]).
    pub fn block_key(
        &mut self,
        now: Instant,
        key: ClientKey,
        duration: Option<Duration>,
        cause: BlockCause,
    ) -> Result<(), CommandError> {
        let now = self.advance(now);
        let bucket = self.index.bucket(key.bits(), self.buckets.as_ref().len());
        let i = match self.index.find_at(
            self.clients.as_ref(),
            self.buckets.as_ref(),
            bucket,
            key.bits(),
        ) {
            Some(i) => i,
            None => self
                .insert_client(key.bits(), bucket)
                .ok_or(CommandError::ClientTableFull)?,
        };
        let until = duration.map(|d| now.saturating_add(d));
        self.start_block(i, until, cause);
        Ok(())
    }

    /// Lifts the block of the client `ip` belongs to. Its offence history is
    /// kept. Returns whether it was blocked.
    pub fn unblock(&mut self, now: Instant, ip: IpAddr) -> bool {
        let key = self.client_key(ip);
        self.unblock_key(now, key)
    }

    /// Lifts a block by client key.
    pub fn unblock_key(&mut self, now: Instant, key: ClientKey) -> bool {
        let now = self.advance(now);
        let Some(i) = self
            .index
            .find(self.clients.as_ref(), self.buckets.as_ref(), key.bits())
        else {
            return false;
        };
        if !self.clients.as_ref()[i as usize].blocked() {
            return false;
        }
        self.end_block(now, i, UnblockCause::Manual);
        true
    }

    /// The allowlist: addresses on it are never limited or blocked. It
    /// takes precedence over the denylist and over blocks.
    pub fn allowlist(&self) -> &CidrSet<S::Prefixes> {
        &self.allow
    }

    /// The denylist: addresses on it are always refused.
    pub fn denylist(&self) -> &CidrSet<S::Prefixes> {
        &self.deny
    }

    /// Edits the allowlist. Counts as a change of persistent state.
    pub fn allow_mut(&mut self) -> &mut CidrSet<S::Prefixes> {
        self.generation += 1;
        &mut self.allow
    }

    /// Edits the denylist. Counts as a change of persistent state.
    pub fn deny_mut(&mut self) -> &mut CidrSet<S::Prefixes> {
        self.generation += 1;
        &mut self.deny
    }

    // ----- pins -----

    /// The certificate pins upstream TLS connections are checked against.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// Adds a pin; the 101st is refused with [`PinSetError::Full`].
    pub fn add_pin(&mut self, pin: Pin) -> Result<(), PinSetError> {
        self.pins.add(pin)?;
        self.generation += 1;
        Ok(())
    }

    /// Removes a pin; returns it if it was there.
    pub fn remove_pin(&mut self, kind: PinKind, hash: &[u8; 32]) -> Option<Pin> {
        let removed = self.pins.remove(kind, hash);
        if removed.is_some() {
            self.generation += 1;
        }
        removed
    }

    /// Checks a presented chain (DER, leaf first) against the pins at Unix
    /// time `now_unix`. Anything but a match is counted and emitted as
    /// [`Event::PinMismatch`]; what to do about an empty or expired set is
    /// the caller's policy.
    pub fn verify_chain(&mut self, chain: &[&[u8]], now_unix: u64) -> PinVerdict {
        let verdict = self.pins.verify(chain, now_unix);
        if !verdict.is_match() {
            self.stats.pin_failures += 1;
            self.emit(Event::PinMismatch);
        }
        verdict
    }

    // ----- persistence -----

    fn persistent_clients(&self) -> impl Iterator<Item = &ClientSlot> + '_ {
        self.clients
            .as_ref()
            .iter()
            .filter(|s| s.occupied() && (s.blocked() || s.offences > 0))
    }

    fn manual_prefixes(set: &CidrSet<S::Prefixes>) -> impl Iterator<Item = Cidr> + '_ {
        set.iter()
            .filter(|e| e.origin() == Origin::Manual)
            .map(|e| e.cidr())
    }

    /// Exact size of the snapshot [`SecurityManager::write_snapshot`] would
    /// write now.
    pub fn snapshot_len(&self) -> usize {
        use snapshot::*;
        let pins: usize = self
            .pins
            .iter()
            .map(|p| PIN_RECORD_FIXED + p.label().len())
            .sum();
        HEADER_LEN
            + 4 * SECTION_HEADER
            + self.persistent_clients().count() * CLIENT_RECORD
            + (Self::manual_prefixes(&self.allow).count()
                + Self::manual_prefixes(&self.deny).count())
                * PREFIX_RECORD
            + pins
            + CHECKSUM_LEN
    }

    /// Writes everything that must survive a restart (blocks with their
    /// remaining time, offence history, manual list entries, pins) into
    /// `out`; returns the length written. See [`crate::snapshot`] for the
    /// format.
    pub fn write_snapshot(&self, now: Instant, out: &mut [u8]) -> Result<usize, SnapshotError> {
        let needed = self.snapshot_len();
        if out.len() < needed {
            return Err(SnapshotError::BufferTooSmall { needed });
        }
        let now = now.max(self.now);
        let mut w = snapshot::Writer::new(&mut out[..needed]);
        w.header((needed - snapshot::HEADER_LEN - snapshot::CHECKSUM_LEN) as u32);
        w.u8(Section::Clients as u8);
        w.u32(self.persistent_clients().count() as u32);
        let memory = duration_millis(self.policy.offence_memory);
        for s in self.persistent_clients() {
            let remaining = match s.timer.deadline() {
                _ if s.permanent() => 0,
                Some(t) => t.as_millis().saturating_sub(now.as_millis()),
                // A busy offender has no idle timer yet: its memory starts
                // when it goes idle.
                None => memory,
            };
            let state =
                u8::from(s.blocked()) | (u8::from(s.permanent()) << 1) | (s.cause_bits() << 2);
            w.u128(s.key);
            w.u8(if s.blocked() { state } else { 0 });
            w.u8(s.offences);
            w.u64(remaining);
        }
        for (section, set) in [(Section::Allow, &self.allow), (Section::Deny, &self.deny)] {
            w.u8(section as u8);
            w.u32(Self::manual_prefixes(set).count() as u32);
            for c in Self::manual_prefixes(set) {
                w.u128(c.network_bits());
                w.u8(c.mapped_len());
            }
        }
        w.u8(Section::Pins as u8);
        w.u32(self.pins.len() as u32);
        for p in self.pins.iter() {
            w.u8(match p.kind() {
                PinKind::Spki => 0,
                PinKind::Certificate => 1,
            });
            w.bytes(p.hash());
            w.u64(p.expires().unwrap_or(u64::MAX));
            w.u8(p.label().len() as u8);
            w.bytes(p.label().as_bytes());
        }
        Ok(w.finish())
    }

    /// Replaces the persistent state with a snapshot's. The whole input is
    /// validated first: on any error nothing changes. Needs an engine with no
    /// live connection (restore at start, before serving).
    pub fn restore(&mut self, now: Instant, data: &[u8]) -> Result<Restored, SnapshotError> {
        if self.conn_live != 0 {
            return Err(SnapshotError::Busy);
        }
        let now = self.advance(now);
        let body = snapshot::Reader::open(data)?;
        // Pass 1: validate everything without changing anything.
        let counts = self.validate_snapshot(body.clone())?;
        // Pass 2: apply. Every check that could fail has been made.
        let mut r = body;
        self.index = ClientIndex::new(
            self.clients.as_mut(),
            self.buckets.as_mut(),
            self.index.hash_key(),
        );
        self.client_timers = TimerWheel::new();
        self.client_timers.poll_expired::<ClientSlot>(&mut [], now);
        self.blocked = 0;
        self.allow.remove_origin(Origin::Manual);
        self.deny.remove_origin(Origin::Manual);
        self.pins.clear();
        let n = r.section(Section::Clients)?;
        for _ in 0..n {
            let key = r.u128(Section::Clients)?;
            let state = r.u8(Section::Clients)?;
            let offences = r.u8(Section::Clients)?;
            let remaining = Duration::from_millis(r.u64(Section::Clients)?);
            let i = match self
                .index
                .find(self.clients.as_ref(), self.buckets.as_ref(), key)
            {
                Some(i) => i,
                None => self
                    .index
                    .insert(self.clients.as_mut(), self.buckets.as_mut(), key)
                    .ok_or(SnapshotError::TooMany {
                        section: Section::Clients,
                        count: n,
                        capacity: self.clients.as_ref().len(),
                    })?,
            };
            self.clients.as_mut()[i as usize].offences = offences;
            if state & 1 != 0 {
                let cause = BlockCause::from_bits(state >> 2).unwrap_or(BlockCause::Manual);
                let until = (state & 2 == 0).then(|| now.saturating_add(remaining));
                let slot = &mut self.clients.as_mut()[i as usize];
                if !slot.blocked() {
                    self.blocked += 1;
                }
                slot.set_block(until.is_none(), cause as u8);
                match until {
                    Some(t) => self.client_timers.schedule(self.clients.as_mut(), i, t),
                    None => {
                        self.client_timers.cancel(self.clients.as_mut(), i);
                    }
                }
                self.index.unlink_idle(self.clients.as_mut(), i);
            } else {
                if self.clients.as_ref()[i as usize].blocked() {
                    self.clients.as_mut()[i as usize].clear_block();
                    self.blocked -= 1;
                }
                self.index
                    .touch_idle(self.clients.as_mut(), i, Idle::Offender);
                let keep = remaining.min(self.policy.offence_memory);
                self.client_timers
                    .schedule(self.clients.as_mut(), i, now.saturating_add(keep));
            }
        }
        for section in [Section::Allow, Section::Deny] {
            let n = r.section(section)?;
            for _ in 0..n {
                let bits = r.u128(section)?;
                let len = r.u8(section)?;
                if let Ok(c) = Cidr::from_mapped(bits, len) {
                    let set = if section == Section::Allow {
                        &mut self.allow
                    } else {
                        &mut self.deny
                    };
                    // Room was checked in pass 1.
                    let _ = set.insert(c, Origin::Manual);
                }
            }
        }
        let n = r.section(Section::Pins)?;
        for _ in 0..n {
            // Duplicates are harmless; room was checked in pass 1.
            let _ = self.pins.add(read_pin(&mut r, 0)?);
        }
        self.generation += 1;
        Ok(counts)
    }

    fn validate_snapshot(&self, mut r: snapshot::Reader<'_>) -> Result<Restored, SnapshotError> {
        let bad = |section, index, problem| SnapshotError::BadRecord {
            section,
            index,
            problem,
        };
        let n = r.section(Section::Clients)?;
        if n as usize > self.clients.as_ref().len() {
            return Err(SnapshotError::TooMany {
                section: Section::Clients,
                count: n,
                capacity: self.clients.as_ref().len(),
            });
        }
        let clients = n;
        let mut blocks = 0;
        for i in 0..n {
            r.u128(Section::Clients)?;
            let state = r.u8(Section::Clients)?;
            let offences = r.u8(Section::Clients)?;
            r.u64(Section::Clients)?;
            if state >> 5 != 0 || BlockCause::from_bits((state >> 2) & 7).is_none() {
                return Err(bad(
                    Section::Clients,
                    i,
                    "unknown state bits or block cause",
                ));
            }
            if state & 1 == 0 && state != 0 {
                return Err(bad(
                    Section::Clients,
                    i,
                    "block details on a client that is not blocked",
                ));
            }
            if state & 1 == 0 && offences == 0 {
                return Err(bad(Section::Clients, i, "neither blocked nor an offender"));
            }
            blocks += u32::from(state & 1);
        }
        let mut prefixes = [0u32; 2];
        for (k, (section, set)) in [(Section::Allow, &self.allow), (Section::Deny, &self.deny)]
            .into_iter()
            .enumerate()
        {
            let n = r.section(section)?;
            let room = set.capacity() - (set.len() - Self::manual_prefixes(set).count());
            if n as usize > room {
                return Err(SnapshotError::TooMany {
                    section,
                    count: n,
                    capacity: room,
                });
            }
            for i in 0..n {
                let bits = r.u128(section)?;
                let len = r.u8(section)?;
                Cidr::from_mapped(bits, len).map_err(|_| {
                    bad(section, i, "not a valid prefix (length, or host bits set)")
                })?;
            }
            prefixes[k] = n;
        }
        let n = r.section(Section::Pins)?;
        if n as usize > self.pins.capacity() {
            return Err(SnapshotError::TooMany {
                section: Section::Pins,
                count: n,
                capacity: self.pins.capacity(),
            });
        }
        for i in 0..n {
            read_pin(&mut r, i)?;
        }
        if !r.is_empty() {
            return Err(SnapshotError::TrailingBytes);
        }
        Ok(Restored {
            clients,
            blocks,
            allow: prefixes[0],
            deny: prefixes[1],
            pins: n,
        })
    }

    // ----- internals -----

    fn advance(&mut self, now: Instant) -> Instant {
        // A clock that steps back must not re-open windows or shorten blocks.
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn window_ms(&self) -> u64 {
        duration_millis(self.policy.rate_window).max(1)
    }

    fn window_index(&self, now: Instant) -> u32 {
        (now.as_millis() / self.window_ms()) as u32
    }

    fn offset_in_window(&self, now: Instant) -> u64 {
        now.as_millis() % self.window_ms()
    }

    fn client_limits(&self) -> (u16, u16) {
        let p = &self.policy;
        if !self.attack.active {
            return (
                p.max_connections_per_client,
                p.max_new_connections_per_window,
            );
        }
        let scale = |v: u16| -> u16 {
            let scaled = u32::from(v) * u32::from(p.attack_limit_percent) / 100;
            (scaled as u16).max(1)
        };
        (
            scale(p.max_connections_per_client),
            scale(p.max_new_connections_per_window),
        )
    }

    fn emit(&mut self, event: Event) {
        if self.events.push_back(event).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    fn reject(&mut self, reason: RejectReason) -> Verdict {
        self.stats.rejected[reason as usize] += 1;
        Verdict::Reject(reason)
    }

    /// Takes a slot for a new client whose key falls into `bucket`,
    /// evicting an idle client if the table is full.
    fn insert_client(&mut self, key: u128, bucket: usize) -> Option<u32> {
        if let Some(i) =
            self.index
                .insert_at(self.clients.as_mut(), self.buckets.as_mut(), bucket, key)
        {
            self.table_full_reported = false;
            return Some(i);
        }
        if let Some(victim) = self.index.eviction_candidate() {
            if self.clients.as_ref()[victim as usize].offences > 0 {
                self.generation += 1;
            }
            self.client_timers.cancel(self.clients.as_mut(), victim);
            self.index
                .remove(self.clients.as_mut(), self.buckets.as_mut(), victim);
            self.stats.evictions += 1;
            return self
                .index
                .insert_at(self.clients.as_mut(), self.buckets.as_mut(), bucket, key);
        }
        if !self.table_full_reported {
            self.table_full_reported = true;
            self.emit(Event::ClientTableFull);
        }
        None
    }

    fn open_connection(&mut self, now: Instant, client: u32) -> Verdict {
        let c = self.conn_free;
        if c == NIL {
            return self.reject(RejectReason::ConnectionTableFull);
        }
        let deadline = self.policy.handshake_timeout.map(|t| now.saturating_add(t));
        let epoch = match self.clients.as_ref().get(client as usize) {
            Some(s) => s.epoch,
            None => 0,
        };
        let slot = &mut self.connections.as_mut()[c as usize];
        self.conn_free = slot.client;
        slot.client = client;
        slot.epoch = epoch;
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = ConnState::Handshaking;
        let id = ConnectionId::new(c, slot.generation);
        if let Some(deadline) = deadline {
            self.conn_timers
                .schedule(self.connections.as_mut(), c, deadline);
        }
        self.conn_live += 1;
        self.global.admitted[1] = self.global.admitted[1].saturating_add(1);
        self.stats.accepted += 1;
        Verdict::Admit(id)
    }

    fn live_connection(&mut self, conn: ConnectionId) -> Result<u32, UnknownConnection> {
        let c = conn.index();
        match self.connections.as_ref().get(c as usize) {
            Some(s) if s.state != ConnState::Free && s.generation == conn.generation() => Ok(c),
            _ => {
                self.stats.stale_connection_ids += 1;
                Err(UnknownConnection)
            }
        }
    }

    /// A client that holds no connection and no block goes on its idle list
    /// (most recently seen end) with a timer to forget it.
    fn make_idle_if_idle(&mut self, now: Instant, i: u32) {
        let slot = self.clients.as_ref()[i as usize];
        if slot.live > 0 || slot.blocked() {
            return;
        }
        let (list, keep) = if slot.offences > 0 {
            (Idle::Offender, self.policy.offence_memory)
        } else {
            // After two windows the sliding counters read zero: nothing is
            // left to remember about a clean client.
            (Idle::Clean, self.policy.rate_window * 2)
        };
        self.index.touch_idle(self.clients.as_mut(), i, list);
        self.client_timers
            .schedule(self.clients.as_mut(), i, now.saturating_add(keep));
    }

    fn violation(&mut self, now: Instant, i: u32, reason: RejectReason) -> Verdict {
        let window_ms = self.window_ms();
        let into = self.offset_in_window(now);
        let slot = &mut self.clients.as_mut()[i as usize];
        slot.violations[1] = slot.violations[1].saturating_add(1);
        let count = sliding(
            u32::from(slot.violations[0]),
            u32::from(slot.violations[1]),
            into,
            window_ms,
        );
        if self.policy.ip_blocking && count >= u32::from(self.policy.block_after_violations) {
            self.auto_block(now, i, BlockCause::Violations);
        } else {
            self.make_idle_if_idle(now, i);
        }
        self.reject(reason)
    }

    /// Counts the outcome of `conn`'s handshake against its client.
    ///
    /// A connection admitted before its client's latest block (see
    /// [`ClientSlot::epoch`]) is still counted in the statistics and its
    /// replay still reported, but it adds nothing to the client's failures
    /// and earns no offence: its burst has been punished already, and a
    /// blocked client admits no new connection, so every connection judged
    /// during a block is one of these. Without this rule one burst of 30
    /// failures (one office behind NAT, one broken app) counted 21 offences
    /// and a block of a day.
    fn judge(&mut self, now: Instant, conn: ConnSlot, outcome: HandshakeOutcome) {
        self.stats.handshakes[outcome as usize] += 1;
        let client = conn.client;
        if client == NIL || outcome == HandshakeOutcome::Valid {
            return;
        }
        let window = self.window_index(now);
        let window_ms = self.window_ms();
        let into = self.offset_in_window(now);
        let owner = self.clients.as_ref()[client as usize];
        let key = ClientKey::from_bits(owner.key);
        let spent = owner.blocked() || owner.epoch != conn.epoch;
        if outcome == HandshakeOutcome::Replay {
            self.stats.replays += 1;
            self.emit(Event::ReplayDetected { client: key });
        }
        if spent {
            return;
        }
        if outcome == HandshakeOutcome::Replay
            && self.policy.block_on_replay
            && self.policy.ip_blocking
        {
            self.auto_block(now, client, BlockCause::Replay);
            return;
        }
        let slot = &mut self.clients.as_mut()[client as usize];
        slot.roll(window);
        let (counter, threshold, cause) = if outcome == HandshakeOutcome::Timeout {
            (
                &mut slot.timeouts,
                self.policy.slowloris_timeouts,
                BlockCause::Slowloris,
            )
        } else {
            (
                &mut slot.failures,
                self.policy.scanner_failures,
                BlockCause::Scanner,
            )
        };
        let before = sliding(
            u32::from(counter[0]),
            u32::from(counter[1]),
            into,
            window_ms,
        );
        counter[1] = counter[1].saturating_add(1);
        let after = sliding(
            u32::from(counter[0]),
            u32::from(counter[1]),
            into,
            window_ms,
        );
        let threshold = u32::from(threshold);
        if before < threshold && after >= threshold {
            if cause == BlockCause::Slowloris {
                self.stats.slowloris += 1;
                self.emit(Event::SlowlorisDetected { client: key });
            } else {
                self.stats.scanners += 1;
                self.emit(Event::ScannerDetected { client: key });
            }
        }
        if after >= threshold && self.policy.ip_blocking {
            self.auto_block(now, client, cause);
        } else {
            self.make_idle_if_idle(now, client);
        }
    }

    /// Blocks a client for its next offence. Its callers see only clients
    /// that are not blocked (a blocked client is refused before any limit
    /// is counted, and [`Self::judge`] skips connections from before a
    /// block); a block, the operator's above all, is left as it is rather
    /// than replaced, so an offence can never shorten one.
    fn auto_block(&mut self, now: Instant, i: u32, cause: BlockCause) {
        if self.clients.as_ref()[i as usize].blocked() {
            return;
        }
        let offences = {
            let slot = &mut self.clients.as_mut()[i as usize];
            slot.offences = slot.offences.saturating_add(1);
            slot.offences
        };
        let until = now.saturating_add(self.escalated(offences));
        self.start_block(i, Some(until), cause);
    }

    /// `block_duration * 2^(offences-1)`, capped, plus jitter.
    fn escalated(&mut self, offences: u8) -> Duration {
        let base = duration_millis(self.policy.block_duration);
        let cap = duration_millis(self.policy.max_block_duration);
        let shift = u32::from(offences.saturating_sub(1)).min(63);
        let ms = base.checked_shl(shift).filter(|v| v >> shift == base);
        let ms = ms.unwrap_or(u64::MAX).min(cap);
        let spread = ms / 1000 * u64::from(self.policy.block_jitter_permille);
        let jitter = if spread == 0 {
            0
        } else {
            self.next_random() % (spread + 1)
        };
        Duration::from_millis(ms.saturating_add(jitter))
    }

    /// SplitMix64: tiny, fast and good enough for jitter; the seed is the
    /// runtime's randomness.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn start_block(&mut self, i: u32, until: Option<Instant>, cause: BlockCause) {
        let was_blocked = self.clients.as_ref()[i as usize].blocked();
        self.index.unlink_idle(self.clients.as_mut(), i);
        self.clients.as_mut()[i as usize].set_block(until.is_none(), cause as u8);
        match until {
            Some(t) => self.client_timers.schedule(self.clients.as_mut(), i, t),
            None => {
                self.client_timers.cancel(self.clients.as_mut(), i);
            }
        }
        if !was_blocked {
            self.blocked += 1;
        }
        self.stats.blocks += 1;
        self.generation += 1;
        let slot = self.clients.as_ref()[i as usize];
        self.emit(Event::Blocked {
            client: ClientKey::from_bits(slot.key),
            cause,
            until,
            offences: slot.offences,
        });
    }

    fn end_block(&mut self, now: Instant, i: u32, cause: UnblockCause) {
        self.client_timers.cancel(self.clients.as_mut(), i);
        self.clients.as_mut()[i as usize].clear_block();
        self.blocked -= 1;
        self.stats.unblocks += 1;
        self.generation += 1;
        let key = ClientKey::from_bits(self.clients.as_ref()[i as usize].key);
        self.emit(Event::Unblocked { client: key, cause });
        self.make_idle_if_idle(now, i);
    }

    fn client_timer_fired(&mut self, now: Instant, i: u32) {
        let slot = self.clients.as_ref()[i as usize];
        if slot.blocked() {
            self.end_block(now, i, UnblockCause::Expired);
        } else if slot.live == 0 {
            if slot.offences > 0 {
                self.generation += 1;
            }
            self.index
                .remove(self.clients.as_mut(), self.buckets.as_mut(), i);
        }
    }

    fn connection_timer_fired(&mut self, now: Instant, c: u32) {
        let slot = self.connections.as_ref()[c as usize];
        if slot.state != ConnState::Handshaking {
            return;
        }
        self.connections.as_mut()[c as usize].state = ConnState::TimedOut;
        self.emit(Event::HandshakeTimeout {
            connection: ConnectionId::new(c, slot.generation),
        });
        self.judge(now, slot, HandshakeOutcome::Timeout);
    }

    fn check_attack(&mut self, now: Instant) {
        let Some(enter) = self.policy.attack_enter_per_second else {
            if self.attack.active {
                self.attack = Attack::default();
                self.emit(Event::AttackOver);
            }
            return;
        };
        let rate = self.global.attempts(now);
        if !self.attack.active {
            if rate >= enter {
                self.attack = Attack {
                    active: true,
                    calm_since: None,
                    next_check: now.saturating_add(Duration::from_secs(1)),
                };
                self.stats.attacks += 1;
                self.emit(Event::UnderAttack {
                    rate_per_second: rate,
                });
            }
            return;
        }
        self.attack.next_check = now.saturating_add(Duration::from_secs(1));
        if rate >= self.policy.attack_exit_per_second {
            self.attack.calm_since = None;
            return;
        }
        let calm_since = *self.attack.calm_since.get_or_insert(now);
        if now.saturating_since(calm_since) >= self.policy.attack_cooldown {
            self.attack = Attack::default();
            self.emit(Event::AttackOver);
        }
    }
}

/// What [`SecurityManager::restore`] brought back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Client records (blocked or with an offence history).
    pub clients: u32,
    /// Of those, blocked.
    pub blocks: u32,
    /// Manual allowlist entries.
    pub allow: u32,
    /// Manual denylist entries.
    pub deny: u32,
    /// Pins.
    pub pins: u32,
}

fn read_pin(r: &mut snapshot::Reader<'_>, index: u32) -> Result<Pin, SnapshotError> {
    let s = Section::Pins;
    let bad = |problem| SnapshotError::BadRecord {
        section: s,
        index,
        problem,
    };
    let kind = match r.u8(s)? {
        0 => PinKind::Spki,
        1 => PinKind::Certificate,
        _ => return Err(bad("unknown pin kind")),
    };
    let mut hash = [0u8; 32];
    hash.copy_from_slice(r.take(32, s)?);
    let expires = r.u64(s)?;
    let label_len = usize::from(r.u8(s)?);
    if label_len > crate::pins::LABEL_MAX {
        return Err(bad("label too long"));
    }
    let label =
        core::str::from_utf8(r.take(label_len, s)?).map_err(|_| bad("label is not UTF-8"))?;
    Pin::new(kind, hash)
        .with_expiry((expires != u64::MAX).then_some(expires))
        .with_label(label)
        .map_err(|_| bad("invalid label"))
}

/// Why [`SecurityManager::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewError {
    /// The policy has an impossible value.
    Policy(PolicyError),
    /// The tables cannot be used.
    Tables(TablesError),
}

impl core::fmt::Display for NewError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NewError::Policy(e) => write!(f, "invalid policy: {e}"),
            NewError::Tables(TablesError::Empty(t)) => write!(f, "the {t} table has no room"),
            NewError::Tables(TablesError::BucketsMismatch) => {
                f.write_str("the bucket table must be as long as the client table")
            }
            NewError::Tables(TablesError::TooLarge(t)) => {
                write!(f, "the {t} table is larger than 32-bit indices allow")
            }
        }
    }
}
