//! `mtguard run` and `mtguard check-config` as an operator uses them: a real
//! process, real sockets on loopback, signals, a state directory.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mtguard_tests::{
    connect_from, free_port, mtguard_bin, served, served_from, EchoBackend, Server,
};

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

struct Setup {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    backend: EchoBackend,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            backend: EchoBackend::start(),
        }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("mtguard.toml")
    }

    /// Writes a config with `limits` as the [limits] table's body.
    fn write_config(&self, limits: &str) {
        let text = format!(
            "level = 1\n\
             [server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n\
             [limits]\n{limits}\n\
             [admin]\nlisten = \"off\"\n\
             [state]\ndir = \"{}\"\n",
            self.listen,
            self.backend.addr,
            self.dir.path().join("state").display()
        );
        fs::write(self.config_path(), text).unwrap();
    }

    fn start(&self, extra: &[&str]) -> Result<Server, String> {
        let config = self.config_path();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(&args, "guarding")
    }
}

fn wait_for(server: &Server, needle: &str) {
    let start = Instant::now();
    while !server.logged(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {needle:?} in the log: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn with_no_config_it_runs_on_the_embedded_default_and_says_so_first() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(mtguard_bin())
        .args(["run"])
        .env("XDG_DATA_HOME", data.path())
        .env("HOME", data.path())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let first = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .next()
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("embedded default"), "{first}");
    assert!(first.contains("127.0.0.1:4443"), "{first}");
    assert!(first.contains("127.0.0.1:8443"), "{first}");
}

#[test]
fn blocks_survive_a_restart() {
    let s = Setup::new();
    s.write_config(
        "max_connections_per_ip = 2\nblock_after_violations = 1\nblock_duration = \"10m\"",
    );
    let server = s.start(&[]).unwrap();
    let attacker = ip(5, 5, 5);
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect_from(attacker, s.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    assert!(
        !served_from(attacker, s.listen),
        "the third connection exceeds the limit"
    );
    wait_for(&server, "client blocked");
    held.clear();
    assert!(server.stop().success());
    assert!(s.dir.path().join("state/state.bin").exists());

    let server = s.start(&[]).unwrap();
    wait_for(&server, "state restored");
    assert!(
        !served_from(attacker, s.listen),
        "still blocked after the restart"
    );
    assert!(
        served_from(ip(5, 5, 6), s.listen),
        "other clients are served"
    );
    drop(server);
}

#[test]
fn a_corrupt_state_file_stops_the_start_unless_reset_is_asked_for() {
    let s = Setup::new();
    s.write_config("");
    let state = s.dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join("state.bin"), b"MTGS definitely not a snapshot").unwrap();
    let err = match s.start(&[]) {
        Ok(_) => panic!("started on a corrupt state file"),
        Err(e) => e,
    };
    assert!(err.contains("state.bin"), "{err}");
    assert!(err.contains("--reset-state"), "{err}");
    assert!(state.join("state.bin").exists(), "never silently dropped");

    let server = s.start(&["--reset-state"]).unwrap();
    wait_for(&server, "moved aside");
    let moved: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert_eq!(moved.len(), 1, "the corrupt file is kept aside");
}

#[test]
fn sighup_applies_a_new_limit_without_dropping_connections_and_refuses_a_broken_config() {
    let s = Setup::new();
    s.write_config("max_connections_per_ip = 2\nblock_after_violations = 100");
    let server = s.start(&[]).unwrap();
    let client = ip(6, 6, 6);
    let mut open: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect_from(client, s.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    assert!(!served_from(client, s.listen));

    s.write_config("max_connections_per_ip = 3\nblock_after_violations = 100");
    server.signal("HUP");
    wait_for(&server, "configuration reloaded");
    let mut third = connect_from(client, s.listen).unwrap();
    assert!(served(&mut third), "the new limit applies");
    for c in &mut open {
        assert!(served(c), "open connections survive the reload");
    }

    fs::write(
        s.config_path(),
        "[limits]\nmax_connections_per_ip = \"lots\"\n",
    )
    .unwrap();
    server.signal("HUP");
    wait_for(&server, "reload refused");
    assert!(
        !served_from(client, s.listen),
        "the old limit (3) stays in force"
    );
    assert!(served(&mut third));
    assert!(server.stop().success());
}

fn check_config(path: &Path) -> (bool, String, String) {
    let out = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, line, key) in [
        (
            "level = 1\n[limits]\nmax_conections_per_ip = 5\n",
            3,
            "max_conections_per_ip",
        ),
        ("[limits]\n\nrate_window = \"5x\"\n", 3, "rate_window"),
        (
            "[lists]\ndeny = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            2,
            "deny",
        ),
    ] {
        fs::write(&path, text).unwrap();
        let (ok, _, err) = check_config(&path);
        assert!(!ok, "{text} accepted");
        assert!(err.contains(&format!("bad.toml:{line}")), "{err}");
        assert!(err.contains(key), "{err}");
    }
    fs::write(&path, "level = 2\n[limits]\nmax_connections_per_ip = 7\n").unwrap();
    let (ok, out, err) = check_config(&path);
    assert!(ok, "{err}");
    assert!(out.contains("max_connections_per_ip"), "{out}");
    assert!(out.contains('7'), "{out}");
}
