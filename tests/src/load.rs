//! The load generator of `./bench.sh` (binary `mtguard-load`): one tokio
//! client that measures any TCP relay the same way, and the echo/sink
//! backend behind it.
//!
//! Clients bind their own 127.x.y.z source addresses (loopback is a /8 on
//! Linux), so one machine plays thousands of distinct clients. Every mode
//! is bounded in time and in count, and every connect, read and write has a
//! timeout: a stuck relay costs a failed sample, never a hung run.
//!
//! Backend protocol: a connection whose first byte is [`SINK`] is a sink
//! (everything it sends is counted and discarded; after the client's
//! half-close the backend answers with the count, 8 bytes little-endian);
//! any other connection is echoed byte for byte.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mtguard::loadgen;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

/// First byte of a sink connection.
pub const SINK: u8 = b'S';

/// Bytes of one exchange (connections-per-second and legitimate clients).
pub const EXCHANGE: usize = 32;

/// Bound on every single network step of a client.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool of loopback source addresses `127.<octet>.<y>.<z>`, z in 1..=254.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Second octet: keeps the pools of different roles apart.
    pub octet: u8,
    /// Number of addresses (at most 65,024).
    pub count: u32,
}

impl Pool {
    /// The `i`-th address, wrapping around the pool.
    pub fn addr(&self, i: u64) -> IpAddr {
        let i = (i % u64::from(self.count.max(1))) as u32;
        IpAddr::V4(Ipv4Addr::new(
            127,
            self.octet,
            (i / 254) as u8,
            (i % 254 + 1) as u8,
        ))
    }
}

/// Connects to `to` from `from`, within [`STEP_TIMEOUT`].
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = loadgen::socket_for(to)?;
    bind_address_no_port(&socket)?;
    let stream = timeout(STEP_TIMEOUT, loadgen::connect_socket_from(socket, from, to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets connect() pick the source port instead of bind(): bind() must find
/// a port free for every destination, which gets slow (milliseconds per
/// call) with tens of thousands of TIME_WAIT sockets from an earlier run,
/// and would make one measure slow down the next. socket2 and tokio do not
/// offer this option, hence libc.
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn step<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "step timed out"))?
}

/// Serves the echo/sink backend on `listener` forever.
pub async fn backend(listener: TcpListener) {
    loadgen::accept_loop(listener, Duration::from_millis(5), |stream| async {
        let _ = serve_backend(stream).await;
    })
    .await;
}

async fn serve_backend(mut stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await?;
    if n == 0 {
        return Ok(());
    }
    if buf[0] == SINK {
        let mut total = (n - 1) as u64;
        buf.resize(256 * 1024, 0);
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        stream.write_all(&total.to_le_bytes()).await?;
        return stream.shutdown().await;
    }
    stream.write_all(&buf[..n]).await?;
    loadgen::echo(stream).await;
    Ok(())
}

/// Result of a bulk run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bulk {
    /// Bytes the backend confirmed.
    pub bytes: u64,
    /// From the first connect to the last confirmation.
    pub seconds: f64,
    /// Connections that failed.
    pub errors: u64,
}

impl Bulk {
    /// Throughput in bytes per second.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }
}

