//! Section "steering overhead": what the reuseport program costs a server that is not
//! reloading. HAProxy 2.6 in daemon mode answers every request itself; 20 closed-loop HTTP
//! clients open one connection per request, in alternating rounds with the program
//! attached (`steer promote PID`) and detached (`steer detach`), the order swapped every
//! round so that a drift of the machine hits both sides alike. The figure is the median of
//! the per-round ratios of the new-connection rates, attached over detached; the ratio of
//! the totals is reported beside it.
//!
//! The program's own cost per run comes from the kernel's run-time statistics: with
//! `kernel.bpf_stats_enabled=1` (only during a phase of its own, since the accounting
//! itself costs time in the attached rounds; the previous value is restored), the growth
//! of `run_time_ns / run_count` from `steer status --json`. For scale, the same figure
//! for a near-empty program under the same accounting: a `steer daemon`'s tracepoint
//! program, which returns at once for nearly every TCP state change the load makes. In
//! this VM (kvm-clock) it reads about 250 ns per run, against about 950 ns for the
//! steering program. (It read 1-2 us while it still wrote a ring-buffer record, and
//! woke the daemon, for every accepted connection.)
//!
//! Hard checks: the program ran in every attached round (the counters grew) and never in
//! a detached one.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use steer_harness::{
    haproxy::{Haproxy, Mode},
    load::{self, LoadConfig, LoadReport, Protocol},
    netns::NetNs,
};

use super::{Ctx, Findings, Row, Section, cli, daemon::Daemon};
use crate::release::Steer;

pub const SECTION: Section =
    Section { key: "overhead", title: "steering overhead: HAProxy connection rate and program cost", run };

/// HAProxy's frontend port, on 127.0.0.1 inside the section's namespace.
const PORT: u16 = 8080;
/// Load workers, each with one request (one connection) in flight.
const CONCURRENCY: usize = 20;
/// Rounds, each one phase attached and one detached: full, quick.
const ROUNDS: (usize, usize) = (6, 2);
/// Length of one phase: full, quick.
const PHASE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_millis(1500));
/// Load before the first round, not counted (connection tables, caches, CPU frequency).
const WARM_UP: Duration = Duration::from_secs(1);
/// Length of the phase that measures the program's cost per run: full, quick.
const COST_PHASE: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(1));
/// The target for the rate ratio, attached over detached.
const TARGET_RATIO: f64 = 0.98;
/// The port the cost phase's daemon watches: nothing listens there.
const FLOOR_PORT: &str = "9";
/// The target for the program's mean cost per run, nanoseconds.
const TARGET_NS_PER_RUN: f64 = 100.0;
/// The kernel's switch for per-program run-time statistics.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One phase of load, with the program attached or not.
struct Phase {
    attached: bool,
    load: LoadReport,
    /// Growth of the program's counters over the phase, every counter summed.
    counted: u64,
}

fn run(ctx: &Ctx) -> Result<Findings> {
    let (rounds, phase_len, cost_len) =
        if ctx.quick { (ROUNDS.1, PHASE.1, COST_PHASE.1) } else { (ROUNDS.0, PHASE.0, COST_PHASE.0) };
    let dir = ctx.haproxy_dir("overhead")?;
    let steer = ctx.steer()?;
    let ns = NetNs::new("benchovh")?;
    let haproxy = Haproxy::start(&ns, &dir, Mode::Daemon, PORT).context("starting HAProxy")?;
    let pid = haproxy.pid().to_string();
    let mut bench = Bench { steer: &steer, ns: &ns, pid: &pid, attached: false };

    bench.load(WARM_UP).context("the warm-up")?;
    let mut phases = Vec::new();
    for round in 1..=rounds {
        // A, D; D, A; A, D; ...: each side goes first in half the rounds.
        let order = if round % 2 == 1 { [true, false] } else { [false, true] };
        for attached in order {
            phases.push(bench.phase(attached, phase_len).with_context(|| format!("round {round}"))?);
        }
        let [a, d] = round_pair(&phases[phases.len() - 2..]);
        println!(
            "   round {round}/{rounds}: attached {:.0}/s, detached {:.0}/s, ratio {:.3}",
            a.load.rps,
            d.load.rps,
            a.load.rps / d.load.rps
        );
    }
    let cost = bench
        .cost(cost_len, &ctx.out_dir.join("daemon-overhead.log"))
        .context("measuring the program's cost per run")?;
    drop(haproxy);
    drop(ns);
    Ok(findings(ctx, rounds, phase_len, &phases, &cost))
}

/// The section's world: the state, the namespace, HAProxy's pid, and whether it is steered.
struct Bench<'a> {
    steer: &'a Steer,
    ns: &'a NetNs,
    pid: &'a str,
    attached: bool,
}

