//! The new generation's process tree: starting CMD, finding the process that
//! listens in the old generation's groups, and telling how a process ended.
use std::process::{Child, Command};

use steer_abi::GroupKey;

use crate::{proc, proc::Process, sockets};

/// Starts CMD in a session of its own (so that steer's exit, or a signal to
/// steer's process group, does not reach it), with steer's stdio. Steer
/// becomes a child subreaper first, so a daemonising server's child is
/// reparented to steer rather than to init, and stays findable as a descendant.
pub(super) fn spawn(cmd: &[String]) -> std::io::Result<Child> {
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
pub(super) fn descendants() -> Vec<u32> {
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
pub(super) fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.get(s.rfind(')')? + 1..)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

pub(super) fn task_children(pid: u32, tid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .map(|t| t.split_whitespace().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

/// The oldest of CMD's process tree (CMD itself first) that holds a listener
/// in every group, in the old generation's network namespace.
pub(super) fn find_listener(old: &Process, groups: &[GroupKey], root: u32) -> Option<Process> {
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
pub(super) fn reap(child: &mut Child) {
    let _ = child.try_wait();
}

pub(super) fn exit_phrase(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "exited".to_owned(),
    }
}
