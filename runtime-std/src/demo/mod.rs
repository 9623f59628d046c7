//! `mtguard demo`: the main job, self-contained on loopback.
//!
//! One process runs a guard (the level 1 policy, scaled down to a demo of
//! seconds), an echo server standing in for the MTProto proxy, and three
//! kinds of clients, each connecting from its own 127.x.y.z source address
//! (loopback is a /8 on Linux, so every address is a distinct client):
//!
//! - legitimate clients (127.0.0.2, 127.0.0.3, ...): one small request every
//!   200-500 ms, echoed back; each request's latency is recorded;
//! - a flood from thousands of addresses in 127.1.0.0-127.200.255.255: each
//!   address opens a few connections that it holds without sending a byte,
//!   then keeps opening more; 1 in 25 addresses is a slowloris instead and
//!   only holds its connections until the guard times their handshakes out;
//! - a scanner: a few addresses sending random bytes, over and over.
//!
//! Everything is bounded in count and time, and stops by itself after the
//! demo's duration; then the report gives the legitimate clients' success
//! rate and latency, what happened to the flood, and the guard's counters.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mtguard_core::{BlockCause, Event, Level, Policy, RejectReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::config::ProxyProtocol;
use crate::engine::{Capacity, EventSink, Guard};
use crate::loadgen::{self, reset};
use crate::proxy::{self, ProxySettings};

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the clients, the flood and the scanner run.
    pub duration: Duration,
    /// Legitimate clients, from 127.0.0.2 on (at most 250).
    pub legit_clients: usize,
    /// Distinct flooding addresses (at most 50,000).
    pub flood_addresses: usize,
    /// Live progress bars on standard error (drawn only on a terminal).
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(20),
            legit_clients: 40,
            flood_addresses: 5_000,
            progress: false,
        }
    }
}