impl Bench<'_> {
    /// Attaches (`steer promote PID`) or detaches (`steer detach`) unless already so.
    fn set(&mut self, attached: bool) -> Result<()> {
        if self.attached != attached {
            let args: &[&str] = if attached { &["promote", self.pid] } else { &["detach"] };
            cli::timed(self.steer, args)?;
            self.attached = attached;
        }
        Ok(())
    }

    /// Closed-loop HTTP load for `length`.
    fn load(&self, length: Duration) -> Result<LoadReport> {
        let mut cfg = LoadConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)));
        cfg.protocol = Protocol::Http;
        cfg.concurrency = CONCURRENCY;
        cfg.max_duration = length;
        cfg.netns = Some(self.ns.path());
        load::run(cfg).context("running the load")
    }

    fn phase(&mut self, attached: bool, length: Duration) -> Result<Phase> {
        self.set(attached)?;
        let before = cli::all_counters(&self.steer.status_json()?);
        let load = self.load(length)?;
        let counted = cli::all_counters(&self.steer.status_json()?).saturating_sub(before);
        Ok(Phase { attached, load, counted })
    }

    /// An attached phase with the kernel's run-time statistics on; returns the growth of
    /// `(run_time_ns, run_count)` for the steering program and, for scale, for the
    /// daemon's near-empty tracepoint program (it returns at once for every state change
    /// but listen and close, and the load makes thousands a second); then the load.
    fn cost(&mut self, length: Duration, log: &Path) -> Result<Cost> {
        self.set(true)?;
        // Watching a port nothing uses: the daemon only runs its tracepoint program.
        let netns = self.ns.path();
        let args = ["--port", FLOOR_PORT, "--user", "0", "--netns"]
            .map(AsRef::as_ref)
            .into_iter()
            .chain([netns.as_os_str()]);
        let mut daemon = Daemon::spawn(self.steer, args, log)?;
        let _stats = StatsOn::enable()?;
        let before = cli::program_stats(&self.steer.status_json()?);
        let floor_before = daemon.tracepoint_stats()?;
        let load = self.load(length)?;
        let after = cli::program_stats(&self.steer.status_json()?);
        let floor_after = daemon.tracepoint_stats()?;
        daemon.stop()?;
        let growth = before.zip(after).map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)));
        let floor =
            (floor_after.0.saturating_sub(floor_before.0), floor_after.1.saturating_sub(floor_before.1));
        Ok(Cost { growth, floor: Some(floor).filter(|f| f.1 > 0), load })
    }
}

/// What the cost phase measured.
struct Cost {
    /// Growth of the steering program's `(run_time_ns, run_count)`.
    growth: Option<(u64, u64)>,
    /// The same for the daemon's tracepoint program (for scale).
    floor: Option<(u64, u64)>,
    load: LoadReport,
}

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is written back on drop.
pub(super) struct StatsOn {
    previous: String,
}

impl StatsOn {
    pub(super) fn enable() -> Result<StatsOn> {
        let previous =
            fs::read_to_string(BPF_STATS).with_context(|| format!("could not read {BPF_STATS}"))?;
        write_sysctl("1")?;
        Ok(StatsOn { previous: previous.trim().to_owned() })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(err) = write_sysctl(&self.previous) {
            eprintln!("warning: {err:#}; set it back by hand (sysctl kernel.bpf_stats_enabled=0)");
        }
    }
}

fn write_sysctl(value: &str) -> Result<()> {
    fs::write(Path::new(BPF_STATS), value).with_context(|| format!("could not write {value} to {BPF_STATS}"))
}

