//! Pinned state: the state directory on bpffs, its writer lock, and one
//! instance (program and maps) per network namespace. State outlives every
//! `steer` process; nothing here detaches or unpins on exit.
mod bpffs;
mod create;
mod instance;
mod lockwait;
pub mod select;
pub mod sockarray;
pub mod upgrade;

use std::{
    fs::{self, File},
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

pub use bpffs::{BPF_FS_MAGIC, ensure_bpffs, is_bpffs};
pub use instance::{GroupView, Instance, ProgramFigures, SlotView, pids_of};
pub use lockwait::{LockWaits, lock_waits};
pub use select::{Mode, Wanted};

use crate::paths;

/// Errors opening or creating pinned state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The cause sits inside the sentence, so it is no `source` (`{:#}` would repeat it).
    #[error(
        "cannot mount bpffs at {path}: {reason}; mount it yourself (`mount -t bpf bpf {path}`) or run steer with CAP_SYS_ADMIN"
    )]
    Mount { path: PathBuf, reason: io::Error },
    #[error("{path} is not on a bpf filesystem; pick a state directory on bpffs (default {default})", default = paths::DEFAULT_STATE_DIR)]
    NotBpffs { path: PathBuf },
    #[error(
        "{path} is not on a bpf filesystem and is not empty, so steer will not mount bpffs over it; pick an empty directory or one on bpffs (default {default}), or mount bpffs there yourself",
        default = paths::DEFAULT_STATE_DIR
    )]
    NotEmpty { path: PathBuf },
    #[error(
        "no bpffs at {path} in this mount namespace, and one mounted now would vanish with it: steer runs in a mount namespace of its own (as under `ip netns exec`, which gives a fresh /sys); mount bpffs where every steer sees it (`mount -t bpf bpf {path}` on the host), or bind-mount the host's /sys/fs/bpf into this namespace"
    )]
    PrivateMount { path: PathBuf },
    #[error(
        "the state in {path} was written by ABI version {found}, this steer speaks {expected}; detach with the steer that wrote it (`steer detach`), remove {path}, then promote again with this steer"
    )]
    AbiMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error(
        "the state in {path} was written by an older steer (ABI version {found}); the next write command of this steer (`promote`, `rollback`, `reload`, `detach`, or the daemon) upgrades it in place without interrupting traffic"
    )]
    AbiOlder { path: PathBuf, found: u32 },
    #[error(
        "the state in {path} was written by an older steer, and pid {pid} ({comm}) holds it open (a daemon of that steer, which would stop steering if its state were upgraded under it); stop it, then run this command again: it upgrades the state in place"
    )]
    UpgradeHeld { path: PathBuf, pid: u32, comm: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot open pinned {what} at {path}; the state looks damaged: detach, remove {path}'s directory and promote again"
    )]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "socket fd {fd} of pid {pid} (cookie {cookie}) is held by another steer state directory, or by one removed without `steer detach`; detach it there (`steer --state-dir OTHER detach`), or pass --take-over to make this state steer the group"
    )]
    SocketBusy { cookie: u64, pid: u32, fd: u32 },
    #[error(
        "group {group} is steered by another steer state directory (or by one removed without `steer detach`): pid {pid}'s socket there sits in its sockarray; detach it there (`steer --state-dir OTHER detach`), or pass --take-over to make this state steer the group"
    )]
    GroupOwned { group: String, pid: u32 },
    #[error(
        "another steer ({holder}) has held the lock of {path} for {waited_ms} ms; wait for it to finish, or stop it if it hangs (a stopped `steer` holds the lock until it exits)"
    )]
    Locked { path: PathBuf, holder: String, waited_ms: u64 },
    #[error("cannot read the pinned state at {path}: permission denied; run steer as root or with CAP_BPF")]
    Permission { path: PathBuf },
    #[error(
        "the state in {path} steers in {have} mode and holds groups, but {reason} calls for select-only mode; detach them first (`steer detach`) to change the mode"
    )]
    ModeConflict { path: PathBuf, have: Mode, reason: String },
    #[error("cannot load the steering program into the kernel")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the BPF map {what} rejected an update")]
    Map {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StateError {
    /// A pin that could not be opened: a permission problem says so, anything
    /// else means the state is damaged.
    pub(crate) fn pin(
        what: &'static str,
        path: PathBuf,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        while let Some(e) = cause {
            if e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied) {
                return Self::Permission { path };
            }
            cause = e.source();
        }
        Self::Pin { what, path, source: Box::new(source) }
    }

    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn map<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |e| Self::Map { what, source: Box::new(e) }
    }
}

