//! `steer reload`: start the new generation, wait for its listeners and its
//! readiness, promote it, let the old one drain, then signal it. Handovers under
//! load lose nothing and leave the program nothing to migrate; a generation that
//! is not ready gets no connection; every refusal changes nothing.
use std::{
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use steer_harness::{
    haproxy::render_config,
    load::{self, Protocol},
    procfs::{listening_inodes, read_pidfile},
    server::{self, ServerArgs},
};

use crate::common::{World, addr, answered_by, assert_no_failures, steer_cmd};

const PORT: u16 = 8080;
const TARGET: &str = "127.0.0.1:8080";

/// A `steer reload` running in the background, its output going to files: the
/// new generation inherits steer's stdout and stderr, so a pipe would stay open
/// as long as it runs.
struct Reload {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    /// The new generation's stdin (steer's, inherited): the test server exits at
    /// its EOF, so it is kept open for as long as the generation should live.
    stdin: Option<ChildStdin>,
}

/// What a finished `steer reload` said.
struct Done {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    stdin: Option<ChildStdin>,
}

impl Done {
    /// The pid on the report's `new generation: pid N (...)` line.
    fn new_pid(&self) -> u32 {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("new generation: pid "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no new pid in {:?}", self.stdout))
    }

    fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "steer reload failed ({}): {}{}",
            self.status,
            self.stderr,
            self.stdout
        );
    }

    /// Exit 1 and one sentence on stderr containing `needle`.
    fn assert_refused(&self, needle: &str) {
        assert_eq!(self.status.code(), Some(1), "stdout {:?} stderr {:?}", self.stdout, self.stderr);
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "one sentence: {:?}", self.stderr);
        assert!(self.stderr.contains(needle), "{needle:?} not in {:?}", self.stderr);
    }
}

fn start(w: &World, args: &[String], piped_stdin: bool) -> Reload {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = format!("/tmp/{}-reload-{n}", w.ns.name());
    let (out, err) = (PathBuf::from(format!("{base}.out")), PathBuf::from(format!("{base}.err")));
    let mut full = vec!["reload"];
    full.extend(args.iter().map(String::as_str));
    let mut child = steer_cmd(&w.state_dir, &full)
        .stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn steer reload");
    let stdin = child.stdin.take();
    Reload { child, out, err, stdin }
}

