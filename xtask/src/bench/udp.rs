//! Section "UDP": unbound (Debian's package, `so-reuseport: yes`, a local zone) under
//! dnsperf. Two figures:
//!
//! - Lost queries over 20 handovers at a fixed query rate, without steer (start the new
//!   generation, wait until it has bound the port, SIGTERM the old one: what the old
//!   socket held is dropped) beside `steer reload` (promote, release the old flows, wait
//!   until the old receive queues are empty, then SIGTERM). The harness's
//!   `dns_handover` does both, as the end-to-end test `udp::unbound::` does.
//! - dnsperf's maximum rate (no `-Q`) with the steer program attached and without, in
//!   alternating rounds, the order swapped every round; the figure is the median of the
//!   per-round ratios, attached over detached (target >= 0.97).
//!
//! Hard check: with steer, no query lost.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::json;
use steer_harness::{
    dns_handover::{self, HandoverReport, HandoverRun, Mode, steer_cmd, steer_ok},
    dnsperf::{self, DnsperfConfig, write_query_file},
    netns::NetNs,
    unbound::{Unbound, UnboundConfig},
};

use super::{Ctx, Findings, Row, Section};

pub const SECTION: Section =
    Section { key: "udp", title: "UDP: unbound handovers under dnsperf, and rate", run };

const PORT: u16 = 5353;
/// Pause after each handover: full, quick.
const GAP: (Duration, Duration) = (Duration::from_millis(300), Duration::from_millis(100));
/// Maximum-rate rounds, each one phase attached and one without: full, quick.
const ROUNDS: (usize, usize) = (6, 2);
/// Length of one maximum-rate phase: full, quick.
const PHASE: (Duration, Duration) = (Duration::from_secs(4), Duration::from_millis(1500));
const TARGET_RATIO: f64 = 0.97;
/// dnsperf before the first round, not counted (caches, CPU frequency).
const WARM_UP: Duration = Duration::from_secs(1);

