//! Stop-then-start: the server stops (its last listener closes and the group
//! is gone), then a new one starts on the same port. Nothing can serve the gap
//! (README, limitations); steer promises not to make it worse (no client hangs
//! on a socket it holds), to adopt and steer the new group, and that nothing
//! fails once the new generation listens.
use std::time::{Duration, Instant};

use super::{TARGET, start_load};
use crate::common::{Daemon, World, answered_by};

#[test]
fn stop_then_start_fails_only_in_the_gap_and_the_new_group_is_steered() {
    let Some(w) = World::new("hfstop") else { return };
    let mut old = w.server("a0", &[TARGET]);
    let d = Daemon::spawn(&w, &["--port", "8080"]);
    d.promoted(&old);
    let running = start_load(&w, 120);
    let handover = |old: &mut steer_harness::server::TestServer, name: &str| {
        let new = w.server(name, &[TARGET]);
        d.promoted(&new);
        std::thread::sleep(Duration::from_millis(100));
        old.pause().expect("pause");
        old.close_listeners().expect("close");
        old.exit().expect("exit");
        new
    };
    // Reloads with a successor, before the stop.
    for i in 1..=5 {
        old = handover(&mut old, &format!("a{i}"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before_gap = running.snapshot();
    let counters_before = w.counters(8080);
    // Stop: the server stops accepting, its last listener closes (what it
    // had queued is reset: there is no other listener to migrate it to) and
    // it exits; nothing listens.
    old.pause().expect("pause");
    old.close_listeners().expect("close");
    old.exit().expect("exit");
    let gap = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    // Start: a new server on the same port, a new group without a program.
    let mut old = w.server("b0", &[TARGET]);
    d.promoted(&old);
    let gap = gap.elapsed();
    // The first load ends here; a fresh one runs through the reloads after the start.
    let first = running.stop();
    let running = start_load(&w, 120);
    for i in 1..=5 {
        old = handover(&mut old, &format!("b{i}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = running.stop();
    let in_gap = first.failed() - before_gap.failed();
    eprintln!(
        "stop-then-start: before the gap {} requests {} failed; the gap ({gap:?}) {in_gap} failed \
         (connect {}, resets {}, timeouts {}); after it {} requests {} failed",
        before_gap.requests,
        before_gap.failed(),
        first.connect_errors - before_gap.connect_errors,
        first.resets - before_gap.resets,
        first.timeouts,
        after.requests,
        after.failed()
    );
    assert_eq!(before_gap.failed(), 0, "before the stop: {before_gap:#?}");
    // In the gap: refused connects, and the resets of what the closing
    // listener had queued with no one to migrate it to; no client hangs.
    assert!(in_gap > 0, "the gap is real: {first:#?}");
    assert_eq!(first.failed(), first.connect_errors + first.resets, "refused or reset only: {first:#?}");
    assert_eq!(
        after.failed(),
        0,
        "after the new generation was promoted: {after:#?}\ncounters {:?}\ndaemon log:\n{}",
        w.counters(8080),
        d.log()
    );
    // The new group was adopted and steered by the daemon (the dead group's
    // configuration and counters were collected by its upkeep meanwhile).
    let c = w.counters(8080);
    assert!(c.steered_active > after.requests / 2, "the new group is steered: {c:?}");
    assert!(counters_before.steered_active > before_gap.requests / 2, "the old one was: {counters_before:?}");
    let r = w.requests(TARGET, 300);
    assert_eq!(answered_by(&r, "b5"), 300);
    drop(d);
}
