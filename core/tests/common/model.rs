//! The reference model of the engine, shared by `core/tests/model.rs`
//! (proptest) and `fuzz/fuzz_targets/engine.rs` (libFuzzer), which include
//! this file with `#[path]`. It lives here rather than in the core behind a
//! feature: it needs `std` (a `BTreeMap`, panics with messages), and a
//! test-only module in a `no_std` library would ship in its API.
//!
//! Plain `std` code written only for testing: under capacity the engine and
//! this model must agree exactly; at capacity every eviction must follow the
//! documented policy (an idle, unblocked client; clean ones before
//! offenders; the least recently seen of its class).
//!
//! The clients live in four IPv4 /24s, two in each, so the network tier
//! (issue 17) is modelled too: pending connections and a rate window per
//! network, refused without a violation, evicted only when idle, least
//! recently seen first, and new networks refused when none is idle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mtguard_core::{
    Authentication, BlockCause, ConnectionId, HandshakeOutcome, Instant, Level, Policy,
    RejectReason, SecurityManager, Storage, Verdict,
};

pub(crate) const CLIENTS: usize = 8;

/// The /24 networks the clients live in: client `k` is in network `k / 2`.
pub(crate) const NETWORKS: usize = CLIENTS / 2;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Connect(usize),
    Handshake(usize, HandshakeOutcome),
    /// The n-th live connection proved a secret.
    Authenticate(usize),
    Close(usize),
    Block(usize, Option<u64>),
    Unblock(usize),
    Advance(u64),
    /// Advance to the engine's next deadline (`true`) or just before it.
    ToDeadline(bool),
}

pub(crate) fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, (i / 2) as u8 + 1, i as u8 + 1))
}

