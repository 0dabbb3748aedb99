//! Creating an instance atomically: load the program and maps, pin them in a
//! temporary directory, write the ABI info, then rename the directory into
//! place. A failure at any step removes the temporary directory, so a
//! half-made instance is never seen.
use std::{fs, path::Path};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
};
use steer_abi::{Info, MAX_GROUPS, MAX_SLOTS, map_names};

use super::{
    StateError,
    select::{self, Mode},
};
use crate::{paths, paths::pins, program};

/// Map name in the object → pin name in the instance directory.
pub const MAP_PINS: [(&str, &str); 10] = [
    (map_names::SOCKETS, pins::SOCKETS),
    (map_names::GROUPS, pins::GROUPS),
    (map_names::SLOTS, pins::SLOTS),
    (map_names::GROUP_STATS, pins::GROUP_STATS),
    (map_names::SLOT_STATS, pins::SLOT_STATS),
    (map_names::GLOBAL_STATS, pins::GLOBAL_STATS),
    (map_names::INFO, pins::INFO),
    (map_names::FLOWS, pins::FLOWS),
    (map_names::CONFIGS, pins::CONFIGS),
    (map_names::CURRENT, pins::CURRENT),
];

/// Creates the instance of `netns` under `state_dir`, steering in `mode`. The
/// caller holds the lock.
pub fn create_instance(state_dir: &Path, netns: u64, mode: Mode) -> Result<(), StateError> {
    // bpffs refuses names with a dot (kernel/bpf/inode.c, `bpf_lookup`).
    let tmp = state_dir.join(format!("tmp-{}-{netns}", std::process::id()));
    let _ = remove_pins(&tmp);
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
        .create(&tmp)
        .map_err(StateError::io("create", &tmp))?;
    let result = fill(&tmp, mode).and_then(|()| {
        crate::failpoint::hit(crate::failpoint::CREATE_PINNED);
        let dest = paths::instance_dir(state_dir, netns);
        fs::rename(&tmp, &dest).map_err(StateError::io("rename into place", &dest))
    });
    if result.is_err() {
        let _ = remove_pins(&tmp);
    }
    result
}

fn fill(dir: &Path, mode: Mode) -> Result<(), StateError> {
    let slots = max_slots();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::SOCKETS, slots)
        .map_max_entries(map_names::SLOTS, slots)
        .map_max_entries(map_names::SLOT_STATS, slots)
        .load(program::OBJECT)
        .map_err(|e| StateError::Load(Box::new(e)))?;
    for (name, pin) in MAP_PINS {
        let map = ebpf.map(name).ok_or_else(|| StateError::Pin {
            what: "map",
            path: dir.join(pin),
            source: format!("map {name} missing from the object").into(),
        })?;
        map.pin(dir.join(pin)).map_err(|e| StateError::pin("map", dir.join(pin), e))?;
    }
    let info_map =
        ebpf.take_map(map_names::INFO).ok_or_else(|| StateError::Load("info map missing".into()))?;
    let mut info: Array<MapData, Info> = Array::try_from(info_map).map_err(StateError::map("info"))?;
    info.set(
        0,
        Info { abi_version: steer_abi::ABI_VERSION, max_slots: slots, max_groups: MAX_GROUPS, pad: 0 },
        0,
    )
    .map_err(StateError::map("info"))?;
    // The entry point loaded for no group: the mode's marker. Before 5.14 the
    // verifier would refuse `steer` (it is a migrating program).
    select::load_pinned(&mut ebpf, mode, &dir.join(mode.marker()))
}

/// Sockarray size for a new instance: `STEER_MAX_SLOTS` or the default.
fn max_slots() -> u32 {
    std::env::var(paths::MAX_SLOTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=MAX_SLOTS * 8).contains(n))
        .unwrap_or(MAX_SLOTS)
}

/// Unpins everything in an instance directory and removes it.
pub fn remove_pins(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        fs::remove_file(entry.path())?;
    }
    fs::remove_dir(dir)
}
