//! The daemon's upkeep, on a thread of its own: it frees the slots of closed
//! sockets, corrects the recorded owners of inherited ones, and tells the event
//! loop which groups' active generation shrank. It reads `/proc` and takes
//! milliseconds, so an event never waits behind it. It never changes which
//! generation is active.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::mpsc,
    time::Duration,
};

use crate::{
    ops::OpError,
    proc::Process,
    state::{SlotView, StateDir},
};

/// How often the upkeep runs without a nudge.
pub const PERIOD: Duration = Duration::from_secs(1);
/// After a listener closes, the upkeep waits this long (its process is
/// usually closing the rest), then frees the slots.
const CLOSE_SETTLE: Duration = Duration::from_millis(200);

/// The event loop's ends of the upkeep thread's channels.
#[derive(Debug)]
pub struct Handle {
    /// A listener closed: run soon.
    pub nudge: mpsc::Sender<()>,
    /// Groups whose active generation shrank.
    pub shrunk: mpsc::Receiver<(u64, u16)>,
}

/// Starts the upkeep thread on `state_dir`; `candidates` lists the processes
/// that may hold inherited sockets. It returns when the handle is dropped.
pub fn start(
    state_dir: &Path,
    candidates: impl Fn() -> Vec<Process> + Send + 'static,
) -> std::io::Result<(Handle, std::thread::JoinHandle<()>)> {
    let (nudge, nudges) = mpsc::channel::<()>();
    let (shrunk_tx, shrunk) = mpsc::channel::<(u64, u16)>();
    let dir = state_dir.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("steer-upkeep".into())
        .spawn(move || run(&dir, &candidates, &nudges, &shrunk_tx))?;
    Ok((Handle { nudge, shrunk }, thread))
}

/// Every [`PERIOD`], and [`CLOSE_SETTLE`] after a nudge, runs [`maintain`] and
/// sends the groups whose active generation lost sockets. Returns when the
/// event loop drops its sender.
fn run(
    state_dir: &Path,
    candidates: &impl Fn() -> Vec<Process>,
    nudges: &mpsc::Receiver<()>,
    shrunk: &mpsc::Sender<(u64, u16)>,
) {
    loop {
        match nudges.recv_timeout(PERIOD) {
            Ok(()) => {
                std::thread::sleep(CLOSE_SETTLE);
                while nudges.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        match maintain(state_dir, candidates) {
            Ok(upkeep) => {
                if upkeep.freed > 0 {
                    tracing::debug!(freed = upkeep.freed, "reclaimed slots");
                }
                for group in upkeep.shrunk {
                    let _ = shrunk.send(group);
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "slot upkeep failed"),
        }
    }
}

/// What [`maintain`] did.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// Slots freed.
    pub freed: usize,
    /// Groups, as (network namespace, port), whose active generation lost
    /// sockets (some of its slots were freed), so a fresh promote of the
    /// port's holder would change it.
    pub shrunk: Vec<(u64, u16)>,
    /// Instances removed because their network namespace is gone.
    pub collected: Vec<u64>,
}

/// Frees the slots of closed sockets and of generations no configuration
/// refers to, in every namespace, and points records of inherited sockets at
/// their live holders. `candidates` lists the processes that may have inherited
/// a recorded socket whose recorded process exited; it is only called when
/// such a socket exists, and without the state's lock held: reading the `/proc`
/// of every candidate takes milliseconds, and a promotion must not wait for it.
pub fn maintain(state_dir: &Path, candidates: &impl Fn() -> Vec<Process>) -> Result<Upkeep, OpError> {
    let mut upkeep = Upkeep::default();
    let mut orphans: BTreeMap<u64, Vec<SlotView>> = BTreeMap::new();
    {
        let Some(state) = StateDir::open_existing_for_write(state_dir)? else { return Ok(upkeep) };
        let mut idle = Vec::new();
        for netns in state.namespaces() {
            // One damaged (or other-ABI) instance must not stop the upkeep of the others.
            let mut instance = match state.instance(netns) {
                Ok(Some(instance)) => instance,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(
                        netns,
                        error = format!("{e:#}"),
                        "skipping an instance the upkeep cannot open"
                    );
                    continue;
                }
            };
            let before = instance.slot_metas()?.len();
            instance.reclaim()?;
            instance.release_unreferenced()?;
            let metas = instance.slot_metas()?;
            upkeep.freed += before - metas.len();
            for group in instance.groups() {
                let active = group.config.active;
                if !active.is_none()
                    && (active.first..active.first + active.count).any(|s| !metas.contains_key(&s))
                {
                    upkeep.shrunk.push((netns, group.key.port));
                }
            }
            // Live sockets whose recorded process no longer holds them: a
            // daemonising server listens in a process that forks and exits, and
            // HAProxy master-worker hands the same socket to each new worker.
            let lost: Vec<SlotView> = instance
                .slots()?
                .into_iter()
                .filter(|s| s.live && !crate::proc::holds_socket(s.meta.pid, s.meta.fd, s.meta.inode))
                .collect();
            if !lost.is_empty() {
                orphans.insert(netns, lost);
            }
            if instance.slots()?.iter().all(|s| !s.live) {
                idle.push(netns);
            }
        }
        upkeep.collected = collect_gone(&state, &idle);
    }
    if !orphans.is_empty() {
        refresh_owners(state_dir, &orphans, candidates)?;
    }
    Ok(upkeep)
}

/// Removes the instances among `idle` (no live socket in their sockarray)
/// whose network namespace no process is in any more: a deleted namespace, a
/// pod that is gone. Their pins would otherwise stay for as long as the
/// state directory, one program and its maps each. A namespace kept only by a
/// bind mount holds no listener either, and gets a new instance if a server
/// starts there again.
fn collect_gone(state: &StateDir, idle: &[u64]) -> Vec<u64> {
    if idle.is_empty() {
        return Vec::new();
    }
    let alive = live_namespaces();
    let mut collected = Vec::new();
    for &netns in idle.iter().filter(|ns| !alive.contains(ns)) {
        match state.remove_instance(netns) {
            Ok(()) => {
                tracing::info!(netns, "removed the instance of a network namespace that is gone");
                collected.push(netns);
            }
            Err(e) => tracing::warn!(
                netns,
                error = format!("{e:#}"),
                "cannot remove the instance of a gone namespace"
            ),
        }
    }
    collected
}

/// The inodes of every network namespace a process we can read is in. A
/// namespace seen only through unreadable processes counts as gone: removing
/// an idle instance is safe even then. With no live socket in its sockarray,
/// no group depends on its maps for a selection (a group the program is still
/// attached to keeps the program and maps alive through the attachment, and
/// falls back to the kernel's pick as before), and nothing is left to roll
/// back to; a server that listens there again gets a new instance.
fn live_namespaces() -> std::collections::BTreeSet<u64> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| crate::proc::netns_inode(pid).ok())
        .collect()
}

