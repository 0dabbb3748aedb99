//! `steer daemon --ready-cmd CMD --ready-timeout D`: a new generation gets no
//! new connection until CMD says it is ready (its own count of accepted
//! connections proves it), the daemon restarted meanwhile waits again (and,
//! restarted later, adopts the active generation without a check), a
//! generation never ready is never promoted while the old one keeps serving
//! under load, and an operator's `steer rollback` while one waits wins.
use std::{path::PathBuf, time::Duration};

use steer_harness::{
    haproxy::{Haproxy, Mode as HaproxyMode},
    load,
    server::TestServer,
};

use crate::common::{Daemon, World, answered_by, assert_no_failures, free_port, metric, scrape};

const TARGET: &str = "127.0.0.1:8080";

/// A directory of ready markers: a generation is ready once `ready-PID` exists.
struct Markers(PathBuf);

impl Markers {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hready-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the markers' directory");
        Self(dir)
    }

    /// `--ready-cmd`: ready once the marker of `$STEER_PID` exists.
    fn cmd(&self) -> String {
        format!("test -e {}/ready-$STEER_PID", self.0.display())
    }

    fn ready(&self, s: &TestServer) {
        std::fs::write(self.0.join(format!("ready-{}", s.pid())), b"").expect("write a ready marker");
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn waiting(d: &Daemon, s: &TestServer) {
    d.wait_for(&["waiting for readiness", &format!("\"pid\":{}", s.pid())], "a wait for readiness");
}

/// `steer daemon --port 8080` gated by `m`, with a `--ready-timeout` of 60 s.
fn gated(w: &World, m: &Markers) -> Daemon {
    let cmd = m.cmd();
    Daemon::spawn(w, &["--port", "8080", "--ready-cmd", &cmd, "--ready-timeout", "60s"])
}

/// A world whose generation `a`, made ready, a [`gated`] daemon has promoted; `None`
/// when privileged tests cannot run here.
fn a_promoted(test: &str, markers: &str) -> Option<(World, Markers, TestServer, Daemon)> {
    let w = World::new(test)?;
    let m = Markers::new(markers);
    let a = w.server("a", &[TARGET]);
    m.ready(&a);
    let d = gated(&w, &m);
    d.promoted(&a);
    Some((w, m, a, d))
}

#[test]
fn a_generation_gets_no_connection_before_it_is_ready_even_across_a_daemon_restart() {
    let Some((w, m, _a, d)) = a_promoted("hreadyok", "ok") else { return };
    let mut b = w.server("b", &[TARGET]);
    waiting(&d, &b);
    let r = w.requests(TARGET, 1000);
    assert_no_failures(&r, "while b waits");
    assert_eq!(answered_by(&r, "a"), 1000, "a serves while b is not ready");

    // Restarted while b waits: the new daemon waits for b too.
    assert!(d.stop().success());
    let d = gated(&w, &m);
    waiting(&d, &b);
    let r = w.requests(TARGET, 500);
    assert_eq!(answered_by(&r, "a"), 500, "a serves while b is not ready, after the restart");
    let before = b.accepted().expect("b's count");
    assert!(d.log().lines().all(|l| !l.contains("\"message\":\"promoted\"")), "{}", d.log());
    eprintln!("b accepted {before} connections before its promotion");
    assert_eq!(before, 0, "b accepted connections before it was ready");

    m.ready(&b);
    let line = d.wait_for(&["\"message\":\"ready\"", &format!("\"pid\":{}", b.pid())], "b ready");
    assert!(line.contains("checks"), "{line}");
    d.promoted(&b);
    let r = w.requests(TARGET, 500);
    assert_no_failures(&r, "after b is ready");
    assert_eq!(answered_by(&r, "b"), 500);
    assert!(w.counters(8080).steered_active >= 2000, "the program steered: {:?}", w.counters(8080));

    // Restarted once b is active: it is adopted as it is, with no check (its marker is gone).
    assert!(d.stop().success());
    std::fs::remove_file(m.0.join(format!("ready-{}", b.pid()))).expect("remove b's marker");
    let d = gated(&w, &m);
    d.wait_for(&["already active", &format!("\"pid\":{}", b.pid())], "b adopted as it is");
    assert!(!d.log().contains("waiting for readiness"), "{}", d.log());
}

#[test]
fn a_generation_never_ready_is_not_promoted_and_the_old_one_serves_on_under_load() {
    let Some(w) = World::new("hreadynever") else { return };
    let m = Markers::new("never");
    let (cmd, port) = (m.cmd(), free_port());
    let metrics = format!("127.0.0.1:{port}");
    let a = w.server("a", &[TARGET]);
    m.ready(&a);
    let d = Daemon::spawn(
        &w,
        &["--port", "8080", "--ready-cmd", &cmd, "--ready-timeout", "1500ms", "--metrics", &metrics],
    );
    d.promoted(&a);
    let mut cfg = w.load_config(TARGET);
    cfg.concurrency = 8;
    cfg.max_duration = Duration::from_secs(60);
    let running = load::start(cfg).expect("start load");
    std::thread::sleep(Duration::from_millis(200));
    let mut b = w.server("b", &[TARGET]);
    let line =
        d.wait_for(&["not ready within --ready-timeout", &format!("\"pid\":{}", b.pid())], "b's timeout");
    assert!(line.contains("\"reason\":\"`test -e"), "the reason is logged: {line}");
    std::thread::sleep(Duration::from_millis(300));
    let report = running.stop();
    eprintln!(
        "never ready: {} requests, {} failed, a {}, b {}",
        report.requests,
        report.failed(),
        answered_by(&report, "a"),
        answered_by(&report, "b")
    );
    assert_no_failures(&report, "a generation that is never ready");
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(answered_by(&report, "a"), report.requests, "a served every request");
    assert_eq!(b.accepted().expect("b's count"), 0);
    assert_eq!(metric(&scrape(port, "/metrics"), "steer_daemon_not_ready_total"), 1);
    let b_pid = format!("\"pid\":{},", b.pid());
    assert!(
        !d.log().lines().any(|l| l.contains("\"message\":\"promoted\"") && l.contains(&b_pid)),
        "{}",
        d.log()
    );
    let g = w.group(8080);
    assert!(g.sockets.iter().all(|s| s.pid != b.pid() || s.role != "active"), "{g:?}");
}

#[test]
fn an_operators_rollback_while_a_generation_waits_wins_also_across_a_restart() {
    let Some((w, m, _a, d)) = a_promoted("hreadyop", "op") else { return };
    let b = w.server("b", &[TARGET]);
    m.ready(&b);
    d.promoted(&b);
    let c = w.server("c", &[TARGET]);
    waiting(&d, &c);
    // The wait is logged just before the daemon reads the group's state it
    // compares against; the operator comes well after.
    std::thread::sleep(Duration::from_millis(300));
    w.steer_ok(&["rollback", "--port", "8080"]);
    m.ready(&c);
    d.wait_for(
        &["an operator's command set this group while it waited", &format!("\"pid\":{}", c.pid())],
        "the daemon to give way",
    );
    let r = w.requests(TARGET, 500);
    assert_no_failures(&r, "after the rollback");
    assert_eq!(answered_by(&r, "a"), 500, "the rollback holds");

    // A restarted daemon leaves it as the operator set it, though c is newest and ready.
    assert!(d.stop().success());
    let d = gated(&w, &m);
    d.wait_for(&["not adopted", &format!("\"pid\":{}", c.pid())], "the restarted daemon to yield");
    let r = w.requests(TARGET, 500);
    assert_eq!(answered_by(&r, "a"), 500, "the rollback holds across a restart");
    drop(b);
}

#[test]
fn with_a_canary_the_gate_comes_first_then_the_canary_then_everything() {
    let Some(w) = World::new("hreadycanary") else { return };
    let m = Markers::new("canary");
    let cmd = m.cmd();
    let a = w.server("a", &[TARGET]);
    m.ready(&a);
    let d =
        Daemon::spawn(&w, &["--port", "8080", "--ready-cmd", &cmd, "--canary", "25", "--canary-for", "1s"]);
    d.promoted(&a);
    let mut b = w.server("b", &[TARGET]);
    waiting(&d, &b);
    let r = w.requests(TARGET, 500);
    assert_eq!(answered_by(&r, "a"), 500, "no canary share before b is ready");
    assert_eq!(b.accepted().expect("b's count"), 0);
    m.ready(&b);
    d.wait_for(&["\"message\":\"canary started\"", &format!("\"pid\":{}", b.pid())], "b's canary");
    let g = w.group(8080);
    assert_eq!(g.canary_weight, 25, "{g:?}");
    d.promoted(&b);
    let r = w.requests(TARGET, 300);
    assert_no_failures(&r, "after the canary");
    assert_eq!(answered_by(&r, "b"), 300);
}

/// HAProxy `-D` listens, forks the process that serves, and exits: the wait
/// follows it to that child. Reloaded without `-sf`, the old HAProxy keeps
/// its listener, so the gate can hold the new one back.
#[test]
fn haproxy_started_without_sf_waits_for_the_gate_through_its_daemonising_fork() {
    let Some(w) = World::new("hreadyhap") else { return };
    let m = Markers::new("hap");
    let mut hap = Haproxy::start(&w.ns, &m.0, HaproxyMode::Daemon, 8080).expect("start haproxy -D");
    let open = m.0.join("open");
    std::fs::write(&open, b"").expect("open the gate");
    let cmd = format!("test -e {}", open.display());
    let d = Daemon::spawn(&w, &["--port", "8080", "--ready-cmd", &cmd, "--ready-timeout", "60s"]);
    d.promoted_pid(hap.pid());
    std::fs::remove_file(&open).expect("close the gate");
    let old = hap.pid();
    let status = hap.next_generation().expect("next config").status().expect("run haproxy -D");
    assert!(status.success(), "haproxy -D exited {status}");
    let pidfile = m.0.join("haproxy.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        let pid = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok());
        match pid {
            Some(pid) if pid != old => break pid,
            _ => assert!(std::time::Instant::now() < deadline, "no new pid in {}", pidfile.display()),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    hap.adopt(new);
    d.wait_for(&["waiting for readiness", &format!("\"pid\":{new}")], "the serving child's wait");
    let handed = d.log().contains("its process left; the port's newest holder is taken instead");
    eprintln!("haproxy -D: the wait began with the listening parent and moved to the child: {handed}");
    let http = |n: u64| {
        let mut cfg = w.load_config(TARGET);
        (cfg.protocol, cfg.max_requests) = (load::Protocol::Http, Some(n));
        load::run(cfg).expect("HTTP requests")
    };
    let r = http(300);
    assert_no_failures(&r, "while the new HAProxy waits");
    assert_eq!(answered_by(&r, "g0"), 300, "{:?}", r.by_generation);
    std::fs::write(&open, b"").expect("open the gate");
    d.promoted_pid(new);
    let r = http(300);
    assert_no_failures(&r, "after the gate");
    assert_eq!(answered_by(&r, "g1"), 300, "{:?}", r.by_generation);
}
