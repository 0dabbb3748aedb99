//! `bench --soak MINUTES`: HAProxy (`-D`, reloaded with `-sf`) ten times a second under
//! load for MINUTES, with `steer daemon --comm haproxy` promoting every new process.
//! Sampled after a warm-up, every minute, and at the end: failed requests, the daemon's
//! RSS, descriptors and the slots in use, the instances, and the kernel memory the state
//! pins. The target is 0 failed and no growth between the first sample and the last.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use steer_harness::{
    haproxy::{Haproxy, Mode as HaproxyMode},
    load::{self, LoadConfig, LoadHandle, Protocol},
    netns::NetNs,
};

use super::{Ctx, Findings, Row, Section, daemon::Daemon, pinned};
use crate::{
    release::{self, Steer},
    util::mib,
};

pub const SECTION: Section =
    Section { key: "soak", title: "soak: HAProxy reloaded 10/s with the daemon", run };

const PORT: u16 = 8080;
/// Between the starts of two reloads.
const INTERVAL: Duration = Duration::from_millis(100);
const CONCURRENCY: usize = 20;
/// The first sample, once HAProxy's first old processes have come and gone.
const WARM_UP: Duration = Duration::from_secs(20);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// After the last reload: more than the daemon's slot upkeep period (1 s).
const SETTLE: Duration = Duration::from_secs(2);
/// Old processes stop 10 s after a reload at the latest; `grace` as docs/haproxy.md says.
const GLOBAL: &[&str] = &["hard-stop-after 10s", "grace 100ms"];
/// RSS growth between the first sample and the last still counted as none, KiB.
const RSS_TOLERANCE_KB: u64 = 512;

/// One look at everything that must not grow.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    requests: u64,
    failed: u64,
    reloads: u32,
    rss_kb: u64,
    fds: usize,
    slots: usize,
    instances: usize,
    pinned_bytes: u64,
}

impl Sample {
    fn take(secs: f64, running: &LoadHandle, reloads: u32, daemon: &Daemon, steer: &Steer) -> Result<Sample> {
        let load = running.snapshot();
        let status = steer.status_json()?;
        let slots = release::groups(&status).map(|g| g["sockets"].as_array().map_or(0, Vec::len)).sum();
        let pinned = pinned::measure(&steer.state_dir)?;
        Ok(Sample {
            secs,
            requests: load.requests,
            failed: load.failed(),
            reloads,
            rss_kb: daemon.rss_kb()?,
            fds: daemon.open_fds()?,
            slots,
            instances: pinned.instances,
            pinned_bytes: pinned.bytes,
        })
    }

    fn line(&self) -> String {
        format!(
            "{:.0} s: {} requests, {} failed, {} reloads; daemon RSS {:.2} MiB, {} fds; {} slots, {} instance(s), pinned {} KiB",
            self.secs,
            self.requests,
            self.failed,
            self.reloads,
            mib(self.rss_kb),
            self.fds,
            self.slots,
            self.instances,
            self.pinned_bytes / 1024
        )
    }

    fn json(&self) -> Value {
        json!({
            "secs": self.secs, "requests": self.requests, "failed": self.failed, "reloads": self.reloads,
            "rss_kb": self.rss_kb, "fds": self.fds, "slots": self.slots, "instances": self.instances,
            "pinned_bytes": self.pinned_bytes,
        })
    }
}

