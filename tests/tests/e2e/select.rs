//! Select-only mode (`--no-migrate`, and kernels before 5.14): each group's
//! own `steer_select` program, loaded as `BPF_SK_REUSEPORT_SELECT`. It
//! steers new connections (the counters and the generation that answered
//! prove the program ran), never migrates, keeps its mode across commands,
//! and `steer reload` hands over without loss.
use crate::common::{Daemon, World, answered_by, assert_no_failures};

const TARGET: &str = "127.0.0.1:8080";
const N: u64 = 300;

/// The instance's mode as `status --json` says it.
fn mode(w: &World) -> String {
    w.status().namespaces.first().map(|n| n.mode.clone()).unwrap_or_default()
}

#[test]
fn no_migrate_steers_with_one_program_per_group_and_keeps_its_mode() {
    let Some(w) = World::new("selmode") else { return };
    let a = w.server("a", &[TARGET, "127.0.0.1:8081"]);
    let b = w.server("b", &[TARGET, "127.0.0.1:8081"]);

    let out = w.steer_ok(&["promote", &a.pid().to_string(), "--no-migrate"]);
    assert!(out.contains("promoted pid"), "{out}");
    assert_eq!(mode(&w), "select-only");
    assert_eq!(w.group_programs().len(), 2, "one program per group: {:?}", w.group_programs());
    let r = w.requests(TARGET, N);
    assert_no_failures(&r, "after promote a");
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    assert_eq!(w.counters(8080).steered_active, N, "the select program counted every connection");

    // A later promote without the flag keeps the stored mode; the kernel's
    // spread would give b about half of these.
    w.promote(&b);
    assert_eq!(mode(&w), "select-only");
    let r = w.requests(TARGET, N);
    assert_eq!(answered_by(&r, "b"), N, "{:?}", r.by_generation);
    let r = w.requests("127.0.0.1:8081", N);
    assert_eq!(answered_by(&r, "b"), N, "the other group has its own program: {:?}", r.by_generation);
    let c = w.counters(8080);
    assert_eq!((c.steered_active, c.migrated, c.migrated_by_kernel), (2 * N, 0, 0), "{c:?}");
    let rendered = w.steer_ok(&["status"]);
    assert!(rendered.contains("select-only"), "{rendered}");

    // The group's program goes with the group.
    w.steer_ok(&["detach", "--port", "8081"]);
    assert_eq!(w.group_programs().len(), 1, "{:?}", w.group_programs());
    w.steer_ok(&["detach"]);
    assert!(w.group_programs().is_empty());
    // With no group left, a promote chooses the mode afresh.
    w.promote(&a);
    assert_eq!(mode(&w), "select+migrate");
}

#[test]
fn an_old_kernel_gets_select_only_mode_by_itself() {
    let Some(w) = World::new("selauto") else { return };
    let a = w.server("a", &[TARGET]);
    let b = w.server("b", &[TARGET]);
    let old = [("STEER_KERNEL_RELEASE", "5.10.0-32-cloud-amd64")];

    let check = w.steer_env(&["check"], &old);
    let text = String::from_utf8_lossy(&check.stdout);
    let line = text.lines().find(|l| l.contains(" mode ")).unwrap_or_else(|| panic!("no mode line: {text}"));
    assert!(line.contains("select-only: kernel 5.10.0-32-cloud-amd64 is older than 5.14"), "{line}");
    assert!(text.contains("sk_reuseport (select-only) program"), "the select program was verified: {text}");
    let check = w.steer_ok(&["check"]);
    assert!(check.lines().any(|l| l.contains(" mode ") && l.contains("select+migrate")), "{check}");

    let out = w.steer_env(&["promote", &b.pid().to_string()], &old);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&w), "select-only");
    let r = w.requests(TARGET, N);
    assert_eq!(answered_by(&r, "b"), N, "{:?}", r.by_generation);
    assert_eq!(w.counters(8080).steered_active, N);
    drop(a);
}

#[test]
fn select_only_is_refused_where_the_groups_migrate() {
    let Some(w) = World::new("selrefuse") else { return };
    let a = w.server("a", &[TARGET]);
    let b = w.server("b", &[TARGET]);
    w.promote(&a);
    let before = w.status_json();
    let out = w.steer(&["promote", &b.pid().to_string(), "--no-migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    assert!(stderr.contains("steers in select+migrate mode and holds groups"), "{stderr}");
    assert!(stderr.contains("--no-migrate calls for select-only mode"), "{stderr}");
    assert_eq!(w.status_json(), before, "state changed");
}

#[test]
fn thirty_reloads_in_select_only_mode_lose_nothing_and_migrate_nothing() {
    let Some(w) = World::new("selreload") else { return };
    let first = w.server("g0", &[TARGET]);
    w.steer_ok(&["promote", &first.pid().to_string(), "--no-migrate"]);
    let report = crate::reload::thirty_handovers(&w, &first);
    // thirty_handovers asserted 0 failed and migrated 0; here, that the
    // select program steered, and the mode held through every reload.
    let c = w.counters(8080);
    eprintln!("select-only: {} ok, steered_active {}", report.ok, c.steered_active);
    assert_eq!(mode(&w), "select-only");
    assert!(c.steered_active > report.ok / 2, "{c:?} for {} requests", report.ok);
    assert_eq!(c.fallback_no_config + c.helper_error, 0, "{c:?}");
}

#[test]
fn the_daemon_promotes_in_select_only_mode() {
    let Some(w) = World::new("seldaemon") else { return };
    let a = w.server("a", &[TARGET]);
    let d = Daemon::spawn(&w, &["--port", "8080", "--no-migrate"]);
    d.promoted(&a);
    assert_eq!(mode(&w), "select-only");
    let b = w.server("b", &[TARGET]);
    d.promoted(&b);
    let r = w.requests(TARGET, N);
    assert_no_failures(&r, "after the daemon promoted b");
    assert_eq!(answered_by(&r, "b"), N, "{:?}", r.by_generation);
    assert_eq!(w.counters(8080).steered_active, N);
    assert_eq!(w.group_programs().len(), 1, "{:?}", w.group_programs());
    assert!(d.stop().success());
    drop(a);
}
