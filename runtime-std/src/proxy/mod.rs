//! Forwarding: accepts clients, lets the guard decide on each one at accept
//! (before reading a byte), and relays the admitted ones to the backend
//! proxy byte for byte.
//!
//! A connection goes through three phases:
//! 1. accept: `Guard::connect`; a refused client is reset at once (SO_LINGER
//!    0) and costs no backend connection (a blocked or denylisted one gets
//!    `[refusal] blocked`'s answer instead, see [`refusal`]);
//! 2. handshake: the client's first bytes are awaited, racing the engine's
//!    handshake deadline (slowloris) and shutdown (the idle timeout applies
//!    here only when the engine has no deadline to judge them); they are
//!    judged by [`first_bytes`] and the verdict reported to the engine;
//! 3. relay: the backend is connected, sent the PROXY header if configured,
//!    then the first bytes on their own write, then both directions are
//!    copied until both are done, honouring half-close, with an idle timeout.
//!
//! The engine hears of the connection's end exactly once, on every path
//! (panics and cancellation included), through a drop guard.
//!
//! The relay does not change the byte stream: it never coalesces the first
//! bytes with what follows and never buffers beyond one read.
//!
//! With MTProto inspection ([`serve_inspected`] with a [`Mtproto`] state),
//! phase 2 feeds every read to the connection's [`Inspector`] until it
//! decides: a valid handshake is reported as such and forwarded (everything
//! read so far on one write); an invalid one is reported with its outcome
//! (invalid or replay, so the engine's scanner and replay detection work)
//! and then answered as `[refusal]` says (reset, drop, mask, or a TLS
//! alert): the backend never hears of it.

pub mod header;
pub mod inspect;
pub mod refusal;

pub use header::proxy_header;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mtguard_core::mtproto::{Inspector, Invalid, Verdict};
use mtguard_core::{ConnectionId, HandshakeOutcome, RejectReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::{Answer, ProxyProtocol, RefusalCase, RefusalSettings};
use crate::engine::{Admitted, Guard};
use crate::episode::{self, is_connection_error, AcceptTrouble};
use crate::proxy::inspect::Mtproto;
use crate::proxy::refusal::{Held, Slot, Spliced};
use crate::telemetry::{BackendFailure, Given, MaskBound, RefusalCap, Telemetry};

/// How admitted connections are forwarded. Read once per connection, at
/// accept: a reload applies to new connections.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// The backend proxy, `host:port` (resolved per connection).
    pub backend: String,
    /// The PROXY protocol header sent to the backend, if any.
    pub proxy_protocol: ProxyProtocol,
    /// How long connecting to the backend may take.
    pub connect_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed
    /// (also bounds the wait for the first bytes).
    pub idle_timeout: Duration,
    /// TLS to the backend (`[server.backend_tls]`), pinned; `None` relays
    /// over plain TCP.
    pub backend_tls: Option<BackendTls>,
    /// What refused sources see (`[refusal]`, resolved for the level).
    pub refusal: RefusalSettings,
}

/// How to wrap the backend connection in TLS. The verifier behind the
/// connector reads the engine's pins at each handshake, so a pin changed
/// through the admin API applies to the next connection.
#[derive(Clone)]
pub struct BackendTls {
    /// rustls, with the pinned verifier.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the certificate must be valid for, sent as SNI.
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Size of each direction's copy buffer. Each relayed connection holds two,
/// allocated once.
pub(crate) const COPY_BUFFER: usize = 16 * 1024;

/// The most the handshake buffer grows to while the inspection asks for
/// more bytes: one whole TLS record (5-byte header and 2^14 bytes), which
/// bounds a fake-TLS ClientHello.
const HANDSHAKE_MAX: usize = 5 + (1 << 14);

/// At most one warning per this period about an unreachable backend; the
/// other failures are logged at debug level.
const BACKEND_WARN_EVERY: Duration = Duration::from_secs(10);

/// What the guard makes of the bytes a client sent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// A handshake the backend should see: forward the connection.
    Forward,
    /// Too few bytes to decide: read more (the deadline still runs).
    NeedMore,
    /// Not a handshake to forward: the engine is told `outcome` and the
    /// connection is closed without contacting the backend.
    Refuse(HandshakeOutcome),
}

