//! mtguard on an appliance: the core's [`SecurityManager`] driven by
//! embassy-net, with no heap.
//!
//! A [`Guard`] listens on one TCP port of an [`embassy_net::Stack`] through a
//! fixed number of connection slots ([`Slot`], all buffers inside, so the
//! memory is a number known at link time). For each connection it:
//! 1. asks the engine at accept, with the client's address, before reading
//!    a byte; a refused client is reset at once and costs no backend socket;
//! 2. reads the first bytes until the core's MTProto [`Inspector`] decides
//!    (when secrets are configured; otherwise any first bytes pass), racing
//!    the engine's handshake deadline; a refused handshake is reported to the
//!    engine (so scanners and replays get blocked) and reset;
//! 3. opens a second socket to the backend, sends it the first bytes on
//!    their own write, then forwards both ways byte for byte, honouring
//!    half-close, until both directions end or nothing moves for
//!    [`Config::idle_timeout`];
//! 4. tells the engine the connection closed, on every path.
//!
//! When every slot is busy no socket listens, so the stack answers a new
//! client's SYN with a reset: a clean refusal that costs nothing, and the
//! next free slot listens again.
//!
//! Deadlines (blocks ending, handshake timeouts, under-attack mode) run in
//! [`Guard::run`] next to the slots: it sleeps until the engine's
//! `poll_timeout` and calls `handle_timeout`, with time from embassy-time.
//! Everything worth logging goes out as a [`GuardEvent`] through a bounded
//! embassy-sync channel ([`Guard::events`]); with the `defmt` feature
//! [`Guard::log_events`] logs them.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// On the library only: the tests' shared helpers are `pub` by need.
#![warn(unreachable_pub)]

pub mod app;
pub mod sntp;

use core::cell::RefCell;
use core::net::IpAddr;
use core::sync::atomic::{AtomicU32, Ordering};

use embassy_futures::join::join_array;
use embassy_futures::select::{select, select3, Either3};
use embassy_net::tcp::{TcpReader, TcpSocket, TcpWriter};
use embassy_net::{IpEndpoint, Stack};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::channel::{Channel, Receiver};
use embassy_sync::signal::Signal;
use embassy_time::{with_timeout, Duration, Instant as EmbassyInstant, Timer};
use mtguard_core::mtproto::replay::Entry;
use mtguard_core::mtproto::{Inspector, Invalid, ReplayCache, SecretSet, TimeWindow, Verdict};
use mtguard_core::{
    ConnectionId, Event, HandshakeOutcome, Instant, Policy, RejectReason, SecurityManager, Seed,
    Storage, Tables,
};

pub use mtguard_core as core_engine;

/// Events the channel holds before the oldest unread ones are dropped (and
/// counted in [`Guard::dropped_events`]): a logger that falls behind must
/// not stall the guard.
pub const EVENT_QUEUE: usize = 32;

/// The first bytes of a TLS handshake record, as the core's inspector
/// recognises a fake-TLS client.
const TLS_START: [u8; 3] = [0x16, 0x03, 0x01];

/// How long closing a socket may wait for the peer to acknowledge what was
/// still in flight (or for the reset to leave) before the slot is reused.
const LINGER: Duration = Duration::from_secs(2);

/// The state every slot shares. Slots run on one executor, but the lock is
/// embassy-sync's critical-section mutex rather than a spinlock: on a
/// single-core microcontroller a spinlock taken by a task and wanted by an
/// interrupt handler (or a higher-priority executor) would spin forever,
/// since the holder cannot run until the waiter returns; a critical section
/// masks interrupts for the few microseconds of an engine call instead, so
/// there is never a holder that cannot make progress.
type Shared<T> = Mutex<CriticalSectionRawMutex, RefCell<T>>;

