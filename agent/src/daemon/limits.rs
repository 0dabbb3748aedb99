//! The daemon's caps on what it creates for the processes it steers: network
//! namespaces with pinned state (instances), groups per process, and new
//! generations per process per minute. The filter decides who may be steered;
//! the caps bound what even a process that passes it can make the daemon pin.
//! A refusal is logged once per process (or namespace, for instances) and
//! counted in `steer_daemon_refusals_total{reason}`; the step is not retried.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::steerer::{Completion, Steerer, StepError};
use crate::{metrics::DaemonStats, ops::promote::Change, proc::Process, sockets, state::StateDir};

/// The caps, from `--max-instances`, `--max-groups-per-process` and
/// `--max-generations-per-process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Network namespaces with pinned state in the state directory; a promote
    /// that would create one more is refused.
    pub instances: u32,
    /// Reuseport groups (address and port) one process may have steered.
    pub groups_per_process: u32,
    /// Promotions that change something, per process, per [`WINDOW`].
    pub generations_per_process: u32,
}

/// The window of [`Limits::generations_per_process`].
pub const WINDOW: Duration = Duration::from_secs(60);

impl Default for Limits {
    /// 64 namespaces: about 180 MiB of pinned maps on 2 CPUs, more than a
    /// node's steered pods; 32 groups: more than an HAProxy or nginx config
    /// binds in practice; 30 generations a minute: a server that reloads
    /// itself every 2 s, though each reload of HAProxy or nginx is a new
    /// process (or the same sockets, which changes nothing).
    fn default() -> Self {
        Self { instances: 64, groups_per_process: 32, generations_per_process: 30 }
    }
}

/// Which cap refused, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cap {
    Instances,
    Groups,
    Generations,
}

impl Cap {
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Instances => "instances",
            Self::Groups => "groups",
            Self::Generations => "generations",
        }
    }
}

/// What the caps are checked against, for one promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Whether the process's network namespace has an instance already.
    pub has_instance: bool,
    /// Instances in the state directory.
    pub instances: u32,
    /// The process's groups in scope (`None`: not counted, it holds too few
    /// sockets to pass the cap).
    pub groups: Option<u32>,
    /// Generations the process started within the window.
    pub generations: u32,
}