/// Judges a connection's first bytes (`bytes` is never empty and holds
/// everything read so far). Without MTProto inspection any bytes pass;
/// inspection plugs in here.
pub fn first_bytes(bytes: &[u8]) -> Inspection {
    if bytes.is_empty() {
        Inspection::NeedMore
    } else {
        Inspection::Forward
    }
}

/// Live connections the engine counts (admitted and not yet closed).
pub fn active_connections(guard: &Guard) -> u32 {
    guard.with(|e, _| e.active_connections())
}

/// Accepts on `listener` until `shutdown` becomes true (or its sender is
/// dropped); each connection is decided by the guard at accept, before any
/// read. On shutdown the listener is dropped, so new connections are
/// refused by the kernel; admitted connections carry on (those still
/// waiting for their first bytes are closed) and the caller drains them.
pub async fn serve(
    listener: TcpListener,
    guard: Arc<Guard>,
    settings: watch::Receiver<Arc<ProxySettings>>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (_none, mtproto) = watch::channel(None);
    let telemetry = Arc::new(Telemetry::default());
    serve_inspected(listener, guard, settings, mtproto, telemetry, shutdown).await
}

/// [`serve`] with MTProto handshake inspection while `mtproto` holds a
/// state (read once per connection, at accept, like `settings`: a reload
/// applies to new connections); `None` forwards any first bytes. Refused
/// handshakes are counted in `telemetry`.
pub async fn serve_inspected(
    listener: TcpListener,
    guard: Arc<Guard>,
    settings: watch::Receiver<Arc<ProxySettings>>,
    mtproto: watch::Receiver<Option<Arc<Mtproto>>>,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let listening = listener.local_addr()?;
    let shared = Arc::new(Shared::new(telemetry));
    let mut trouble = AcceptTrouble::new("");
    // The kernel takes a descriptor before it looks at the queue, so the
    // last try of a burst at the limit can fail on an empty queue; the try
    // after the pause then finds nobody waiting, tokio parks it, and with
    // no accept to count as a success the episode would stay open (no
    // recovery line, no error line for the next episode) until someone
    // connects. A parked first try after a failure did get a descriptor:
    // that is accepting working.
    let mut retrying = false;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|&stop| stop) => break,
            accepted = listener.accept() => accepted,
            () = std::future::ready(()), if retrying => {
                retrying = false;
                trouble.accepted();
                continue;
            }
            () = episode::sleep_until(trouble.ends_at()) => {
                trouble.quiet_passed();
                continue;
            }
        };
        retrying = false;
        match accepted {
            Ok((stream, peer)) => {
                trouble.accepted();
                let listener = Listener {
                    guard: &guard,
                    settings: &settings,
                    mtproto: &mtproto,
                    shutdown: &shutdown,
                    shared: &shared,
                };
                admit(stream, peer, listening, &listener);
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "accept: incoming connection failed");
            }
            Err(e) => {
                let pause = trouble.failed(&e);
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|&stop| stop) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                retrying = true;
            }
        }
    }
    tracing::debug!(%listening, "stopped accepting");
    Ok(())
}

/// State shared by the connections of one listener.
struct Shared {
    epoch: Instant,
    /// When the last backend warning was logged, in ms since `epoch`, plus
    /// one (zero: never).
    backend_warned: AtomicU64,
    /// Where refused handshakes are counted.
    telemetry: Arc<Telemetry>,
}

impl Shared {
    fn new(telemetry: Arc<Telemetry>) -> Self {
        Shared {
            epoch: Instant::now(),
            backend_warned: AtomicU64::new(0),
            telemetry,
        }
    }

    fn backend_failed(
        &self,
        backend: &str,
        peer: SocketAddr,
        (kind, error): &(BackendFailure, io::Error),
    ) {
        self.telemetry.ops.backend_failures.record(*kind);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.backend_warned.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= BACKEND_WARN_EVERY.as_millis() as u64;
        if due
            && self
                .backend_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                backend,
                %error,
                "cannot reach the backend (further failures within {}s at debug level)",
                BACKEND_WARN_EVERY.as_secs()
            );
        } else {
            tracing::debug!(backend, %peer, %error, "cannot reach the backend");
        }
    }
}

/// The engine's view of one admitted connection: reports its end exactly
/// once when dropped, whatever ends the task (return, panic, cancellation).
struct Registration {
    guard: Arc<Guard>,
    id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.guard.close(self.id);
    }
}