/// The state directory, locked for writing while this value lives.
pub struct StateDir {
    path: PathBuf,
    /// The writer lock, held while this value lives; `None` for a reader.
    lock: Option<File>,
}

impl StateDir {
    /// Opens the state directory for a write: mounts bpffs and creates the
    /// directory when needed, then takes the exclusive writer lock.
    pub fn open_for_write(path: &Path) -> Result<Self, StateError> {
        ensure_bpffs(path)?;
        fs::create_dir_all(path).map_err(StateError::io("create", path))?;
        // The state is root's alone: directories 0700 (the pins are 0600 by the
        // kernel, kernel/bpf/inode.c, `bpf_obj_do_pin`).
        // Not bpffs's own root (`--state-dir /sys/fs/bpf`), which others share.
        if path != Path::new(paths::BPFFS_MOUNT) {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(StateError::io("restrict", path))?;
        }
        let lock = File::open(path).map_err(StateError::io("open", path))?;
        take_lock(&lock, path)?;
        let dir = Self { path: path.to_path_buf(), lock: Some(lock) };
        dir.sweep_temporary();
        Ok(dir)
    }

    /// Opens an existing state directory for a write; `None` when there is no
    /// state at all (nothing is mounted or created then).
    pub fn open_existing_for_write(path: &Path) -> Result<Option<Self>, StateError> {
        Self::open_for_read(path).map(|_| Self::open_for_write(path)).transpose()
    }

    /// Opens the state directory for reading, without a lock and without
    /// creating or mounting anything. `None` when there is no state at all.
    #[must_use]
    pub fn open_for_read(path: &Path) -> Option<Self> {
        is_bpffs(path).then(|| Self { path: path.to_path_buf(), lock: None })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the `tmp-*` directories a creator killed mid-way left behind. A
    /// creator holds the lock from `tmp-*` to its rename, so while we hold it,
    /// any `tmp-*` is such a leftover.
    fn sweep_temporary(&self) {
        let entries = fs::read_dir(&self.path).into_iter().flatten().flatten();
        for entry in entries.filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("tmp-"))) {
            let path = entry.path();
            if let Err(e) = create::remove_pins(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a half-made instance");
            } else {
                tracing::info!(path = %path.display(), "removed a half-made instance left by a creator that was killed");
            }
        }
    }

    /// Removes the instance of `netns`: its pins, and with them the program
    /// and maps once nothing else holds them. Only for a namespace that is
    /// gone (no process in it, no live socket in its sockarray).
    pub fn remove_instance(&self, netns: u64) -> Result<(), StateError> {
        let dir = paths::instance_dir(&self.path, netns);
        create::remove_pins(&dir).map_err(StateError::io("remove", &dir))
    }

    /// Inodes of the network namespaces that have an instance here.
    #[must_use]
    pub fn namespaces(&self) -> Vec<u64> {
        let mut out: Vec<u64> = fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(paths::parse_instance_name))
            .collect();
        out.sort_unstable();
        out
    }

    /// Opens the instance of `netns`, if there is one. With the lock held,
    /// an instance an older steer wrote is upgraded in place first
    /// ([`upgrade`]).
    pub fn instance(&self, netns: u64) -> Result<Option<Instance>, StateError> {
        let dir = paths::instance_dir(&self.path, netns);
        if !dir.exists() {
            return Ok(None);
        }
        match Instance::open(&dir, netns) {
            Err(StateError::AbiOlder { .. }) if self.lock.is_some() => {
                let groups = upgrade::run(&dir, netns)?;
                tracing::info!(
                    netns,
                    from = upgrade::FROM,
                    to = steer_abi::ABI_VERSION,
                    groups,
                    "upgraded the instance in place: every group with a live socket runs this steer's program"
                );
                Instance::open(&dir, netns).map(Some)
            }
            opened => opened.map(Some),
        }
    }

    /// [`Self::instance_or_create`], taking the instance from `open` when it
    /// was opened from the directory that is pinned there now (same inode): a
    /// long-lived writer (the daemon) then skips re-opening every pin.
    pub fn instance_or_create_kept(
        &self,
        netns: u64,
        open: &mut OpenInstances,
        wanted: &Wanted,
    ) -> Result<Instance, StateError> {
        let dir = paths::instance_dir(&self.path, netns);
        if let Some((ino, instance)) = open.kept.remove(&netns)
            && instance.dir == dir
            && dir_inode(&dir) == Some(ino)
            && wanted.accepts(instance.mode)
        {
            return Ok(instance);
        }
        self.instance_or_create(netns, wanted)
    }

    /// Opens the instance of `netns`, creating it (atomically) when absent.
    /// An instance keeps its mode while it holds groups, so later commands
    /// steer as the first did (a request for select-only mode meeting one
    /// that migrates is refused); an empty one in another mode than `wanted`
    /// is made afresh. Only valid on a directory opened for write.
    pub fn instance_or_create(&self, netns: u64, wanted: &Wanted) -> Result<Instance, StateError> {
        if let Some(instance) = self.instance(netns)? {
            if instance.mode == wanted.mode {
                return Ok(instance);
            }
            if !instance.groups().is_empty() || !instance.slot_metas()?.is_empty() {
                if wanted.accepts(instance.mode) {
                    return Ok(instance);
                }
                return Err(StateError::ModeConflict {
                    path: instance.dir,
                    have: instance.mode,
                    reason: wanted.reason.clone(),
                });
            }
            drop(instance);
            self.remove_instance(netns)?;
            tracing::info!(netns, mode = %wanted.mode, "replaced an empty instance to change its mode");
        }
        create::create_instance(&self.path, netns, wanted.mode)?;
        Instance::open(&paths::instance_dir(&self.path, netns), netns)
    }
}

