//! Another writer holds the state's lock while a new generation listens: the
//! daemon waits for it, promotes once it is free, and counts the wait in its
//! metrics; under load, nothing fails.
use std::time::Duration;

use super::{TARGET, start_load};
use crate::common::{Daemon, World, answered_by, assert_no_failures, free_port, scrape};

/// The value of the sample line `name` (no labels) as a float.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn the_daemon_waits_for_a_held_lock_and_counts_the_wait() {
    use rustix::fs::{FlockOperation, flock};
    let Some(w) = World::new("hflock") else { return };
    let mut old = w.server("g0", &[TARGET]);
    let port = free_port();
    let d = Daemon::spawn(&w, &["--port", "8080", "--metrics", &port.to_string()]);
    d.promoted(&old);
    let before = scrape(port, "/metrics");
    assert_eq!(value(&before, "steer_lock_waits_total"), 0.0, "{before}");
    let running = start_load(&w, 60);
    // Another writer (this test) holds the lock while g1 starts listening.
    let dir = std::fs::File::open(&w.state_dir).expect("open the state directory");
    flock(&dir, FlockOperation::LockExclusive).expect("take the lock");
    let new = w.server("g1", &[TARGET]);
    std::thread::sleep(Duration::from_millis(600));
    let pid = format!("\"pid\":{}", new.pid());
    assert!(
        !d.log().lines().any(|l| l.contains("\"message\":\"promoted\"") && l.contains(&pid)),
        "promoted while the lock was held"
    );
    flock(&dir, FlockOperation::Unlock).expect("release the lock");
    d.promoted(&new);
    std::thread::sleep(Duration::from_millis(100));
    old.pause().expect("pause");
    old.close_listeners().expect("close");
    old.exit().expect("exit");
    old = new;
    std::thread::sleep(Duration::from_millis(200));
    let report = running.stop();
    let after = scrape(port, "/metrics");
    let (waits, seconds) =
        (value(&after, "steer_lock_waits_total"), value(&after, "steer_lock_wait_seconds_total"));
    eprintln!(
        "lock held 600 ms: {waits} waits, {seconds} s waited; {} requests, {} failed",
        report.requests,
        report.failed()
    );
    assert_no_failures(&report, "a held lock");
    assert!(waits >= 1.0, "{after}");
    assert!(seconds >= 0.4, "the daemon waited about as long as the lock was held: {after}");
    assert_eq!(value(&after, "steer_lock_timeouts_total"), 0.0, "{after}");
    let r = w.requests(TARGET, 200);
    assert_eq!(answered_by(&r, "g1"), 200);
    drop(old);
}
