//! The engine: one entry point for every decision.
//!
//! Its methods sort as quinn-proto's `Connection` does: getters on `&self`;
//! `handle_*` for what happened in the world; commands from the operator
//! (block, unblock, lists, pins); and `poll_*` for what the runtime must do
//! next, called after every handler until they return `None`.
//!
//! The type and its entry points live here; each concern adds an `impl`
//! block in a file of its own, as quinn-proto spreads `Connection` over
//! `connection/`: `rate` for the sliding windows and under-attack
//! mode, `judge` for detection, `blocks`, `lists` (lists and pins),
//! `timers` (expiry), `slots` (table slots), `persist` (snapshots) and
//! `networks` (the per-network tier).

use core::net::IpAddr;

use heapless::Deque;

use crate::addr::{map_ip, ClientKey};
use crate::cidr::CidrSet;
use crate::event::{BlockCause, ConnectionId, Event, HandshakeOutcome, RejectReason, Verdict};
use crate::pins::PinSet;
use crate::policy::{Policy, PolicyError};
use crate::storage::{Storage, Tables};
use crate::table::{ClientSlot, ConnSlot, ConnState, SlotIndex, NIL};
use crate::wheel::TimerWheel;
use crate::Instant;

mod blocks;
mod judge;
mod lists;
mod networks;
mod persist;
mod rate;
mod slots;
mod timers;

pub use networks::NetworkInfo;
pub use persist::Restored;
use rate::{shared, sliding, Attack, GlobalRate};

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
    /// SipHash key of the client and network tables. Must be secret and
    /// random per boot,
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
    pub rejected: [u64; RejectReason::ALL.len()],
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
    /// Connections authenticated (their handshake valid for a secret).
    pub authenticated: u64,
    /// Refusals at the authenticated cap, indexed by [`CapRefusal`] as
    /// `usize`. Each is also counted in `rejected` under
    /// [`RejectReason::AuthenticatedLimit`].
    pub authenticated_cap_refusals: [u64; 2],
    /// Idle networks evicted to make room for new ones.
    pub network_evictions: u64,
}

/// Where a client met its authenticated cap
/// ([`Policy::max_authenticated_per_client`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CapRefusal {
    /// A new connection arrived while the client held its cap: refused
    /// before a byte was read.
    Accept = 0,
    /// A connection proved a secret while the cap was full (others got
    /// there first): the runtime closes it.
    Handshake = 1,
}

impl CapRefusal {
    /// Every kind, in counter order.
    pub const ALL: [CapRefusal; 2] = [CapRefusal::Accept, CapRefusal::Handshake];

    /// A stable snake_case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            CapRefusal::Accept => "accept",
            CapRefusal::Handshake => "handshake",
        }
    }
}

/// What the engine says when a connection proves a secret
/// ([`SecurityManager::handle_authenticated`]).
#[must_use = "a Refused connection must be closed"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Authentication {
    /// Serve it; it now counts against the authenticated cap.
    Authenticated,
    /// Close it: its client holds its authenticated cap. Not a violation.
    Refused(RejectReason),
    /// Its handshake was judged already (timed out, or reported before):
    /// nothing changed.
    AlreadyJudged,
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

impl core::error::Error for CommandError {}

/// The connection id is not live: it was closed already, or never issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownConnection;

impl core::fmt::Display for UnknownConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("not a live connection: closed already, or never issued")
    }
}

impl core::error::Error for UnknownConnection {}

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
    /// Of `live_connections`, those authenticated.
    pub authenticated_connections: u16,
    /// Whether it is treated as a shared address (recent valid handshakes or
    /// authenticated connections): refusals at its authenticated cap are no
    /// violations, and failed handshakes mark it a scanner by their share.
    pub shared: bool,
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

