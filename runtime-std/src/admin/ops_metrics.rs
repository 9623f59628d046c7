//! The metrics operators graph and alert on beyond the engine's own: the
//! build, the process, bytes relayed, backend failures, reloads, state
//! saves and the `[hsm]` token (docs/metrics.md, "Operations" and
//! "Process"). Kept apart from the engine's so that a metric added on
//! either side touches one place.

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::metrics::{gauge, labelled_counters};
use crate::telemetry::{JobKind, Telemetry};

/// The `mtguard_`-prefixed operations metrics.
pub(super) fn encode(e: &mut DescriptorEncoder, telemetry: &Telemetry) -> std::fmt::Result {
    {
        let mut m = e.encode_descriptor(
            "build_info",
            "Always 1; the labels name the version and the commit the binary was built from.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", crate::COMMIT),
        ];
        ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
    }
    let ops = &telemetry.ops;
    labelled_counters(
        e,
        "relayed_bytes",
        "Bytes relayed between clients and the backend (or the mask backend), by direction.",
        "direction",
        [
            ("up", ops.relayed.up.0.load(Relaxed)),
            ("down", ops.relayed.down.0.load(Relaxed)),
        ],
    )?;
    labelled_counters(
        e,
        "backend_connect_failures",
        "Connections to the backend (or the mask backend) that failed, by kind.",
        "kind",
        ops.backend_failures.counts(),
    )?;
    let refusals = &ops.refusals;
    {
        let mut m = e.encode_descriptor(
            "refusals",
            "Refused sources by case and by the answer they were given ([refusal]).",
            None,
            MetricType::Counter,
        )?;
        for (case, answer, n) in refusals.counts() {
            let labels = [("case", case), ("answer", answer)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
    }
    gauge(
        e,
        "refusal_held_connections",
        "Refused connections held now: dropped, delayed, or blocked and awaiting their first bytes.",
        refusals.held.load(Relaxed),
    )?;
    gauge(
        e,
        "masked_connections",
        "Refused connections relayed to the cover site now.",
        refusals.masked.load(Relaxed),
    )?;
    labelled_counters(
        e,
        "refusal_cap_reached",
        "Refused connections reset because max_held or max_masked was reached, by cap.",
        "cap",
        refusals.caps_reached(),
    )?;
    labelled_counters(
        e,
        "masked_cut",
        "Masked connections cut at mask_max_bytes or mask_timeout, by bound.",
        "bound",
        refusals.cuts(),
    )?;
    let reloads = &ops.reloads;
    labelled_counters(
        e,
        "reloads",
        "SIGHUP reloads of the config, by result.",
        "result",
        [
            ("ok", reloads.ok.load(Relaxed)),
            ("refused", reloads.refused.load(Relaxed)),
        ],
    )?;
    gauge(
        e,
        "config_last_reload_successful",
        "0 if the last reload was refused, else 1.",
        reloads.last_ok.load(Relaxed).into(),
    )?;
    gauge(
        e,
        "config_last_reload_timestamp_seconds",
        "Unix time of the last reload, applied or refused; 0 before the first.",
        reloads.last_unix.load(Relaxed),
    )?;
    labelled_counters(
        e,
        "state_saves",
        "Saves of the state file, by result.",
        "result",
        [
            ("ok", ops.saves_ok.load(Relaxed)),
            ("failed", ops.saves_failed.load(Relaxed)),
        ],
    )?;
    let token = telemetry.jobs.get(JobKind::TokenMonitor);
    if token.running.load(Relaxed) {
        gauge(
            e,
            "hsm_token_up",
            "1 if the last probe of the [hsm] token answered, else 0.",
            (token.consecutive_failures.load(Relaxed) == 0).into(),
        )?;
    }
    Ok(())
}

/// The process metrics, under the names every Prometheus client library
/// gives them (no `mtguard_` prefix), so that existing dashboards and
/// alerts read them. Read from /proc at each scrape; Linux only.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        #[cfg(target_os = "linux")]
        {
            let e = &mut e;
            let p = linux::read();
            if let Some(cpu) = p.cpu_seconds {
                let c = ConstCounter::new(cpu);
                c.encode(e.encode_descriptor(
                    "process_cpu_seconds",
                    "User and system CPU time spent, in seconds.",
                    None,
                    c.metric_type(),
                )?)?;
            }
            if let Some(start) = p.start_time_seconds {
                let g = ConstGauge::new(start);
                g.encode(e.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds.",
                    None,
                    g.metric_type(),
                )?)?;
            }
            if let Some(rss) = p.resident_bytes {
                gauge(
                    e,
                    "process_resident_memory_bytes",
                    "Resident memory size, in bytes.",
                    rss,
                )?;
            }
            if let Some(vsize) = p.virtual_bytes {
                gauge(
                    e,
                    "process_virtual_memory_bytes",
                    "Virtual memory size, in bytes.",
                    vsize,
                )?;
            }
            if let Some(fds) = p.open_fds {
                gauge(e, "process_open_fds", "Open file descriptors.", fds)?;
            }
            if let Some(max) = p.max_fds {
                gauge(
                    e,
                    "process_max_fds",
                    "The soft limit on open file descriptors.",
                    max,
                )?;
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = &mut e;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod linux {
    //! /proc/self, read without `unsafe`: the clock tick and the page size
    //! come from rustix (which reads them from the auxiliary vector).

    /// What one reading found; `None` where a file could not be read or
    /// parsed (a hardened /proc, say), so the rest is still served.
    #[derive(Debug, Default)]
    pub(crate) struct Process {
        pub(crate) cpu_seconds: Option<f64>,
        pub(crate) start_time_seconds: Option<f64>,
        pub(crate) resident_bytes: Option<u64>,
        pub(crate) virtual_bytes: Option<u64>,
        pub(crate) open_fds: Option<u64>,
        pub(crate) max_fds: Option<u64>,
    }

    pub(crate) fn read() -> Process {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let mut p = Process::default();
        if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            p.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            p.virtual_bytes = Some(stat.vsize);
            p.resident_bytes = Some(stat.rss_pages.saturating_mul(page));
            p.start_time_seconds = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| boot_time(&s))
                .map(|boot| boot as f64 + stat.start_ticks as f64 / ticks);
        }
        // The listing's own descriptor is open while it is read: not ours
        // to count.
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| (d.count() as u64).saturating_sub(1));
        p.max_fds = crate::loadgen::open_files_limit();
        p
    }

    /// The fields of /proc/self/stat the metrics use.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Stat {
        pub(crate) utime: u64,
        pub(crate) stime: u64,
        pub(crate) start_ticks: u64,
        pub(crate) vsize: u64,
        pub(crate) rss_pages: u64,
    }

    /// Fields 14, 15, 22, 23 and 24 of proc(5); counted after the command
    /// name, which is in parentheses and may hold spaces and parentheses.
    pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
        let after = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // `fields[0]` is field 3 (the state).
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }

    /// `btime` of /proc/stat: the boot time, in seconds since the epoch.
    pub(crate) fn boot_time(text: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields_are_counted_after_the_name() {
            // A command name with a space and a parenthesis in it.
            let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 75 0 0 20 0 9 0 1500 123456789 2048 18446744073709551615 \
                        1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
            assert_eq!(
                parse_stat(stat),
                Some(Stat {
                    utime: 250,
                    stime: 75,
                    start_ticks: 1500,
                    vsize: 123456789,
                    rss_pages: 2048,
                })
            );
            assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
            assert_eq!(parse_stat("no parenthesis"), None);
        }

        #[test]
        fn boot_time_is_read() {
            assert_eq!(
                boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
                Some(1700000000)
            );
            assert_eq!(boot_time("cpu 1\n"), None);
        }

        #[test]
        fn this_process_reads_whole() {
            let p = read();
            let fds = p.open_fds.expect("open fds");
            assert!(fds >= 3, "{p:?}");
            assert!(p.resident_bytes.expect("rss") > 0, "{p:?}");
            assert!(p.virtual_bytes.expect("vsize") >= p.resident_bytes.unwrap());
            assert!(p.cpu_seconds.expect("cpu") >= 0.0);
            // Started before now, and after 2020.
            let start = p.start_time_seconds.expect("start time");
            assert!(
                start > 1.58e9 && start <= crate::unix_now() as f64 + 1.0,
                "{start}"
            );
            if let Some(max) = p.max_fds {
                assert!(max >= fds, "{p:?}");
            }
        }
    }
}