/// Where and how admitted connections are forwarded.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The TCP port clients connect to.
    pub port: u16,
    /// The proxy behind the guard.
    pub backend: IpEndpoint,
    /// How long connecting to the backend may take.
    pub connect_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed
    /// (also bounds the wait for the first bytes when the policy has no
    /// handshake deadline).
    pub idle_timeout: Duration,
    /// How far fake-TLS timestamps may stray from the wall clock (also how
    /// long accepted handshakes are remembered against replays).
    pub window: TimeWindow,
    /// How long a wall-clock time given to [`Guard::set_unix_time`] is
    /// trusted. Past it, with no newer time, fake-TLS handshakes are
    /// refused as [`End::NoClock`]: a clock that drifts unchecked would
    /// slowly accept hellos recorded long ago, or refuse everyone.
    pub clock_max_age: Duration,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum End {
    /// Both directions finished normally.
    Done,
    /// The client left before sending a handshake.
    ClientGone,
    /// The engine's handshake deadline passed first (slowloris).
    HandshakeTimeout,
    /// The first bytes were not a valid handshake; reset without contacting
    /// the backend.
    Probe(Invalid),
    /// The backend could not be reached.
    BackendUnreachable,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A peer reset the connection.
    Reset,
    /// A fake-TLS handshake arrived while the guard has no fresh wall
    /// clock (never set, or older than [`Config::clock_max_age`]); reset
    /// without judging it, and not held against the client.
    NoClock,
}

/// What the guard reports, besides the engine's own events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GuardEvent {
    /// An event of the engine (blocks, unblocks, detections...).
    Engine(Event),
    /// A client was refused at accept.
    Refused {
        /// Its address.
        client: IpAddr,
        /// Why.
        reason: RejectReason,
    },
    /// An admitted connection ended.
    Closed {
        /// The client's address.
        client: IpAddr,
        /// How.
        end: End,
        /// Bytes forwarded from the client to the backend.
        up: u64,
        /// Bytes forwarded from the backend to the client.
        down: u64,
    },
}

/// Why a [`Guard`] cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NewError {
    /// The engine refused its policy or tables.
    Engine,
    /// The replay cache storage is empty or too large.
    ReplayCache,
    /// Port 0 cannot be listened on (every accept would fail at once).
    Port,
}

/// One connection slot: the client socket's and the backend socket's
/// buffers (`B` bytes each way), the handshake buffer of `HS` bytes (also
/// the client-to-backend copy buffer) and the handshake inspector.
/// `HS` is the longest fake-TLS ClientHello the slot can judge (current
/// clients send 1.5 to 2 KiB); at least 64.
pub struct Slot<const B: usize, const HS: usize> {
    client_rx: [u8; B],
    client_tx: [u8; B],
    backend_rx: [u8; B],
    backend_tx: [u8; B],
    up: [u8; HS],
    down: [u8; B],
    inspector: Inspector<HS>,
}

impl<const B: usize, const HS: usize> Slot<B, HS> {
    /// Bytes of RAM one slot takes.
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// Empty buffers; `const` so slots can live in a `static`.
    pub const fn new() -> Self {
        Slot {
            client_rx: [0; B],
            client_tx: [0; B],
            backend_rx: [0; B],
            backend_tx: [0; B],
            up: [0; HS],
            down: [0; B],
            inspector: Inspector::new(),
        }
    }
}

impl<const B: usize, const HS: usize> Default for Slot<B, HS> {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner<'a, S: Storage, const SLOTS: usize> {
    engine: SecurityManager<S>,
    secrets: SecretSet,
    replay: ReplayCache<&'a mut [Entry]>,
    /// The connection each slot serves, so a handshake timeout reaches it.
    serving: [Option<ConnectionId>; SLOTS],
    /// The wall clock, once known.
    clock: Option<WallClock>,
}

/// What the last clock update said.
#[derive(Clone, Copy)]
struct WallClock {
    /// Unix seconds at embassy-time's zero.
    unix_at_zero: u64,
    /// When it was set, to tell a stale clock.
    set_at: EmbassyInstant,
}

