//! Proves the harness itself: namespaces, test servers and the load generator, without
//! steer. Each test runs in a fresh network namespace and skips unless privileged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use steer_harness::load::{self, LoadConfig, LoadReport, Protocol};
use steer_harness::netns::NetNs;
use steer_harness::require_privileges;
use steer_harness::server::{ServerArgs, TestServer};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

/// A short line-protocol run inside `ns`.
fn load_for(ns: &NetNs, target: SocketAddr, duration: Duration) -> LoadConfig {
    LoadConfig {
        concurrency: 8,
        max_duration: duration,
        timeout: Duration::from_secs(2),
        netns: Some(ns.path()),
        ..LoadConfig::new(target)
    }
}

fn served(report: &LoadReport, generation: &str) -> u64 {
    report.by_generation.get(generation).copied().unwrap_or(0)
}

#[test]
fn two_generations_share_a_port_until_one_closes() -> anyhow::Result<()> {
    if !require_privileges("two_generations_share_a_port_until_one_closes") {
        return Ok(());
    }
    let ns = NetNs::new("share")?;
    let target = addr("127.0.0.1:8080");
    let mut a = TestServer::spawn(&ns, &ServerArgs::new("a", [target]))?;
    let b = TestServer::spawn(&ns, &ServerArgs::new("b", [target]))?;
    assert_ne!(a.pid(), b.pid());

    let both = load::run(load_for(&ns, target, Duration::from_secs(1)))?;
    assert!(both.ok > 100, "{both:#?}");
    assert_eq!(both.failed(), 0, "{both:#?}");
    assert!(served(&both, "a") > 0 && served(&both, "b") > 0, "{both:#?}");
    assert_eq!(both.by_pid.keys().copied().collect::<Vec<_>>(), {
        let mut pids = vec![a.pid(), b.pid()];
        pids.sort_unstable();
        pids
    });

    a.pause()?;
    a.close_listeners()?;
    let only_b = load::run(load_for(&ns, target, Duration::from_secs(1)))?;
    assert!(only_b.ok > 100, "{only_b:#?}");
    assert_eq!(only_b.failed(), 0, "{only_b:#?}");
    assert_eq!(only_b.ok, served(&only_b, "b"), "{only_b:#?}");
    a.exit()?;
    Ok(())
}

/// The problem steer solves, reproduced: closing a listener whose accept queue holds
/// connections resets them, unless the kernel migrates them (`tcp_migrate_req=1`).
#[test]
fn closing_a_full_accept_queue_resets_unless_migrated() -> anyhow::Result<()> {
    if !require_privileges("closing_a_full_accept_queue_resets_unless_migrated") {
        return Ok(());
    }
    for migrate in [false, true] {
        let ns = NetNs::new(if migrate { "migrate" } else { "reset" })?;
        ns.set_sysctl("net.ipv4.tcp_migrate_req", if migrate { "1" } else { "0" })?;
        let target = addr("127.0.0.1:8080");
        let mut old =
            TestServer::spawn(&ns, &ServerArgs { paused: true, ..ServerArgs::new("old", [target]) })?;
        let _new = TestServer::spawn(&ns, &ServerArgs::new("new", [target]))?;

        let running = load::start(load_for(&ns, target, Duration::from_secs(5)))?;
        // Every worker soon waits on a connection queued at the paused old server.
        wait_until_stalled(&running, Duration::from_secs(3));
        old.close_listeners()?;
        std::thread::sleep(Duration::from_millis(200));
        let report = running.stop();

        assert_eq!(served(&report, "old"), 0, "{report:#?}");
        assert!(served(&report, "new") > 0, "{report:#?}");
        if migrate {
            assert_eq!(report.failed(), 0, "migrated, yet: {report:#?}");
        } else {
            assert!(report.resets > 0, "closed a full queue, yet: {report:#?}");
            assert_eq!(report.failed(), report.resets, "{report:#?}");
        }
    }
    Ok(())
}

/// Waits until no request has finished for 100 ms (all workers stuck), or `limit`.
fn wait_until_stalled(load: &load::LoadHandle, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = load.snapshot().requests;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = load.snapshot().requests;
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
}

#[test]
fn http_over_ipv6_with_several_listeners() -> anyhow::Result<()> {
    if !require_privileges("http_over_ipv6_with_several_listeners") {
        return Ok(());
    }
    let ns = NetNs::new("http6")?;
    let target = addr("[::1]:8081");
    let args = ServerArgs { http: true, listeners: 3, ..ServerArgs::new("h", [target]) };
    let server = TestServer::spawn(&ns, &args)?;

    let report = load::run(LoadConfig {
        protocol: Protocol::Http,
        max_requests: Some(300),
        ..load_for(&ns, target, Duration::from_secs(5))
    })?;
    assert_eq!((report.requests, report.ok), (300, 300), "{report:#?}");
    assert_eq!(report.by_pid.get(&server.pid()), Some(&300), "{report:#?}");

    // Without SO_REUSEPORT a second server cannot join the group.
    let refused =
        TestServer::spawn(&ns, &ServerArgs { no_reuseport: true, ..ServerArgs::new("x", [target]) });
    assert!(refused.is_err(), "bound without SO_REUSEPORT next to a reuseport group");
    Ok(())
}
