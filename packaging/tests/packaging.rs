//! The release artifacts of `packaging/build.sh`, checked the way an
//! operator meets them: the static musl binaries (`file`, `ldd`, and run:
//! x86_64 natively, aarch64 under `qemu-aarch64-static`), the Debian
//! package installed on this machine with `dpkg` and removed again, and the
//! OCI image run with podman. Each test first runs the build script, which
//! rebuilds only what changed, so a plain `cargo test` never checks stale
//! artifacts, and fails (rather than skips) when a tool is missing.
//!
//! Needs root (dpkg, a network namespace, podman) and what `packaging/check.sh`
//! installs: musl-tools, gcc-aarch64-linux-gnu, qemu-user-static, buildah,
//! podman, runc, cargo-deb and the two musl targets.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const X86_64: &str = "x86_64-unknown-linux-musl";
const AARCH64: &str = "aarch64-unknown-linux-musl";

/// What `mtguard --version` prints: the version and the commit that
/// runtime-std/build.rs embedded, which for artifacts build.sh made from
/// this checkout is its HEAD.
fn version_line() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = std::env::var("MTGUARD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or(head)
        .unwrap_or_else(|| "unknown".to_owned());
    format!("mtguard {VERSION} (commit {commit})")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `packaging/build.sh`, once per test process; its output on failure.
fn artifacts() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let start = Instant::now();
        let out = Command::new(repo().join("packaging/build.sh"))
            .current_dir(repo())
            .output()
            .map_err(|e| format!("running packaging/build.sh: {e}"))?;
        println!(
            "packaging/build.sh: {:.1} s\n{}",
            start.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout)
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "packaging/build.sh failed ({}); run packaging/check.sh once to install its tools:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    repo().join("target/packaging")
}

fn output(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs `cmd`, failing the test unless it succeeds; its stdout.
fn run(cmd: &[&str]) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root(what: &str) {
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().map(str::to_owned))
        })
        .flatten()
        .unwrap();
    assert_eq!(
        uid, "0",
        "{what} needs root; run the tests as root (as CI does)"
    );
}

fn staged_binary(dist: &Path, triple: &str) -> PathBuf {
    dist.join(format!("mtguard-{VERSION}-{triple}/mtguard"))
}

/// What `file` says of a binary that loads nothing: a static (or
/// static-pie) executable, with no program interpreter.
fn assert_static(bin: &Path, arch: &str) {
    let what = run(&["file", "-b", bin.to_str().unwrap()]);
    assert!(what.contains("ELF 64-bit"), "{}: {what}", bin.display());
    assert!(what.contains(arch), "{}: not {arch}: {what}", bin.display());
    assert!(
        what.contains("statically linked") || what.contains("static-pie linked"),
        "{}: not static: {what}",
        bin.display()
    );
    assert!(
        !what.contains("interpreter"),
        "{}: asks for a loader: {what}",
        bin.display()
    );
}

#[test]
fn static_binaries_load_no_library_and_run() {
    let dist = artifacts();
    let x86 = staged_binary(&dist, X86_64);
    assert_static(&x86, "x86-64");

    // glibc's ldd knows a static binary and lists no library for it.
    let ldd = output(&["ldd", x86.to_str().unwrap()]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd {}: {said}",
        x86.display()
    );
    assert!(!said.contains("=>"), "ldd lists libraries: {said}");

    let expected = version_line();
    assert_eq!(run(&[x86.to_str().unwrap(), "--version"]).trim(), expected);
    let example = repo().join("runtime-std/dist/mtguard.example.toml");
    let checked = run(&[
        x86.to_str().unwrap(),
        "check-config",
        example.to_str().unwrap(),
    ]);
    assert!(checked.contains(": valid"), "{checked}");

    // The download tarball holds the binary and what an operator needs
    // beside it.
    tarball_holds(&dist, X86_64);
}

