//! What a refused source sees (`[refusal]`): the pieces the relay puts
//! together for each answer.
//!
//! - reset: SO_LINGER 0 and close, as before;
//! - drop: the connection is held silently, what it sends read and thrown
//!   away (so the close at the end is a FIN, not the reset the kernel sends
//!   for unread data), until `drop_timeout`;
//! - mask: the cover site is connected, sent the bytes already read, then
//!   both directions are spliced under a byte budget and a deadline;
//! - a TLS alert, in place of a reset, for a malformed ClientHello or an
//!   unknown SNI.
//!
//! Every answer that keeps a connection open takes a place under a cap
//! first ([`Slot`]): `max_held` for holding (a drop, a delay, a blocked
//! client awaiting its first bytes), `max_masked` for a cover-site
//! connection. Without a place the answer is a reset, so a flood costs at
//! most the caps, in descriptors and in cover-site connections.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mtguard_core::mtproto::Invalid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RefusalSettings;
use crate::telemetry::{MaskBound, RefusalCap, Refusals, RelayedBytes};

/// A place under one of the caps, given back when dropped (whatever ends
/// the task).
pub(super) struct Slot<'a> {
    refusals: &'a Refusals,
    cap: RefusalCap,
}

impl<'a> Slot<'a> {
    /// A place under `cap` if fewer than `max` are taken (a refusal at the
    /// cap is counted otherwise).
    pub(super) fn take(refusals: &'a Refusals, cap: RefusalCap, max: u32) -> Option<Slot<'a>> {
        // `then`, not `then_some`: a Slot built eagerly and dropped for a
        // refused take would give back a place it never had.
        refusals.try_take(cap, max).then(|| Slot { refusals, cap })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.refusals.release(self.cap);
    }
}

/// TLS alert description `decode_error` (RFC 8446, 6.2).
pub const DECODE_ERROR: u8 = 50;
/// TLS alert description `unrecognized_name` (RFC 6066, 3).
pub const UNRECOGNIZED_NAME: u8 = 112;

/// A fatal alert record: content type 21, record version 0x0303 (what
/// TLS 1.3 servers write, RFC 8446 5.1), length 2, level fatal (2), the
/// description.
pub fn alert_record(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// The alert a real server sends for a ClientHello refused for `reason`,
/// if it would send one: it cannot parse the hello, or it serves no such
/// name. The other reasons are about secrets, which a web server knows
/// nothing of: it would have answered with its own handshake.
pub fn alert_for(reason: Invalid) -> Option<u8> {
    match reason {
        Invalid::MalformedHello | Invalid::OversizedHello => Some(DECODE_ERROR),
        Invalid::WrongSni => Some(UNRECOGNIZED_NAME),
        _ => None,
    }
}

/// How long a connection answered with an alert is drained before it is
/// closed: a close with unread bytes in the socket sends a reset, which
/// could reach the client before the alert does, and is not what a server
/// that sent an alert does.
const ALERT_LINGER: Duration = Duration::from_secs(1);

/// Writes the alert, closes the sending side, and drains what the client
/// still sends for up to [`ALERT_LINGER`].
pub(super) async fn send_alert(client: &mut TcpStream, description: u8) -> io::Result<()> {
    let record = alert_record(description);
    tokio::time::timeout(ALERT_LINGER, async {
        client.write_all(&record).await?;
        client.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
    let _ = tokio::time::timeout(ALERT_LINGER, discard(client)).await;
    Ok(())
}

/// Reads and throws away until the client's end of file or an error.
async fn discard(client: &mut TcpStream) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// How a held connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// `drop_timeout` passed.
    Timeout,
    /// The client closed (or its socket failed) first.
    ClientGone,
    /// The guard is shutting down.
    Shutdown,
}

/// Holds `client` silently for `timeout`, reading and throwing away what
/// it sends.
pub(super) async fn hold(
    client: &mut TcpStream,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Held {
    tokio::select! {
        () = discard(client) => Held::ClientGone,
        () = tokio::time::sleep(timeout) => Held::Timeout,
        _ = shutdown.wait_for(|&stop| stop) => Held::Shutdown,
    }
}

/// A delay drawn uniformly from `[delay_min, delay_max]`, to the
/// millisecond, from the operating system's random source (the runtime's
/// RNG: the guard has no other).
pub(super) fn draw_delay(r: &RefusalSettings) -> Duration {
    let (min, max) = (r.delay_min, r.delay_max.max(r.delay_min));
    let span = (max - min).as_millis() as u64;
    if span == 0 {
        return min;
    }
    // A failed random source leaves the shortest delay: the answer still
    // comes, only less well disguised.
    let draw = getrandom::u64().unwrap_or(0) % (span + 1);
    min + Duration::from_millis(draw)
}

/// How a masked connection ended.
#[derive(Debug)]
pub(super) enum Spliced {
    /// Both directions finished.
    Done { up: u64, down: u64 },
    /// A bound cut it short.
    Cut {
        bound: MaskBound,
        up: u64,
        down: u64,
    },
    /// A socket error on either side.
    Io(io::Error),
}

/// Sends `first` to `cover`, then copies both ways until both are done,
/// `max_bytes` (both directions together, `first` included) or
/// `timeout`, whichever comes first. Bytes are counted in `relayed` as
/// they move, as for any relayed connection.
pub(super) async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut TcpStream,
    mut cover: C,
    first: &[u8],
    max_bytes: u64,
    timeout: Duration,
    relayed: &RelayedBytes,
) -> Spliced {
    let budget = AtomicU64::new(max_bytes);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let work = async {
        let allowed = charge(&budget, first.len());
        cover.write_all(&first[..allowed]).await.map_err(Stop::Io)?;
        up.fetch_add(allowed as u64, Ordering::Relaxed);
        relayed.up.0.fetch_add(allowed as u64, Ordering::Relaxed);
        if allowed < first.len() {
            return Err(Stop::Cut);
        }
        let (mut client_read, mut client_write) = client.split();
        let (mut cover_read, mut cover_write) = tokio::io::split(&mut cover);
        tokio::try_join!(
            pump(
                &mut client_read,
                &mut cover_write,
                &budget,
                &up,
                &relayed.up.0
            ),
            pump(
                &mut cover_read,
                &mut client_write,
                &budget,
                &down,
                &relayed.down.0
            ),
        )
    };
    let stopped = tokio::select! {
        done = work => done.err(),
        () = tokio::time::sleep_until(Instant::now() + timeout) => Some(Stop::Time),
    };
    let (up, down) = (up.into_inner(), down.into_inner());
    match stopped {
        None => Spliced::Done { up, down },
        Some(Stop::Cut) => Spliced::Cut {
            bound: MaskBound::Bytes,
            up,
            down,
        },
        Some(Stop::Time) => Spliced::Cut {
            bound: MaskBound::Time,
            up,
            down,
        },
        Some(Stop::Io(e)) => Spliced::Io(e),
    }
}

/// Why a splice stopped before both directions were done.
enum Stop {
    /// The byte budget ran out.
    Cut,
    /// The deadline passed.
    Time,
    Io(io::Error),
}

/// Takes up to `n` bytes from `budget`; how many it got.
fn charge(budget: &AtomicU64, n: usize) -> usize {
    let before = budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(n as u64))
        })
        .unwrap_or(0);
    before.min(n as u64) as usize
}

