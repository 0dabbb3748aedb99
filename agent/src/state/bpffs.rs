//! Making sure the state directory sits on bpffs, mounting it when it does not.
use std::path::{Path, PathBuf};

use super::StateError;
use crate::paths;

/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` exists and is on a bpf filesystem.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == BPF_FS_MAGIC)
}

/// Makes `state_dir` usable: nothing to do when it (or its closest existing
/// ancestor) is on bpffs; otherwise mounts bpffs at `/sys/fs/bpf` for a state
/// directory below it, or on the state directory itself.
pub fn ensure_bpffs(state_dir: &Path) -> Result<(), StateError> {
    let existing = closest_existing(state_dir);
    if is_bpffs(&existing) {
        return Ok(());
    }
    let mount_point = if state_dir.starts_with(paths::BPFFS_MOUNT) {
        PathBuf::from(paths::BPFFS_MOUNT)
    } else {
        std::fs::create_dir_all(state_dir).map_err(StateError::io("create", state_dir))?;
        state_dir.to_path_buf()
    };
    if is_bpffs(&mount_point) {
        return Ok(());
    }
    rustix::mount::mount(
        "bpf",
        &mount_point,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| StateError::Mount { path: mount_point.clone(), reason: e.into() })?;
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

fn closest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}
