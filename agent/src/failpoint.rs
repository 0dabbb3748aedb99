//! Failpoints for the fault tests: named places between a write command's map
//! writes where a test build (`--features failpoints`) can kill steer, as
//! `kill -9` would, or stop it. `STEER_FAILPOINT=NAME` kills steer with SIGKILL
//! when it reaches NAME; `STEER_FAILPOINT=NAME:stop` stops it with SIGSTOP
//! there, for a test to act and then SIGCONT it. Without the feature every
//! failpoint compiles to nothing.

/// The environment variable that arms a failpoint.
pub const ENV: &str = "STEER_FAILPOINT";

/// `promote`, after reading the process's listeners and before duplicating them.
pub const PROMOTE_DISCOVERED: &str = "promote-discovered";
/// `promote`, after duplicating the listeners and before the first map write.
pub const PROMOTE_DUPLICATED: &str = "promote-duplicated";
/// Instance creation: every pin in its temporary directory, before the rename.
pub const CREATE_PINNED: &str = "create-pinned";
/// A slot's record (`slots` map) written, its socket not yet in the sockarray.
pub const SLOT_RECORDED: &str = "slot-recorded";
/// The first socket of a promote in the sockarray, the others not.
pub const SLOT_FILLED: &str = "slot-filled";
/// The interim configuration (only the sockets new to the sockarray) set,
/// while the others move out of their stale slots.
pub const PROMOTE_INTERIM: &str = "promote-interim";
/// Stale slots emptied, the sockets that sat there not yet back in.
pub const PROMOTE_STALE_FREED: &str = "promote-stale-freed";
/// Every socket in the sockarray, the configuration not yet written.
pub const PROMOTE_FILLED: &str = "promote-filled";
/// The configuration written, the program not yet (re-)attached.
pub const PROMOTE_CONFIGURED: &str = "promote-configured";
/// Attached, the slots no configuration names not yet released.
pub const PROMOTE_ATTACHED: &str = "promote-attached";

/// An upgrade of an older instance (`state::upgrade`): one group moved to
/// its new program, the others and the commit not yet. Not in [`ALL`]: no
/// promote of an instance this steer wrote reaches it. `NAME:fail` makes the
/// upgrade fail there, as an error would ([`fails`]).
pub const UPGRADE_ATTACHED: &str = "upgrade-attached";

/// Every failpoint, in the order a promote may reach them.
pub const ALL: [&str; 10] = [
    PROMOTE_DISCOVERED,
    PROMOTE_DUPLICATED,
    CREATE_PINNED,
    SLOT_RECORDED,
    SLOT_FILLED,
    PROMOTE_INTERIM,
    PROMOTE_STALE_FREED,
    PROMOTE_FILLED,
    PROMOTE_CONFIGURED,
    PROMOTE_ATTACHED,
];

/// Kills (or stops) this process when `STEER_FAILPOINT` names `name`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use rustix::process::{Signal, getpid, kill_process};
    let Ok(armed) = std::env::var(ENV) else { return };
    let (point, action) = armed.split_once(':').unwrap_or((armed.as_str(), "kill"));
    if point != name || action == "fail" {
        return;
    }
    eprintln!("steer: failpoint {name}: {action}");
    let signal = if action == "stop" { Signal::STOP } else { Signal::KILL };
    let _ = kill_process(getpid(), signal);
}

/// Failpoints are compiled into test builds only.
#[cfg(not(feature = "failpoints"))]
#[inline]
pub fn hit(_name: &str) {}

/// Whether `STEER_FAILPOINT` is `name:fail`: the caller then fails there as
/// if an error had happened.
#[cfg(feature = "failpoints")]
#[must_use]
pub fn fails(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|armed| armed.strip_suffix(":fail") == Some(name))
}

/// Failpoints are compiled into test builds only.
#[cfg(not(feature = "failpoints"))]
#[inline]
#[must_use]
pub fn fails(_name: &str) -> bool {
    false
}
