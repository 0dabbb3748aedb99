//! What the daemon's core may ask about the machine: the process table and
//! listener discovery, behind a trait, so that the core's rules are tested
//! against a scripted world. [`System`] answers from `/proc` and the sockets.
use std::collections::{BTreeMap, BTreeSet};

use steer_abi::GroupKey;

use super::{Filter, Mismatch};
use crate::{proc, proc::Process, sockets};

/// A process as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Inode of its network namespace.
    pub netns: u64,
    pub comm: String,
    /// Whether it passes `--comm`, `--netns`, and what the operator named to
    /// verify it by (`--user`, `--exe`, `--cgroup`, the user namespace).
    pub matches: bool,
}

/// The (port, socket inode) of each listener a process holds.
pub type ListenerSet = BTreeSet<(u16, u64)>;

/// The questions the core asks. Every answer may be stale by the time it is
/// used (processes come and go); the core treats them as hints and the
/// promotion itself verifies.
pub trait World {
    /// The process, if it exists.
    fn process(&self, pid: u32) -> Option<ProcInfo>;
    /// Start time in clock ticks since boot; larger is newer.
    fn start_time(&self, pid: u32) -> Option<u64>;
    fn parent(&self, pid: u32) -> Option<u32>;
    fn children(&self, pid: u32) -> Vec<u32>;
    /// The listeners `pid` holds on `ports` (all when empty); `None` when it
    /// holds none or cannot be read.
    fn listeners(&self, pid: u32, ports: &[u16]) -> Option<ListenerSet>;
    /// The newest matching process (by start time, then pid: pids wrap, and
    /// start times tick every 10 ms) that holds a listener on `port`, in
    /// `netns` when given.
    fn newest_holder(&self, netns: Option<u64>, port: u16) -> Option<u32>;
    /// For each group with matching listeners: the newest process listening in
    /// it, its network namespace and the port.
    fn newest_per_group(&self) -> Vec<(u32, u64, u16)>;
}

/// The machine itself, seen through `/proc` and the processes' sockets, with
/// the operator's filter applied.
#[derive(Debug)]
pub struct System {
    pub filter: Filter,
    stats: std::sync::Arc<crate::metrics::DaemonStats>,
    /// Processes whose mismatch was logged (one line per process), bounded.
    logged: std::cell::RefCell<std::collections::HashSet<u32>>,
    /// [`World::process`]'s answers of the last few milliseconds: the core
    /// asks about one process several times while it decides (the listener,
    /// its children, its parent), and checking the filter reads
    /// `/proc/PID/status`, `ns/user`, `exe` and `cgroup` each time.
    memo: std::cell::RefCell<std::collections::HashMap<u32, (std::time::Instant, Option<ProcInfo>)>>,
}

/// How long [`System::process`] reuses an answer. Every answer may be stale by
/// the time it is used anyway; the promotion itself verifies.
const MEMO_FOR: std::time::Duration = std::time::Duration::from_millis(5);

/// How many processes' mismatches [`System`] remembers having logged.
const LOGGED_MAX: usize = 4096;

impl System {
    #[must_use]
    pub fn new(filter: Filter, stats: std::sync::Arc<crate::metrics::DaemonStats>) -> Self {
        Self { filter, stats, logged: std::cell::RefCell::default(), memo: std::cell::RefCell::default() }
    }

    /// Counts a process failing a rule (each time it is asked about, so a
    /// flood of listen events shows), and logs it once per process.
    fn untrusted(&self, pid: u32, comm: &str, m: Mismatch) {
        self.stats.record_untrusted(m.rule());
        let mut logged = self.logged.borrow_mut();
        if logged.len() >= LOGGED_MAX {
            logged.clear();
        }
        if logged.insert(pid) {
            tracing::info!(pid, comm, rule = m.rule(), mismatch = ?m, "not steered: the process fails a rule the operator named");
        }
    }

    /// [`World::process`] without the memo.
    fn process_now(&self, pid: u32) -> Option<ProcInfo> {
        let p = Process::open(pid).ok()?;

        let matches = self.filter.comm_matches(&p.comm)
            && self.filter.netns_matches(p.netns)
            && self.filter.verify(pid).map_err(|m| self.untrusted(pid, &p.comm, m)).is_ok();
        Some(ProcInfo { pid, netns: p.netns, comm: p.comm, matches })
    }

    /// Processes that pass the filter, excluding ourselves. With no `--comm`,
    /// every process that passes the other rules (the port filter then decides).
    #[must_use]
    pub fn candidates(&self) -> Vec<Process> {
        candidates(&self.filter)
    }
}

/// Processes that pass `filter`, excluding ourselves: the name first, then the
/// network namespace, then [`Filter::verify`] (uids, user namespace, then
/// `--exe` and `--cgroup` when given), so that most processes cost one read.
#[must_use]
pub fn candidates(filter: &Filter) -> Vec<Process> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| proc::comm(*pid).is_some_and(|c| filter.comm_matches(&c)))
        .filter_map(|pid| Process::open(pid).ok())
        .filter(|p| filter.netns_matches(p.netns) && filter.verify(p.pid).is_ok())
        .collect()
}

impl World for System {
    fn process(&self, pid: u32) -> Option<ProcInfo> {
        let now = std::time::Instant::now();
        if let Some((at, info)) = self.memo.borrow().get(&pid)
            && now.duration_since(*at) < MEMO_FOR
        {
            return info.clone();
        }
        let info = self.process_now(pid);
        let mut memo = self.memo.borrow_mut();
        memo.retain(|_, (at, _)| now.duration_since(*at) < MEMO_FOR);
        memo.insert(pid, (now, info.clone()));
        info
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        proc::start_time(pid)
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        proc::parent(pid)
    }

    fn children(&self, pid: u32) -> Vec<u32> {
        proc::children(pid)
    }

    fn listeners(&self, pid: u32, ports: &[u16]) -> Option<ListenerSet> {
        let process = Process::open(pid).ok()?;
        let found = sockets::listening_sockets(&process, ports).ok()?;
        Some(found.into_iter().map(|(_, l)| (l.addr.port(), l.inode)).collect())
    }

    fn newest_holder(&self, netns: Option<u64>, port: u16) -> Option<u32> {
        // Newest first, so the search usually stops at once, at a fresh process
        // with few sockets whose listeners are read from the sockets themselves.
        let mut procs: Vec<((u64, u32), Process)> = self
            .candidates()
            .into_iter()
            .filter(|p| netns.is_none_or(|n| n == p.netns))
            .filter_map(|p| Some(((proc::start_time(p.pid)?, p.pid), p)))
            .collect();
        procs.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        procs
            .into_iter()
            .find(|(_, p)| sockets::listening_sockets(p, &[port]).is_ok_and(|ls| !ls.is_empty()))
            .map(|(_, p)| p.pid)
    }

    fn newest_per_group(&self) -> Vec<(u32, u64, u16)> {
        let mut best: BTreeMap<(u64, GroupKey), (u64, u32, u16)> = BTreeMap::new();
        for process in self.candidates() {
            let Ok(listening) = sockets::listening_sockets(&process, &self.filter.ports) else { continue };
            let Some(started) = proc::start_time(process.pid) else { continue };
            for (_, l) in listening {
                let key = (process.netns, sockets::group_key(l.addr, 0, l.protocol));
                let entry = best.entry(key).or_insert((started, process.pid, l.addr.port()));
                if (started, process.pid) > (entry.0, entry.1) {
                    *entry = (started, process.pid, l.addr.port());
                }
            }
        }
        best.into_iter().map(|((netns, _), (_, pid, port))| (pid, netns, port)).collect()
    }
}
