//! `steer reload --old PID -- CMD...`: a handover that needs no kernel
//! migration. It starts CMD, waits for its listeners and its readiness, promotes
//! it, waits until the old generation has nothing left queued, and only then
//! signals it. Until the promote, nothing is changed; a refusal before it
//! leaves the old generation active and kills nothing.
mod drain;
mod signal;
mod tree;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

pub use drain::Drain;
pub use signal::Signal;
use steer_abi::{GroupConfig, GroupKey};
use tree::{descendants, exit_phrase, find_listener, is_alive, reap, spawn};

use super::{
    OpError,
    promote::{self, Change},
    ready::{Gate, NotReady, Target},
};
use crate::{
    preflight,
    proc::{ProcError, Process},
    sockets::{self, SocketError},
    state::StateDir,
};

/// How often the new generation's listeners are looked for.
const LISTEN_POLL: Duration = Duration::from_millis(10);
/// How long a listening CMD that has forked a child gets to exit (a
/// daemonising server's parent) before it is taken as the new generation.
/// HAProxy `-D` exits within milliseconds on a quiet machine, but took over
/// 50 ms on a busy one.
const SETTLE: Duration = Duration::from_millis(300);
/// How often a gate that said "not ready" is asked again.
const READY_POLL: Duration = Duration::from_millis(100);

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
    let scope = Scope::of(state_dir, &old, req)?;
    let deadline = Instant::now() + req.ready_timeout;

    // 1-3. Start CMD, wait for its listeners, then its readiness.
    let cmd = req.cmd.join(" ");
    let mut child =
        spawn(&req.cmd).map_err(|source| ReloadError::Spawn { cmd: cmd.clone(), old: old.pid, source })?;
    tracing::info!(pid = child.id(), %cmd, "started the new generation");
    let new = wait_listening(&old, &scope, &mut child, &cmd, req, deadline)?;
    tracing::info!(pid = new.pid, comm = %new.comm, "the new generation listens");
    wait_ready(&old, &new, &scope, req, deadline)?;
    reap(&mut child);

    // 4. Promote. From here on the new generation gets every new connection.
    let (new, changes) = promote_new(state_dir, &old, new, &scope, child.id())?;

    // 5. Drain: the old sockets' accept queues, and the handshakes pending at the promote;
    // for UDP, the flows the old generation still keeps are released to the new one
    // first, and then its receive queues must empty.
    release_udp_flows(state_dir, old.netns, &scope.groups)?;
    let old_inodes: BTreeSet<u64> = sockets::listening_sockets(&old, &scope.ports)
        .map(|l| l.iter().filter(|(_, l)| scope.addrs.contains(&l.addr)).map(|(_, l)| l.inode).collect())
        .unwrap_or_default();
    let drain = drain::drain(&old, &old_inodes, &scope.ports, req.drain_timeout);

    // 6. Signal the old generation (through its pidfd: never another process that reused the pid).
    if !drain.old_exited {
        signal_old(&old_pidfd, req.signal, new.pid, old.pid)?;
    }
    Ok(Report { new_pid: new.pid, new_comm: new.comm, changes, old_pid: old.pid, drain, signal: req.signal })
}

/// Sends the flows the old generation still keeps in the UDP groups of
/// `groups` to the active (new) generation ([`steer_abi::FLAG_RELEASE`]), so
/// that its receive queues can empty; the next full promote clears the flag.
fn release_udp_flows(state_dir: &Path, netns: u64, groups: &[GroupKey]) -> Result<(), OpError> {
    let udp: Vec<&GroupKey> = groups.iter().filter(|k| k.protocol == steer_abi::IPPROTO_UDP).collect();
    if udp.is_empty() {
        return Ok(());
    }
    let state = StateDir::open_for_write(state_dir)?;
    let Some(mut instance) = state.instance(netns)? else { return Ok(()) };
    for key in udp {
        if let Some(config) = instance.config(key)
            && config.flags & steer_abi::FLAG_RELEASE == 0
        {
            let released = GroupConfig { flags: config.flags | steer_abi::FLAG_RELEASE, ..config };
            instance.set_config(key, &released)?;
            tracing::info!(group = %sockets::key_label(key), "released the old generation's UDP flows");
        }
    }
    Ok(())
}

/// The groups a reload hands over, checked before anything starts.
struct Scope {
    groups: Vec<GroupKey>,
    ports: Vec<u16>,
    addrs: Vec<SocketAddr>,
    /// The groups as one phrase, for messages.
    labels: String,
}

