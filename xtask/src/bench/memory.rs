//! Section "daemon memory over many reloads": test-server generations on one port, each
//! promoted by `steer daemon --port 8080` before the previous one closes and exits; the
//! daemon's resident memory after every generation, its descriptors, and the slots left.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::json;
use steer_harness::{
    netns::NetNs,
    server::{ServerArgs, TestServer},
};

use super::{
    Ctx, Findings, Row, Section,
    daemon::{self, Daemon},
};
use crate::{release, util::mib};

pub const SECTION: Section = Section { key: "daemon_memory", title: "daemon memory over many reloads", run };

/// Where every generation listens, inside the section's namespace.
const LISTEN: &str = "127.0.0.1:8080";
/// Generations in each window compared (the first and the last).
const WINDOW: usize = 100;
/// How long a new generation may wait for its promotion.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the last generation: more than the daemon's slot upkeep period (1 s).
const SETTLE: Duration = Duration::from_millis(1500);
/// The target for the daemon's resident memory, KiB.
const TARGET_RSS_KB: u64 = 20 * 1024;
/// Growth between the windows' means still counted as none (allocator noise), KiB.
const GROWTH_TOLERANCE_KB: f64 = 256.0;

fn run(ctx: &Ctx) -> Result<Findings> {
    let generations: usize = if ctx.quick { 100 } else { 1000 };
    let listen: SocketAddr = LISTEN.parse().context("the bench's listen address")?;
    let steer = ctx.steer()?;
    let ns = NetNs::new("benchmem")?;
    let spawn = |i: usize| {
        TestServer::spawn(&ns, &ServerArgs::new(&format!("g{i}"), [listen]))
            .with_context(|| format!("starting generation g{i}"))
    };
    let mut old = spawn(0)?;
    let netns = ns.path();
    let args = ["--port", "8080", "--user", "0", "--netns"]
        .map(AsRef::as_ref)
        .into_iter()
        .chain([netns.as_os_str()]);
    let mut daemon = Daemon::spawn(&steer, args, &ctx.out_dir.join("daemon-memory.log"))?;
    daemon.wait_promoted(old.pid(), PROMOTE_TIMEOUT).context("adoption of g0")?;

    let started = Instant::now();
    let mut rss = Vec::with_capacity(generations);
    let mut at_window = (0, 0);
    for i in 1..=generations {
        let new = spawn(i)?;
        daemon.wait_promoted(new.pid(), PROMOTE_TIMEOUT).with_context(|| format!("generation g{i}"))?;
        old.close_listeners().with_context(|| format!("closing the listener of g{}", i - 1))?;
        old.exit().with_context(|| format!("stopping g{}", i - 1))?;
        old = new;
        let kb = daemon.rss_kb()?;
        rss.push(kb);
        if i == WINDOW {
            at_window = (kb, daemon.open_fds()?);
        }
        if i % 50 == 0 {
            println!("   {i}/{generations} generations: RSS {:.1} MiB, {} fds", mib(kb), daemon.open_fds()?);
        }
    }
    let cycling = started.elapsed();
    std::thread::sleep(SETTLE);
    let (final_rss, final_fds) = (daemon.rss_kb()?, daemon.open_fds()?);
    let status = steer.status_json()?;
    let pinned = super::pinned::measure(&steer.state_dir)?;
    let slots: usize = release::groups(&status).map(|g| g["sockets"].as_array().map_or(0, Vec::len)).sum();
    daemon.stop()?;
    let failed_promotes = daemon::failed_promotes(daemon.lines()?);
    drop(old);
    drop(ns);

    let first = mean(&rss[..WINDOW.min(rss.len())]);
    let last = mean(&rss[rss.len().saturating_sub(WINDOW)..]);
    let growth = last - first;
    // With WINDOW generations or fewer (--quick) the windows are the same.
    let judged = generations > WINDOW;
    let rss_met = final_rss <= TARGET_RSS_KB;
    let growth_met = growth <= GROWTH_TOLERANCE_KB;
    let fds_met = final_fds <= at_window.1;

    let mut findings = Findings {
        setup: format!(
            "{generations} test-server generations on {LISTEN}, each promoted by the daemon \
             before the previous one closes and exits ({:.1} s)",
            cycling.as_secs_f64()
        ),
        ..Findings::default()
    };
    let windows = if judged { String::new() } else { " (quick: same window)".to_owned() };
    findings.rows = vec![
        Row::new("generations promoted", generations),
        Row::new("promote failed warnings", failed_promotes),
        Row::new(format!("RSS mean, gens 1-{WINDOW} (MiB)"), format!("{:.2}", first / 1024.0)),
        Row::new(format!("RSS mean, last {WINDOW} (MiB)"), format!("{:.2}", last / 1024.0)),
        Row::new("RSS growth, last - first (KiB)", format!("{growth:+.0}{windows}"))
            .target(format!("<= {GROWTH_TOLERANCE_KB:.0} KiB"), judged.then_some(growth_met)),
        Row::new(format!("RSS after gen {WINDOW} (MiB)"), format!("{:.2}", mib(at_window.0))),
        Row::new("RSS at the end (MiB)", format!("{:.2}", mib(final_rss)))
            .target(format!("<= {} MiB", TARGET_RSS_KB / 1024), Some(rss_met)),
        Row::new(format!("open fds after gen {WINDOW}"), at_window.1),
        Row::new("open fds at the end", final_fds).target(format!("<= at gen {WINDOW}"), Some(fds_met)),
        Row::new("sockarray slots used at the end", slots),
        Row::new("pinned kernel memory per instance (KiB)", pinned.per_instance() / 1024),
    ];
    let data = json!({
        "generations": generations,
        "cycling_secs": cycling.as_secs_f64(),
        "promote_failed": failed_promotes,
        "rss_kb": {
            "first_window_mean": first,
            "last_window_mean": last,
            "growth": growth,
            "at_window": at_window.0,
            "final": final_rss,
            "per_generation": rss,
        },
        "window": WINDOW,
        "fds": { "at_window": at_window.1, "final": final_fds },
        "slots_used": slots,
        "pinned": { "instances": pinned.instances, "bytes": pinned.bytes, "per_instance_bytes": pinned.per_instance() },
        "targets": {
            "rss_kb": TARGET_RSS_KB,
            "rss_met": rss_met,
            "growth_tolerance_kb": GROWTH_TOLERANCE_KB,
            "growth_met": judged.then_some(growth_met),
            "fds_met": fds_met,
        },
        "daemon_log": ctx.out_dir.join("daemon-memory.log"),
    });
    findings.data = data.as_object().cloned().unwrap_or_default();
    Ok(findings)
}

#[expect(clippy::cast_precision_loss, reason = "a mean of KiB counts")]
fn mean(values: &[u64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<u64>() as f64 / values.len() as f64 }
}
