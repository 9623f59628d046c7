//! `mtguard-bench`: the driver of `./bench.sh`. Starts the echo/sink
//! backend, then in turn nothing (direct), mtguard, HAProxy and nginx in
//! front of it, measures each with `mtguard-load`, and writes the report.
//!
//! ```text
//! mtguard-bench [--quick] [--out BENCHMARKS.md] [--svg benchmarks.svg]
//!               [--criterion target/criterion] [--only mtguard,haproxy]
//!               [--work-dir DIR]
//! ```
//!
//! Every process it starts is stopped when it is done with it, and when it
//! fails or panics (`Proc` stops on drop); `./bench.sh` adds a time limit
//! and kills the whole process group on any exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use mtguard_tests::bench::{self, Limits, Measures, Proc, TARGETS};
use mtguard_tests::free_port;

/// Lengths and sizes of one run.
#[derive(Clone, Copy)]
struct Plan {
    rounds: u32,
    bulk_seconds: f64,
    many: u32,
    cps_seconds: f64,
    cps_concurrency: u32,
    cps_sources: u32,
    flood_seconds: f64,
    flood_sources: u32,
    flood_rate: u32,
    flood_concurrency: u32,
    legit: u32,
}

const QUICK: Plan = Plan {
    rounds: 3,
    bulk_seconds: 1.0,
    many: 16,
    cps_seconds: 1.5,
    cps_concurrency: 32,
    cps_sources: 4000,
    flood_seconds: 8.0,
    flood_sources: 3000,
    flood_rate: 2000,
    flood_concurrency: 512,
    legit: 100,
};

const FULL: Plan = Plan {
    rounds: 5,
    bulk_seconds: 4.0,
    many: 16,
    cps_seconds: 5.0,
    cps_concurrency: 64,
    cps_sources: 12000,
    flood_seconds: 30.0,
    flood_sources: 10000,
    flood_rate: 4000,
    flood_concurrency: 1024,
    legit: 200,
};

