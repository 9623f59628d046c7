//! Expiry: what [`SecurityManager::handle_timeout`] does when a deadline of
//! the client or connection timing wheel comes due. Each expiry costs O(1)
//! and a call stops before it could overflow the event queue, so one call
//! is bounded however many deadlines fell due at once.

use crate::event::{ConnectionId, Event, HandshakeOutcome, UnblockCause};
use crate::storage::Storage;
use crate::table::ConnState;
use crate::Instant;

use super::{SecurityManager, EVENTS_PER_EXPIRY, EVENT_CAPACITY};

impl<S: Storage> SecurityManager<S> {
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

    pub(super) fn client_timer_fired(&mut self, now: Instant, i: u32) {
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

    pub(super) fn connection_timer_fired(&mut self, now: Instant, c: u32) {
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
}
