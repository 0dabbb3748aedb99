//! Real containers: the `steer:dev` image runs `steer daemon` with the DaemonSet's
//! settings as `docker run` flags (host pid namespace, `--cap-drop ALL` plus steer's
//! capabilities, the default seccomp profile, a read-only root, bpffs bind-mounted),
//! beside HAProxy containers (`steer-haproxy:dev`) that take over from each other under
//! load: on the host network, in two pods' own network namespaces, and across a restart
//! of the steer container. Load comes from this process, inside the network namespace
//! the servers listen in, to 127.0.0.1.
//!
//! The images are built first, as `cargo xtask image` builds them. Without a Docker
//! engine the tests skip, even in CI; with one (its socket exists) and `CI=true` they
//! must run.
mod caps;
mod systemd;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use steer::ops::status::{Group, Status};
use steer_harness::docker::{self, Container, Unavailable};
use steer_harness::image::{self, HAPROXY_IMAGE, STEER_IMAGE};
use steer_harness::load::{self, LoadConfig, LoadHandle, LoadReport, Protocol};

use crate::common::{answered_by, assert_no_failures, free_port, steer_cmd};

/// Rollouts per test.
const ROLLOUTS: u32 = 20;
/// Load workers, each with one request (one new connection) in flight.
const CONCURRENCY: usize = 16;
/// Bound on a load run; each test stops its load well before.
const MAX_LOAD: Duration = Duration::from_secs(150);
/// Bound on a container start, a promotion, a restart.
const WAIT: Duration = Duration::from_secs(20);
/// `docker stop --time`: HAProxy's soft stop (SIGUSR1) has this long before SIGKILL.
const STOP_SECS: u32 = 10;
/// The port HAProxy listens on inside each pod.
const POD_PORT: u16 = 8080;
/// The uid HAProxy runs as, as in the Kubernetes examples (`runAsUser`), and the
/// DaemonSet's `--user`.
const HAPROXY_UID: &str = "10001";

/// The capabilities the DaemonSet grants steer (deploy/README.md says what each is for).
pub const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// One test's world: a name prefix for its containers and a state directory on bpffs,
/// removed on drop. Declare it before the containers, so they are removed first.
struct Lab {
    prefix: String,
    state_dir: PathBuf,
    next: Mutex<u32>,
}