impl<S: Storage, const SLOTS: usize> Inner<'_, S, SLOTS> {
    /// Unix seconds now, if the clock is set and not older than `max_age`.
    fn unix_now(&self, max_age: Duration) -> Option<u64> {
        let clock = self.clock?;
        let now = EmbassyInstant::now();
        if now.saturating_duration_since(clock.set_at) > max_age {
            return None;
        }
        Some(clock.unix_at_zero.saturating_add(now.as_secs()))
    }
}

/// The guard: the engine, the MTProto state and the event channel, shared
/// by `SLOTS` connection slots.
pub struct Guard<'a, S: Storage, const SLOTS: usize> {
    inner: Shared<Inner<'a, S, SLOTS>>,
    config: Config,
    inspect: bool,
    /// Wakes a slot whose handshake the engine timed out.
    timed_out: [Signal<CriticalSectionRawMutex, ()>; SLOTS],
    /// Wakes the deadline loop after a handler may have set an earlier one.
    rearm: Signal<CriticalSectionRawMutex, ()>,
    events: Channel<CriticalSectionRawMutex, GuardEvent, EVENT_QUEUE>,
    dropped: AtomicU32,
}

/// The engine's clock: milliseconds of embassy-time.
fn now() -> Instant {
    Instant::from_millis(EmbassyInstant::now().as_millis())
}

impl<'a, S: Storage, const SLOTS: usize> Guard<'a, S, SLOTS> {
    /// A guard over the engine `tables`, enforcing `policy`. With `secrets`
    /// non-empty every connection's first bytes must be a valid MTProto
    /// handshake for one of them; accepted handshakes are remembered in
    /// `replay` (every entry [`Entry::EMPTY`]) for the fake-TLS time
    /// window. `seed` must be random (hash keys and block jitter).
    pub fn new(
        tables: Tables<S>,
        policy: Policy,
        seed: Seed,
        secrets: SecretSet,
        replay: &'a mut [Entry],
        config: Config,
    ) -> Result<Self, NewError> {
        if config.port == 0 {
            return Err(NewError::Port);
        }
        let engine =
            SecurityManager::new(tables, policy, seed, now()).map_err(|_| NewError::Engine)?;
        // A second key for the replay cache, derived so that the two tables
        // do not share one.
        let mut replay_key = seed.hash_key;
        for (b, j) in replay_key
            .iter_mut()
            .zip(seed.jitter.to_le_bytes().iter().cycle())
        {
            *b ^= j ^ 0x5c;
        }
        let replay = ReplayCache::new(replay, replay_key, config.window)
            .map_err(|_| NewError::ReplayCache)?;
        let inspect = !secrets.as_slice().is_empty();
        Ok(Guard {
            inner: Mutex::new(RefCell::new(Inner {
                engine,
                secrets,
                replay,
                serving: [None; SLOTS],
                clock: None,
            })),
            config,
            inspect,
            timed_out: [const { Signal::new() }; SLOTS],
            rearm: Signal::new(),
            events: Channel::new(),
            dropped: AtomicU32::new(0),
        })
    }

    /// Tells the guard the wall-clock time (Unix seconds), from SNTP or an
    /// RTC. Fake-TLS handshakes carry a timestamp, so until this is called,
    /// and again once the last call is older than
    /// [`Config::clock_max_age`], they are refused as [`End::NoClock`].
    pub fn set_unix_time(&self, now_unix: u64) {
        let now = EmbassyInstant::now();
        let clock = WallClock {
            unix_at_zero: now_unix.saturating_sub(now.as_secs()),
            set_at: now,
        };
        self.inner.lock(|c| c.borrow_mut().clock = Some(clock));
    }

    /// The wall-clock time (Unix seconds), if it is set and fresh.
    pub fn unix_time(&self) -> Option<u64> {
        let max_age = self.config.clock_max_age;
        self.inner.lock(|c| c.borrow().unix_now(max_age))
    }

