//! Which generation gets new connections: promote, rollback, canary, detach,
//! IPv6, and two ports steered independently.
use crate::common::{World, answered_by, assert_no_failures};

const N: u64 = 1000;

#[test]
fn promote_sends_every_new_connection_to_the_promoted_generation() {
    let Some(w) = World::new("promote") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);

    let out = w.promote(&b);
    assert!(out.contains("promoted pid"), "{out}");
    let r = w.requests("127.0.0.1:8080", N);
    assert_no_failures(&r, "after promote b");
    assert_eq!(answered_by(&r, "b"), N, "{:?}", r.by_generation);
    let g = w.group(8080);
    assert_eq!(g.counters.steered_active, N, "program counted every connection");
    let slot_b = g.sockets.iter().find(|s| s.pid == b.pid()).expect("b in the sockarray");
    assert_eq!((slot_b.role.as_str(), slot_b.selected), ("active", N));

    let out = w.promote(&a);
    assert!(out.contains(&format!("previous pid {}", b.pid())), "{out}");
    let r = w.requests("127.0.0.1:8080", N);
    assert_no_failures(&r, "after promote a");
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    let g = w.group(8080);
    assert_eq!(g.counters.steered_active, 2 * N);
    assert_eq!(g.counters.fallback_no_config + g.counters.fallback_empty_slot + g.counters.helper_error, 0);
    let roles: Vec<(u32, &str, u64)> =
        g.sockets.iter().map(|s| (s.pid, s.role.as_str(), s.selected)).collect();
    assert!(roles.contains(&(a.pid(), "active", N)), "{roles:?}");
    assert!(roles.contains(&(b.pid(), "previous", N)), "{roles:?}");

    // Promoting the active generation again changes nothing.
    let out = w.promote(&a);
    assert!(out.contains("already active"), "{out}");
    assert_eq!(w.group(8080).generation, g.generation);
}

/// `status --json` names the program and, while the kernel's run-time statistics are on
/// (held by a descriptor, so they end with the test), counts each connection as a run.
#[test]
fn status_reports_the_programs_run_count_and_time() {
    let Some(w) = World::new("progstats") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let program = || {
        let status = w.status();
        status.namespaces[0].program.clone().expect("status --json has the program's figures")
    };
    let before = program();
    assert!(before.id > 0, "{before:?}");

    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time statistics");
    let r = w.requests("127.0.0.1:8080", N);
    let after = program();
    drop(stats);
    assert_no_failures(&r, "with run-time statistics on");
    assert_eq!(after.id, before.id);
    assert!(after.run_count - before.run_count >= N, "{before:?} -> {after:?}");
    assert!(after.run_time_ns > before.run_time_ns, "{before:?} -> {after:?}");
}

#[test]
fn rollback_restores_the_previous_generation() {
    let Some(w) = World::new("rollback") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    w.promote(&a);
    w.promote(&b);
    let out = w.steer_ok(&["rollback"]);
    assert!(out.contains(&format!("rolled back to pid {}", a.pid())), "{out}");
    let r = w.requests("127.0.0.1:8080", N);
    assert_no_failures(&r, "after rollback");
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    let g = w.group(8080);
    let active: Vec<u32> = g.sockets.iter().filter(|s| s.role == "active").map(|s| s.pid).collect();
    assert_eq!(active, vec![a.pid()]);
    assert_eq!(g.counters.steered_active, N);
}

#[test]
fn canary_gets_its_share_and_the_rest_stays() {
    let Some(w) = World::new("canary") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    w.promote(&a);
    let out = w.steer_ok(&["promote", &b.pid().to_string(), "--weight", "20"]);
    assert!(out.contains("canary at 20%"), "{out}");
    let r = w.requests("127.0.0.1:8080", 2000);
    assert_no_failures(&r, "with a canary");
    let share = answered_by(&r, "b") as f64 / 2000.0;
    assert!((0.12..0.28).contains(&share), "canary share {share}: {:?}", r.by_generation);
    let c = w.counters(8080);
    assert_eq!(c.steered_canary, answered_by(&r, "b"));
    assert_eq!(c.steered_active, answered_by(&r, "a"));
}

