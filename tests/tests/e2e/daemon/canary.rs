//! `steer daemon --canary PCT --canary-for DURATION`: each new generation gets
//! PCT % of new connections first and everything after DURATION, unless its
//! process exits, an operator's `steer rollback` ends it (also across a daemon
//! restart), or a newer generation replaces it.
use std::time::{Duration, Instant};

use steer_harness::server::TestServer;

use crate::common::{Daemon, World, answered_by, assert_no_failures};

const TARGET: &str = "127.0.0.1:8080";
const CANARY: [&str; 6] = ["--port", "8080", "--canary", "25", "--canary-for", "2s"];
const FOR: Duration = Duration::from_secs(2);
/// Requests for a share: at 25 %, 150..350 of 1000 is more than 7 standard
/// deviations (13.7) either side of 250.
const N: u64 = 1000;
const SHARE: std::ops::Range<u64> = 150..350;

/// How often the daemon logged `message` for `pid` (a whole JSON field match).
fn count(d: &Daemon, message: &str, pid: u32) -> usize {
    let (m, a, b) =
        (format!("\"message\":\"{message}"), format!("\"pid\":{pid},"), format!("\"pid\":{pid}}}"));
    d.log().lines().filter(|l| l.contains(&m) && (l.contains(&a) || l.contains(&b))).count()
}

fn logged(d: &Daemon, message: &str, pid: u32) -> bool {
    count(d, message, pid) > 0
}

/// Waits for `s`'s canary to start; returns when it did.
fn canary_started(d: &Daemon, s: &TestServer) -> Instant {
    d.wait_for(
        &["\"message\":\"canary started\"", &format!("\"pid\":{}", s.pid()), "\"weight\":25"],
        "a canary",
    );
    Instant::now()
}

/// The pids with `role` in the group on 8080.
fn roles(w: &World, role: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = w.group(8080).sockets.iter().filter(|s| s.role == role).map(|s| s.pid).collect();
    pids.dedup();
    pids
}

/// `N` requests while the canary runs; asserts they were answered before it was due.
fn during(w: &World, since: Instant) -> steer_harness::load::LoadReport {
    let r = w.requests(TARGET, N);
    assert!(
        since.elapsed() < FOR,
        "the requests outlasted the canary ({:?}); the share is not the canary's",
        since.elapsed()
    );
    assert_no_failures(&r, "during the canary");
    r
}

#[test]
fn a_new_generation_gets_its_canary_share_first_and_everything_after_the_duration() {
    let Some(w) = World::new("dcanary") else { return };
    let a = w.server("a", &[TARGET]);
    let d = Daemon::spawn(&w, &CANARY);
    // The first generation of a group has nothing to share with: promoted fully.
    d.promoted(&a);
    let b = w.server("b", &[TARGET]);
    let since = canary_started(&d, &b);
    let g = w.group(8080);
    assert_eq!(
        (g.canary_weight, roles(&w, "active"), roles(&w, "canary")),
        (25, vec![a.pid()], vec![b.pid()])
    );
    let r = during(&w, since);
    let (to_a, to_b) = (answered_by(&r, "a"), answered_by(&r, "b"));
    eprintln!("canary at 25 %: a {to_a}, b {to_b} of {N} in {:?}", since.elapsed());
    assert!(SHARE.contains(&to_b) && to_a + to_b == N, "a {to_a}, b {to_b}");
    assert!(!logged(&d, "promoted", b.pid()), "promoted before the duration:\n{}", d.log());

    let line = d.promoted(&b);
    let after = since.elapsed();
    assert!(
        after >= FOR - Duration::from_millis(50) && after < FOR + Duration::from_secs(1),
        "promoted after {after:?}: {line}"
    );
    assert!(line.contains("\"trigger\":\"canary\""), "{line}");
    let g = w.group(8080);
    assert_eq!(
        (g.canary_weight, roles(&w, "active"), roles(&w, "previous")),
        (0, vec![b.pid()], vec![a.pid()])
    );
    let r = w.requests(TARGET, 300);
    assert_no_failures(&r, "after the canary");
    assert_eq!(answered_by(&r, "b"), 300);
}