/// Points the records of `orphans` (live sockets by namespace) at a candidate
/// that holds the same socket (by inode), so that status and metrics name the
/// process that serves. The candidates are read first, without the lock; a
/// record is updated only if its slot still holds the same socket by then.
fn refresh_owners(
    state_dir: &Path,
    orphans: &BTreeMap<u64, Vec<SlotView>>,
    candidates: &impl Fn() -> Vec<Process>,
) -> Result<(), OpError> {
    let held: Vec<(u64, u32, HashMap<u64, u32>)> = candidates()
        .iter()
        .filter(|p| orphans.contains_key(&p.netns))
        .filter_map(|p| Some((p.netns, p.pid, p.socket_fds().ok()?)))
        .collect();
    let Some(state) = StateDir::open_existing_for_write(state_dir)? else { return Ok(()) };
    for (netns, lost) in orphans {
        let Some(mut instance) = state.instance(*netns)? else { continue };
        let metas = instance.slot_metas()?;
        for orphan in lost {
            // The newest holder wins (highest pid among equals is good enough here).
            let Some((pid, fd)) = held
                .iter()
                .filter(|(ns, _, _)| ns == netns)
                .filter_map(|(_, pid, fds)| fds.get(&orphan.meta.inode).map(|fd| (*pid, *fd)))
                .max_by_key(|(pid, _)| *pid)
            else {
                continue;
            };
            // The record as it is now: the slot may have changed hands while the
            // lock was released.
            let Some(current) = metas.get(&orphan.slot).filter(|m| m.cookie == orphan.meta.cookie) else {
                continue;
            };
            let meta = steer_abi::SlotMeta { pid, fd, ..*current };
            instance.update_slot_meta(orphan.slot, &meta)?;
            tracing::debug!(slot = orphan.slot, pid, fd, "socket's recorded owner updated");
        }
    }
    Ok(())
}
