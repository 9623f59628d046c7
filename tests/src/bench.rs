//! Pieces of `./bench.sh` (binary `mtguard-bench`): the configs that give
//! HAProxy and nginx mtguard's per-client policy, child processes that are
//! always cleaned up, their memory, criterion's results, and the report.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mtguard_core::{Level, Policy};

/// The per-client policy every guard gets: mtguard's level 1 (the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections per client.
    pub max_connections: u32,
    /// New connections per client per window.
    pub new_per_window: u32,
    /// The rate window, seconds.
    pub window_secs: u64,
}

impl Limits {
    /// The values of mtguard's default level, read from the core.
    pub fn default_level() -> Limits {
        let p = Policy::for_level(Level::Standard);
        Limits {
            max_connections: u32::from(p.max_connections_per_client),
            new_per_window: u32::from(p.max_new_connections_per_window),
            window_secs: p.rate_window.as_secs(),
        }
    }
}

/// mtguard's config: the default level with its per-client limits spelled
/// out; the global rate cap and under-attack mode are turned off because
/// HAProxy and nginx get no equivalent (they would cap the
/// connections-per-second run and the flood at 5,000/s for mtguard only).
pub fn mtguard_config(listen: SocketAddr, backend: SocketAddr, state: &Path, l: &Limits) -> String {
    format!(
        r#"# mtguard under ./bench.sh
level = 1

[server]
listen = ["{listen}"]
backend = "{backend}"

[limits]
max_connections_per_ip = {max}
max_new_connections_per_window = {rate}
rate_window = "{window}s"
global_max_new_per_second = 1000000
attack_enter_per_second = 0
attack_exit_per_second = 0

[admin]
listen = "off"

[state]
dir = "{state}"
"#,
        max = l.max_connections,
        rate = l.new_per_window,
        window = l.window_secs,
        state = state.display(),
    )
}

/// HAProxy with a stick table: the `max + 1`-th concurrent connection and
/// the `rate + 1`-th new one within the window are refused at accept, as
/// mtguard refuses them. (HAProxy counts refused attempts in the rate;
/// mtguard does not, and it also blocks repeat offenders.)
pub fn haproxy_config(listen: SocketAddr, backend: SocketAddr, l: &Limits) -> String {
    format!(
        r#"# HAProxy under ./bench.sh: mtguard's per-client policy on a stick table
global
    # Far above what the load opens; within a hard descriptor limit of 20,000.
    maxconn 8000
    nbthread 2

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend guard
    bind {listen}
    stick-table type ip size 65536 expire {expire}s store conn_cur,conn_rate({window}s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc0_conn_cur gt {max} }} || {{ sc0_conn_rate gt {rate} }}
    default_backend echo

backend echo
    server echo {backend}
"#,
        expire = 2 * l.window_secs,
        window = l.window_secs,
        max = l.max_connections,
        rate = l.new_per_window,
    )
}

/// Where Debian's dynamic stream module lives (`libnginx-mod-stream`).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx `stream` with `limit_conn`: the per-client connection limit.
/// nginx stream has no per-client connection-rate limit (`limit_req` is
/// HTTP only), so the rate part of the policy has no equivalent here.
pub fn nginx_config(
    listen: SocketAddr,
    backend: SocketAddr,
    prefix: &Path,
    stream_module: Option<&Path>,
    l: &Limits,
) -> String {
    let load = stream_module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    format!(
        r#"# nginx under ./bench.sh: mtguard's per-client connection limit
{load}worker_processes 2;
worker_rlimit_nofile 16384;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 8000;
}}

stream {{
    limit_conn_zone $binary_remote_addr zone=perclient:10m;
    server {{
        listen {listen};
        limit_conn perclient {max};
        proxy_pass {backend};
        proxy_connect_timeout 5s;
        proxy_timeout 10m;
        # Since nginx 1.21.4; without it a client's half-close closes both
        # ways, as mtguard and HAProxy do not.
        proxy_half_close on;
    }}
}}
"#,
        prefix = prefix.display(),
        max = l.max_connections,
    )
}

