//! Least privilege, measured (docs/security.md): each command runs as root with exactly
//! the capabilities the document lists, as the shipped systemd unit runs it (uid 0,
//! `CapabilityBoundingSet=`, `NoNewPrivileges=`): `setpriv` limits the bounding and
//! inheritable sets, so after exec the permitted and effective sets are exactly that
//! list. Each command runs inside the servers' network namespace, as the unit runs in
//! the host's beside HAProxy. With the set, it works and the eBPF path ran (which
//! generation answered, the program's counters); with any one capability removed, it
//! exits 1 naming that capability, and the state is what it was.
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};

use steer::ops::status::Status;

use crate::common::{World, answered_by, free_port, scrape, steer_bin};

/// What every command that changes steering needs (docs/security.md).
const WRITE: [&str; 4] = ["bpf", "perfmon", "net_admin", "sys_ptrace"];

/// `steer --state-dir DIR ARGS...` in the test's namespace, as root with exactly `caps`.
fn with_caps(w: &World, caps: &[&str], args: &[&str]) -> Output {
    capped(w, caps, args).output().expect("run setpriv steer")
}

fn capped(w: &World, caps: &[&str], args: &[&str]) -> Command {
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", w.ns.path().display()))
        .args(["setpriv", "--no-new-privs", &format!("--inh-caps={set}"), &format!("--bounding-set={set}")])
        .arg(steer_bin())
        .arg("--state-dir")
        .arg(&w.state_dir)
        .args(args)
        .env_remove("STEER_STATE_DIR")
        .env_remove("STEER_KERNEL_RELEASE")
        .env_remove("STEER_MAX_SLOTS");
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `caps` without `drop`.
fn without<'a>(caps: &[&'a str], drop: &str) -> Vec<&'a str> {
    caps.iter().copied().filter(|c| *c != drop).collect()
}

/// Runs `args` with `caps` minus each one in turn: exit 1, the missing capability
/// named, and `status --json` as before.
fn each_missing_is_named(w: &World, caps: &[&str], args: &[&str]) {
    let before = w.status_json();
    for drop in caps {
        let out = with_caps(w, &without(caps, drop), args);
        let said = text(&out);
        let name = format!("CAP_{}", drop.to_uppercase());
        eprintln!("steer {args:?} without {name}: {}: {}", out.status, said.trim());
        assert_eq!(out.status.code(), Some(1), "steer {args:?} without {name} must fail: {said}");
        assert!(said.contains(&name), "steer {args:?} without {name} must name it: {said}");
        assert_eq!(w.status_json(), before, "steer {args:?} without {name} changed the state");
    }
}

fn ok(w: &World, caps: &[&str], args: &[&str]) -> String {
    let out = with_caps(w, caps, args);
    let said = text(&out);
    eprintln!("steer {args:?} with {caps:?}: {}: {}", out.status, said.trim());
    assert!(out.status.success(), "steer {args:?} with exactly {caps:?} failed: {said}");
    said
}

#[test]
fn each_command_works_with_exactly_its_capabilities_and_names_a_missing_one() {
    let Some(w) = World::new("hprivcmd") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    let (pa, pb) = (a.pid().to_string(), b.pid().to_string());

    // check: the four, the verifier's real load of the program included.
    let report = ok(&w, &WRITE, &["check"]);
    assert!(report.contains("the verifier accepts"), "{report}");
    each_missing_is_named(&w, &WRITE, &["check"]);

    // promote: refused without any one (no state is created), then b answers.
    each_missing_is_named(&w, &WRITE, &["promote", &pb]);
    assert!(w.status().namespaces.is_empty(), "a refused promote created state");
    ok(&w, &WRITE, &["promote", &pa]);
    ok(&w, &WRITE, &["promote", &pb]);
    let r = w.requests("127.0.0.1:8080", 200);
    assert_eq!(answered_by(&r, "b"), 200, "{r:?}");
    assert!(w.counters(8080).steered_active >= 200, "the program steered: {:?}", w.counters(8080));

    // status: no capability at all, as the pins' owner (root), on Linux 6.5+; only the
    // accept queue (a pidfd_getfd of the socket) needs CAP_SYS_PTRACE.
    let full = w.status();
    let out = with_caps(&w, &[], &["status", "--json"]);
    assert!(out.status.success(), "status with no capability: {}", text(&out));
    let bare: Status = serde_json::from_slice(&out.stdout).expect("status --json parses");
    let active = |s: &Status| s.namespaces[0].groups[0].sockets.iter().find(|k| k.role == "active").cloned();
    let (bare, full) = (active(&bare).expect("an active socket"), active(&full).expect("an active socket"));
    assert_eq!((bare.pid, bare.cookie), (b.pid(), full.cookie));
    assert_eq!(bare.accept_queue, None, "the accept queue needs CAP_SYS_PTRACE");
    assert!(full.accept_queue.is_some());

    // rollback: a answers again.
    each_missing_is_named(&w, &WRITE, &["rollback"]);
    ok(&w, &WRITE, &["rollback"]);
    let r = w.requests("127.0.0.1:8080", 200);
    assert_eq!(answered_by(&r, "a"), 200, "{r:?}");

    // reload: nothing is started without the set; with it, c takes over.
    let server = steer_harness::server::bin_path("steer-testserver").expect("steer-testserver");
    let server = server.to_str().expect("utf-8 path");
    let reload = [
        "reload",
        "--old",
        &pa,
        "--drain-timeout",
        "2",
        "--",
        server,
        "--listen",
        "127.0.0.1:8080",
        "--gen",
        "c",
    ];
    each_missing_is_named(&w, &WRITE, &reload);
    // c inherits steer's stdin and lives until it closes: keep it open. Its
    // stderr goes to a file: a pipe would stay open as long as c runs.
    let err = std::env::temp_dir().join(format!("{}-reload-stderr", w.ns.name()));
    let mut child = capped(&w, &WRITE, &reload)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run steer reload");
    let c_stdin = child.stdin.take();
    let status = child.wait().expect("steer reload");
    let said = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    assert!(status.success(), "steer reload with exactly {WRITE:?} failed: {said}");
    let r = w.requests("127.0.0.1:8080", 200);
    assert_eq!(answered_by(&r, "c"), 200, "{r:?}");

    // reload signalled a; wait until its socket closes, so the state holds still.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.group(8080).sockets.iter().any(|k| k.pid == a.pid() && k.live) {
        assert!(std::time::Instant::now() < deadline, "a did not exit after the reload's signal");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // detach: the kernel's selection resumes.
    each_missing_is_named(&w, &WRITE, &["detach"]);
    ok(&w, &WRITE, &["detach"]);
    assert!(w.status().namespaces.iter().all(|n| n.groups.is_empty()), "{:?}", w.status());
    drop((a, b, c_stdin));
}

