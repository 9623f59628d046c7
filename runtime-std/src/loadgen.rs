//! Load generation on loopback, shared by `mtguard demo`, the integration
//! tests and the benchmark's load generator (`mtguard-load`).
//!
//! Each of them plays many clients on one machine: loopback is a /8 on
//! Linux, so a client binds its own 127.x.y.z source address and counts as
//! a distinct client to the guard. What they have in common lives here
//! once: connecting from an address (blocking and async), closing with a
//! reset, an echo backend (a thread per connection for blocking tests, a
//! task per connection on tokio), nearest-rank percentiles, and the /proc
//! readers that report memory and descriptors. What differs between them
//! (the demo's traffic mix, the benchmark's sink protocol, the tests'
//! assertions) stays with each.
//!
//! Nothing here bounds a connect or a read by itself unless its doc says
//! so: the callers bound every step, each with the timeout its own
//! measurement needs.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

// ----- connecting from an address -----

/// A TCP socket of the family of `to`, not yet bound: a caller that must
/// set an option before `bind` (such as `IP_BIND_ADDRESS_NO_PORT`) does so,
/// then hands it to [`connect_socket_from`].
pub fn socket_for(to: SocketAddr) -> io::Result<TcpSocket> {
    match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// Binds `socket` to `from` (any port) and connects it to `to`.
pub async fn connect_socket_from(
    socket: TcpSocket,
    from: IpAddr,
    to: SocketAddr,
) -> io::Result<TcpStream> {
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Connects to `to` from source address `from` (any 127.x.y.z works on
/// Linux, where loopback is a /8). Unbounded: wrap it in a timeout.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    connect_socket_from(socket_for(to)?, from, to).await
}

/// [`connect_from`] for blocking code: the connect and every later read
/// are bounded by `limit`.
pub fn connect_from_blocking(
    from: IpAddr,
    to: SocketAddr,
    limit: Duration,
) -> io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), limit)?;
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(limit))?;
    Ok(stream)
}

/// Closes with a reset: no TIME_WAIT left behind, so tens of thousands of
/// short connections do not exhaust the source ports of the next run.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

// ----- backends -----

/// Accepts on `listener` forever, serving each connection with `serve` in
/// a task of its own. Out of descriptors under a flood, accept fails: it
/// waits `backoff` for some to free up instead of spinning. The tasks are
/// aborted when the returned future is dropped (its task aborted).
pub async fn accept_loop<F, Fut>(listener: TcpListener, backoff: Duration, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        // Reap the finished ones, so the set holds only live connections.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve(stream));
    }
}

/// Echoes `stream` byte for byte until the peer half-closes, then closes
/// its own side.
pub async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// An echo server on 127.0.0.1 in a background thread, a thread per
/// connection, for blocking tests; counts accepts.
pub struct EchoBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<Mutex<u64>>,
}

impl EchoBackend {
    /// Starts the echo server. Panics when 127.0.0.1 has no free port: a
    /// test can do nothing useful without its backend.
    pub fn start() -> EchoBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an echo backend");
        let addr = listener.local_addr().expect("the echo backend's address");
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoBackend { addr, accepted }
    }
}

// ----- figures -----

/// The `q` quantile (0 to 1) of `sorted` by nearest rank; `None` when
/// there are no samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse().ok())
}

/// Resident memory of process `pid` now (`VmRSS`), KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Peak resident memory of process `pid` (`VmHWM`), KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// This process's soft limit on open files, from /proc (no libc call).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&s, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn proc_readers_see_this_process() {
        let me = std::process::id();
        let rss = vm_rss_kib(me).expect("VmRSS of this process");
        let hwm = vm_hwm_kib(me).expect("VmHWM of this process");
        assert!(rss > 0 && hwm >= rss, "VmRSS {rss} VmHWM {hwm}");
        // stdin, stdout and stderr at least.
        assert!(open_fds(me).expect("fds of this process") >= 3);
        assert!(open_files_limit().expect("a soft open file limit") >= 3);
        // A prefix of another field is not the field.
        assert_eq!(proc_status_kib(me, "VmRS"), None);
        assert_eq!(vm_rss_kib(u32::MAX), None);
    }

    #[test]
    fn an_echo_backend_echoes_from_a_chosen_source_address() {
        let backend = EchoBackend::start();
        let from: IpAddr = "127.0.0.77".parse().unwrap();
        let mut c = connect_from_blocking(from, backend.addr, Duration::from_secs(5)).unwrap();
        assert_eq!(c.local_addr().unwrap().ip(), from);
        c.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        assert_eq!(*backend.accepted.lock().unwrap(), 1);
    }

    #[test]
    fn the_async_echo_serves_until_the_half_close() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(accept_loop(listener, Duration::from_millis(5), echo));
            let from: IpAddr = "127.0.0.78".parse().unwrap();
            let mut c = connect_from(from, addr).await.unwrap();
            assert_eq!(c.local_addr().unwrap().ip(), from);
            c.write_all(b"hello").await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"hello");
            server.abort();
        });
    }
}
