//! `steer rollback`: end a running canary, or else make the previous
//! generation active again if it still listens (`policy::rollback_effect`).
//! All groups are checked first; if any selected group cannot roll back,
//! nothing changes.
use std::path::Path;

use steer_abi::{GroupConfig, GroupKey};

use super::{OpError, port_selected, ports_phrase, promote::pids_of};
use crate::{
    policy::{self, RollbackEffect},
    preflight, sockets,
    state::{SlotView, StateDir},
};

/// What happened to one group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub group: String,
    /// [`RollbackEffect::EndsCanary`] or [`RollbackEffect::RestoresPrevious`].
    pub effect: RollbackEffect,
    pub active_pids: Vec<u32>,
    pub previous_pids: Vec<u32>,
    /// Pids of the canary that was ended (empty unless the canary was ended).
    pub canary_pids: Vec<u32>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |p: &[u32]| p.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        if self.effect == RollbackEffect::EndsCanary {
            return write!(
                f,
                "{}: ended the canary of pid {}; pid {} gets every new connection",
                self.group,
                list(&self.canary_pids),
                list(&self.active_pids)
            );
        }
        write!(
            f,
            "{}: rolled back to pid {}; previous pid {}",
            self.group,
            list(&self.active_pids),
            list(&self.previous_pids)
        )
    }
}

/// Whether every socket of `config`'s previous generation still sits in its
/// slot (false when there is none).
#[must_use]
pub fn previous_live(config: &GroupConfig, slots: &[SlotView]) -> bool {
    let prev = config.previous;
    !prev.is_none()
        && (prev.first..prev.first + prev.count).all(|s| slots.iter().any(|v| v.slot == s && v.live))
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
            let live = previous_live(&group.config, &slots);
            let (config, effect) =
                policy::rollback(&group.config, live).map_err(OpError::policy(&group.key))?;
            let change = Change {
                group: sockets::key_label(&group.key),
                effect,
                active_pids: pids_of(&metas, config.active),
                previous_pids: pids_of(&metas, config.previous),
                canary_pids: pids_of(&metas, group.config.canary),
            };
            plans.push((netns, group.key, config, change));
        }
    }
    if plans.is_empty() {
        return Err(no_groups());
    }
    let mut changes = Vec::new();
    let mut touched: Vec<u64> = Vec::new();
    for (netns, key, config, change) in plans {
        if let Some(mut instance) = state.instance(netns)? {
            instance.set_config(&key, &config)?;
            tracing::info!(group = %change.group, generation = config.generation, effect = ?change.effect, "rollback");
            changes.push(change);
            touched.push(netns);
        }
    }
    // An ended canary's slots are referenced no more: free them, as promote
    // does, so its sockets leave the sockarray.
    touched.dedup();
    for netns in touched {
        if let Some(mut instance) = state.instance(netns)? {
            instance.release_unreferenced()?;
        }
    }
    Ok(changes)
}
