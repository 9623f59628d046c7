//! The network tier (issue 17): connection and rate limits per IPv4 prefix
//! (a /24 by default) and per IPv6 prefix (a /48), above the per-client
//! ones. One abusive provider or NAT pool owns a whole /24 and can spread
//! its connections over 256 addresses, each under its own client's limits.
//!
//! Decisions argued here once:
//! - **After the per-client checks.** A client over its own limits meets
//!   them first, and its refusals stay violations that end in a block: a
//!   bad actor inside a /24 is blocked as before, which frees its network,
//!   instead of hiding behind network refusals that never block. It also
//!   keeps the second SipHash off every refused connection.
//! - **Refuse, never block.** A network refusal is not a violation of the
//!   client that happened to knock: on a carrier's /24 that is as likely
//!   one of the users as the attacker. The tier bounds what the network
//!   gets; blocking stays per client.
//! - **Pending connections only**, as `max_connections_per_client`:
//!   authenticated connections leave the network's count when they
//!   authenticate, and are refunded from its rate window. A stranger
//!   cannot authenticate, so the tier still binds every connection an
//!   attacker can make; a /24 full of real users is not refused for being
//!   full of them. Without inspection nothing authenticates and every
//!   connection counts.
//! - **Own table, own capacity.** Network slots are 40 bytes and have no
//!   timer. An idle network (no live connection) keeps its rate window on
//!   the idle list until a new network needs its slot; one with live
//!   connections is never evicted; when nothing can be evicted, new
//!   networks are refused (`network_table_full`) and known ones served. The
//!   table is as long as the connection table in both presets, so it can
//!   only be full when the connection table is too.
//! - **Off costs nothing**: with both limits 0 (levels 0 and 1) no network
//!   is looked up. Turning the tier on by a reload counts the connections
//!   opened from then on; changing a prefix applies to new connections, and
//!   each connection is always released from the slot it was counted in.

use core::net::IpAddr;

use crate::event::{Event, RejectReason};
use crate::storage::Storage;
use crate::table::{network_key, network_of, Idle};
use crate::Instant;

use super::rate::sliding;
use super::SecurityManager;

/// One network as seen by [`SecurityManager::network_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The network address.
    pub network: IpAddr,
    /// Its prefix length under the policy in force.
    pub prefix: u8,
    /// Connections admitted from it and not closed.
    pub live_connections: u32,
    /// Of `live_connections`, those authenticated: the rest count against
    /// [`crate::Policy::max_connections_per_network`].
    pub authenticated_connections: u32,
}

impl<S: Storage> SecurityManager<S> {
    /// The IPv4 and IPv6 prefix lengths networks are cut at: the IPv6 one
    /// never longer than the client prefix, so a client lies in one network.
    fn network_prefixes(&self) -> (u8, u8) {
        let p = &self.policy;
        (
            p.network_prefix_v4,
            p.network_prefix_v6.min(p.ipv6_prefix).min(64),
        )
    }

    fn network_key_of(&self, bits: u128) -> u128 {
        let (v4, v6) = self.network_prefixes();
        network_key(bits, v4, v6)
    }

    /// What the engine knows about the network `ip` belongs to under the
    /// policy in force; `None` when it is not tracked (or the tier is off
    /// and never was on).
    pub fn network_info(&self, ip: IpAddr) -> Option<NetworkInfo> {
        let key = self.network_key_of(crate::addr::map_ip(ip));
        let n = self
            .net_index
            .find(self.networks.as_ref(), self.net_buckets.as_ref(), key)?;
        let s = &self.networks.as_ref()[n as usize];
        let (v4, v6) = self.network_prefixes();
        let (network, prefix) = network_of(key, v4, v6);
        Some(NetworkInfo {
            network,
            prefix,
            live_connections: s.live,
            authenticated_connections: s.authed,
        })
    }

    /// Networks currently tracked in the network table.
    pub fn tracked_networks(&self) -> u32 {
        self.net_index.len()
    }

    /// Capacity of the network table.
    pub fn network_capacity(&self) -> usize {
        self.networks.as_ref().len()
    }

    /// The network limits in force: scaled under attack as the per-client
    /// ones are, 0 (off) staying off.
    fn network_limits(&self) -> (u32, u16) {
        let p = &self.policy;
        if !self.attack.active {
            return (
                p.max_connections_per_network,
                p.max_new_connections_per_network,
            );
        }
        let pct = u64::from(p.attack_limit_percent);
        let scale = |v: u64| -> u64 {
            if v == 0 {
                0
            } else {
                (v * pct / 100).max(1)
            }
        };
        (
            scale(u64::from(p.max_connections_per_network)) as u32,
            scale(u64::from(p.max_new_connections_per_network)) as u16,
        )
    }

