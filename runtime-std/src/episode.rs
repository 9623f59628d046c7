//! Failures that repeat, logged once per episode instead of once per try.
//!
//! Whoever can make an operation fail (fill the descriptor table with
//! connections, fill the disk) must not also be able to fill the log: an
//! episode logs one line when it starts and one, with the number of
//! failures, when it ends. Between the two, failed tries back off
//! exponentially so a failure cannot become a busy loop either.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

/// A run of failures of one repeated operation.
#[derive(Debug)]
pub struct Episode {
    min: Duration,
    max: Duration,
    quiet: Duration,
    failures: u64,
    /// Consecutive failures without a success in between, for the backoff.
    streak: u32,
    last_failure: Option<Instant>,
    succeeded_since: bool,
}

/// What a failure means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The first failure of an episode: the one to log.
    pub first: bool,
    /// How long to wait before trying again.
    pub pause: Duration,
}

impl Episode {
    /// Backs off from `min` doubling to `max`; the episode ends once a try
    /// succeeded and nothing failed for `quiet` (zero: at the first success).
    pub const fn new(min: Duration, max: Duration, quiet: Duration) -> Episode {
        Episode {
            min,
            max,
            quiet,
            failures: 0,
            streak: 0,
            last_failure: None,
            succeeded_since: false,
        }
    }

    /// Whether an episode is running.
    pub fn active(&self) -> bool {
        self.failures > 0
    }

    /// Records a failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Failure {
        let first = self.failures == 0;
        self.failures += 1;
        self.last_failure = Some(now);
        self.succeeded_since = false;
        let pause = self
            .min
            .saturating_mul(1u32 << self.streak.min(20))
            .min(self.max);
        self.streak = self.streak.saturating_add(1);
        Failure { first, pause }
    }

    /// Records a success at `now`; `Some(failures)` when it ends the
    /// episode (log the recovery then).
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        self.streak = 0;
        if !self.active() {
            return None;
        }
        self.succeeded_since = true;
        match self.ends_at() {
            Some(at) if now >= at => Some(self.end()),
            _ => None,
        }
    }

    /// When the episode ends unless something fails before: only once a
    /// try succeeded after the last failure.
    pub fn ends_at(&self) -> Option<Instant> {
        if !self.succeeded_since {
            return None;
        }
        Some(self.last_failure? + self.quiet)
    }

    /// Ends the episode; returns how many tries failed in it.
    pub fn end(&mut self) -> u64 {
        let failures = self.failures;
        *self = Episode::new(self.min, self.max, self.quiet);
        failures
    }
}

/// Accept errors that concern one incoming connection only: the next
/// accept may succeed at once, and nothing is wrong with the listener.
pub fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The first and the longest pause after an accept error that is not the
/// failure of one incoming connection (EMFILE, ENFILE, ENOBUFS, ENOMEM...).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// See [`ACCEPT_BACKOFF_MIN`].
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// An accept episode ends after this long without a failure (and with an
/// accept that worked): at the descriptor limit accepts fail and succeed in
/// turn as connections come and go, and that is one episode, not many.
pub const ACCEPT_QUIET: Duration = Duration::from_secs(2);

/// Accept errors of one listener, logged once per episode; `who` prefixes
/// the messages ("" for the proxy, "admin API: " for the admin API).
#[derive(Debug)]
pub struct AcceptTrouble {
    who: &'static str,
    episode: Episode,
}

impl AcceptTrouble {
    /// No trouble yet.
    pub const fn new(who: &'static str) -> AcceptTrouble {
        AcceptTrouble {
            who,
            episode: Episode::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX, ACCEPT_QUIET),
        }
    }

    /// A listener error: logged if it starts an episode; returns the pause.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        let f = self.episode.failed(Instant::now());
        if f.first {
            tracing::error!(
                error = %e,
                "{}accept failed; retrying with backoff (logged once until accepting has worked for {}s)",
                self.who,
                ACCEPT_QUIET.as_secs()
            );
        }
        f.pause
    }

    /// An accept worked.
    pub fn accepted(&mut self) {
        if let Some(failures) = self.episode.succeeded(Instant::now()) {
            self.log_recovery(failures);
        }
    }

    /// When to call [`AcceptTrouble::quiet_passed`] if nothing else happens.
    pub fn ends_at(&self) -> Option<Instant> {
        self.episode.ends_at()
    }

    /// The quiet time after the last failure has passed: the episode ends.
    pub fn quiet_passed(&mut self) {
        if self.episode.active() {
            let failures = self.episode.end();
            self.log_recovery(failures);
        }
    }

    fn log_recovery(&self, failures: u64) {
        tracing::info!(failures, "{}accepting again", self.who);
    }
}

impl Drop for AcceptTrouble {
    fn drop(&mut self) {
        self.quiet_passed();
    }
}

/// Sleeps until `at`, or forever without one (for a `select!` arm).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_episode_through_alternating_failures_and_successes() {
        let ms = Duration::from_millis;
        let mut e = Episode::new(ms(10), ms(80), ms(1000));
        let t0 = Instant::now();
        assert!(e.failed(t0).first);
        assert_eq!(e.succeeded(t0 + ms(5)), None);
        let f = e.failed(t0 + ms(10));
        assert!(
            !f.first,
            "a success inside the quiet time continues the episode"
        );
        assert_eq!(f.pause, ms(10), "a success resets the backoff");
        assert_eq!(e.failed(t0 + ms(20)).pause, ms(20));
        assert_eq!(e.failed(t0 + ms(40)).pause, ms(40));
        assert_eq!(e.failed(t0 + ms(80)).pause, ms(80));
        assert_eq!(e.failed(t0 + ms(160)).pause, ms(80), "capped");
        assert_eq!(e.ends_at(), None, "nothing worked yet");
        assert_eq!(e.succeeded(t0 + ms(200)), None);
        assert_eq!(e.ends_at(), Some(t0 + ms(1160)));
        assert_eq!(e.succeeded(t0 + ms(1200)), Some(6));
        assert!(!e.active());
        assert!(e.failed(t0 + ms(1300)).first, "a new episode");
    }

    #[test]
    fn without_quiet_time_the_first_success_ends_it() {
        let s = Duration::from_secs;
        let mut e = Episode::new(s(1), s(8), Duration::ZERO);
        let t0 = Instant::now();
        assert!(e.failed(t0).first);
        assert!(!e.failed(t0 + s(1)).first);
        assert_eq!(e.succeeded(t0 + s(3)), Some(2));
        assert_eq!(e.succeeded(t0 + s(4)), None);
    }
}
