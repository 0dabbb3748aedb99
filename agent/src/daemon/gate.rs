//! The readiness gate's rules (`--ready-cmd`, `--ready-http`, `--ready-timeout`),
//! for the core: a promotion the core decides waits here until the process is
//! ready; the checks themselves run elsewhere (the [`super::prober`] adapter),
//! and their answers come back through [`Core::checked`], so the event loop
//! never waits for one and other groups go on. A process not ready within the
//! timeout is not promoted, and the active generation keeps every new
//! connection. A newer generation of the group, the process leaving, and an
//! operator's command while it waits all end the wait. Pure, like the core.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    core::{Action, Core, Decision, GroupId, MAX_FALLBACKS, Pending, Report, ports_of},
    world::World,
};

/// How long after a "not ready" the gate asks again.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long past the deadline a check that never answers is waited for (a
/// check is bounded by the deadline; this only guards against a lost answer).
pub const ANSWER_GRACE: Duration = Duration::from_secs(15);

/// Per port, the group's configuration generation when an operator's command
/// set it last (`FLAG_OPERATOR`), or 0 when the daemon (or nobody) did.
pub type Marks = BTreeMap<u16, u64>;

/// A process whose promotion waits for its readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its start time, so that a reused pid is not taken for it.
    pub start: u64,
    /// The promotion (or canary) it waits to get.
    pub held: Decision,
    pub since: Instant,
    pub deadline: Instant,
    /// When to ask the gate next; `None`: a check runs now.
    pub next: Option<Instant>,
    /// Checks answered so far, and the last "not ready" reason.
    pub checks: u32,
    pub last: Option<String>,
    /// The groups' operator marks when the wait began (`None`: not read yet).
    pub marks: Option<Marks>,
    /// The gate passed; the held promotion is due.
    pub ready: bool,
}

/// The processes the gate holds.
#[derive(Debug, Default)]
pub struct Gating {
    waiting: BTreeMap<u32, Waiting>,
    /// Processes that passed, with their marks, until their promotion is taken.
    passed: BTreeMap<u32, Marks>,
    /// Processes (with their start time) not ready in time in a group: not
    /// checked or promoted there again. A newer generation is another process.
    gave_up: BTreeMap<(GroupId, u32), u64>,
}

impl Gating {
    /// The processes waiting, by pid.
    #[must_use]
    pub fn waiting(&self) -> &BTreeMap<u32, Waiting> {
        &self.waiting
    }

    /// Whether `pid` was not ready in time in `group` (and the pid not reused since).
    pub fn gave_up(&self, group: GroupId, pid: u32, world: &dyn World) -> bool {
        self.gave_up.get(&(group, pid)).is_some_and(|start| world.start_time(pid) == Some(*start))
    }

    /// When the next check or held promotion is due.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.next.unwrap_or(w.deadline + ANSWER_GRACE)).min()
    }

    /// Forgets the processes that gave up and have left.
    pub fn prune(&mut self, world: &dyn World) {
        self.gave_up.retain(|(_, pid), start| world.start_time(*pid) == Some(*start));
    }
}

/// The core's gate steps.
impl Core {
    /// Whether promotions wait for the gate.
    fn gated(&self, action: Action) -> bool {
        self.config.ready_timeout.is_some() && matches!(action, Action::Promote | Action::Canary { .. })
    }

