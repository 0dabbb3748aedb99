//! Shared set-up for the end-to-end tests: a namespace, a state directory, the
//! `steer` binary, test servers and load runs.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use steer::ops::status::{Counters, Group, Status};
use steer_harness::{
    load::{self, LoadConfig, LoadReport},
    netns::NetNs,
    server::{self, ServerArgs, TestServer},
};

/// One test's world: its namespace and its state directory (removed on drop).
pub struct World {
    pub ns: NetNs,
    pub state_dir: PathBuf,
}

impl World {
    /// `None` (after printing why) when privileged tests cannot run here.
    pub fn new(test: &str) -> Option<Self> {
        if !steer_harness::require_privileges(test) {
            return None;
        }
        let ns = NetNs::new(test).expect("create network namespace");
        let state_dir = PathBuf::from(format!("/sys/fs/bpf/steer-test-{}-{}", ns.name(), std::process::id()));
        Some(Self { ns, state_dir })
    }

    /// Starts a generation on `listen`.
    pub fn server(&self, generation: &str, listen: &[&str]) -> TestServer {
        self.server_with(ServerArgs::new(generation, listen.iter().map(|a| addr(a))))
    }

    pub fn server_with(&self, args: ServerArgs) -> TestServer {
        TestServer::spawn(&self.ns, &args).expect("spawn test server")
    }

    /// `steer --state-dir DIR ARGS...`, with the environment given.
    pub fn steer(&self, args: &[&str]) -> Output {
        self.steer_env(args, &[])
    }

    pub fn steer_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        steer_cmd(&self.state_dir, args).envs(env.iter().copied()).output().expect("run steer")
    }

    /// Runs steer and asserts success; returns stdout.
    pub fn steer_ok(&self, args: &[&str]) -> String {
        let out = self.steer(args);
        assert!(
            out.status.success(),
            "steer {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn promote(&self, server: &TestServer) -> String {
        self.steer_ok(&["promote", &server.pid().to_string()])
    }

    pub fn status_json(&self) -> String {
        self.steer_ok(&["status", "--json"])
    }

    pub fn status(&self) -> Status {
        serde_json::from_str(&self.status_json()).expect("status --json parses")
    }

    /// The steered group on `port` (panics when there is none).
    pub fn group(&self, port: u16) -> Group {
        self.status()
            .namespaces
            .into_iter()
            .flat_map(|n| n.groups)
            .find(|g| g.port == port)
            .unwrap_or_else(|| panic!("no steered group on port {port}"))
    }

    pub fn counters(&self, port: u16) -> Counters {
        self.group(port).counters
    }

    /// The groups' own programs pinned in the state directory
    /// (`prog-group-<index>-<group>`), in either mode.
    pub fn group_programs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ns in std::fs::read_dir(&self.state_dir).expect("state dir").flatten() {
            for pin in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let name = pin.file_name().to_string_lossy().into_owned();
                if name.starts_with("prog-group-") {
                    out.push(name);
                }
            }
        }
        out.sort();
        out
    }

    /// Exactly `n` requests (one connection each) against `target`.
    pub fn requests(&self, target: &str, n: u64) -> LoadReport {
        let mut cfg = self.load_config(target);
        cfg.max_requests = Some(n);
        cfg.max_duration = Duration::from_secs(30);
        load::run(cfg).expect("load run")
    }

    pub fn load_config(&self, target: &str) -> LoadConfig {
        let mut cfg = LoadConfig::new(addr(target));
        cfg.netns = Some(self.ns.path());
        cfg.concurrency = 8;
        cfg.timeout = Duration::from_secs(5);
        cfg
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A scratch directory of the world's (`/tmp/<namespace>`) for a server's configs,
/// pidfile and logs, emptied when made and removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(w: &World) -> Scratch {
        let dir = PathBuf::from(format!("/tmp/{}", w.ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// The `steer` binary, built first so the tests never run a stale one
/// (`cargo test -p steer-tests` alone does not rebuild another package's binary).
/// It is a test build: its failpoints (`STEER_FAILPOINT`) are compiled in.
pub fn steer_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "steer", "--bin", "steer", "--features", "failpoints"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build -p steer");
        assert!(status.success(), "cargo build -p steer failed");
    });
    server::bin_path("steer").expect("the steer binary is built (cargo build -p steer)")
}

pub fn steer_cmd(state_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(steer_bin());
    cmd.arg("--state-dir").arg(state_dir).args(args);
    cmd.env_remove("STEER_STATE_DIR").env_remove("STEER_KERNEL_RELEASE").env_remove("STEER_MAX_SLOTS");
    cmd.env_remove(steer::failpoint::ENV);
    cmd
}

/// Asserts that a report saw no failure of any kind.
pub fn assert_no_failures(report: &LoadReport, what: &str) {
    assert_eq!(report.failed(), 0, "{what}: {} failed requests: {report:#?}", report.failed());
}

/// Requests answered by generation `g`.
pub fn answered_by(report: &LoadReport, g: &str) -> u64 {
    report.by_generation.get(g).copied().unwrap_or(0)
}

/// A running `steer daemon` whose JSON log is collected.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn spawn(w: &World, args: &[&str]) -> Daemon {
        Self::spawn_via(w, &[], args)
    }

    /// The daemon started through `wrapper` (a command that execs its arguments,
    /// such as `setpriv ...`), so that its pid is the daemon's. It watches the
    /// test's namespace, and any process there (`--any-process`): the test
    /// servers are the test's own.
    pub fn spawn_via(w: &World, wrapper: &[&str], args: &[&str]) -> Daemon {
        let ns = w.ns.path();
        let mut full = vec!["--netns", ns.to_str().expect("utf-8 path"), "--any-process"];
        full.extend_from_slice(args);
        Self::spawn_exactly(w, wrapper, &full)
    }

    /// `steer daemon --log-format json ARGS...` and nothing else: no
    /// namespace and no `--any-process` added.
    pub fn spawn_exactly(w: &World, wrapper: &[&str], args: &[&str]) -> Daemon {
        let mut full = vec!["daemon", "--log-format", "json"];
        full.extend_from_slice(args);
        let mut cmd = steer_cmd(&w.state_dir, &full);
        if let [program, rest @ ..] = wrapper {
            let steer = std::mem::replace(&mut cmd, Command::new(program));
            cmd.args(rest).arg(steer.get_program()).args(steer.get_args());
            for (key, value) in steer.get_envs() {
                match value {
                    Some(v) => cmd.env(key, v),
                    None => cmd.env_remove(key),
                };
            }
        }
        let mut child = cmd
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
    pub fn wait_for(&self, needles: &[&str], what: &str) -> String {
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

    pub fn promoted(&self, server: &TestServer) -> String {
        self.promoted_pid(server.pid())
    }

    pub fn promoted_pid(&self, pid: u32) -> String {
        let needle = format!("\"pid\":{pid}");
        self.wait_for(&["\"message\":\"promoted\"", &needle], &format!("promotion of pid {pid}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.stop_waiting()
    }

    /// The exit status of a daemon already told to stop (10 s at most).
    pub fn stop_waiting(mut self) -> std::process::ExitStatus {
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

/// A free port on 127.0.0.1 of the test's own namespace (the daemon's).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One HTTP GET to the metrics endpoint; the whole response.
pub fn scrape(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// The value of the first sample line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}")) as u64
}
