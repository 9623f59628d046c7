//! The cheap pieces of `./bench.sh`: the generated configs give HAProxy,
//! nginx and mtguard the same per-client connection limit (checked by
//! opening connections through the real servers), the driver's processes
//! are cleaned up, and the load generator measures an echo backend.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mtguard_tests::bench::{self, Limits, Proc};
use mtguard_tests::load::{self, FloodSpec, Pool};
use mtguard_tests::{connect_from, free_port, mtguard_bin, served, EchoBackend};

fn listen() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Opens `max` connections from one address, all served, then one more,
/// which must be refused.
fn assert_connection_limit(target: SocketAddr, from: &str, max: u32) {
    let from: IpAddr = from.parse().unwrap();
    let mut open = Vec::new();
    for i in 0..max {
        let mut s = connect_from(from, target).unwrap();
        assert!(served(&mut s), "connection {} of {max} not served", i + 1);
        open.push(s);
    }
    let refused = match connect_from(from, target) {
        Ok(mut s) => !served(&mut s),
        Err(_) => true,
    };
    assert!(refused, "connection {} from one client was served", max + 1);
}

fn check(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn haproxy_with_the_generated_config_refuses_the_101st_connection_of_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoBackend::start();
    let l = Limits::default_level();
    let addr = listen();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, bench::haproxy_config(addr, echo.addr, &l)).unwrap();
    check(Command::new("haproxy").arg("-c").arg("-f").arg(&cfg));
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let mut p = Proc::start("haproxy", cmd, &dir.path().join("log")).unwrap();
    p.wait_listening(addr).unwrap();
    assert_connection_limit(addr, "127.0.9.1", l.max_connections);
    assert!(p.memory_kib() > 0);
}

#[test]
fn nginx_with_the_generated_config_refuses_the_101st_and_its_workers_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoBackend::start();
    let l = Limits::default_level();
    let addr = listen();
    let module = Path::new(bench::NGINX_STREAM_MODULE);
    let cfg = dir.path().join("nginx.conf");
    std::fs::write(
        &cfg,
        bench::nginx_config(
            addr,
            echo.addr,
            dir.path(),
            module.exists().then_some(module),
            &l,
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&cfg);
    check(Command::new("nginx").args(cmd.get_args()).arg("-t"));
    cmd.arg("-g").arg("daemon off;");
    let mut p = Proc::start("nginx", cmd, &dir.path().join("log")).unwrap();
    p.wait_listening(addr).unwrap();
    assert_connection_limit(addr, "127.0.9.2", l.max_connections);
    let pids = p.pids();
    assert_eq!(pids.len(), 3, "a master and two workers: {pids:?}");
    drop(p);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "nginx process {pid} left running"
        );
    }
}

#[test]
fn mtguard_with_the_generated_config_has_the_same_limit() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoBackend::start();
    let l = Limits::default_level();
    let addr = listen();
    let cfg = dir.path().join("mtguard.toml");
    std::fs::write(
        &cfg,
        bench::mtguard_config(addr, echo.addr, &dir.path().join("state"), &l),
    )
    .unwrap();
    let out = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let mut cmd = Command::new(mtguard_bin());
    cmd.arg("run").arg("--config").arg(&cfg);
    let mut p = Proc::start("mtguard", cmd, &dir.path().join("log")).unwrap();
    p.wait_listening(addr).unwrap();
    assert_connection_limit(addr, "127.0.9.3", l.max_connections);
}

#[test]
fn load_generator_measures_an_echo_backend() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(load::backend(listener));

        let pool = Pool {
            octet: 10,
            count: 4,
        };
        let bulk = load::bulk(target, pool, 4, Duration::from_millis(300)).await;
        assert_eq!(bulk.errors, 0);
        // At least the first 64 KiB write of each connection arrived, and
        // the sink counted exactly what was sent: whole writes only.
        assert!(bulk.bytes >= 4 * 65536, "{bulk:?}");
        assert_eq!(bulk.bytes % 65536, 0, "{bulk:?}");

        let cps = load::cps(
            target,
            Pool {
                octet: 11,
                count: 50,
            },
            4,
            Duration::from_secs(120),
            200,
        )
        .await;
        assert_eq!((cps.ok, cps.errors), (200, 0), "bounded by count: {cps:?}");

        let flood = load::flood(
            target,
            FloodSpec {
                flood: Pool {
                    octet: 12,
                    count: 100,
                },
                hot: 5,
                rate: 400,
                concurrency: 4,
                legit: Pool {
                    octet: 13,
                    count: 5,
                },
                legit_interval: Duration::from_millis(50),
                duration: Duration::from_millis(500),
                max_flood: 300,
            },
        )
        .await;
        assert!(flood.legit_attempts > 0);
        assert_eq!(flood.legit_ok, flood.legit_attempts, "{flood:?}");
        assert!(flood.p50_ms <= flood.p99_ms, "{flood:?}");
        assert!(flood.flood_started > 0, "{flood:?}");
        assert!(
            flood.flood_started + flood.flood_skipped <= 300,
            "{flood:?}"
        );
    });
}

#[test]
fn bounded_commands_are_killed_at_their_limit() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let err = bench::run_bounded(cmd, Duration::from_millis(200)).unwrap_err();
    assert!(err.contains("killed"), "{err}");
}