/// The aarch64 build: static, and under user-mode emulation it starts and
/// parses a config.
#[test]
fn the_aarch64_binary_is_static_and_runs_under_emulation() {
    let dist = artifacts();
    let arm = staged_binary(&dist, AARCH64);
    assert_static(&arm, "ARM aarch64");
    let expected = version_line();
    let example = repo().join("runtime-std/dist/mtguard.example.toml");
    let qemu = "qemu-aarch64-static";
    assert_eq!(
        run(&[qemu, arm.to_str().unwrap(), "--version"]).trim(),
        expected
    );
    let checked = run(&[
        qemu,
        arm.to_str().unwrap(),
        "check-config",
        example.to_str().unwrap(),
    ]);
    assert!(checked.contains(": valid"), "{checked}");

    tarball_holds(&dist, AARCH64);
}

/// The download tarball of `triple` holds the binary and what an operator
/// needs beside it.
fn tarball_holds(dist: &Path, triple: &str) {
    let tarball = dist.join(format!("mtguard-{VERSION}-{triple}.tar.gz"));
    let listing = run(&["tar", "-tzf", tarball.to_str().unwrap()]);
    for file in [
        "mtguard",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "README.md",
        "mtguard.example.toml",
        "mtguard.service",
        "mtguard-grafana.json",
        "mtguard-alerts.yml",
        "crowdsec/acquis.yaml",
        "crowdsec/mtguard-logs.yaml",
        "crowdsec/mtguard-scenarios.yaml",
    ] {
        let entry = format!("mtguard-{VERSION}-{triple}/{file}");
        assert!(
            listing.lines().any(|l| l == entry),
            "{} lacks {entry}:\n{listing}",
            tarball.display()
        );
    }
}

/// Serialises the dpkg test against another test process on this machine
/// doing the same (another checkout's run): both install the one package.
/// The lock lives as long as the file stays open.
struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    fn take() -> MachineLock {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/var/tmp/mtguard-packaging-test.lock")
            .unwrap();
        // SAFETY: flock on a descriptor this struct owns; the lock is
        // released when the file closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        MachineLock { _file: file }
    }
}

