//! Fitting the system: systemd's notification protocol and watchdog, its
//! `$STATE_DIRECTORY`, the shipped units, logs fit for a pipe or the
//! journal (no colour codes, wall-clock block times), completions and
//! manual pages, `link --config`, and output into a closed pipe.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mtguard_tests::{
    connect_from, free_port, mtguard_bin, served, served_from, EchoBackend, Server,
};

const CLASSIC: &str = "0123456789abcdef0123456789abcdef";
/// `ee`, the classic secret, then "example.com" in hex.
const FAKE_TLS: &str = "ee0123456789abcdef0123456789abcdef6578616d706c652e636f6d";

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

    fn config(&self) -> PathBuf {
        self.dir.path().join("mtguard.toml")
    }

    /// A config with `limits` as [limits] and `rest` appended; the state
    /// directory is `state/` unless `rest` leaves it out (`state = false`).
    fn write(&self, limits: &str, state: bool) {
        let mut text = format!(
            "[server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n\
             [limits]\n{limits}\n\
             [admin]\nlisten = \"off\"\n",
            self.listen, self.backend.addr,
        );
        if state {
            text.push_str(&format!(
                "[state]\ndir = \"{}\"\n",
                self.dir.path().join("state").display()
            ));
        }
        fs::write(self.config(), text).unwrap();
    }

    fn start_with_env(&self, env: &[(&str, &std::ffi::OsStr)]) -> Server {
        let config = self.config();
        Server::start_with_env(&["--config", config.to_str().unwrap()], env, "guarding").unwrap()
    }
}

// ----- sd_notify -----

/// The datagrams the guard sends to `$NOTIFY_SOCKET`, one per message.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message so far, in the order received.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives until a message satisfies `want`, which is returned;
    /// fails the test after 20 s without one.
    fn until(&mut self, what: &str, want: impl Fn(&str) -> bool, server: &Server) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8(buf[..n].to_vec()).unwrap();
                self.seen.push(message.clone());
                if want(&message) {
                    return message;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {what} on $NOTIFY_SOCKET; got {:?}; log: {}",
                self.seen,
                server.log_text()
            );
        }
    }
}

/// One sd_notify message as its `KEY=VALUE` lines.
fn lines(message: &str) -> Vec<&str> {
    message.lines().collect()
}

