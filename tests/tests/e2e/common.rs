//! Shared set-up for the end-to-end tests: a namespace, a state directory, the
//! `steer` binary, test servers and load runs.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
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

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// The `steer` binary, built first so the tests never run a stale one
/// (`cargo test -p steer-tests` alone does not rebuild another package's binary).
pub fn steer_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "steer", "--bin", "steer"])
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
