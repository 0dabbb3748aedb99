//! Only what the operator named is steered: an unprivileged user who names its
//! process `haproxy` in a user and network namespace of its own gets no
//! promotion and no pinned state; a daemon that verifies nothing refuses to
//! start; and the caps refuse, log once and count.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{Daemon, World, answered_by, free_port, metric, scrape};

/// A copy of the test server named `haproxy` (its comm), in a directory any
/// user may read; removed on drop.
struct Named {
    dir: PathBuf,
}

impl Named {
    fn new(tag: &str) -> Named {
        let dir = std::env::temp_dir().join(format!("steer-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let server = steer_harness::server::bin_path("steer-testserver").expect("the test server is built");
        std::fs::copy(server, dir.join("haproxy")).expect("copy the test server");
        std::fs::set_permissions(dir.join("haproxy"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Named { dir }
    }

    fn exe(&self) -> PathBuf {
        self.dir.join("haproxy")
    }

    fn exe_str(&self) -> String {
        self.exe().to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server started by a command of ours; killed on drop.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    /// Runs `cmd`, whose last program is the test server, and waits for its `ready pid=N` line.
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn a server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read its ready line");
        let pid = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no ready line from {cmd:?}: {line:?}"));
        Proc { child, pid }
    }

    fn netns(&self) -> u64 {
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid)).expect("its network namespace").ino()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exe` listening on 127.0.0.1:`port` as uid 65534, in a user and a network
/// namespace of its own (`unshare -rn`), as any user of the machine may.
fn unprivileged(exe: &Path, port: u16, generation: &str) -> Proc {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "unshare", "-rn", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--gen", generation]);
    Proc::spawn(cmd)
}

/// `exe` listening on `listen`, as root, in the test's network namespace.
fn legitimate(w: &World, exe: &Path, listen: &[&str], generation: &str) -> Proc {
    let mut cmd = w.ns.command(exe);
    for addr in listen {
        cmd.args(["--listen", addr]);
    }
    cmd.args(["--gen", generation]);
    Proc::spawn(cmd)
}

fn promotions_of(d: &Daemon, pid: u32) -> Vec<String> {
    let needle = format!("\"pid\":{pid}");
    d.log()
        .lines()
        .filter(|l| l.contains("\"message\":\"promoted\"") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn namespaces(w: &World) -> Vec<u64> {
    w.status().namespaces.iter().map(|n| n.netns).collect()
}

#[test]
fn an_unprivileged_process_named_like_the_server_gets_no_promotion_and_no_state() {
    let Some(w) = World::new("dtrust") else { return };
    let named = Named::new("dtrust");
    let exe = named.exe_str();
    // One listens before the daemon starts (adoption), one after (its listen event).
    let early = unprivileged(&named.exe(), 8080, "early");
    // Every namespace, as the shipped unit's `--comm haproxy` did; --exe keeps
    // the daemon off other tests' HAProxy.
    let args = ["--comm", "haproxy", "--netns", "all", "--exe", &exe];
    let mut with_user = args.to_vec();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    with_user.extend(["--user", "0", "--metrics", &metrics]);
    let d = Daemon::spawn_exactly(&w, &[], &with_user);
    let late = unprivileged(&named.exe(), 8080, "late");
    let line = d.wait_for(
        &["not steered", &format!("\"pid\":{}", late.pid), "\"rule\":\"user\""],
        "the daemon to look at the unprivileged listener and refuse it",
    );
    assert!(line.contains("65534"), "the uid is named: {line}");
    assert!(line.contains("\"level\":\"INFO\""), "logged where an operator sees it: {line}");
    let text = scrape(port, "/metrics");
    assert!(metric(&text, "steer_daemon_untrusted_total{reason=\"user\"}") >= 1, "{text}");
    assert_eq!(metric(&text, "steer_daemon_untrusted_total{reason=\"exe\"}"), 0, "{text}");
    let real = legitimate(&w, &named.exe(), &["127.0.0.1:8080"], "real");
    d.wait_for(
        &["\"message\":\"promoted\"", &format!("\"pid\":{}", real.pid)],
        "the real server's promotion",
    );
    for p in [&early, &late] {
        assert!(promotions_of(&d, p.pid).is_empty(), "pid {} was promoted:\n{}", p.pid, d.log());
    }
    let ns = namespaces(&w);
    assert_eq!(ns, vec![real.netns()], "state for the real server's namespace only");
    assert!(!ns.contains(&late.netns()) && !ns.contains(&early.netns()));
    let r = w.requests("127.0.0.1:8080", 100);
    assert_eq!(answered_by(&r, "real"), 100);
    drop(d);

    // Without --user, the user namespace alone keeps it out...
    let d = Daemon::spawn_exactly(&w, &[], &args);
    let again = unprivileged(&named.exe(), 8080, "again");
    d.wait_for(
        &["not steered", &format!("\"pid\":{}", again.pid), "\"rule\":\"user_namespace\""],
        "the user namespace rule",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(promotions_of(&d, again.pid).is_empty(), "{}", d.log());
    assert_eq!(namespaces(&w), vec![real.netns()]);
    drop(d);

    // ...and --user-namespaces lets it in: the rule, not luck, kept it out.
    let mut opted = args.to_vec();
    opted.push("--user-namespaces");
    let d = Daemon::spawn_exactly(&w, &[], &opted);
    let last = unprivileged(&named.exe(), 8080, "last");
    d.wait_for(&["\"message\":\"promoted\"", &format!("\"pid\":{}", last.pid)], "the opted-in promotion");
    assert!(namespaces(&w).contains(&last.netns()));
    drop(d);
    drop((early, late, again, last, real));
}

#[test]
fn a_daemon_that_verifies_nothing_refuses_to_start_unless_told_any_process() {
    let Some(w) = World::new("dverify") else { return };
    for args in [&["daemon", "--comm", "haproxy"][..], &["daemon", "--port", "8080", "--comm", "haproxy"]] {
        let out = w.steer(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
        for flag in ["--user", "--exe", "--cgroup", "--any-process", "--comm proves nothing"] {
            assert!(stderr.contains(flag), "{flag} named: {stderr}");
        }
    }
    assert!(namespaces_or_none(&w).is_empty(), "a refused start creates no state");
    let ns = w.ns.path();
    let ns = ns.to_str().expect("utf-8 path");
    let d = Daemon::spawn_exactly(&w, &[], &["--comm", "haproxy", "--any-process", "--netns", ns]);
    drop(d);
    let out = w.steer(&["daemon", "--port", "8080", "--user", "no-such-user-here"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("numeric uid"), "{stderr}");
}

fn namespaces_or_none(w: &World) -> Vec<u64> {
    if w.state_dir.exists() { namespaces(w) } else { Vec::new() }
}

#[test]
fn the_caps_refuse_log_once_and_count() {
    let Some(w) = World::new("dcaps") else { return };
    let named = Named::new("dcaps");
    let exe = named.exe_str();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--comm",
        "haproxy",
        "--exe",
        &exe,
        "--netns",
        "all",
        "--max-instances",
        "1",
        "--max-groups-per-process",
        "2",
        // Each decision then sees every listener of a process that listens on three.
        "--ready-delay",
        "50",
        "--metrics",
        &addr,
    ];
    let d = Daemon::spawn_exactly(&w, &[], &args);
    let real = legitimate(&w, &named.exe(), &["127.0.0.1:8080"], "real");
    d.wait_for(&["\"message\":\"promoted\"", &format!("\"pid\":{}", real.pid)], "the first instance");
    // A second namespace (root's, in the initial user namespace): one too many.
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]).arg(named.exe()).args([
        "--listen",
        "127.0.0.1:8080",
        "--gen",
        "other",
    ]);
    let other = Proc::spawn(cmd);
    d.wait_for(
        &["not promoted", &format!("\"pid\":{}", other.pid), "\"reason\":\"instances\"", "--max-instances"],
        "the instance cap",
    );
    // Three groups in one process, over a cap of 2.
    let wide = legitimate(&w, &named.exe(), &["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"], "wide");
    d.wait_for(&["not promoted", &format!("\"pid\":{}", wide.pid), "\"reason\":\"groups\""], "the group cap");
    std::thread::sleep(Duration::from_millis(300));
    let log = d.log();
    for p in [&other, &wide] {
        assert!(promotions_of(&d, p.pid).is_empty(), "{log}");
        let warned =
            log.lines().filter(|l| l.contains("not promoted") && l.contains(&format!("\"pid\":{}", p.pid)));
        assert_eq!(warned.count(), 1, "one log line per refusal:\n{log}");
    }
    assert_eq!(namespaces(&w), vec![real.netns()], "no instance past the cap");
    let text = scrape(port, "/metrics");
    assert_eq!(metric(&text, "steer_daemon_refusals_total{reason=\"instances\"}"), 1, "{text}");
    assert_eq!(metric(&text, "steer_daemon_refusals_total{reason=\"groups\"}"), 1, "{text}");
    assert_eq!(metric(&text, "steer_daemon_refusals_total{reason=\"generations\"}"), 0, "{text}");
    drop(d);
    drop((real, other, wide));
}
