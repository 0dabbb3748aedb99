//! The shipped unit, `deploy/systemd/steer.service`, run for real: systemd is the init
//! of a containerd container (Debian's root filesystem, `steer_harness::sysimage`), with
//! the unit and `deploy/systemd/haproxy.service.d/10-steer.conf` installed as
//! deploy/README.md says, plus the daemon-mode sketch of that drop-in uncommented, so
//! that each `systemctl reload haproxy` starts a new HAProxy process with a socket of its
//! own. Under 20 clients opening a new connection per request, 10 reloads fail nothing,
//! and steer's daemon, confined by every setting of the unit, promoted each generation.
//!
//! The container gets every capability this process has (its own bounding set), a bpffs
//! of its own at /sys/fs/bpf (systemd mounts one at boot on a host; here the runtime
//! does), and its own network namespace, where the load runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use steer::ops::status::Status;
use steer_harness::load::{self, LoadConfig, Protocol};
use steer_harness::sysimage::{self, Ctr, SYSTEMD_IMAGE_REF};

use crate::common::{answered_by, assert_no_failures, steer_bin};

const RELOADS: u32 = 10;
const CLIENTS: usize = 20;

/// Capability names by number (include/uapi/linux/capability.h).
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// HAProxy answering `gen=<pid>` itself on 127.0.0.1:8080. `maxconn` keeps its file
/// limit under the container's 1024.
const HAPROXY_CFG: &str = "global
    maxconn 400
    grace 100ms
    hard-stop-after 10s
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend steer_systemd
    bind 127.0.0.1:8080
    http-request return status 200 content-type text/plain lf-string \"gen=%pid pid=%pid\\n\"
";

/// The container, killed and removed on drop, with its scratch directory.
struct Machine {
    ctr: Ctr,
    id: String,
    dir: PathBuf,
}

impl Machine {
    fn exec(&self, args: &[&str]) -> std::process::Output {
        let exec_id = format!("x{}", EXEC.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut cmd = self.ctr.command();
        cmd.args(["task", "exec", "--exec-id", &exec_id, &self.id]).args(args);
        cmd.output().expect("ctr task exec")
    }

    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .trim()
            .to_owned()
    }

    fn pid(&self) -> u32 {
        let tasks = self.ctr.run(&["task", "ls"]).expect("ctr task ls");
        tasks
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(self.id.as_str())).then(|| f.next()?.parse().ok()).flatten()
            })
            .expect("the container's init pid")
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.ctr.command().args(["task", "kill", "-s", "SIGKILL", &self.id]).output();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.ctr.command().args(["task", "rm", "-f", &self.id]).output();
        let _ = self.ctr.command().args(["container", "rm", &self.id]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Distinguishes `ctr task exec` ids.
static EXEC: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The commented `[Service]` sketch at the end of 10-steer.conf, uncommented.
fn daemon_mode_dropin(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join("deploy/systemd/haproxy.service.d/10-steer.conf"))
        .expect("drop-in");
    let start = text.find("# [Service]").expect("the drop-in's daemon-mode sketch");
    text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Capabilities in this process's bounding set, as `ctr run --cap-add` takes them.
fn own_capabilities() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd");
    CAPS.iter()
        .enumerate()
        .filter(|(bit, _)| bnd & (1 << bit) != 0)
        .map(|(_, c)| format!("CAP_{c}"))
        .collect()
}

