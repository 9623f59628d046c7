//! Files mtguard writes, under a hostile file system: links planted where
//! its temporaries go, a `state.bin` that is a FIFO, a directory or a
//! socket, a bare `--out` name, and a state directory that stops taking
//! saves (logged once per episode, not once per retry).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mtguard_core::pins::{Pin, PinKind};
use mtguard_tests::{
    failures_reported, free_port, http_request, metric, mtguard_bin, openssl_self_signed,
    openssl_spki_pin, without_colours, EchoBackend, Server,
};

const TOKEN: &str = "hardening-files-token-0123456789";

/// An `mtguard run` process with its admin API and a state directory in a
/// temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    admin: SocketAddr,
    _backend: EchoBackend,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let backend = EchoBackend::start();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let token = dir.path().join("admin.token");
        fs::write(&token, TOKEN).unwrap();
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "level = 1\n\
             [server]\nlisten = [\"127.0.0.1:{}\"]\nbackend = \"{}\"\n\
             [admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n\
             [state]\ndir = \"{}\"\n",
            free_port(),
            backend.addr,
            token.display(),
            dir.path().join("state").display()
        );
        fs::write(dir.path().join("mtguard.toml"), text).unwrap();
        fs::create_dir(dir.path().join("state")).unwrap();
        Setup {
            dir,
            admin,
            _backend: backend,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("mtguard.toml")
    }

    fn start(&self) -> Server {
        Server::start_with_admin(&self.config(), self.admin)
    }

    fn block(&self, ip: &str) -> (u16, String) {
        let body = format!(r#"{{"ip": "{ip}"}}"#);
        http_request(self.admin, "POST", "/v1/blocks", Some(TOKEN), Some(&body)).unwrap()
    }
}

/// A file outside the state directory that a planted link points at.
fn victim(dir: &Path) -> PathBuf {
    let path = dir.join("victim");
    fs::write(&path, b"precious").unwrap();
    path
}