impl Reload {
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn wait(mut self, timeout: Duration) -> Done {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("steer reload still running after {timeout:?}: {}", read(&self.err));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let done =
            Done { status, stdout: read(&self.out), stderr: read(&self.err), stdin: self.stdin.take() };
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
        done
    }
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn run(w: &World, args: &[String], piped_stdin: bool) -> Done {
    start(w, args, piped_stdin).wait(Duration::from_secs(60))
}

/// `--old PID [extra...] -- ip netns exec NS steer-testserver ARGS...`
fn reload_args(w: &World, old: u32, extra: &[&str], server: &ServerArgs) -> Vec<String> {
    let bin = server::bin_path("steer-testserver").expect("steer-testserver is built");
    let mut args = vec!["--old".to_owned(), old.to_string()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(["--", "ip", "netns", "exec", w.ns.name()].map(str::to_owned));
    args.push(bin.display().to_string());
    args.extend(server.to_args());
    args
}

fn gen_args(generation: &str) -> ServerArgs {
    ServerArgs::new(generation, [addr(TARGET)])
}

/// The process of the namespace, other than `except`, that listens on `port`.
fn listener_pid(w: &World, port: u16, except: &[u32]) -> Option<u32> {
    w.ns.pids().ok()?.into_iter().find(|p| !except.contains(p) && !listening_inodes(*p, port).is_empty())
}

#[test]
fn thirty_handovers_under_load_lose_nothing_and_migrate_nothing() {
    let Some(w) = World::new("reload") else { return };
    let first = w.server("g0", &[TARGET]);
    w.promote(&first);
    let _ = thirty_handovers(&w, &first);
}

/// 30 `steer reload`s under 16 clients from `first` (promoted), each asserted
/// to lose nothing, drain before the signal and leave nothing to migrate.
pub(crate) fn thirty_handovers(w: &World, first: &server::TestServer) -> load::LoadReport {
    const HANDOVERS: usize = 30;
    let mut cfg = w.load_config(TARGET);
    cfg.concurrency = 16;
    cfg.max_duration = Duration::from_secs(120);
    let running = load::start(cfg).expect("start load");
    std::thread::sleep(Duration::from_millis(200));

    let mut old = first.pid();
    let mut generations = Vec::new();
    let (mut drained, mut took) = (0, Vec::new());
    for i in 1..=HANDOVERS {
        let started = Instant::now();
        let done = run(w, &reload_args(w, old, &["--drain-timeout", "5"], &gen_args(&format!("g{i}"))), true);
        took.push(started.elapsed());
        done.assert_ok();
        if i == 1 {
            eprint!("{}", done.stdout);
        }
        assert!(done.stdout.contains(&format!("sent SIGTERM to pid {old}")), "{}", done.stdout);
        drained += usize::from(done.stdout.contains(" drained in "));
        old = done.new_pid();
        generations.push(done.stdin);
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = running.stop();
    let c = w.counters(PORT);
    took.sort();
    eprintln!(
        "{HANDOVERS} reloads: {} requests, {} failed, migrated {} (by kernel {}), {drained} drained before the signal, \
         reload p50 {:?} max {:?}, request p99 {} us",
        report.requests,
        report.failed(),
        c.migrated,
        c.migrated_by_kernel,
        took[took.len() / 2],
        took[took.len() - 1],
        report.latency_us.p99
    );
    assert_no_failures(&report, "steer reload under load");
    assert!(report.ok > 3_000, "load ran: {report:#?}");
    // The old generation is signalled only once its queues are empty and no
    // connection is sent to it any more: its close leaves nothing to migrate.
    assert_eq!(drained, HANDOVERS);
    assert_eq!((c.migrated, c.migrated_by_kernel), (0, 0), "{c:?}");
    assert!(answered_by(&report, &format!("g{HANDOVERS}")) > 0);
    assert!(answered_by(&report, "g15") > 0);
    // Every old generation stopped on its signal.
    let listening: Vec<u32> =
        w.ns.pids().unwrap().into_iter().filter(|p| !listening_inodes(*p, PORT).is_empty()).collect();
    assert_eq!(listening, vec![old]);
    report
}

#[test]
fn a_generation_that_is_not_ready_gets_no_connection() {
    let Some(w) = World::new("rlready") else { return };
    let g0 = w.server("g0", &[TARGET]);
    w.promote(&g0);
    let flag = PathBuf::from(format!("/tmp/{}-ready", w.ns.name()));
    let _ = std::fs::remove_file(&flag);
    let mut cfg = w.load_config(TARGET);
    cfg.max_duration = Duration::from_secs(30);
    let before = load::start(cfg).expect("start load");

    let ready = format!("test -e {}", flag.display());
    let extra = ["--ready-cmd", ready.as_str(), "--ready-timeout", "20"];
    let mut reload = start(&w, &reload_args(&w, g0.pid(), &extra, &gen_args("g1")), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let g1 = loop {
        if let Some(pid) = listener_pid(&w, PORT, &[g0.pid()]) {
            break pid;
        }
        assert!(Instant::now() < deadline, "g1 never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Listening, not ready: one second of load.
    std::thread::sleep(Duration::from_secs(1));
    let window = before.stop();
    assert!(reload.running(), "steer reload ended before the check passed");
    assert!(!listening_inodes(g1, PORT).is_empty(), "g1 still listens");
    eprintln!(
        "not-ready window: {} requests, g0 {}, g1 {}",
        window.requests,
        answered_by(&window, "g0"),
        answered_by(&window, "g1")
    );
    assert_no_failures(&window, "while g1 was not ready");
    assert_eq!(answered_by(&window, "g1"), 0, "{window:#?}");
    assert_eq!(answered_by(&window, "g0"), window.ok);
    assert!(window.ok > 100);

    std::fs::write(&flag, b"").expect("ready flag");
    let done = reload.wait(Duration::from_secs(10));
    let _ = std::fs::remove_file(&flag);
    done.assert_ok();
    assert_eq!(done.new_pid(), g1);
    let after = w.requests(TARGET, 200);
    assert_eq!(answered_by(&after, "g1"), 200);
}

#[test]
fn an_http_probe_holds_traffic_until_the_health_address_answers() {
    let Some(w) = World::new("rlhttp") else { return };
    let mut args = gen_args("g0");
    args.http = true;
    let g0 = w.server_with(args);
    w.promote(&g0);
    let mut cfg = w.load_config(TARGET);
    cfg.protocol = Protocol::Http;
    cfg.max_duration = Duration::from_secs(30);
    let before = load::start(cfg).expect("start load");

    // g1 listens on the group first, and on its own health port 1.5 s later.
    let mut new = ServerArgs::new("g1", [addr(TARGET), addr("127.0.0.1:9101")]);
    new.http = true;
    new.listen_gap_ms = 1500;
    let extra = ["--ready-http", "http://127.0.0.1:9101/ready", "--ready-timeout", "20"];
    let mut reload = start(&w, &reload_args(&w, g0.pid(), &extra, &new), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while listener_pid(&w, PORT, &[g0.pid()]).is_none() {
        assert!(Instant::now() < deadline, "g1 never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert!(reload.running(), "steer reload ended before the probe could pass");
    let window = before.stop();
    eprintln!("not-ready window (http): {} requests, g1 {}", window.requests, answered_by(&window, "g1"));
    assert_no_failures(&window, "while g1's health port was closed");
    assert_eq!(answered_by(&window, "g1"), 0, "{window:#?}");
    assert!(window.ok > 50);
    let done = reload.wait(Duration::from_secs(20));
    done.assert_ok();
    let mut cfg = w.load_config(TARGET);
    cfg.protocol = Protocol::Http;
    cfg.max_requests = Some(100);
    let after = load::run(cfg).expect("load");
    assert_eq!(answered_by(&after, "g1"), 100);
}

#[test]
fn a_readiness_timeout_leaves_the_old_generation_active() {
    let Some(w) = World::new("rltimeout") else { return };
    let g0 = w.server("g0", &[TARGET]);
    w.promote(&g0);
    let status = w.status_json();
    let extra = ["--ready-cmd", "exit 1", "--ready-timeout", "1"];
    let started = Instant::now();
    let done = run(&w, &reload_args(&w, g0.pid(), &extra, &gen_args("g1")), true);
    done.assert_refused("did not pass the readiness check within 1 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(w.status_json(), status, "a refused reload changed the state");
    // The new generation is left running, and gets nothing.
    assert!(listener_pid(&w, PORT, &[g0.pid()]).is_some(), "the new generation was killed");
    let after = w.requests(TARGET, 300);
    assert_eq!(answered_by(&after, "g0"), 300);
    drop(done.stdin);
}

#[test]
fn refusals_change_nothing() {
    let Some(w) = World::new("rlrefuse") else { return };
    let g0 = w.server("g0", &[TARGET]);
    w.promote(&g0);
    let status = w.status_json();
    let old = g0.pid().to_string();
    let refused = |args: &[&str], needle: &str| {
        let done = run(&w, &args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), false);
        done.assert_refused(needle);
        assert_eq!(w.status_json(), status, "{args:?} changed the state");
    };
    refused(
        &["--old", &old, "--", "sh", "-c", "exit 3"],
        "exited with status 3 before it listened on 127.0.0.1:8080",
    );
    refused(&["--old", &old, "--", "true"], "exited with status 0 before it listened");
    refused(&["--old", &old, "--", "/nonexistent/server"], "cannot start `/nonexistent/server`");
    refused(&["--old", "4194300", "--", "true"], "no process with pid 4194300");
    let mut sleeper = w.ns.command("sleep").arg("30").spawn().expect("sleep");
    refused(&["--old", &sleeper.id().to_string(), "--", "true"], "has no listening TCP socket");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    refused(
        &["--old", &old, "--ready-http", "http://127.0.0.1:8080/", "--", "true"],
        "is the address being reloaded",
    );
    refused(&["--old", &old, "--port", "9999", "--", "true"], "on port 9999");
    // An old generation that is not the active one.
    let other = w.server("x", &["127.0.0.1:8081"]);
    refused(
        &["--old", &other.pid().to_string(), "--", "true"],
        "is not the active generation of 127.0.0.1:8081",
    );
    let usage = w.steer(&["reload", "--old", &old, "--signal", "NOPE", "--", "true"]);
    assert_eq!(usage.status.code(), Some(2));
    let after = w.requests(TARGET, 200);
    assert_eq!(answered_by(&after, "g0"), 200);
}

/// HAProxy in daemon mode, reloaded by `steer reload` without `-sf`: the new
/// process starts beside the old one, and the old one is soft-stopped
/// (SIGUSR1) once it has drained.
#[test]
fn haproxy_without_sf_reloads_under_load_lose_nothing() {
    const RELOADS: u32 = 10;
    let Some(w) = World::new("rlhaproxy") else { return };
    let dir = PathBuf::from(format!("/tmp/{}", w.ns.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (cfg_path, pidfile) = (dir.join("haproxy.cfg"), dir.join("haproxy.pid"));
    let write_cfg = |generation: &str| {
        std::fs::write(&cfg_path, render_config(&dir, PORT, generation, &[])).expect("write haproxy.cfg");
    };
    write_cfg("g0");
    let haproxy = |cmd: &mut Command| {
        cmd.args(["-D", "-f"]).arg(&cfg_path).arg("-p").arg(&pidfile);
    };
    let mut first = w.ns.command("haproxy");
    haproxy(&mut first);
    assert!(first.stdin(Stdio::null()).status().expect("haproxy").success(), "haproxy -D failed to start");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut old = loop {
        if let Some(pid) = read_pidfile(&pidfile).filter(|p| !listening_inodes(*p, PORT).is_empty()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "haproxy never listened");
        std::thread::sleep(Duration::from_millis(10));
    };
    w.steer_ok(&["promote", &old.to_string()]);
    let mut cfg = w.load_config(TARGET);
    cfg.protocol = Protocol::Http;
    cfg.concurrency = 16;
    cfg.max_duration = Duration::from_secs(60);
    let running = load::start(cfg).expect("start load");
    std::thread::sleep(Duration::from_millis(200));

    for i in 1..=RELOADS {
        write_cfg(&format!("g{i}"));
        let mut args: Vec<String> =
            ["--old", &old.to_string(), "--signal", "USR1", "--drain-timeout", "5", "--"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        args.extend(["ip", "netns", "exec", w.ns.name(), "haproxy", "-D", "-f"].map(str::to_owned));
        args.extend([cfg_path.display().to_string(), "-p".to_owned(), pidfile.display().to_string()]);
        let done = run(&w, &args, false);
        done.assert_ok();
        if i == 1 {
            eprint!("{}", done.stdout);
        }
        assert!(done.stdout.contains(&format!("sent SIGUSR1 to pid {old}")), "{}", done.stdout);
        let new = read_pidfile(&pidfile).expect("pidfile");
        assert_ne!(new, old);
        // The daemon child that keeps the socket, not the parent that exits.
        assert_eq!(done.new_pid(), new, "{}", done.stdout);
        old = new;
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = running.stop();
    let c = w.counters(PORT);
    eprintln!(
        "haproxy, {RELOADS} reloads with steer reload: {} requests, {} failed, migrated {} (by kernel {})",
        report.requests,
        report.failed(),
        c.migrated,
        c.migrated_by_kernel
    );
    assert_no_failures(&report, "haproxy reloaded by steer reload");
    assert_eq!((c.migrated, c.migrated_by_kernel), (0, 0), "{c:?}");
    assert!(answered_by(&report, &format!("g{RELOADS}")) > 0);
    for pid in w.ns.pids().unwrap_or_default() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
