//! The progressive canary's rules (`--canary PCT --canary-for DURATION`), for
//! the core: which canaries run and when each completes, which are abandoned
//! and why (the process exited, an operator's command ended it, a newer
//! generation replaced it), and which processes are never canaried or promoted
//! again. Pure, like the core: time and the world come in as arguments.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    core::{Action, Core, Decision, Done, GroupId, MAX_TRIES, Pending, RETRY_AFTER, Report},
    event::Trigger,
    steerer::StepError,
    world::{ListenerSet, World},
};
use crate::{ops::promote::Change, policy::Outcome};

/// `--canary PCT --canary-for DURATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Percent of new connections for a new generation first (1..=99).
    pub weight: u32,
    /// How long the canary runs before the generation is promoted fully.
    pub duration: Duration,
}

/// A canary that runs in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    /// Its start time, so that a reused pid is not taken for it.
    pub start: u64,
    /// When it began, and when it is promoted fully.
    pub since: Instant,
    pub due: Instant,
    /// Failed attempts to complete it while the process lived.
    pub tries: u32,
    /// The canary's listeners on the group's port, to follow a process that
    /// forked and left them to its child (a daemonising server).
    pub listeners: ListenerSet,
    pub trigger: Trigger,
    pub ktime_ns: u64,
}

/// Why a canary was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its process exited; the program sends its share to the active generation.
    Exited,
    /// An operator's command (`steer rollback`, or a promote by hand) ended or
    /// changed it: its sockets are the group's canary no more.
    Operator,
    /// A newer generation became the canary.
    Replaced { by: u32 },
}

impl Ended {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "its process exited",
            Self::Operator => "an operator's command ended or changed it",
            Self::Replaced { .. } => "a newer generation replaced it",
        }
    }
}

/// The canaries the daemon runs, by group.
#[derive(Debug, Default)]
pub struct Canaries {
    running: BTreeMap<GroupId, Running>,
    /// Completions handed out and not settled yet.
    completing: BTreeMap<GroupId, Running>,
    /// Processes (with their start time) whose canary ended in a group: never
    /// canaried or promoted there again. A newer generation is another process.
    ended: BTreeMap<(GroupId, u32), u64>,
}

impl Canaries {
    /// The canaries running, by group.
    #[must_use]
    pub fn running(&self) -> &BTreeMap<GroupId, Running> {
        &self.running
    }

    /// Whether `pid`'s canary in `group` was ended (and the pid not reused since).
    pub fn ended(&self, group: GroupId, pid: u32, world: &dyn World) -> bool {
        self.ended.get(&(group, pid)).is_some_and(|start| world.start_time(pid) == Some(*start))
    }

    fn end(&mut self, group: GroupId, pid: u32, start: u64) {
        self.ended.insert((group, pid), start);
    }

    /// A canary step of `pid` took effect in `groups`: each group's clock
    /// starts, or runs on when `pid` is its canary already (a repeated event),
    /// or holds its canary's sockets. A canary of another process there is replaced: its
    /// completion is cancelled.
    pub fn started(
        &mut self,
        groups: &[GroupId],
        pid: u32,
        plan: &Plan,
        (now, trigger, ktime_ns): (Instant, Trigger, u64),
        world: &dyn World,
    ) -> Vec<Report> {
        let start = world.start_time(pid).unwrap_or(0);
        let mut reports = Vec::new();
        for &group in groups {
            let listeners = world.listeners(pid, &[group.port]).unwrap_or_default();
            // The same canary: its process again, or the child it forked that
            // holds its sockets (a daemonising server); the clock runs on.
            let same =
                |r: &Running| r.pid == pid || (!r.listeners.is_empty() && r.listeners.is_subset(&listeners));
            if let Some(old) = self.running.get_mut(&group).filter(|r| same(r)) {
                (old.pid, old.start, old.listeners) = (pid, start, listeners);
                continue;
            }
            if let Some(old) = self.running.remove(&group).or_else(|| self.completing.remove(&group)) {
                self.end(group, old.pid, old.start);
                let why = Ended::Replaced { by: pid };
                reports.push(Report::CanaryEnded { pid: old.pid, port: group.port, why });
            }
            let due = now + plan.duration;
            let running = Running { pid, start, since: now, due, tries: 0, listeners, trigger, ktime_ns };
            self.running.insert(group, running);
        }
        reports
    }

