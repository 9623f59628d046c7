//! The admin API under abuse: connections that dribble their request head
//! a byte at a time from the operator's own address, malformed and
//! oversized heads, a head that never completes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mtguard_core::Policy;
use mtguard_tests::{http_request, test_guard, AdminInProcess};

const TOKEN: &str = "hardening-admin-token-0123456789";

/// The admin API in a runtime of its own on 127.0.0.1; stops when dropped.
struct Admin {
    addr: SocketAddr,
    _admin: AdminInProcess,
}

impl Admin {
    fn start() -> Admin {
        let guard = test_guard(Policy::default());
        let admin = AdminInProcess::start(mtguard::node::Handles::new(guard.clone()), TOKEN, None);
        admin.runtime.spawn(guard.drive());
        Admin {
            addr: admin.addr,
            _admin: admin,
        }
    }
}

/// Connections that each send `GET /v1/status HTTP/1.1\r\n` and then one
/// byte of a header every two seconds, forever; one closed by the server
/// is opened again, as an attacker would.
struct Dribblers {
    stop: Arc<AtomicBool>,
    /// Bytes written so far, all connections together.
    bytes: Arc<AtomicU64>,
    /// Connections opened so far (70 at first, then one per one closed).
    opened: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Dribblers {
    fn start(addr: SocketAddr, n: usize) -> Dribblers {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let open = {
            let opened = opened.clone();
            move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
                opened.fetch_add(1, Ordering::Relaxed);
                s
            }
        };
        let mut conns: Vec<TcpStream> = (0..n).map(|_| open()).collect();
        let (stop2, bytes2) = (stop.clone(), bytes.clone());
        let thread = thread::spawn(move || {
            let head = b"GET /v1/status HTTP/1.1\r\nX-Slow: ";
            for c in &mut conns {
                let _ = c.write_all(head);
            }
            while !stop2.load(Ordering::Relaxed) {
                for c in &mut conns {
                    if c.write_all(b"a").is_ok() {
                        bytes2.fetch_add(1, Ordering::Relaxed);
                    } else {
                        *c = open();
                        let _ = c.write_all(head);
                    }
                }
                for _ in 0..20 {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Dribblers {
            stop,
            bytes,
            opened,
            thread: Some(thread),
        }
    }
}

impl Drop for Dribblers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_authorised_request_is_answered_while_seventy_connections_dribble_their_heads() {
    let admin = Admin::start();
    let flood = Dribblers::start(admin.addr, 70);
    // Two rounds of dribbling: every slot the server has is taken.
    thread::sleep(Duration::from_secs(5));
    let before = flood.bytes.load(Ordering::Relaxed);
    assert!(before >= 64, "the flood is not dribbling: {before} bytes");
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        // http_request gives up after 10 s: the generous bound.
        let r = http_request(admin.addr, "GET", "/v1/status", Some(TOKEN), None);
        let took = start.elapsed();
        let (status, body) = r.unwrap_or_else(|e| panic!("not answered under the flood: {e}"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"level\""), "{body}");
        times.push(took);
        thread::sleep(Duration::from_millis(300));
    }
    // Still dribbling afterwards: the answers came during the flood.
    let after = flood.bytes.load(Ordering::Relaxed);
    thread::sleep(Duration::from_secs(3));
    assert!(flood.bytes.load(Ordering::Relaxed) > after);
    let max = times.iter().max().unwrap();
    println!(
        "authorised GET /v1/status under 70 dribbling connections: answered in {:?} (max {max:?}); \
         dribbler connections opened {}",
        times,
        flood.opened.load(Ordering::Relaxed)
    );
}

/// Sends `request` raw and reads the reply until the server closes.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let request = request.to_vec();
    // The server may answer and close before the whole of an oversized
    // head is sent: write on the side, ignoring a reset.
    let w = thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let _ = w.join();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no reply: {reply:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn json_error(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_owned()
}

#[test]
fn malformed_and_oversized_heads_get_the_json_error_body() {
    let admin = Admin::start();
    let (status, body) = raw(admin.addr, b"NOT A REQUEST\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(!json_error(&body).is_empty());

    let (status, body) = raw(admin.addr, b"GET /v1/status HTTP/1.1\r\nBad Header\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(!json_error(&body).is_empty());

    let mut huge = b"GET /v1/status HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 512 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let (status, body) = raw(admin.addr, &huge);
    assert_eq!(status, 431, "{body}");
    assert!(json_error(&body).contains("head"), "{body}");

    // Just over the limit, complete in the same read that crosses it.
    let mut over = b"GET /v1/status HTTP/1.1\r\nX-Big: ".to_vec();
    over.extend(std::iter::repeat_n(b'a', mtguard::admin::HEAD_LIMIT));
    over.extend_from_slice(b"\r\n\r\n");
    let (status, body) = raw(admin.addr, &over);
    assert_eq!(status, 431, "{body}");
    assert!(json_error(&body).contains("head"), "{body}");

    let mut many = b"GET /v1/status HTTP/1.1\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (status, body) = raw(admin.addr, &many);
    assert_eq!(status, 431, "{body}");
    assert!(!json_error(&body).is_empty());

    // A well-formed request still works on the same server.
    let (status, body) = http_request(admin.addr, "GET", "/v1/status", Some(TOKEN), None).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_request_head_has_a_deadline_however_often_bytes_arrive() {
    let admin = Admin::start();
    let mut s = TcpStream::connect(admin.addr).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nX-Slow: ").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut reply = Vec::new();
    // One byte every half second resets any idle timer; 60 s is the bound
    // that fails the test where only an idle timer exists.
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still open after 60 s of dribbling"
        );
        if s.write_all(b"a").is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    println!("dribbled head closed after {:?}", start.elapsed());
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    let body = reply.split_once("\r\n\r\n").unwrap().1;
    assert!(json_error(body).contains("head"), "{body}");
}