/// Copies one direction until the reader's end of file (then half-closes
/// the writer), charging each read to `budget`; what the budget does not
/// cover is not written, and the copy stops.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    budget: &AtomicU64,
    moved: &AtomicU64,
    relayed: &AtomicU64,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; super::COPY_BUFFER];
    loop {
        let n = reader.read(&mut buf).await.map_err(Stop::Io)?;
        if n == 0 {
            writer.shutdown().await.map_err(Stop::Io)?;
            return Ok(());
        }
        let allowed = charge(budget, n);
        writer.write_all(&buf[..allowed]).await.map_err(Stop::Io)?;
        moved.fetch_add(allowed as u64, Ordering::Relaxed);
        relayed.fetch_add(allowed as u64, Ordering::Relaxed);
        if allowed < n {
            return Err(Stop::Cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alerts_are_the_records_a_server_sends() {
        assert_eq!(alert_record(DECODE_ERROR), [0x15, 3, 3, 0, 2, 2, 0x32]);
        assert_eq!(alert_record(UNRECOGNIZED_NAME), [0x15, 3, 3, 0, 2, 2, 0x70]);
        assert_eq!(alert_for(Invalid::MalformedHello), Some(DECODE_ERROR));
        assert_eq!(alert_for(Invalid::OversizedHello), Some(DECODE_ERROR));
        assert_eq!(alert_for(Invalid::WrongSni), Some(UNRECOGNIZED_NAME));
        assert_eq!(alert_for(Invalid::HmacMismatch), None);
        assert_eq!(alert_for(Invalid::Replay), None);
    }

    #[test]
    fn a_budget_is_shared_and_never_overdrawn() {
        let budget = AtomicU64::new(10);
        assert_eq!(charge(&budget, 4), 4);
        assert_eq!(charge(&budget, 4), 4);
        assert_eq!(charge(&budget, 4), 2);
        assert_eq!(charge(&budget, 4), 0);
    }

    #[test]
    fn delays_stay_in_their_range() {
        let mut r = RefusalSettings {
            delay_min: Duration::from_millis(20),
            delay_max: Duration::from_millis(25),
            ..RefusalSettings::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let d = draw_delay(&r);
            assert!((20..=25).contains(&d.as_millis()), "{d:?}");
            seen.insert(d.as_millis());
        }
        assert_eq!(seen.len(), 6, "every millisecond of the range is drawn");
        r.delay_max = r.delay_min;
        assert_eq!(draw_delay(&r), Duration::from_millis(20));
        assert_eq!(
            draw_delay(&RefusalSettings::default()),
            Duration::ZERO,
            "no delay by default"
        );
    }

    #[test]
    fn a_cap_counts_its_refusals_and_gives_places_back() {
        let refusals = Refusals::default();
        let a = Slot::take(&refusals, RefusalCap::Masked, 2).unwrap();
        let _b = Slot::take(&refusals, RefusalCap::Masked, 2).unwrap();
        assert!(Slot::take(&refusals, RefusalCap::Masked, 2).is_none());
        assert_eq!(
            refusals.masked.load(Ordering::Relaxed),
            2,
            "a refused take gives nothing back"
        );
        drop(a);
        assert!(Slot::take(&refusals, RefusalCap::Masked, 2).is_some());
        assert_eq!(refusals.caps_reached(), [("held", 0), ("masked", 1)]);
        assert!(Slot::take(&refusals, RefusalCap::Held, 0).is_none());
    }
}