    /// Runs `f` on the engine (for getters and operator commands such as
    /// `block`), then forwards the events it produced. `f` runs inside a
    /// critical section: keep it short, and do not call the guard from it.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut SecurityManager<S>, Instant) -> R) -> R {
        self.with(|inner| f(&mut inner.engine, now()))
    }

    /// The receiving end of the event channel. Read it from one task.
    pub fn events(&self) -> Receiver<'_, CriticalSectionRawMutex, GuardEvent, EVENT_QUEUE> {
        self.events.receiver()
    }

    /// Events dropped because the channel was full.
    pub fn dropped_events(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Logs every event with defmt, forever. Spawn it as its own task.
    #[cfg(feature = "defmt")]
    pub async fn log_events(&self) -> ! {
        loop {
            let event = self.events.receive().await;
            match event {
                GuardEvent::Engine(e) => defmt::info!("mtguard: {}", e),
                GuardEvent::Refused { client, reason } => {
                    defmt::info!("mtguard: refused {} ({})", client, reason)
                }
                GuardEvent::Closed {
                    client,
                    end,
                    up,
                    down,
                } => defmt::debug!(
                    "mtguard: {} closed: {} ({} up, {} down)",
                    client,
                    end,
                    up,
                    down
                ),
            }
        }
    }

    /// Serves `stack` with `slots` and runs the engine's deadlines, forever.
    /// The stack needs a socket for each slot's client and backend
    /// connections: `StackResources` of at least `2 * SLOTS` (plus what the
    /// rest of the firmware uses).
    pub async fn run<const B: usize, const HS: usize>(
        &self,
        stack: Stack<'_>,
        slots: &mut [Slot<B, HS>; SLOTS],
    ) -> ! {
        let mut index = 0;
        let workers = slots.each_mut().map(|slot| {
            let i = index;
            index += 1;
            self.serve_slot(stack, i, slot)
        });
        select(self.deadlines(), join_array(workers)).await;
        // Neither side returns; this only satisfies the type.
        loop {
            core::future::pending::<()>().await;
        }
    }

    /// Runs `f` under the lock, then hands out the events it produced and
    /// wakes the deadline loop.
    fn with<R>(&self, f: impl FnOnce(&mut Inner<'a, S, SLOTS>) -> R) -> R {
        let r = self.inner.lock(|c| {
            let mut inner = c.borrow_mut();
            let r = f(&mut inner);
            while let Some(event) = inner.engine.poll_event() {
                if let Event::HandshakeTimeout { connection } = event {
                    if let Some(slot) = inner.serving.iter().position(|c| *c == Some(connection)) {
                        self.timed_out[slot].signal(());
                    }
                }
                self.emit(GuardEvent::Engine(event));
            }
            r
        });
        self.rearm.signal(());
        r
    }

    fn emit(&self, event: GuardEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn deadlines(&self) {
        loop {
            let next = self.inner.lock(|c| c.borrow().engine.poll_timeout());
            match next {
                Some(at) => {
                    let at = EmbassyInstant::from_millis(at.as_millis());
                    select(Timer::at(at), self.rearm.wait()).await;
                }
                None => self.rearm.wait().await,
            }
            let now = now();
            let due = self
                .inner
                .lock(|c| c.borrow().engine.poll_timeout().is_some_and(|at| at <= now));
            if due {
                self.with(|inner| inner.engine.handle_timeout(now));
                // `with` re-signalled `rearm` for itself; the next wait
                // must sleep until the new deadline instead.
                self.rearm.reset();
            }
        }
    }

    async fn serve_slot<const B: usize, const HS: usize>(
        &self,
        stack: Stack<'_>,
        index: usize,
        slot: &mut Slot<B, HS>,
    ) {
        loop {
            let Slot {
                client_rx,
                client_tx,
                backend_rx,
                backend_tx,
                up,
                down,
                inspector,
            } = &mut *slot;
            let mut client = TcpSocket::new(stack, client_rx, client_tx);
            if client.accept(self.config.port).await.is_err() {
                continue;
            }
            let Some(peer) = client.remote_endpoint() else {
                client.abort();
                continue;
            };
            let ip = IpAddr::from(peer.addr);
            let verdict = self.with(|inner| {
                let verdict = inner.engine.handle_connect(now(), ip);
                if let mtguard_core::Verdict::Admit(id) = verdict {
                    inner.serving[index] = Some(id);
                    self.timed_out[index].reset();
                }
                verdict
            });
            let id = match verdict {
                mtguard_core::Verdict::Admit(id) => id,
                mtguard_core::Verdict::Reject(reason) => {
                    self.emit(GuardEvent::Refused { client: ip, reason });
                    client.abort();
                    let _ = with_timeout(LINGER, client.flush()).await;
                    continue;
                }
            };

            *inspector = Inspector::new();
            let (end, up_bytes, down_bytes) = self
                .relay(
                    stack,
                    index,
                    id,
                    &mut client,
                    backend_rx,
                    backend_tx,
                    up,
                    down,
                    inspector,
                )
                .await;
            self.with(|inner| {
                inner.serving[index] = None;
                // The id came from this engine and is closed only here.
                let _ = inner.engine.handle_close(now(), id);
            });
            self.emit(GuardEvent::Closed {
                client: ip,
                end,
                up: up_bytes,
                down: down_bytes,
            });
            match end {
                End::Done | End::ClientGone => client.close(),
                // A slowloris client or a prober gets what a refused one
                // gets; a broken relay is not drained either.
                _ => client.abort(),
            }
            let _ = with_timeout(LINGER, client.flush()).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn relay<const HS: usize>(
        &self,
        stack: Stack<'_>,
        index: usize,
        id: ConnectionId,
        client: &mut TcpSocket<'_>,
        backend_rx: &mut [u8],
        backend_tx: &mut [u8],
        up: &mut [u8; HS],
        down: &mut [u8],
        inspector: &mut Inspector<HS>,
    ) -> (End, u64, u64) {
        // Phase 2: the first bytes, until they are judged.
        let mut len = 0;
        // Bytes the inspector has seen (it is not fed while the no-clock
        // check waits for the first three).
        let mut fed = 0;
        let first = loop {
            if len == up.len() {
                // The inspector refuses an over-long record from its
                // header, so this is not reached; it keeps a full buffer
                // from ever turning into an endless zero-length read.
                self.handshake(id, HandshakeOutcome::Invalid);
                return (End::Probe(Invalid::OversizedHello), 0, 0);
            }
            let read = select3(
                client.read(&mut up[len..]),
                self.timed_out[index].wait(),
                Timer::after(self.config.idle_timeout),
            )
            .await;
            let n = match read {
                Either3::First(Ok(0)) => return (End::ClientGone, 0, 0),
                Either3::First(Ok(n)) => n,
                Either3::First(Err(_)) => return (End::Reset, 0, 0),
                Either3::Second(()) => return (End::HandshakeTimeout, 0, 0),
                Either3::Third(()) => return (End::Idle, 0, 0),
            };
            len += n;
            if !self.inspect {
                break len;
            }
            let max_age = self.config.clock_max_age;
            let verdict = self.with(|inner| {
                let now_unix = inner.unix_now(max_age);
                if now_unix.is_none() && inner.secrets.has_fake_tls() {
                    // The inspector's own test for a fake-TLS client: a
                    // TLS handshake record. Without a clock its timestamp
                    // cannot be judged, and a refusal as "out of window"
                    // would count against a client that did nothing wrong.
                    let k = len.min(TLS_START.len());
                    if up[..k] == TLS_START[..k] {
                        return if k < TLS_START.len() {
                            None
                        } else {
                            Some(Err(()))
                        };
                    }
                }
                let verdict = inspector.feed(
                    &up[fed..len],
                    now_unix.unwrap_or(0),
                    &inner.secrets,
                    &inner.secrets,
                    &mut inner.replay,
                );
                fed = len;
                Some(Ok(verdict))
            });
            match verdict {
                None | Some(Ok(Verdict::NeedMore)) => continue,
                Some(Ok(Verdict::Valid(_))) => break len,
                Some(Ok(Verdict::Invalid(reason))) => {
                    self.handshake(id, reason.outcome());
                    return (End::Probe(reason), 0, 0);
                }
                Some(Err(())) => return (End::NoClock, 0, 0),
            }
        };
        // Reported as first bytes, not as authenticated: the appliance
        // keeps every connection under the pending limit for now, as its
        // config block (format 1) carries no authenticated cap to set. See
        // docs/carrier-nat.md.
        self.handshake(id, HandshakeOutcome::Valid);

        // Phase 3: the backend, then both ways.
        let mut backend = TcpSocket::new(stack, backend_rx, backend_tx);
        match with_timeout(
            self.config.connect_timeout,
            backend.connect(self.config.backend),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => {
                backend.abort();
                return (End::BackendUnreachable, 0, 0);
            }
        }
        let mut to_backend = Pipe {
            start: 0,
            end: first,
            eof: false,
            moved: 0,
        };
        let mut to_client = Pipe::default();
        let end = self
            .forward(
                client,
                &mut backend,
                up,
                down,
                &mut to_backend,
                &mut to_client,
            )
            .await;
        match end {
            End::Done => backend.close(),
            _ => backend.abort(),
        }
        let _ = with_timeout(LINGER, backend.flush()).await;
        (end, to_backend.moved, to_client.moved)
    }

    /// Copies both ways until both directions ended, a peer reset, or
    /// nothing moved for the idle timeout. The first bytes (already in
    /// `to_backend`) go out on their own write, as the client sent them.
    async fn forward(
        &self,
        client: &mut TcpSocket<'_>,
        backend: &mut TcpSocket<'_>,
        up: &mut [u8],
        down: &mut [u8],
        to_backend: &mut Pipe,
        to_client: &mut Pipe,
    ) -> End {
        let mut last = EmbassyInstant::now();
        loop {
            if to_backend.finished() && to_client.finished() {
                return End::Done;
            }
            let step = {
                let (mut client_r, mut client_w) = client.split();
                let (mut backend_r, mut backend_w) = backend.split();
                select3(
                    to_backend.step(up, &mut client_r, &mut backend_w),
                    to_client.step(down, &mut backend_r, &mut client_w),
                    Timer::at(last + self.config.idle_timeout),
                )
                .await
            };
            match step {
                Either3::First(Ok(eof)) => {
                    if eof {
                        backend.close();
                    }
                }
                Either3::Second(Ok(eof)) => {
                    if eof {
                        client.close();
                    }
                }
                Either3::First(Err(())) | Either3::Second(Err(())) => return End::Reset,
                Either3::Third(()) => return End::Idle,
            }
            last = EmbassyInstant::now();
        }
    }

    fn handshake(&self, id: ConnectionId, outcome: HandshakeOutcome) {
        self.with(|inner| {
            let _ = inner.engine.handle_handshake(now(), id, outcome);
        });
    }
}

/// One direction of a relay. Its position lives outside the futures that
/// move the bytes, so that dropping a step which lost a `select` loses no
/// byte: embassy-net's reads and writes take effect only when they complete.
#[derive(Default)]
struct Pipe {
    start: usize,
    end: usize,
    eof: bool,
    moved: u64,
}

impl Pipe {
    fn finished(&self) -> bool {
        self.eof && self.start == self.end
    }

    /// Writes what is buffered, or reads more. `Ok(true)` when the source
    /// has just ended and everything it sent has been written (time to send
    /// the other peer a FIN); never completes once finished.
    async fn step(
        &mut self,
        buf: &mut [u8],
        from: &mut TcpReader<'_>,
        to: &mut TcpWriter<'_>,
    ) -> Result<bool, ()> {
        if self.finished() {
            core::future::pending::<()>().await;
        }
        if self.start < self.end {
            match to.write(&buf[self.start..self.end]).await {
                Ok(n) if n > 0 => {
                    self.start += n;
                    self.moved += n as u64;
                    Ok(self.finished())
                }
                _ => Err(()),
            }
        } else {
            match from.read(buf).await {
                Ok(0) => {
                    self.eof = true;
                    Ok(true)
                }
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    Ok(false)
                }
                Err(_) => Err(()),
            }
        }
    }
}
