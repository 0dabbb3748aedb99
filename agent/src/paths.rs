//! Paths and defaults: where state lives, what the pins are called, and the
//! environment variables that override them.
use std::path::{Path, PathBuf};

/// Default state directory (a bpffs directory).
pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/steer";
/// Overrides the default state directory; `--state-dir` overrides this.
pub const STATE_DIR_ENV: &str = "STEER_STATE_DIR";
/// Where bpffs is normally mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Sizes the sockarray of a state instance when it is created (tests use it to
/// reach a full sockarray quickly). Ignored for an existing instance.
pub const MAX_SLOTS_ENV: &str = "STEER_MAX_SLOTS";
/// Replaces the running kernel's release in the version check, so that the
/// old-kernel refusal can be tested on a new kernel.
pub const KERNEL_RELEASE_ENV: &str = "STEER_KERNEL_RELEASE";

/// How long a writer waits for the state's lock, in milliseconds (default
/// [`LOCK_WAIT_MS`]).
pub const LOCK_WAIT_ENV: &str = "STEER_LOCK_WAIT_MS";
/// A writer waits this long for another writer to finish, then gives up and
/// names it: a promote holds the lock for milliseconds, so only a writer that
/// was stopped or hangs holds it this long.
pub const LOCK_WAIT_MS: u64 = 5_000;

/// Instance directories are named `net-<netns inode>`.
pub const INSTANCE_PREFIX: &str = "net-";

/// Pin names inside one instance directory.
pub mod pins {
    pub const PROGRAM: &str = "prog";
    /// Select-only mode's marker: `steer_select` loaded for no group, never attached.
    pub const SELECT_PROGRAM: &str = "prog-select";
    /// `prog-group-<index>-<group>`: each group's own program instance.
    pub const GROUP_PROGRAM_PREFIX: &str = "prog-group-";
    /// ABI 2's select-only group programs (`prog-select-<group>`), which an
    /// upgrade replaces.
    pub const ABI2_SELECT_PROGRAM_PREFIX: &str = "prog-select-";
    pub const SOCKETS: &str = "sockets";
    pub const GROUPS: &str = "groups";
    pub const SLOTS: &str = "slots";
    pub const GROUP_STATS: &str = "group_stats";
    pub const SLOT_STATS: &str = "slot_stats";
    pub const GLOBAL_STATS: &str = "global_stats";
    pub const INFO: &str = "info";
    pub const FLOWS: &str = "flows";
    pub const CONFIGS: &str = "configs";
    pub const CURRENT: &str = "current";
}

/// The state directory chosen by the flag, the environment, or the default.
#[must_use]
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(STATE_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// One instance per network namespace: groups are keyed by address and port,
/// which repeat across namespaces, so each namespace gets its own program and maps.
#[must_use]
pub fn instance_dir(state_dir: &Path, netns_inode: u64) -> PathBuf {
    state_dir.join(format!("{INSTANCE_PREFIX}{netns_inode}"))
}

/// The namespace inode an instance directory name stands for.
#[must_use]
pub fn parse_instance_name(name: &str) -> Option<u64> {
    name.strip_prefix(INSTANCE_PREFIX)?.parse().ok()
}

#[cfg(test)]
#[path = "paths_tests.rs"]
mod tests;
