//! `steer daemon` end to end: it promotes each new generation by itself, leaves
//! steering in place when stopped, adopts state when restarted, re-attaches a
//! group that formed again, reclaims slots, and serves metrics that agree with
//! `steer status --json`. Each daemon is scoped to its test's namespace.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use steer_harness::{load, server::TestServer};

use crate::common::{World, answered_by, assert_no_failures, steer_cmd};

/// A running `steer daemon` whose JSON log is collected.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(w: &World, args: &[&str]) -> Daemon {
        let ns = w.ns.path();
        let mut full = vec!["daemon", "--log-format", "json", "--netns", ns.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        let mut child = steer_cmd(&w.state_dir, &full)
            .env("RUST_LOG", "steer=debug")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn steer daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push_str(&(line + "\n"));
            }
        });
        let d = Daemon { child, log };
        d.wait_for(&["\"message\":\"watching\""], "the daemon to start watching");
        d
    }

    /// Waits (10 s at most) for a log line containing every needle.
    fn wait_for(&self, needles: &[&str], what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) =
                self.log.lock().expect("log lock").lines().find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn promoted(&self, server: &TestServer) -> String {
        let pid = format!("\"pid\":{}", server.pid());
        self.wait_for(&["\"message\":\"promoted\"", &pid], &format!("promotion of {}", server.generation()))
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait daemon") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn daemon_promotes_each_new_generation_and_survives_a_restart() {
    let Some(w) = World::new("dnewest") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let d = Daemon::spawn(&w, &["--port", "8080"]);
    d.promoted(&a); // adopted at start
    assert!(d.log().contains("\"source\":\"tracepoint\""), "event source logged: {}", d.log());
    let b = w.server("b", &["127.0.0.1:8080"]);
    let line = d.promoted(&b);
    assert!(line.contains("latency_us"), "{line}");
    let r = w.requests("127.0.0.1:8080", 1000);
    assert_no_failures(&r, "after the daemon promoted b");
    assert_eq!(answered_by(&r, "b"), 1000);
    let generation = w.group(8080).generation;

    // Stopping the daemon changes nothing for traffic.
    let status = d.stop();
    assert!(status.success(), "daemon exit status {status}");
    let r = w.requests("127.0.0.1:8080", 500);
    assert_eq!(answered_by(&r, "b"), 500, "steering stays after SIGTERM");

    // A restarted daemon adopts: b is already active, nothing churns.
    let d = Daemon::spawn(&w, &["--port", "8080"]);
    d.wait_for(&["already active", &format!("\"pid\":{}", b.pid())], "adoption of b");
    assert_eq!(w.group(8080).generation, generation, "no churn on restart");
    drop(a);
}

#[test]
fn handovers_under_load_with_the_daemon_lose_nothing() {
    let Some(w) = World::new("dhandover") else { return };
    let mut old = w.server("g0", &["127.0.0.1:8080"]);
    let d = Daemon::spawn(&w, &["--port", "8080"]);
    d.promoted(&old);
    let mut cfg = w.load_config("127.0.0.1:8080");
    cfg.concurrency = 16;
    cfg.max_duration = Duration::from_secs(120);
    let running = load::start(cfg).expect("start load");
    for i in 1..=30 {
        let new = w.server(&format!("g{i}"), &["127.0.0.1:8080"]);
        old.pause().expect("pause");
        d.promoted(&new);
        std::thread::sleep(Duration::from_millis(20));
        old.close_listeners().expect("close old listener");
        old.exit().expect("exit old");
        old = new;
    }
    let report = running.stop();
    let c = w.counters(8080);
    eprintln!(
        "30 daemon handovers: {} requests, {} failed, {} migrated",
        report.requests,
        report.failed(),
        c.migrated
    );
    assert_no_failures(&report, "daemon handovers");
    assert!(c.migrated > 0, "queued connections migrated: {c:?}");
    assert!(w.group(8080).sockets.len() <= 2, "slots reclaimed: {:?}", w.group(8080).sockets);
}

#[test]
fn manual_policy_reports_but_does_not_promote() {
    let Some(w) = World::new("dmanual") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let d = Daemon::spawn(&w, &["--port", "8080", "--policy", "manual"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    d.wait_for(&["not promoted", &format!("\"pid\":{}", b.pid())], "the report about b");
    let r = w.requests("127.0.0.1:8080", 500);
    assert_eq!(answered_by(&r, "a"), 500, "a stays active under manual");
}

#[test]
fn a_group_that_forms_again_is_steered_again() {
    let Some(w) = World::new("dreform") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let d = Daemon::spawn(&w, &["--port", "8080", "--source", "poll", "--poll-interval", "20"]);
    assert!(d.log().contains("\"source\":\"poll\""), "{}", d.log());
    d.promoted(&a);
    drop(a); // stop: the group dies with its last member
    std::thread::sleep(Duration::from_millis(100));
    let b = w.server("b", &["127.0.0.1:8080"]);
    let c = w.server("c", &["127.0.0.1:8080"]);
    d.promoted(&c);
    let r = w.requests("127.0.0.1:8080", 500);
    assert_eq!(answered_by(&r, "c"), 500, "the new group has the program and c is active");
    assert!(w.counters(8080).steered_active >= 500);
    drop(b);
}

/// A free port on 127.0.0.1 of the test's own namespace (the daemon's).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn scrape(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}")) as u64
}

#[test]
fn metrics_agree_with_status() {
    let Some(w) = World::new("dmetrics") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::spawn(&w, &["--port", "8080", "--metrics", &addr]);
    d.promoted(&a);
    let b = w.server("b", &["127.0.0.1:8080"]);
    d.promoted(&b);
    w.requests("127.0.0.1:8080", 700);
    assert!(scrape(port, "/healthz").ends_with("ok\n"));
    let text = scrape(port, "/metrics");
    let status = w.status();
    let ns = status.namespaces[0].netns;
    let g = &status.namespaces[0].groups[0];
    let labels = format!("{{netns=\"{ns}\",group=\"127.0.0.1:8080\"");
    assert_eq!(
        metric(&text, &format!("steer_connections_total{labels},path=\"steered_active\"}}")),
        g.counters.steered_active
    );
    assert_eq!(metric(&text, &format!("steer_active_pid{labels}}}")), u64::from(b.pid()));
    assert_eq!(metric(&text, "steer_promotions_total{group=\"127.0.0.1:8080\"}"), 2);
    assert!(text.contains("steer_kernel_tcp_migrate_req_total{result=\"success\"}"));
    assert!(text.contains("steer_daemon_uptime_seconds"));
}