fn run(ctx: &Ctx) -> Result<Findings> {
    let dir = ctx.out_dir.join("udp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let gap = if ctx.quick { GAP.1 } else { GAP.0 };
    let handovers = |mode: &Mode, tag: &str| -> Result<(HandoverRun, HandoverReport)> {
        let ns = NetNs::new(tag)?;
        let sub = dir.join(tag);
        std::fs::create_dir_all(&sub).with_context(|| format!("could not create {}", sub.display()))?;
        let run = HandoverRun { gap, ..HandoverRun::new(PORT, &sub) };
        let report = dns_handover::run(&ns, &run, mode)?;
        println!("   {tag}: {}", report.summary());
        Ok((run, report))
    };
    let (run, base) = handovers(&Mode::Unsteered, "udpbase").context("handovers without steer")?;
    let with = {
        let steer = ctx.steer()?;
        let mode = Mode::Steered { steer: steer.bin.clone(), state_dir: steer.state_dir.clone() };
        handovers(&mode, "udpsteer").context("handovers with steer reload")?.1
    };
    let rate = max_rate(ctx, &dir.join("rate")).context("dnsperf's maximum rate")?;

    let mut findings = Findings {
        setup: format!(
            "unbound 1 thread, {} handovers {} ms apart under dnsperf at {} q/s from {} source ports; \
             maximum rate: {} rounds of {:.1} s phases",
            run.handovers,
            gap.as_millis(),
            run.rate,
            run.clients,
            rate.rounds,
            rate.phase.as_secs_f64()
        ),
        ..Findings::default()
    };
    let lost = |r: &HandoverReport| format!("{} of {}", r.dnsperf.lost, r.dnsperf.sent);
    findings
        .rows
        .push(Row::new(format!("{} handovers: queries lost without steer", run.handovers), lost(&base)));
    findings.rows.push(
        Row::new(format!("{} handovers: queries lost with steer reload", run.handovers), lost(&with))
            .target("0", Some(with.dnsperf.lost == 0)),
    );
    findings.rows.push(Row::new("dnsperf maximum rate, no program (q/s)", format!("{:.0}", rate.detached)));
    let ratio = rate.median_ratio();
    findings.rows.push(
        Row::new("dnsperf maximum rate, program attached / not (median ratio)", format!("{ratio:.3}"))
            .target(format!(">= {TARGET_RATIO}"), Some(ratio >= TARGET_RATIO)),
    );
    if with.dnsperf.lost > 0 {
        findings.failures.push(format!("steer reload lost {} UDP queries", with.dnsperf.lost));
    }
    let figures = |r: &HandoverReport| {
        json!({
            "sent": r.dnsperf.sent, "completed": r.dnsperf.completed, "lost": r.dnsperf.lost,
            "interrupted": r.dnsperf.interrupted, "answered_by_generation": r.answered,
            "new_generation_answered": r.new_generation_answered, "handover_ms": r.handover_ms,
        })
    };
    findings.data.insert("handovers".to_owned(), json!(run.handovers));
    findings.data.insert("rate_qps".to_owned(), json!(run.rate));
    findings.data.insert("unsteered".to_owned(), figures(&base));
    findings.data.insert("steered".to_owned(), figures(&with));
    findings.data.insert(
        "max_rate".to_owned(),
        json!({ "detached_qps": rate.detached, "attached_qps": rate.attached, "ratios": rate.ratios }),
    );
    Ok(findings)
}

/// dnsperf's maximum rate, with and without the program.
struct Rate {
    rounds: usize,
    phase: Duration,
    /// Median over the phases without the program.
    detached: f64,
    /// Median over the attached phases.
    attached: f64,
    /// Per round, attached over detached.
    ratios: Vec<f64>,
}

impl Rate {
    fn median_ratio(&self) -> f64 {
        median(&self.ratios).unwrap_or(0.0)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn max_rate(ctx: &Ctx, dir: &Path) -> Result<Rate> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let (rounds, phase) = if ctx.quick { (ROUNDS.1, PHASE.1) } else { (ROUNDS.0, PHASE.0) };
    let ns = NetNs::new("udprate")?;
    let unbound = Unbound::spawn(&ns, UnboundConfig::new("rate", PORT, dir))?;
    let queries = dir.join("queries.txt");
    write_query_file(&queries)?;
    let target = SocketAddr::from(([127, 0, 0, 1], PORT));
    let config = DnsperfConfig::new(target, None, phase, &queries);
    dnsperf::run(&ns, &DnsperfConfig::new(target, None, WARM_UP, &queries)).context("warming up")?;
    let measure = || dnsperf::run(&ns, &config).map(|r| r.queries_per_second);
    let steer = ctx.steer()?;
    let (mut detached, mut attached_qps, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut attached = false;
    for round in 0..rounds {
        // Promote attaches the program, detach removes it; each only when it changes
        // something (detach refuses when nothing is steered).
        let mut attach = |on: bool| -> Result<()> {
            if on == attached {
                return Ok(());
            }
            let args = if on {
                vec!["promote".to_owned(), unbound.pid().to_string()]
            } else {
                vec!["detach".to_owned()]
            };
            steer_ok(steer_cmd(&steer.bin, &steer.state_dir).args(&args))?;
            attached = on;
            Ok(())
        };
        let (mut with, mut without) = (0.0, 0.0);
        for on in if round % 2 == 0 { [true, false] } else { [false, true] } {
            attach(on)?;
            let qps = measure()?;
            if on { with = qps } else { without = qps }
        }
        println!("   round {round}: {with:.0} q/s attached, {without:.0} q/s not");
        attached_qps.push(with);
        detached.push(without);
        ratios.push(with / without);
    }
    unbound.stop().context("stopping unbound")?;
    Ok(Rate {
        rounds,
        phase,
        detached: median(&detached).unwrap_or(0.0),
        attached: median(&attached_qps).unwrap_or(0.0),
        ratios,
    })
}