/// What `admit` needs from the accept loop.
struct Listener<'a> {
    guard: &'a Arc<Guard>,
    settings: &'a watch::Receiver<Arc<ProxySettings>>,
    mtproto: &'a watch::Receiver<Option<Arc<Mtproto>>>,
    shutdown: &'a watch::Receiver<bool>,
    shared: &'a Arc<Shared>,
}

fn admit(stream: TcpStream, peer: SocketAddr, listening: SocketAddr, listener: &Listener<'_>) {
    let Listener {
        guard,
        settings,
        mtproto,
        shutdown,
        shared,
    } = *listener;
    let peer = canonical(peer);
    let Admitted { id, timed_out } = match guard.connect(peer.ip()) {
        Ok(admitted) => admitted,
        Err(RejectReason::Blocked | RejectReason::Denylisted) => {
            let settings = settings.borrow().clone();
            refuse_blocked(stream, peer, guard, settings, shared, shutdown);
            return;
        }
        Err(_) => {
            // The engine counts refusals; logging each would let a flood
            // fill the logs. A limit's refusal is always a reset: it comes
            // in floods, and holding or masking would cost what the limit
            // saves.
            reset_on_close(&stream);
            return;
        }
    };
    let registration = Registration {
        guard: guard.clone(),
        id,
    };
    let _ = stream.set_nodelay(true);
    // The accepted socket's own address is the real destination even when
    // the listener is bound to a wildcard address.
    let local = canonical(stream.local_addr().unwrap_or(listening));
    let settings = settings.borrow().clone();
    let mtproto = mtproto.borrow().clone();
    let connection = Connection {
        registration,
        peer,
        local,
        settings,
        mtproto,
        shared: Arc::clone(shared),
    };
    tokio::spawn(connection.run(stream, timed_out, shutdown.clone()));
}

/// A blocked or denylisted client, refused at accept: `[refusal] blocked`'s
/// answer. A drop or a mask first takes a place under `max_held`; a mask
/// reads the first bytes (within the handshake deadline) and only then,
/// with a place under `max_masked`, connects the cover site. A flood from
/// blocked addresses so costs at most those caps; beyond them, a reset.
/// The engine has refused the connection already: it does not count it.
fn refuse_blocked(
    stream: TcpStream,
    peer: SocketAddr,
    guard: &Arc<Guard>,
    settings: Arc<ProxySettings>,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
) {
    let case = RefusalCase::Blocked;
    let answer = settings.refusal.answer(case);
    if answer == Answer::Reset {
        shared.telemetry.ops.refusals.given(case, Given::Reset);
        reset_on_close(&stream);
        return;
    }
    let guard = Arc::clone(guard);
    let shared = Arc::clone(shared);
    let mut shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut client = stream;
        let r = &settings.refusal;
        let refusals = &shared.telemetry.ops.refusals;
        let reset = |client: &TcpStream| {
            refusals.given(case, Given::Reset);
            reset_on_close(client);
        };
        let Some(held) = Slot::take(refusals, RefusalCap::Held, r.max_held) else {
            return reset(&client);
        };
        if answer == Answer::Drop {
            refusals.given(case, Given::Drop);
            let held = refusal::hold(&mut client, r.drop_timeout, &mut shutdown).await;
            tracing::debug!(%peer, ?held, "blocked client dropped");
            return;
        }
        // The first bytes may take as long as a handshake may. Asked here,
        // not at accept: a drop needs no deadline, and a flood of blocked
        // clients beyond max_held never takes the engine lock twice.
        let wait = guard
            .with(|e, _| e.policy().handshake_timeout)
            .unwrap_or(r.drop_timeout);
        let mut first = Vec::with_capacity(COPY_BUFFER);
        let read = tokio::select! {
            read = tokio::time::timeout(wait, client.read_buf(&mut first)) => read,
            _ = shutdown.wait_for(|&stop| stop) => return reset(&client),
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Gone before a byte: nothing to answer.
            Ok(Ok(_)) => return,
            Ok(Err(_)) | Err(_) => return reset(&client),
        }
        let delay = refusal::draw_delay(r);
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|&stop| stop) => return reset(&client),
            }
        }
        drop(held);
        let Some(_masked) = Slot::take(refusals, RefusalCap::Masked, r.max_masked) else {
            return reset(&client);
        };
        let Some(cover) = r.mask_backend.as_deref() else {
            return reset(&client);
        };
        refusals.given(case, Given::Mask);
        match mask(&mut client, &first, cover, &settings, &shared, peer).await {
            Ok(spliced) => tracing::debug!(%peer, ?spliced, "blocked client masked"),
            Err(_) => reset_on_close(&client),
        }
    });
}

