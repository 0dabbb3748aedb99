//! The daemon's rules, apart from their effects: which group has work pending
//! and when it is due, how events for one group coalesce, who the trigger was,
//! which process a promotion should name (a fork that took over, the newest
//! holder when the listener's process left), when to try again and when to
//! give up, and which processes' forks to watch. It takes events, answers from
//! a [`World`] and the time, and returns [`Decision`]s and [`Report`]s; it does
//! no I/O of its own, so every rule is tested with a scripted world
//! (`core_tests.rs`).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    Policy,
    canary::Canaries,
    gate::Gating,
    steerer::StepError,
    watched::Watched,
    world::{ListenerSet, World},
};
pub use super::{
    canary::{Ended, Plan},
    decision::{Action, Decision, Done, Pending, Report},
    event::{Event, Trigger},
};

/// The core's key for work: a network namespace and a port. The address is
/// resolved when the promotion reads the process's sockets, so every group of
/// a port in a namespace is handled together. `netns` 0: the listening process
/// left before its namespace could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId {
    pub netns: u64,
    pub port: u16,
}

impl GroupId {
    pub(super) fn netns(self) -> Option<u64> {
        (self.netns != 0).then_some(self.netns)
    }
}

/// Attempts while the process lives: the event can arrive before the socket
/// listens or has joined its reuseport group.
pub const MAX_TRIES: u32 = 5;
/// The first retry's delay; each next one waits twice as long (10 ms to 160 ms).
pub const RETRY_AFTER: Duration = Duration::from_millis(10);
/// Times the newest holder is taken in place of a process that left.
pub const MAX_FALLBACKS: u32 = 3;
/// How often exited processes leave the fork watch list.
pub const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The core's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: Policy,
    pub ready_delay: Duration,
    /// `--port` (empty: any).
    pub ports: Vec<u16>,
    /// The daemon's own pid, whose listeners (metrics) are never steered.
    pub me: u32,
    /// `--canary`: each new generation is a canary first (policy `newest`).
    pub canary: Option<Plan>,
    /// `--ready-timeout`, when a readiness gate (`--ready-cmd`, `--ready-http`)
    /// holds each promotion until the process is ready; `None`: no gate.
    pub ready_timeout: Option<Duration>,
}

/// The decision core.
#[derive(Debug)]
pub struct Core {
    pub(super) config: Config,
    pub(super) pending: BTreeMap<GroupId, Pending>,
    watched: Watched,
    pub(super) canaries: Canaries,
    pub(super) gating: Gating,
}

