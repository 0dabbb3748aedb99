//! Which processes the daemon may act on: `--comm`, `--port`, `--netns` and
//! `--cgroup`, and the rule that joins them.
use std::fs;

use crate::proc::Process;

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
}
