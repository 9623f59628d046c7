//! Time as the core sees it: a value the runtime passes in.
//!
//! The core never reads a clock. Runtimes convert their monotonic clock
//! (tokio's `Instant`, embassy-time's `Instant`) into milliseconds since an
//! arbitrary epoch of their choosing; tests use virtual time, so a 300-second
//! block is tested in microseconds and every run is reproducible.

use core::time::Duration;

/// A point on the runtime's monotonic clock, in milliseconds since an epoch
/// the runtime chose (process start, boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Instant(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant; used for "never".
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// An instant `s` seconds after the epoch.
    pub const fn from_secs(s: u64) -> Self {
        Instant(s.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Instant::MAX`] rather than wrapping, so a
    /// huge configured duration means "practically never", not "already".
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(duration_millis(d)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
pub fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_millis(u64::MAX - 5);
        assert_eq!(t.saturating_add(Duration::from_secs(1)), Instant::MAX);
        assert_eq!(
            Instant::ZERO.saturating_since(Instant::from_secs(3)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_secs(3).saturating_since(Instant::from_millis(500)),
            Duration::from_millis(2500)
        );
    }
}