/// One network of the model: the network tier's counts.
#[derive(Clone, Debug, Default)]
struct Net {
    live: u32,
    authed: u32,
    window: u64,
    opened: [u32; 2],
    /// When it last became idle (or was seen idle), in order: eviction takes
    /// the smallest.
    idle: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Client {
    live: u32,
    /// Of `live`, the authenticated connections.
    authed: u32,
    window: u64,
    opened: [u32; 2],
    /// Valid handshakes of authenticated connections (the reputation).
    valid: [u32; 2],
    violations: [u32; 2],
    failures: [u32; 2],
    timeouts: [u32; 2],
    offences: u8,
    /// `Some(None)`: blocked until lifted; `Some(Some(t))`: until `t`.
    block: Option<Option<u64>>,
    /// When it became idle or was last seen idle, and in which order.
    idle: Option<(u64, u64)>,
    /// Blocks started, wrapping as the engine's does: a connection from
    /// before the latest one earns no offence.
    epoch: u16,
}

impl Client {
    /// Starts a block: a new epoch, and the evidence that led to it spent.
    fn start_block(&mut self, until: Option<u64>) {
        self.block = Some(until);
        self.idle = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.violations = [0; 2];
        self.failures = [0; 2];
        self.timeouts = [0; 2];
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Conn {
    /// Not judged yet; the deadline, if the policy sets one.
    Handshaking(Option<u64>),
    Done,
    /// Counted against the authenticated cap.
    Authed,
}

struct Model {
    p: Policy,
    capacity: usize,
    now: u64,
    seq: u64,
    clients: BTreeMap<usize, Client>,
    /// Live connections: id, client, state, the client's epoch at admission.
    conns: Vec<(ConnectionId, usize, Conn, u16)>,
    /// Capacity of the engine's network table.
    net_capacity: usize,
    networks: BTreeMap<usize, Net>,
    /// The network each connection is counted in, if any.
    counted: BTreeMap<ConnectionId, usize>,
}

fn sliding(c: [u32; 2], into: u64, window: u64) -> u32 {
    (u64::from(c[0]) * (window - into) / window) as u32 + c[1]
}

impl Model {
    fn window(&self) -> u64 {
        self.p.rate_window.as_millis() as u64
    }

    fn roll(&self, c: &mut Client) {
        let w = self.now / self.window();
        if w == c.window + 1 {
            c.opened = [c.opened[1], 0];
            c.valid = [c.valid[1], 0];
            c.violations = [c.violations[1], 0];
            c.failures = [c.failures[1], 0];
            c.timeouts = [c.timeouts[1], 0];
        } else if w != c.window {
            *c = Client {
                window: w,
                ..c.clone()
            };
            c.opened = [0; 2];
            c.valid = [0; 2];
            c.violations = [0; 2];
            c.failures = [0; 2];
            c.timeouts = [0; 2];
        }
        c.window = w;
    }

    fn est(&self, c: [u32; 2]) -> u32 {
        sliding(c, self.now % self.window(), self.window())
    }

    fn roll_net(&self, n: &mut Net) {
        let w = self.now / self.window();
        if w == n.window + 1 {
            n.opened = [n.opened[1], 0];
        } else if w != n.window {
            n.opened = [0; 2];
        }
        n.window = w;
    }

    fn touch_net(&mut self, n: usize) {
        self.seq += 1;
        let seq = self.seq;
        let net = self.networks.get_mut(&n).unwrap();
        if net.live == 0 {
            net.idle = Some(seq);
        }
    }

    /// The network tier's verdict on a connection of client `k` that passed
    /// its own limits: `Ok(network)` to count it in, or the refusal.
    fn network_check(&mut self, k: usize) -> Result<usize, RejectReason> {
        let n = k / 2;
        if !self.networks.contains_key(&n) {
            if self.networks.len() == self.net_capacity {
                // Only an idle network may go, the least recently seen.
                let victim = self
                    .networks
                    .iter()
                    .filter(|(_, net)| net.live == 0)
                    .min_by_key(|(_, net)| net.idle.unwrap())
                    .map(|(n, _)| *n);
                match victim {
                    Some(v) => {
                        self.networks.remove(&v);
                    }
                    None => return Err(RejectReason::NetworkTableFull),
                }
            }
            let w = self.now / self.window();
            self.networks.insert(
                n,
                Net {
                    window: w,
                    ..Net::default()
                },
            );
        }
        let mut net = self.networks[&n].clone();
        self.roll_net(&mut net);
        let pending = net.live - net.authed;
        let reason = if self.p.max_connections_per_network != 0
            && pending >= self.p.max_connections_per_network
        {
            Some(RejectReason::NetworkConnections)
        } else if self.p.max_new_connections_per_network != 0
            && self.est(net.opened) >= u32::from(self.p.max_new_connections_per_network)
        {
            Some(RejectReason::NetworkRate)
        } else {
            None
        };
        self.networks.insert(n, net);
        match reason {
            Some(r) => {
                self.touch_net(n);
                Err(r)
            }
            None => Ok(n),
        }
    }

    /// The reputation rule: a shared address holds authenticated
    /// connections or had a valid handshake within the sliding window.
    fn shared(&self, c: &Client) -> bool {
        let mut c = c.clone();
        self.roll(&mut c);
        c.authed > 0 || self.est(c.valid) > 0
    }

    /// A connection proved a secret; `Err` when its client is at its cap.
    /// Its network, if it is counted in one, refunds it from its rate
    /// window and, unless refused, counts it authenticated.
    fn authenticate(&mut self, id: ConnectionId, k: usize) -> Result<(), RejectReason> {
        let at_cap = self.clients[&k].authed >= u32::from(self.p.max_authenticated_per_client);
        if let Some(&n) = self.counted.get(&id) {
            let mut net = self.networks[&n].clone();
            self.roll_net(&mut net);
            if net.opened[1] > 0 {
                net.opened[1] -= 1;
            } else {
                net.opened[0] = net.opened[0].saturating_sub(1);
            }
            if !at_cap {
                net.authed += 1;
            }
            self.networks.insert(n, net);
        }
        self.authenticate_client(k)
    }

    fn authenticate_client(&mut self, k: usize) -> Result<(), RejectReason> {
        let mut c = self.clients[&k].clone();
        self.roll(&mut c);
        c.valid[1] += 1;
        if c.opened[1] > 0 {
            c.opened[1] -= 1;
        } else {
            c.opened[0] = c.opened[0].saturating_sub(1);
        }
        let at_cap = c.authed >= u32::from(self.p.max_authenticated_per_client);
        if !at_cap {
            c.authed += 1;
        }
        self.clients.insert(k, c);
        if at_cap {
            Err(RejectReason::AuthenticatedLimit)
        } else {
            Ok(())
        }
    }

    fn touch(&mut self, k: usize) {
        let now = self.now;
        self.seq += 1;
        let seq = self.seq;
        let c = self.clients.get_mut(&k).unwrap();
        if c.live == 0 && c.block.is_none() {
            c.idle = Some((now, seq));
        }
    }

    fn ttl(&self, c: &Client) -> u64 {
        if c.offences > 0 {
            self.p.offence_memory.as_millis() as u64
        } else {
            2 * self.window()
        }
    }

    /// The clients the documented policy allows to evict now.
    fn eviction_candidates(&self) -> Vec<usize> {
        let idle: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, c)| c.live == 0 && c.block.is_none())
            .collect();
        let clean: Vec<_> = idle
            .iter()
            .filter(|(_, c)| c.offences == 0)
            .cloned()
            .collect();
        let class = if clean.is_empty() { idle } else { clean };
        // Clients seen in the same millisecond are equally "least recently
        // seen"; the engine may pick any of them.
        let oldest = class.iter().map(|(_, c)| c.idle.unwrap().0).min();
        class
            .iter()
            .filter(|(_, c)| Some(c.idle.unwrap().0) == oldest)
            .map(|(k, _)| **k)
            .collect()
    }

