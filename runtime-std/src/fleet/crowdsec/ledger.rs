//! The decision ledger: what the bouncer holds, and what each answer of the
//! stream asks the engine to do.
//!
//! Kept apart from the polling so that every rule (which decision becomes a
//! block, which a denylist range, what a deletion or a full pull lifts, the
//! bounds) is tested with plain values: no socket, no engine, and no clock
//! (the caller passes `now`, so a ten-minute decision is tested at once).
//! The bouncer fetches, decodes, feeds the ledger and applies the actions.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mtguard_core::cidr::Cidr;
use mtguard_core::ClientKey;

use super::{MAX_DECISIONS, MAX_RANGES};

/// What a decision bans: one client (an address, or a range no wider than a
/// client) or a wider range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Target {
    Client(ClientKey),
    Range(Cidr),
}

/// A decision as the ledger needs it: already parsed, with its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ban {
    pub(super) id: u64,
    pub(super) target: Target,
    pub(super) duration: Duration,
}

/// One entry of a decoded stream answer, as the ledger is fed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum New {
    /// A ban on an address or a range.
    Ban(Ban),
    /// Anything else the stream carried (another type or scope, a bad
    /// value, a duration already over): counted, never held.
    Unusable,
}

/// Why a client's block is to be lifted (the log line says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lift {
    /// The decisions that covered it were deleted.
    Deleted,
    /// A full pull listed no decision covering an `external` block.
    Uncovered,
}

/// What the engine must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Block the client (cause `external`) for `duration` from now, unless
    /// it is already blocked at least as long.
    Block {
        client: ClientKey,
        duration: Duration,
    },
    /// Lift the client's block if it is an `external` one (a local block
    /// runs its own course).
    Unblock { client: ClientKey, why: Lift },
    /// Replace the external denylist with these ranges (sorted, no
    /// duplicate).
    SetRanges(Vec<Cidr>),
}

/// What one call did: the actions, and the counts for the status page.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) actions: Vec<Action>,
    /// Decisions taken in.
    pub(super) applied: u64,
    /// Decisions refused: unusable, or over a bound.
    pub(super) ignored: u64,
    /// Decisions forgotten because deleted or no longer listed, and stale
    /// `external` blocks lifted after a full pull.
    pub(super) removed: u64,
}

struct Held {
    target: Target,
    until: Instant,
}

/// The decisions held, by id, bounded by [`MAX_DECISIONS`] (of which at
/// most [`MAX_RANGES`] ranges).
#[derive(Default)]
pub(super) struct Ledger {
    decisions: HashMap<u64, Held>,
    /// Range decisions among `decisions`, kept as a count so that a stream
    /// of range decisions costs O(1) each, not a scan of the ledger.
    ranges: usize,
}

impl Ledger {
    /// Decisions held.
    pub(super) fn len(&self) -> usize {
        self.decisions.len()
    }

    /// A delta of the stream: `deleted` ids are forgotten, `new` bans taken
    /// in.
    pub(super) fn delta(&mut self, now: Instant, new: &[New], deleted: &[u64]) -> Outcome {
        self.feed(now, new, deleted, None)
    }

    /// A full pull (`startup=true`): every active decision. What it does not
    /// list was deleted while the stream was not heard, and any of
    /// `external_blocks` (the engine's blocks of cause `external`, some
    /// perhaps restored from a previous run) that no decision covers is
    /// lifted.
    pub(super) fn full(
        &mut self,
        now: Instant,
        new: &[New],
        deleted: &[u64],
        external_blocks: &[ClientKey],
    ) -> Outcome {
        self.feed(now, new, deleted, Some(external_blocks))
    }