/// The attached and the detached phase of one round, in that order.
fn round_pair(round: &[Phase]) -> [&Phase; 2] {
    if round[0].attached { [&round[0], &round[1]] } else { [&round[1], &round[0]] }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

#[expect(clippy::cast_precision_loss, reason = "counts of requests and nanoseconds, as rates")]
fn findings(ctx: &Ctx, rounds: usize, phase_len: Duration, phases: &[Phase], cost: &Cost) -> Findings {
    let pairs: Vec<[&Phase; 2]> = phases.chunks(2).map(round_pair).collect();
    let ratios: Vec<f64> = pairs.iter().map(|[a, d]| a.load.rps / d.load.rps).collect();
    let side = |attached: bool| phases.iter().filter(move |p| p.attached == attached);
    let rate = |attached: bool| {
        let (ok, secs) =
            side(attached).fold((0, 0.0), |(ok, secs), p| (ok + p.load.ok, secs + p.load.elapsed_secs));
        if secs > 0.0 { ok as f64 / secs } else { 0.0 }
    };
    let rates = |attached: bool| side(attached).map(|p| p.load.rps).collect::<Vec<f64>>();
    let (ratio, ratio_total) = (median(&ratios), rate(true) / rate(false));
    let failed: u64 = phases.iter().map(|p| p.load.failed()).sum();
    let attached_ok: u64 = side(true).map(|p| p.load.ok).sum();
    let attached_counted: u64 = side(true).map(|p| p.counted).sum();
    let (growth, cost_load) = (&cost.growth, &cost.load);
    let per_run = |g: &(u64, u64)| (g.1 > 0).then(|| g.0 as f64 / g.1 as f64);
    let ns_per_run = growth.as_ref().and_then(per_run);
    let scale_ns = cost.floor.as_ref().and_then(per_run);

    let mut findings = Findings {
        setup: format!(
            "HAProxy 2.6 in daemon mode answering itself; {rounds} rounds of {:.1} s attached and \
             {:.1} s detached (order swapped each round) under {CONCURRENCY} closed-loop HTTP \
             clients, one connection per request; then {:.1} s attached with bpf_stats_enabled=1",
            phase_len.as_secs_f64(),
            phase_len.as_secs_f64(),
            cost_load.elapsed_secs
        ),
        ..Findings::default()
    };
    findings.rows = vec![
        Row::new("rate attached, median of rounds (conn/s)", format!("{:.0}", median(&rates(true)))),
        Row::new("rate detached, median of rounds (conn/s)", format!("{:.0}", median(&rates(false)))),
        Row::new("ratio attached/detached, median of rounds", format!("{ratio:.3}"))
            .target(format!(">= {TARGET_RATIO}"), Some(ratio >= TARGET_RATIO)),
        Row::new("ratio attached/detached, totals", format!("{ratio_total:.3}")),
        Row::new("failed requests", failed).target("0", Some(failed == 0)),
        Row::new("program counts / requests, attached", format!("{attached_counted} / {attached_ok}")),
        Row::new(
            "program cost per run (ns)",
            ns_per_run.map_or_else(|| "not measured".to_owned(), |ns| format!("{ns:.1}")),
        )
        .target(format!("<= {TARGET_NS_PER_RUN:.0} ns"), ns_per_run.map(|ns| ns <= TARGET_NS_PER_RUN)),
        Row::new("program runs in the cost phase", growth.map_or(0, |g| g.1)),
        Row::new(
            "for scale: a near-empty tracepoint program, same accounting (ns)",
            scale_ns.map_or_else(|| "not measured".to_owned(), |ns| format!("{ns:.1}")),
        ),
    ];
    for (index, p) in phases.iter().enumerate() {
        let round = index / 2 + 1;
        if p.attached && p.counted == 0 {
            findings.failures.push(format!(
                "round {round}: the program's counters did not grow while attached ({} requests)",
                p.load.ok
            ));
        }
        if !p.attached && p.counted > 0 {
            findings
                .failures
                .push(format!("round {round}: the program's counters grew by {} while detached", p.counted));
        }
        if p.load.ok == 0 {
            findings.failures.push(format!("round {round}: no request succeeded: {:?}", p.load.first_errors));
        }
    }
    if growth.is_some_and(|g| g.1 == 0) {
        findings.failures.push("with bpf_stats_enabled=1 the program's run_count did not grow".to_owned());
    }
    let phase_json = |p: &Phase| json!({ "rps": p.load.rps, "counted": p.counted, "load": p.load });
    let rounds_json: Vec<Value> = pairs
        .iter()
        .zip(&ratios)
        .map(
            |([a, d], ratio)| json!({ "attached": phase_json(a), "detached": phase_json(d), "ratio": ratio }),
        )
        .collect();
    let data = json!({
        "rounds": rounds_json,
        "phase_secs": phase_len.as_secs_f64(),
        "concurrency": CONCURRENCY,
        "ratio_median_of_rounds": ratio,
        "ratio_totals": ratio_total,
        "rate_attached_total": rate(true),
        "rate_detached_total": rate(false),
        "failed_requests": failed,
        "cost": {
            "run_time_ns": growth.map(|g| g.0),
            "run_count": growth.map(|g| g.1),
            "ns_per_run": ns_per_run,
            "for_scale_tracepoint": {
                "run_time_ns": cost.floor.map(|g| g.0),
                "run_count": cost.floor.map(|g| g.1),
                "ns_per_run": scale_ns,
            },
            "load": cost_load,
        },
        "targets": {
            "ratio": TARGET_RATIO,
            "ratio_met": ratio >= TARGET_RATIO,
            "ns_per_run": TARGET_NS_PER_RUN,
            "ns_per_run_met": ns_per_run.map(|ns| ns <= TARGET_NS_PER_RUN),
        },
        "haproxy_log": ctx.out_dir.join("haproxy-overhead").join("haproxy.log"),
    });
    findings.data = data.as_object().cloned().unwrap_or_default();
    findings
}
