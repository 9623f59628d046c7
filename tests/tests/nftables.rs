//! The nftables mirror in a network namespace the test makes itself (a veth
//! pair to the host's namespace; nothing of the machine's own network is
//! touched): the shipped `dist/mtguard.nft` loaded, the real `nft`, the
//! real `mtguard run` inside the namespace. A blocked client's SYNs are
//! dropped (its connect times out instead of being reset), lifting the
//! block restores it, element timeouts follow the engine's expiries, the
//! sets are rebuilt from the saved state at start; and the refusal cost
//! with and without the kernel set under the same flood is printed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mtguard_tests::{connect_from, served, Server};
use serde_json::Value;

const TOKEN: &str = "nftables-test-admin-token";

fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace, deleted (with its veth pair) when dropped, whatever
/// happened in the test.
struct Netns {
    name: String,
    /// Third octet of 10.211.X.0/24.
    net: u8,
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("mtg-nft-{pid}"),
            net: (pid % 250) as u8,
        };
        let host = format!("mtgh{}", pid % 100_000);
        let inner = format!("mtgn{}", pid % 100_000);
        run(&["ip", "netns", "add", &ns.name]);
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
        ]);
        run(&["ip", "link", "set", &inner, "netns", &ns.name]);
        for last in [1, 3, 4, 5, 6] {
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", ns.ip(last)),
                "dev",
                &host,
            ]);
        }
        // IPv6 without duplicate address detection, so the addresses work
        // at once.
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/64", ns.ip6(1)),
            "dev",
            &host,
            "nodad",
        ]);
        run(&["ip", "link", "set", &host, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/64", ns.ip6(2)),
            "dev",
            &inner,
            "nodad",
        ]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.ip(2)),
            "dev",
            &inner,
        ]);
        ns.exec(&["ip", "link", "set", &inner, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 211, self.net, last))
    }

    fn ip6(&self, last: u16) -> IpAddr {
        IpAddr::V6(std::net::Ipv6Addr::new(
            0xfd11,
            self.net.into(),
            0,
            0,
            0,
            0,
            0,
            last,
        ))
    }

    /// Elements of the IPv6 set: network address and prefix length.
    fn elements6(&self) -> Vec<(IpAddr, u64)> {
        let text = self.exec(&["nft", "-j", "list", "set", "inet", "mtguard", "blocked6"]);
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut out = Vec::new();
        for item in doc["nftables"].as_array().unwrap() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                let prefix = &e["elem"]["val"]["prefix"];
                out.push((
                    prefix["addr"].as_str().unwrap().parse().unwrap(),
                    prefix["len"].as_u64().unwrap(),
                ));
            }
        }
        out
    }

    fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// Elements of the IPv4 set: address and seconds left.
    fn elements(&self) -> Vec<(IpAddr, Option<u64>)> {
        let text = self.exec(&["nft", "-j", "list", "set", "inet", "mtguard", "blocked"]);
        let doc: Value = serde_json::from_str(&text).unwrap();
        mtguard::fleet::nftables::parse_set_listing(&doc, 64)
            .into_iter()
            .map(|(k, left)| (k.to_ip(), left))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with
        // it the host's end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ruleset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-std/dist/mtguard.nft")
}

/// An echo server on the host's end of the veth pair.
fn echo_backend(addr: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    local
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let (_, rest) = body.split_once("\r\n").unwrap_or(("", ""));
        rest[..rest.rfind("\r\n0\r\n").unwrap_or(rest.len())].to_owned()
    } else {
        body.to_owned()
    };
    (code, body)
}

fn admin_json(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http(addr, "GET", path, "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn remaining(admin: SocketAddr, ip: IpAddr) -> Option<u64> {
    admin_json(admin, "/v1/blocks")
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["client"] == ip.to_string())
        .and_then(|b| b["remaining_seconds"].as_u64())
}