#[test]
fn a_link_planted_at_the_state_temporary_is_neither_followed_nor_a_stop() {
    let s = Setup::new();
    let outside = tempfile::tempdir().unwrap();
    let target = victim(outside.path());
    let server = s.start();
    // The name older versions wrote through, and names of the pattern the
    // temporaries have now: none of them may redirect the write.
    let pid = server.child.id();
    symlink(&target, s.state_dir().join(format!(".state.bin.tmp.{pid}"))).unwrap();
    for i in 0..32 {
        symlink(
            &target,
            s.state_dir().join(format!(".state.bin.{i:08}.tmp")),
        )
        .unwrap();
    }
    for ip in ["192.0.2.1", "192.0.2.2"] {
        let (status, body) = s.block(ip);
        assert_eq!(status, 201, "{body}");
        assert!(!body.contains("warning"), "the save failed: {body}");
        assert_eq!(
            fs::read(&target).unwrap(),
            b"precious",
            "written through the link"
        );
        let state = s.state_dir().join("state.bin");
        let meta = fs::symlink_metadata(&state).unwrap();
        assert!(meta.file_type().is_file(), "state.bin is {meta:?}");
        assert!(meta.len() > 0);
    }
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    // Restarting restores both blocks from the file the saves wrote.
    drop(server);
    let server = s.start();
    let (status, body) = http_request(s.admin, "GET", "/v1/blocks", Some(TOKEN), None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("192.0.2.1") && body.contains("192.0.2.2"),
        "{body}\n{}",
        server.log_text()
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious");
}

#[test]
fn a_link_planted_at_the_pins_temporary_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = victim(outside.path());
    let path = dir.path().join("pins");
    symlink(
        &target,
        dir.path().join(format!(".pins.tmp.{}", std::process::id())),
    )
    .unwrap();
    let pins = vec![
        Pin::new(PinKind::Spki, [7; 32])
            .with_label("primary")
            .unwrap(),
        Pin::new(PinKind::Spki, [8; 32])
            .with_label("backup")
            .unwrap(),
    ];
    mtguard::persist::pinfile::save(&path, &pins, None).unwrap();
    assert_eq!(
        fs::read(&target).unwrap(),
        b"precious",
        "written through the link"
    );
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(mtguard::persist::pinfile::load(&path, None).unwrap(), pins);
    // And again, over the file the first save wrote.
    mtguard::persist::pinfile::save(&path, &pins[..1], None).unwrap();
    assert_eq!(
        mtguard::persist::pinfile::load(&path, None).unwrap(),
        pins[..1]
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious");
}

#[test]
fn stale_temporaries_are_removed_at_start_without_following_links() {
    let s = Setup::new();
    let outside = tempfile::tempdir().unwrap();
    let target = victim(outside.path());
    let outside_dir = outside.path().join("d");
    fs::create_dir(&outside_dir).unwrap();
    fs::write(outside_dir.join("keep"), b"keep").unwrap();
    let state = s.state_dir();
    // Left by a writer killed mid-save: the old name and the new pattern.
    fs::write(state.join(".state.bin.tmp.4242"), b"stale").unwrap();
    fs::write(state.join(".state.bin.Ab3dE9xQ.tmp"), b"stale").unwrap();
    symlink(&target, state.join(".state.bin.tmp.4343")).unwrap();
    symlink(&target, state.join(".state.bin.Zz9yX8wV.tmp")).unwrap();
    symlink(&outside_dir, state.join(".state.bin.tmp.4444")).unwrap();
    // Not ours: left alone.
    fs::write(state.join("notes.txt"), b"mine").unwrap();
    let server = s.start();
    let mut left: Vec<String> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    left.sort();
    assert!(
        left.is_empty(),
        "left behind: {left:?}\n{}",
        server.log_text()
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert_eq!(fs::read(outside_dir.join("keep")).unwrap(), b"keep");
    assert_eq!(fs::read(state.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn fetch_with_a_bare_out_name_writes_and_exits_0() {
    let served = tempfile::tempdir().unwrap();
    let cert = openssl_self_signed(served.path());
    let config = "default 2;\nproxy_for 1 149.154.175.50:8888;\n";
    fs::write(served.path().join("proxy-multi.conf"), config).unwrap();
    let server = mtguard_tests::OpensslServer::start(
        served.path(),
        &["-cert", "self.pem", "-key", "self.key", "-WWW"],
    );
    let cwd = tempfile::tempdir().unwrap();
    fs::write(
        cwd.path().join("out.conf"),
        b"# old\nproxy_for 1 10.0.0.1:8888;\n",
    )
    .unwrap();
    let out = Command::new(mtguard_bin())
        .args([
            "fetch",
            &format!("https://127.0.0.1:{}/proxy-multi.conf", server.port),
            "--pins-only",
            "--pin",
            &openssl_spki_pin(&cert),
            "--out",
            "out.conf",
        ])
        .current_dir(cwd.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        fs::read_to_string(cwd.path().join("out.conf")).unwrap(),
        config
    );
    let names: Vec<_> = fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.conf")], "{text}");
}

#[test]
fn a_state_file_that_is_not_a_regular_file_is_refused_at_start() {
    for kind in ["fifo", "directory", "socket"] {
        let s = Setup::new();
        let path = s.state_dir().join("state.bin");
        let _socket = match kind {
            "fifo" => {
                let ok = Command::new("mkfifo").arg(&path).status().unwrap();
                assert!(ok.success());
                None
            }
            "directory" => {
                fs::create_dir(&path).unwrap();
                None
            }
            _ => Some(std::os::unix::net::UnixListener::bind(&path).unwrap()),
        };
        // Server::start gives up after 30 s: a start that blocks on the
        // file fails the test instead of hanging it.
        let config = s.config();
        let err = match Server::start(&["--config", config.to_str().unwrap()], "guarding") {
            Ok(server) => panic!("{kind}: started: {}", server.log_text()),
            Err(e) => e,
        };
        assert!(err.starts_with("exited with"), "{kind}: {err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains("not a regular file"),
            "{kind}: {err}"
        );
        assert!(
            err.contains("remove it") || err.contains("move it"),
            "{kind}: {err}"
        );
    }
}

#[test]
fn admin_token_creation_does_not_follow_a_planted_link() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("created-through-link");
    symlink(&target, dir.path().join("admin.token")).unwrap();
    assert!(mtguard::admin::load_or_create_token(None, dir.path()).is_err());
    assert!(
        fs::symlink_metadata(&target).is_err(),
        "the token was written through the link"
    );
}

#[test]
fn a_failing_state_save_is_logged_once_per_episode_with_backoff() {
    let s = Setup::new();
    let server = s.start();
    let state = s.state_dir();
    let moved = s.dir.path().join("state.moved");
    // A file where the directory was: every save fails.
    fs::rename(&state, &moved).unwrap();
    fs::write(&state, b"not a directory").unwrap();
    let (status, body) = s.block("192.0.2.9");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("warning"), "{body}");
    server.wait_logged("saving state failed", Duration::from_secs(10));
    // Long enough for eight retries at the loop's 500 ms tick.
    std::thread::sleep(Duration::from_secs(4));
    let failed_lines = server.count_logged("saving state failed");
    fs::remove_file(&state).unwrap();
    fs::rename(&moved, &state).unwrap();
    server.wait_logged("saving state works again", Duration::from_secs(30));
    let log = server.log_text();
    assert_eq!(failed_lines, 1, "{log}");
    assert_eq!(server.count_logged("saving state failed"), 1, "{log}");
    assert_eq!(server.count_logged("saving state works again"), 1, "{log}");
    let recovery = log
        .lines()
        .find(|l| l.contains("saving state works again"))
        .unwrap();
    println!("recovery line: {}", without_colours(recovery));
    assert!(failures_reported(recovery) >= 1, "{recovery}");
    // The metrics count every failed save of the episode, and the one
    // that worked.
    let (status, m) = http_request(s.admin, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        metric(&m, "mtguard_state_saves_total{result=\"failed\"}"),
        failures_reported(recovery),
        "{m}"
    );
    assert!(
        metric(&m, "mtguard_state_saves_total{result=\"ok\"}") >= 1,
        "{m}"
    );
    let state_file = state.join("state.bin");
    assert!(fs::symlink_metadata(&state_file).unwrap().is_file());
}
