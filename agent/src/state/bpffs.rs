//! Making sure the state directory sits on bpffs, mounting it when it does not,
//! but only where the mount is shared and hides nothing: on an empty directory,
//! and not in a mount namespace of steer's own, where it would vanish with it.
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
/// directory below it, or on the state directory itself. Refuses to mount on
/// a directory that holds anything, and in a mount namespace that steer's
/// parent does not share (the pins would vanish with it).
pub fn ensure_bpffs(state_dir: &Path) -> Result<(), StateError> {
    let existing = closest_existing(state_dir);
    if is_bpffs(&existing) {
        return Ok(());
    }
    let mount_point = if state_dir.starts_with(paths::BPFFS_MOUNT) {
        PathBuf::from(paths::BPFFS_MOUNT)
    } else {
        state_dir.to_path_buf()
    };
    if is_bpffs(&mount_point) {
        return Ok(());
    }
    if own_mount_namespace() {
        return Err(StateError::PrivateMount { path: mount_point });
    }
    if std::fs::read_dir(&mount_point).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(StateError::NotEmpty { path: mount_point });
    }
    std::fs::create_dir_all(&mount_point).map_err(StateError::io("create", &mount_point))?;
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

/// Whether this process runs in a mount namespace its parent does not share:
/// `ip netns exec`, `unshare -m`, a container. A mount made there is seen by
/// nobody else and vanishes with the namespace. When either link cannot be
/// read, the answer is no (nothing is refused on a guess).
fn own_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().to_string());
    match (ns("self"), parent.and_then(|p| ns(&p))) {
        (Some(mine), Some(theirs)) => mine != theirs,
        _ => false,
    }
}