/// Connects to the cover site and splices `client` to it, `first` first,
/// under `[refusal]`'s bounds (a cut is counted). An error: the cover site
/// could not be reached (counted as a backend failure).
async fn mask(
    client: &mut TcpStream,
    first: &[u8],
    cover: &str,
    settings: &ProxySettings,
    shared: &Shared,
    peer: SocketAddr,
) -> io::Result<Spliced> {
    let r = &settings.refusal;
    let backend = match connect(cover, settings.connect_timeout).await {
        Ok(backend) => backend,
        Err(e) => {
            shared.backend_failed(cover, peer, &e);
            return Err(e.1);
        }
    };
    let _ = backend.set_nodelay(true);
    let ops = &shared.telemetry.ops;
    let spliced = refusal::splice(
        client,
        backend,
        first,
        r.mask_max_bytes,
        r.mask_timeout,
        &ops.relayed,
    )
    .await;
    if let Spliced::Cut { bound, .. } = &spliced {
        ops.refusals.cut(*bound);
    }
    Ok(spliced)
}

/// Makes dropping `stream` send a reset: no FIN exchange and no TIME_WAIT
/// state left on the guard's side, which is what a flood must cost.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Why a connection ended (logged at debug level).
enum End {
    /// Both directions finished.
    Done { up: u64, down: u64 },
    /// The client closed before sending anything.
    ClientGone,
    /// The engine's handshake deadline passed before the first bytes.
    HandshakeTimeout,
    /// Shutdown came before the first bytes.
    Shutdown,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// The inspection refused the first bytes.
    Refused(HandshakeOutcome),
    /// MTProto inspection refused the first bytes (`len` of them were read).
    Probe { reason: Invalid, len: usize },
    /// A refused handshake was answered with a TLS alert.
    Alerted { reason: Invalid },
    /// A refused handshake was held silently, then closed.
    Dropped { reason: Invalid, held: Held },
    /// A refused handshake was relayed to the mask backend.
    Masked { reason: Invalid, up: u64, down: u64 },
    /// ... and cut short at a bound.
    MaskCut {
        reason: Invalid,
        bound: MaskBound,
        up: u64,
        down: u64,
    },
    /// The mask backend could not be reached: reset.
    MaskFailed(io::Error),
    /// A valid handshake from a client holding its authenticated cap.
    AuthenticatedLimit,
    /// The backend could not be reached.
    Backend(io::Error),
    /// A socket error, on either side.
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Done { up, down } => write!(f, "done: {up} bytes up, {down} bytes down"),
            End::ClientGone => f.write_str("client closed before sending"),
            End::HandshakeTimeout => f.write_str("handshake timed out"),
            End::Shutdown => f.write_str("shutdown before the first bytes"),
            End::Idle => f.write_str("idle timeout"),
            End::Refused(outcome) => write!(f, "first bytes refused ({outcome:?})"),
            End::Probe { reason, .. } => write!(f, "handshake refused ({reason:?}); closed"),
            End::Alerted { reason } => {
                write!(f, "handshake refused ({reason:?}); TLS alert sent")
            }
            End::Dropped { reason, held } => {
                write!(f, "handshake refused ({reason:?}); dropped ({held:?})")
            }
            End::Masked { reason, up, down } => write!(
                f,
                "handshake refused ({reason:?}); masked: {up} bytes up, {down} bytes down"
            ),
            End::MaskCut {
                reason,
                bound,
                up,
                down,
            } => write!(
                f,
                "handshake refused ({reason:?}); masked, cut at the {} bound: {up} bytes up, {down} bytes down",
                bound.as_str()
            ),
            End::MaskFailed(e) => write!(f, "mask backend unreachable: {e}"),
            End::AuthenticatedLimit => {
                f.write_str("valid handshake refused: the client holds its authenticated cap")
            }
            End::Backend(e) => write!(f, "backend unreachable: {e}"),
            End::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

struct Connection {
    registration: Registration,
    peer: SocketAddr,
    local: SocketAddr,
    settings: Arc<ProxySettings>,
    mtproto: Option<Arc<Mtproto>>,
    shared: Arc<Shared>,
}

impl Connection {
    async fn run(
        self,
        mut client: TcpStream,
        timed_out: oneshot::Receiver<()>,
        shutdown: watch::Receiver<bool>,
    ) {
        let started = Instant::now();
        let end = self.relay(&mut client, timed_out, shutdown).await;
        if matches!(
            end,
            End::HandshakeTimeout | End::Probe { .. } | End::MaskFailed(_)
        ) {
            // A slowloris client or a prober gets what a refused one gets.
            reset_on_close(&client);
        }
        tracing::debug!(
            peer = %self.peer,
            connection = ?self.registration.id,
            ms = started.elapsed().as_millis() as u64,
            end = %end,
            "connection closed"
        );
        // `self.registration` drops here (and on every other exit) and
        // reports the close to the engine.
    }

