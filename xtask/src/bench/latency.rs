//! Section "daemon detection-to-promotion latency": HAProxy 2.6 in daemon mode, reloaded
//! with `-sf` every 50 ms under a light HTTP load, while `steer daemon --comm haproxy`
//! promotes each new process. The figure is the daemon's own `latency_us` per promotion:
//! from the tracepoint seeing `listen()` to the promote being done.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::json;
use steer_harness::{
    haproxy::{Haproxy, Mode},
    load::{self, LoadConfig, Protocol},
    netns::NetNs,
};

use super::{
    Ctx, Findings, Row, Section, Summary,
    daemon::{self, Daemon},
};
use crate::util::ms;

pub const SECTION: Section =
    Section { key: "daemon_latency", title: "daemon detection-to-promotion latency", run };

/// HAProxy's frontend port (on 127.0.0.1), inside the section's namespace.
const PORT: u16 = 8080;
/// Time between the starts of two reloads.
const INTERVAL: Duration = Duration::from_millis(50);
/// Load workers, each with one request (one connection) in flight.
const CONCURRENCY: usize = 8;
/// Load after the last reload, so its promotion and the old process's exit are covered.
const SETTLE: Duration = Duration::from_millis(500);
/// A reload starting later than its slot by more than this counts as behind schedule.
const SLACK: Duration = Duration::from_millis(1);
/// The target for the 99th percentile, microseconds.
const TARGET_P99_US: u64 = 5_000;

fn run(ctx: &Ctx) -> Result<Findings> {
    let reloads: u32 = if ctx.quick { 20 } else { 200 };
    let version = super::haproxy_version()?;
    let steer = ctx.steer()?;
    let ns = NetNs::new("benchlat")?;
    // `grace` as docs/haproxy.md recommends, so that quick mode's zero-failure check holds.
    let dir = ctx.haproxy_dir("latency")?;
    let mut hap =
        Haproxy::start_with(&ns, &dir, Mode::Daemon, PORT, &["grace 100ms"]).context("starting HAProxy")?;
    // The serving pid after the start and after each reload.
    let mut pids = vec![hap.pid()];
    let netns = ns.path();
    // The bench runs HAProxy as root: `--user 0` is what verifies it.
    let args = ["--comm", "haproxy", "--user", "0", "--netns"]
        .map(AsRef::as_ref)
        .into_iter()
        .chain([netns.as_os_str()]);
    let mut daemon = Daemon::spawn(&steer, args, &ctx.out_dir.join("daemon-latency.log"))?;

    let mut load_cfg = LoadConfig::new(([127, 0, 0, 1], PORT).into());
    load_cfg.protocol = Protocol::Http;
    load_cfg.concurrency = CONCURRENCY;
    load_cfg.max_duration = INTERVAL * reloads + Duration::from_secs(60);
    load_cfg.netns = Some(netns.clone());
    // On an error below, dropping the handle stops and joins the workers.
    let running = load::start(load_cfg).context("starting the load")?;

    // Reload i starts at (i - 1) * INTERVAL, or as soon as reload i - 1 is done if that
    // is later: a reload returns only once the new process listens.
    let started = Instant::now();
    let mut late = 0_u32;
    for i in 1..=reloads {
        let due = started + INTERVAL * (i - 1);
        let now = Instant::now();
        if let Some(wait) = due.checked_duration_since(now) {
            std::thread::sleep(wait);
        } else if now > due + SLACK {
            late += 1;
        }
        pids.push(hap.reload().with_context(|| format!("reload {i} of HAProxy"))?);
        if i % 50 == 0 || i == reloads {
            let seen = daemon.lines()?.iter().filter(|line| daemon::is_promoted(line)).count();
            println!("   {i}/{reloads} reloads, {seen} promotions logged so far (adoption included)");
        }
    }
    let reloading = started.elapsed();
    let mean_interval = reloading / reloads;
    std::thread::sleep(SETTLE);
    let load = running.stop();
    daemon.stop()?;
    drop(hap);
    drop(ns);

    let lines = daemon.lines()?;
    // The promotions logged before `watching` adopted the HAProxy running at start.
    let watching = lines.iter().position(|line| daemon::message(line) == Some("watching")).unwrap_or(0);
    let latencies: Vec<u64> = lines[watching..]
        .iter()
        .filter(|line| daemon::is_promoted(line))
        .filter_map(|line| daemon::field_u64(line, "latency_us"))
        .collect();
    let adopted = lines[..watching].iter().filter(|line| daemon::is_promoted(line)).count();
    let failed_promotes = daemon::failed_promotes(lines);
    let s = Summary::of(&latencies);
    let met = s.count > 0 && s.p99 <= TARGET_P99_US;

    let mut findings = Findings {
        setup: format!(
            "{version} in daemon mode; {reloads} reloads (`-sf`), one every {} ms or as soon as \
             the previous one is done, under {CONCURRENCY} HTTP clients",
            INTERVAL.as_millis()
        ),
        ..Findings::default()
    };
    findings.rows = vec![
        Row::new("reloads done", reloads),
        Row::new("reload interval, mean (ms)", format!("{:.0}", mean_interval.as_secs_f64() * 1e3))
            .target(format!("{} ms (schedule)", INTERVAL.as_millis()), Some(late == 0)),
        Row::new("promotions seen", s.count),
        Row::new("promote failed warnings", failed_promotes),
        Row::new("latency p50 (ms)", format!("{:.2}", ms(s.p50))),
        Row::new("latency p99 (ms)", format!("{:.2}", ms(s.p99)))
            .target(format!("<= {:.0} ms", ms(TARGET_P99_US)), Some(met)),
        Row::new("latency max (ms)", format!("{:.2}", ms(s.max))),
        Row::new("requests (load)", load.requests),
        Row::new("failed requests", load.failed()).target("0", Some(load.failed() == 0)),
    ];
    if ctx.quick && load.failed() > 0 {
        findings.failures.push(format!(
            "{} of {} requests failed over {reloads} HAProxy reloads; first errors: {:?}",
            load.failed(),
            load.requests,
            load.first_errors
        ));
    }
    if load.requests == 0 {
        findings.failures.push(format!("the load made no request; first errors: {:?}", load.first_errors));
    }
    let data = json!({
        "haproxy": version,
        "reloads": reloads,
        "interval_ms": INTERVAL.as_millis(),
        "reloading_secs": reloading.as_secs_f64(),
        "mean_interval_ms": mean_interval.as_secs_f64() * 1e3,
        "reloads_behind_schedule": late,
        "haproxy_pids": pids,
        "adoption_promotions": adopted,
        "promotions": s.count,
        "promote_failed": failed_promotes,
        "latency_us": { "p50": s.p50, "p99": s.p99, "max": s.max, "all": latencies },
        "target_p99_us": TARGET_P99_US,
        "target_met": met,
        "load": load,
        "daemon_log": ctx.out_dir.join("daemon-latency.log"),
    });
    findings.data = data.as_object().cloned().unwrap_or_default();
    Ok(findings)
}