fn package_status() -> Option<String> {
    let out = output(&["dpkg-query", "-W", "-f", "${Status}", "mtguard"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        .filter(|s| !s.contains("not-installed"))
}

/// Purges the package and deletes the namespace when dropped, so a failed
/// test leaves the machine as it found it.
struct Installed {
    netns: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = output(&["ip", "netns", "delete", &self.netns]);
        if package_status().is_some() {
            let _ = output(&["dpkg", "--purge", "mtguard"]);
        }
    }
}

/// A process's stderr, collected by a thread.
struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    fn spawn(cmd: &[&str]) -> Logged {
        let mut child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        Logged { child, log }
    }

    fn wait_for(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.log.lock().unwrap().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before {needle:?}:\n{}", self.text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {needle:?} after 60 s:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        run(&["kill", "-TERM", &self.child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mtguard_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = fs::read_link(entry.path().join("exe")) {
            if exe == Path::new("/usr/bin/mtguard") {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

fn gid_of(group: &str) -> u32 {
    let line = run(&["getent", "group", group]);
    line.split(':').nth(2).unwrap().parse().unwrap()
}

#[test]
fn debian_package_installs_checks_runs_and_removes_keeping_config_and_state() {
    require_root("installing the .deb");
    let dist = artifacts();
    let deb = dist.join(format!("mtguard_{VERSION}-1_amd64.deb"));
    let deb = deb.to_str().unwrap();
    let _lock = MachineLock::take();

    // What dpkg will be told, before it is told.
    let field = |name: &str| run(&["dpkg-deb", "-f", deb, name]).trim().to_owned();
    assert_eq!(field("Package"), "mtguard");
    assert_eq!(field("Architecture"), "amd64");
    // No library: the binary is static. passwd is postinst's useradd.
    assert_eq!(field("Depends"), "passwd");
    let conffiles = run(&["dpkg-deb", "--info", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/mtguard/mtguard.toml");
    let contents = run(&["dpkg-deb", "-c", deb]);
    for path in [
        "./usr/bin/mtguard",
        "./etc/mtguard/mtguard.toml",
        "./usr/lib/systemd/system/mtguard.service",
        "./usr/lib/sysusers.d/mtguard.conf",
        "./usr/share/doc/mtguard/copyright",
        "./usr/share/doc/mtguard/examples/mtguard-grafana.json",
        "./usr/share/doc/mtguard/examples/mtguard-alerts.yml",
        "./usr/share/doc/mtguard/examples/crowdsec/acquis.yaml",
        "./usr/share/doc/mtguard/examples/crowdsec/mtguard-logs.yaml",
        "./usr/share/doc/mtguard/examples/crowdsec/mtguard-scenarios.yaml",
        "./usr/share/bash-completion/completions/mtguard",
        "./usr/share/zsh/vendor-completions/_mtguard",
        "./usr/share/fish/vendor_completions.d/mtguard.fish",
        "./usr/share/man/man1/mtguard.1.gz",
        "./usr/share/man/man1/mtguard-run.1.gz",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{deb} lacks {path}:\n{contents}"
        );
    }
    // The state directory is the unit's StateDirectory, made by systemd
    // for the service's user; a packaged one would be dpkg's to delete.
    assert!(!contents.contains("./var/lib/mtguard"), "{contents}");

    // The test installs, runs and purges the real package, so it must not
    // meet a real installation: the README's setup by hand uses these same
    // paths, and purging would delete its config and state.
    if let Some(status) = package_status() {
        panic!(
            "an mtguard package is installed here ({status}); this test would purge it. \
             If a killed test run left it, remove it with `dpkg --purge mtguard`"
        );
    }
    for path in ["/etc/mtguard", "/var/lib/mtguard"] {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{path} exists: mtguard seems installed by hand here, and this test would \
             install over it and delete it; move it away or run the test on another machine"
        );
    }
    let installed = Installed {
        netns: format!("mtguard-pkg-{}", std::process::id()),
    };

    run(&["dpkg", "-i", deb]);
    assert_eq!(package_status().unwrap(), "install ok installed");

    // Nothing started, nothing enabled: the operator has not configured
    // a proxy yet.
    assert_eq!(mtguard_processes(), Vec::<String>::new());
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/mtguard.service");
    assert!(!wants.exists() && wants.symlink_metadata().is_err());

    assert_static(Path::new("/usr/bin/mtguard"), "x86-64");
    assert_eq!(run(&["mtguard", "--version"]).trim(), version_line());
    let checked = run(&["mtguard", "check-config", "/etc/mtguard/mtguard.toml"]);
    assert!(
        checked.starts_with("/etc/mtguard/mtguard.toml: valid"),
        "{checked}"
    );

    // The config will hold the proxy's secrets: the service's group reads
    // it, other users do not.
    let meta = fs::metadata("/etc/mtguard/mtguard.toml").unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, gid_of("mtguard")));
    let as_user = |ids: &[&str]| {
        let mut cmd = vec!["setpriv"];
        cmd.extend(ids);
        cmd.extend([
            "/usr/bin/mtguard",
            "check-config",
            "/etc/mtguard/mtguard.toml",
        ]);
        output(&cmd)
    };
    let ok = as_user(&["--reuid=mtguard", "--regid=mtguard", "--init-groups"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = as_user(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The unit the package installed, checked by systemd itself (which
    // also fails on an ExecStart binary that is not there).
    let unit = "/usr/lib/systemd/system/mtguard.service";
    let verify = output(&["systemd-analyze", "verify", unit]);
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(!said.contains("mtguard.service"), "{said}");
    let security = output(&["systemd-analyze", "security", "--offline=yes", unit]);
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("systemd-analyze security --offline=yes {unit}:\n{report}"));
    println!(
        "systemd-analyze security --offline=yes {unit}: {}",
        overall.trim()
    );
    // 1.6 on systemd's 0-10 scale when this was written. Dropping any one
    // of PrivateDevices, ProtectSystem, NoNewPrivileges or
    // ProtectKernelTunables raised it to 1.8-1.9, SystemCallFilter to 3.2,
    // CapabilityBoundingSet to 3.3: no worse than today is the bar.
    let exposure: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {overall:?}"));
    assert!(exposure <= 1.6, "{overall}");

    // Run it as the unit would: its user, the installed config untouched,
    // the state directory as systemd's StateDirectory= makes it. A network
    // namespace of its own keeps the config's fixed ports from meeting
    // anything else on this machine.
    let ns = installed.netns.clone();
    run(&["ip", "netns", "add", &ns]);
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    run(&[
        "install",
        "-d",
        "-o",
        "mtguard",
        "-g",
        "mtguard",
        "-m",
        "0700",
        "/var/lib/mtguard",
    ]);
    let mut guard = Logged::spawn(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "setpriv",
        "--reuid=mtguard",
        "--regid=mtguard",
        "--init-groups",
        "/usr/bin/mtguard",
        "run",
        "--config",
        "/etc/mtguard/mtguard.toml",
    ]);
    guard.wait_for("admin API and /metrics");
    let status = guard.terminate();
    assert!(status.success(), "{status}:\n{}", guard.text());
    assert!(guard.text().contains("state saved"), "{}", guard.text());
    let token = fs::read_to_string("/var/lib/mtguard/admin.token").unwrap();
    let state_files: Vec<_> = fs::read_dir("/var/lib/mtguard")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    println!("state written by the packaged guard: {state_files:?}");
    let token_meta = fs::metadata("/var/lib/mtguard/admin.token").unwrap();
    assert_eq!(token_meta.uid(), {
        let id = run(&["id", "-u", "mtguard"]);
        id.trim().parse::<u32>().unwrap()
    });

    // An operator's edit, which removal and reinstallation must keep.
    let edited = format!(
        "{}\n# edited by the operator\n",
        fs::read_to_string("/etc/mtguard/mtguard.toml").unwrap()
    );
    fs::write("/etc/mtguard/mtguard.toml", &edited).unwrap();

    run(&["dpkg", "-r", "mtguard"]);
    assert_eq!(package_status().unwrap(), "deinstall ok config-files");
    assert!(!Path::new("/usr/bin/mtguard").exists());
    assert!(!Path::new(unit).exists());
    assert_eq!(
        fs::read_to_string("/etc/mtguard/mtguard.toml").unwrap(),
        edited
    );
    assert_eq!(
        fs::read_to_string("/var/lib/mtguard/admin.token").unwrap(),
        token
    );

    // Back again: the edited config is not replaced, nor is it questioned
    // (dpkg prompts only when the packaged version changed too).
    run(&["dpkg", "-i", deb]);
    assert_eq!(
        fs::read_to_string("/etc/mtguard/mtguard.toml").unwrap(),
        edited
    );
    let meta = fs::metadata("/etc/mtguard/mtguard.toml").unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid_of("mtguard"));

    // Purge takes config and state, and the stat override with them.
    run(&["dpkg", "--purge", "mtguard"]);
    assert_eq!(package_status(), None);
    assert!(!Path::new("/etc/mtguard/mtguard.toml").exists());
    assert!(!Path::new("/var/lib/mtguard").exists());
    let overrides = run(&["dpkg-statoverride", "--list"]);
    assert!(!overrides.contains("/etc/mtguard"), "{overrides}");
    drop(installed);
}

/// Every line of the source unit's [Service] is in the packaged unit, bar
/// the ones the package changes on purpose: hardening added to one unit
/// and not the other would otherwise go unnoticed.
#[test]
fn packaged_unit_keeps_every_setting_of_the_source_unit() {
    let dist = repo().join("runtime-std/dist");
    let source = fs::read_to_string(dist.join("mtguard.service")).unwrap();
    let packaged = fs::read_to_string(dist.join("debian/mtguard.service")).unwrap();
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let packaged_settings = settings(&packaged);
    let changed = [
        "ExecStart=/usr/local/bin/mtguard run --config /etc/mtguard/mtguard.toml",
        "DynamicUser=yes",
    ];
    for line in settings(&source) {
        if changed.contains(&line.as_str()) {
            continue;
        }
        assert!(
            packaged_settings.contains(&line),
            "runtime-std/dist/debian/mtguard.service lacks `{line}` of dist/mtguard.service"
        );
    }
    for line in [
        "ExecStart=/usr/bin/mtguard run --config /etc/mtguard/mtguard.toml",
        "User=mtguard",
        "Group=mtguard",
        "StateDirectory=mtguard",
    ] {
        assert!(packaged_settings.iter().any(|l| l == line), "{line}");
    }
    assert!(!packaged_settings
        .iter()
        .any(|l| l.starts_with("DynamicUser")));
}

/// podman with storage of its own in a temporary directory, so nothing of
/// the machine's container storage is read or left behind.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        Podman {
            dir: tempfile::Builder::new()
                .prefix("mtguard-podman.")
                .tempdir_in("/var/tmp")
                .unwrap(),
        }
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let dir = self.dir.path();
        let mut args: Vec<String> = vec![
            "podman".into(),
            "--root".into(),
            dir.join("root").to_str().unwrap().into(),
            "--runroot".into(),
            dir.join("run").to_str().unwrap().into(),
            "--storage-driver".into(),
            "vfs".into(),
            "--runtime".into(),
            "runc".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "none".into(),
        ];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, rest: &[&str]) -> String {
        let args = self.args(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    }

    /// A container's output: the guard logs to stderr, which podman gives
    /// back on its own stderr.
    fn logs(&self, container: &str) -> String {
        let args = self.args(&["logs", container]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = output(&args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let args = self.args(&["rm", "--all", "--force"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = output(&args);
        // vfs layers are plain directories; unmount what podman may still
        // hold before the TempDir removes them.
        let args = self.args(&["system", "reset", "--force"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = output(&args);
    }
}

/// The image as the OCI archive records it, read with tar and serde_json
/// rather than with the builder that wrote it: its config, and `tar -tv`
/// of every layer.
fn image_in(archive: &Path) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    run(&["tar", "-xf", archive.to_str().unwrap(), "-C", root]);
    let blob_path = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        dir.path().join("blobs/sha256").join(hex)
    };
    let json = |digest: &str| -> Value {
        serde_json::from_slice(&fs::read(blob_path(digest)).unwrap()).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    let mut files = String::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob_path(layer["digest"].as_str().unwrap());
        files += &run(&["tar", "--numeric-owner", "-tvzf", path.to_str().unwrap()]);
    }
    (json(manifest["config"]["digest"].as_str().unwrap()), files)
}

/// `tar -tv`'s mode and owner of `path` in a listing.
fn entry<'a>(files: &'a str, path: &str) -> (&'a str, &'a str) {
    let line = files
        .lines()
        .find(|l| l.split_whitespace().last() == Some(path))
        .unwrap_or_else(|| panic!("no {path} in the image:\n{files}"));
    let mut fields = line.split_whitespace();
    (fields.next().unwrap(), fields.next().unwrap())
}

#[test]
fn oci_image_runs_unprivileged_with_config_and_state_volumes() {
    require_root("podman with runc");
    let dist = artifacts();
    for (arch, archive) in [
        (
            "amd64",
            dist.join(format!("mtguard-{VERSION}-oci-amd64.tar")),
        ),
        (
            "arm64",
            dist.join(format!("mtguard-{VERSION}-oci-arm64.tar")),
        ),
    ] {
        let (config, files) = image_in(&archive);
        assert_eq!(config["architecture"], arch, "{}", archive.display());
        assert_eq!(config["os"], "linux");
        let c = &config["config"];
        assert_eq!(c["User"], "10001:10001");
        assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/bin/mtguard"]));
        assert_eq!(
            c["Cmd"],
            serde_json::json!(["run", "--config", "/etc/mtguard/mtguard.toml"])
        );
        let volumes = c["Volumes"].as_object().unwrap();
        assert!(volumes.contains_key("/etc/mtguard") && volumes.contains_key("/var/lib/mtguard"));
        // FROM scratch: nothing but what the Dockerfile copies, all root's
        // but the state directory.
        let mut paths: Vec<&str> = files
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .filter(|p| !p.ends_with('/'))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "etc/mtguard/mtguard.toml",
                "usr/bin/mtguard",
                "usr/share/doc/mtguard/LICENSE-APACHE",
                "usr/share/doc/mtguard/LICENSE-MIT",
            ],
            "{files}"
        );
        assert_eq!(entry(&files, "usr/bin/mtguard"), ("-rwxr-xr-x", "0/0"));
        assert_eq!(entry(&files, "var/lib/"), ("drwxr-xr-x", "0/0"));
        assert_eq!(
            entry(&files, "var/lib/mtguard/"),
            ("drwx------", "10001/10001")
        );
    }

    let podman = Podman::new();
    let archive = dist.join(format!("mtguard-{VERSION}-oci-amd64.tar"));
    let image = format!("oci-archive:{}", archive.display());
    // What the design notes found runc needs here, and no network: the
    // guard has nothing to reach in these checks.
    let base = [
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
        "--network",
        "none",
    ];
    podman.run(&["pull", "-q", &image]);
    // The name build.sh gave it in the archive.
    let tag = format!("localhost/mtguard:{VERSION}");

    let mut cmd = vec!["run", "--rm"];
    cmd.extend(base);
    cmd.extend([tag.as_str(), "--version"]);
    assert_eq!(podman.run(&cmd).trim(), version_line());

    let mut cmd = vec!["run", "--rm"];
    cmd.extend(base);
    cmd.extend([tag.as_str(), "check-config", "/etc/mtguard/mtguard.toml"]);
    let checked = podman.run(&cmd);
    assert!(checked.contains("valid"), "{checked}");
    assert!(checked.contains("0.0.0.0:4443"), "{checked}");

    // The default command: the guard serves, as uid 10001, writes its state
    // into the volume, and saves it on `podman stop`.
    let mut cmd = vec![
        "run",
        "-d",
        "--name",
        "guard",
        "-v",
        "mtguard-state:/var/lib/mtguard",
    ];
    cmd.extend(base);
    cmd.push(tag.as_str());
    podman.run(&cmd);
    let start = Instant::now();
    let logs = loop {
        let text = podman.logs("guard");
        if text.contains("admin API and /metrics") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the guard did not start in the container:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(logs.contains("0.0.0.0:4443"), "{logs}");
    let pid = podman.run(&["inspect", "--format", "{{.State.Pid}}", "guard"]);
    let status = fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10001"; 4],
        "{uids}"
    );
    podman.run(&["stop", "--time", "30", "guard"]);
    let exit = podman.run(&["inspect", "--format", "{{.State.ExitCode}}", "guard"]);
    let after = podman.logs("guard");
    assert_eq!(exit.trim(), "0", "{after}");
    assert!(after.contains("state saved"), "{after}");
    let volume = podman.run(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        "mtguard-state",
    ]);
    let token = Path::new(volume.trim()).join("admin.token");
    let meta = fs::metadata(&token).unwrap_or_else(|e| panic!("{}: {e}", token.display()));
    assert_eq!((meta.uid(), meta.gid()), (10001, 10001));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