    async fn relay(
        &self,
        client: &mut TcpStream,
        timed_out: oneshot::Receiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let guard = &self.registration.guard;
        let id = self.registration.id;
        // Capacity, not zeroed length: reads go into the spare capacity
        // (`read_buf`), so no connection pays for zeroing its buffers.
        let mut buf = Vec::with_capacity(COPY_BUFFER);

        let mut inspector = self
            .mtproto
            .as_ref()
            .map(|_| crate::proxy::inspect::new_inspector());
        let inspection = self.mtproto.as_ref().map(|m| (m, &mut inspector));
        let first = tokio::select! {
            read = read_handshake(client, &mut buf, inspection, &self.shared.telemetry) => read,
            _ = deadline(timed_out) => Err(End::HandshakeTimeout),
            _ = shutdown.wait_for(|&stop| stop) => Err(End::Shutdown),
            _ = idle_before_judgement(guard, self.settings.idle_timeout) => Err(End::Idle),
        };
        let first = match first {
            Ok(len) => len,
            Err(End::Refused(outcome)) => {
                guard.handshake(id, outcome);
                return End::Refused(outcome);
            }
            Err(End::Probe {
                reason: Invalid::KeyUnavailable,
                len,
            }) => {
                // The token holding a key did not answer: the client may
                // well be a legitimate one, so its address is not charged
                // with an invalid handshake; the connection is closed
                // (fail closed), not masked.
                return End::Probe {
                    reason: Invalid::KeyUnavailable,
                    len,
                };
            }
            Err(End::Probe { reason, len }) => {
                guard.handshake(id, reason.outcome());
                drop(inspector);
                return self
                    .refuse(client, reason, &buf[..len], &mut shutdown)
                    .await;
            }
            Err(end) => return end,
        };
        drop(inspector);
        if self.mtproto.is_some() {
            // Valid for one of the secrets: the connection leaves the
            // pending count for its client's larger authenticated cap.
            if !guard.authenticated(id) {
                return End::AuthenticatedLimit;
            }
        } else {
            // Without secrets the first bytes prove nothing: the
            // connection stays under the pending limit.
            guard.handshake(id, HandshakeOutcome::Valid);
        }

        let backend = match connect(&self.settings.backend, self.settings.connect_timeout).await {
            Ok(backend) => backend,
            Err(e) => {
                self.shared
                    .backend_failed(&self.settings.backend, self.peer, &e);
                return End::Backend(e.1);
            }
        };
        let _ = backend.set_nodelay(true);

        let header = match proxy_header(self.settings.proxy_protocol, self.peer, self.local) {
            Ok(header) => header,
            Err(e) => return End::Io(e),
        };
        let relayed = match &self.settings.backend_tls {
            None => self.pipe(client, backend, header, &mut buf, first).await,
            Some(tls) => {
                // The handshake, and the pin check inside it, run in this
                // connection's task: a slow or hostile backend delays only
                // this client.
                let handshake = tls.connector.connect(tls.server_name.clone(), backend);
                let handshake = tokio::time::timeout(self.settings.connect_timeout, handshake)
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "TLS handshake with the backend timed out",
                        ))
                    });
                let backend = match handshake {
                    Ok(backend) => backend,
                    Err(e) => {
                        let kind = match e.kind() {
                            io::ErrorKind::TimedOut => BackendFailure::Timeout,
                            _ => BackendFailure::Tls,
                        };
                        let failure = (kind, e);
                        self.shared
                            .backend_failed(&self.settings.backend, self.peer, &failure);
                        return End::Backend(failure.1);
                    }
                };
                self.pipe(client, backend, header, &mut buf, first).await
            }
        };
        match relayed {
            Ok((up, down)) => End::Done { up, down },
            Err(end) => end,
        }
    }

    /// After a refused handshake: answers as `[refusal]` says for its
    /// case. `first` holds what was read (the refused handshake).
    async fn refuse(
        &self,
        client: &mut TcpStream,
        reason: Invalid,
        first: &[u8],
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let r = &self.settings.refusal;
        let refusals = &self.shared.telemetry.ops.refusals;
        let case = match reason {
            Invalid::Replay => RefusalCase::Replay,
            _ => RefusalCase::FailedHandshake,
        };
        let reset = || {
            refusals.given(case, Given::Reset);
            End::Probe {
                reason,
                len: first.len(),
            }
        };
        let answer = r.answer(case);
        if answer == Answer::Reset && r.tls_alerts {
            if let Some(description) = refusal::alert_for(reason) {
                // At once, undelayed: a web server refusing a hello it
                // cannot use answers as fast as it reads it, and a delay
                // there would be the tell.
                refusals.given(case, Given::Alert);
                return match refusal::send_alert(client, description).await {
                    Ok(()) => End::Alerted { reason },
                    Err(e) => End::Io(e),
                };
            }
        }
        if answer == Answer::Drop {
            let Some(_held) = Slot::take(refusals, RefusalCap::Held, r.max_held) else {
                return reset();
            };
            refusals.given(case, Given::Drop);
            let held = refusal::hold(client, r.drop_timeout, shutdown).await;
            return End::Dropped { reason, held };
        }
        let delay = refusal::draw_delay(r);
        if !delay.is_zero() {
            let Some(_held) = Slot::take(refusals, RefusalCap::Held, r.max_held) else {
                return reset();
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|&stop| stop) => return reset(),
            }
        }
        let Some(mask_backend) = r.mask_backend.as_deref().filter(|_| answer == Answer::Mask)
        else {
            return reset();
        };
        let Some(_masked) = Slot::take(refusals, RefusalCap::Masked, r.max_masked) else {
            return reset();
        };
        refusals.given(case, Given::Mask);
        match mask(
            client,
            first,
            mask_backend,
            &self.settings,
            &self.shared,
            self.peer,
        )
        .await
        {
            Ok(Spliced::Done { up, down }) => End::Masked { reason, up, down },
            Ok(Spliced::Cut { bound, up, down }) => End::MaskCut {
                reason,
                bound,
                up,
                down,
            },
            Ok(Spliced::Io(e)) => End::Io(e),
            Err(e) => End::MaskFailed(e),
        }
    }

    /// Sends `header` and the `first` bytes of `buf` (on their own write)
    /// to `backend`, then relays both ways until both are done; the bytes
    /// moved up (first bytes included) and down.
    async fn pipe<B: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut TcpStream,
        mut backend: B,
        header: Option<Vec<u8>>,
        buf: &mut Vec<u8>,
        first: usize,
    ) -> Result<(u64, u64), End> {
        let activity = Activity::new();
        let forward = async {
            if let Some(header) = header {
                backend.write_all(&header).await?;
            }
            // The first bytes go on their own write, as the client sent them.
            backend.write_all(&buf[..first]).await?;
            activity.touch();
            let relayed = &self.shared.telemetry.ops.relayed;
            relayed.up.0.fetch_add(first as u64, Ordering::Relaxed);
            let mut down = Vec::with_capacity(COPY_BUFFER);
            let (mut client_read, mut client_write) = client.split();
            // tokio's generic split (a TLS stream has no borrowed halves):
            // both halves are polled from this one task, so its lock is
            // never contended.
            let (mut backend_read, mut backend_write) = tokio::io::split(&mut backend);
            tokio::try_join!(
                pump(
                    &mut client_read,
                    &mut backend_write,
                    buf,
                    &activity,
                    &relayed.up.0
                ),
                pump(
                    &mut backend_read,
                    &mut client_write,
                    &mut down,
                    &activity,
                    &relayed.down.0
                ),
            )
        };
        tokio::select! {
            done = forward => match done {
                Ok((up, down)) => Ok((up + first as u64, down)),
                Err(e) => Err(End::Io(e)),
            },
            _ = activity.idle(self.settings.idle_timeout) => Err(End::Idle),
        }
    }
}