impl Core {
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            pending: BTreeMap::new(),
            watched: Watched::default(),
            canaries: Canaries::default(),
            gating: Gating::default(),
        }
    }

    fn port_matches(&self, port: u16) -> bool {
        self.config.ports.is_empty() || self.config.ports.contains(&port)
    }

    /// At start: one decision per process that is the newest in some group it
    /// listens in, for all those groups at once; never one whose canary ended.
    pub fn adopt(&self, world: &dyn World, now: Instant, ktime_ns: u64) -> Vec<Decision> {
        let mut by_pid: BTreeMap<u32, BTreeSet<GroupId>> = BTreeMap::new();
        for (pid, netns, port) in world.newest_per_group() {
            let group = GroupId { netns, port };
            if !self.canaries.ended(group, pid, world) && !self.gating.gave_up(group, pid, world) {
                by_pid.entry(pid).or_default().insert(group);
            }
        }
        let p = |pid| Pending { due: now, ktime_ns, pid, tries: 0, fallbacks: 0, trigger: Trigger::Adopt };
        by_pid
            .into_iter()
            .map(|(pid, groups)| {
                let groups: Vec<(GroupId, Pending)> = groups.into_iter().map(|g| (g, p(pid))).collect();
                // Adoption names every port it found, also without --port.
                let scope = ports_of(&groups);
                self.decision(pid, groups, scope, Trigger::Adopt, ktime_ns)
            })
            .collect()
    }

    /// Takes in a batch of events.
    pub fn observe(&mut self, events: &[Event], now: Instant, world: &dyn World) {
        for &event in events {
            match event {
                Event::Listen { pid, port, ktime_ns } if self.port_matches(port) && pid != self.config.me => {
                    // The listening pid may have exited already (daemon mode forks
                    // after listen()); then the port decides, when due.
                    let info = world.process(pid);
                    if info.as_ref().is_none_or(|i| i.matches) {
                        let group = GroupId { netns: info.map_or(0, |i| i.netns), port };
                        self.queue(group, self.fresh(now, ktime_ns, pid, Trigger::Listen));
                    }
                }
                Event::Polled { pid, port, ktime_ns } if self.port_matches(port) && pid != self.config.me => {
                    let Some(info) = world.process(pid).filter(|i| i.matches) else { continue };
                    // Several new listeners of one group in one poll: the newest
                    // process wins (start time, then pid).
                    let newest = |pid: u32| (world.start_time(pid).unwrap_or(0), pid);
                    let fresh = self.fresh(now, ktime_ns, pid, Trigger::Poll);
                    self.pending
                        .entry(GroupId { netns: info.netns, port })
                        .and_modify(|p| {
                            if newest(pid) > newest(p.pid) {
                                p.pid = pid;
                            }
                        })
                        .or_insert(fresh);
                }
                // Promotions fill the watch list, so forks are only seen under `newest`.
                Event::Forked { parent, child, ktime_ns } => {
                    let Some((netns, ports)) = self.forked_generation(world, parent, child) else { continue };
                    for port in ports {
                        self.queue(GroupId { netns, port }, self.fresh(now, ktime_ns, child, Trigger::Fork));
                    }
                }
                // Lost events: the loop runs adoption again.
                Event::Listen { .. } | Event::Polled { .. } | Event::Closed | Event::Lost { .. } => {}
            }
        }
    }

    /// The upkeep found that `group`'s active generation lost sockets (nginx
    /// with fewer workers): its newest holder is promoted again.
    pub fn shrunk(&mut self, group: GroupId, now: Instant, ktime_ns: u64) {
        if self.config.policy == Policy::Newest && self.port_matches(group.port) {
            let p = Pending { due: now, ktime_ns, pid: 0, tries: 0, fallbacks: 0, trigger: Trigger::Close };
            self.pending.entry(group).or_insert(p);
        }
    }

    /// When the earliest pending work, or canary completion, is due.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        let canary = self.canaries.next_due(&self.pending);
        self.pending.values().map(|p| p.due).chain(canary).chain(self.gating.next_due()).min()
    }

    /// The canaries running, by group.
    #[must_use]
    pub fn canaries(&self) -> &BTreeMap<GroupId, super::canary::Running> {
        self.canaries.running()
    }

    /// Work waiting, by group.
    #[must_use]
    pub fn pending(&self) -> &BTreeMap<GroupId, Pending> {
        &self.pending
    }

    /// Takes the work that is due and turns it into decisions, one per process:
    /// the listener's process, or the child it forked that holds its listeners,
    /// or, when it has left, the newest holder of the port. Then the canaries:
    /// those whose process left are abandoned, and those due are completed.
    pub fn take_due(&mut self, now: Instant, world: &dyn World) -> (Vec<Decision>, Vec<Report>) {
        let due: Vec<(GroupId, Pending)> =
            self.pending.iter().filter(|(_, p)| p.due <= now).map(|(g, p)| (*g, *p)).collect();
        let mut reports = self.canaries.check_exits(&self.pending, world);
        let mut targets: BTreeMap<u32, Vec<(GroupId, Pending)>> = BTreeMap::new();
        for (group, p) in due {
            self.pending.remove(&group);
            let alive = p.pid != 0 && world.process(p.pid).is_some_and(|i| i.matches);
            let found = if alive {
                Some(self.forked_child(world, p.pid, group.port).unwrap_or(p.pid))
            } else {
                world.newest_holder(group.netns(), group.port)
            };
            match found {
                Some(pid)
                    if self.canaries.ended(group, pid, world) || self.gating.gave_up(group, pid, world) =>
                {
                    reports.push(Report::NotAgain { pid, port: group.port });
                }
                Some(pid) => targets.entry(pid).or_default().push((group, p)),
                None => reports.push(Report::Gone { port: group.port }),
            }
        }
        let deciding: BTreeSet<GroupId> = targets.values().flatten().map(|(g, _)| *g).collect();
        let (mut decisions, gated) = self.take_gated(now, world);
        reports.extend(gated);
        for (pid, groups) in targets {
            let first =
                groups.iter().map(|(_, p)| *p).min_by_key(|p| p.ktime_ns).expect("one group at least");
            let scope = if self.config.ports.is_empty() { Vec::new() } else { ports_of(&groups) };
            let decision = self.decision(pid, groups, scope, first.trigger, first.ktime_ns);
            let (decision, admitted) = self.admit(decision, now, world);
            reports.extend(admitted);
            decisions.extend(decision);
        }
        for (pid, running) in self.canaries.take_due(now, &self.pending, &deciding) {
            let groups: Vec<(GroupId, Pending)> = running
                .iter()
                .map(|(g, r)| {
                    let (trigger, ktime_ns, tries) = (r.trigger, r.ktime_ns, r.tries);
                    (*g, Pending { due: r.due, ktime_ns, pid, tries, fallbacks: 0, trigger })
                })
                .collect();
            let (trigger, ktime_ns) = (groups[0].1.trigger, groups[0].1.ktime_ns);
            let scope = ports_of(&groups);
            decisions.push(Decision { action: Action::Complete, pid, scope, groups, trigger, ktime_ns });
        }
        (decisions, reports)
    }

    fn decision(
        &self,
        pid: u32,
        groups: Vec<(GroupId, Pending)>,
        scope: Vec<u16>,
        trigger: Trigger,
        ktime_ns: u64,
    ) -> Decision {
        let action = match (self.config.policy, self.config.canary) {
            (Policy::Newest, Some(plan)) => Action::Canary { weight: plan.weight },
            (Policy::Newest, None) => Action::Promote,
            (Policy::Manual, _) => Action::Reattach,
        };
        Decision { action, pid, scope, groups, trigger, ktime_ns }
    }

    /// Takes in what a decision's step did. A failure is tried again while the
    /// process lives and the error may pass (after a backoff), or, when the
    /// process has left, the newest holder of each port is tried instead.
    pub fn settle(
        &mut self,
        decision: Decision,
        result: Result<Done, StepError>,
        now: Instant,
        world: &dyn World,
    ) -> Vec<Report> {
        let Decision { action, pid, scope: _, groups, trigger, ktime_ns } = decision;
        if action == Action::Complete {
            return self.settle_completion(pid, &groups, result, now, world);
        }
        let error = match result {
            Ok(Done::Promoted(changes) | Done::Completed(super::steerer::Completion { changes, .. })) => {
                self.watched.add(world, pid);
                return self.promoted(action, pid, &groups, changes, (now, trigger, ktime_ns), world);
            }
            Ok(Done::Reattached(found)) => {
                return vec![Report::Reattached { pid, ports: ports_of(&groups), groups: found }];
            }
            Err(StepError::Refused(error)) => {
                return groups
                    .iter()
                    .map(|(g, _)| Report::Refused { pid, port: g.port, error: error.clone() })
                    .collect();
            }
            Err(e) => e,
        };
        let alive = world.process(pid).is_some();
        let mut reports = Vec::new();
        for (group, p) in groups {
            let port = group.port;
            if !alive {
                // Daemonising servers listen, then fork the process that serves
                // and exit. Never an older holder while the process lives.
                let next = world.newest_holder(group.netns(), port).filter(|n| *n != pid);
                match next {
                    Some(next) if p.fallbacks < MAX_FALLBACKS => {
                        let retry = Pending { due: now, pid: next, fallbacks: p.fallbacks + 1, ..p };
                        self.pending.entry(group).or_insert(retry);
                        reports.push(Report::NextHolder { pid, next, port });
                    }
                    _ => reports.push(Report::Left { pid, port, error: format!("{error:#}") }),
                }
            } else if error.retryable() && p.tries + 1 < MAX_TRIES {
                let due = now + RETRY_AFTER * 2_u32.pow(p.tries);
                // A newer event for the group since then wins.
                self.pending.entry(group).or_insert(Pending { due, pid, tries: p.tries + 1, ..p });
                reports.push(Report::Retrying { pid, port, tries: p.tries + 1, error: format!("{error:#}") });
            } else {
                let tries = p.tries + 1;
                reports.push(Report::Failed { action, pid, port, tries, error: format!("{error:#}") });
            }
        }
        reports
    }

    /// Queues `new` for `group`. A group already waiting keeps its time,
    /// earliest event and trigger, and takes the newer pid, with its tries reset.
    fn queue(&mut self, group: GroupId, new: Pending) {
        self.pending
            .entry(group)
            .and_modify(|p| {
                p.pid = new.pid;
                p.tries = 0;
                p.fallbacks = 0;
            })
            .or_insert(new);
    }

    fn fresh(&self, now: Instant, ktime_ns: u64, pid: u32, trigger: Trigger) -> Pending {
        Pending { due: now + self.config.ready_delay, ktime_ns, pid, tries: 0, fallbacks: 0, trigger }
    }

    /// The youngest matching child of `pid` with the same name, if it holds
    /// every listener its parent holds on `port`: the serving process of a
    /// daemonising server (HAProxy `-D`), not an older worker of a master
    /// (nginx) that has just opened more sockets and not yet forked their workers.
    fn forked_child(&self, world: &dyn World, pid: u32, port: u16) -> Option<u32> {
        let comm = world.process(pid)?.comm;
        let child = world
            .children(pid)
            .into_iter()
            .filter(|c| world.process(*c).is_some_and(|i| i.matches && i.comm == comm))
            .max()?;
        let mine = world.listeners(pid, &[port])?;
        mine.is_subset(&world.listeners(child, &[port])?).then_some(child)
    }

    /// The network namespace and ports of `child`, just forked by `parent`,
    /// when it holds exactly the listeners its parent holds now: a server that
    /// closed some listeners and then forked the workers of its next generation
    /// (nginx lowering `worker_processes`). `None` when the child holds no
    /// matching listener, or others than its parent (a helper closing what it
    /// inherited). Whether the set differs from the active generation is for
    /// the promotion to say: the same set is `already active`.
    fn forked_generation(&self, world: &dyn World, parent: u32, child: u32) -> Option<(u64, Vec<u16>)> {
        let held = |pid: u32| -> Option<(u64, ListenerSet)> {
            let info = world.process(pid).filter(|i| i.matches)?;
            Some((info.netns, world.listeners(pid, &self.config.ports)?))
        };
        let (netns, mine) = held(child)?;
        if mine != held(parent)?.1 {
            return None;
        }
        let ports: BTreeSet<u16> = mine.into_iter().map(|(port, _)| port).collect();
        Some((netns, ports.into_iter().collect()))
    }

    /// Drops exited processes from the fork watch list, every [`PRUNE_EVERY`],
    /// and forgets the ended canaries of processes that left.
    pub fn prune_watched(&mut self, now: Instant, world: &dyn World) {
        self.watched.prune(now, world);
        self.canaries.prune(world);
        self.gating.prune(world);
    }

    /// The fork watch list, when it changed since the last call.
    pub fn watch_changes(&mut self) -> Option<BTreeSet<u32>> {
        std::mem::take(&mut self.watched.changed).then(|| self.watched.pids.keys().copied().collect())
    }
}

/// The distinct ports of `groups`, in order.
pub(super) fn ports_of(groups: &[(GroupId, Pending)]) -> Vec<u16> {
    let ports: BTreeSet<u16> = groups.iter().map(|(g, _)| g.port).collect();
    ports.into_iter().collect()
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