    /// Abandons the canaries whose process has left, unless another process
    /// now holds every one of its listeners (the serving child of a server
    /// that forked and exited): the canary then runs on with it. A group with
    /// work pending waits: that work may be the child's.
    pub fn check_exits(&mut self, pending: &BTreeMap<GroupId, Pending>, world: &dyn World) -> Vec<Report> {
        let mut reports = Vec::new();
        let gone: Vec<GroupId> = self
            .running
            .iter()
            .filter(|(g, r)| !pending.contains_key(g) && world.start_time(r.pid) != Some(r.start))
            .map(|(g, _)| *g)
            .collect();
        for group in gone {
            let Some(mut r) = self.running.remove(&group) else { continue };
            let heir = world.newest_holder(group.netns(), group.port).filter(|h| *h != r.pid).filter(|h| {
                !r.listeners.is_empty()
                    && world.listeners(*h, &[group.port]).is_some_and(|l| r.listeners.is_subset(&l))
            });
            if let Some(heir) = heir {
                r.pid = heir;
                r.start = world.start_time(heir).unwrap_or(0);
                self.running.insert(group, r);
            } else {
                reports.push(Report::CanaryEnded { pid: r.pid, port: group.port, why: Ended::Exited });
            }
        }
        reports
    }

    /// The completions due at `now`, by process: not for a group with work
    /// pending (a newer generation may replace the canary), nor for one
    /// `deciding` names (that work is being handed out now).
    pub fn take_due(
        &mut self,
        now: Instant,
        pending: &BTreeMap<GroupId, Pending>,
        deciding: &BTreeSet<GroupId>,
    ) -> BTreeMap<u32, Vec<(GroupId, Running)>> {
        let due: Vec<GroupId> = self
            .running
            .iter()
            .filter(|(g, r)| r.due <= now && !pending.contains_key(g) && !deciding.contains(g))
            .map(|(g, _)| *g)
            .collect();
        let mut by_pid: BTreeMap<u32, Vec<(GroupId, Running)>> = BTreeMap::new();
        for group in due {
            if let Some(r) = self.running.remove(&group) {
                self.completing.insert(group, r.clone());
                by_pid.entry(r.pid).or_default().push((group, r));
            }
        }
        by_pid
    }

    /// The earliest completion, waiting behind the pending work of its group.
    #[must_use]
    pub fn next_due(&self, pending: &BTreeMap<GroupId, Pending>) -> Option<Instant> {
        self.running.iter().map(|(g, r)| pending.get(g).map_or(r.due, |p| p.due.max(r.due))).min()
    }

    /// A completion settled: taken out of the hand-out list; `Some` to try it
    /// again at `retry` (it stays cancelled when a newer canary replaced it).
    pub fn settled(&mut self, group: GroupId, retry: Option<Instant>) -> Option<Running> {
        let r = self.completing.remove(&group)?;
        if let Some(due) = retry.filter(|_| !self.running.contains_key(&group)) {
            self.running.insert(group, Running { due, tries: r.tries + 1, ..r.clone() });
        }
        Some(r)
    }

    /// The completion found the canary ended, or its process gone.
    pub fn abandon(&mut self, group: GroupId, pid: u32, why: Ended, world: &dyn World) {
        if why != Ended::Exited
            && let Some(start) = world.start_time(pid)
        {
            self.end(group, pid, start);
        }
    }

    /// Forgets ended processes that have left.
    pub fn prune(&mut self, world: &dyn World) {
        self.ended.retain(|(_, pid), start| world.start_time(*pid) == Some(*start));
    }
}

/// The core's canary steps: starting one, completing one, and yielding to the
/// operator at start.
impl Core {
    /// At start, under `--canary`: `held` are the ports of an adoption
    /// decision whose groups an operator's command set without naming the
    /// process. It may be a canary that command ended (`steer rollback` takes
    /// an ended canary's sockets out of the configuration, so nothing pinned
    /// tells it from a newer generation): the daemon leaves those groups as
    /// the operator set them, until a generation listens while it watches.
    #[must_use]
    pub fn yield_to_operator(&self, mut decision: Decision, held: &[u16]) -> (Option<Decision>, Vec<Report>) {
        if (self.config.canary.is_none() && self.config.ready_timeout.is_none()) || held.is_empty() {
            return (Some(decision), Vec::new());
        }
        let pid = decision.pid;
        let reports = held.iter().map(|&port| Report::Yielded { pid, port }).collect();
        decision.scope.retain(|p| !held.contains(p));
        decision.groups.retain(|(g, _)| !held.contains(&g.port));
        ((!decision.scope.is_empty()).then_some(decision), reports)
    }

