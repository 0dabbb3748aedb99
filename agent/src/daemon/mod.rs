//! `steer daemon`: the sidecar. It watches for new listening sockets of matching
//! processes and, under the `newest` policy, promotes the newest generation of
//! each group as soon as it listens. It only automates what the CLI does: all
//! state stays pinned, so stopping or killing the daemon changes nothing for
//! traffic, and a restarted daemon adopts what it finds.
//!
//! Layout: events → decisions → effects.
//! - [`source`]: where events come from ([`source::EventSource`]: the
//!   [`tracepoint`] watcher, or the [`poll`]er), and choosing one;
//! - [`core`]: the rules, pure: pending work per group, coalescing, retries,
//!   trigger attribution, the fork, close and newest-holder rules (its inputs in
//!   `event`, its outputs in `decision`, the fork watch list in `watched`), and
//!   the progressive canary's in [`canary`], the readiness gate's in [`gate`];
//! - [`world`]: what the core asks of the machine (`/proc`, listeners);
//! - [`steerer`]: the effects, through the CLI's promote code;
//! - [`prober`]: the readiness checks, on threads of their own;
//! - [`upkeep`]: slot upkeep on a thread of its own;
//! - [`filter`]: which processes the operator named, and how each is verified;
//! - [`limits`]: the caps on what the daemon pins for them;
//! - `service`: privileges, signals, metrics, scheduling, and wiring it up.
pub mod canary;
pub mod core;
mod decision;
mod event;
#[cfg(test)]
mod fake;
mod filter;
pub mod gate;
pub mod limits;
mod logging;
pub mod poll;
pub mod prober;
mod service;
pub mod source;
pub mod steerer;
mod tracepoint;
pub mod upkeep;
mod watched;
pub mod world;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub use core::{Event, Trigger};

pub use filter::{
    Exe, Filter, Mismatch, Named, NamedError, cgroup_matches, initial_user_namespace, resolve_user,
};
pub use limits::Limits;
pub use service::serve;
pub use source::Source;

use self::{
    core::{Action, Core, Decision, Done},
    logging::log,
    prober::Prober,
    source::EventSource,
    steerer::{Steerer, StepError},
    world::World,
};
use crate::metrics::{DaemonStats, EventCounts};

/// What to do when a new generation listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Promote the newest generation of each group as soon as it listens.
    Newest,
    /// Only re-attach the program to groups that formed again, and report.
    Manual,
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub filter: Filter,
    pub policy: Policy,
    pub ready_delay: Duration,
    pub source: Source,
    pub poll_interval: Duration,
    /// The niceness to run at (see [`service::serve`]).
    pub nice: i32,
    /// SCHED_FIFO priority of the event thread with a tracepoint source; 0: none.
    pub rt_priority: u8,
    /// The caps on instances, groups and generations.
    pub limits: Limits,
    /// `--canary PCT --canary-for DURATION`: each new generation is a canary first.
    pub canary: Option<canary::Plan>,
    /// `--udp-flows`, `--udp-flow-timeout`: the flow table's settings for UDP groups.
    pub udp: crate::policy::UdpSettings,
    /// `--ready-cmd`, `--ready-http`: each promotion waits until the new
    /// generation passes this gate, for at most `ready_timeout`.
    pub gate: Option<crate::ops::ready::Gate>,
    pub ready_timeout: Duration,
    /// `--no-migrate`: steer in select-only mode (`BPF_SK_REUSEPORT_SELECT`).
    pub no_migrate: bool,
}

/// A `--canary-for` duration: a whole number of seconds (`30s`), milliseconds
/// (`500ms`) or minutes (`2m`), more than zero and at most a day.
///
/// # Errors
/// A sentence saying what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(0));
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 && n > 0 && n.saturating_mul(scale) <= 86_400_000 => {
            Ok(Duration::from_millis(n * scale))
        }
        _ => Err(format!(
            "{text:?} is not a duration: give a whole number with ms, s or m (500ms, 30s, 2m), more than zero and at most a day"
        )),
    }
}

