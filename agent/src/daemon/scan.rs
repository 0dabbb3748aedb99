//! Which processes the daemon watches (by name, by port), and finding their
//! listeners: for start-up adoption and for the polling source.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
};

use steer_abi::GroupKey;

use crate::{proc::Process, sockets};

/// `--comm`, `--port`, `--netns` and `--cgroup`: a listener matches when every
/// list that is given matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// Inodes of the network namespaces to watch (empty: all).
    pub netns: Vec<u64>,
    /// Cgroup patterns (empty: any); see [`cgroup_matches`].
    pub cgroups: Vec<String>,
}

/// Whether `pattern` selects a process whose `/proc/PID/cgroup` reads `text`.
/// Every hierarchy counts (the cgroup v2 line `0::PATH` and each v1 line), so a
/// container runtime's path is found under either. A pattern that starts with
/// `/` names a cgroup and everything below it (`/kubepods.slice`), and never
/// matches a path that is relative to another cgroup namespace (it shows `/..`);
/// any other pattern must appear in the path (`docker-<id>`, a pod's UID).
#[must_use]
pub fn cgroup_matches(pattern: &str, text: &str) -> bool {
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2)).any(|path| {
        if pattern.starts_with('/') {
            let base = pattern.trim_end_matches('/');
            !path.contains("/..")
                && (base.is_empty() || path == base || path.starts_with(&format!("{base}/")))
        } else {
            path.contains(pattern)
        }
    })
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

    /// Whether `process` matches `--comm`, `--netns` and `--cgroup` (its cgroups
    /// are read only when a `--cgroup` is given; an unreadable file matches none).
    #[must_use]
    pub fn process_matches(&self, process: &Process) -> bool {
        self.comm_matches(&process.comm)
            && self.netns_matches(process.netns)
            && self.cgroup_matches(process.pid)
    }

    #[must_use]
    pub fn cgroup_matches(&self, pid: u32) -> bool {
        if self.cgroups.is_empty() {
            return true;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        self.cgroups.iter().any(|pattern| cgroup_matches(pattern, &text))
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
        .filter(|p| filter.netns_matches(p.netns) && filter.cgroup_matches(p.pid))
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
        let f =
            Filter { comms: vec!["haproxy".into()], ports: vec![80], netns: vec![7], cgroups: Vec::new() };
        assert!(f.netns_matches(7) && !f.netns_matches(8));
        assert!(f.comm_matches("haproxy") && !f.comm_matches("nginx"));
        assert!(f.port_matches(80) && !f.port_matches(81));
        let any = Filter::default();
        assert!(any.comm_matches("x") && any.port_matches(1));
    }

    /// /proc/PID/cgroup of a pod's container (cgroup v2, systemd driver), of a
    /// Docker container on cgroup v1, and as another cgroup namespace shows it.
    const POD: &str = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice/cri-containerd-9f8e.scope\n";
    const DOCKER_V1: &str = "12:memory:/docker/4d5e6f\n11:cpu,cpuacct:/docker/4d5e6f\n0::/\n";
    const RELATIVE: &str = "0::/../../kubepods-burstable-pod1a2b_3c.slice/cri-containerd-9f8e.scope\n";

    #[test]
    fn cgroup_patterns_match_a_prefix_or_a_part_of_any_hierarchys_path() {
        for (pattern, text, expected) in [
            ("/kubepods.slice", POD, true),
            ("/kubepods.slice/", POD, true),
            ("/kubepods", POD, false), // a prefix of a name is not a parent cgroup
            ("/system.slice", POD, false),
            ("pod1a2b_3c", POD, true),
            ("pod1a2b_3c", RELATIVE, true),
            ("/kubepods.slice", RELATIVE, false), // relative to another namespace: unknown
            ("docker/4d5e6f", DOCKER_V1, true),
            ("/docker", DOCKER_V1, true),
            ("/docker/4d5e6f", DOCKER_V1, true),
            ("4d5e6f", POD, false),
            ("/", DOCKER_V1, true),
            ("x", "", false),
        ] {
            assert_eq!(cgroup_matches(pattern, text), expected, "{pattern} in {text:?}");
        }
    }

    #[test]
    fn the_cgroup_filter_reads_the_process_and_matches_nothing_unreadable() {
        let mut f = Filter::default();
        assert!(f.cgroup_matches(u32::MAX), "no --cgroup: anything");
        f.cgroups = vec!["/".into()];
        assert!(f.cgroup_matches(std::process::id()));
        assert!(!f.cgroup_matches(u32::MAX), "a process that is gone matches no --cgroup");
        f.cgroups = vec!["/no-such-cgroup-anywhere".into()];
        assert!(!f.cgroup_matches(std::process::id()));
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