    fn escalated(&self, offences: u8) -> u64 {
        let base = self.p.block_duration.as_millis() as u64;
        let cap = self.p.max_block_duration.as_millis() as u64;
        (base << (offences - 1).min(20)).min(cap)
    }

    /// The next offence of a client that is not blocked (one that is
    /// earns none, and keeps its block as it is).
    fn auto_block(&mut self, k: usize) {
        let now = self.now;
        let c = self.clients.get_mut(&k).unwrap();
        if c.block.is_some() {
            return;
        }
        c.offences += 1;
        let off = c.offences;
        let until = now + self.escalated(off);
        self.clients.get_mut(&k).unwrap().start_block(Some(until));
    }

    /// A handshake of a connection admitted in the client's `epoch`.
    fn judge(&mut self, k: usize, epoch: u16, outcome: HandshakeOutcome) {
        if outcome == HandshakeOutcome::Valid {
            return;
        }
        let c = &self.clients[&k];
        if c.block.is_some() || c.epoch != epoch {
            return;
        }
        if outcome == HandshakeOutcome::Replay && self.p.block_on_replay && self.p.ip_blocking {
            self.auto_block(k);
            return;
        }
        let mut c = self.clients[&k].clone();
        self.roll(&mut c);
        let valid = self.est(c.valid).max(c.authed);
        let threshold = if outcome == HandshakeOutcome::Timeout {
            c.timeouts[1] += 1;
            self.p.slowloris_timeouts
        } else {
            c.failures[1] += 1;
            self.p.scanner_failures
        };
        let after = if outcome == HandshakeOutcome::Timeout {
            self.est(c.timeouts)
        } else {
            self.est(c.failures)
        };
        self.clients.insert(k, c);
        // Written apart from the engine's `marks`: a count for strangers,
        // a count and a share for a shared address.
        let marked = if valid == 0 {
            after >= u32::from(threshold)
        } else {
            after >= u32::from(threshold)
                && f64::from(after) / f64::from(after + valid)
                    >= f64::from(self.p.shared_failure_percent) / 100.0
        };
        if marked && self.p.ip_blocking {
            self.auto_block(k);
        } else {
            self.touch(k);
        }
    }