    /// A promotion (or canary) the core decided: without a gate it goes ahead;
    /// with one it waits, and a [`Action::Check`] goes out instead. A process
    /// that waits already takes the new groups in; a process that waited in
    /// one of these groups and is not this one is replaced by it.
    pub fn admit(
        &mut self,
        decision: Decision,
        now: Instant,
        world: &dyn World,
    ) -> (Option<Decision>, Vec<Report>) {
        let Some(timeout) = self.config.ready_timeout.filter(|_| self.gated(decision.action)) else {
            return (Some(decision), Vec::new());
        };
        let pid = decision.pid;
        let groups: BTreeSet<GroupId> = decision.groups.iter().map(|(g, _)| *g).collect();
        let mut reports = self
            .drop_waiting(|w, g| w.held.pid != pid && groups.contains(g), "a newer generation replaced it");
        if let Some(w) = self.gating.waiting.get_mut(&pid) {
            for (g, p) in decision.groups {
                if !w.held.groups.iter().any(|(h, _)| *h == g) {
                    w.held.groups.push((g, p));
                }
            }
            if !w.held.scope.is_empty() {
                w.held.scope = ports_of(&w.held.groups);
            }
            return (None, reports);
        }
        let start = world.start_time(pid).unwrap_or(0);
        let check = Decision { action: Action::Check, ..decision.clone() };
        reports.push(Report::Waiting { pid, ports: ports_of(&decision.groups), timeout });
        let waiting = Waiting {
            start,
            held: decision,
            since: now,
            deadline: now + timeout,
            next: None,
            checks: 0,
            last: None,
            marks: None,
            ready: false,
        };
        self.gating.waiting.insert(pid, waiting);
        (Some(check), reports)
    }

    /// At adoption: a process already active in every group of the decision
    /// passes untouched (promoting it changes nothing, and a failing check
    /// would only report a generation that serves anyway); any other waits as
    /// [`Core::admit`] says. `active` are the ports where it is active.
    pub fn admit_adopted(
        &mut self,
        decision: Decision,
        active: &[u16],
        now: Instant,
        world: &dyn World,
    ) -> (Option<Decision>, Vec<Report>) {
        if !decision.groups.is_empty() && decision.groups.iter().all(|(g, _)| active.contains(&g.port)) {
            return (Some(decision), Vec::new());
        }
        self.admit(decision, now, world)
    }

    /// A check of `pid` went out; `marks` are its groups' operator marks now,
    /// kept from the first check: an operator's command after it wins.
    pub fn checking(&mut self, pid: u32, marks: Marks) {
        if let Some(w) = self.gating.waiting.get_mut(&pid) {
            w.next = None;
            w.marks.get_or_insert(marks);
        }
    }

    /// Whether `pid` passed the gate and its promotion is being taken.
    #[must_use]
    pub fn passed(&self, pid: u32) -> bool {
        self.gating.passed.contains_key(&pid)
    }

    /// When `pid`'s wait ends at the latest.
    #[must_use]
    pub fn deadline(&self, pid: u32) -> Option<Instant> {
        self.gating.waiting.get(&pid).map(|w| w.deadline)
    }

    /// A check of `pid` answered: ready, and its promotion is due now; or not
    /// ready, and it is asked again after [`CHECK_EVERY`], until the deadline,
    /// when it gives up and the active generation stays.
    pub fn checked(&mut self, pid: u32, answer: Result<(), String>, now: Instant) -> Vec<Report> {
        let Some(w) = self.gating.waiting.get_mut(&pid) else { return Vec::new() };
        w.checks += 1;
        let after = now.saturating_duration_since(w.since);
        match answer {
            Ok(()) => {
                (w.ready, w.next) = (true, Some(now));
                vec![Report::Ready { pid, after, checks: w.checks }]
            }
            Err(reason) if now < w.deadline => {
                w.next = Some((now + CHECK_EVERY).min(w.deadline));
                w.last = Some(reason);
                Vec::new()
            }
            Err(reason) => {
                let Some(w) = self.gating.waiting.remove(&pid) else { return Vec::new() };
                w.held
                    .groups
                    .iter()
                    .map(|(g, _)| {
                        self.gating.gave_up.insert((*g, pid), w.start);
                        let reason = reason.clone();
                        Report::NotReady { pid, port: g.port, after, checks: w.checks, reason }
                    })
                    .collect()
            }
        }
    }