/// The security engine. See the crate documentation for how a runtime
/// drives it.
pub struct SecurityManager<S: Storage> {
    policy: Policy,
    clients: S::Clients,
    buckets: S::Buckets,
    index: SlotIndex,
    client_timers: TimerWheel,
    connections: S::Connections,
    conn_free: u32,
    conn_live: u32,
    conn_authed: u32,
    conn_timers: TimerWheel,
    networks: S::Networks,
    net_buckets: S::NetworkBuckets,
    net_index: SlotIndex,
    network_table_full_reported: bool,
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
    /// `buckets` must be as long as `clients`, `network_buckets` as long
    /// as `networks`.
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
        let networks = tables.networks.as_mut();
        let net_buckets = tables.network_buckets.as_mut();
        if networks.is_empty() {
            return Err(NewError::Tables(TablesError::Empty("networks")));
        }
        if net_buckets.len() != networks.len() {
            return Err(NewError::Tables(TablesError::BucketsMismatch));
        }
        if networks.len() >= NIL as usize {
            return Err(NewError::Tables(TablesError::TooLarge("networks")));
        }
        let k0 = u64::from_le_bytes(seed.hash_key[..8].try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(seed.hash_key[8..].try_into().unwrap_or([0; 8]));
        let index = SlotIndex::new(clients, buckets, (k0, k1));
        // The same key as the client table's: both hash addresses, and
        // network keys are never client keys (they sit in another table).
        let net_index = SlotIndex::new(networks, net_buckets, (k0, k1));
        let n = conns.len();
        for (i, c) in conns.iter_mut().enumerate() {
            *c = ConnSlot::EMPTY;
            c.client = if i + 1 < n { (i + 1) as u32 } else { NIL };
        }
        let mut client_timers = TimerWheel::new();
        let mut conn_timers = TimerWheel::new();
        // Advance the empty wheels to `now` so deadlines are measured from
        // the runtime's epoch without a first cascade from zero.
        // Empty slices: nothing can expire, so there is nothing to handle.
        let _ = client_timers.poll_expired::<ClientSlot>(&mut [], now);
        let _ = conn_timers.poll_expired::<ConnSlot>(&mut [], now);
        Ok(SecurityManager {
            policy,
            clients: tables.clients,
            buckets: tables.buckets,
            index,
            client_timers,
            connections: tables.connections,
            conn_free: 0,
            conn_live: 0,
            conn_authed: 0,
            conn_timers,
            networks: tables.networks,
            net_buckets: tables.network_buckets,
            net_index,
            network_table_full_reported: false,
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

    /// Of [`SecurityManager::active_connections`], those authenticated; the
    /// rest are pending (or judged without a secret to check against).
    pub fn authenticated_connections(&self) -> u32 {
        self.conn_authed
    }

    /// Clients treated as shared addresses right now (see
    /// [`ClientInfo::shared`]). Walks the client table: for metrics and
    /// status, not for the hot path.
    pub fn shared_clients(&self) -> u32 {
        let into = self.offset_in_window(self.now);
        let window = self.window_index(self.now);
        let window_ms = self.window_ms();
        self.clients
            .as_ref()
            .iter()
            .filter(|s| s.occupied() && shared(s, window, into, window_ms))
            .count() as u32
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
        let shared = shared(
            s,
            self.window_index(self.now),
            self.offset_in_window(self.now),
            self.window_ms(),
        );
        Some(ClientInfo {
            client: ClientKey::from_bits(s.key),
            live_connections: s.live,
            blocked: s.blocked(),
            offences: s.offences,
            authenticated_connections: s.authed,
            shared,
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
    #[must_use = "a deadline not slept on is work never done: blocks would not end"]
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
    #[must_use = "a polled event is gone from the queue"]
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
            return self.open_connection(now, NIL, NIL);
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
        let (pending, authed) = (slot.live.saturating_sub(slot.authed), slot.authed);
        if pending >= max_conns {
            return self.violation(now, i, RejectReason::TooManyConnections);
        }
        // Only a client holding authenticated connections can be here, so
        // it is a shared address and this is no violation: the people
        // behind it are refused, never blocked, for being many.
        // `live` is 16-bit: both caps may be 65,535, their sum may not.
        if authed >= self.policy.max_authenticated_per_client || slot.live == u16::MAX {
            self.stats.authenticated_cap_refusals[CapRefusal::Accept as usize] += 1;
            return self.reject(RejectReason::AuthenticatedLimit);
        }
        if opened >= u32::from(max_new) {
            return self.violation(now, i, RejectReason::RateLimited);
        }
        // The network tier comes after the client's own limits (see
        // `networks`): its refusals are no violations.
        let network = if self.network_tier_on() {
            match self.network_check(now, bits) {
                Ok(n) => n,
                Err(reason) => {
                    self.make_idle_if_idle(now, i);
                    return self.reject(reason);
                }
            }
        } else {
            NIL
        };
        let verdict = self.open_connection(now, i, network);
        if let Verdict::Admit(_) = verdict {
            let slot = &mut self.clients.as_mut()[i as usize];
            slot.opened[1] = slot.opened[1].saturating_add(1);
            slot.live += 1;
            if slot.live == 1 {
                self.index.unlink_idle(self.clients.as_mut(), i);
                self.client_timers.cancel(self.clients.as_mut(), i);
            }
            if network != NIL {
                self.network_admitted(network);
            }
        } else {
            self.make_idle_if_idle(now, i);
            if network != NIL {
                self.network_idle_if_idle(network);
            }
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

    /// The runtime checked `conn`'s handshake against its secrets and it is
    /// valid for one: the connection is authenticated. It leaves the
    /// pending count for its client's authenticated one (refunding the new
    /// connection it was charged in the rate window, which binds strangers),
    /// and the valid handshake adds to its client's reputation. Without a
    /// secret to check against, report the first bytes with
    /// [`SecurityManager::handle_handshake`] and
    /// [`HandshakeOutcome::Valid`] instead: they prove nothing, and the
    /// connection stays under the pending limit.
    ///
    /// Only the first judgement of a connection counts.
    pub fn handle_authenticated(
        &mut self,
        now: Instant,
        conn: ConnectionId,
    ) -> Result<Authentication, UnknownConnection> {
        let now = self.advance(now);
        let c = self.live_connection(conn)?;
        let slot = self.connections.as_ref()[c as usize];
        if slot.state != ConnState::Handshaking {
            return Ok(Authentication::AlreadyJudged);
        }
        self.conn_timers.cancel(self.connections.as_mut(), c);
        self.stats.handshakes[HandshakeOutcome::Valid as usize] += 1;
        let client = slot.client;
        if client != NIL {
            let window = self.window_index(now);
            let cap = self.policy.max_authenticated_per_client;
            let owner = &mut self.clients.as_mut()[client as usize];
            owner.roll(window);
            owner.valid[1] = owner.valid[1].saturating_add(1);
            if owner.opened[1] > 0 {
                owner.opened[1] -= 1;
            } else {
                owner.opened[0] = owner.opened[0].saturating_sub(1);
            }
            let refused = owner.authed >= cap;
            if !refused {
                owner.authed += 1;
            }
            if slot.network != NIL {
                self.network_authenticated(now, slot.network, !refused);
            }
            if refused {
                self.connections.as_mut()[c as usize].state = ConnState::Established;
                self.stats.authenticated_cap_refusals[CapRefusal::Handshake as usize] += 1;
                self.stats.rejected[RejectReason::AuthenticatedLimit as usize] += 1;
                return Ok(Authentication::Refused(RejectReason::AuthenticatedLimit));
            }
        }
        self.connections.as_mut()[c as usize].state = ConnState::Authenticated;
        self.conn_authed += 1;
        self.stats.authenticated += 1;
        Ok(Authentication::Authenticated)
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
        let (client, network, authed) = {
            let slot = &mut self.connections.as_mut()[c as usize];
            let client = slot.client;
            let network = slot.network;
            let authed = slot.state == ConnState::Authenticated;
            slot.state = ConnState::Free;
            slot.client = self.conn_free;
            slot.network = NIL;
            (client, network, authed)
        };
        if network != NIL {
            self.network_closed(network, authed);
        }
        self.conn_free = c;
        self.conn_live -= 1;
        if authed {
            self.conn_authed -= 1;
        }
        if client != NIL {
            let slot = &mut self.clients.as_mut()[client as usize];
            slot.live = slot.live.saturating_sub(1);
            if authed {
                slot.authed = slot.authed.saturating_sub(1);
            }
            self.make_idle_if_idle(now, client);
        }
        Ok(())
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

    // ----- internals -----

    fn advance(&mut self, now: Instant) -> Instant {
        // A clock that steps back must not re-open windows or shorten blocks.
        if now > self.now {
            self.now = now;
        }
        self.now
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
            NewError::Tables(e) => e.fmt(f),
        }
    }
}

// The cause is part of the message (as it was before these impls), so
// `source()` stays `None`: a chain printer would say it twice otherwise.
impl core::error::Error for NewError {}

impl core::fmt::Display for TablesError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TablesError::Empty(t) => write!(f, "the {t} table has no room"),
            TablesError::BucketsMismatch => {
                f.write_str("the bucket table must be as long as the client table")
            }
            TablesError::TooLarge(t) => {
                write!(f, "the {t} table is larger than 32-bit indices allow")
            }
        }
    }
}

impl core::error::Error for TablesError {}