/// The event loop wakes at least this often, to see a stop and the upkeep's findings.
const WAKE_EVERY: Duration = Duration::from_millis(200);
/// ... and this often while a readiness check runs.
const CHECK_POLL: Duration = Duration::from_millis(10);

/// Runs until `stop` is set: adopts what it finds, then takes events from
/// `source`, lets the core decide, and carries the decisions out with
/// `steerer`. `upkeep` is the slot upkeep's handle (none in tests). The
/// readiness checks of `opts.gate` run on threads of their own.
pub fn run(
    opts: &Options,
    source: &mut dyn EventSource,
    world: &dyn World,
    steerer: &mut dyn Steerer,
    upkeep: Option<&upkeep::Handle>,
    stats: &DaemonStats,
    stop: &AtomicBool,
) {
    match &opts.gate {
        Some(gate) => {
            let mut prober = prober::Threads::new(gate.clone());
            run_gated(opts, source, world, steerer, &mut prober, upkeep, stats, stop);
        }
        None => run_gated(opts, source, world, steerer, &mut prober::Open, upkeep, stats, stop),
    }
}

/// [`run`] with the readiness checks run by `prober`.
#[expect(clippy::too_many_arguments, reason = "the loop's adapters, each its own parameter for tests")]
pub fn run_gated(
    opts: &Options,
    source: &mut dyn EventSource,
    world: &dyn World,
    steerer: &mut dyn Steerer,
    prober: &mut dyn Prober,
    upkeep: Option<&upkeep::Handle>,
    stats: &DaemonStats,
    stop: &AtomicBool,
) {
    let core = Core::new(core::Config {
        policy: opts.policy,
        ready_delay: opts.ready_delay,
        ports: opts.filter.ports.clone(),
        me: std::process::id(),
        canary: opts.canary,
        ready_timeout: opts.gate.as_ref().map(|_| opts.ready_timeout),
    });
    let mut l = Loop { core, world, steerer, prober, stats, stop };
    l.adopt(true);
    let f = &opts.filter;
    let exe: Vec<_> = f.exes.iter().map(|e| e.path.display().to_string()).collect();
    let (canary, canary_for_ms) =
        opts.canary.map_or((None, None), |c| (Some(c.weight), Some(c.duration.as_millis())));
    let ready_timeout_ms = opts.gate.as_ref().map(|_| opts.ready_timeout.as_millis());
    let (ready_cmd, ready_http) = opts
        .gate
        .as_ref()
        .map_or((None, None), |g| (g.cmd.clone(), g.http.as_ref().map(ToString::to_string)));
    tracing::info!(policy = ?opts.policy, canary, canary_for_ms, ready_cmd, ready_http, ready_timeout_ms, comm = ?f.comms, port = ?f.ports, user = ?f.users, ?exe, cgroup = ?f.cgroups, netns = ?f.netns, user_namespace = ?f.user_namespace, limits = ?opts.limits, "watching");
    let mut events = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        stats.beat();
        let now = Instant::now();
        // A check running: its answer is taken soon, not a whole wake later.
        let every = if l.prober.busy() { CHECK_POLL } else { WAKE_EVERY };
        let wake = l.core.next_due().map_or(now + every, |due| due.min(now + every));
        events.clear();
        source.wait(wake.saturating_duration_since(now), &mut events);
        // A stop requested while waiting wins over the events that came with it:
        // after SIGTERM nothing changes.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        l.turn(&events, upkeep);
        if let Some(pids) = l.core.watch_changes() {
            source.watch_forks(&pids);
        }
    }
    tracing::info!("stopping; steering stays in place");
}

/// What one turn of the event loop works with.
struct Loop<'a> {
    core: Core,
    world: &'a dyn World,
    steerer: &'a mut dyn Steerer,
    prober: &'a mut dyn Prober,
    stats: &'a DaemonStats,
    stop: &'a AtomicBool,
}

