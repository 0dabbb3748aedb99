//! `steer detach`: remove steering from groups; the kernel's own selection
//! resumes at once (the configuration is gone, so the program leaves every
//! connection to the kernel) and the program is detached from the group.
use std::{os::fd::AsFd as _, path::Path};

use super::{OpError, port_selected, ports_phrase, reopen};
use crate::{
    preflight, sockets,
    state::{Instance, StateDir},
};

/// What happened to one group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub group: String,
    /// False when no process still holds one of the group's recorded sockets:
    /// the program then stays attached, but with no configuration it selects
    /// nothing, until the group closes.
    pub program_detached: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.program_detached {
            write!(f, "{}: detached; the kernel selects sockets again", self.group)
        } else {
            write!(
                f,
                "{}: steering removed; the kernel selects sockets again (no recorded socket is still open to detach the program through, so it stays attached but idle)",
                self.group
            )
        }
    }
}

/// Detaches every selected group in every namespace.
pub fn run(state_dir: &Path, ports: &[u16]) -> Result<Vec<Change>, OpError> {
    preflight::all()?;
    let no_groups = || OpError::NoGroups { ports: ports_phrase(ports) };
    let Some(state) = StateDir::open_existing_for_write(state_dir)? else {
        return Err(no_groups());
    };
    let mut changes = Vec::new();
    let mut damaged = None;
    for netns in state.namespaces() {
        let mut instance = match state.instance(netns) {
            Ok(Some(instance)) => instance,
            Ok(None) => continue,
            // One damaged instance must not keep the others steered: detach
            // those, then report it.
            Err(e @ crate::state::StateError::Permission { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    netns,
                    error = format!("{e:#}"),
                    "cannot read this namespace's state; detaching the others"
                );
                damaged.get_or_insert(e);
                continue;
            }
        };
        let slots = instance.slots()?;
        for group in instance.groups().into_iter().filter(|g| port_selected(&g.key, ports)) {
            let members: Vec<_> = slots.iter().filter(|s| s.meta.group == group.key).collect();
            instance.remove_group(&group.key)?;
            let program_detached = members
                .iter()
                .filter(|s| s.live)
                .find_map(|s| reopen(&s.meta))
                .is_some_and(|dup| Instance::detach(dup.as_fd()).is_ok());
            for slot in &members {
                instance.free_slot(slot.slot)?;
            }
            let label = sockets::key_label(&group.key);
            tracing::info!(group = %label, program_detached, "detach");
            changes.push(Change { group: label, program_detached });
        }
    }
    // With others detached, the damaged one was named in a warning; alone, it
    // is the answer.
    if let Some(e) = damaged
        && changes.is_empty()
    {
        return Err(e.into());
    }
    if changes.is_empty() {
        return Err(no_groups());
    }
    Ok(changes)
}
