//! Section "promote speed": how long `steer promote` takes, from spawning the process to
//! reaping it, with no load. Two test-server generations listen on the same ports and are
//! promoted in turn (A, B, A, ...), once for one port and once for 100 ports, each case
//! with a fresh state directory. The first promote of a case loads the program and creates
//! the pinned state: it is reported on its own and left out of the percentiles.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use serde_json::json;
use steer_harness::{
    netns::NetNs,
    server::{ServerArgs, TestServer},
};

use super::{Ctx, Findings, Row, Section, Summary, cli};
use crate::{
    release,
    util::{mib, ms},
};

pub const SECTION: Section = Section { key: "promote", title: "steer promote wall time", run };

/// The one-port case's port.
const ONE_PORT: u16 = 8080;
/// The many-port case: its first port and how many.
const MANY_PORTS: (u16, u16) = (9000, 100);
/// Timed promotes per case after the first: full, quick.
const RUNS: (usize, usize) = (50, 10);

/// One case's timings.
struct Case {
    ports: usize,
    /// The first promote, which creates the state.
    first: cli::Run,
    /// Every later promote, microseconds.
    walls_us: Vec<u64>,
    /// The largest peak RSS of the later promotes, KiB.
    max_rss_kb: u64,
    /// Groups in `steer status` at the end.
    groups: usize,
}

fn run(ctx: &Ctx) -> Result<Findings> {
    let runs = if ctx.quick { RUNS.1 } else { RUNS.0 };
    let ns = NetNs::new("benchprom")?;
    let one = case(ctx, &ns, &[ONE_PORT], runs).context("the one-port case")?;
    let (first, count) = MANY_PORTS;
    let ports: Vec<u16> = (first..first + count).collect();
    let many = case(ctx, &ns, &ports, runs).context("the many-port case")?;
    drop(ns);

    let mut findings = Findings {
        setup: format!(
            "two test-server generations on the same ports, promoted in turn with no load: \
             {runs} timed promotes per case after a first one that creates the state"
        ),
        ..Findings::default()
    };
    let mut data = serde_json::Map::new();
    for c in [&one, &many] {
        let s = Summary::of(&c.walls_us);
        let label = if c.ports == 1 { "1 port".to_owned() } else { format!("{} ports", c.ports) };
        findings.rows.extend([
            Row::new(format!("{label}: first promote, creates state (ms)"), c.first.ms()),
            Row::new(format!("{label}: promote p50 (ms)"), format!("{:.1}", ms(s.p50))),
            Row::new(format!("{label}: promote p99 (ms)"), format!("{:.1}", ms(s.p99))),
            Row::new(format!("{label}: peak RSS of steer (MiB)"), format!("{:.1}", mib(c.max_rss_kb))),
        ]);
        if c.groups != c.ports {
            findings.failures.push(format!("{label}: status shows {} groups, not {}", c.groups, c.ports));
        }
        let key = if c.ports == 1 { "one_port" } else { "many_ports" };
        data.insert(
            key.to_owned(),
            json!({
                "ports": c.ports,
                "first_us": c.first.wall_us(),
                "first_max_rss_kb": c.first.max_rss_kb,
                "wall_us": { "p50": s.p50, "p99": s.p99, "max": s.max, "all": c.walls_us },
                "max_rss_kb": c.max_rss_kb,
                "groups": c.groups,
            }),
        );
    }
    data.insert("runs".to_owned(), json!(runs));
    findings.data = data;
    Ok(findings)
}

/// Generations A and B on `ports`; promotes A (the first), then B, A, ... `runs` times.
fn case(ctx: &Ctx, ns: &NetNs, ports: &[u16], runs: usize) -> Result<Case> {
    let steer = ctx.steer()?;
    let listen: Vec<SocketAddr> = ports.iter().map(|&p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))).collect();
    let spawn = |name: &str| {
        TestServer::spawn(ns, &ServerArgs::new(name, listen.iter().copied()))
            .with_context(|| format!("starting generation {name}"))
    };
    let generations = [spawn("a")?, spawn("b")?];
    let promote = |server: &TestServer| cli::timed(&steer, ["promote", &server.pid().to_string()]);
    let first = promote(&generations[0])?;
    let mut walls_us = Vec::with_capacity(runs);
    let mut max_rss_kb = 0;
    for i in 1..=runs {
        let run = promote(&generations[i % 2]).with_context(|| format!("promote {i}"))?;
        walls_us.push(run.wall_us());
        max_rss_kb = max_rss_kb.max(run.max_rss_kb);
    }
    let groups = release::groups(&steer.status_json()?).count();
    let s = Summary::of(&walls_us);
    println!(
        "   {} port(s): first {:.1} ms, then p50 {:.1} ms, p99 {:.1} ms over {runs}",
        ports.len(),
        ms(first.wall_us()),
        ms(s.p50),
        ms(s.p99)
    );
    Ok(Case { ports: ports.len(), first, walls_us, max_rss_kb, groups })
}
