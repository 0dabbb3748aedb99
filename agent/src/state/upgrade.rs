//! In-place upgrade of an instance an older steer wrote (ABI 2), while traffic
//! flows. ABI 3 keeps every map of ABI 2 as it is (sockets, slots, groups,
//! counters, flow table) and adds the configurations the programs read
//! (`configs`, `current`); each group gets its own program instance.
//!
//! Under the state's lock, and only when no other process holds the
//! instance's maps open (a daemon of the older release keeps them open between
//! writes, and would go on writing only the maps it knows):
//! 1. leftovers of an interrupted upgrade (pins ABI 2 never has) are removed;
//! 2. the new maps are created and pinned beside the kept ones, and every
//!    group's configuration is published into them;
//! 3. each group's new program is loaded, pinned, and attached through a
//!    live member socket (taken from the process the slot record names):
//!    the kernel swaps a group's program in one step, so each connection
//!    meets one program or the other, both reading the same sockets;
//! 4. the info map's ABI version is written: the commit;
//! 5. the old programs' pins are replaced (the mode's marker) or removed.
//!
//! A failure before step 4 re-attaches the old program to every group already
//! moved and removes what steps 2 and 3 pinned: the instance is as it was, and
//! the older steer still reads it. A steer killed before step 4 leaves an
//! instance the older steer still reads, with some groups on new programs; the
//! next write command of this steer upgrades it again from step 1.
use std::{fs, os::fd::AsFd as _, path::Path};

use aya::{
    maps::{Array, MapData},
    programs::SkReuseport,
};
use steer_abi::{GroupKey, Info};

use super::{
    Instance, StateError,
    instance::typed,
    select::{self, Mode},
};
use crate::{failpoint, paths::pins, program, sockets};

/// The ABI this steer upgrades from.
pub const FROM: u32 = 2;

/// The pin the new marker program waits under until the commit.
const NEW_MARKER: &str = "prog-upgrade";

/// Upgrades the ABI-2 instance in `dir` in place; see the module's docs.
/// Returns the groups moved to their new programs. The caller holds the lock.
pub fn run(dir: &Path, netns: u64) -> Result<usize, StateError> {
    let mode = select::mode_of(dir).ok_or_else(|| StateError::Pin {
        what: "program",
        path: dir.join(pins::PROGRAM),
        source: "neither the migrating program nor the select-only marker is pinned".into(),
    })?;
    // A daemon of the older release keeps the instance open between its
    // writes and would go on writing only the maps it knows, which the new
    // programs do not read: it must stop first.
    if let Some(pid) = older_holder(dir) {
        return Err(StateError::UpgradeHeld {
            path: dir.to_path_buf(),
            pid,
            comm: crate::proc::comm(pid).unwrap_or_default(),
        });
    }
    remove_new_pins(dir);
    let mut moved = Vec::new();
    let result = upgrade(dir, netns, mode, &mut moved);
    if let Err(e) = result {
        for (key, socket) in &moved {
            if let Err(undo) = old_program(dir, mode, key).and_then(|p| {
                p.attach(socket.as_fd()).map_err(StateError::map("attach (SO_ATTACH_REUSEPORT_EBPF)"))
            }) {
                tracing::warn!(group = %sockets::key_label(key), error = %undo, "cannot give a group its old program back");
            }
        }
        remove_new_pins(dir);
        return Err(e);
    }
    // The commit is done; what follows only tidies.
    let marker = dir.join(mode.marker());
    if let Err(e) = fs::rename(dir.join(NEW_MARKER), &marker) {
        tracing::warn!(path = %marker.display(), error = %e, "cannot replace the old marker program");
    }
    for path in old_group_programs(dir) {
        let _ = fs::remove_file(path);
    }
    Ok(moved.len())
}

