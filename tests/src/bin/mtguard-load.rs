//! `mtguard-load`: the load generator and the echo/sink backend of
//! `./bench.sh`. Prints one JSON object per run on stdout.
//!
//! ```text
//! mtguard-load backend --listen 127.0.0.1:9000
//! mtguard-load bulk  --target ADDR [--connections 1] [--seconds 3] [--octet 4]
//! mtguard-load cps   --target ADDR [--concurrency 32] [--sources 4000] [--seconds 4] [--max 1000000] [--octet 3]
//! mtguard-load flood --target ADDR [--flood-sources 3000] [--hot 10] [--rate 2000] [--concurrency 256]
//!                    [--legit 100] [--legit-interval-ms 300] [--seconds 8] [--max 2000000]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mtguard_tests::load::{self, FloodSpec, Pool};
use serde_json::json;

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = rest.iter();
        while let Some(key) = it.next() {
            let key = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --key, got {key:?}"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), value.clone());
        }
        Ok(Args(map))
    }

    fn get<T: std::str::FromStr>(&mut self, key: &str, default: Option<T>) -> Result<T, String> {
        match self.0.remove(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: invalid value {v:?}")),
            None => default.ok_or_else(|| format!("--{key} is required")),
        }
    }

    fn done(self) -> Result<(), String> {
        match self.0.keys().next() {
            Some(k) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }
}

fn run(argv: &[String]) -> Result<serde_json::Value, String> {
    let (mode, rest) = argv
        .split_first()
        .ok_or("usage: mtguard-load MODE [--key value]...")?;
    let mut a = Args::parse(rest)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match mode.as_str() {
        "backend" => {
            let listen: SocketAddr = a.get("listen", None)?;
            a.done()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
                load::backend(listener).await;
                Ok(json!({}))
            })
        }
        "bulk" => {
            let target: SocketAddr = a.get("target", None)?;
            let connections: u32 = a.get("connections", Some(1))?;
            let seconds: f64 = a.get("seconds", Some(3.0))?;
            let octet: u8 = a.get("octet", Some(4))?;
            a.done()?;
            let pool = Pool {
                octet,
                count: connections,
            };
            let r = rt.block_on(load::bulk(
                target,
                pool,
                connections,
                Duration::from_secs_f64(seconds),
            ));
            Ok(
                json!({"mode": "bulk", "connections": connections, "bytes": r.bytes,
                      "seconds": r.seconds, "errors": r.errors, "bytes_per_second": r.rate()}),
            )
        }
        "cps" => {
            let target: SocketAddr = a.get("target", None)?;
            let concurrency: u32 = a.get("concurrency", Some(32))?;
            let sources: u32 = a.get("sources", Some(4000))?;
            let seconds: f64 = a.get("seconds", Some(4.0))?;
            let max: u64 = a.get("max", Some(1_000_000))?;
            let octet: u8 = a.get("octet", Some(3))?;
            a.done()?;
            let pool = Pool {
                octet,
                count: sources,
            };
            let r = rt.block_on(load::cps(
                target,
                pool,
                concurrency,
                Duration::from_secs_f64(seconds),
                max,
            ));
            Ok(
                json!({"mode": "cps", "ok": r.ok, "errors": r.errors, "seconds": r.seconds,
                      "per_second": r.rate()}),
            )
        }
        "flood" => {
            let target: SocketAddr = a.get("target", None)?;
            let spec = FloodSpec {
                flood: Pool {
                    octet: a.get("flood-octet", Some(1))?,
                    count: a.get("flood-sources", Some(3000))?,
                },
                hot: a.get("hot", Some(10))?,
                rate: a.get("rate", Some(2000))?,
                concurrency: a.get("concurrency", Some(256))?,
                legit: Pool {
                    octet: a.get("legit-octet", Some(2))?,
                    count: a.get("legit", Some(100))?,
                },
                legit_interval: Duration::from_millis(a.get("legit-interval-ms", Some(300))?),
                duration: Duration::from_secs_f64(a.get("seconds", Some(8.0))?),
                max_flood: a.get("max", Some(2_000_000))?,
            };
            a.done()?;
            let r = rt.block_on(load::flood(target, spec));
            Ok(
                json!({"mode": "flood", "legit_attempts": r.legit_attempts, "legit_ok": r.legit_ok,
                      "success": r.success(), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                      "flood_started": r.flood_started, "flood_skipped": r.flood_skipped}),
            )
        }
        other => Err(format!(
            "unknown mode {other:?}: backend, bulk, cps or flood"
        )),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mtguard-load: {e}");
            ExitCode::from(2)
        }
    }
}