/// A child process (and whatever it forks: nginx's workers) that is
/// stopped when dropped, also when the run fails or panics.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output going to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// It and its descendants.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        let parents = parent_map();
        let mut i = 0;
        while i < pids.len() {
            let p = pids[i];
            pids.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
            i += 1;
        }
        pids
    }

    /// Proportional resident memory of it and its descendants, KiB:
    /// shared pages are split between the processes sharing them, so
    /// nginx's master and workers add up to what they really take.
    pub fn memory_kib(&self) -> u64 {
        self.pids().iter().filter_map(|&p| pss_kib(p)).sum()
    }

    /// Waits until `addr` accepts connections (or 10 s pass, or the
    /// process exits).
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!(
                    "{} exited with {status}: {}",
                    self.name,
                    log.trim()
                ));
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("{} not listening on {addr} after 10 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to it and its descendants, up to 5 s for it to exit, then
    /// SIGKILL to whatever is left.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pids = self.pids();
        signal("TERM", &pids);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<u32> = pids
            .into_iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        signal("KILL", &left);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// (pid, parent pid) of every process.
fn parent_map() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: the fields
        // after it start behind the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid = rest.split(' ').nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to completion within `limit` (killed after it) and returns
/// its stdout.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!(
                    "{cmd:?} failed ({status}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} still running after {limit:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One criterion result.
#[derive(Clone, Debug, PartialEq)]
pub struct Criterion {
    /// `group/function`.
    pub id: String,
    /// Mean time per iteration, nanoseconds.
    pub mean_ns: f64,
}

/// Every result under criterion's output directory (`target/criterion`).
pub fn read_criterion(dir: &Path) -> Vec<Criterion> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "report" && n != "base") {
                stack.push(p);
            } else if p.ends_with("new/estimates.json") {
                if let Some(c) = read_one(&p) {
                    out.push(c);
                }
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_one(estimates: &Path) -> Option<Criterion> {
    let dir = estimates.parent()?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("benchmark.json")).ok()?).ok()?;
    let est: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(estimates).ok()?).ok()?;
    Some(Criterion {
        id: meta["full_id"].as_str()?.to_owned(),
        mean_ns: est["mean"]["point_estimate"].as_f64()?,
    })
}

/// The targets, in the order they are measured and shown.
pub const TARGETS: [&str; 4] = ["direct", "mtguard", "haproxy", "nginx"];

/// What was measured on one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measures {
    /// Whether this target was measured at all (`--only`).
    pub ran: bool,
    /// Bulk throughput of one connection, bytes per second.
    pub bulk_one: f64,
    /// ... of many connections together.
    pub bulk_many: f64,
    /// Connections per second (connect, 32-byte exchange, close).
    pub cps: f64,
    /// Share of the cps exchanges that failed.
    pub cps_errors: f64,
    /// Under flood: share of legitimate exchanges that completed.
    pub success: f64,
    /// Under flood: legitimate p50 and p99 latency, ms.
    pub p50_ms: f64,
    /// .
    pub p99_ms: f64,
    /// Flood connections started.
    pub flood_started: u64,
    /// Flood connections not started because all allowed were in flight
    /// (the target kept them busy).
    pub flood_skipped: u64,
    /// Memory before and after the flood, KiB (none for direct).
    pub memory_before_kib: Option<u64>,
    /// .
    pub memory_after_kib: Option<u64>,
}

/// One row of the ratio table: a measure, each target's value, and
/// whether more is better.
struct Row {
    name: &'static str,
    unit: &'static str,
    values: Vec<Option<f64>>,
}

fn rows(m: &[Measures; 4], many: u32) -> Vec<Row> {
    let all = |f: &dyn Fn(&Measures) -> f64| m.iter().map(|x| x.ran.then(|| f(x))).collect();
    let mem = |f: &dyn Fn(&Measures) -> Option<u64>| {
        m.iter()
            .map(|x| f(x).filter(|_| x.ran).map(|k| k as f64 / 1024.0))
            .collect()
    };
    vec![
        Row {
            name: "throughput, 1 connection",
            unit: "Gbit/s",
            values: all(&|x| x.bulk_one * 8.0 / 1e9),
        },
        Row {
            name: if many == 16 {
                "throughput, 16 connections"
            } else {
                "throughput, many connections"
            },
            unit: "Gbit/s",
            values: all(&|x| x.bulk_many * 8.0 / 1e9),
        },
        Row {
            name: "connections per second",
            unit: "conn/s",
            values: all(&|x| x.cps),
        },
        Row {
            name: "under flood: legitimate success",
            unit: "%",
            values: all(&|x| x.success * 100.0),
        },
        Row {
            name: "under flood: legitimate p50",
            unit: "ms",
            values: all(&|x| x.p50_ms),
        },
        Row {
            name: "under flood: legitimate p99",
            unit: "ms",
            values: all(&|x| x.p99_ms),
        },
        Row {
            name: "under flood: flood connections not started (all in flight)",
            unit: "count",
            values: all(&|x| x.flood_skipped as f64),
        },
        Row {
            name: "memory before the flood",
            unit: "MiB",
            values: mem(&|x| x.memory_before_kib),
        },
        Row {
            name: "memory after the flood",
            unit: "MiB",
            values: mem(&|x| x.memory_after_kib),
        },
    ]
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(v) if !v.is_finite() => "n/a".to_owned(),
        Some(v) if v.abs() >= 1000.0 => {
            let s = format!("{:.0}", v);
            // Thousands separators, for reading at a glance.
            let bytes = s.as_bytes();
            let mut out = String::new();
            for (i, c) in bytes.iter().enumerate() {
                if i > 0 && (bytes.len() - i) % 3 == 0 && bytes[i - 1] != b'-' {
                    out.push(',');
                }
                out.push(*c as char);
            }
            out
        }
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b != 0.0 => {
            format!("{:.2}", a / b)
        }
        _ => "—".to_owned(),
    }
}