/// Connects to `backend` (`host:port`), as `TcpStream::connect` does
/// (each resolved address in turn, the last error if none answers),
/// but resolving first so that a name that does not resolve is told
/// apart from an address that does not answer.
async fn connect(
    backend: &str,
    timeout: Duration,
) -> Result<TcpStream, (BackendFailure, io::Error)> {
    let connect = async {
        let addrs = tokio::net::lookup_host(backend)
            .await
            .map_err(|e| (BackendFailure::Resolve, e))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => (BackendFailure::of_connect(&e), e),
            None => (
                BackendFailure::Resolve,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the backend resolved to no address",
                ),
            ),
        })
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(connected) => connected,
        Err(_) => Err((
            BackendFailure::Timeout,
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connecting to the backend timed out",
            ),
        )),
    }
}

/// Reads until [`first_bytes`] (or, with `inspection`, the MTProto
/// inspector) decides; returns how many bytes of `buf` hold the handshake.
async fn read_handshake(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut inspection: Option<(&Arc<Mtproto>, &mut Option<Box<Inspector>>)>,
    telemetry: &Telemetry,
) -> Result<usize, End> {
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= HANDSHAKE_MAX {
                return Err(End::Refused(HandshakeOutcome::Invalid));
            }
            buf.reserve_exact(HANDSHAKE_MAX - buf.len());
        }
        let n = client.read_buf(buf).await.map_err(End::Io)?;
        if n == 0 {
            return Err(End::ClientGone);
        }
        let len = buf.len();
        if let Some((mtproto, inspector)) = inspection.as_mut() {
            match crate::proxy::inspect::feed(
                mtproto,
                inspector,
                &buf[len - n..len],
                &telemetry.handshake_failures,
            )
            .await
            {
                Verdict::NeedMore => continue,
                Verdict::Valid(_) => return Ok(len),
                Verdict::Invalid(reason) => return Err(End::Probe { reason, len }),
            }
        }
        match first_bytes(&buf[..len]) {
            Inspection::Forward => return Ok(len),
            Inspection::NeedMore => {}
            Inspection::Refuse(outcome) => return Err(End::Refused(outcome)),
        }
    }
}