/// What happened during a demo.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// How long the clients ran.
    pub duration: Duration,
    /// Legitimate clients (addresses).
    pub legit_clients: usize,
    /// Requests the legitimate clients completed (served or not).
    pub legit_attempts: u64,
    /// Requests echoed back intact.
    pub legit_ok: u64,
    /// Requests the guard refused (closed or reset before the echo).
    pub legit_refused: u64,
    /// Requests that timed out or failed otherwise.
    pub legit_failed: u64,
    /// Median latency of the served requests, connect to echo received.
    pub legit_p50: Duration,
    /// 99th percentile of the same.
    pub legit_p99: Duration,
    /// Slowest served request.
    pub legit_max: Duration,
    /// Legitimate clients blocked at the end (should be none).
    pub legit_blocked: u32,
    /// Flooding addresses.
    pub flood_addresses: usize,
    /// Flood connections running at once (bounded by the file limit).
    pub flood_concurrency: usize,
    /// Flood connection attempts whose fate is known.
    pub flood_attempts: u64,
    /// Attempts the guard refused (closed or reset at once).
    pub flood_refused: u64,
    /// Attempts admitted (held open, or echoed).
    pub flood_admitted: u64,
    /// Attempts that neither were refused nor admitted in time.
    pub flood_failed: u64,
    /// Scanning addresses.
    pub scanner_addresses: usize,
    /// Scanner connection attempts.
    pub scanner_attempts: u64,
    /// Scanner attempts refused.
    pub scanner_refused: u64,
    /// Attacking addresses (flood and scanner) blocked at the end.
    pub attackers_blocked: u32,
    /// Blocks started, by cause (`violations`, `slowloris`, ...), nonzero only.
    pub blocked_by_cause: Vec<(&'static str, u64)>,
    /// Connections the guard refused, by reason, every reason in counter order.
    pub refused_by_reason: Vec<(&'static str, u64)>,
    /// Connections the guard admitted.
    pub admitted: u64,
    /// Times under-attack mode switched on.
    pub under_attack_episodes: u64,
    /// Most connections live in the guard at once (sampled every 100 ms).
    pub peak_active_connections: u32,
    /// Bytes of the engine's tables (fixed at start).
    pub table_bytes: u64,
    /// Peak resident memory of the whole process (VmHWM): guard, echo
    /// backend and every client; 0 where /proc is missing.
    pub peak_rss_bytes: u64,
}

impl DemoReport {
    /// Served legitimate requests over completed ones (1.0 with none).
    pub fn success_rate(&self) -> f64 {
        ratio(self.legit_ok, self.legit_attempts)
    }

    /// Refused flood attempts over flood attempts (0.0 with none).
    pub fn flood_refused_rate(&self) -> f64 {
        if self.flood_attempts == 0 {
            0.0
        } else {
            ratio(self.flood_refused, self.flood_attempts)
        }
    }

    /// Total connections the guard refused.
    pub fn refused_total(&self) -> u64 {
        self.refused_by_reason.iter().map(|(_, n)| n).sum()
    }

    /// The report as a text table.
    pub fn render(&self) -> String {
        let mut t = Table::default();
        let legit_last = 1 + self.legit_clients;
        t.title(&format!(
            "legitimate clients: {} addresses, 127.0.0.2-127.0.0.{legit_last}",
            self.legit_clients
        ));
        t.row("requests", num(self.legit_attempts));
        t.row(
            "served",
            format!("{} ({})", num(self.legit_ok), pct(self.success_rate())),
        );
        t.row(
            "refused / failed",
            format!("{} / {}", num(self.legit_refused), num(self.legit_failed)),
        );
        t.row(
            "latency p50 / p99",
            format!(
                "{} / {}  (max {}; connect to echo)",
                ms(self.legit_p50),
                ms(self.legit_p99),
                ms(self.legit_max)
            ),
        );
        t.row("clients blocked", num(self.legit_blocked as u64));

        t.title(&format!(
            "flood: {} addresses in 127.1.0.0-127.200.255.255, {} connections at a time",
            num(self.flood_addresses as u64),
            self.flood_concurrency
        ));
        t.row("connection attempts", num(self.flood_attempts));
        t.row(
            "refused",
            format!(
                "{} ({})",
                num(self.flood_refused),
                pct(self.flood_refused_rate())
            ),
        );
        t.row(
            "admitted",
            format!(
                "{}  (held open without a byte sent, within the per-client limit)",
                num(self.flood_admitted)
            ),
        );
        t.row("no answer in time", num(self.flood_failed));

        t.title(&format!(
            "scanner: {} addresses sending random bytes",
            self.scanner_addresses
        ));
        t.row("connection attempts", num(self.scanner_attempts));
        t.row(
            "refused",
            format!(
                "{} ({})",
                num(self.scanner_refused),
                pct(if self.scanner_attempts == 0 {
                    0.0
                } else {
                    ratio(self.scanner_refused, self.scanner_attempts)
                })
            ),
        );

        t.title("guard");
        let attackers = self.flood_addresses + self.scanner_addresses;
        let causes: Vec<String> = self
            .blocked_by_cause
            .iter()
            .map(|(cause, n)| format!("{cause} {}", num(*n)))
            .collect();
        t.row(
            "attackers blocked",
            format!(
                "{} of {}{}",
                num(self.attackers_blocked as u64),
                num(attackers as u64),
                if causes.is_empty() {
                    String::new()
                } else {
                    format!("  (blocks started: {})", causes.join(", "))
                }
            ),
        );
        t.row("connections admitted", num(self.admitted));
        t.row("connections refused", num(self.refused_total()));
        for (reason, n) in &self.refused_by_reason {
            t.row(&format!("  {reason}"), num(*n));
        }
        t.row(
            "under-attack mode",
            if self.under_attack_episodes == 0 {
                "never entered".to_string()
            } else {
                format!(
                    "entered {} time(s): per-client limits halved",
                    self.under_attack_episodes
                )
            },
        );
        t.row(
            "peak live connections",
            num(self.peak_active_connections as u64),
        );
        t.row(
            "engine tables",
            format!("{} (fixed at start)", mib(self.table_bytes)),
        );
        t.row(
            "peak memory (VmHWM)",
            if self.peak_rss_bytes == 0 {
                "unknown".to_string()
            } else {
                format!(
                    "{}  (whole process: guard, echo backend and all clients)",
                    mib(self.peak_rss_bytes)
                )
            },
        );

        let mut out = format!(
            "mtguard demo: {:.1} s on loopback, level 1 policy scaled to the demo \
             (10 s rate window, 30 s blocks)\n",
            self.duration.as_secs_f64()
        );
        out.push_str(&t.finish());
        out
    }
}

/// Two aligned columns under section titles.
#[derive(Default)]
struct Table {
    lines: Vec<Option<(String, String)>>,
    titles: Vec<String>,
}

impl Table {
    fn title(&mut self, title: &str) {
        self.titles.push(title.to_string());
        self.lines.push(None);
    }

    fn row(&mut self, key: &str, value: impl Into<String>) {
        self.lines.push(Some((key.to_string(), value.into())));
    }

    fn finish(self) -> String {
        let width = self
            .lines
            .iter()
            .flatten()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        let mut titles = self.titles.into_iter();
        let mut out = String::new();
        for line in self.lines {
            match line {
                None => {
                    let _ = writeln!(out, "\n{}", titles.next().unwrap_or_default());
                }
                Some((k, v)) => {
                    let _ = writeln!(out, "  {k:<width$}  {v}");
                }
            }
        }
        out
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

fn pct(r: f64) -> String {
    format!("{:.2} %", r * 100.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A number with thousands separators.
fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ----- the guard's policy for the demo -----

/// The level 1 policy with its windows and thresholds scaled to a run of
/// seconds:
/// - a 10 s rate window and 30 s first blocks (60 s and 300 s at level 1);
/// - 4 connections per client and 120 new per window: a legitimate client
///   holds one and opens at most 5 a second, 50 a window, within even the
///   halved limits of under-attack mode (2 and 60);
/// - blocked after 3 refusals in a window, or 2 handshake timeouts (3 s);
/// - under-attack mode from 1,000 attempts a second;
/// - global limits far above the legitimate load, so the flood is refused
///   per client and never by a global throttle that would refuse everyone.
pub fn demo_policy() -> Policy {
    Policy {
        max_connections_per_client: 4,
        rate_window: Duration::from_secs(10),
        max_new_connections_per_window: 120,
        global_max_connections: 50_000,
        global_max_new_per_second: 20_000,
        block_after_violations: 3,
        block_duration: Duration::from_secs(30),
        max_block_duration: Duration::from_secs(600),
        scanner_failures: 3,
        handshake_timeout: Some(HANDSHAKE_TIMEOUT),
        slowloris_timeouts: 2,
        attack_enter_per_second: Some(1_000),
        attack_exit_per_second: 500,
        attack_cooldown: Duration::from_secs(10),
        ..Policy::for_level(Level::Standard)
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The bytes of one request.
const REQUEST_LEN: usize = 64;
/// A legitimate request (connect, send, echo) that takes longer fails.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(5);
/// A flood connection that neither is refused nor answered by then is
/// counted as "no answer".
const FLOOD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections each flooding address holds without sending, then how many
/// more it opens while holding them.
const FLOOD_HOLD: usize = 4;
const FLOOD_EXTRA: usize = 20;
/// Each flooding address is visited at most this many times.
const FLOOD_MAX_PASSES: usize = 16;
/// One flooding address in this many is a slowloris.
const SLOWLORIS_EVERY: usize = 25;
/// Slowloris addresses holding connections at once, and connections each.
const SLOWLORIS_WORKERS: usize = 64;
const SLOWLORIS_HOLD: usize = 2;
const SCANNERS: usize = 4;
/// A scanner's pause between attempts (bounds the demo's CPU, not the
/// scanner's effect: it is blocked within the first second).
const SCANNER_PAUSE: Duration = Duration::from_millis(5);
/// At most this many flood bursts at once (fewer if the open file limit
/// asks for it). On 2 cores the flood is CPU-bound at the same rate (about
/// 65,000 attempts a second in a release build) from 16 to 256 bursts, but
/// the attack's tasks share the runtime with the guard's: at 256 they
/// tripled the legitimate clients' median latency (4 ms to 12 ms) for no
/// heavier an attack.
const FLOOD_CONCURRENCY: usize = 64;

// ----- outcomes and counters -----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// Echoed back (or, for a held connection, still open).
    Served,
    /// Closed or reset by the guard before any answer.
    Refused,
    /// Timed out, or failed otherwise.
    Failed,
}

#[derive(Default)]
struct Counter {
    attempts: AtomicU64,
    served: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Counter {
    fn record(&self, outcome: Outcome) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Served => &self.served,
            Outcome::Refused => &self.refused,
            Outcome::Failed => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Counters {
    legit: Counter,
    flood: Counter,
    scanner: Counter,
}

/// Counts the engine's events (the demo logs none of them).
#[derive(Default)]
struct EventCounts {
    blocked: [AtomicU64; 6],
}

struct CountEvents(Arc<EventCounts>);

impl EventSink for CountEvents {
    fn event(&self, event: &Event, _now: mtguard_core::Instant) {
        if let Event::Blocked { cause, .. } = event {
            self.0.blocked[*cause as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

const CAUSES: [BlockCause; 6] = [
    BlockCause::Violations,
    BlockCause::Scanner,
    BlockCause::Replay,
    BlockCause::Slowloris,
    BlockCause::Manual,
    BlockCause::External,
];

// ----- addresses -----

fn legit_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + i as u8)
}

/// Distinct addresses spread over 127.1.0.0-127.200.255.255.
fn flood_address(i: usize) -> Ipv4Addr {
    let x = 1 + (i % 200) as u8;
    let y = ((i / 200) % 256) as u8;
    let z = 1 + ((i * 7_919) % 253) as u8;
    Ipv4Addr::new(127, x, y, z)
}

/// Whether flooding address `i` is a slowloris.
fn is_slowloris(i: usize) -> bool {
    i % SLOWLORIS_EVERY == SLOWLORIS_EVERY / 2
}

/// How many of the first `addresses` flooding addresses are slowloris ones.
fn slowloris_addresses(addresses: usize) -> usize {
    (addresses + SLOWLORIS_EVERY - 1 - SLOWLORIS_EVERY / 2) / SLOWLORIS_EVERY
}

fn scanner_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 250, 0, 1 + i as u8)
}

/// A small non-cryptographic generator (xorshift64*), seeded per task.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

// ----- sockets -----

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    loadgen::connect_from(IpAddr::V4(src), to).await
}

/// How the guard refuses: it closes the connection (a reset) before any
/// answer. The reset can come before the connect completes on the
/// client's side, which then fails with it.
fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Sends `payload` and waits for it to come back.
async fn exchange(stream: &mut TcpStream, payload: &[u8]) -> io::Result<bool> {
    stream.write_all(payload).await?;
    let mut echo = [0u8; REQUEST_LEN];
    stream.read_exact(&mut echo[..payload.len()]).await?;
    Ok(echo[..payload.len()] == *payload)
}

/// One request from `src`: connect, send, read the echo, close.
async fn request(src: Ipv4Addr, to: SocketAddr, payload: &[u8]) -> Outcome {
    let mut stream = match connect_from(src, to).await {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    match exchange(&mut stream, payload).await {
        Ok(true) => Outcome::Served,
        Ok(false) => Outcome::Failed,
        Err(e) => failure(&e),
    }
}

/// A refusal, or some other failure.
fn failure(e: &io::Error) -> Outcome {
    if is_refusal(e) {
        Outcome::Refused
    } else {
        Outcome::Failed
    }
}

/// Whether a connection that never sent is still open (admitted and held)
/// or was refused, without waiting.
fn held_state(stream: &TcpStream) -> Outcome {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Served,
        Ok(0) => Outcome::Refused,
        Err(e) if is_refusal(&e) => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

// ----- the echo backend -----

async fn echo_backend(listener: TcpListener) {
    loadgen::accept_loop(listener, Duration::from_millis(10), loadgen::echo).await;
}

fn listen(backlog: u32) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(backlog)
}

// ----- the clients -----

/// A legitimate client: a request every 200-500 ms until `deadline`; the
/// request under way at the deadline completes. Returns the latencies of
/// the served requests.
async fn legit_client(
    i: usize,
    to: SocketAddr,
    deadline: Instant,
    counters: Arc<Counters>,
) -> Vec<Duration> {
    let src = legit_address(i);
    let mut rng = Rng::new(i as u64);
    let mut latencies = Vec::new();
    let mut payload = [0u8; REQUEST_LEN];
    sleep(Duration::from_millis(rng.below(300))).await;
    while Instant::now() < deadline {
        rng.fill(&mut payload);
        let start = Instant::now();
        let outcome = timeout(LEGIT_TIMEOUT, request(src, to, &payload))
            .await
            .unwrap_or(Outcome::Failed);
        if outcome == Outcome::Served {
            latencies.push(start.elapsed());
        }
        counters.legit.record(outcome);
        let pause = Duration::from_millis(200 + rng.below(301));
        sleep_until((Instant::now() + pause).min(deadline)).await;
    }
    latencies
}

/// Opens `n` connections from `src` that send nothing, into `held`; those
/// that fail to connect are counted at once.
async fn hold(
    src: Ipv4Addr,
    to: SocketAddr,
    n: usize,
    held: &mut Vec<TcpStream>,
    counters: &Counters,
) {
    for _ in 0..n {
        match timeout(FLOOD_TIMEOUT, connect_from(src, to)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => counters.flood.record(failure(&e)),
            Err(_) => counters.flood.record(Outcome::Failed),
        }
    }
}

/// One flood worker: takes the next address and hits it with a burst, over
/// and over: `FLOOD_HOLD` connections held without sending a byte, then
/// `FLOOD_EXTRA` more opened one after another while holding them (each
/// sends a request and waits for the echo). The first few fit within the
/// per-client limit; the rest are refused, and the refusals get the address
/// blocked. Slowloris addresses are left to their own workers.
async fn flood_worker(
    to: SocketAddr,
    next: Arc<AtomicUsize>,
    addresses: usize,
    deadline: Instant,
    counters: Arc<Counters>,
) {
    let mut payload = [0u8; REQUEST_LEN];
    Rng::new(next.load(Ordering::Relaxed) as u64).fill(&mut payload);
    let mut held = Vec::with_capacity(FLOOD_HOLD);
    loop {
        let visit = next.fetch_add(1, Ordering::Relaxed);
        if visit >= addresses * FLOOD_MAX_PASSES || Instant::now() >= deadline {
            return;
        }
        let i = visit % addresses;
        if is_slowloris(i) {
            continue;
        }
        let src = flood_address(i);
        hold(src, to, FLOOD_HOLD, &mut held, &counters).await;
        for _ in 0..FLOOD_EXTRA {
            if Instant::now() >= deadline {
                break;
            }
            let outcome = match timeout(FLOOD_TIMEOUT, connect_from(src, to)).await {
                Ok(Ok(mut stream)) => {
                    let outcome =
                        match timeout(FLOOD_TIMEOUT, exchange(&mut stream, &payload)).await {
                            Ok(Ok(true)) => Outcome::Served,
                            Ok(Ok(false)) | Err(_) => Outcome::Failed,
                            Ok(Err(e)) => failure(&e),
                        };
                    reset(stream);
                    outcome
                }
                Ok(Err(e)) => failure(&e),
                Err(_) => Outcome::Failed,
            };
            counters.flood.record(outcome);
        }
        // The guard accepts in order: it has decided on the held
        // connections before it answered the later ones, so a refused one
        // has its reset by now.
        for stream in held.drain(..) {
            counters.flood.record(held_state(&stream));
            reset(stream);
        }
    }
}

/// One slowloris worker: takes the next slowloris address, holds
/// `SLOWLORIS_HOLD` connections without sending until the guard times
/// their handshakes out (and blocks the address), then checks with one
/// more attempt; over and over, like the flood workers.
async fn slowloris_worker(
    to: SocketAddr,
    next: Arc<AtomicUsize>,
    addresses: usize,
    deadline: Instant,
    counters: Arc<Counters>,
) {
    let payload = [0u8; REQUEST_LEN];
    let slow = slowloris_addresses(addresses);
    if slow == 0 {
        return;
    }
    loop {
        let visit = next.fetch_add(1, Ordering::Relaxed);
        if visit >= slow * FLOOD_MAX_PASSES || Instant::now() >= deadline {
            return;
        }
        let src = flood_address((visit % slow) * SLOWLORIS_EVERY + SLOWLORIS_EVERY / 2);
        let opened = Instant::now();
        let mut held = Vec::with_capacity(SLOWLORIS_HOLD);
        hold(src, to, SLOWLORIS_HOLD, &mut held, &counters).await;
        sleep(Duration::from_millis(300)).await;
        let mut open = 0;
        for stream in &held {
            let state = held_state(stream);
            open += usize::from(state == Outcome::Served);
            counters.flood.record(state);
        }
        if open == 0 {
            // Refused (blocked already): next address.
            held.into_iter().for_each(reset);
            continue;
        }
        sleep_until(opened + HANDSHAKE_TIMEOUT + Duration::from_millis(700)).await;
        let outcome = timeout(FLOOD_TIMEOUT, request(src, to, &payload))
            .await
            .unwrap_or(Outcome::Failed);
        counters.flood.record(outcome);
        held.into_iter().for_each(reset);
    }
}

/// A scanner: random bytes on a fresh connection, over and over. Without
/// MTProto inspection in the guard (yet) the bytes pass as a handshake and
/// reach the backend, whose echo tells the scanner it was served; what
/// stops it is its connection rate: past the per-client rate limit it is
/// refused, and after a few refusals blocked.
async fn scanner(i: usize, to: SocketAddr, deadline: Instant, counters: Arc<Counters>) {
    let src = scanner_address(i);
    let mut rng = Rng::new(0x5ca7 + i as u64);
    let mut garbage = [0u8; REQUEST_LEN];
    while Instant::now() < deadline {
        rng.fill(&mut garbage);
        let len = 16 + rng.below(REQUEST_LEN as u64 - 15) as usize;
        let outcome = timeout(FLOOD_TIMEOUT, request(src, to, &garbage[..len]))
            .await
            .unwrap_or(Outcome::Failed);
        counters.scanner.record(outcome);
        sleep(SCANNER_PAUSE).await;
    }
}

// ----- progress -----

struct Progress {
    bars: Option<(MultiProgress, [ProgressBar; 4])>,
    /// When the flood rate was last measured, and the attempts then.
    last: (Duration, u64),
    rate: u64,
}

impl Progress {
    fn new(enabled: bool, duration: Duration) -> Progress {
        if !enabled {
            return Progress {
                bars: None,
                last: (Duration::ZERO, 0),
                rate: 0,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let clock = multi.add(ProgressBar::new(duration.as_secs().max(1)));
        clock.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos:>3}/{len} s  {msg}")
                .expect("progress template")
                .progress_chars("=> "),
        );
        clock.set_prefix("demo");
        let style = ProgressStyle::with_template("{prefix:>8} {msg}").expect("progress template");
        let line = |name: &str| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(name.to_string());
            bar
        };
        let bars = [clock, line("legit"), line("flood"), line("guard")];
        Progress {
            bars: Some((multi, bars)),
            last: (Duration::ZERO, 0),
            rate: 0,
        }
    }

    fn update(&mut self, elapsed: Duration, counters: &Counters, guard: &GuardSample) {
        let Some((_, [clock, legit, flood, guard_bar])) = &self.bars else {
            return;
        };
        clock.set_position(elapsed.as_secs());
        clock.set_message(if guard.under_attack {
            "under attack: per-client limits halved"
        } else {
            ""
        });
        let l = &counters.legit;
        let (ok, all) = (Counter::get(&l.served), Counter::get(&l.attempts));
        legit.set_message(format!(
            "{} / {} requests served ({})",
            num(ok),
            num(all),
            pct(ratio(ok, all))
        ));
        let f = &counters.flood;
        let (refused, all) = (Counter::get(&f.refused), Counter::get(&f.attempts));
        let since = elapsed.saturating_sub(self.last.0);
        if since >= Duration::from_secs(1) {
            self.rate = ((all - self.last.1) as f64 / since.as_secs_f64()) as u64;
            self.last = (elapsed, all);
        }
        flood.set_message(format!(
            "{} / {} connections refused ({}), {} attempts/s",
            num(refused),
            num(all),
            pct(if all == 0 { 0.0 } else { ratio(refused, all) }),
            num(self.rate)
        ));
        guard_bar.set_message(format!(
            "{} clients blocked, {} live connections",
            num(guard.blocked as u64),
            num(guard.active as u64)
        ));
    }

    fn finish(&self) {
        if let Some((multi, bars)) = &self.bars {
            for bar in bars {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}

#[derive(Clone, Copy, Default)]
struct GuardSample {
    blocked: u32,
    active: u32,
    under_attack: bool,
}

fn sample(guard: &Guard) -> GuardSample {
    guard.with(|e, _| GuardSample {
        blocked: e.blocked_clients(),
        active: e.active_connections(),
        under_attack: e.under_attack(),
    })
}

// ----- limits and memory -----

/// The process's peak resident memory (VmHWM); 0 where /proc is missing.
fn peak_rss_bytes() -> u64 {
    loadgen::vm_hwm_kib(std::process::id()).map_or(0, |kb| kb * 1024)
}

/// Flood bursts at once, so every socket fits within the file limit: a
/// burst holds up to `FLOOD_HOLD + 1` connections, each two descriptors in
/// this process (client and guard side) plus a backend pair if served.
fn flood_concurrency(legit_clients: usize) -> anyhow::Result<usize> {
    let limit = loadgen::open_files_limit().unwrap_or(1024) as usize;
    let reserved =
        256 + legit_clients * 4 + SLOWLORIS_WORKERS * (SLOWLORIS_HOLD + 1) * 2 + SCANNERS * 4;
    let per_burst = (FLOOD_HOLD + 1) * 4;
    let n = limit.saturating_sub(reserved) / per_burst;
    if n < 8 {
        anyhow::bail!(
            "the open file limit ({limit}) is too low for the demo; raise it (ulimit -n 4096)"
        );
    }
    Ok(n.min(FLOOD_CONCURRENCY))
}

// ----- the demo -----

/// Runs the demo on loopback and reports. Needs a multi-thread runtime for
/// the figures to mean anything (the guard and the clients share it).
pub async fn run_demo(opts: DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(
        (1..=250).contains(&opts.legit_clients),
        "legit_clients must be between 1 and 250"
    );
    anyhow::ensure!(
        (1..=50_000).contains(&opts.flood_addresses),
        "flood_addresses must be between 1 and 50,000"
    );
    anyhow::ensure!(
        opts.duration >= Duration::from_secs(1) && opts.duration <= Duration::from_secs(3_600),
        "the duration must be between 1 s and 1 h"
    );
    let concurrency = flood_concurrency(opts.legit_clients)?;

    let events = Arc::new(EventCounts::default());
    let capacity = Capacity::default();
    let guard = Guard::new(
        demo_policy(),
        capacity,
        Box::new(CountEvents(events.clone())),
    )?;
    let driver = tokio::spawn(guard.clone().drive());

    let backend_listener = listen(1024).context("binding the echo backend on 127.0.0.1")?;
    let backend = backend_listener.local_addr()?;
    let echo = tokio::spawn(echo_backend(backend_listener));

    let listener = listen(4096).context("binding the guard on 127.0.0.1")?;
    let target = listener.local_addr()?;
    let (_settings_tx, settings) = watch::channel(Arc::new(ProxySettings {
        backend: backend.to_string(),
        proxy_protocol: ProxyProtocol::None,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        backend_tls: None,
        refusal: Default::default(),
    }));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let serve = tokio::spawn(proxy::serve(listener, guard.clone(), settings, shutdown));

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + opts.duration;

    let mut legit = JoinSet::new();
    for i in 0..opts.legit_clients {
        legit.spawn(legit_client(i, target, deadline, counters.clone()));
    }
    let mut attack = JoinSet::new();
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..concurrency {
        attack.spawn(flood_worker(
            target,
            next.clone(),
            opts.flood_addresses,
            deadline,
            counters.clone(),
        ));
    }
    let next_slow = Arc::new(AtomicUsize::new(0));
    for _ in 0..SLOWLORIS_WORKERS {
        attack.spawn(slowloris_worker(
            target,
            next_slow.clone(),
            opts.flood_addresses,
            deadline,
            counters.clone(),
        ));
    }
    for i in 0..SCANNERS {
        attack.spawn(scanner(i, target, deadline, counters.clone()));
    }

    let mut progress = Progress::new(opts.progress, opts.duration);
    let mut peak_active = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(deadline) => {}
        }
        let s = sample(&guard);
        peak_active = peak_active.max(s.active);
        progress.update(started.elapsed(), &counters, &s);
    }
    let duration = started.elapsed();

    // The attack stops at the deadline: its tasks are cancelled, and
    // dropping their sockets resets them.
    attack.abort_all();
    while attack.join_next().await.is_some() {}
    // Each legitimate client finishes the request it has under way.
    let mut latencies = Vec::new();
    let legit_deadline = Instant::now() + LEGIT_TIMEOUT + Duration::from_secs(1);
    while let Ok(Some(joined)) = timeout(
        legit_deadline.saturating_duration_since(Instant::now()),
        legit.join_next(),
    )
    .await
    {
        if let Ok(mut l) = joined {
            latencies.append(&mut l);
        }
    }
    legit.abort_all();

    let legit_ips: Vec<IpAddr> = (0..opts.legit_clients)
        .map(|i| IpAddr::V4(legit_address(i)))
        .collect();
    let (stats, blocked_now, legit_blocked, under_attack_episodes) = guard.with(|e, _| {
        let legit_blocked = legit_ips.iter().filter(|ip| e.is_blocked(**ip)).count() as u32;
        (
            *e.stats(),
            e.blocked_clients(),
            legit_blocked,
            e.stats().attacks,
        )
    });

    let _ = shutdown_tx.send(true);
    let _ = timeout(Duration::from_secs(5), serve).await;
    driver.abort();
    echo.abort();
    progress.finish();

    latencies.sort_unstable();
    let c = &counters;
    Ok(DemoReport {
        duration,
        legit_clients: opts.legit_clients,
        legit_attempts: Counter::get(&c.legit.attempts),
        legit_ok: Counter::get(&c.legit.served),
        legit_refused: Counter::get(&c.legit.refused),
        legit_failed: Counter::get(&c.legit.failed),
        legit_p50: percentile(&latencies, 50.0),
        legit_p99: percentile(&latencies, 99.0),
        legit_max: latencies.last().copied().unwrap_or_default(),
        legit_blocked,
        flood_addresses: opts.flood_addresses,
        flood_concurrency: concurrency,
        flood_attempts: Counter::get(&c.flood.attempts),
        flood_refused: Counter::get(&c.flood.refused),
        flood_admitted: Counter::get(&c.flood.served),
        flood_failed: Counter::get(&c.flood.failed),
        scanner_addresses: SCANNERS,
        scanner_attempts: Counter::get(&c.scanner.attempts),
        scanner_refused: Counter::get(&c.scanner.refused),
        attackers_blocked: blocked_now.saturating_sub(legit_blocked),
        blocked_by_cause: CAUSES
            .iter()
            .map(|&cause| {
                (
                    cause.as_str(),
                    events.blocked[cause as usize].load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect(),
        refused_by_reason: RejectReason::ALL
            .iter()
            .map(|&r| (r.as_str(), stats.rejected[r as usize]))
            .collect(),
        admitted: stats.accepted,
        under_attack_episodes,
        peak_active_connections: peak_active,
        table_bytes: capacity.table_bytes() as u64,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Nearest-rank percentile (`p` in percent) of sorted values; zero when
/// there are none.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    loadgen::percentile(sorted, p / 100.0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_policy_is_valid_and_leaves_room_for_legitimate_clients() {
        let p = demo_policy();
        p.validate().unwrap();
        // Under attack the per-client limits halve; a legitimate client
        // (one connection at a time, at most 5 a second) still fits.
        let window_secs = p.rate_window.as_secs() as u32;
        let halved =
            u32::from(p.max_new_connections_per_window) * u32::from(p.attack_limit_percent) / 100;
        assert!(halved > 5 * window_secs);
        assert!(p.max_connections_per_client * u16::from(p.attack_limit_percent) / 100 >= 1);
        assert!(p.ip_blocking && p.attack_enter_per_second.is_some());
    }

    #[test]
    fn addresses_are_distinct_and_in_their_ranges() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..50_000 {
            let a = flood_address(i);
            let [o0, o1, _, o3] = a.octets();
            assert!(o0 == 127 && (1..=200).contains(&o1) && o3 != 0 && o3 != 255);
            assert!(seen.insert(a));
        }
        for i in 0..250 {
            assert!(seen.insert(legit_address(i)));
        }
        for i in 0..SCANNERS {
            assert!(seen.insert(scanner_address(i)));
        }
        for n in [1, 12, 13, 25, 37, 38, 5_000] {
            assert_eq!(
                slowloris_addresses(n),
                (0..n).filter(|&i| is_slowloris(i)).count(),
                "{n}"
            );
        }
    }

    #[test]
    fn numbers_and_percentiles() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1_000), "1,000");
        assert_eq!(num(1_234_567), "1,234,567");
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn the_report_renders_every_section() {
        let report = DemoReport {
            legit_attempts: 10,
            legit_ok: 10,
            refused_by_reason: vec![("blocked", 5)],
            ..Default::default()
        };
        let text = report.render();
        for needle in [
            "legitimate clients",
            "flood",
            "scanner",
            "guard",
            "blocked",
            "100.00 %",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
    }
}
