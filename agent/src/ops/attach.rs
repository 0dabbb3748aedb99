//! Re-attaching the program to configured groups that lost it (a group that
//! emptied and formed again has no program), and the periodic slot upkeep the
//! daemon runs. Neither changes which generation is active.
use std::{collections::BTreeSet, os::fd::AsFd as _, path::Path};

use super::{OpError, promote::release_unreferenced};
use crate::{preflight, proc::Process, sockets, state::StateDir};

/// Attaches the program to every group of PID's listeners that has a
/// configuration; returns those groups.
pub fn reattach(state_dir: &Path, pid: u32, ports: &[u16]) -> Result<Vec<String>, OpError> {
    preflight::all()?;
    let process = Process::open(pid)?;
    let listening = sockets::listening_sockets(&process, ports)?;
    let candidates = sockets::duplicate(&process, &listening)?;
    if StateDir::open_for_read(state_dir).is_none() {
        return Ok(Vec::new());
    }
    let state = StateDir::open_for_write(state_dir)?;
    let Some(instance) = state.instance(process.netns)? else { return Ok(Vec::new()) };
    let mut done = BTreeSet::new();
    for c in &candidates {
        if instance.config(&c.key).is_some() && done.insert(c.key) {
            instance.attach(c.dup.as_fd())?;
        }
    }
    Ok(done.iter().map(sockets::key_label).collect())
}

/// Frees the slots of closed sockets and of generations no configuration
/// refers to, in every namespace; returns how many slots were freed.
pub fn maintain(state_dir: &Path) -> Result<usize, OpError> {
    if StateDir::open_for_read(state_dir).is_none() {
        return Ok(0);
    }
    let state = StateDir::open_for_write(state_dir)?;
    let mut freed = 0;
    for netns in state.namespaces() {
        let Some(mut instance) = state.instance(netns)? else { continue };
        let before = instance.slot_metas()?.len();
        instance.reclaim()?;
        release_unreferenced(&mut instance)?;
        freed += before - instance.slot_metas()?.len();
    }
    Ok(freed)
}