/// Completes when a connection still silent before its handshake is judged
/// should be closed as idle: only when the engine has no handshake deadline
/// that would judge it.
///
/// The deadline owns that phase: closing a silent connection as idle first
/// (an `idle_timeout` shorter than the deadline) would hide every slowloris
/// client, since the engine would never see the timeout, count it or block.
/// The policy is read again at each idle interval, so a reload that turns
/// the deadline off lets the idle timer close connections again; one
/// admitted while the deadline was off (and so without one) is closed once
/// it has been silent for the deadline plus an idle interval.
async fn idle_before_judgement(guard: &Guard, idle: Duration) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(idle).await;
        match guard.with(|e, _| e.policy().handshake_timeout) {
            None => return,
            Some(deadline) if started.elapsed() >= deadline + idle => return,
            Some(_) => {}
        }
    }
}

/// Completes when the engine times the handshake out; never if it has no
/// deadline for it (the sender is dropped without firing).
async fn deadline(timed_out: oneshot::Receiver<()>) {
    if timed_out.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// When a byte last moved, either way, for the idle timeout.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let at =
                self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= at {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Copies one direction until the reader's end of file, then shuts down the
/// writer's side (half-close) so the peer sees it and can still answer.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    buf: &mut Vec<u8>,
    activity: &Activity,
    relayed: &AtomicU64,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0u64;
    loop {
        // What was already forwarded (the first bytes, the last read) is
        // dropped; the read fills the capacity and never grows it.
        buf.clear();
        let n = reader.read_buf(buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        activity.touch();
        writer.write_all(&buf[..n]).await?;
        activity.touch();
        // One relaxed add per chunk (up to COPY_BUFFER bytes): no lock,
        // and the metrics see a long connection's bytes as they flow.
        relayed.fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
    }
}