/// Sends as fast as it can on `connections` sink connections for
/// `duration`, each from its own address of `pool`.
pub async fn bulk(target: SocketAddr, pool: Pool, connections: u32, duration: Duration) -> Bulk {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(bulk_one(target, pool.addr(u64::from(i)), deadline)))
        .collect();
    let mut report = Bulk::default();
    for task in tasks {
        match task.await {
            Ok(Ok(bytes)) => report.bytes += bytes,
            _ => report.errors += 1,
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

async fn bulk_one(target: SocketAddr, from: IpAddr, deadline: Instant) -> io::Result<u64> {
    let mut stream = connect_from(from, target).await?;
    let chunk = vec![0xa5u8; 64 * 1024];
    step(stream.write_all(&[SINK])).await?;
    while Instant::now() < deadline {
        step(stream.write_all(&chunk)).await?;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    // What is still in flight drains within the step timeout.
    step(stream.read_exact(&mut count)).await?;
    Ok(u64::from_le_bytes(count))
}

/// Result of a connections-per-second run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cps {
    /// Exchanges completed (connect, 32 bytes there and back, close).
    pub ok: u64,
    /// Exchanges that failed or timed out.
    pub errors: u64,
    /// Length of the run.
    pub seconds: f64,
}

impl Cps {
    /// Completed exchanges per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// `concurrency` workers each connect, exchange [`EXCHANGE`] bytes and
/// close, again and again, cycling through the addresses of `pool`, until
/// `duration` passes or `max` exchanges were started.
pub async fn cps(
    target: SocketAddr,
    pool: Pool,
    concurrency: u32,
    duration: Duration,
    max: u64,
) -> Cps {
    let start = Instant::now();
    let deadline = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, ok, errors) = (next.clone(), ok.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max {
                        break;
                    }
                    match exchange(pool.addr(i), target).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    Cps {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Connect from `from`, send [`EXCHANGE`] bytes, read them back, close.
pub async fn exchange(from: IpAddr, target: SocketAddr) -> io::Result<()> {
    let mut stream = connect_from(from, target).await?;
    let mut msg = [0u8; EXCHANGE];
    msg[0] = b'E';
    msg[1..9].copy_from_slice(
        &u64::from(u32::from(match from {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        }))
        .to_le_bytes(),
    );
    step(stream.write_all(&msg)).await?;
    let mut back = [0u8; EXCHANGE];
    step(stream.read_exact(&mut back)).await?;
    if back != msg {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
    }
    Ok(())
}

/// What clients saw while something else went on (a reload, say).
#[derive(Clone, Debug, Default)]
pub struct Admission {
    /// Exchanges completed.
    pub ok: u64,
    /// Exchanges that failed or timed out.
    pub errors: u64,
    /// Longest completed exchange (connect to echo), ms: with a backend on
    /// loopback, nearly all of it is the wait for admission.
    pub max_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
}

/// `concurrency` workers run [`exchange`] back to back, cycling through the
/// addresses of `pool`, until `stop` is set; returns every latency's
/// summary. Meant to run while the caller reloads the guard, to measure
/// how long a reload makes admission wait.
pub async fn admission(
    target: SocketAddr,
    pool: Pool,
    concurrency: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Admission {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, errors, stop) = (next.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    match exchange(pool.addr(i), target).await {
                        Ok(()) => samples.push(t.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.unwrap_or_default());
    }
    samples.sort();
    Admission {
        ok: samples.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        max_ms: samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        p99_ms: percentile_ms(&samples, 0.99),
        p50_ms: percentile_ms(&samples, 0.50),
    }
}

/// How a flood is made.
#[derive(Clone, Copy, Debug)]
pub struct FloodSpec {
    /// Addresses the flood comes from.
    pub flood: Pool,
    /// The first `hot` of them send three quarters of the flood (they
    /// exceed any per-client rate); the rest spread over the whole pool.
    pub hot: u32,
    /// Flood connections started per second.
    pub rate: u32,
    /// Most flood connections in flight.
    pub concurrency: u32,
    /// Legitimate clients, one address each.
    pub legit: Pool,
    /// Pause between two exchanges of one legitimate client (keeps each
    /// one well under the per-client rate).
    pub legit_interval: Duration,
    /// Length of the run.
    pub duration: Duration,
    /// Most flood connections started or skipped.
    pub max_flood: u64,
}

/// What legitimate clients saw under a flood.
#[derive(Clone, Debug, Default)]
pub struct Flood {
    /// Exchanges legitimate clients tried.
    pub legit_attempts: u64,
    /// ... and completed.
    pub legit_ok: u64,
    /// Median latency of a completed exchange (connect to echo), ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Flood connections started.
    pub flood_started: u64,
    /// Flood connections not started: all `concurrency` were in flight.
    pub flood_skipped: u64,
}

impl Flood {
    /// Share of legitimate exchanges that completed.
    pub fn success(&self) -> f64 {
        if self.legit_attempts == 0 {
            0.0
        } else {
            self.legit_ok as f64 / self.legit_attempts as f64
        }
    }
}

/// Runs a flood and legitimate clients side by side. The flood is open
/// loop: connections start at `rate` per second whatever the target does
/// (a slow target must not get a lighter flood), at most `concurrency` in
/// flight; a start that finds them all busy is counted as skipped.
pub async fn flood(target: SocketAddr, spec: FloodSpec) -> Flood {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(spec.concurrency as usize));
    let pacer = tokio::spawn(async move {
        let (mut started, mut skipped) = (0u64, 0u64);
        // A tiny LCG: which address comes next needs no quality, only spread.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut tick = start;
        while tick < deadline && started + skipped < spec.max_flood {
            tick += Duration::from_millis(1);
            tokio::time::sleep_until(tick).await;
            let due = (tick - start).as_secs_f64() * f64::from(spec.rate);
            while ((started + skipped) as f64) < due && started + skipped < spec.max_flood {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let r = x >> 33;
                let i = if !r.is_multiple_of(4) {
                    r % u64::from(spec.hot.max(1))
                } else {
                    r % u64::from(spec.flood.count.max(1))
                };
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        started += 1;
                        let from = spec.flood.addr(i);
                        tokio::spawn(async move {
                            let _ = flood_one(from, target).await;
                            drop(permit);
                        });
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
        (started, skipped)
    });
    let samples = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicU64::new(0));
    let legit: Vec<_> = (0..spec.legit.count)
        .map(|i| {
            let (samples, attempts) = (samples.clone(), attempts.clone());
            tokio::spawn(async move {
                // Spread the clients' phases over one interval.
                let phase = spec.legit_interval * i / spec.legit.count.max(1);
                tokio::time::sleep(phase).await;
                while Instant::now() < deadline {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if exchange(spec.legit.addr(u64::from(i)), target)
                        .await
                        .is_ok()
                    {
                        samples.lock().unwrap().push(t.elapsed());
                    }
                    tokio::time::sleep(spec.legit_interval).await;
                }
            })
        })
        .collect();
    for task in legit {
        let _ = task.await;
    }
    let (flood_started, flood_skipped) = pacer.await.unwrap_or_default();
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.sort();
    Flood {
        legit_attempts: attempts.load(Ordering::Relaxed),
        legit_ok: samples.len() as u64,
        p50_ms: percentile_ms(&samples, 0.50),
        p99_ms: percentile_ms(&samples, 0.99),
        flood_started,
        flood_skipped,
    }
}

/// The `q` quantile of sorted `samples` in milliseconds (nearest rank).
/// NaN without samples, so a report shows the hole rather than a zero.
pub fn percentile_ms(samples: &[Duration], q: f64) -> f64 {
    loadgen::percentile(samples, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// One flood connection: connect, send junk, reset. A flooder does not
/// care for the answer and leaves no TIME_WAIT behind.
async fn flood_one(from: IpAddr, target: SocketAddr) -> io::Result<()> {
    let mut stream = connect_from(from, target).await?;
    let sent = step(stream.write_all(&[0x17; 64])).await;
    loadgen::reset(stream);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_addresses_stay_in_their_block_and_skip_0_and_255() {
        let p = Pool {
            octet: 9,
            count: 600,
        };
        assert_eq!(p.addr(0), IpAddr::V4(Ipv4Addr::new(127, 9, 0, 1)));
        assert_eq!(p.addr(253), IpAddr::V4(Ipv4Addr::new(127, 9, 0, 254)));
        assert_eq!(p.addr(254), IpAddr::V4(Ipv4Addr::new(127, 9, 1, 1)));
        assert_eq!(p.addr(600), p.addr(0));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&s, 0.5), 50.0);
        assert_eq!(percentile_ms(&s, 0.99), 99.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }
}
