//! `steer reload --old PID -- CMD...`: a handover that needs no kernel
//! migration. It starts CMD, waits for its listeners and its readiness, promotes
//! it, waits until the old generation has nothing left queued, and only then
//! signals it. Until the promote, nothing is changed; a refusal before it
//! leaves the old generation active and kills nothing.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use steer_abi::GroupKey;

use super::{
    OpError,
    promote::{self, Change},
    ready::{Gate, NotReady, Target},
};
use crate::{
    netns, preflight,
    proc::{self, ProcError, Process},
    sockdiag::{self, Handshake},
    sockets::{self, SocketError},
    state::StateDir,
};

/// How often the new generation's listeners are looked for.
const LISTEN_POLL: Duration = Duration::from_millis(10);
/// How long a listening CMD that has forked a listening child gets to exit
/// (a daemonising server's parent) before it is taken as the new generation.
const SETTLE: Duration = Duration::from_millis(50);
/// How often a gate that said "not ready" is asked again.
const READY_POLL: Duration = Duration::from_millis(100);
/// How often the old generation's queues are read while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// What to reload.
#[derive(Debug, Clone)]
pub struct Request {
    /// The process serving now (the active generation).
    pub old: u32,
    /// Only these ports (empty: every group in which `old` is active).
    pub ports: Vec<u16>,
    /// The new generation's command line.
    pub cmd: Vec<String>,
    pub gate: Gate,
    /// From CMD's start: how long it has to listen and pass the gate.
    pub ready_timeout: Duration,
    /// After the promote: how long the old generation's queues may take to empty.
    pub drain_timeout: Duration,
    pub signal: Signal,
}

/// A signal, by number, with the name it is reported under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub number: i32,
    pub name: &'static str,
}

const SIGNALS: [(&str, i32); 15] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("PWR", libc::SIGPWR),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
];

impl Signal {
    pub const TERM: Signal = Signal { number: libc::SIGTERM, name: "SIGTERM" };
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    /// `TERM`, `SIGTERM`, `sigterm`, `15`; numbers up to `SIGRTMAX` (64).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(number) = s.parse::<i32>() {
            if let Some((name, _)) = SIGNALS.iter().find(|(_, n)| *n == number) {
                let name = SIGNAL_NAMES.iter().find(|full| &full[3..] == *name).copied().unwrap_or("SIG?");
                return Ok(Signal { number, name });
            }
            return if (1..=64).contains(&number) {
                Ok(Signal { number, name: "signal" })
            } else {
                Err(format!("{number} is not a signal number (1 to 64)"))
            };
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .position(|(name, _)| *name == bare)
            .map(|i| Signal { number: SIGNALS[i].1, name: SIGNAL_NAMES[i] })
            .ok_or_else(|| format!("{s:?} is not a signal name or number (e.g. TERM, SIGUSR1, QUIT, 15)"))
    }
}

/// `SIGNALS`' names with the `SIG` prefix, in the same order.
const SIGNAL_NAMES: [&str; 15] = [
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGCONT", "SIGSTOP",
    "SIGTSTP", "SIGWINCH", "SIGALRM", "SIGPWR", "SIGTTIN", "SIGTTOU",
];