impl Scope {
    fn of(state_dir: &Path, old: &Process, req: &Request) -> Result<Self, ReloadError> {
        let groups = active_groups(state_dir, old, &req.ports)?;
        let ports: Vec<u16> = groups.iter().map(|g| g.port).collect::<BTreeSet<_>>().into_iter().collect();
        let addrs: Vec<SocketAddr> = groups.iter().map(sockets::key_addr).collect();
        let labels = groups.iter().map(sockets::key_label).collect::<Vec<_>>().join(", ");
        // A probe of a reloaded address would reach the active (old) generation.
        if let Some(probe) = &req.gate.http
            && addrs.iter().any(|a| {
                a.port() == probe.addr.port() && (a.ip() == probe.addr.ip() || a.ip().is_unspecified())
            })
        {
            return Err(ReloadError::ProbeOnGroup { url: probe.to_string() });
        }
        Ok(Self { groups, ports, addrs, labels })
    }
}

/// Waits until a process of CMD's tree listens in every group of `scope`.
fn wait_listening(
    old: &Process,
    scope: &Scope,
    child: &mut Child,
    cmd: &str,
    req: &Request,
    deadline: Instant,
) -> Result<Process, ReloadError> {
    loop {
        if let Some(found) = find_listener(old, &scope.groups, child.id()) {
            // A daemonising server's parent listens, forks the child that keeps
            // the sockets, and exits: give CMD a moment to, so that the child
            // is the one promoted (a server that stays is kept, SETTLE later).
            if found.pid != child.id() {
                return Ok(found);
            }
            let settle = Instant::now() + SETTLE;
            while is_alive(found.pid) && Instant::now() < settle {
                std::thread::sleep(LISTEN_POLL);
            }
            if is_alive(found.pid) {
                return Ok(found);
            }
            continue;
        }
        if let Ok(Some(status)) = child.try_wait()
            && (!status.success() || descendants().is_empty())
        {
            return Err(ReloadError::Exited {
                cmd: cmd.to_owned(),
                pid: child.id(),
                how: exit_phrase(status),
                groups: scope.labels.clone(),
                old: old.pid,
            });
        }
        if Instant::now() >= deadline {
            let secs = req.ready_timeout.as_secs_f64();
            return Err(ReloadError::NoListeners {
                pid: child.id(),
                groups: scope.labels.clone(),
                secs,
                old: old.pid,
            });
        }
        std::thread::sleep(LISTEN_POLL);
    }
}

/// Asks the readiness gate until it passes, the new generation exits, or the deadline.
fn wait_ready(
    old: &Process,
    new: &Process,
    scope: &Scope,
    req: &Request,
    deadline: Instant,
) -> Result<(), ReloadError> {
    loop {
        let target = Target { process: new, groups: &scope.addrs };
        let Err(reason) = req.gate.check(target, deadline) else { return Ok(()) };
        if Process::open(new.pid).is_err() {
            return Err(ReloadError::ExitedUnready { pid: new.pid, old: old.pid });
        }
        if Instant::now() + READY_POLL >= deadline {
            let secs = req.ready_timeout.as_secs_f64();
            return Err(ReloadError::NotReady { pid: new.pid, secs, reason, old: old.pid });
        }
        tracing::debug!(pid = new.pid, %reason, "not ready yet");
        std::thread::sleep(READY_POLL);
    }
}

/// Promotes the new generation. A daemonising server's parent can listen,
/// pass, and exit before or during the promote (refused before any write):
/// its child, which holds the same sockets, is promoted instead.
fn promote_new(
    state_dir: &Path,
    old: &Process,
    new: Process,
    scope: &Scope,
    root: u32,
) -> Result<(Process, Vec<Change>), ReloadError> {
    let left = || ReloadError::ExitedUnready { pid: new.pid, old: old.pid };
    let mut new = match Process::open(new.pid) {
        Ok(_) => new.clone(),
        Err(_) => find_listener(old, &scope.groups, root).ok_or_else(left)?,
    };
    let request = promote::Request {
        pid: new.pid,
        ports: scope.ports.clone(),
        weight: 100,
        take_over: false,
        by_operator: true,
        udp: crate::policy::UdpSettings::default(),
        // The instance holds the old generation's groups: it keeps its mode.
        no_migrate: false,
    };
    let changes = match promote::run(state_dir, &request) {
        Err(
            OpError::Socket(SocketError::Vanished { .. }) | OpError::Proc(ProcError::NoSuchProcess { .. }),
        ) => {
            new = find_listener(old, &scope.groups, root).ok_or_else(left)?;
            promote::run(state_dir, &promote::Request { pid: new.pid, ..request })?
        }
        other => other?,
    };
    // Promoted, then gone (a parent slower to exit than SETTLE): the sockets
    // are the same, and the report names the child that holds them.
    if !is_alive(new.pid)
        && let Some(child) = find_listener(old, &scope.groups, root)
    {
        new = child;
    }
    Ok((new, changes))
}

fn signal_old(pidfd: &OwnedFd, signal: Signal, new: u32, old: u32) -> Result<(), ReloadError> {
    signal::send_signal(pidfd, signal).map_err(|source| ReloadError::Signal { new, old, signal, source })
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

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
