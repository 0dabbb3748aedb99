//! Unit tests of `daemon/filter.rs`.
use super::*;

#[test]
fn filters_combine() {
    let f = Filter { comms: vec!["haproxy".into()], ports: vec![80], netns: vec![7], cgroups: Vec::new() };
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