    /// The network slot a connection from `bits` is to be counted in, or
    /// the reason it is refused. Call only with the tier on. The caller
    /// counts the connection with [`Self::network_admitted`] once it is
    /// admitted, or calls [`Self::network_idle_if_idle`] if it is not.
    pub(super) fn network_check(&mut self, now: Instant, bits: u128) -> Result<u32, RejectReason> {
        let key = self.network_key_of(bits);
        let bucket = self.net_index.bucket(key, self.net_buckets.as_ref().len());
        let n = match self.net_index.find_at(
            self.networks.as_ref(),
            self.net_buckets.as_ref(),
            bucket,
            key,
        ) {
            Some(n) => n,
            None => self
                .insert_network(key, bucket)
                .ok_or(RejectReason::NetworkTableFull)?,
        };
        let (max_conns, max_new) = self.network_limits();
        let window = self.window_index(now);
        let into = self.offset_in_window(now);
        let window_ms = self.window_ms();
        let slot = &mut self.networks.as_mut()[n as usize];
        slot.roll(window);
        let pending = slot.live - slot.authed;
        let opened = sliding(
            u32::from(slot.opened[0]),
            u32::from(slot.opened[1]),
            into,
            window_ms,
        );
        let refusal = if max_conns != 0 && pending >= max_conns {
            Some(RejectReason::NetworkConnections)
        } else if max_new != 0 && opened >= u32::from(max_new) {
            Some(RejectReason::NetworkRate)
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                self.network_idle_if_idle(n);
                Err(reason)
            }
            None => Ok(n),
        }
    }

    /// Counts an admitted connection in network slot `n`.
    pub(super) fn network_admitted(&mut self, n: u32) {
        let slot = &mut self.networks.as_mut()[n as usize];
        slot.opened[1] = slot.opened[1].saturating_add(1);
        slot.live += 1;
        if slot.live == 1 {
            self.net_index.unlink_idle(self.networks.as_mut(), n);
        }
    }

    /// A network that holds no connection goes to the most recently seen
    /// end of the idle list, where eviction takes it last.
    pub(super) fn network_idle_if_idle(&mut self, n: u32) {
        if self.networks.as_ref()[n as usize].live == 0 {
            self.net_index
                .touch_idle(self.networks.as_mut(), n, Idle::Clean);
        }
    }

    /// A connection counted in network slot `n` has closed.
    pub(super) fn network_closed(&mut self, n: u32, authed: bool) {
        let slot = &mut self.networks.as_mut()[n as usize];
        slot.live = slot.live.saturating_sub(1);
        if authed {
            slot.authed = slot.authed.saturating_sub(1);
        }
        self.network_idle_if_idle(n);
    }

    /// A connection counted in network slot `n` proved a secret: refunded
    /// from the network's rate window, and (unless its client's cap
    /// refused it, `counted` false) out of the network's pending count.
    pub(super) fn network_authenticated(&mut self, now: Instant, n: u32, counted: bool) {
        let window = self.window_index(now);
        let slot = &mut self.networks.as_mut()[n as usize];
        slot.roll(window);
        if slot.opened[1] > 0 {
            slot.opened[1] -= 1;
        } else {
            slot.opened[0] = slot.opened[0].saturating_sub(1);
        }
        if counted {
            slot.authed += 1;
        }
    }

    /// Takes a slot for a new network, evicting the least recently seen
    /// idle one if the table is full; `None` when every network holds live
    /// connections.
    fn insert_network(&mut self, key: u128, bucket: usize) -> Option<u32> {
        if let Some(n) = self.net_index.insert_at(
            self.networks.as_mut(),
            self.net_buckets.as_mut(),
            bucket,
            key,
        ) {
            self.network_table_full_reported = false;
            return Some(n);
        }
        if let Some(victim) = self.net_index.eviction_candidate() {
            self.net_index
                .remove(self.networks.as_mut(), self.net_buckets.as_mut(), victim);
            self.stats.network_evictions += 1;
            return self.net_index.insert_at(
                self.networks.as_mut(),
                self.net_buckets.as_mut(),
                bucket,
                key,
            );
        }
        if !self.network_table_full_reported {
            self.network_table_full_reported = true;
            self.emit(Event::NetworkTableFull);
        }
        None
    }

    /// Whether a connection is to be checked at the network tier.
    pub(super) fn network_tier_on(&self) -> bool {
        self.policy.network_tier()
    }
}
