//! Section "scale": steer with many groups, and one group with many generations.
//!
//! Wide: two test-server processes, A and B, listen on the same 1,000 ports (100 in
//! `--quick`). `steer promote A` creates the state and every group, `steer promote B`
//! switches every group at once, and promoting B again finds it already active. Each one's
//! wall time and peak RSS (`ru_maxrss` from `wait4`); then `steer status --json` must show
//! one group per port, each active on B.
//!
//! Deep: 64 test-server generations (16 in `--quick`) on one port, started one after
//! another, each promoted at once, and all left running. After each promote a short burst
//! of requests must be answered by the just-promoted generation only (a hard check: the
//! kernel alone would spread them over every member). Then every generation but the newest
//! stops, oldest first. The slots a group uses: a promote keeps the active and the previous
//! generation and releases older ones; a closed socket's slot leaves the sockarray at once
//! but stays recorded until the next write, so the section then runs `steer promote
//! <newest>` again, as a user would, and checks one slot is left.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use steer_harness::{
    load::{self, LoadConfig},
    netns::NetNs,
    server::{ServerArgs, TestServer},
};

use super::{Ctx, Findings, Row, Section, Summary, cli};
use crate::{
    release,
    util::{mib, ms},
};

pub const SECTION: Section = Section { key: "scale", title: "scale: many groups, many generations", run };

/// The wide case's first port, and how many: full, quick.
const WIDE_PORTS: (u16, (u16, u16)) = (10_000, (1000, 100));
/// The deep case's port.
const DEEP_PORT: u16 = 8080;
/// Generations alive at once in the deep case: full, quick.
const GENERATIONS: (usize, usize) = (64, 16);
/// Requests in the burst after each promote.
const BURST: u64 = 200;
/// Load workers of a burst.
const BURST_CONCURRENCY: usize = 4;

fn run(ctx: &Ctx) -> Result<Findings> {
    let (first_port, (full, quick)) = WIDE_PORTS;
    let ports = if ctx.quick { quick } else { full };
    let generations = if ctx.quick { GENERATIONS.1 } else { GENERATIONS.0 };
    let ns = NetNs::new("benchscale")?;
    let mut findings = Findings {
        setup: format!(
            "wide: two test servers on the same {ports} ports, each promoted once; deep: {generations} generations \
             on one port, each promoted, {BURST} requests after each"
        ),
        ..Findings::default()
    };
    let wide = wide(ctx, &ns, first_port, ports, &mut findings).context("the wide case")?;
    let deep = deep(ctx, &ns, generations, &mut findings).context("the deep case")?;
    drop(ns);
    let data = json!({ "wide": wide, "deep": deep });
    findings.data = data.as_object().cloned().unwrap_or_default();
    Ok(findings)
}

/// Two servers on `count` ports from `first`: A promoted first (which also creates the
/// state), then B, which switches every group, then B again (already active).
fn wide(ctx: &Ctx, ns: &NetNs, first: u16, count: u16, findings: &mut Findings) -> Result<Value> {
    let steer = ctx.steer()?;
    let listen: Vec<SocketAddr> =
        (first..first + count).map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))).collect();
    let spawn = |name: &str| {
        TestServer::spawn(ns, &ServerArgs::new(name, listen.iter().copied()))
            .with_context(|| format!("starting server {name}"))
    };
    let (a, b) = (spawn("a")?, spawn("b")?);
    let promote = |server: &TestServer| cli::timed(&steer, ["promote", &server.pid().to_string()]);
    let created = promote(&a).context("promoting A")?;
    let switched = promote(&b).context("promoting B")?;
    let again = promote(&b).context("promoting B again")?;
    let status = steer.status_json()?;
    let groups = release::groups(&status).count();
    let on_b = release::groups(&status)
        .filter(|g| {
            let mut sockets = g["sockets"].as_array().into_iter().flatten();
            sockets.any(|s| s["role"] == "active" && s["pid"].as_u64() == Some(u64::from(b.pid())))
        })
        .count();
    let (slots, live) = cli::slots(&status, None);
    println!(
        "   wide: {count} ports: {:.1} ms creating, {:.1} ms switching; {groups} groups, {on_b} on B",
        ms(created.wall_us()),
        ms(switched.wall_us())
    );
    let n = usize::from(count);
    findings.rows.extend([
        Row::new(format!("wide: first promote of {count} ports, creates state (ms)"), created.ms()),
        Row::new(format!("wide: promote of {count} ports, switching them (ms)"), switched.ms()),
        Row::new(
            "wide: peak RSS of steer, first / switching (MiB)",
            format!("{:.1} / {:.1}", mib(created.max_rss_kb), mib(switched.max_rss_kb)),
        ),
        Row::new("wide: promote again, already active (ms)", again.ms()),
        Row::new("wide: groups in status, active on B", format!("{groups}, {on_b}"))
            .target(format!("{count}, {count}"), Some(groups == n && on_b == n)),
        Row::new("wide: slots, recorded / live", format!("{slots} / {live}")),
    ]);
    if groups != n || on_b != n || slots != 2 * n || live != slots {
        findings.failures.push(format!(
            "wide: status shows {groups} groups ({on_b} active on B) and {slots} slots ({live} live), \
             not {count} groups all on B and {} live slots",
            2 * n
        ));
    }
    Ok(json!({
        "ports": count,
        "first_us": created.wall_us(),
        "first_max_rss_kb": created.max_rss_kb,
        "switch_us": switched.wall_us(),
        "switch_max_rss_kb": switched.max_rss_kb,
        "again_us": again.wall_us(),
        "again_max_rss_kb": again.max_rss_kb,
        "groups": groups,
        "groups_on_b": on_b,
        "slots": slots,
        "slots_live": live,
    }))
}