/// The first cap `facts` exceed, with the sentence for the log.
///
/// # Errors
/// The cap and what to do about it.
pub fn check(limits: &Limits, facts: &Facts) -> Result<(), (Cap, String)> {
    if !facts.has_instance && facts.instances >= limits.instances {
        return Err((
            Cap::Instances,
            format!(
                "{} network namespaces have steer state already, the most --max-instances allows; not creating another (remove stale ones with `steer detach` in them, or raise --max-instances)",
                facts.instances
            ),
        ));
    }
    if let Some(groups) = facts.groups.filter(|g| *g > limits.groups_per_process) {
        return Err((
            Cap::Groups,
            format!(
                "the process listens in {groups} reuseport groups, more than --max-groups-per-process {}; narrow the daemon with --port, or raise the cap",
                limits.groups_per_process
            ),
        ));
    }
    if facts.generations >= limits.generations_per_process {
        return Err((
            Cap::Generations,
            format!(
                "the process started {} generations within {} s, the most --max-generations-per-process allows; it is promoted again once the window passes",
                facts.generations,
                WINDOW.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Log lines remembered before the memory starts afresh (a process that is
/// refused again after that logs again).
const LOGGED_MAX: usize = 4096;

/// A [`Steerer`] that checks the caps before `inner` promotes.
#[derive(Debug)]
pub struct Limited<S> {
    inner: S,
    state_dir: PathBuf,
    limits: Limits,
    stats: Arc<DaemonStats>,
    /// Per pid: its start time (a reused pid starts afresh) and when its
    /// generations started.
    history: HashMap<u32, (u64, VecDeque<Instant>)>,
    /// (cap, pid or netns) already logged and counted.
    logged: HashSet<(Cap, u64)>,
}

impl<S: Steerer> Limited<S> {
    #[must_use]
    pub fn new(inner: S, state_dir: PathBuf, limits: Limits, stats: Arc<DaemonStats>) -> Self {
        Self { inner, state_dir, limits, stats, history: HashMap::new(), logged: HashSet::new() }
    }

    /// The generations `pid` started within the window before `now`.
    fn generations(&mut self, pid: u32, started: u64, now: Instant) -> u32 {
        let entry = self.history.entry(pid).or_insert_with(|| (started, VecDeque::new()));
        if entry.0 != started {
            *entry = (started, VecDeque::new());
        }
        while entry.1.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            entry.1.pop_front();
        }
        u32::try_from(entry.1.len()).unwrap_or(u32::MAX)
    }

    fn facts(&mut self, process: &Process, scope: &[u16], now: Instant) -> Facts {
        let namespaces = StateDir::open_for_read(&self.state_dir).map(|s| s.namespaces()).unwrap_or_default();
        // Counting groups reads every socket the process holds; only when it
        // holds enough sockets to have more groups than the cap.
        let sockets = process.socket_fds().map_or(0, |fds| fds.len());
        let groups = (sockets > self.limits.groups_per_process as usize).then(|| {
            let listening = sockets::listening_sockets(process, scope).unwrap_or_default();
            let addrs: HashSet<_> = listening.iter().map(|(_, l)| l.addr).collect();
            u32::try_from(addrs.len()).unwrap_or(u32::MAX)
        });
        let started = crate::proc::start_time(process.pid).unwrap_or(0);
        Facts {
            has_instance: namespaces.contains(&process.netns),
            instances: u32::try_from(namespaces.len()).unwrap_or(u32::MAX),
            groups,
            generations: self.generations(process.pid, started, now),
        }
    }

    /// Logs and counts a refusal, once per process or namespace.
    fn refuse(&mut self, cap: Cap, process: &Process, why: &str) {
        let key = if cap == Cap::Instances { process.netns } else { u64::from(process.pid) };
        if self.logged.len() >= LOGGED_MAX {
            self.logged.clear();
        }
        if self.logged.insert((cap, key)) {
            self.stats.record_refusal(cap.reason());
            tracing::warn!(
                pid = process.pid,
                comm = process.comm,
                netns = process.netns,
                reason = cap.reason(),
                "not promoted: {why}"
            );
        }
    }
}

impl<S: Steerer> Limited<S> {
    /// Checks the caps, then lets `step` promote; counts a generation when it
    /// changed something.
    fn capped(
        &mut self,
        pid: u32,
        scope: &[u16],
        step: impl FnOnce(&mut S) -> Result<Vec<Change>, StepError>,
    ) -> Result<Vec<Change>, StepError> {
        let process = Process::open(pid).map_err(|e| StepError::from(crate::ops::OpError::from(e)))?;
        let now = Instant::now();
        let facts = self.facts(&process, scope, now);
        if let Err((cap, why)) = check(&self.limits, &facts) {
            self.refuse(cap, &process, &why);
            return Err(StepError::Refused(why));
        }
        let changes = step(&mut self.inner)?;
        if changes.iter().any(|c| c.changed) {
            if let Some((_, times)) = self.history.get_mut(&pid) {
                times.push_back(now);
            }
            // Forget processes that have left, now and then.
            if self.history.len() > LOGGED_MAX {
                self.history.retain(|pid, (started, _)| crate::proc::start_time(*pid) == Some(*started));
            }
        }
        Ok(changes)
    }
}

impl<S: Steerer> Steerer for Limited<S> {
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<Change>, StepError> {
        self.capped(pid, scope, |inner| inner.promote(pid, scope))
    }

    fn canary(&mut self, pid: u32, scope: &[u16], weight: u32) -> Result<Vec<Change>, StepError> {
        self.capped(pid, scope, |inner| inner.canary(pid, scope, weight))
    }

    fn complete(&mut self, pid: u32, scope: &[u16]) -> Result<Completion, StepError> {
        // The canary step passed the caps: completing it creates nothing more.
        self.inner.complete(pid, scope)
    }

    fn reattach(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<String>, StepError> {
        // Re-attaching creates nothing: an instance and its groups exist already.
        self.inner.reattach(pid, scope)
    }

    fn unnamed_by_operator(&mut self, pid: u32, scope: &[u16]) -> Vec<u16> {
        self.inner.unnamed_by_operator(pid, scope)
    }

    fn active_ports(&mut self, pid: u32, scope: &[u16]) -> Vec<u16> {
        self.inner.active_ports(pid, scope)
    }

    fn operator_marks(&mut self, pid: u32, scope: &[u16]) -> super::gate::Marks {
        self.inner.operator_marks(pid, scope)
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