/// Why a reload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(
        "process {pid} is not the active generation of {group}; promote it first (`steer promote {pid}`), so that the new generation gets no connection before it is ready"
    )]
    NotActive { pid: u32, group: String },
    #[error(
        "--ready-http {url} is the address being reloaded, where the program sends a probe to the active generation, not the new one; give the new generation's own health address, or use --ready-cmd"
    )]
    ProbeOnGroup { url: String },
    #[error("cannot start `{cmd}`; nothing was promoted and pid {old} keeps serving")]
    Spawn {
        cmd: String,
        old: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{cmd}` (pid {pid}) {how} before it listened on {groups}; nothing was promoted and pid {old} keeps serving"
    )]
    Exited { cmd: String, pid: u32, how: String, groups: String, old: u32 },
    #[error(
        "pid {pid} did not listen on {groups} within {secs} s; nothing was promoted, pid {old} keeps serving and pid {pid} is left running"
    )]
    NoListeners { pid: u32, groups: String, secs: f64, old: u32 },
    #[error(
        "pid {pid} did not pass the readiness check within {secs} s ({reason}); nothing was promoted, pid {old} keeps serving and pid {pid} is left running"
    )]
    NotReady { pid: u32, secs: f64, reason: NotReady, old: u32 },
    #[error(
        "pid {pid} exited before it passed the readiness check; nothing was promoted and pid {old} keeps serving"
    )]
    ExitedUnready { pid: u32, old: u32 },
    #[error("promoted pid {new}, but sending {signal} to pid {old} failed; stop pid {old} yourself")]
    Signal {
        new: u32,
        old: u32,
        signal: Signal,
        #[source]
        source: std::io::Error,
    },
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Report {
    pub new_pid: u32,
    pub new_comm: String,
    pub changes: Vec<Change>,
    pub old_pid: u32,
    pub drain: Drain,
    pub signal: Signal,
}

/// How the old generation drained after the promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub elapsed: Duration,
    /// False when `--drain-timeout` ran out first.
    pub drained: bool,
    /// Connections left in the old sockets' accept queues at the end.
    pub queued: u32,
    /// Handshakes pending at the promote and still pending at the end; `None`
    /// when they could not be read (no CAP_SYS_ADMIN to enter the namespace).
    pub handshakes: Option<usize>,
    /// The old process exited by itself meanwhile.
    pub old_exited: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "new generation: pid {} ({})", self.new_pid, self.new_comm)?;
        for change in &self.changes {
            writeln!(f, "{change}")?;
        }
        let d = &self.drain;
        let ms = d.elapsed.as_millis();
        let handshakes = d.handshakes.map_or_else(|| "not measured".to_owned(), |n| n.to_string());
        if d.old_exited {
            writeln!(f, "pid {} exited by itself after {ms} ms; no signal sent", self.old_pid)
        } else if d.drained {
            writeln!(
                f,
                "pid {} drained in {ms} ms (accept queue 0, pending handshakes {handshakes})",
                self.old_pid
            )?;
            writeln!(f, "sent {} to pid {}", self.signal, self.old_pid)
        } else {
            writeln!(
                f,
                "pid {} did not drain within {ms} ms: {} queued, pending handshakes {handshakes}",
                self.old_pid, d.queued
            )?;
            writeln!(f, "sent {} to pid {}", self.signal, self.old_pid)
        }
    }
}

/// Runs a reload. Refusals happen before the promote and change nothing.
pub fn run(state_dir: &Path, req: &Request) -> Result<Report, ReloadError> {
    preflight::all().map_err(OpError::from)?;
    let old = Process::open(req.old)?;
    let old_pidfd = sockets::open_pidfd(old.pid)?;
    let groups = active_groups(state_dir, &old, &req.ports)?;
    let ports: Vec<u16> = groups.iter().map(|g| g.port).collect::<BTreeSet<_>>().into_iter().collect();
    let addrs: Vec<SocketAddr> = groups.iter().map(sockets::key_addr).collect();
    let labels = groups.iter().map(sockets::key_label).collect::<Vec<_>>().join(", ");
    if let Some(probe) = &req.gate.http
        && addrs
            .iter()
            .any(|a| a.port() == probe.addr.port() && (a.ip() == probe.addr.ip() || a.ip().is_unspecified()))
    {
        return Err(ReloadError::ProbeOnGroup { url: probe.to_string() });
    }

    let started = Instant::now();
    let deadline = started + req.ready_timeout;
    let secs = req.ready_timeout.as_secs_f64();
    let cmd_text = req.cmd.join(" ");
    let mut child = spawn(&req.cmd).map_err(|source| ReloadError::Spawn {
        cmd: cmd_text.clone(),
        old: old.pid,
        source,
    })?;
    tracing::info!(pid = child.id(), cmd = %cmd_text, "started the new generation");

    // 2. Its listeners, in the old generation's namespace and groups.
    let new = loop {
        if let Some(found) = find_listener(&old, &groups, child.id()) {
            // A daemonising server's parent listens, forks the child that keeps
            // the sockets, and exits: give it a moment to, so that the child
            // is the one promoted (a server's master that stays is kept).
            if found.pid != child.id() || descendants().len() < 2 {
                break found;
            }
            std::thread::sleep(SETTLE);
            if is_alive(found.pid) {
                break found;
            }
            continue;
        }
        match child.try_wait() {
            Ok(Some(status)) if !status.success() || descendants().is_empty() => {
                return Err(ReloadError::Exited {
                    cmd: cmd_text,
                    pid: child.id(),
                    how: exit_phrase(status),
                    groups: labels,
                    old: old.pid,
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(ReloadError::NoListeners { pid: child.id(), groups: labels, secs, old: old.pid });
        }
        std::thread::sleep(LISTEN_POLL);
    };
    tracing::info!(pid = new.pid, comm = %new.comm, "the new generation listens");

    // 3. The readiness gate.
    loop {
        let target = Target { process: &new, groups: &addrs };
        match req.gate.check(target, deadline) {
            Ok(()) => break,
            Err(reason) => {
                if Process::open(new.pid).is_err() {
                    return Err(ReloadError::ExitedUnready { pid: new.pid, old: old.pid });
                }
                if Instant::now() + READY_POLL >= deadline {
                    return Err(ReloadError::NotReady { pid: new.pid, secs, reason, old: old.pid });
                }
                tracing::debug!(pid = new.pid, %reason, "not ready yet");
                std::thread::sleep(READY_POLL);
            }
        }
    }
    reap(&mut child);
    // A daemonising server's parent can listen, pass, and exit: its child holds the same sockets.
    let mut new = match Process::open(new.pid) {
        Ok(_) => new,
        Err(_) => find_listener(&old, &groups, child.id())
            .ok_or(ReloadError::ExitedUnready { pid: new.pid, old: old.pid })?,
    };

    // 4. Promote. From here on the new generation gets every new connection.
    let promote_req = promote::Request { pid: new.pid, ports: ports.clone(), weight: 100, take_over: false };
    let changes = match promote::run(state_dir, &promote_req) {
        // It exited between the check and the promote (refused before any write): its child holds the sockets.
        Err(
            OpError::Socket(SocketError::Vanished { .. }) | OpError::Proc(ProcError::NoSuchProcess { .. }),
        ) => {
            let again = find_listener(&old, &groups, child.id())
                .ok_or(ReloadError::ExitedUnready { pid: new.pid, old: old.pid })?;
            new = again;
            promote::run(state_dir, &promote::Request { pid: new.pid, ..promote_req })?
        }
        other => other?,
    };

    // 5. Drain: the old sockets' accept queues, and the handshakes pending at the promote.
    let old_inodes: BTreeSet<u64> = sockets::listening_sockets(&old, &ports)
        .map(|l| l.iter().filter(|(_, l)| addrs.contains(&l.addr)).map(|(_, l)| l.inode).collect())
        .unwrap_or_default();
    let drain = drain(&old, &old_inodes, &ports, req.drain_timeout);

    // 6. Signal the old generation (through its pidfd: never another process that reused the pid).
    if !drain.old_exited {
        send_signal(&old_pidfd, req.signal).map_err(|source| ReloadError::Signal {
            new: new.pid,
            old: old.pid,
            signal: req.signal,
            source,
        })?;
    }
    Ok(Report { new_pid: new.pid, new_comm: new.comm, changes, old_pid: old.pid, drain, signal: req.signal })
}

/// The groups of `old`'s listeners (on `ports`, if given) in which `old` is the
/// active generation. With `ports`, every group on them must be; without, at
/// least one.
fn active_groups(state_dir: &Path, old: &Process, ports: &[u16]) -> Result<Vec<GroupKey>, ReloadError> {
    let listening = sockets::listening_sockets(old, ports)?;
    let missing: Vec<u16> =
        ports.iter().copied().filter(|p| !listening.iter().any(|(_, l)| l.addr.port() == *p)).collect();
    if !missing.is_empty() {
        return Err(SocketError::NoListeners {
            pid: old.pid,
            comm: old.comm.clone(),
            ports: super::ports_phrase(&missing),
        }
        .into());
    }
    let candidates = sockets::duplicate(old, &listening)?;
    let mut keys: Vec<(GroupKey, u64)> = candidates.iter().map(|c| (c.key, c.cookie)).collect();
    drop(candidates); // close the duplicates now
    keys.sort_by_key(|(k, _)| (k.port, k.family, k.addr, k.ifindex));
    let instance = StateDir::open_for_read(state_dir)
        .map(|s| s.instance(old.netns))
        .transpose()
        .map_err(OpError::from)?
        .flatten();
    let metas = instance
        .as_ref()
        .map(crate::state::Instance::slot_metas)
        .transpose()
        .map_err(OpError::from)?
        .unwrap_or_default();
    let is_active = |key: &GroupKey| {
        let Some(config) = instance.as_ref().and_then(|i| i.config(key)) else { return false };
        let range = config.active;
        (range.first..range.first + range.count)
            .filter_map(|s| metas.get(&s))
            .any(|m| keys.iter().any(|(k, cookie)| k == key && *cookie == m.cookie))
    };
    let mut groups: Vec<GroupKey> = keys.iter().map(|(k, _)| *k).collect();
    groups.dedup();
    let (active, inactive): (Vec<GroupKey>, Vec<GroupKey>) = groups.into_iter().partition(is_active);
    match inactive.first() {
        Some(key) if !ports.is_empty() || active.is_empty() => {
            Err(ReloadError::NotActive { pid: old.pid, group: sockets::key_label(key) })
        }
        _ => Ok(active),
    }
}

/// Starts CMD in a session of its own (so that steer's exit, or a signal to
/// steer's process group, does not reach it), with steer's stdio. Steer
/// becomes a child subreaper first, so a daemonising server's child is
/// reparented to steer rather than to init, and stays findable as a descendant.
fn spawn(cmd: &[String]) -> std::io::Result<Child> {
    let (program, args) = cmd.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot become a child subreaper; a daemonising server's child may not be found");
    }
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: setsid is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Every live descendant of steer: the new generation, the children it forked,
/// and their orphans (reparented to steer, the subreaper), oldest first.
fn descendants() -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse().ok()))
        .flat_map(|tid: u32| task_children(std::process::id(), tid))
        .collect();
    while let Some(pid) = queue.pop() {
        if out.contains(&pid) || !is_alive(pid) {
            continue;
        }
        out.push(pid);
        queue.extend(proc::children(pid));
    }
    out.sort_by_key(|p| (proc::start_time(*p).unwrap_or(u64::MAX), *p));
    out
}

/// Exists and is not a zombie (`/proc/PID/stat` field 3).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.get(s.rfind(')')? + 1..)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

fn task_children(pid: u32, tid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .map(|t| t.split_whitespace().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

/// The oldest of CMD's process tree (CMD itself first) that holds a listener
/// in every group, in the old generation's network namespace.
fn find_listener(old: &Process, groups: &[GroupKey], root: u32) -> Option<Process> {
    let mut pids = descendants();
    if let Some(i) = pids.iter().position(|p| *p == root) {
        pids.remove(i);
        pids.insert(0, root);
    }
    pids.into_iter().filter_map(|pid| Process::open(pid).ok()).filter(|p| p.netns == old.netns).find(|p| {
        let ports: Vec<u16> = groups.iter().map(|g| g.port).collect();
        let Ok(listening) = sockets::listening_sockets(p, &ports) else { return false };
        let Ok(candidates) = sockets::duplicate(p, &listening) else { return false };
        groups.iter().all(|g| candidates.iter().any(|c| c.key == *g))
    })
}

/// Reaps CMD if it has exited (a daemonising server's parent), so that it
/// leaves no zombie behind while steer drains.
fn reap(child: &mut Child) {
    let _ = child.try_wait();
}

fn exit_phrase(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}

/// Waits until the old sockets' accept queues are empty and every handshake
/// pending right after the promote has completed or gone, or `timeout`.
///
/// After the promote the program sends no new connection to the old sockets,
/// but a request already in a SYN queue completes on the socket it started on,
/// and lands in that socket's accept queue. Which listener a request belongs to
/// is not reported (see [`sockdiag::pending_handshakes`]), so the set taken
/// right after the promote stands for the old generation's: it holds every
/// request of the old sockets still pending then (and perhaps a few of the new
/// one's, which complete just as fast). The handshakes are read before the
/// queues in each round, so one that completes in between is counted queued.
fn drain(old: &Process, inodes: &BTreeSet<u64>, ports: &[u16], timeout: Duration) -> Drain {
    let started = Instant::now();
    let read_handshakes = || -> Option<BTreeSet<Handshake>> {
        netns::run_in(old.pid, old.netns, || sockdiag::pending_handshakes(ports))
            .ok()?
            .ok()
            .map(|v| v.into_iter().collect())
    };
    let at_promote = read_handshakes();
    loop {
        let handshakes = at_promote
            .as_ref()
            .and_then(|before| read_handshakes().map(|now| before.intersection(&now).count()));
        let queued = match Process::open(old.pid) {
            Ok(p) => queued(&p, inodes, ports),
            Err(_) => None,
        };
        let Some(queued) = queued else {
            return Drain {
                elapsed: started.elapsed(),
                drained: true,
                queued: 0,
                handshakes,
                old_exited: true,
            };
        };
        let drained = queued == 0 && handshakes.unwrap_or(0) == 0;
        if drained || started.elapsed() >= timeout {
            return Drain { elapsed: started.elapsed(), drained, queued, handshakes, old_exited: false };
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// The summed accept queues of the old sockets; `None` once the process is gone.
fn queued(old: &Process, inodes: &BTreeSet<u64>, ports: &[u16]) -> Option<u32> {
    match sockets::listening_sockets(old, ports) {
        Ok(listening) => Some(
            listening.iter().filter(|(_, l)| inodes.contains(&l.inode)).map(|(_, l)| l.accept_queue).sum(),
        ),
        Err(SocketError::NoListeners { .. }) => Some(0),
        Err(_) => proc::comm(old.pid).map(|_| 0),
    }
}

/// `pidfd_send_signal(2)`.
fn send_signal(pidfd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal.number,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        for (text, number, name) in [
            ("TERM", libc::SIGTERM, "SIGTERM"),
            ("SIGTERM", libc::SIGTERM, "SIGTERM"),
            ("sigusr1", libc::SIGUSR1, "SIGUSR1"),
            ("QUIT", libc::SIGQUIT, "SIGQUIT"),
            ("15", libc::SIGTERM, "SIGTERM"),
            ("10", libc::SIGUSR1, "SIGUSR1"),
            ("34", 34, "signal"),
        ] {
            assert_eq!(text.parse::<Signal>(), Ok(Signal { number, name }), "{text}");
        }
        for bad in ["", "TERMINATE", "0", "65", "-1", "SIG"] {
            assert!(bad.parse::<Signal>().is_err(), "{bad}");
        }
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
        assert_eq!(SIGNALS.len(), SIGNAL_NAMES.len());
        for ((short, _), full) in SIGNALS.iter().zip(SIGNAL_NAMES) {
            assert_eq!(&full[3..], *short);
        }
    }

    #[test]
    fn our_own_children_are_descendants() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(descendants().contains(&child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!descendants().contains(&child.id()));
    }

    #[test]
    fn a_report_says_what_happened() {
        let drain = Drain {
            elapsed: Duration::from_millis(3),
            drained: true,
            queued: 0,
            handshakes: Some(0),
            old_exited: false,
        };
        let report = Report {
            new_pid: 20,
            new_comm: "srv".into(),
            changes: vec![],
            old_pid: 10,
            drain,
            signal: Signal::TERM,
        };
        assert_eq!(
            report.to_string(),
            "new generation: pid 20 (srv)\npid 10 drained in 3 ms (accept queue 0, pending handshakes 0)\nsent SIGTERM to pid 10\n"
        );
        let timed_out =
            Report { drain: Drain { drained: false, queued: 4, handshakes: None, ..drain }, ..report };
        assert!(
            timed_out
                .to_string()
                .contains("did not drain within 3 ms: 4 queued, pending handshakes not measured")
        );
    }
}