fn upgrade(
    dir: &Path,
    netns: u64,
    mode: Mode,
    moved: &mut Vec<(GroupKey, std::os::fd::OwnedFd)>,
) -> Result<(), StateError> {
    // Step 2: the new maps, pinned beside the kept ones (an object loaded
    // against every pin path creates and pins the ones missing), and the
    // mode's new marker.
    let pins = select::map_pin_paths(dir);
    let mut ebpf =
        select::loader_for(&pins).load(program::OBJECT).map_err(|e| StateError::Load(Box::new(e)))?;
    select::load_pinned(&mut ebpf, mode, &dir.join(NEW_MARKER))?;
    drop(ebpf);
    let mut instance = Instance::open_any_abi(dir, netns)?;
    let groups = instance.groups();
    for group in &groups {
        instance.set_config(&group.key, &group.config)?;
    }
    // Step 3: each group with a live member moves to its own program.
    let metas = instance.slot_metas()?;
    for group in &groups {
        let Some(socket) = metas.values().filter(|m| m.group == group.key).find_map(sockets::reopen) else {
            tracing::info!(group = %sockets::key_label(&group.key), "no live member: the group gets its new program at its next promote");
            continue;
        };
        instance.attach(&group.key, socket.as_fd())?;
        moved.push((group.key, socket));
        failpoint::hit(failpoint::UPGRADE_ATTACHED);
        if failpoint::fails(failpoint::UPGRADE_ATTACHED) {
            return Err(StateError::Load("failpoint upgrade-attached".into()));
        }
    }
    // Step 4: the commit.
    let mut info: Array<MapData, Info> = typed(dir, pins::INFO)?;
    let old = info.get(&0, 0).map_err(|e| StateError::pin("info", dir.join(pins::INFO), e))?;
    info.set(0, Info { abi_version: steer_abi::ABI_VERSION, ..old }, 0).map_err(StateError::map("info"))
}

/// Another process holding the instance's `groups` map open, if any, still
/// after a second: an older CLI (a `status`) holds it for milliseconds, a
/// daemon for good.
fn older_holder(dir: &Path) -> Option<u32> {
    let map = MapData::from_pin(dir.join(pins::GROUPS)).ok()?;
    let id = map.info().ok()?.id();
    let mut holder = crate::proc::bpf_map_holder(id)?;
    for _ in 0..HOLDER_CHECKS {
        std::thread::sleep(std::time::Duration::from_millis(200));
        holder = crate::proc::bpf_map_holder(id)?;
    }
    Some(holder)
}

/// How many more times, 200 ms apart, a holder must still be there.
const HOLDER_CHECKS: usize = 5;

/// The program ABI 2 ran for group `key`: the one migrating program, or the
/// group's select-only instance.
fn old_program(dir: &Path, mode: Mode, key: &GroupKey) -> Result<SkReuseport, StateError> {
    let path = match mode {
        Mode::SelectOrMigrate => dir.join(pins::PROGRAM),
        Mode::SelectOnly => dir.join(abi2_select_pin_name(key)),
    };
    SkReuseport::from_pin(&path, mode.attach_type()).map_err(|e| StateError::pin("program", path, e))
}

/// ABI 2's pin name of a group's select-only program: its prefix, then the
/// group as this ABI writes it.
fn abi2_select_pin_name(key: &GroupKey) -> String {
    let suffix = select::key_suffix(key);
    format!("{}{}", pins::ABI2_SELECT_PROGRAM_PREFIX, suffix.trim_start_matches('-'))
}

fn old_group_programs(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(pins::ABI2_SELECT_PROGRAM_PREFIX)))
        .map(|e| e.path())
        .collect()
}

/// Removes every pin ABI 2 does not have: what an upgrade adds.
fn remove_new_pins(dir: &Path) {
    let _ = fs::remove_file(dir.join(pins::CONFIGS));
    let _ = fs::remove_file(dir.join(pins::CURRENT));
    let _ = fs::remove_file(dir.join(NEW_MARKER));
    for path in select::group_programs(dir) {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