impl Lab {
    /// `None` (after printing why) when the tests cannot run here.
    fn new(test: &str, tag: &str) -> Option<Lab> {
        if !steer_harness::require_privileges(test) {
            return None;
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        match docker::available() {
            Ok(()) => {}
            Err(Unavailable::Absent(reason)) => {
                eprintln!("skipping {test}: {reason}");
                return None;
            }
            Err(Unavailable::Broken(reason)) => {
                assert!(!ci, "CI=true and a Docker engine is installed here, but: {reason}");
                eprintln!("skipping {test}: {reason}");
                return None;
            }
        }
        build_images();
        let prefix = format!("steer-{tag}-{}", std::process::id());
        let state_dir = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
        let _ = std::fs::remove_dir_all(&state_dir);
        Some(Lab { prefix, state_dir, next: Mutex::new(0) })
    }

    /// A container name unique to this test run.
    fn name(&self, what: &str) -> String {
        let mut next = self.next.lock().expect("name counter");
        *next += 1;
        format!("{}-{what}{next}", self.prefix)
    }

    fn state_dir(&self) -> &str {
        self.state_dir.to_str().expect("utf-8 state dir")
    }

    /// The steer image running `steer daemon --comm haproxy --user 10001 ARGS...` with the
    /// DaemonSet's settings; returns once the daemon watches.
    fn steer_daemon(&self, args: &[&str]) -> Container {
        let name = self.name("steer");
        let caps = docker_capabilities();
        let mut run: Vec<&str> =
            vec!["--pid", "host", "--network", "host", "--read-only", "--cap-drop", "ALL"];
        for cap in caps {
            run.extend(["--cap-add", cap]);
        }
        run.extend(["--volume", "/sys/fs/bpf:/sys/fs/bpf", STEER_IMAGE, "--state-dir", self.state_dir()]);
        run.extend(["daemon", "--comm", "haproxy", "--user", HAPROXY_UID, "--log-format", "json"]);
        run.extend_from_slice(args);
        let daemon = Container::run(&name, &run).expect("start the steer container");
        daemon
            .wait_for(&["\"message\":\"watching\""], "the daemon to watch", WAIT)
            .expect("the daemon starts");
        daemon
    }

    /// An HAProxy container on `network` (`host`, `none`, `container:ID`) listening on
    /// `bind` and answering `gen=GENERATION`; returns once it runs.
    fn haproxy(&self, network: &str, bind: &str, generation: &str) -> Container {
        let name = self.name(generation);
        let env_bind = format!("HAPROXY_BIND={bind}");
        let env_gen = format!("GENERATION={generation}");
        let user = format!("{HAPROXY_UID}:{HAPROXY_UID}");
        let args = [
            "--network",
            network,
            "--user",
            &user,
            "--cap-drop",
            "ALL",
            "--read-only",
            "--env",
            &env_bind,
            "--env",
            &env_gen,
            HAPROXY_IMAGE,
        ];
        Container::run(&name, &args).expect("start an haproxy container")
    }

    /// A pod's pause container: its own network namespace (`--network none`: only `lo`).
    fn pause(&self) -> Container {
        let name = self.name("pause");
        let args = [
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--entrypoint",
            "/usr/bin/sleep",
            HAPROXY_IMAGE,
            "600",
        ];
        Container::run(&name, &args).expect("start a pause container")
    }

    /// `steer status --json` from the host's binary.
    fn status(&self) -> Status {
        let out = steer_cmd(&self.state_dir, &["status", "--json"]).output().expect("run steer status");
        assert!(out.status.success(), "steer status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json parses")
    }

    /// The steered group on `port` in the network namespace with inode `netns`.
    fn group(&self, netns: u64, port: u16) -> Group {
        let status = self.status();
        status
            .namespaces
            .into_iter()
            .filter(|n| n.netns == netns)
            .flat_map(|n| n.groups)
            .find(|g| g.port == port)
            .unwrap_or_else(|| panic!("no steered group on port {port} in netns {netns}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Builds both images once per test binary, as `cargo xtask image` does.
fn build_images() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        image::build_all(root, &mut |line| eprintln!("image: {line}")).unwrap_or_else(|e| {
            panic!("building the images failed (`cargo xtask image` does the same): {e:#}")
        });
        *built = true;
    }
}

/// The capabilities `docker run` grants the steer container: [`CAPABILITIES`], except
/// on an engine that knows no CAP_BPF or CAP_PERFMON (Debian's Docker 20.10 refuses
/// them: "invalid CapAdd: unknown capability"), where CAP_SYS_ADMIN stands in for both:
/// the kernel accepts it for each (`bpf_capable()`, `perfmon_capable()`), and Docker's
/// default seccomp profile allows `bpf` and `perf_event_open` with it. The exact set is
/// proven under containerd, in `caps`.
fn docker_capabilities() -> &'static [&'static str] {
    static CAPS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    CAPS.get_or_init(|| {
        if docker::knows_capability(STEER_IMAGE, "BPF") && docker::knows_capability(STEER_IMAGE, "PERFMON") {
            return CAPABILITIES.to_vec();
        }
        eprintln!("this Docker engine knows no CAP_BPF or CAP_PERFMON: CAP_SYS_ADMIN stands in for both");
        let mut caps = vec!["SYS_ADMIN"];
        caps.extend(CAPABILITIES.iter().filter(|c| !matches!(**c, "BPF" | "PERFMON")));
        caps
    })
}

/// Closed-loop HTTP load on 127.0.0.1:`port`, from `netns` (a file such as
/// `/proc/PID/ns/net`) or this process's namespace, until stopped.
fn http_load(port: u16, netns: Option<PathBuf>, concurrency: usize) -> LoadHandle {
    let mut cfg = LoadConfig::new(format!("127.0.0.1:{port}").parse().expect("address"));
    cfg.protocol = Protocol::Http;
    cfg.concurrency = concurrency;
    cfg.max_duration = MAX_LOAD;
    cfg.netns = netns;
    load::start(cfg).expect("start HTTP load")
}

/// Waits until 127.0.0.1:`port` in `netns` answers one request.
fn wait_serving(port: u16, netns: Option<PathBuf>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut cfg = LoadConfig::new(format!("127.0.0.1:{port}").parse().expect("address"));
        cfg.protocol = Protocol::Http;
        cfg.concurrency = 1;
        cfg.max_requests = Some(1);
        cfg.timeout = Duration::from_secs(2);
        cfg.netns.clone_from(&netns);
        if load::run(cfg).is_ok_and(|r| r.ok == 1) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing serves 127.0.0.1:{port} after {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the daemon's log line saying it promoted `pid`.
fn promoted(daemon: &Container, pid: u32) {
    let needle = format!("\"pid\":{pid}");
    daemon
        .wait_for(&["\"message\":\"promoted\"", &needle], &format!("promotion of pid {pid}"), WAIT)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// How many promotions the daemon logged.
fn promotions(daemon: &Container) -> usize {
    daemon.lines_with(&["\"message\":\"promoted\""]).len()
}

/// The inode of a process's network namespace, as `steer status` keys them.
fn netns_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("stat the netns").ino()
}

/// `median M, max X` of durations.
fn spread(durations: &mut [Duration]) -> String {
    durations.sort_unstable();
    match (durations.get(durations.len() / 2), durations.last()) {
        (Some(median), Some(max)) => format!("median {median:.1?}, max {max:.1?}"),
        _ => "-".to_owned(),
    }
}

fn print_report(test: &str, what: &str, report: &LoadReport) {
    eprintln!(
        "{test}: {what}: {} requests, {} ok, {} failed (resets {}, connect {}, timeouts {}, short {}, bad {}), \
         {:.0} req/s, p99 {} us, max {} us",
        report.requests,
        report.ok,
        report.failed(),
        report.resets,
        report.connect_errors,
        report.timeouts,
        report.short_replies,
        report.bad_replies,
        report.rps,
        report.latency_us.p99,
        report.latency_us.max
    );
    if !report.first_errors.is_empty() {
        eprintln!("{test}: first errors: {:#?}", report.first_errors);
    }
}

/// The bpf object ids of every pin in the state directory (`net-<inode>/<pin>`).
fn pinned_ids(state_dir: &Path) -> Vec<(String, u32)> {
    let mut ids = Vec::new();
    for instance in std::fs::read_dir(state_dir).expect("read the state dir").map(|e| e.expect("dir entry")) {
        if !instance.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for pin in
            std::fs::read_dir(instance.path()).expect("read an instance").map(|e| e.expect("dir entry"))
        {
            let path = pin.path();
            let id = if pin.file_name() == "prog" {
                aya::programs::ProgramInfo::from_pin(&path).map(|i| i.id()).ok()
            } else {
                aya::maps::MapInfo::from_pin(&path).map(|i| i.id()).ok()
            };
            let id = id.unwrap_or_else(|| panic!("{} is no pinned map or program", path.display()));
            ids.push((path.display().to_string(), id));
        }
    }
    ids.sort();
    ids
}

#[test]
fn surge_rollout_of_haproxy_containers_on_the_host_network_loses_nothing() {
    let test = "surge_rollout_of_haproxy_containers_on_the_host_network_loses_nothing";
    let Some(lab) = Lab::new(test, "surge") else { return };
    let start = Instant::now();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut old = lab.haproxy("host", &bind, "g0");
    wait_serving(port, None);
    let (port_arg, metrics) = (port.to_string(), format!("127.0.0.1:{}", free_port()));
    let daemon = lab.steer_daemon(&["--port", &port_arg, "--metrics", &metrics]);
    promoted(&daemon, old.pid().expect("pid"));
    let running = http_load(port, None, CONCURRENCY);
    std::thread::sleep(Duration::from_millis(300));
    let (mut to_promote, mut to_stop) = (Vec::new(), Vec::new());
    let mut last = String::new();
    for i in 1..=ROLLOUTS {
        last = format!("g{i}");
        // 1. a new container starts; 2. the daemon promotes it; 3. the old one stops.
        let t = Instant::now();
        let new = lab.haproxy("host", &bind, &last);
        let pid = new.pid().expect("pid");
        promoted(&daemon, pid);
        to_promote.push(t.elapsed());
        let t = Instant::now();
        old.stop(STOP_SECS).expect("docker stop the old haproxy");
        to_stop.push(t.elapsed());
        if t.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "{test}: docker stop of g{} took {:.1?}; its log:\n{}",
                i - 1,
                t.elapsed(),
                old.tail(10)
            );
        }
        old = new;
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!running.is_finished(), "the load ran out ({MAX_LOAD:?}) before the rollouts ended");
    let report = running.stop();
    let group = lab.group(netns_inode(std::process::id()), port);
    let c = &group.counters;
    print_report(test, &format!("{ROLLOUTS} rollouts"), &report);
    eprintln!("{test}: start to promotion {}; docker stop {}", spread(&mut to_promote), spread(&mut to_stop));
    eprintln!(
        "{test}: steered_active {}, migrated {}, migrated_by_kernel {}, fallback_no_config {}, \
         fallback_empty_slot {}, helper_error {}; {} promotions; {:.0?} in all",
        c.steered_active,
        c.migrated,
        c.migrated_by_kernel,
        c.fallback_no_config,
        c.fallback_empty_slot,
        c.helper_error,
        promotions(&daemon),
        start.elapsed()
    );
    assert_no_failures(&report, "surge rollouts of HAProxy containers");
    assert!(report.ok > 1_000, "the load ran: {report:#?}");
    assert!(answered_by(&report, &last) > 0, "the last generation answered: {:?}", report.by_generation);
    assert_eq!(promotions(&daemon), ROLLOUTS as usize + 1, "one promotion per container:\n{}", daemon.log());
    assert!(c.steered_active > report.ok / 2, "the program steered: {c:?}");
    assert_eq!(c.helper_error, 0, "{c:?}");
    let active = group.sockets.iter().find(|s| s.role == "active").expect("an active socket");
    assert_eq!(active.pid, old.pid().expect("pid"), "the last container is active: {group:?}");
}

#[test]
fn pods_in_their_own_network_namespaces_reload_together_and_lose_nothing() {
    let test = "pods_in_their_own_network_namespaces_reload_together_and_lose_nothing";
    let Some(lab) = Lab::new(test, "pods") else { return };
    let start = Instant::now();
    let pauses = [lab.pause(), lab.pause()];
    let pids: Vec<u32> = pauses.iter().map(|p| p.pid().expect("pause pid")).collect();
    let nets: Vec<String> = pids.iter().map(|p| format!("/proc/{p}/ns/net")).collect();
    let networks: Vec<String> = pauses.iter().map(|p| format!("container:{}", p.id())).collect();
    let bind = format!(":{POD_PORT}");
    let port_arg = POD_PORT.to_string();
    let mut args = vec!["--port", &port_arg];
    for net in &nets {
        args.extend(["--netns", net]);
    }
    // Started first, so that each pod's first generation is promoted on its event (the
    // next test covers adoption).
    let daemon = lab.steer_daemon(&args);
    let mut olds: Vec<Container> = networks.iter().map(|n| lab.haproxy(n, &bind, "g0")).collect();
    for net in &nets {
        wait_serving(POD_PORT, Some(PathBuf::from(net)));
    }
    for old in &olds {
        promoted(&daemon, old.pid().expect("pid"));
    }
    let loads: Vec<LoadHandle> =
        nets.iter().map(|n| http_load(POD_PORT, Some(PathBuf::from(n)), CONCURRENCY / 2)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut to_promote = Vec::new();
    for i in 1..=ROLLOUTS {
        let generation = format!("g{i}");
        let t = Instant::now();
        // Both pods' new generations start at the same moment.
        let news: Vec<Container> = std::thread::scope(|s| {
            let started: Vec<_> =
                networks.iter().map(|n| s.spawn(|| lab.haproxy(n, &bind, &generation))).collect();
            started.into_iter().map(|h| h.join().expect("start thread")).collect()
        });
        for new in &news {
            promoted(&daemon, new.pid().expect("pid"));
        }
        to_promote.push(t.elapsed());
        std::thread::scope(|s| {
            for old in &olds {
                s.spawn(|| old.stop(STOP_SECS).expect("docker stop the old haproxy"));
            }
        });
        olds = news;
    }
    std::thread::sleep(Duration::from_millis(300));
    let reports: Vec<LoadReport> = loads
        .into_iter()
        .map(|l| {
            assert!(!l.is_finished(), "the load ran out ({MAX_LOAD:?}) before the rollouts ended");
            l.stop()
        })
        .collect();
    eprintln!("{test}: both pods' start to promotion {}", spread(&mut to_promote));
    for (k, (report, old)) in reports.iter().zip(&olds).enumerate() {
        let group = lab.group(netns_inode(pids[k]), POD_PORT);
        let c = &group.counters;
        print_report(test, &format!("pod {k}"), report);
        eprintln!(
            "{test}: pod {k}: netns {}, generation {}, steered_active {}, migrated {}, migrated_by_kernel {}, \
             helper_error {}",
            netns_inode(pids[k]),
            group.generation,
            c.steered_active,
            c.migrated,
            c.migrated_by_kernel,
            c.helper_error
        );
        assert_no_failures(report, &format!("pod {k}'s rollouts"));
        assert!(report.ok > 500, "pod {k}'s load ran: {report:#?}");
        let last = format!("g{ROLLOUTS}");
        assert!(
            answered_by(report, &last) > 0,
            "pod {k}'s last generation answered: {:?}",
            report.by_generation
        );
        assert!(c.steered_active > report.ok / 2, "pod {k}: the program steered: {c:?}");
        let active = group.sockets.iter().find(|s| s.role == "active").expect("an active socket");
        assert_eq!(active.pid, old.pid().expect("pid"), "pod {k}'s newest container is active: {group:?}");
    }
    let expected = 2 * (ROLLOUTS as usize + 1);
    eprintln!("{test}: {} promotions; {:.0?} in all", promotions(&daemon), start.elapsed());
    assert_eq!(promotions(&daemon), expected, "one promotion per container:\n{}", daemon.log());
}

#[test]
fn a_killed_steer_container_restarts_under_load_with_the_same_pinned_maps() {
    let test = "a_killed_steer_container_restarts_under_load_with_the_same_pinned_maps";
    let Some(lab) = Lab::new(test, "restart") else { return };
    let start = Instant::now();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let old = lab.haproxy("host", &bind, "g0");
    wait_serving(port, None);
    let port_arg = port.to_string();
    let mut daemon = lab.steer_daemon(&["--port", &port_arg]);
    promoted(&daemon, old.pid().expect("pid"));
    let before = pinned_ids(&lab.state_dir);
    let running = http_load(port, None, CONCURRENCY);
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill().expect("docker kill the steer container");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    daemon.start().expect("docker start the steer container");
    daemon.wait_for(&["\"message\":\"watching\""], "the restarted daemon to watch", WAIT).expect("restart");
    let restart = t.elapsed();
    // The restarted daemon still follows a rollout.
    let new = lab.haproxy("host", &bind, "g1");
    promoted(&daemon, new.pid().expect("pid"));
    old.stop(STOP_SECS).expect("docker stop the old haproxy");
    std::thread::sleep(Duration::from_millis(500));
    let report = running.stop();
    let after = pinned_ids(&lab.state_dir);
    let c = lab.group(netns_inode(std::process::id()), port).counters;
    print_report(test, "kill, restart, one rollout", &report);
    eprintln!(
        "{test}: restart to watching {restart:.1?}; {} pins, ids {:?}; steered_active {}, migrated {}; {:.0?} in all",
        after.len(),
        after.iter().map(|(_, id)| id).collect::<Vec<_>>(),
        c.steered_active,
        c.migrated,
        start.elapsed()
    );
    assert_no_failures(&report, "a restart of the steer container");
    assert!(!before.is_empty(), "the daemon pinned its program and maps");
    assert_eq!(before, after, "the same pinned program and maps after the restart");
    assert!(answered_by(&report, "g1") > 0, "the new generation answered: {:?}", report.by_generation);
    assert!(c.steered_active > report.ok / 2, "the program steered: {c:?}");
}

/// A steer container started after the pods (a node's agent restarted, or deployed
/// later) adopts each pod's listener, though both listen on the same address and port.
#[test]
fn a_daemon_started_after_two_pods_adopts_each_pods_server() {
    let test = "a_daemon_started_after_two_pods_adopts_each_pods_server";
    let Some(lab) = Lab::new(test, "adopt") else { return };
    let pauses = [lab.pause(), lab.pause()];
    let pids: Vec<u32> = pauses.iter().map(|p| p.pid().expect("pause pid")).collect();
    let nets: Vec<String> = pids.iter().map(|p| format!("/proc/{p}/ns/net")).collect();
    let bind = format!(":{POD_PORT}");
    let servers: Vec<Container> =
        pauses.iter().map(|p| lab.haproxy(&format!("container:{}", p.id()), &bind, "g0")).collect();
    for net in &nets {
        wait_serving(POD_PORT, Some(PathBuf::from(net)));
    }
    let port_arg = POD_PORT.to_string();
    let mut args = vec!["--port", &port_arg];
    for net in &nets {
        args.extend(["--netns", net]);
    }
    let daemon = lab.steer_daemon(&args);
    for (k, server) in servers.iter().enumerate() {
        let pid = server.pid().expect("pid");
        let adopted = daemon.lines_with(&["\"message\":\"promoted\"", &format!("\"pid\":{pid}")]);
        assert!(
            !adopted.is_empty(),
            "pod {k}'s haproxy (pid {pid}) was not adopted; daemon log:\n{}",
            daemon.log()
        );
        let group = lab.group(netns_inode(pids[k]), POD_PORT);
        let active = group.sockets.iter().find(|s| s.role == "active").expect("an active socket");
        assert_eq!(active.pid, pid, "pod {k}'s server is active: {group:?}");
    }
}