#[test]
fn the_shipped_unit_under_systemd_promotes_every_reload_with_none_failed() {
    let test = "the_shipped_unit_under_systemd_promotes_every_reload_with_none_failed";
    if !steer_harness::require_privileges(test) {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let ctr = match Ctr::find() {
        Ok(ctr) => ctr,
        Err(reason) => {
            assert!(!ci || !Path::new("/usr/bin/ctr").exists(), "CI=true and ctr is installed, but {reason}");
            eprintln!("skipping {test}: {reason}");
            return;
        }
    };
    if steer_harness::find_in_path("debootstrap").is_none() {
        assert!(!ci, "CI=true but debootstrap is missing (cargo xtask setup installs it)");
        eprintln!("skipping {test}: no debootstrap (apt-get install debootstrap)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = root.join("target/image");
    std::fs::create_dir_all(&work).expect("target/image");
    sysimage::ensure(&ctr, &work).expect("the systemd image");

    let id = format!("steer-systemd-{}", std::process::id());
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let m = Machine { ctr: ctr.clone(), id: id.clone(), dir: dir.clone() };
    std::fs::write(dir.join("haproxy.cfg"), HAPROXY_CFG).expect("haproxy.cfg");
    std::fs::write(dir.join("20-daemon-mode.conf"), daemon_mode_dropin(&root)).expect("drop-in");
    let bind = |src: &Path, dst: &str| format!("type=bind,src={},dst={dst},options=rbind:ro", src.display());
    let mut args: Vec<String> = ["run", "-d", "--snapshotter", "native"].map(str::to_owned).to_vec();
    for cap in own_capabilities() {
        args.extend(["--cap-add".to_owned(), cap]);
    }
    for mount in [
        "type=tmpfs,src=tmpfs,dst=/run,options=nosuid:nodev:mode=755".to_owned(),
        "type=tmpfs,src=tmpfs,dst=/run/lock,options=nosuid:nodev:noexec".to_owned(),
        "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev".to_owned(),
        "type=bind,src=/sys/fs/cgroup,dst=/sys/fs/cgroup,options=rbind:rw".to_owned(),
        "type=bpf,src=bpf,dst=/sys/fs/bpf,options=rw:nosuid:nodev:noexec:mode=700".to_owned(),
        bind(&steer_bin(), "/usr/local/bin/steer"),
        bind(&root.join("deploy/systemd/steer.service"), "/etc/systemd/system/steer.service"),
        bind(
            &root.join("deploy/systemd/haproxy.service.d/10-steer.conf"),
            "/etc/systemd/system/haproxy.service.d/10-steer.conf",
        ),
        bind(&dir.join("20-daemon-mode.conf"), "/etc/systemd/system/haproxy.service.d/20-daemon-mode.conf"),
        bind(&dir.join("haproxy.cfg"), "/etc/haproxy/haproxy.cfg"),
    ] {
        args.extend(["--mount".to_owned(), mount]);
    }
    args.extend(["--env", "container=containerd", SYSTEMD_IMAGE_REF, &id, "/sbin/init"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctr.run(&args).expect("start the systemd container");

    // Boot: HAProxy's drop-in pulls steer in before it (Wants=, After=).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = m.sh("systemctl is-active steer haproxy");
        if state == "active\nactive" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "steer and haproxy are not active: {state}\n{}",
            m.sh("systemctl --failed; journalctl -b -o cat -u steer -u haproxy | tail -40")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // HAProxy -D binds in the process systemd starts, which forks the one that stays
    // (PIDFile=): steer promotes the socket on listen and follows it to the child.
    let active_pid = || -> Option<String> {
        let status: Status = serde_json::from_str(&m.sh("steer status --json")).ok()?;
        let group = status.namespaces.into_iter().flat_map(|n| n.groups).find(|g| g.port == 8080)?;
        group.sockets.iter().find(|s| s.role == "active").map(|s| s.pid.to_string())
    };
    let wait_promoted = |pid: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while active_pid().as_deref() != Some(pid) {
            assert!(
                Instant::now() < deadline,
                "steer did not make haproxy pid {pid} active:\n{}",
                m.sh("steer status; journalctl -o cat -u steer | tail -20")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let main_pid = || m.sh("systemctl show -P MainPID haproxy");
    let first = main_pid();
    wait_promoted(&first);

    let mut cfg = LoadConfig::new("127.0.0.1:8080".parse().expect("addr"));
    cfg.netns = Some(PathBuf::from(format!("/proc/{}/ns/net", m.pid())));
    cfg.concurrency = CLIENTS;
    cfg.protocol = Protocol::Http;
    cfg.max_duration = Duration::from_secs(120);
    let running = load::start(cfg).expect("start load");
    std::thread::sleep(Duration::from_millis(500));
    let mut pids = vec![first];
    for _ in 0..RELOADS {
        let out = m.exec(&["systemctl", "reload", "haproxy"]);
        assert!(out.status.success(), "systemctl reload haproxy: {}", String::from_utf8_lossy(&out.stderr));
        let pid = main_pid();
        wait_promoted(&pid);
        pids.push(pid);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = running.stop();
    eprintln!(
        "{test}: {} requests, {} failed, {RELOADS} reloads: {report:?}",
        report.requests,
        report.failed()
    );
    assert_no_failures(&report, "reloads of HAProxy under systemd with the shipped steer unit");
    let last = pids.last().expect("a pid");
    assert!(answered_by(&report, last) > 0, "the last generation answered: {report:?}");

    let json = m.sh("steer status --json");
    let status: Status = serde_json::from_str(&json).unwrap_or_else(|e| panic!("status --json: {e}: {json}"));
    let group = status.namespaces.iter().flat_map(|n| &n.groups).find(|g| g.port == 8080).expect("the group");
    let active = group.sockets.iter().find(|s| s.role == "active").expect("an active socket");
    assert_eq!(active.pid.to_string(), *last, "the newest HAProxy is active: {json}");
    assert!(group.generation > u64::from(RELOADS), "one generation per reload: {json}");
    assert!(group.counters.steered_active >= report.requests / 2, "the program steered: {json}");
    let show = m.sh("systemctl show -P NRestarts steer");
    assert_eq!(show, "0", "steer never restarted");
    eprintln!("{test}: steer's warnings: {}", m.sh("journalctl -o cat -u steer | grep '\"WARN\"' || true"));
}
