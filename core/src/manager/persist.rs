//! Persistence: the snapshot of what must survive a restart, and its
//! restore. The format lives in [`crate::snapshot`]; this file decides what
//! goes into it and checks a whole snapshot before applying any of it.

use core::time::Duration;

use crate::cidr::{Cidr, CidrSet, Origin};
use crate::event::BlockCause;
use crate::pins::{Pin, PinKind};
use crate::snapshot::{self, Section, SnapshotError};
use crate::storage::Storage;
use crate::table::{ClientSlot, Idle, SlotIndex};
use crate::time::duration_millis;
use crate::wheel::TimerWheel;
use crate::Instant;

use super::SecurityManager;

impl<S: Storage> SecurityManager<S> {
    pub(super) fn persistent_clients(&self) -> impl Iterator<Item = &ClientSlot> + '_ {
        self.clients
            .as_ref()
            .iter()
            .filter(|s| s.occupied() && (s.blocked() || s.offences > 0))
    }

    pub(super) fn manual_prefixes(set: &CidrSet<S::Prefixes>) -> impl Iterator<Item = Cidr> + '_ {
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
        self.index = SlotIndex::new(
            self.clients.as_mut(),
            self.buckets.as_mut(),
            self.index.hash_key(),
        );
        self.client_timers = TimerWheel::new();
        // An empty slice only advances the new wheel: nothing expires.
        let _ = self.client_timers.poll_expired::<ClientSlot>(&mut [], now);
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

    pub(super) fn validate_snapshot(
        &self,
        mut r: snapshot::Reader<'_>,
    ) -> Result<Restored, SnapshotError> {
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