/// A test server as uid 65534, in the test's namespace: dumpable, so its
/// `/proc/PID/fd` is owned by 65534, mode 0500.
struct Nobody {
    child: Child,
    pid: u32,
}

impl Nobody {
    fn spawn(w: &World, listen: &str, generation: &str) -> Nobody {
        let bin = steer_harness::server::bin_path("steer-testserver").expect("steer-testserver");
        let mut child =
            w.ns.command("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
                .arg(bin)
                .args(["--listen", listen, "--gen", generation])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a server as nobody");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("its ready line");
        let pid = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no ready line: {line:?}"));
        Nobody { child, pid }
    }
}

impl Drop for Nobody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_server_of_another_uid_needs_cap_dac_read_search() {
    let Some(w) = World::new("hprivdac") else { return };
    let n = Nobody::spawn(&w, "127.0.0.1:8081", "n");
    let pid = n.pid.to_string();
    let mut five = WRITE.to_vec();
    five.push("dac_read_search");
    each_missing_is_named(&w, &five, &["promote", &pid]);
    assert!(w.status().namespaces.is_empty(), "a refused promote created state");
    ok(&w, &five, &["promote", &pid]);
    let r = w.requests("127.0.0.1:8081", 200);
    assert_eq!(answered_by(&r, "n"), 200, "{r:?}");
    assert!(w.counters(8081).steered_active >= 200, "the program steered: {:?}", w.counters(8081));
}

#[test]
fn the_daemon_and_its_metrics_work_with_exactly_the_units_capabilities() {
    let Some(w) = World::new("hprivd") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let port = free_port_in(&w);
    let metrics = format!("127.0.0.1:{port}");
    let args = ["daemon", "--port", "8080", "--any-process", "--metrics", &metrics, "--log-format", "json"];
    // Without any one capability: exit 1 at start, naming it; nothing pinned.
    for drop in WRITE {
        let mut cmd = capped(&w, &without(&WRITE, drop), &args);
        let out = cmd.output().expect("run the daemon");
        let said = text(&out);
        let name = format!("CAP_{}", drop.to_uppercase());
        assert_eq!(out.status.code(), Some(1), "the daemon without {name} must refuse to start: {said}");
        assert!(said.contains(&name), "the daemon without {name} must name it: {said}");
        assert!(w.status().namespaces.is_empty(), "the daemon without {name} pinned state");
    }
    // With the set: it adopts a, then promotes b, and its metrics endpoint answers.
    let mut d =
        capped(&w, &WRITE, &args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("daemon");
    let stderr = d.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle}: {e}"),
            }
        }
    };
    wait("\"message\":\"watching\"");
    let b = w.server("b", &["127.0.0.1:8080"]);
    wait(&format!("\"pid\":{}", b.pid()));
    let r = w.requests("127.0.0.1:8080", 200);
    assert_eq!(answered_by(&r, "b"), 200, "{r:?}");
    let text = scrape_in(&w, port, "/metrics");
    assert!(text.contains("steer_active_pid") && text.contains(&b.pid().to_string()), "{text}");
    let _ = d.kill();
    let _ = d.wait();
    drop(a);
}

/// A free port in the test's namespace, and a scrape of it, from a thread inside.
fn free_port_in(w: &World) -> u16 {
    w.ns.spawn_in(|| Ok(free_port())).join().expect("thread").expect("free port")
}

fn scrape_in(w: &World, port: u16, path: &'static str) -> String {
    w.ns.spawn_in(move || Ok(scrape(port, path))).join().expect("thread").expect("scrape")
}
