//! Re-attaching the program to configured groups that lost it (a group that
//! emptied and formed again has no program), and the periodic slot upkeep the
//! daemon runs. Neither changes which generation is active.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::AsFd as _,
    path::Path,
};

use super::{OpError, promote::release_unreferenced};
use crate::{
    preflight,
    proc::Process,
    sockets,
    state::{SlotView, StateDir},
};

/// Attaches the program to every group of PID's listeners that has a
/// configuration; returns those groups.
pub fn reattach(state_dir: &Path, pid: u32, ports: &[u16]) -> Result<Vec<String>, OpError> {
    preflight::all()?;
    let process = Process::open(pid)?;
    let listening = sockets::listening_sockets(&process, ports)?;
    let candidates = sockets::duplicate(&process, &listening)?;
    let Some(state) = StateDir::open_existing_for_write(state_dir)? else { return Ok(Vec::new()) };
    let Some(instance) = state.instance(process.netns)? else { return Ok(Vec::new()) };
    let mut done = BTreeSet::new();
    for c in &candidates {
        if instance.config(&c.key).is_some() && done.insert(c.key) {
            instance.attach(c.dup.as_fd())?;
        }
    }
    Ok(done.iter().map(sockets::key_label).collect())
}

/// What [`maintain`] did.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// Slots freed.
    pub freed: usize,
    /// Ports of groups whose active generation lost sockets (some of its slots
    /// were freed), so a fresh promote of the port's holder would change it.
    pub shrunk: Vec<u16>,
}

/// Frees the slots of closed sockets and of generations no configuration
/// refers to, in every namespace, and points records of inherited sockets at
/// their live holders. `candidates` lists the processes that may have inherited
/// a recorded socket whose recorded process exited; it is only called when
/// such a socket exists, and without the state's lock held: reading the `/proc`
/// of every candidate takes milliseconds, and a promotion must not wait for it.
pub fn maintain(state_dir: &Path, candidates: impl Fn() -> Vec<Process>) -> Result<Upkeep, OpError> {
    let mut upkeep = Upkeep::default();
    let mut orphans: BTreeMap<u64, Vec<SlotView>> = BTreeMap::new();
    {
        let Some(state) = StateDir::open_existing_for_write(state_dir)? else { return Ok(upkeep) };
        for netns in state.namespaces() {
            let Some(mut instance) = state.instance(netns)? else { continue };
            let before = instance.slot_metas()?.len();
            instance.reclaim()?;
            release_unreferenced(&mut instance)?;
            let metas = instance.slot_metas()?;
            upkeep.freed += before - metas.len();
            for group in instance.groups() {
                let active = group.config.active;
                if !active.is_none()
                    && (active.first..active.first + active.count).any(|s| !metas.contains_key(&s))
                {
                    upkeep.shrunk.push(group.key.port);
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
        }
    }
    if !orphans.is_empty() {
        refresh_owners(state_dir, &orphans, &candidates)?;
    }
    Ok(upkeep)
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
