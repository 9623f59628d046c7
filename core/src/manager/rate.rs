//! Rates: the sliding-window counters, the global one-second rates, the
//! per-client limits they are compared with, and under-attack mode.

use core::time::Duration;

use crate::event::Event;
use crate::storage::Storage;
use crate::table::ClientSlot;
use crate::time::duration_millis;
use crate::Instant;

use super::SecurityManager;

/// Two counts, the previous and the current window, read as a sliding
/// window: `prev * (unelapsed part of the window) + curr`. HAProxy's rate
/// counters work the same way. Chosen over GCRA because the policy is stated
/// as "N per window", which this expresses exactly, and because it costs a
/// few bytes per counter: one window index serves all four counters of a
/// client, where GCRA needs a 64-bit timestamp for each.
pub(super) fn sliding(prev: u32, curr: u32, into_window_ms: u64, window_ms: u64) -> u32 {
    let rest = window_ms.saturating_sub(into_window_ms);
    let weighted = u64::from(prev) * rest / window_ms;
    (weighted as u32).saturating_add(curr)
}

/// Whether `slot` is treated as a shared address: it holds authenticated
/// connections or had valid handshakes within the sliding window. Holding
/// authenticated connections counts as much as a recent handshake: a NAT
/// whose users connected an hour ago is still full of real people.
pub(super) fn shared(slot: &ClientSlot, window: u32, into_window_ms: u64, window_ms: u64) -> bool {
    if slot.authed > 0 {
        return true;
    }
    let valid = if slot.window == window {
        slot.valid
    } else if slot.window.wrapping_add(1) == window {
        [slot.valid[1], 0]
    } else {
        [0; 2]
    };
    sliding(
        u32::from(valid[0]),
        u32::from(valid[1]),
        into_window_ms,
        window_ms,
    ) > 0
}

/// Whether `failures` failed handshakes (or timeouts) in the window mark a
/// client with `valid` valid ones as a scanner (or a slowloris client):
/// `threshold` of them at least, and for a shared address (`valid > 0`) also
/// `percent` of its recent handshakes or more.
pub(super) fn marks(failures: u32, valid: u32, threshold: u8, percent: u8) -> bool {
    if failures < u32::from(threshold) {
        return false;
    }
    valid == 0
        || u64::from(failures) * 100
            >= u64::from(percent) * (u64::from(failures) + u64::from(valid))
}

/// Global counters over one-second windows: admitted connections (for the
/// global rate limit) and attempts (for flood detection).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GlobalRate {
    second: u64,
    pub(super) admitted: [u32; 2],
    pub(super) attempts: [u32; 2],
}

impl GlobalRate {
    pub(super) fn roll(&mut self, now: Instant) {
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
    pub(super) fn admitted(&self, now: Instant) -> u32 {
        sliding(
            self.admitted[0],
            self.admitted[1],
            now.as_millis() % 1000,
            1000,
        )
    }
    pub(super) fn attempts(&self, now: Instant) -> u32 {
        sliding(
            self.attempts[0],
            self.attempts[1],
            now.as_millis() % 1000,
            1000,
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Attack {
    pub(super) active: bool,
    calm_since: Option<Instant>,
    pub(super) next_check: Instant,
}

impl<S: Storage> SecurityManager<S> {
    pub(super) fn window_ms(&self) -> u64 {
        duration_millis(self.policy.rate_window).max(1)
    }

    pub(super) fn window_index(&self, now: Instant) -> u32 {
        (now.as_millis() / self.window_ms()) as u32
    }

    pub(super) fn offset_in_window(&self, now: Instant) -> u64 {
        now.as_millis() % self.window_ms()
    }

    pub(super) fn client_limits(&self) -> (u16, u16) {
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

    pub(super) fn check_attack(&mut self, now: Instant) {
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