#[test]
fn a_canary_whose_process_exits_is_abandoned_and_the_active_generation_keeps_everything() {
    let Some(w) = World::new("dcanaryexit") else { return };
    let z = w.server("z", &[TARGET]);
    let a = w.server("a", &[TARGET]);
    w.promote(&z);
    w.promote(&a);
    let d = Daemon::spawn(&w, &CANARY);
    let mut b = w.server("b", &[TARGET]);
    let since = canary_started(&d, &b);
    let r = w.requests(TARGET, 200);
    assert!(answered_by(&r, "b") > 0, "b is the canary: {:?}", r.by_generation);
    let pid = b.pid();
    b.exit().expect("b exits");
    d.wait_for(
        &["canary abandoned", &format!("\"pid\":{pid}"), "its process exited"],
        "the canary abandoned",
    );
    assert!(since.elapsed() < FOR, "abandoned on the next turn, not at the completion");
    let r = w.requests(TARGET, 400);
    assert_no_failures(&r, "after the canary's process exited");
    assert_eq!(answered_by(&r, "a"), 400, "{:?}", r.by_generation);
    assert_eq!(answered_by(&r, "z"), 0, "the previous generation got nothing");

    std::thread::sleep((since + FOR + Duration::from_millis(500)).saturating_duration_since(Instant::now()));
    assert!(!logged(&d, "promoted", pid), "the exited canary was promoted:\n{}", d.log());
    assert_eq!(roles(&w, "active"), vec![a.pid()]);
    let r = w.requests(TARGET, 400);
    assert_no_failures(&r, "after the canary's duration");
    assert_eq!((answered_by(&r, "a"), answered_by(&r, "z")), (400, 0), "{:?}", r.by_generation);
}

#[test]
fn rollback_during_the_daemons_canary_ends_it_for_good_also_across_a_restart() {
    let Some(w) = World::new("dcanaryrb") else { return };
    let a = w.server("a", &[TARGET]);
    let d = Daemon::spawn(&w, &CANARY);
    d.promoted(&a);
    let b = w.server("b", &[TARGET]);
    let since = canary_started(&d, &b);
    let out = w.steer_ok(&["rollback", "--port", "8080"]);
    assert!(out.contains(&format!("ended the canary of pid {}", b.pid())), "{out}");
    // The completion finds the canary ended, and promotes nothing.
    d.wait_for(
        &["canary abandoned", &format!("\"pid\":{}", b.pid()), "operator"],
        "the completion to see the rollback",
    );
    assert!(since.elapsed() >= FOR - Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!logged(&d, "promoted", b.pid()), "{}", d.log());
    assert_eq!(count(&d, "canary started", b.pid()), 1, "not canaried again:\n{}", d.log());
    let r = w.requests(TARGET, 400);
    assert_no_failures(&r, "after the rollback");
    assert_eq!(answered_by(&r, "a"), 400, "{:?}", r.by_generation);

    // A restarted daemon leaves it so: b is not canaried again.
    drop(d);
    let d = Daemon::spawn(&w, &CANARY);
    d.wait_for(&["not adopted", &format!("\"pid\":{}", b.pid())], "the restarted daemon to yield");
    std::thread::sleep(FOR + Duration::from_millis(300));
    assert!(!logged(&d, "canary started", b.pid()) && !logged(&d, "promoted", b.pid()), "{}", d.log());
    let g = w.group(8080);
    assert_eq!((g.canary_weight, roles(&w, "active")), (0, vec![a.pid()]), "{g:?}");
    let r = w.requests(TARGET, 400);
    assert_eq!(answered_by(&r, "a"), 400, "{:?}", r.by_generation);

    // A newer generation restarts the cycle.
    let c = w.server("c", &[TARGET]);
    canary_started(&d, &c);
    d.promoted(&c);
    let r = w.requests(TARGET, 300);
    assert_eq!(answered_by(&r, "c"), 300, "{:?}", r.by_generation);
    drop((a, b, c));
}

#[test]
fn a_newer_generation_during_a_canary_replaces_it_and_the_old_one_is_never_promoted() {
    let Some(w) = World::new("dcanarynew") else { return };
    let a = w.server("a", &[TARGET]);
    let d = Daemon::spawn(&w, &CANARY);
    d.promoted(&a);
    let b = w.server("b", &[TARGET]);
    canary_started(&d, &b);
    std::thread::sleep(Duration::from_millis(500));
    let c = w.server("c", &[TARGET]);
    let since = canary_started(&d, &c);
    d.wait_for(&["canary abandoned", &format!("\"pid\":{}", b.pid()), "replaced"], "b's canary to end");
    assert_eq!((roles(&w, "active"), roles(&w, "canary")), (vec![a.pid()], vec![c.pid()]));
    let r = during(&w, since);
    let (to_a, to_b, to_c) = (answered_by(&r, "a"), answered_by(&r, "b"), answered_by(&r, "c"));
    eprintln!("c replaced b's canary: a {to_a}, b {to_b}, c {to_c} of {N}");
    assert!(SHARE.contains(&to_c) && to_b == 0 && to_a + to_c == N, "a {to_a}, b {to_b}, c {to_c}");

    d.promoted(&c);
    assert!(since.elapsed() >= FOR - Duration::from_millis(50), "c's own duration, not b's");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!logged(&d, "promoted", b.pid()), "b was promoted:\n{}", d.log());
    assert_eq!((roles(&w, "active"), roles(&w, "previous")), (vec![c.pid()], vec![a.pid()]));
    let r = w.requests(TARGET, 300);
    assert_no_failures(&r, "after c's canary");
    assert_eq!(answered_by(&r, "c"), 300, "{:?}", r.by_generation);
    drop((a, b, c));
}