fn run(ctx: &Ctx) -> Result<Findings> {
    let duration = Duration::from_secs(ctx.soak_minutes.max(1) * 60);
    let ns = NetNs::new("soak")?;
    let dir = ctx.haproxy_dir("soak")?;
    let mut hap =
        Haproxy::start_with(&ns, &dir, HaproxyMode::Daemon, PORT, GLOBAL).context("starting HAProxy")?;
    let steer = ctx.steer()?;
    let netns = ns.path();
    let args = ["--comm", "haproxy", "--user", "0", "--netns"]
        .map(AsRef::as_ref)
        .into_iter()
        .chain([netns.as_os_str()]);
    let log = ctx.out_dir.join("daemon-soak.log");
    let mut daemon = Daemon::spawn(&steer, args, &log)?;

    let mut cfg = LoadConfig::new(([127, 0, 0, 1], PORT).into());
    cfg.protocol = Protocol::Http;
    cfg.concurrency = CONCURRENCY;
    cfg.max_duration = duration + SETTLE + Duration::from_secs(60);
    cfg.netns = Some(ns.path());
    let running = load::start(cfg).context("starting the load")?;
    let started = Instant::now();
    let (mut reloads, mut reload_errors) = (0_u32, Vec::new());
    let mut samples = Vec::new();
    let mut next_sample = started + WARM_UP;
    let mut due = started;
    while started.elapsed() < duration {
        if Instant::now() >= next_sample {
            let sample = Sample::take(started.elapsed().as_secs_f64(), &running, reloads, &daemon, &steer)?;
            println!("   {}", sample.line());
            samples.push(sample);
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        due = Instant::now() + INTERVAL;
        match hap.reload() {
            Ok(_) => reloads += 1,
            Err(err) if reload_errors.len() < 5 => reload_errors.push(format!("{err:#}")),
            Err(_) => {}
        }
    }
    std::thread::sleep(SETTLE);
    let last = Sample::take(started.elapsed().as_secs_f64(), &running, reloads, &daemon, &steer)?;
    println!("   {}", last.line());
    let report = running.stop();
    daemon.stop()?;
    let failed_promotes = super::daemon::failed_promotes(daemon.lines()?);
    drop(hap);
    drop(ns);

    let first = samples.first().copied().unwrap_or(last);
    samples.push(last);
    let rss_growth = i128::from(last.rss_kb) - i128::from(first.rss_kb);
    let grew = last.fds > first.fds
        || last.slots > slots_ceiling(&first)
        || last.instances > first.instances
        || last.pinned_bytes > first.pinned_bytes
        || rss_growth > i128::from(RSS_TOLERANCE_KB);
    let mut findings = Findings {
        setup: format!(
            "{} for {} min: HAProxy -D reloaded with -sf every {} ms, {CONCURRENCY} closed-loop HTTP \
             clients (a new connection per request), `steer daemon --comm haproxy`; samples after {} s, \
             every {} s, and at the end",
            super::haproxy_version()?,
            ctx.soak_minutes,
            INTERVAL.as_millis(),
            WARM_UP.as_secs(),
            SAMPLE_EVERY.as_secs()
        ),
        ..Findings::default()
    };
    let pair = |f: &dyn Fn(&Sample) -> String| format!("{} -> {}", f(&first), f(&last));
    findings.rows = vec![
        Row::new("failed / requests", format!("{} / {}", report.failed(), report.requests))
            .target("0", Some(report.failed() == 0)),
        Row::new("reloads", reloads),
        Row::new("promote failed warnings", failed_promotes),
        Row::new("daemon RSS (MiB), first -> last sample", pair(&|s| format!("{:.2}", mib(s.rss_kb))))
            .target(
                format!("growth <= {RSS_TOLERANCE_KB} KiB"),
                Some(rss_growth <= i128::from(RSS_TOLERANCE_KB)),
            ),
        Row::new("daemon fds", pair(&|s| s.fds.to_string())).target("no growth", Some(last.fds <= first.fds)),
        Row::new("sockarray slots used", pair(&|s| s.slots.to_string()))
            .target("<= active + previous", Some(last.slots <= slots_ceiling(&first))),
        Row::new("instances", pair(&|s| s.instances.to_string()))
            .target("no growth", Some(last.instances <= first.instances)),
        Row::new("pinned kernel memory (KiB)", pair(&|s| (s.pinned_bytes / 1024).to_string()))
            .target("no growth", Some(last.pinned_bytes <= first.pinned_bytes)),
    ];
    if report.failed() > 0 || grew {
        findings.failures.push(format!(
            "soak: {} failed of {} requests; first sample {first:?}, last {last:?}; first errors {:?}",
            report.failed(),
            report.requests,
            report.first_errors
        ));
    }
    let data = json!({
        "minutes": ctx.soak_minutes,
        "load": report,
        "failed": report.failed(),
        "reloads": reloads,
        "reload_errors": reload_errors,
        "promote_failed": failed_promotes,
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "daemon_log": log,
    });
    findings.data = data.as_object().cloned().unwrap_or_default();
    Ok(findings)
}

/// Slots that count as no growth: the active and the previous generation's one socket
/// each (a sample may fall on either side of a promotion), or what the first sample saw.
fn slots_ceiling(first: &Sample) -> usize {
    first.slots.max(2)
}
