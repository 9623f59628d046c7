//! Slots of the client and connection tables: taking one (evicting an idle
//! client when the client table is full), checking a connection id, and
//! putting a client that holds nothing on its idle list.

use crate::event::{ConnectionId, Event, RejectReason, Verdict};
use crate::storage::Storage;
use crate::table::{ConnState, Idle, NIL};
use crate::Instant;

use super::{SecurityManager, UnknownConnection};

impl<S: Storage> SecurityManager<S> {
    /// Takes a slot for a new client whose key falls into `bucket`,
    /// evicting an idle client if the table is full.
    pub(super) fn insert_client(&mut self, key: u128, bucket: usize) -> Option<u32> {
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

    /// Takes a connection slot for `client` (`NIL` when allowlisted),
    /// counted in network slot `network` (`NIL` when the tier is off).
    pub(super) fn open_connection(&mut self, now: Instant, client: u32, network: u32) -> Verdict {
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
        slot.network = network;
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

    pub(super) fn live_connection(&mut self, conn: ConnectionId) -> Result<u32, UnknownConnection> {
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
    pub(super) fn make_idle_if_idle(&mut self, now: Instant, i: u32) {
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
}
