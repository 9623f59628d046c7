//! Detection: a refused connection counts as a violation, a failed, timed
//! out or replayed handshake against its client, and crossing a threshold
//! earns a block. All counters are sliding windows over the rate window.
//!
//! A shared address (recent valid handshakes, or authenticated connections:
//! a carrier NAT, an office) is judged by the share of its failed
//! handshakes, not their count, so that one scanner or broken app behind
//! it does not lock out the people next to it, while a flood of failures
//! still outweighs them and ends in a block. Replays block at once from
//! level 2 whatever the address's reputation: a replay is never an
//! accident.

use crate::addr::ClientKey;
use crate::event::{BlockCause, Event, HandshakeOutcome, RejectReason, Verdict};
use crate::storage::Storage;
use crate::table::{ConnSlot, NIL};
use crate::Instant;

use super::rate::{marks, sliding};
use super::SecurityManager;

impl<S: Storage> SecurityManager<S> {
    pub(super) fn violation(&mut self, now: Instant, i: u32, reason: RejectReason) -> Verdict {
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
    /// [`ClientSlot::epoch`](crate::table::ClientSlot::epoch)) is still
    /// counted in the statistics and its replay still reported, but it adds nothing to the client's failures
    /// and earns no offence: its burst has been punished already, and a
    /// blocked client admits no new connection, so every connection judged
    /// during a block is one of these. Without this rule one burst of 30
    /// failures (one office behind NAT, one broken app) counted 21 offences
    /// and a block of a day.
    pub(super) fn judge(&mut self, now: Instant, conn: ConnSlot, outcome: HandshakeOutcome) {
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
        // The evidence of real users behind the address: its recent valid
        // handshakes, or the authenticated connections it holds if more
        // (users who connected before the window began are still there).
        let valid = sliding(
            u32::from(slot.valid[0]),
            u32::from(slot.valid[1]),
            into,
            window_ms,
        )
        .max(u32::from(slot.authed));
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
        let percent = self.policy.shared_failure_percent;
        let marked = marks(after, valid, threshold, percent);
        if marked && !marks(before, valid, threshold, percent) {
            if cause == BlockCause::Slowloris {
                self.stats.slowloris += 1;
                self.emit(Event::SlowlorisDetected { client: key });
            } else {
                self.stats.scanners += 1;
                self.emit(Event::ScannerDetected { client: key });
            }
        }
        if marked && self.policy.ip_blocking {
            self.auto_block(now, client, cause);
        } else {
            self.make_idle_if_idle(now, client);
        }
    }
}