/// `generations` servers on one port, each promoted and checked; then all but the newest
/// stop, and a promote of the newest reclaims the slots.
fn deep(ctx: &Ctx, ns: &NetNs, generations: usize, findings: &mut Findings) -> Result<Value> {
    let steer = ctx.steer()?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, DEEP_PORT));
    let mut servers: Vec<TestServer> = Vec::with_capacity(generations);
    let (mut walls_us, mut slots_after, mut misrouted, mut failed, mut answered) = (vec![], vec![], 0, 0, 0);
    for i in 0..generations {
        let name = format!("d{i}");
        let server = TestServer::spawn(ns, &ServerArgs::new(&name, [listen]))
            .with_context(|| format!("starting generation {name}"))?;
        let run = cli::timed(&steer, ["promote", &server.pid().to_string()])
            .with_context(|| format!("promoting {name}"))?;
        walls_us.push(run.wall_us());
        servers.push(server);
        let burst = burst(ns, listen).with_context(|| format!("the burst after promoting {name}"))?;
        let others: u64 = burst.by_generation.iter().filter(|(g, _)| **g != name).map(|(_, n)| n).sum();
        if others > 0 || burst.ok == 0 {
            findings.failures.push(format!(
                "deep: after promoting {name} (of {} alive), {others} of {} answers came from other \
                 generations: {:?}",
                i + 1,
                burst.ok,
                burst.by_generation
            ));
        }
        misrouted += others;
        failed += burst.failed();
        answered += burst.ok;
        slots_after.push(cli::slots(&steer.status_json()?, Some(DEEP_PORT)).0);
    }
    // The first promote also creates the state: it is left out, as in the promote section.
    let promoting = Summary::of(walls_us.get(1..).unwrap_or_default());
    println!(
        "   deep: {generations} generations promoted, p50 {:.1} ms; {misrouted} of {answered} answers misrouted",
        ms(promoting.p50)
    );

    let newest = servers.pop().context("at least one generation")?;
    let mut stopping = Vec::with_capacity(servers.len());
    for (i, mut server) in servers.into_iter().enumerate() {
        server.exit().with_context(|| format!("stopping d{i}"))?;
        stopping.push(cli::slots(&steer.status_json()?, Some(DEEP_PORT)));
    }
    let stopped = cli::slots(&steer.status_json()?, Some(DEEP_PORT));
    let trigger =
        cli::timed(&steer, ["promote", &newest.pid().to_string()]).context("promoting the newest again")?;
    let reclaimed = cli::slots(&steer.status_json()?, Some(DEEP_PORT));
    let last = burst(ns, listen).context("the burst after the stops")?;
    if last.ok == 0 || last.by_generation.keys().any(|g| g != newest.generation()) {
        findings.failures.push(format!("deep: after the stops, answers came from {:?}", last.by_generation));
    }
    drop(newest);
    if reclaimed.0 != 1 {
        findings.failures.push(format!(
            "deep: {} slots still recorded after the stops and a promote of the newest, not 1",
            reclaimed.0
        ));
    }

    let most = slots_after.iter().copied().max().unwrap_or(0);
    findings.rows.extend([
        Row::new("deep: generations alive in one group", generations),
        Row::new("deep: promote p50, the first left out (ms)", format!("{:.1}", ms(promoting.p50))),
        Row::new("deep: promote max, the first left out (ms)", format!("{:.1}", ms(promoting.max))),
        Row::new("deep: answers from another generation", format!("{misrouted} of {answered}"))
            .target("0", Some(misrouted == 0)),
        Row::new("deep: failed requests", failed).target("0", Some(failed == 0)),
        Row::new("deep: slots used after a promote, most", most),
        Row::new("deep: slots after the stops, recorded / live", format!("{} / {}", stopped.0, stopped.1)),
        Row::new("deep: slots after `steer promote <newest>`", reclaimed.0)
            .target("1", Some(reclaimed.0 == 1)),
    ]);
    let stopping: Vec<Value> =
        stopping.iter().map(|(used, live)| json!({ "recorded": used, "live": live })).collect();
    Ok(json!({
        "generations": generations,
        "promote_us": {
            "first_left_out": { "p50": promoting.p50, "p99": promoting.p99, "max": promoting.max },
            "all": walls_us,
        },
        "burst_requests": BURST,
        "answered": answered,
        "misrouted": misrouted,
        "failed_requests": failed,
        "slots_after_each_promote": slots_after,
        "slots_after_each_stop": stopping,
        "reclaim_promote_us": trigger.wall_us(),
        "slots_after_reclaim": { "recorded": reclaimed.0, "live": reclaimed.1 },
        "last_burst": last,
    }))
}

/// [`BURST`] requests (one connection each) to `target` in `ns`.
fn burst(ns: &NetNs, target: SocketAddr) -> Result<load::LoadReport> {
    let mut cfg = LoadConfig::new(target);
    cfg.concurrency = BURST_CONCURRENCY;
    cfg.max_requests = Some(BURST);
    cfg.netns = Some(ns.path());
    load::run(cfg)
}