    /// Forgets decisions past their end. The engine ends client blocks on its
    /// own clock; ranges are re-set here.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Action> {
        let mut ranges_gone = 0;
        self.decisions.retain(|_, h| {
            let keep = h.until > now;
            if !keep && matches!(h.target, Target::Range(_)) {
                ranges_gone += 1;
            }
            keep
        });
        self.ranges -= ranges_gone;
        if ranges_gone > 0 {
            vec![self.set_ranges()]
        } else {
            Vec::new()
        }
    }

    fn remove(&mut self, id: u64) -> Option<Target> {
        let held = self.decisions.remove(&id)?;
        if matches!(held.target, Target::Range(_)) {
            self.ranges -= 1;
        }
        Some(held.target)
    }

    fn feed(
        &mut self,
        now: Instant,
        new: &[New],
        deleted: &[u64],
        external_blocks: Option<&[ClientKey]>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let mut touched: Vec<Target> = Vec::new();
        let mut ranges_changed = false;

        if external_blocks.is_some() {
            let listed: HashSet<u64> = new
                .iter()
                .filter_map(|n| match n {
                    New::Ban(b) => Some(b.id),
                    New::Unusable => None,
                })
                .collect();
            let gone: Vec<u64> = self
                .decisions
                .keys()
                .filter(|id| !listed.contains(id))
                .copied()
                .collect();
            for id in gone {
                touched.extend(self.remove(id));
                out.removed += 1;
            }
        }
        for id in deleted {
            if let Some(target) = self.remove(*id) {
                touched.push(target);
                out.removed += 1;
            }
        }

        // Lift what no remaining decision covers (before the new ones come
        // in, so a deletion and a new ban in one answer end blocked).
        let still: HashSet<Target> = self.decisions.values().map(|h| h.target).collect();
        let mut unblocked: HashSet<ClientKey> = HashSet::new();
        for target in touched {
            if still.contains(&target) {
                continue;
            }
            match target {
                Target::Client(client) => {
                    if unblocked.insert(client) {
                        out.actions.push(Action::Unblock {
                            client,
                            why: Lift::Deleted,
                        });
                    }
                }
                Target::Range(_) => ranges_changed = true,
            }
        }

        for n in new {
            let New::Ban(ban) = *n else {
                out.ignored += 1;
                continue;
            };
            let replaced = self.decisions.get(&ban.id).map(|h| h.target);
            if replaced.is_none() && self.decisions.len() >= MAX_DECISIONS {
                out.ignored += 1;
                continue;
            }
            if let Target::Range(_) = ban.target {
                // A decision already held as a range takes no new room.
                let was_range = matches!(replaced, Some(Target::Range(_)));
                if !was_range && self.ranges >= MAX_RANGES {
                    out.ignored += 1;
                    continue;
                }
                ranges_changed = true;
            }
            if let Some(old) = replaced {
                self.remove(ban.id);
                if matches!(old, Target::Range(_)) {
                    ranges_changed = true;
                }
            }
            if matches!(ban.target, Target::Range(_)) {
                self.ranges += 1;
            }
            self.decisions.insert(
                ban.id,
                Held {
                    target: ban.target,
                    until: now + ban.duration,
                },
            );
            out.applied += 1;
            if let Target::Client(client) = ban.target {
                out.actions.push(Action::Block {
                    client,
                    duration: ban.duration,
                });
            }
        }

        if let Some(external) = external_blocks {
            let covered: HashSet<ClientKey> = self
                .decisions
                .values()
                .filter_map(|h| match h.target {
                    Target::Client(k) => Some(k),
                    Target::Range(_) => None,
                })
                .collect();
            for &client in external {
                // Lifted above already: the engine has no such block now.
                if covered.contains(&client) || !unblocked.insert(client) {
                    continue;
                }
                out.removed += 1;
                out.actions.push(Action::Unblock {
                    client,
                    why: Lift::Uncovered,
                });
            }
        }
        if ranges_changed {
            out.actions.push(self.set_ranges());
        }
        out
    }

    fn set_ranges(&self) -> Action {
        let mut ranges: Vec<Cidr> = self
            .decisions
            .values()
            .filter_map(|h| match h.target {
                Target::Range(c) => Some(c),
                Target::Client(_) => None,
            })
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        Action::SetRanges(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const MIN: Duration = Duration::from_secs(60);

    fn client(last: u8) -> ClientKey {
        ClientKey::new(IpAddr::from([192, 0, 2, last]), 64)
    }

    fn ban(id: u64, target: Target, duration: Duration) -> New {
        New::Ban(Ban {
            id,
            target,
            duration,
        })
    }

    fn on(id: u64, last: u8) -> New {
        ban(id, Target::Client(client(last)), 10 * MIN)
    }

    fn range(text: &str) -> Cidr {
        Cidr::parse(text).unwrap()
    }

    fn block(last: u8, duration: Duration) -> Action {
        Action::Block {
            client: client(last),
            duration,
        }
    }

    fn unblock(last: u8, why: Lift) -> Action {
        Action::Unblock {
            client: client(last),
            why,
        }
    }

    #[test]
    fn a_client_ban_is_a_block_for_the_decisions_duration() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let out = ledger.delta(now, &[ban(1, Target::Client(client(7)), 3 * MIN)], &[]);
        assert_eq!(out.actions, vec![block(7, 3 * MIN)]);
        assert_eq!((out.applied, out.ignored, out.removed), (1, 0, 0));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn unusable_decisions_are_counted_and_not_held() {
        let mut ledger = Ledger::default();
        let out = ledger.delta(Instant::now(), &[New::Unusable, on(1, 7)], &[]);
        assert_eq!((out.applied, out.ignored), (1, 1));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_wider_range_goes_to_the_denylist_until_it_expires() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let out = ledger.delta(
            now,
            &[
                ban(1, Target::Range(range("10.8.0.0/16")), 5 * MIN),
                ban(2, Target::Range(range("10.9.0.0/16")), 20 * MIN),
            ],
            &[],
        );
        assert_eq!(
            out.actions,
            vec![Action::SetRanges(vec![
                range("10.8.0.0/16"),
                range("10.9.0.0/16")
            ])]
        );
        assert!(ledger.expire(now + 4 * MIN).is_empty());
        assert_eq!(
            ledger.expire(now + 5 * MIN),
            vec![Action::SetRanges(vec![range("10.9.0.0/16")])]
        );
        assert_eq!(ledger.len(), 1);
        // An expired client decision needs no action: the engine's block
        // ends on its own clock.
        ledger.delta(now, &[on(3, 7)], &[]);
        assert!(ledger.expire(now + 11 * MIN).is_empty());
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_deletion_lifts_only_what_no_other_decision_covers() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.delta(now, &[on(1, 7), on(2, 7), on(3, 8)], &[]);
        // 7 is still covered by decision 2.
        let out = ledger.delta(now, &[], &[1, 3, 99]);
        assert_eq!(out.actions, vec![unblock(8, Lift::Deleted)]);
        assert_eq!(out.removed, 2);
        let out = ledger.delta(now, &[], &[2]);
        assert_eq!(out.actions, vec![unblock(7, Lift::Deleted)]);
    }

    #[test]
    fn a_deleted_range_is_taken_out_of_the_denylist() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let r = Target::Range(range("10.8.0.0/16"));
        ledger.delta(now, &[ban(1, r, MIN), ban(2, r, MIN)], &[]);
        let out = ledger.delta(now, &[], &[1]);
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        let out = ledger.delta(now, &[], &[2]);
        assert_eq!(out.actions, vec![Action::SetRanges(vec![])]);
    }

    #[test]
    fn a_full_pull_forgets_unlisted_decisions_and_lifts_uncovered_external_blocks() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.delta(now, &[on(1, 7), on(2, 8)], &[]);
        // Decision 2 was deleted while the stream was not heard; 9 is an
        // external block restored from a previous run; 7 stays listed.
        let out = ledger.full(now, &[on(1, 7)], &[], &[client(7), client(8), client(9)]);
        assert_eq!(
            out.actions,
            vec![
                unblock(8, Lift::Deleted),
                block(7, 10 * MIN),
                unblock(9, Lift::Uncovered),
            ]
        );
        assert_eq!((out.applied, out.removed), (1, 2));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_delta_never_lifts_uncovered_blocks() {
        let mut ledger = Ledger::default();
        let out = ledger.delta(Instant::now(), &[on(1, 7)], &[]);
        assert_eq!(out.actions, vec![block(7, 10 * MIN)]);
    }

    #[test]
    fn a_deletion_and_a_new_ban_in_one_answer_end_blocked() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.delta(now, &[on(1, 7)], &[]);
        let out = ledger.delta(now, &[on(2, 7)], &[1]);
        assert_eq!(
            out.actions,
            vec![unblock(7, Lift::Deleted), block(7, 10 * MIN)]
        );
    }

    #[test]
    fn decisions_are_bounded() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let bans: Vec<New> = (0..MAX_DECISIONS as u64 + 5)
            .map(|id| on(id, (id % 250) as u8))
            .collect();
        let out = ledger.delta(now, &bans, &[]);
        assert_eq!(out.applied, MAX_DECISIONS as u64);
        assert_eq!(out.ignored, 5);
        assert_eq!(ledger.len(), MAX_DECISIONS);
        // A decision already held is refreshed, not refused.
        let out = ledger.delta(now, &[on(0, 0)], &[]);
        assert_eq!((out.applied, out.ignored), (1, 0));
    }

    #[test]
    fn ranges_are_bounded_and_a_resent_range_is_not_refused() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        let bans: Vec<New> = (0..MAX_RANGES as u64 + 3)
            .map(|id| {
                let cidr = Cidr::parse(&format!("10.{}.{}.0/24", id / 256, id % 256)).unwrap();
                ban(id, Target::Range(cidr), MIN)
            })
            .collect();
        let out = ledger.delta(now, &bans, &[]);
        assert_eq!((out.applied, out.ignored), (MAX_RANGES as u64, 3));
        let Some(Action::SetRanges(set)) = out.actions.last() else {
            panic!("{:?}", out.actions.last());
        };
        assert_eq!(set.len(), MAX_RANGES);
        // Client bans still fit: the range bound is its own.
        assert_eq!(ledger.delta(now, &[on(5000, 7)], &[]).applied, 1);
        assert_eq!(ledger.delta(now, &[bans[0]], &[]).ignored, 0);
        // Room freed by a deletion is room again.
        ledger.delta(now, &[], &[1]);
        assert_eq!(ledger.delta(now, &[bans[MAX_RANGES]], &[]).applied, 1);
    }
}