#[test]
fn detach_restores_the_kernels_default_selection() {
    let Some(w) = World::new("detach") else { return };
    let _a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    w.promote(&b);
    let r = w.requests("127.0.0.1:8080", 200);
    assert_eq!(answered_by(&r, "b"), 200);
    let out = w.steer_ok(&["detach"]);
    assert!(out.contains("detached"), "{out}");
    let r = w.requests("127.0.0.1:8080", N);
    assert_no_failures(&r, "after detach");
    assert!(
        answered_by(&r, "a") > N / 10 && answered_by(&r, "b") > N / 10,
        "both generations again: {:?}",
        r.by_generation
    );
    assert!(w.status().namespaces.iter().all(|n| n.groups.is_empty()));
}

#[test]
fn ipv6_groups_are_steered() {
    let Some(w) = World::new("ipv6") else { return };
    let _a = w.server("a", &["[::1]:8443"]);
    let b = w.server("b", &["[::1]:8443"]);
    w.promote(&b);
    let r = w.requests("[::1]:8443", N);
    assert_no_failures(&r, "ipv6");
    assert_eq!(answered_by(&r, "b"), N, "{:?}", r.by_generation);
    let g = w.group(8443);
    assert_eq!(g.address, "[::1]:8443");
    assert_eq!(g.counters.steered_active, N);
}

#[test]
fn port_selects_only_its_own_group() {
    let Some(w) = World::new("twoports") else { return };
    let a = w.server("a", &["127.0.0.1:8080", "127.0.0.1:8081"]);
    let b = w.server("b", &["127.0.0.1:8080", "127.0.0.1:8081"]);
    w.steer_ok(&["promote", &b.pid().to_string(), "--port", "8080"]);
    let on_8080 = w.requests("127.0.0.1:8080", N);
    let on_8081 = w.requests("127.0.0.1:8081", N);
    assert_eq!(answered_by(&on_8080, "b"), N);
    assert!(
        answered_by(&on_8081, "a") > 0 && answered_by(&on_8081, "b") > 0,
        "8081 untouched: {:?}",
        on_8081.by_generation
    );

    w.steer_ok(&["promote", &a.pid().to_string(), "--port", "8081"]);
    let on_8080 = w.requests("127.0.0.1:8080", N);
    let on_8081 = w.requests("127.0.0.1:8081", N);
    assert_eq!(answered_by(&on_8080, "b"), N, "8080 stays on b");
    assert_eq!(answered_by(&on_8081, "a"), N, "8081 now on a");
    let programs = w.group_programs();
    assert_eq!(programs.len(), 2, "each group runs its own program: {programs:?}");

    w.steer_ok(&["detach", "--port", "8081"]);
    let groups: Vec<u16> =
        w.status().namespaces.iter().flat_map(|n| n.groups.iter().map(|g| g.port)).collect();
    assert_eq!(groups, vec![8080], "detach --port 8081 left 8080 alone");
    assert_eq!(w.group_programs().len(), 1, "the detached group's program went with it");
}

#[test]
fn several_sockets_per_generation_share_the_load() {
    let Some(w) = World::new("multi") else { return };
    let mut args = steer_harness::server::ServerArgs::new("a", [crate::common::addr("127.0.0.1:8080")]);
    args.listeners = 1;
    let _a = w.server_with(args.clone());
    args.generation = "b".to_owned();
    args.listeners = 4;
    let b = w.server_with(args);
    let out = w.promote(&b);
    assert!(out.contains("4 sockets"), "{out}");
    let r = w.requests("127.0.0.1:8080", N);
    assert_eq!(answered_by(&r, "b"), N);
    let g = w.group(8080);
    let used = g.sockets.iter().filter(|s| s.pid == b.pid() && s.selected > 0).count();
    assert_eq!(used, 4, "every socket of the generation took connections: {:?}", g.sockets);
}

#[test]
fn the_state_is_roots_alone_pins_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(w) = World::new("perms") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&w.state_dir), 0o700, "the state directory");
    let instances: Vec<_> =
        std::fs::read_dir(&w.state_dir).expect("list").flatten().map(|e| e.path()).collect();
    assert_eq!(instances.len(), 1);
    assert_eq!(mode(&instances[0]), 0o700, "the instance directory");
    for pin in std::fs::read_dir(&instances[0]).expect("list pins").flatten() {
        assert_eq!(mode(&pin.path()), 0o600, "{}", pin.path().display());
    }
}