#[test]
fn systemd_hears_ready_watchdog_reloading_and_stopping_in_order() {
    let s = Setup::new();
    s.write("", true);
    let mut notify = NotifySocket::bind(s.dir.path());
    // 400 ms: pings every 200 ms. No WATCHDOG_PID: a parent cannot know the
    // child's pid beforehand, and sd_watchdog_enabled(3) then applies it to
    // whoever reads it.
    let server = s.start_with_env(&[
        ("NOTIFY_SOCKET", notify.path.as_os_str()),
        ("WATCHDOG_USEC", "400000".as_ref()),
    ]);
    let ready = notify.until("READY=1", |m| lines(m).contains(&"READY=1"), &server);
    assert_eq!(lines(&ready), ["READY=1"]);
    // Readiness comes once every listener is bound: the proxy port serves.
    assert!(served_from(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        s.listen
    ));
    for _ in 0..2 {
        let ping = notify.until("WATCHDOG=1", |m| lines(m).contains(&"WATCHDOG=1"), &server);
        assert_eq!(lines(&ping), ["WATCHDOG=1"]);
    }

    // A reload, the config unchanged: RELOADING=1 with the monotonic clock
    // that Type=notify-reload wants, then READY=1 again.
    server.signal("HUP");
    let reloading = notify.until("RELOADING=1", |m| m.contains("RELOADING=1"), &server);
    let reloading = lines(&reloading);
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let usec = reloading
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    notify.until(
        "READY=1 after the reload",
        |m| lines(m).contains(&"READY=1"),
        &server,
    );
    server.wait_logged("configuration reloaded", Duration::from_secs(10));

    // A refused reload ends in READY=1 too: the old config serves on.
    fs::write(s.config(), "[server]\nlisten = \"nope\"\n").unwrap();
    server.signal("HUP");
    notify.until("RELOADING=1", |m| m.contains("RELOADING=1"), &server);
    notify.until(
        "READY=1 after a refused reload",
        |m| lines(m).contains(&"READY=1"),
        &server,
    );
    server.wait_logged("reload refused", Duration::from_secs(10));

    let status = {
        let log = server.log.clone();
        let status = server.stop();
        assert!(status.success(), "{}", log.lock().unwrap().join("\n"));
        status
    };
    assert!(status.success());
    // STOPPING=1 was sent before the process ended: it is queued already.
    let mut buf = [0u8; 4096];
    let mut after = Vec::new();
    while let Ok(n) = notify.socket.recv(&mut buf) {
        after.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    assert!(
        after.iter().any(|m| lines(m) == ["STOPPING=1"]),
        "no STOPPING=1 at shutdown: {after:?}"
    );

    // The order, watchdog pings aside.
    notify.seen.extend(after);
    let order: Vec<&str> = notify
        .seen
        .iter()
        .filter(|m| lines(m) != ["WATCHDOG=1"])
        .map(|m| lines(m)[0])
        .collect();
    assert_eq!(
        order,
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_guard_runs() {
    let s = Setup::new();
    s.write("", true);
    // A watchdog asked for, but no socket to send to: the guard runs on
    // and says nothing about either.
    let server = s.start_with_env(&[("WATCHDOG_USEC", "400000".as_ref())]);
    assert!(served_from(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        s.listen
    ));
    assert!(server.stop().success());
}

/// The shipped units, checked by systemd itself, with ExecStart pointed
/// at this build's binary (verify fails on a missing one).
#[test]
fn the_shipped_units_are_type_notify_with_a_watchdog_and_systemd_accepts_them() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-std/dist");
    let bin = mtguard_bin();
    for (unit, exec) in [
        ("mtguard.service", "/usr/local/bin/mtguard"),
        ("debian/mtguard.service", "/usr/bin/mtguard"),
    ] {
        let text = fs::read_to_string(dist.join(unit)).unwrap();
        let set: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(set.contains(&"Type=notify"), "{unit}");
        assert!(set.iter().any(|l| l.starts_with("WatchdogSec=")), "{unit}");
        assert!(set.contains(&"StateDirectory=mtguard"), "{unit}");
        // sd_notify is a unix datagram: the sandbox must allow AF_UNIX.
        let families = set
            .iter()
            .find(|l| l.starts_with("RestrictAddressFamilies="))
            .unwrap();
        assert!(families.contains("AF_UNIX"), "{unit}: {families}");

        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("mtguard.service");
        assert!(text.contains(exec), "{unit}");
        fs::write(&copy, text.replace(exec, bin.to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze (apt-get install systemd)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{unit}: {said}");
        assert!(!said.contains("mtguard.service"), "{unit}: {said}");
    }
}

// ----- $STATE_DIRECTORY -----

/// The `dir` row of `check-config`'s output.
fn state_dir_row(config: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(mtguard_bin())
        .arg("check-config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut in_state = false;
    for line in text.lines().map(str::trim_start) {
        if line.starts_with('[') {
            in_state = line.starts_with("[state]");
        } else if in_state && line.starts_with("dir ") {
            return line.to_owned();
        }
    }
    panic!("no [state] dir in:\n{text}")
}

#[test]
fn state_directory_is_the_key_then_systemds_variable_then_the_default() {
    let s = Setup::new();
    let a = s.dir.path().join("a");
    let b = s.dir.path().join("b");
    let both = format!("{}:{}", a.display(), b.display());

    // Unset in the file: the first path of $STATE_DIRECTORY.
    s.write("", false);
    let row = state_dir_row(&s.config(), &[("STATE_DIRECTORY", &both)]);
    assert!(row.contains(&format!(" {} ", a.display())), "{row}");
    assert!(
        row.ends_with("$STATE_DIRECTORY"),
        "check-config names the source: {row}"
    );
    assert!(!row.contains(&b.display().to_string()), "{row}");
    // Neither: the per-user default.
    let home = s.dir.path().join("home");
    let row = state_dir_row(
        &s.config(),
        &[
            ("STATE_DIRECTORY", ""),
            ("XDG_DATA_HOME", home.to_str().unwrap()),
        ],
    );
    assert!(
        row.contains(&home.join("mtguard").display().to_string()),
        "{row}"
    );
    assert!(row.ends_with("default"), "{row}");
    // A relative path is not systemd's and is not taken.
    let row = state_dir_row(
        &s.config(),
        &[
            ("STATE_DIRECTORY", "relative/dir"),
            ("XDG_DATA_HOME", home.to_str().unwrap()),
        ],
    );
    assert!(
        row.contains(&home.join("mtguard").display().to_string()),
        "{row}"
    );

    // The key wins over the variable.
    s.write("", true);
    let row = state_dir_row(&s.config(), &[("STATE_DIRECTORY", &both)]);
    assert!(
        row.contains(&s.dir.path().join("state").display().to_string()),
        "{row}"
    );

    // And `run` keeps its state there: saved at shutdown into the first.
    s.write("", false);
    let server = s.start_with_env(&[("STATE_DIRECTORY", both.as_ref())]);
    assert!(server.stop().success());
    assert!(a.join("state.bin").exists(), "no state in {}", a.display());
    assert!(!b.exists());
}

// ----- the log -----

/// The value of `key=value` in a log line, without the quotes strings get.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// A real block, ended by its timer: the block line says when it ends as
/// wall-clock RFC 3339, the unblock line is stamped with the wall clock,
/// and no line of a piped log carries a terminal colour code.
#[test]
fn block_lines_carry_rfc3339_wall_clock_times_and_a_piped_log_has_no_colours() {
    let s = Setup::new();
    s.write(
        // No jitter: the block line's end time is checked to the second.
        "max_connections_per_ip = 2\nblock_after_violations = 1\nblock_duration = \"2s\"\n\
         block_jitter_permille = 0",
        true,
    );
    let server = s.start_with_env(&[]);
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 7, 7, 7));
    let before = SystemTime::now();
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect_from(attacker, s.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    assert!(
        !served_from(attacker, s.listen),
        "the third exceeds the limit"
    );
    server.wait_logged("client blocked", Duration::from_secs(10));
    let after = SystemTime::now();
    held.clear();
    server.wait_logged("client unblocked", Duration::from_secs(20));

    let log = server.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log:?}"
    );
    let blocked = log.lines().find(|l| l.contains("client blocked")).unwrap();
    let until = field(blocked, "until").unwrap_or_else(|| panic!("no until= in {blocked}"));
    assert!(
        until.ends_with('Z') && until.len() == "2026-12-02T04:05:06Z".len(),
        "{blocked}"
    );
    assert!(field(blocked, "until_ms").is_none(), "{blocked}");
    let until = humantime::parse_rfc3339(until).unwrap();
    // Two seconds after the block, to the second (RFC 3339 without a
    // fraction rounds down).
    assert!(
        until + Duration::from_secs(1) >= before + Duration::from_secs(2),
        "{blocked}"
    );
    assert!(until <= after + Duration::from_secs(2), "{blocked}");

    let unblocked = log
        .lines()
        .find(|l| l.contains("client unblocked"))
        .unwrap();
    let stamp = unblocked.split_whitespace().next().unwrap();
    let stamp = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| {
        panic!("{e}: the line does not start with an RFC 3339 time: {unblocked}")
    });
    assert!(
        stamp + Duration::from_secs(1) >= until,
        "{unblocked} before {blocked}"
    );
    drop(server);
}

/// Colours stay for a person at a terminal: run under `script` (a pty,
/// util-linux's, in Debian's essential bsdutils), the log has them, and
/// `NO_COLOR` takes them away there too. The guard stops at once on a
/// listen port the test holds, after its first log lines.
#[test]
fn a_terminal_gets_colours_unless_no_color_is_set() {
    let s = Setup::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fs::write(
        s.config(),
        format!(
            "[server]\nlisten = [\"{}\"]\nbackend = \"{}\"\n[admin]\nlisten = \"off\"\n\
             [state]\ndir = \"{}\"\n",
            held.local_addr().unwrap(),
            s.backend.addr,
            s.dir.path().join("state").display()
        ),
    )
    .unwrap();
    let command = format!(
        "{} run --config {}",
        mtguard_bin().display(),
        s.config().display()
    );
    let on_a_terminal = |no_color: Option<&str>| {
        let mut script = Command::new("script");
        script
            .args(["-qec", &command, "/dev/null"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        match no_color {
            Some(v) => script.env("NO_COLOR", v),
            None => script.env_remove("NO_COLOR"),
        };
        let out = script.output().expect("script (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("starting"), "{text:?}");
        assert!(text.contains("cannot listen"), "{text:?}");
        text
    };
    assert!(
        on_a_terminal(None).contains('\u{1b}'),
        "no colours on a terminal"
    );
    // no-color.org: set and not empty.
    assert!(on_a_terminal(Some("")).contains('\u{1b}'));
    let plain = on_a_terminal(Some("1"));
    assert!(
        !plain.contains('\u{1b}'),
        "colours despite NO_COLOR: {plain:?}"
    );
}

// ----- completions and manual pages -----

/// The commands `mtguard --help` lists.
fn subcommands() -> Vec<String> {
    let out = Command::new(mtguard_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(commands.len() >= 8, "{help}");
    commands
}

fn mtguard(args: &[&str]) -> Output {
    let out = Command::new(mtguard_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "mtguard {args:?}: {out:?}");
    out
}

#[test]
fn completions_name_every_command_for_each_shell() {
    let commands = subcommands();
    let bash = String::from_utf8(mtguard(&["completions", "bash"]).stdout).unwrap();
    for c in &commands {
        assert!(
            bash.contains(&format!("mtguard,{c})")),
            "bash completion lacks {c}"
        );
    }
    assert!(bash.contains("complete -F _mtguard"), "{bash}");
    // And it is bash: it parses.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mtguard.bash");
    fs::write(&script, &bash).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let zsh = String::from_utf8(mtguard(&["completions", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef mtguard"), "{zsh}");
    let fish = String::from_utf8(mtguard(&["completions", "fish"]).stdout).unwrap();
    for c in &commands {
        assert!(zsh.contains(&format!("'{c}:")), "zsh completion lacks {c}");
        assert!(
            fish.contains(&format!("-a \"{c}\"")),
            "fish completion lacks {c}"
        );
    }
}

/// `groff -man -ww -z`: every warning on, output discarded.
fn groff_warnings(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("groff (apt-get install groff-base)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_manual_pages_render_without_warnings_and_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("mtguard.1");
    fs::write(&page, mtguard(&["man"]).stdout).unwrap();
    assert_eq!(groff_warnings(&page), "", "mtguard.1");
    let text = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-c"])
        .arg(&page)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for c in subcommands() {
        assert!(
            text.contains(&format!("mtguard-{c}(1)")),
            "mtguard.1 lacks {c}:\n{text}"
        );
    }

    // --dir: one page per command, each valid.
    let pages = dir.path().join("pages");
    mtguard(&["man", "--dir", pages.to_str().unwrap()]);
    for c in subcommands() {
        let page = pages.join(format!("mtguard-{c}.1"));
        assert!(page.exists(), "no {}", page.display());
        assert_eq!(groff_warnings(&page), "", "{}", page.display());
    }
    let run = fs::read_to_string(pages.join("mtguard-run.1")).unwrap();
    assert!(
        run.contains("drain"),
        "mtguard-run.1 lacks its options:\n{run}"
    );
}

// ----- link --config -----

#[test]
fn link_reads_the_secrets_from_the_config_and_warns_about_one_on_the_command_line() {
    let s = Setup::new();
    fs::write(
        s.config(),
        format!(
            "[server]\nlisten = [\"0.0.0.0:4443\"]\nbackend = \"{}\"\n\
             [mtproto]\nsecrets = [\"{FAKE_TLS}\", \"{}\"]\n",
            s.backend.addr,
            CLASSIC.to_uppercase()
        ),
    )
    .unwrap();
    let config = s.config();
    let config = config.to_str().unwrap();
    let link = |q: String| format!("tg://proxy?{q}\nhttps://t.me/proxy?{q}\n");

    // The port of the first listen address unless given; the secrets in
    // the order written, canonical; nothing on stderr.
    let out = mtguard(&["link", "--server", "proxy.example.net", "--config", config]);
    let q =
        |port: u16, secret: &str| format!("server=proxy.example.net&port={port}&secret={secret}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        link(q(4443, FAKE_TLS)) + &link(q(4443, CLASSIC))
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = mtguard(&[
        "link",
        "--server",
        "proxy.example.net",
        "--port",
        "443",
        "--config",
        config,
    ]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        link(q(443, FAKE_TLS)) + &link(q(443, CLASSIC))
    );

    // The old way still works, with a warning.
    let out = mtguard(&[
        "link",
        "--server",
        "proxy.example.net",
        "--port",
        "443",
        "--secret",
        CLASSIC,
    ]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        link(q(443, CLASSIC))
    );
    let warning = String::from_utf8(out.stderr).unwrap();
    assert!(
        warning.contains("warning") && warning.contains("visible"),
        "{warning}"
    );

    // One source, not both, not none.
    for args in [
        vec![
            "link", "--server", "x", "--config", config, "--secret", CLASSIC,
        ],
        vec!["link", "--server", "x", "--port", "1"],
    ] {
        let out = Command::new(mtguard_bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}: {out:?}");
    }
    // A config without secrets says so, naming the file.
    fs::write(
        s.config(),
        format!(
            "[server]\nlisten = [\"0.0.0.0:4443\"]\nbackend = \"{}\"\n",
            s.backend.addr
        ),
    )
    .unwrap();
    let out = Command::new(mtguard_bin())
        .args(["link", "--server", "x", "--config", config])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(
        said.contains("mtguard.toml") && said.contains("secrets"),
        "{said}"
    );
}

// ----- a closed stdout -----

/// Runs mtguard with stdout a pipe whose read end is already closed, as
/// `mtguard … | head -1` leaves it once head has its line.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(mtguard_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_every_printing_command_cleanly() {
    let s = Setup::new();
    s.write("", true);
    let config = s.config();
    let config = config.to_str().unwrap();
    fs::write(
        s.dir.path().join("links.toml"),
        format!(
            "[server]\nlisten = [\"0.0.0.0:4443\"]\nbackend = \"{}\"\n[mtproto]\nsecrets = [\"{CLASSIC}\"]\n",
            s.backend.addr
        ),
    )
    .unwrap();
    let links = s.dir.path().join("links.toml");
    let links = links.to_str().unwrap();
    for args in [
        vec!["check-config", config],
        vec!["link", "--server", "x", "--config", links],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
    ] {
        let out = into_closed_pipe(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("panicked"), "mtguard {args:?}: {said}");
        assert!(
            out.status.success(),
            "mtguard {args:?}: {:?}: {said}",
            out.status
        );
    }
}