struct Options {
    quick: bool,
    out: PathBuf,
    svg: PathBuf,
    criterion: Option<PathBuf>,
    only: Vec<String>,
    work_dir: Option<PathBuf>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        out: "BENCHMARKS.md".into(),
        svg: "benchmarks.svg".into(),
        criterion: None,
        only: TARGETS.iter().map(|s| s.to_string()).collect(),
        work_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = value()?.into(),
            "--svg" => o.svg = value()?.into(),
            "--criterion" => o.criterion = Some(value()?.into()),
            "--work-dir" => o.work_dir = Some(value()?.into()),
            "--only" => {
                o.only = value()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
                    return Err(format!(
                        "--only: unknown target {bad:?}; known: {}",
                        TARGETS.join(", ")
                    ));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// Runs `mtguard-load` and parses its JSON line.
fn load(args: &[String], seconds: f64) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(bench::sibling("mtguard-load"));
    cmd.args(args);
    let out = bench::run_bounded(cmd, Duration::from_secs_f64(seconds + 30.0))?;
    serde_json::from_str(out.trim()).map_err(|e| format!("mtguard-load output {out:?}: {e}"))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn s<T: ToString>(x: T) -> String {
    x.to_string()
}

/// One bulk run: bytes per second.
fn bulk(target: SocketAddr, n: u32, plan: &Plan) -> Result<f64, String> {
    let v = load(
        &[
            s("bulk"),
            s("--target"),
            s(target),
            s("--connections"),
            s(n),
            s("--seconds"),
            s(plan.bulk_seconds),
        ],
        plan.bulk_seconds,
    )?;
    Ok(f(&v, "bytes_per_second"))
}

/// One connections-per-second run: (rate, failed share).
fn cps(target: SocketAddr, plan: &Plan) -> Result<(f64, f64), String> {
    let v = load(
        &[
            s("cps"),
            s("--target"),
            s(target),
            s("--concurrency"),
            s(plan.cps_concurrency),
            s("--sources"),
            s(plan.cps_sources),
            s("--seconds"),
            s(plan.cps_seconds),
        ],
        plan.cps_seconds,
    )?;
    let (ok, err) = (f(&v, "ok"), f(&v, "errors"));
    Ok((f(&v, "per_second"), err / (ok + err).max(1.0)))
}

/// The flood run, with memory before and after, into `m`.
fn flood(
    target: SocketAddr,
    guard: Option<&Proc>,
    plan: &Plan,
    m: &mut Measures,
) -> Result<(), String> {
    m.memory_before_kib = guard.map(Proc::memory_kib);
    let v = load(
        &[
            s("flood"),
            s("--target"),
            s(target),
            s("--flood-sources"),
            s(plan.flood_sources),
            s("--rate"),
            s(plan.flood_rate),
            s("--concurrency"),
            s(plan.flood_concurrency),
            s("--legit"),
            s(plan.legit),
            s("--seconds"),
            s(plan.flood_seconds),
        ],
        plan.flood_seconds,
    )?;
    m.success = f(&v, "success");
    m.p50_ms = f(&v, "p50_ms");
    m.p99_ms = f(&v, "p99_ms");
    m.flood_started = v["flood_started"].as_u64().unwrap_or(0);
    m.flood_skipped = v["flood_skipped"].as_u64().unwrap_or(0);
    // Let the flood's connections close before reading memory again.
    std::thread::sleep(Duration::from_millis(500));
    m.memory_after_kib = guard.map(Proc::memory_kib);
    eprintln!(
        "  flood ({} connections, {} skipped): legitimate {:.2}% served, p50 {:.2} ms, p99 {:.2} ms; memory {:?} -> {:?} KiB",
        m.flood_started,
        m.flood_skipped,
        m.success * 100.0,
        m.p50_ms,
        m.p99_ms,
        m.memory_before_kib,
        m.memory_after_kib
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Starts the guard `name` in front of `backend`; `None` for direct.
fn start(
    name: &str,
    backend: SocketAddr,
    dir: &Path,
) -> Result<Option<(Proc, SocketAddr)>, String> {
    let limits = Limits::default_level();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let write = |file: &str, text: String| -> Result<PathBuf, String> {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let mut proc = match name {
        "direct" => return Ok(None),
        "mtguard" => {
            let state = dir.join("mtguard-state");
            let _ = std::fs::remove_dir_all(&state);
            let cfg = write(
                "mtguard.toml",
                bench::mtguard_config(listen, backend, &state, &limits),
            )?;
            let mut cmd = Command::new(bench::sibling("mtguard"));
            cmd.arg("run")
                .arg("--config")
                .arg(cfg)
                .env("RUST_LOG", "warn");
            Proc::start("mtguard", cmd, &dir.join("mtguard.log"))?
        }
        "haproxy" => {
            let cfg = write(
                "haproxy.cfg",
                bench::haproxy_config(listen, backend, &limits),
            )?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(cfg);
            Proc::start("haproxy", cmd, &dir.join("haproxy.log"))?
        }
        "nginx" => {
            let module = Path::new(bench::NGINX_STREAM_MODULE);
            let module = module.exists().then_some(module);
            let cfg = write(
                "nginx.conf",
                bench::nginx_config(listen, backend, dir, module, &limits),
            )?;
            let mut cmd = Command::new("nginx");
            cmd.arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(cfg)
                .arg("-g")
                .arg("daemon off;");
            Proc::start("nginx", cmd, &dir.join("nginx.log"))?
        }
        other => return Err(format!("unknown target {other}")),
    };
    proc.wait_listening(listen)?;
    Ok(Some((proc, listen)))
}

fn load_now() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn run(o: &Options) -> Result<(), String> {
    let plan = if o.quick { QUICK } else { FULL };
    // Configs, logs and mtguard's state; removed at the end (./bench.sh
    // passes its own and also removes it if this process is killed).
    let dir = o.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mtguard-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let load_before = load_now();
    let result = (|| {
        let backend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bench::sibling("mtguard-load"));
        cmd.args(["backend", "--listen", &backend.to_string()]);
        let mut echo = Proc::start("backend", cmd, &dir.join("backend.log"))?;
        echo.wait_listening(backend)?;
        // Every target runs at once (an idle guard costs nothing) and the
        // throughput and connection runs take turns, round after round:
        // a burst of other work on the machine then hits every target
        // alike, and the median of the rounds drops the outliers.
        let mut running = Vec::new();
        for (i, name) in TARGETS.iter().enumerate() {
            if o.only.iter().any(|x| x == name) {
                let started = start(name, backend, &dir)?;
                running.push((i, *name, started));
            }
        }
        let target = |r: &Option<(Proc, SocketAddr)>| r.as_ref().map_or(backend, |(_, a)| *a);
        let mut samples: Vec<[Vec<f64>; 3]> = (0..4).map(|_| Default::default()).collect();
        let mut cps_errors = [0f64; 4];
        for round in 1..=plan.rounds {
            eprintln!("== round {round} of {}", plan.rounds);
            for (i, name, r) in &running {
                let one = bulk(target(r), 1, &plan)?;
                let many = bulk(target(r), plan.many, &plan)?;
                let (rate, err) = cps(target(r), &plan)?;
                eprintln!(
                    "  {name:8} bulk x1 {:6.2} Gbit/s, x{} {:6.2} Gbit/s, {rate:7.0} connections/s ({:.1}% failed)",
                    one * 8e-9,
                    plan.many,
                    many * 8e-9,
                    err * 100.0
                );
                samples[*i][0].push(one);
                samples[*i][1].push(many);
                samples[*i][2].push(rate);
                cps_errors[*i] = cps_errors[*i].max(err);
            }
        }
        let mut all: [Measures; 4] = Default::default();
        for (i, name, r) in &running {
            let m = &mut all[*i];
            m.ran = true;
            m.bulk_one = median(std::mem::take(&mut samples[*i][0]));
            m.bulk_many = median(std::mem::take(&mut samples[*i][1]));
            m.cps = median(std::mem::take(&mut samples[*i][2]));
            m.cps_errors = cps_errors[*i];
            eprintln!("== flood: {name}");
            flood(target(r), r.as_ref().map(|(p, _)| p), &plan, m)?;
        }
        drop(running);
        drop(echo);
        Ok::<_, String>(all)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let all = result?;
    let load_after = load_now();
    let table = bench::ratio_table(&all, plan.many);
    println!("\n{table}");
    let criterion = o
        .criterion
        .as_deref()
        .map(bench::read_criterion)
        .unwrap_or_default();
    let crit = bench::criterion_table(&criterion);
    if !criterion.is_empty() {
        println!("{crit}");
    }
    bench::plot(&all, &o.svg)?;
    let svg_name = o
        .svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let md = bench::report(&bench::Report {
        quick: o.quick,
        table: &table,
        criterion: &crit,
        svg: &svg_name,
        load_before: &load_before,
        load_after: &load_after,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        flood_sources: plan.flood_sources,
        flood_rate: plan.flood_rate,
        many: plan.many,
        rounds: plan.rounds,
    });
    std::fs::write(&o.out, md).map_err(|e| format!("{}: {e}", o.out.display()))?;
    eprintln!("wrote {} and {}", o.out.display(), o.svg.display());
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mtguard-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mtguard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
