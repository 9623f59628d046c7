//! Blocks: the operator's commands and the automatic ones. Both go through
//! [`SecurityManager::start_block`] and [`SecurityManager::end_block`], so
//! the blocked count, the generation and the events cannot disagree
//! whichever way a block starts or ends.

use core::net::IpAddr;
use core::time::Duration;

use crate::addr::{map_ip, ClientKey};
use crate::event::{BlockCause, Event, UnblockCause};
use crate::storage::Storage;
use crate::time::duration_millis;
use crate::Instant;

use super::{CommandError, SecurityManager};

impl<S: Storage> SecurityManager<S> {
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

    /// Blocks a client for its next offence. Its callers see only clients
    /// that are not blocked (a blocked client is refused before any limit
    /// is counted, and [`Self::judge`] skips connections from before a
    /// block); a block, the operator's above all, is left as it is rather
    /// than replaced, so an offence can never shorten one.
    pub(super) fn auto_block(&mut self, now: Instant, i: u32, cause: BlockCause) {
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
    pub(super) fn escalated(&mut self, offences: u8) -> Duration {
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
    pub(super) fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn start_block(&mut self, i: u32, until: Option<Instant>, cause: BlockCause) {
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

    pub(super) fn end_block(&mut self, now: Instant, i: u32, cause: UnblockCause) {
        self.client_timers.cancel(self.clients.as_mut(), i);
        self.clients.as_mut()[i as usize].clear_block();
        self.blocked -= 1;
        self.stats.unblocks += 1;
        self.generation += 1;
        let key = ClientKey::from_bits(self.clients.as_ref()[i as usize].key);
        self.emit(Event::Unblocked { client: key, cause });
        self.make_idle_if_idle(now, i);
    }
}
