//! `steer rollback`: make the previous generation active again, if it still
//! listens. All groups are checked first; if any selected group cannot roll
//! back, nothing changes.
use std::path::Path;

use steer_abi::{GroupConfig, GroupKey};

use super::{OpError, port_selected, ports_phrase, promote::pids_of};
use crate::{policy, preflight, sockets, state::StateDir};

/// What happened to one group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub group: String,
    pub active_pids: Vec<u32>,
    pub previous_pids: Vec<u32>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |p: &[u32]| p.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        write!(
            f,
            "{}: rolled back to pid {}; previous pid {}",
            self.group,
            list(&self.active_pids),
            list(&self.previous_pids)
        )
    }
}

/// Rolls back every selected group.
pub fn run(state_dir: &Path, ports: &[u16]) -> Result<Vec<Change>, OpError> {
    preflight::all()?;
    let no_groups = || OpError::NoGroups { ports: ports_phrase(ports) };
    let Some(state) = StateDir::open_existing_for_write(state_dir)? else {
        return Err(no_groups());
    };
    let mut plans: Vec<(u64, GroupKey, GroupConfig, Change)> = Vec::new();
    for netns in state.namespaces() {
        let Some(instance) = state.instance(netns)? else { continue };
        let slots = instance.slots()?;
        let metas = instance.slot_metas()?;
        for group in instance.groups().into_iter().filter(|g| port_selected(&g.key, ports)) {
            let prev = group.config.previous;
            let live = !prev.is_none()
                && (prev.first..prev.first + prev.count).all(|s| slots.iter().any(|v| v.slot == s && v.live));
            let config = policy::rollback(&group.config, live).map_err(OpError::policy(&group.key))?;
            let change = Change {
                group: sockets::key_label(&group.key),
                active_pids: pids_of(&metas, config.active),
                previous_pids: pids_of(&metas, config.previous),
            };
            plans.push((netns, group.key, config, change));
        }
    }
    if plans.is_empty() {
        return Err(no_groups());
    }
    let mut changes = Vec::new();
    for (netns, key, config, change) in plans {
        if let Some(mut instance) = state.instance(netns)? {
            instance.set_config(&key, &config)?;
            tracing::info!(group = %change.group, generation = config.generation, "rollback");
            changes.push(change);
        }
    }
    Ok(changes)
}