    /// Fires every timer due at or before `t`, in time order; at equal
    /// times client timers before connection timers, as the engine does.
    fn advance(&mut self, t: u64) {
        loop {
            let client_due = self
                .clients
                .iter()
                .filter_map(|(k, c)| match (c.block, c.idle) {
                    (Some(Some(u)), _) => Some((u, *k)),
                    (None, Some((since, _))) if c.live == 0 => Some((since + self.ttl(c), *k)),
                    _ => None,
                })
                .min();
            let conn_due = self
                .conns
                .iter()
                .filter_map(|(_, _, s, _)| match s {
                    Conn::Handshaking(d) => *d,
                    Conn::Done | Conn::Authed => None,
                })
                .min();
            let next = match (client_due, conn_due) {
                (Some((a, _)), Some(b)) => a.min(b),
                (Some((a, _)), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > t {
                break;
            }
            self.now = self.now.max(next);
            let due: Vec<usize> = self
                .clients
                .iter()
                .filter(|(_, c)| match (c.block, c.idle) {
                    (Some(Some(u)), _) => u == next,
                    (None, Some((since, _))) => c.live == 0 && since + self.ttl(c) == next,
                    _ => false,
                })
                .map(|(k, _)| *k)
                .collect();
            for k in due {
                if self.clients[&k].block.is_some() {
                    self.clients.get_mut(&k).unwrap().block = None;
                    self.touch(k);
                } else {
                    self.clients.remove(&k);
                }
            }
            let expired: Vec<usize> = (0..self.conns.len())
                .filter(|&i| self.conns[i].2 == Conn::Handshaking(Some(next)))
                .collect();
            for i in expired {
                self.conns[i].2 = Conn::Done;
                let (k, epoch) = (self.conns[i].1, self.conns[i].3);
                if self.clients.contains_key(&k) {
                    self.judge(k, epoch, HandshakeOutcome::Timeout);
                }
            }
        }
        self.now = self.now.max(t);
    }
}

fn check<S: Storage>(g: &SecurityManager<S>, m: &Model) {
    for k in 0..CLIENTS {
        let engine = g.client_info(ip(k));
        let model = m.clients.get(&k);
        assert_eq!(engine.is_some(), model.is_some(), "client {k} tracked");
        if let (Some(e), Some(c)) = (engine, model) {
            assert_eq!(u32::from(e.live_connections), c.live, "client {k} live");
            assert_eq!(e.blocked, c.block.is_some(), "client {k} blocked");
            assert_eq!(e.offences, c.offences, "client {k} offences");
            assert_eq!(
                u32::from(e.authenticated_connections),
                c.authed,
                "client {k} authenticated"
            );
            assert_eq!(e.shared, m.shared(c), "client {k} shared");
            if let Some(until) = c.block {
                let key = g.client_key(ip(k));
                let b = g.blocks().find(|b| b.client == key).unwrap();
                let engine_until = b.until.map(|u| u.as_millis());
                assert_eq!(engine_until, until, "client {k} block end");
            }
        }
    }
    let live: u32 = m.clients.values().map(|c| c.live).sum();
    assert_eq!(g.active_connections(), live);
    let authed: u32 = m.clients.values().map(|c| c.authed).sum();
    assert_eq!(g.authenticated_connections(), authed);
    let shared = m.clients.values().filter(|c| m.shared(c)).count();
    assert_eq!(g.shared_clients() as usize, shared);
    assert_eq!(
        g.blocked_clients() as usize,
        m.clients.values().filter(|c| c.block.is_some()).count()
    );
    assert_eq!(g.tracked_clients() as usize, m.clients.len());
    for n in 0..NETWORKS {
        let engine = g.network_info(ip(2 * n));
        let model = m.networks.get(&n);
        assert_eq!(engine.is_some(), model.is_some(), "network {n} tracked");
        if let (Some(e), Some(net)) = (engine, model) {
            assert_eq!(e.live_connections, net.live, "network {n} live");
            assert_eq!(
                e.authenticated_connections, net.authed,
                "network {n} authenticated"
            );
        }
    }
    assert_eq!(g.tracked_networks() as usize, m.networks.len());
}

pub(crate) fn run<S: Storage>(mut g: SecurityManager<S>, p: Policy, capacity: usize, ops: Vec<Op>) {
    let mut m = Model {
        p,
        capacity,
        now: 0,
        seq: 0,
        clients: BTreeMap::new(),
        conns: Vec::new(),
        net_capacity: g.network_capacity(),
        networks: BTreeMap::new(),
        counted: BTreeMap::new(),
    };
    for op in ops {
        let evictions_before = g.stats().evictions;
        let mut new_client = None;
        match op {
            Op::Advance(_) | Op::ToDeadline(_) => {
                let t = match op {
                    Op::Advance(d) => m.now + d,
                    // The engine's own next deadline, or the millisecond
                    // before it: where an off-by-one in expiry would show.
                    _ => match g.poll_timeout() {
                        Some(due) if matches!(op, Op::ToDeadline(true)) => {
                            due.as_millis().max(m.now)
                        }
                        Some(due) => due.as_millis().saturating_sub(1).max(m.now),
                        None => m.now,
                    },
                };
                while let Some(due) = g.poll_timeout() {
                    if due > Instant::from_millis(t) {
                        break;
                    }
                    g.handle_timeout(due);
                }
                g.handle_timeout(Instant::from_millis(t));
                m.advance(t);
            }
            Op::Connect(k) => {
                let verdict = g.handle_connect(Instant::from_millis(m.now), ip(k));
                let expected = model_connect(&mut m, k, &mut new_client);
                match (verdict, expected) {
                    (Verdict::Admit(id), Ok(network)) => {
                        let deadline = m.p.handshake_timeout.map(|d| m.now + d.as_millis() as u64);
                        let epoch = m.clients[&k].epoch;
                        m.conns.push((id, k, Conn::Handshaking(deadline), epoch));
                        if let Some(n) = network {
                            m.counted.insert(id, n);
                        }
                    }
                    (Verdict::Reject(r), Err(e)) => assert_eq!(r, e),
                    (v, e) => panic!("connect {k} at {}: engine {v:?}, model {e:?}", m.now),
                }
            }
            Op::Handshake(n, outcome) => {
                if m.conns.is_empty() {
                    continue;
                }
                let i = n % m.conns.len();
                let (id, k, state, epoch) = m.conns[i];
                g.handle_handshake(Instant::from_millis(m.now), id, outcome)
                    .unwrap();
                if let Conn::Handshaking(_) = state {
                    m.conns[i].2 = Conn::Done;
                    m.judge(k, epoch, outcome);
                }
            }
            Op::Authenticate(n) => {
                if m.conns.is_empty() {
                    continue;
                }
                let i = n % m.conns.len();
                let (id, k, state, _) = m.conns[i];
                let answer = g
                    .handle_authenticated(Instant::from_millis(m.now), id)
                    .unwrap();
                let expected = match state {
                    Conn::Handshaking(_) => match m.authenticate(id, k) {
                        Ok(()) => {
                            m.conns[i].2 = Conn::Authed;
                            Authentication::Authenticated
                        }
                        Err(r) => {
                            m.conns[i].2 = Conn::Done;
                            Authentication::Refused(r)
                        }
                    },
                    _ => Authentication::AlreadyJudged,
                };
                assert_eq!(answer, expected, "authenticate conn of {k} at {}", m.now);
            }
            Op::Close(n) => {
                if m.conns.is_empty() {
                    continue;
                }
                let (id, k, state, _) = m.conns.remove(n % m.conns.len());
                g.handle_close(Instant::from_millis(m.now), id).unwrap();
                let c = m.clients.get_mut(&k).unwrap();
                c.live -= 1;
                if state == Conn::Authed {
                    c.authed -= 1;
                }
                m.touch(k);
                if let Some(n) = m.counted.remove(&id) {
                    let net = m.networks.get_mut(&n).unwrap();
                    net.live -= 1;
                    if state == Conn::Authed {
                        net.authed -= 1;
                    }
                    m.touch_net(n);
                }
            }
            Op::Block(k, d) => {
                let r = g.block(
                    Instant::from_millis(m.now),
                    ip(k),
                    d.map(Duration::from_millis),
                    BlockCause::Manual,
                );
                if !m.clients.contains_key(&k) {
                    if m.clients.len() == m.capacity && m.eviction_candidates().is_empty() {
                        assert!(r.is_err());
                        check(&g, &m);
                        continue;
                    }
                    new_client = Some(k);
                }
                r.unwrap();
                let now = m.now;
                m.clients
                    .entry(k)
                    .or_default()
                    .start_block(d.map(|d| now + d));
            }
            Op::Unblock(k) => {
                let was = m.clients.get(&k).is_some_and(|c| c.block.is_some());
                assert_eq!(g.unblock(Instant::from_millis(m.now), ip(k)), was);
                if was {
                    m.clients.get_mut(&k).unwrap().block = None;
                    m.touch(k);
                }
            }
        }
        // Reconcile an eviction: the engine's choice must be one the
        // policy allows.
        if g.stats().evictions != evictions_before {
            assert_eq!(g.stats().evictions, evictions_before + 1);
            let allowed = m.eviction_candidates_excluding(new_client);
            let gone: Vec<usize> = m
                .clients
                .keys()
                .copied()
                .filter(|k| Some(*k) != new_client && g.client_info(ip(*k)).is_none())
                .collect();
            assert_eq!(gone.len(), 1, "exactly one client evicted");
            assert!(
                allowed.contains(&gone[0]),
                "evicted {} but the policy allows only {allowed:?}",
                gone[0]
            );
            m.clients.remove(&gone[0]);
        } else if m.clients.len() > m.capacity {
            panic!("model holds more clients than the table without an eviction");
        }
        check(&g, &m);
        // Invariants that hold at any capacity, model or not.
        assert!(
            g.tracked_clients() as usize <= capacity,
            "more clients than the table"
        );
        assert!(g.active_connections() <= m.p.global_max_connections);
        for (k, c) in &m.clients {
            if let Some(until) = c.block {
                assert!(g.is_blocked(ip(*k)), "client {k} blocked in the model only");
                // A timed block is still running, so it has not outlived its end.
                assert!(
                    until.is_none_or(|u| u > m.now),
                    "client {k}: block past its end"
                );
            }
        }
        while g.poll_event().is_some() {}
    }
}

impl Model {
    fn eviction_candidates_excluding(&self, new_client: Option<usize>) -> Vec<usize> {
        let mut m = Model {
            p: self.p,
            capacity: self.capacity,
            now: self.now,
            seq: self.seq,
            clients: self.clients.clone(),
            conns: Vec::new(),
            net_capacity: self.net_capacity,
            networks: BTreeMap::new(),
            counted: BTreeMap::new(),
        };
        if let Some(k) = new_client {
            m.clients.remove(&k);
        }
        m.eviction_candidates()
    }
}

/// The model's verdict, with the network the connection is counted in. A
/// new client is added to the model at once; if the table is full the
/// caller reconciles which one the engine evicted.
fn model_connect(
    m: &mut Model,
    k: usize,
    new_client: &mut Option<usize>,
) -> Result<Option<usize>, RejectReason> {
    if m.clients.get(&k).is_some_and(|c| c.block.is_some()) {
        return Err(RejectReason::Blocked);
    }
    let live: u32 = m.clients.values().map(|c| c.live).sum();
    if live >= m.p.global_max_connections {
        return Err(RejectReason::GlobalConnectionLimit);
    }
    if !m.clients.contains_key(&k) {
        if m.clients.len() == m.capacity && m.eviction_candidates().is_empty() {
            return Err(RejectReason::ClientTableFull);
        }
        *new_client = Some(k);
        let w = m.now / m.window();
        m.clients.insert(
            k,
            Client {
                window: w,
                ..Client::default()
            },
        );
    }
    let mut c = m.clients[&k].clone();
    m.roll(&mut c);
    if c.live - c.authed < u32::from(m.p.max_connections_per_client)
        && c.authed >= u32::from(m.p.max_authenticated_per_client)
    {
        // A refusal, never a violation: the address is shared.
        m.clients.insert(k, c);
        return Err(RejectReason::AuthenticatedLimit);
    }
    let reason = if c.live - c.authed >= u32::from(m.p.max_connections_per_client) {
        Some(RejectReason::TooManyConnections)
    } else if m.est(c.opened) >= u32::from(m.p.max_new_connections_per_window) {
        Some(RejectReason::RateLimited)
    } else {
        None
    };
    match reason {
        Some(r) => {
            c.violations[1] += 1;
            let count = m.est(c.violations);
            m.clients.insert(k, c);
            if m.p.ip_blocking && count >= u32::from(m.p.block_after_violations) {
                m.auto_block(k);
            } else {
                m.touch(k);
            }
            Err(r)
        }
        None => {
            m.clients.insert(k, c);
            // After the client's own limits, and never a violation.
            let network = if m.p.max_connections_per_network != 0
                || m.p.max_new_connections_per_network != 0
            {
                match m.network_check(k) {
                    Ok(n) => Some(n),
                    Err(r) => {
                        m.touch(k);
                        return Err(r);
                    }
                }
            } else {
                None
            };
            let mut c = m.clients[&k].clone();
            c.opened[1] += 1;
            c.live += 1;
            c.idle = None;
            m.clients.insert(k, c);
            if let Some(n) = network {
                let net = m.networks.get_mut(&n).unwrap();
                net.opened[1] += 1;
                net.live += 1;
                net.idle = None;
            }
            Ok(network)
        }
    }
}

/// The policy the model is written for, from the few knobs both drivers vary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn policy(
    max_conn: u16,
    max_new: u16,
    viol: u8,
    scan: u8,
    slow: u8,
    blocking: bool,
    replay: bool,
    global: u32,
    hs: Option<u64>,
) -> Policy {
    let mut p = Policy::for_level(Level::Standard);
    p.max_connections_per_client = max_conn;
    p.max_new_connections_per_window = max_new;
    p.rate_window = Duration::from_secs(10);
    p.block_after_violations = viol;
    p.scanner_failures = scan;
    p.slowloris_timeouts = slow;
    p.ip_blocking = blocking;
    p.block_on_replay = replay;
    p.global_max_connections = global;
    p.global_max_new_per_second = u32::MAX;
    p.block_duration = Duration::from_secs(30);
    p.max_block_duration = Duration::from_secs(100);
    p.block_jitter_permille = 0;
    p.offence_memory = Duration::from_secs(600);
    p.handshake_timeout = hs.map(Duration::from_millis);
    p.attack_enter_per_second = None;
    p
}

/// `p` with the network tier's limits (0: off).
pub(crate) fn networks(mut p: Policy, max_connections: u32, max_new: u16) -> Policy {
    p.max_connections_per_network = max_connections;
    p.max_new_connections_per_network = max_new;
    p
}

/// `p` with the carrier-NAT knobs: the authenticated cap and the share of
/// failed handshakes that marks a shared address.
pub(crate) fn sharing(mut p: Policy, max_authenticated: u16, failure_percent: u8) -> Policy {
    p.max_authenticated_per_client = max_authenticated;
    p.shared_failure_percent = failure_percent;
    p
}