/// The table of measures and ratios (Markdown; also readable as text).
pub fn ratio_table(m: &[Measures; 4], many: u32) -> String {
    let mut t = String::from(
        "| measure | unit | direct | mtguard | HAProxy | nginx | mtguard / direct | mtguard / HAProxy | mtguard / nginx |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows(m, many) {
        let v = &r.values;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.unit,
            fmt_value(v[0]),
            fmt_value(v[1]),
            fmt_value(v[2]),
            fmt_value(v[3]),
            ratio(v[1], v[0]),
            ratio(v[1], v[2]),
            ratio(v[1], v[3]),
        );
    }
    t
}

/// The criterion results as a table, with mtguard / governor ratios.
pub fn criterion_table(results: &[Criterion]) -> String {
    let mut t = String::from("| benchmark | mean |\n|---|---|\n");
    for c in results {
        let _ = writeln!(t, "| {} | {} |", c.id, fmt_ns(c.mean_ns));
    }
    let find = |needle: &str| {
        results
            .iter()
            .find(|c| c.id.contains(needle))
            .map(|c| c.mean_ns)
    };
    for (what, ours, theirs) in [
        (
            "known clients",
            "admit+close, full table, known",
            "governor check_key, 65,536 known",
        ),
        (
            "a new client each time",
            "admit+close, full table, new client",
            "governor check_key, new key",
        ),
    ] {
        if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
            let _ = writeln!(
                t,
                "| **admission, {what}: mtguard / governor** | **{:.2}** |",
                a / b
            );
        }
    }
    t
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Draws the four measures side by side as an SVG.
pub fn plot(m: &[Measures; 4], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 2));
    let names = ["direct", "mtguard", "HAProxy", "nginx"];
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    type Bars = Vec<(usize, f64, f64)>; // target, value, width share
    let sets: [(&str, Bars); 4] = [
        (
            "throughput, Gbit/s (wide: 16 connections, narrow: 1)",
            (0..4)
                .flat_map(|i| {
                    [
                        (i, m[i].bulk_many * 8.0 / 1e9, 0.8),
                        (i, m[i].bulk_one * 8.0 / 1e9, 0.3),
                    ]
                })
                .collect(),
        ),
        (
            "connections per second",
            (0..4).map(|i| (i, m[i].cps, 0.8)).collect(),
        ),
        (
            "under flood: legitimate p99 latency, ms",
            (0..4).map(|i| (i, m[i].p99_ms, 0.8)).collect(),
        ),
        (
            "memory after the flood, MiB",
            (1..4)
                .map(|i| (i, m[i].memory_after_kib.unwrap_or(0) as f64 / 1024.0, 0.8))
                .collect(),
        ),
    ];
    for (area, (title, bars)) in panels.iter().zip(sets) {
        let top = bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..3.5f64, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(0)
            .x_labels(4)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..4.0).contains(&i) {
                    names[i as usize].to_owned()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, v, w) in bars {
            if !v.is_finite() {
                continue;
            }
            let x = i as f64;
            let shade = if w < 0.5 {
                colors[i].mix(1.0)
            } else {
                colors[i].mix(0.55)
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - w / 2.0, 0.0), (x + w / 2.0, v)],
                    shade.filled(),
                )))
                .map_err(|e| e.to_string())?;
            if w >= 0.5 {
                chart
                    .draw_series(std::iter::once(Text::new(
                        fmt_value(Some(v)),
                        (x - 0.3, v + top * 0.02),
                        ("sans-serif", 13),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// What goes into `BENCHMARKS.md`.
pub struct Report<'a> {
    /// `--quick` or the full form.
    pub quick: bool,
    /// [`ratio_table`].
    pub table: &'a str,
    /// [`criterion_table`].
    pub criterion: &'a str,
    /// File name of the plot, next to the report.
    pub svg: &'a str,
    /// Load averages (1, 5, 15 min) when the run started and ended.
    pub load_before: &'a str,
    /// .
    pub load_after: &'a str,
    /// CPUs.
    pub cores: usize,
    /// Flood source addresses.
    pub flood_sources: u32,
    /// Flood connections per second.
    pub flood_rate: u32,
    /// Connections of the "many connections" throughput run.
    pub many: u32,
    /// Rounds of the throughput and connection runs.
    pub rounds: u32,
}

/// `BENCHMARKS.md`.
pub fn report(r: &Report<'_>) -> String {
    let l = Limits::default_level();
    format!(
        r#"# Benchmarks: mtguard, HAProxy and nginx side by side

Written by `./bench.sh{quick}` (do not edit by hand; run it again). {cores} CPUs,
load average {before} at the start and {after} at the end: other work on the
machine makes every figure noisier, and all four targets share the cores with
the load generator, the backend and each other's leftovers.

![the four measures]({svg})

{table}
**What is measured.** All on loopback, with the same load generator
(`mtguard-load`, tokio) and the same echo and sink backend. The four targets
run side by side; the throughput and connection runs take turns target by
target for {rounds} rounds, and each figure is the median of its rounds (so a
burst of other work hits every target alike); then each target gets the flood
in turn:

- *direct*: the client talks to the backend itself, the physical limit here;
- *mtguard*: `mtguard run`, default level 1 ({max} connections per client,
  {rate} new connections per {window} s window), with the global rate cap and
  under-attack mode off, as the peers have neither;
- *HAProxy*: a stick table, `tcp-request connection track-sc0 src` and
  `reject if {{ sc0_conn_cur gt {max} }} || {{ sc0_conn_rate gt {rate} }}` over
  `conn_rate({window}s)`;
- *nginx*: `stream` with `limit_conn` {max} per `$binary_remote_addr`. nginx
  stream has no per-client connection-rate limit (`limit_req` is HTTP only),
  so only the connection limit applies.

1. Throughput: one connection, then {many} at once, each sending 64 KiB
   writes into the sink; the rate is what the backend confirms it received.
2. Connections per second: workers connect from thousands of 127.x.y.z
   addresses, exchange 32 bytes, close.
3. Flood: {flood_rate} connections per second, started on schedule whatever
   the target does (open loop, at most {flood_conc} in flight), each sending
   64 junk bytes and resetting, from {flood} addresses (three quarters of them
   from 10 hot addresses that exceed the per-client rate), while 100+ legitimate clients each exchange 32 bytes
   about three times a second (well under the rate). Success is the share
   of legitimate exchanges that completed within 2 s per step; p50 and p99
   are their latencies, connect to echo.
4. Memory: proportional set size (PSS) of the guard's processes (nginx:
   master and workers) before and after the flood.

## The core's micro-benchmarks (criterion)

`cargo bench -p mtguard-core` (admission against governor's keyed GCRA,
MTProto handshake validation, pin verification), mean time per operation:

{criterion}
"#,
        quick = if r.quick { " --quick" } else { "" },
        cores = r.cores,
        before = r.load_before,
        after = r.load_after,
        svg = r.svg,
        table = r.table,
        max = l.max_connections,
        rate = l.new_per_window,
        window = l.window_secs,
        many = r.many,
        rounds = r.rounds,
        flood = r.flood_sources,
        flood_rate = r.flood_rate,
        flood_conc = if r.quick { 512 } else { 1024 },
        criterion = if r.criterion.lines().count() > 2 {
            r.criterion
        } else {
            "(not run: `./bench.sh` runs them before the load tests)\n"
        },
    )
}

/// Sibling of the running executable (`target/release/<name>`).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    exe.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_core_default_level() {
        let l = Limits::default_level();
        assert_eq!(
            (l.max_connections, l.new_per_window, l.window_secs),
            (100, 300, 60)
        );
    }

    #[test]
    fn ratios_divide_mtguard_by_the_peer() {
        let mut m: [Measures; 4] = Default::default();
        for (i, x) in m.iter_mut().enumerate() {
            x.ran = true;
            x.cps = 1000.0 * (i as f64 + 1.0);
        }
        let t = ratio_table(&m, 16);
        let row = t
            .lines()
            .find(|l| l.starts_with("| connections per second"))
            .unwrap();
        // mtguard 2,000; direct 1,000; HAProxy 3,000; nginx 4,000.
        assert!(row.ends_with("| 2.00 | 0.67 | 0.50 |"), "{row}");
        assert!(row.contains("| 1,000 | 2,000 | 3,000 | 4,000 |"), "{row}");
        // A target left out with --only shows no figure and no ratio.
        m[2].ran = false;
        let t = ratio_table(&m, 16);
        let row = t
            .lines()
            .find(|l| l.starts_with("| connections per second"))
            .unwrap();
        assert!(
            row.contains("| 2,000 | — | 4,000 | 2.00 | — | 0.50 |"),
            "{row}"
        );
    }
}