/// Instances a long-lived writer keeps open between writes, by network
/// namespace, with the inode of the directory each was opened from. An
/// instance is kept only after a write succeeded with it; a directory removed
/// or replaced since (another inode) is opened afresh.
#[derive(Default)]
pub struct OpenInstances {
    kept: std::collections::HashMap<u64, (u64, Instance)>,
}

impl std::fmt::Debug for OpenInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenInstances").field("namespaces", &self.kept.keys().collect::<Vec<_>>()).finish()
    }
}

impl OpenInstances {
    /// Keeps `instance` for the next write.
    pub fn keep(&mut self, instance: Instance) {
        if let Some(ino) = dir_inode(&instance.dir) {
            self.kept.insert(instance.netns, (ino, instance));
        }
    }
}

fn dir_inode(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(dir).ok().map(|m| m.ino())
}

/// Takes the writer lock on the state directory, waiting at most
/// [`paths::LOCK_WAIT_MS`] (or `STEER_LOCK_WAIT_MS`) for another writer.
fn take_lock(lock: &File, path: &Path) -> Result<(), StateError> {
    use rustix::fs::FlockOperation;
    let wait =
        std::env::var(paths::LOCK_WAIT_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(paths::LOCK_WAIT_MS);
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    // Whether the lock was held at the first try (the wait is counted).
    let mut held = false;
    loop {
        match rustix::fs::flock(lock.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                if held {
                    lockwait::record(start.elapsed(), false);
                }
                return Ok(());
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => {
                return Err(StateError::Io { what: "lock", path: path.to_path_buf(), source: e.into() });
            }
        }
        let waited = start.elapsed();
        if waited >= std::time::Duration::from_millis(wait) {
            let holder =
                lock_holder(lock).map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
            let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
            lockwait::record(waited, true);
            return Err(StateError::Locked { path: path.to_path_buf(), holder, waited_ms });
        }
        held = true;
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// The pid holding a flock on `file`'s inode, from `/proc/locks`
/// (`N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE START END`).
fn lock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = file.metadata().ok()?.ino();
    lock_holder_in(&fs::read_to_string("/proc/locks").ok()?, ino)
}

/// [`lock_holder`] on the text of `/proc/locks`.
#[must_use]
pub fn lock_holder_in(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (fields.get(1)?, fields.get(4)?, fields.get(5)?);
        let found: u64 = id.rsplit(':').next()?.parse().ok()?;
        (*kind == "FLOCK" && found == ino).then(|| pid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod lock_tests {
    use super::lock_holder_in;

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 10 00:19:777 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:1a:777 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 17 fe:00:5382423 0 EOF\n";
        assert_eq!(lock_holder_in(locks, 777), Some(4242));
        assert_eq!(lock_holder_in(locks, 5_382_423), Some(17));
        assert_eq!(lock_holder_in(locks, 1), None);
        assert_eq!(lock_holder_in("garbage\n\n1:", 777), None);
    }
}