    /// A promotion ran. A canary step that made (or found) `pid` the canary
    /// of some groups starts their clocks there.
    pub(super) fn promoted(
        &mut self,
        action: Action,
        pid: u32,
        groups: &[(GroupId, Pending)],
        changes: Vec<Change>,
        (now, trigger, ktime_ns): (Instant, Trigger, u64),
        world: &dyn World,
    ) -> Vec<Report> {
        let canaried: BTreeSet<u16> = changes
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Canary { .. } | Outcome::AlreadyCanary { .. }))
            .filter_map(|c| port_of_label(&c.group))
            .collect();
        let (Action::Canary { .. }, Some(plan), false) = (action, self.config.canary, canaried.is_empty())
        else {
            return vec![Report::Promoted { pid, trigger, ktime_ns, changes }];
        };
        // Without --port the step took every port of the process, not only the
        // groups whose events led here.
        let netns =
            world.process(pid).map_or_else(|| groups.first().map_or(0, |(g, _)| g.netns), |i| i.netns);
        let ids: Vec<GroupId> = canaried.into_iter().map(|port| GroupId { netns, port }).collect();
        let duration = plan.duration;
        let mut reports = vec![Report::Canaried { pid, trigger, ktime_ns, changes, duration }];
        reports.extend(self.canaries.started(&ids, pid, &plan, (now, trigger, ktime_ns), world));
        reports
    }

    /// Takes in what a canary's completion did. Where its sockets were the
    /// canary no more (an operator's command ended or changed it), or its
    /// process had left, it is abandoned; a failure that may pass is tried
    /// again after a backoff, unless a newer canary replaced it meanwhile.
    pub(super) fn settle_completion(
        &mut self,
        pid: u32,
        groups: &[(GroupId, Pending)],
        result: Result<Done, StepError>,
        now: Instant,
        world: &dyn World,
    ) -> Vec<Report> {
        let mut reports = Vec::new();
        let error = match result {
            Ok(done) => {
                let (changes, left) = match done {
                    Done::Completed(c) => (c.changes, c.left),
                    Done::Promoted(changes) => (changes, Vec::new()),
                    Done::Reattached(_) => (Vec::new(), Vec::new()),
                };
                let since =
                    groups.iter().filter_map(|(g, _)| self.canaries.settled(*g, None)).map(|r| r.since);
                let after = since.min().map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                for (group, _) in groups.iter().filter(|(g, _)| left.contains(&g.port)) {
                    self.canaries.abandon(*group, pid, Ended::Operator, world);
                    reports.push(Report::CanaryEnded { pid, port: group.port, why: Ended::Operator });
                }
                if !changes.is_empty() {
                    reports.push(Report::Completed { pid, after, changes });
                }
                return reports;
            }
            Err(e) => e,
        };
        let alive = world.process(pid).is_some();
        for (group, p) in groups {
            let (port, tries) = (group.port, p.tries + 1);
            let retry = alive && error.retryable() && tries < MAX_TRIES;
            let again = retry.then(|| now + RETRY_AFTER * 2_u32.pow(p.tries));
            self.canaries.settled(*group, again);
            reports.push(if !alive {
                Report::CanaryEnded { pid, port, why: Ended::Exited }
            } else if retry {
                Report::Retrying { pid, port, tries, error: format!("{error:#}") }
            } else {
                Report::Failed { action: Action::Complete, pid, port, tries, error: format!("{error:#}") }
            });
        }
        reports
    }
}

/// The port of a group's label (`127.0.0.1:80`, `[::1]:80%2`).
fn port_of_label(label: &str) -> Option<u16> {
    let addr = label.split('%').next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
#[path = "canary_tests.rs"]
mod tests;