impl Loop<'_> {
    /// Promotes the newest matching generation of every group (at start, and
    /// after lost events). At start, under `--canary`, groups an operator's
    /// command set are left alone for a generation it does not name.
    fn adopt(&mut self, at_start: bool) {
        for decision in self.core.adopt(self.world, Instant::now(), monotonic_ns()) {
            let decision = if at_start {
                let held = self.steerer.unnamed_by_operator(decision.pid, &decision.scope);
                let (decision, reports) = self.core.yield_to_operator(decision, &held);
                log(&reports, self.stats);
                match decision {
                    Some(d) => d,
                    None => continue,
                }
            } else {
                decision
            };
            tracing::info!(pid = decision.pid, ports = ?decision.scope, "adopting");
            let active = if self.core.config.ready_timeout.is_some() {
                self.steerer.active_ports(decision.pid, &decision.scope)
            } else {
                Vec::new()
            };
            let (decision, reports) = self.core.admit_adopted(decision, &active, Instant::now(), self.world);
            log(&reports, self.stats);
            if let Some(decision) = decision {
                self.step(decision);
            }
        }
    }

    /// Carries one decision out and hands the result back to the core. A
    /// check goes to the prober; a promotion that waited for one first gives
    /// way where an operator's command set the group meanwhile.
    fn step(&mut self, decision: Decision) {
        let (pid, core) = (decision.pid, &mut self.core);
        if decision.action == Action::Check {
            core.checking(pid, self.steerer.operator_marks(pid, &decision.scope));
            let deadline = core.deadline(pid).unwrap_or_else(Instant::now);
            self.prober.start(pid, &decision.scope, deadline);
            return;
        }
        let decision = if core.passed(pid) {
            let marks = self.steerer.operator_marks(pid, &decision.scope);
            let (decision, reports) = core.operator_moved(decision, &marks);
            log(&reports, self.stats);
            match decision {
                Some(d) => d,
                None => return,
            }
        } else {
            decision
        };
        step(core, decision, self.world, self.steerer, self.stats);
    }

    /// Takes in one batch of events and the upkeep's findings, then carries
    /// out the decisions that are due.
    fn turn(&mut self, events: &[Event], upkeep: Option<&upkeep::Handle>) {
        let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count() as u64;
        let counts = EventCounts {
            listen: count(|e| matches!(e, Event::Listen { .. })),
            close: count(|e| matches!(e, Event::Closed)),
            fork: count(|e| matches!(e, Event::Forked { .. })),
            lost: events.iter().map(|e| if let Event::Lost { count } = e { *count } else { 0 }).sum(),
        };
        self.stats.record_events(counts);
        if counts.lost > 0 {
            // Which listeners the lost events named is unknown: look at every
            // matching group again, as at start (promote is idempotent).
            tracing::warn!(
                lost = counts.lost,
                "the event source lost events (its ring buffer was full); looking at every matching group again"
            );
            self.adopt(false);
        }
        if let Some(u) = upkeep {
            if counts.close > 0 {
                let _ = u.nudge.send(());
            }
            for (netns, port) in u.shrunk.try_iter() {
                self.core.shrunk(core::GroupId { netns, port }, Instant::now(), monotonic_ns());
            }
        }
        self.core.observe(events, Instant::now(), self.world);
        for (pid, answer) in self.prober.answers() {
            let reports = self.core.checked(pid, answer, Instant::now());
            log(&reports, self.stats);
        }
        let (decisions, reports) = self.core.take_due(Instant::now(), self.world);
        log(&reports, self.stats);
        for decision in decisions {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.step(decision);
        }
        self.core.prune_watched(Instant::now(), self.world);
    }
}

/// Carries one decision out and hands the result back to the core.
fn step(
    core: &mut Core,
    decision: Decision,
    world: &dyn World,
    steerer: &mut dyn Steerer,
    stats: &DaemonStats,
) {
    let result: Result<Done, StepError> = match decision.action {
        Action::Promote => steerer.promote(decision.pid, &decision.scope).map(Done::Promoted),
        Action::Canary { weight } => {
            steerer.canary(decision.pid, &decision.scope, weight).map(Done::Promoted)
        }
        Action::Complete => steerer.complete(decision.pid, &decision.scope).map(Done::Completed),
        Action::Reattach => steerer.reattach(decision.pid, &decision.scope).map(Done::Reattached),
        // The loop hands checks to the prober; none reaches here.
        Action::Check => return,
    };
    let reports = core.settle(decision, result, Instant::now(), world);
    log(&reports, stats);
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