    /// The gate's work due at `now`: the held promotions of processes that
    /// passed, and the checks to send again. A waiting process that left is
    /// dropped.
    pub(super) fn take_gated(&mut self, now: Instant, world: &dyn World) -> (Vec<Decision>, Vec<Report>) {
        let mut reports = self.left_waiting(now, world);
        let due: Vec<u32> = self
            .gating
            .waiting
            .iter()
            .filter(|(_, w)| w.next.unwrap_or(w.deadline + ANSWER_GRACE) <= now)
            .map(|(p, _)| *p)
            .collect();
        let mut decisions = Vec::new();
        for pid in due {
            let Some(w) = self.gating.waiting.get_mut(&pid) else { continue };
            if w.ready {
                let Some(w) = self.gating.waiting.remove(&pid) else { continue };
                self.gating.passed.insert(pid, w.marks.unwrap_or_default());
                decisions.push(w.held);
            } else if now >= w.deadline {
                let reason = w.last.clone().unwrap_or_else(|| "no check answered".to_owned());
                reports.extend(self.checked(pid, Err(reason), now));
            } else {
                w.next = None;
                decisions.push(Decision { action: Action::Check, ..w.held.clone() });
            }
        }
        (decisions, reports)
    }

    /// Before a promotion that passed the gate: the ports where an operator's
    /// command set the group since the wait began (`now` are the marks read
    /// just before the step) are left as the operator set them.
    pub fn operator_moved(&mut self, mut decision: Decision, now: &Marks) -> (Option<Decision>, Vec<Report>) {
        let Some(before) = self.gating.passed.remove(&decision.pid) else {
            return (Some(decision), Vec::new());
        };
        let moved: Vec<u16> = now
            .iter()
            .filter(|(port, mark)| **mark != 0 && before.get(port).copied().unwrap_or(0) != **mark)
            .map(|(port, _)| *port)
            .collect();
        if moved.is_empty() {
            return (Some(decision), Vec::new());
        }
        let pid = decision.pid;
        let reports = moved.iter().map(|&port| Report::OperatorWhileWaiting { pid, port }).collect();
        if decision.scope.is_empty() {
            decision.scope = now.keys().copied().collect();
        }
        decision.scope.retain(|p| !moved.contains(p));
        decision.groups.retain(|(g, _)| !moved.contains(&g.port));
        ((!decision.scope.is_empty()).then_some(decision), reports)
    }

    /// Drops from the waiting processes the groups `drop` names; a process
    /// left with none stops waiting.
    fn drop_waiting(&mut self, drop: impl Fn(&Waiting, &GroupId) -> bool, why: &'static str) -> Vec<Report> {
        let mut reports = Vec::new();
        for (pid, w) in &mut self.gating.waiting {
            let (gone, kept): (Vec<_>, Vec<_>) =
                w.held.groups.iter().copied().partition(|(g, _)| drop(&*w, g));
            if gone.is_empty() {
                continue;
            }
            reports.extend(gone.iter().map(|(g, _)| Report::NoLongerWaiting {
                pid: *pid,
                port: g.port,
                why,
            }));
            w.held.groups = kept;
            w.held.scope = ports_of(&w.held.groups);
        }
        self.gating.waiting.retain(|_, w| !w.held.groups.is_empty());
        reports
    }

    /// Drops the waiting processes that left. A daemonising server listens,
    /// forks the process that serves, and exits: as when a promotion finds its
    /// process gone, each of its groups goes back to the core, which takes the
    /// port's newest holder (at most [`MAX_FALLBACKS`] times in a row), and that
    /// one waits for the gate in turn.
    fn left_waiting(&mut self, now: Instant, world: &dyn World) -> Vec<Report> {
        let left: Vec<u32> = self
            .gating
            .waiting
            .iter()
            .filter(|(pid, w)| world.start_time(**pid) != Some(w.start))
            .map(|(pid, _)| *pid)
            .collect();
        let mut reports = Vec::new();
        for pid in left {
            let Some(w) = self.gating.waiting.remove(&pid) else { continue };
            for (group, p) in w.held.groups {
                let port = group.port;
                if p.fallbacks < MAX_FALLBACKS {
                    let next = Pending { due: now, pid: 0, tries: 0, fallbacks: p.fallbacks + 1, ..p };
                    self.pending.entry(group).or_insert(next);
                    reports.push(Report::NoLongerWaiting {
                        pid,
                        port,
                        why: "its process left; the port's newest holder is taken instead",
                    });
                } else {
                    reports.push(Report::NoLongerWaiting { pid, port, why: "its process left" });
                }
            }
        }
        reports
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
