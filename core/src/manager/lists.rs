//! The operator's lists and pins. Every edit bumps the state generation,
//! which is how a runtime knows a snapshot is due.

use crate::cidr::CidrSet;
use crate::event::Event;
use crate::pins::{Pin, PinKind, PinSet, PinSetError, PinVerdict};
use crate::storage::Storage;

use super::SecurityManager;

impl<S: Storage> SecurityManager<S> {
    /// The allowlist: addresses on it are never limited or blocked. It
    /// takes precedence over the denylist and over blocks.
    pub fn allowlist(&self) -> &CidrSet<S::Prefixes> {
        &self.allow
    }

    /// The denylist: addresses on it are always refused.
    pub fn denylist(&self) -> &CidrSet<S::Prefixes> {
        &self.deny
    }

    /// Edits the allowlist. Counts as a change of persistent state.
    pub fn allow_mut(&mut self) -> &mut CidrSet<S::Prefixes> {
        self.generation += 1;
        &mut self.allow
    }

    /// Edits the denylist. Counts as a change of persistent state.
    pub fn deny_mut(&mut self) -> &mut CidrSet<S::Prefixes> {
        self.generation += 1;
        &mut self.deny
    }

    /// The certificate pins upstream TLS connections are checked against.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// Adds a pin; the 101st is refused with [`PinSetError::Full`].
    pub fn add_pin(&mut self, pin: Pin) -> Result<(), PinSetError> {
        self.pins.add(pin)?;
        self.generation += 1;
        Ok(())
    }

    /// Removes a pin; returns it if it was there.
    pub fn remove_pin(&mut self, kind: PinKind, hash: &[u8; 32]) -> Option<Pin> {
        let removed = self.pins.remove(kind, hash);
        if removed.is_some() {
            self.generation += 1;
        }
        removed
    }

    /// Checks a presented chain (DER, leaf first) against the pins at Unix
    /// time `now_unix`. Anything but a match is counted and emitted as
    /// [`Event::PinMismatch`]; what to do about an empty or expired set is
    /// the caller's policy.
    pub fn verify_chain(&mut self, chain: &[&[u8]], now_unix: u64) -> PinVerdict {
        let verdict = self.pins.verify(chain, now_unix);
        if !verdict.is_match() {
            self.stats.pin_failures += 1;
            self.emit(Event::PinMismatch);
        }
        verdict
    }
}