fn rejected_total(admin: SocketAddr) -> u64 {
    let status = admin_json(admin, "/v1/status");
    status["stats"]["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time of a process's threads in nanoseconds: the first field of
/// each `/proc/<pid>/task/<tid>/schedstat` (`/proc/<pid>/stat` counts in
/// 10 ms ticks, too coarse for a few thousand refusals).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `n` connection attempts from `from`, 500 at a time, each given 300 ms
/// before it is abandoned: the same flood whether the guard resets them or
/// the kernel drops their SYNs.
fn flood(from: IpAddr, to: SocketAddr, n: usize) {
    for _ in 0..n.div_ceil(500) {
        let mut sockets = Vec::new();
        for _ in 0..500 {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&SocketAddr::new(from, 0).into()).unwrap();
            let _ = s.connect(&to.into());
            sockets.push(s);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

struct Guard {
    server: Server,
    listen: SocketAddr,
    admin: SocketAddr,
}

fn start_guard(ns: &Netns, dir: &Path, backend: SocketAddr, kernel: bool) -> Guard {
    let listen = SocketAddr::new(ns.ip(2), 4443);
    let admin = SocketAddr::new(ns.ip(2), 9900);
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nft_set = if kernel {
        "inet mtguard blocked"
    } else {
        "off"
    };
    let config = format!(
        "[server]\nlisten = [\"{listen}\", \"[{}]:4443\"]\nbackend = \"{backend}\"\n\
         [limits]\nblock_jitter_permille = 0\nattack_enter_per_second = 0\n\
         max_new_connections_per_window = 10000\nglobal_max_new_per_second = 100000\n\
         [admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
         [state]\ndir = \"{}\"\n\
         [kernel]\nnft_set = \"{nft_set}\"\n",
        ns.ip6(2),
        token.display(),
        dir.join("state").display(),
    );
    let path = dir.join("mtguard.toml");
    std::fs::write(&path, config).unwrap();
    let server = Server::start_in(
        &["ip", "netns", "exec", &ns.name],
        &["--config", path.to_str().unwrap()],
        "guarding",
    )
    .unwrap();
    Guard {
        server,
        listen,
        admin,
    }
}

fn block(admin: SocketAddr, ip: IpAddr, duration: &str) {
    let body = format!(r#"{{"ip": "{ip}", "duration": "{duration}"}}"#);
    let (code, text) = http(admin, "POST", "/v1/blocks", &body);
    assert_eq!(code, 201, "{text}");
}

fn served_from(from: IpAddr, to: SocketAddr) -> bool {
    match connect_from(from, to) {
        Ok(mut s) => served(&mut s),
        Err(_) => false,
    }
}

/// Connects with a 1.5 s deadline: the error kind tells a dropped SYN
/// (timed out) from a refusal (reset or refused).
fn connect_error(from: IpAddr, to: SocketAddr) -> Option<std::io::ErrorKind> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect_timeout(&to.into(), Duration::from_millis(1500))
        .err()
        .map(|e| e.kind())
}

#[test]
fn blocked_clients_are_dropped_by_the_kernel_before_the_handshake() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let backend = echo_backend(ns.ip(1));
    ns.exec(&["nft", "-f", ruleset().to_str().unwrap()]);
    ns.exec(&[
        "nft",
        "add",
        "element",
        "inet",
        "mtguard",
        "guarded_ports",
        "{ 4443 }",
    ]);

    // Without the kernel set: a blocked client is reset by the guard.
    let g = start_guard(&ns, dir.path(), backend, false);
    let (legit, blocked, flooder) = (ns.ip(1), ns.ip(3), ns.ip(6));
    assert!(served_from(blocked, g.listen));
    block(g.admin, flooder, "1h");
    let pid = g.server.child.id();
    let n = 4000;
    let (cpu0, rej0) = (cpu_ns(pid), rejected_total(g.admin));
    flood(flooder, g.listen, n);
    let (cpu_guard, rej_guard) = (cpu_ns(pid) - cpu0, rejected_total(g.admin) - rej0);
    assert!(rej_guard > 0, "the guard refused the flood itself");
    assert!(ns.elements().is_empty(), "no mirror when [kernel] is off");
    assert_eq!(g.server.stop().code(), Some(0));

    // With it: the saved block is in the set as soon as the guard starts.
    let g = start_guard(&ns, dir.path(), backend, true);
    let pid = g.server.child.id();
    let elements = ns.elements();
    assert_eq!(elements.len(), 1, "{elements:?}");
    assert_eq!(elements[0].0, flooder);
    let (cpu0, rej0) = (cpu_ns(pid), rejected_total(g.admin));
    flood(flooder, g.listen, n);
    let (cpu_kernel, rej_kernel) = (cpu_ns(pid) - cpu0, rejected_total(g.admin) - rej0);
    assert_eq!(rej_kernel, 0, "the guard never saw the dropped SYNs");
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "refusal cost of {n} connection attempts from one blocked client: guard CPU {:.1} ms \
         ({rej_guard} refused by the guard, {:.1} us each) without the kernel set, {:.1} ms \
         ({rej_kernel} seen by the guard) with it",
        ms(cpu_guard),
        cpu_guard as f64 / 1e3 / rej_guard as f64,
        ms(cpu_kernel)
    );

    // A new block: its SYNs are dropped, so connect times out.
    assert!(served_from(blocked, g.listen));
    block(g.admin, blocked, "10m");
    wait_until("the block to reach the set", || {
        ns.elements().iter().any(|(ip, _)| *ip == blocked)
    });
    assert_eq!(
        connect_error(blocked, g.listen),
        Some(std::io::ErrorKind::TimedOut),
        "dropped, not refused"
    );
    assert!(served_from(legit, g.listen), "other clients pass");
    assert!(served_from(ns.ip(4), g.listen));

    // Element timeouts follow the engine's expiries.
    for ip in [blocked, flooder] {
        let engine = remaining(g.admin, ip).unwrap();
        let kernel = ns
            .elements()
            .iter()
            .find(|(a, _)| *a == ip)
            .and_then(|e| e.1)
            .unwrap();
        assert!(
            engine.abs_diff(kernel) <= 3,
            "{ip}: engine {engine} s, kernel {kernel} s"
        );
    }

    // Lifting the block lifts the drop.
    let (code, text) = http(g.admin, "DELETE", &format!("/v1/blocks/{blocked}"), "");
    assert!(code == 204 || code == 200, "{text}");
    wait_until("the element to leave the set", || {
        !ns.elements().iter().any(|(ip, _)| *ip == blocked)
    });
    assert!(served_from(blocked, g.listen));

    // An IPv6 client is its /64, in the IPv6 set.
    let v6 = ns.ip6(1);
    let listen6 = SocketAddr::new(ns.ip6(2), 4443);
    assert!(served_from(v6, listen6));
    block(g.admin, v6, "10m");
    wait_until("the IPv6 block to reach the set", || {
        !ns.elements6().is_empty()
    });
    let net6 = IpAddr::V6(std::net::Ipv6Addr::new(
        0xfd11,
        ns.net.into(),
        0,
        0,
        0,
        0,
        0,
        0,
    ));
    assert_eq!(ns.elements6(), [(net6, 64)]);
    assert_eq!(
        connect_error(v6, listen6),
        Some(std::io::ErrorKind::TimedOut),
        "IPv6 SYNs dropped too"
    );
    let (code, text) = http(g.admin, "DELETE", &format!("/v1/blocks/{v6}"), "");
    assert!(code == 204 || code == 200, "{text}");
    wait_until("the IPv6 element to leave the set", || {
        ns.elements6().is_empty()
    });
    assert!(served_from(v6, listen6));

    // A short block leaves the set when it expires in the engine.
    block(g.admin, ns.ip(5), "2s");
    wait_until("the short block in the set", || {
        ns.elements().iter().any(|(ip, _)| *ip == ns.ip(5))
    });
    wait_until("the short block to expire in both", || {
        remaining(g.admin, ns.ip(5)).is_none()
            && !ns.elements().iter().any(|(ip, _)| *ip == ns.ip(5))
    });
    assert!(served_from(ns.ip(5), g.listen));
    let status = admin_json(g.admin, "/v1/status");
    assert!(
        status["kernel"]["reconciles"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert_eq!(status["kernel"]["elements"], 1, "{status:#}");
    assert_eq!(g.server.stop().code(), Some(0));
}
