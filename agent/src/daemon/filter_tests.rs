//! Unit tests of `daemon/filter.rs`.
use super::*;

#[test]
fn filters_combine() {
    let f = Filter { comms: vec!["haproxy".into()], ports: vec![80], netns: vec![7], ..Filter::default() };
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

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
# a comment:x:1:1
haproxy:x:108:113::/var/lib/haproxy:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
broken:x:notanumber:1::/:/bin/sh
short:x
";

#[test]
fn users_are_uids_or_names_read_from_etc_passwd() {
    for (user, expected) in [
        ("0", Ok(0)),
        ("65534", Ok(65534)),
        ("root", Ok(0)),
        ("haproxy", Ok(108)),
        ("nobody", Ok(65534)),
        ("hap", Err(())),         // a prefix of a name is not the name
        ("broken", Err(())),      // no number where the uid goes
        ("short", Err(())),       // a truncated line
        ("# a comment", Err(())), // comments are not users
        ("", Err(())),
    ] {
        assert_eq!(resolve_user(user, PASSWD).map_err(|_| ()), expected, "{user:?}");
    }
    let err = resolve_user("nosuch", "").unwrap_err();
    assert!(err.contains("--user nosuch") && err.contains("numeric uid"), "{err}");
}

#[test]
fn the_uid_rule_needs_every_uid_of_the_process_to_be_named() {
    let status = "Name:\thaproxy\nUmask:\t0022\nUid:\t108\t108\t108\t108\nGid:\t113\t113\t113\t113\n";
    assert_eq!(status_uids(status), Some([108; 4]));
    assert_eq!(status_uids("Name:\tx\n"), None);
    assert_eq!(status_uids("Uid:\t1\t2\n"), None);
    let f = |users: &[u32]| Filter { users: users.to_vec(), ..Filter::default() };
    for (users, uids, expected) in [
        (&[][..], [1000, 1000, 1000, 1000], true), // no --user: any
        (&[108][..], [108, 108, 108, 108], true),
        (&[0][..], [65534, 65534, 65534, 65534], false),
        (&[108][..], [108, 0, 108, 108], false), // effective root is not uid 108
        (&[0][..], [108, 108, 0, 108], false),   // nor is a saved root uid 0 alone
        (&[0, 108][..], [108, 108, 0, 108], true),
    ] {
        assert_eq!(f(users).uids_match(uids), expected, "{users:?} {uids:?}");
    }
}

#[test]
fn each_rule_is_checked_against_the_process_itself() {
    let me = std::process::id();
    let uid = status_uids(&fs::read_to_string("/proc/self/status").unwrap()).unwrap();
    assert_eq!(Filter::default().verify(me), Ok(()), "no rule given: anything");
    let users = |u: u32| Filter { users: vec![u], ..Filter::default() };
    assert_eq!(users(uid[0]).verify(me), Ok(()));
    let other = uid[1].wrapping_add(4242);
    assert_eq!(users(other).verify(me), Err(Mismatch::User(Some(uid[1]))));
    assert_eq!(users(uid[0]).verify(u32::MAX), Err(Mismatch::User(None)), "gone: no match");

    let own = ns_inode("self", "user").unwrap();
    let userns = |ino: u64| Filter { user_namespace: Some(ino), ..Filter::default() };
    assert_eq!(userns(own).verify(me), Ok(()));
    assert_eq!(userns(own + 1).verify(me), Err(Mismatch::UserNamespace));

    let exe = |path: &str| Filter { exes: vec![Exe::open(path.into()).unwrap()], ..Filter::default() };
    let mine = fs::canonicalize("/proc/self/exe").unwrap();
    assert_eq!(exe(mine.to_str().unwrap()).verify(me), Ok(()));
    assert_eq!(exe("/proc/self/exe").verify(me), Ok(()), "a path is followed to its file");
    assert_eq!(exe("/").verify(me), Err(Mismatch::Exe));
    assert!(Exe::open("/no/such/exe".into()).is_err());

    let cgroup = Filter { cgroups: vec!["/no-such-cgroup-anywhere".into()], ..Filter::default() };
    assert_eq!(cgroup.verify(me), Err(Mismatch::Cgroup));
    // Cheapest first: the uid decides before the cgroup is read.
    let both = Filter { users: vec![other], ..cgroup };
    assert_eq!(both.verify(me), Err(Mismatch::User(Some(uid[1]))));
}

#[test]
fn an_upgraded_executable_matches_in_its_old_and_its_new_version() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = std::env::temp_dir().join(format!("steer-exe-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server");
    fs::write(&path, "v1").unwrap();
    let exe = Exe::open(path.clone()).unwrap();
    let old = exe.id;
    // An upgrade writes a new file and renames it over the old one.
    fs::write(dir.join("server.new"), "v2").unwrap();
    fs::rename(dir.join("server.new"), &path).unwrap();
    let new = fs::metadata(&path).map(|m| (m.dev(), m.ino())).unwrap();
    assert_ne!(old, new);
    assert!(exe.matches(old) && exe.matches(new));
    assert!(!exe.matches((old.0, 1)));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_daemon_needs_a_rule_that_verifies_a_process_or_an_explicit_any_process() {
    let named = |f: fn(&mut Named)| {
        let mut n = Named { comms: vec!["haproxy".into()], ..Named::default() };
        f(&mut n);
        n.resolve()
    };
    let err = named(|_| {}).unwrap_err();
    assert!(matches!(err, NamedError::NothingVerified));
    let text = err.to_string();
    for flag in ["--user", "--exe", "--cgroup", "--any-process", "--comm proves nothing"] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
    assert!(named(|n| n.users = vec!["0".into()]).is_ok());
    assert!(named(|n| n.exes = vec!["/proc/self/exe".into()]).is_ok());
    assert!(named(|n| n.cgroups = vec!["/".into()]).is_ok());
    assert!(named(|n| n.any_process = true).is_ok());
    assert!(matches!(named(|n| n.exes = vec!["/no/such/server".into()]), Err(NamedError::Exe { .. })));
}

#[test]
fn namespaces_default_to_the_daemons_own_and_all_is_said_alone() {
    let resolve = |netns: &[&str], user_namespaces: bool| {
        Named {
            ports: vec![80],
            any_process: true,
            netns: netns.iter().map(PathBuf::from).collect(),
            user_namespaces,
            ..Named::default()
        }
        .resolve()
    };
    let own = ns_inode("self", "net").unwrap();
    let f = resolve(&[], false).unwrap();
    assert_eq!(f.netns, vec![own], "the daemon's own network namespace");
    assert_eq!(f.user_namespace, initial_user_namespace().map(|(i, _)| i));
    assert!(resolve(&["all"], false).unwrap().netns.is_empty(), "all: every one");
    assert_eq!(resolve(&["/proc/self/ns/net"], false).unwrap().netns, vec![own]);
    assert!(matches!(resolve(&["all", "/proc/self/ns/net"], false), Err(NamedError::NetnsAllWithPaths)));
    assert!(matches!(resolve(&["/no/such/netns"], false), Err(NamedError::Netns { .. })));
    assert_eq!(resolve(&[], true).unwrap().user_namespace, None, "--user-namespaces: any");
}

/// Every rule a process can fail is a label the metric exports from 0.
#[test]
fn every_rule_is_an_exported_label() {
    for m in [Mismatch::User(None), Mismatch::UserNamespace, Mismatch::Exe, Mismatch::Cgroup] {
        assert!(crate::metrics::UNTRUSTED_RULES.contains(&m.rule()), "{m:?}");
    }
}
