//! Which processes the daemon watches (by name, by port), and finding their
//! listeners: for start-up adoption and for the polling source.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
};

use steer_abi::GroupKey;

use crate::{proc::Process, sockets};

/// `--comm`, `--port` and `--netns`: a listener matches when every list that
/// is given matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// Inodes of the network namespaces to watch (empty: all).
    pub netns: Vec<u64>,
}

impl Filter {
    #[must_use]
    pub fn netns_matches(&self, netns: u64) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    #[must_use]
    pub fn comm_matches(&self, comm: &str) -> bool {
        self.comms.is_empty() || self.comms.iter().any(|c| c == comm)
    }

    /// Whether `process` matches `--comm` and `--netns`.
    #[must_use]
    pub fn process_matches(&self, process: &Process) -> bool {
        self.comm_matches(&process.comm) && self.netns_matches(process.netns)
    }

    #[must_use]
    pub fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// A process start time in clock ticks since boot (`/proc/PID/stat` field 22):
/// larger is newer.
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)
}

/// The parent's pid (`/proc/PID/stat` field 4).
#[must_use]
pub fn parent(pid: u32) -> Option<u32> {
    stat_field(pid, 4).and_then(|p| u32::try_from(p).ok())
}

/// Numeric field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, from field 3 on.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// Processes whose name matches, excluding ourselves. With no `--comm`, every
/// process (the port filter then decides).
#[must_use]
pub fn candidates(filter: &Filter) -> Vec<Process> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| crate::proc::comm(*pid).is_some_and(|c| filter.comm_matches(&c)))
        .filter_map(|pid| Process::open(pid).ok())
        .filter(|p| filter.netns_matches(p.netns))
        .collect()
}

/// For each group with matching listeners, the newest process listening in it.
#[must_use]
pub fn newest_per_group(filter: &Filter) -> BTreeMap<GroupKey, (u32, u16)> {
    let mut best: BTreeMap<GroupKey, (u64, u32, u16)> = BTreeMap::new();
    for process in candidates(filter) {
        let Ok(listening) = sockets::listening_sockets(&process, &filter.ports) else { continue };
        let Some(started) = start_time(process.pid) else { continue };
        for (_, l) in listening {
            let key = sockets::group_key(l.addr, 0);
            let entry = best.entry(key).or_insert((started, process.pid, l.addr.port()));
            if (started, process.pid) > (entry.0, entry.1) {
                *entry = (started, process.pid, l.addr.port());
            }
        }
    }
    best.into_iter().map(|(k, (_, pid, port))| (k, (pid, port))).collect()
}

/// The polling source's memory: listener inodes seen per network namespace.
#[derive(Debug, Default)]
pub struct Poller {
    known: HashMap<u64, HashSet<u64>>,
    primed: bool,
}

impl Poller {
    /// New listeners of matching processes since the last call, as (pid, port).
    /// The first call only records what exists (adoption handles that).
    pub fn poll(&mut self, filter: &Filter) -> Vec<(u32, u16)> {
        let mut by_ns: HashMap<u64, Vec<Process>> = HashMap::new();
        for p in candidates(filter) {
            by_ns.entry(p.netns).or_default().push(p);
        }
        let mut found = Vec::new();
        let mut known = HashMap::new();
        for (netns, processes) in by_ns {
            let Ok(listeners) = sockets::namespace_listeners(&processes[0]) else { continue };
            let seen = self.known.get(&netns);
            let fresh: Vec<_> = listeners
                .iter()
                .filter(|l| filter.port_matches(l.addr.port()))
                .filter(|l| self.primed && !seen.is_some_and(|s| s.contains(&l.inode)))
                .collect();
            if !fresh.is_empty() {
                for p in &processes {
                    let Ok(fds) = p.socket_fds() else { continue };
                    found.extend(
                        fresh.iter().filter(|l| fds.contains_key(&l.inode)).map(|l| (p.pid, l.addr.port())),
                    );
                }
            }
            known.insert(netns, listeners.iter().map(|l| l.inode).collect());
        }
        self.known = known;
        self.primed = true;
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine() {
        let f = Filter { comms: vec!["haproxy".into()], ports: vec![80], netns: vec![7] };
        assert!(f.netns_matches(7) && !f.netns_matches(8));
        assert!(f.comm_matches("haproxy") && !f.comm_matches("nginx"));
        assert!(f.port_matches(80) && !f.port_matches(81));
        let any = Filter::default();
        assert!(any.comm_matches("x") && any.port_matches(1));
    }

    #[test]
    fn start_time_reads_our_own_stat() {
        let me = start_time(std::process::id()).expect("own stat");
        assert!(start_time(1).is_some_and(|init| init <= me));
    }

    #[test]
    fn parent_reads_our_own_stat() {
        let expected = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
        assert_eq!(parent(std::process::id()), expected);
    }
}
