//! The accept loops at the file-descriptor limit: one log line when an
//! episode of failed accepts starts and one, with the count, when it ends,
//! not one per attempt. An attacker who can fill the descriptor table must
//! not also be able to fill the log.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mtguard_tests::{
    connect_from, failures_reported, free_port, open_fds, served_from, without_colours,
    EchoBackend, Server,
};

const TOKEN: &str = "hardening-logs-token-0123456789ab";

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

#[test]
fn accept_failures_at_the_descriptor_limit_log_once_per_episode() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EchoBackend::start();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let token = dir.path().join("admin.token");
    fs::write(&token, TOKEN).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "level = 1\n\
         [server]\nlisten = [\"{listen}\"]\nbackend = \"{}\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
         [state]\ndir = \"{}\"\n",
        backend.addr,
        token.display(),
        dir.path().join("state").display()
    );
    let config = dir.path().join("mtguard.toml");
    fs::write(&config, text).unwrap();
    let server = Server::start_with_admin(&config, admin);
    let pid = server.child.id();
    // The readiness probe's admin connection and the start's own files
    // come and go: counted while one is still open, the limit would leave
    // less room than it says once it closes, or more.
    let settled = settled_fds(pid);
    // Two descriptors to spare: one client and its backend connection fit,
    // the next client does not.
    let limit = settled + 2;
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(ok.success());

    // 100 proxy clients at once, each from its own address, gone at once:
    // the spare descriptor is taken and given back as fast as it accepts.
    let clients: Vec<TcpStream> = (0..100u32)
        .filter_map(|i| {
            let mut s = connect_from(ip(10, (i / 250) as u8, (i % 250 + 1) as u8), listen).ok()?;
            let _ = s.write_all(b"ping\n");
            Some(s)
        })
        .collect();
    drop(clients);
    server.wait_logged("accept failed", Duration::from_secs(10));
    // Within the quiet time after the burst: the last try of the burst can
    // fail on an empty queue, and the episode must end without anyone
    // connecting after it.
    server.wait_logged("accepting again", Duration::from_secs(10));

    // 100 admin requests at once.
    let requests: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            Some(s)
        })
        .collect();
    for mut r in requests {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    }
    server.wait_logged("admin API: accept failed", Duration::from_secs(10));
    server.wait_logged("admin API: accepting again", Duration::from_secs(10));
    // Quiet for a while: no second episode starts by itself.
    thread::sleep(Duration::from_secs(3));
    // Every descriptor the floods took is given back...
    let start = Instant::now();
    while open_fds(pid) > settled {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} descriptors open after the floods, {settled} before: {:?}",
            open_fds(pid),
            fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // ...and, still at the limit, it is serving: a client and its backend
    // connection fit in the spare descriptors once the flood is gone.
    assert!(served_from(ip(20, 0, 1), listen), "{}", server.log_text());

    let log = server.log_text();
    let proxy_errors =
        server.count_logged("accept failed") - server.count_logged("admin API: accept failed");
    let proxy_recoveries =
        server.count_logged("accepting again") - server.count_logged("admin API: accepting again");
    println!(
        "at the fd limit: proxy {proxy_errors} error / {proxy_recoveries} recovery lines, \
         admin {} / {}",
        server.count_logged("admin API: accept failed"),
        server.count_logged("admin API: accepting again")
    );
    for line in log.lines().filter(|l| l.contains("accepting again")) {
        println!("{}", without_colours(line));
        assert!(failures_reported(line) >= 1, "{line}");
    }
    assert_eq!(proxy_errors, 1, "{log}");
    assert_eq!(proxy_recoveries, 1, "{log}");
    assert_eq!(server.count_logged("admin API: accept failed"), 1, "{log}");
    assert_eq!(
        server.count_logged("admin API: accepting again"),
        1,
        "{log}"
    );
}

/// The guard's descriptor count once it has held still for half a second.
fn settled_fds(pid: u32) -> usize {
    let start = Instant::now();
    let (mut last, mut same_since) = (open_fds(pid), Instant::now());
    while same_since.elapsed() < Duration::from_millis(500) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the guard's descriptors never settled"
        );
        thread::sleep(Duration::from_millis(20));
        let now = open_fds(pid);
        if now != last {
            (last, same_since) = (now, Instant::now());
        }
    }
    last
}
