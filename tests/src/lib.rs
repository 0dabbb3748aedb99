//! End-to-end harness for steer: network namespaces, a reuseport test server, a
//! closed-loop load generator, and the privilege gate the privileged tests share.
//!
//! # Layout
//!
//! - [`netns`]: throw-away network namespaces (`ip netns`), entering them from a thread,
//!   running commands in them, and cleaning them up on drop.
//! - [`server`]: the `steer-testserver` binary's logic (reuseport listeners whose reply
//!   names their generation, controlled over stdin) and [`server::TestServer`], the
//!   driver tests use to spawn and steer it.
//! - [`piped`]: what [`server::TestServer`] and [`udp_server::UdpServer`] share: the
//!   server run in a namespace, its `ready` line, and commands over stdin/stdout.
//! - [`load`]: the closed-loop load generator behind `steer-load`, with failure classes
//!   and a latency histogram.
//! - [`haproxy`], [`nginx`]: drivers that run the real servers in a namespace, write
//!   their configs, reload them, and find which process holds the listeners.
//! - [`docker`], [`image`]: the Docker CLI for the container tests, and building the
//!   `steer` and HAProxy images they run (`cargo xtask image` builds them the same way).
//! - [`unbound`], [`dnsperf`], [`dns`], [`dns_handover`]: unbound generations with a
//!   local zone, dnsperf at a fixed rate, a TXT query naming the answering generation,
//!   and handovers of unbound under dnsperf with or without steer (the UDP proof).
//! - [`udp`], [`udp_server`]: one-source-port flows, and the `steer-udpserver` binary
//!   whose answers name their generation.
//! - [`sysimage`]: the Debian root filesystem with systemd as init, in containerd, that the
//!   shipped systemd unit runs in.
//! - [`previous`]: the previous release's `steer` (ABI 2), built from this repository's
//!   history, for the in-place upgrade tests.
//! - [`procfs`]: the `/proc` reading (which TCP listeners or bound UDP sockets a process
//!   holds, among others), signalling and bounded polling those drivers share.
//! - [`require_privileges`]: decide whether a privileged test runs, skips, or fails.

pub mod dns;
pub mod dns_handover;
pub mod dnsperf;
pub mod docker;
pub mod haproxy;
pub mod image;
pub mod load;
pub mod netns;
pub mod nginx;
pub mod piped;
pub mod previous;
pub mod procfs;
pub mod server;
pub mod sysimage;
pub mod udp;
pub mod udp_server;
pub mod unbound;

use std::path::Path;

/// Returns true when privileged tests can run here: root, `ip` on `PATH`, and bpffs
/// mounted at `/sys/fs/bpf`.
///
/// Otherwise prints `skipping <test>: <reason>` on stderr and returns false, unless the
/// environment promises privileged tests can run (`CI` is `true` or `1`), in which case
/// it panics with the reason.
///
/// # Panics
///
/// When `CI` is `true` or `1` and a requirement is missing.
#[must_use]
pub fn require_privileges(test: &str) -> bool {
    let Err(reason) = privileges_missing() else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true promises privileged tests can run, but: {reason}");
    eprintln!("skipping {test}: {reason}");
    false
}

/// `Ok(())` when every requirement of a privileged test holds, else the first one missing.
fn privileges_missing() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root (euid != 0)".to_owned());
    }
    if find_in_path("ip").is_none() {
        return Err("the `ip` command (iproute2) is not on PATH".to_owned());
    }
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(|e| format!("cannot read /proc/mounts: {e}"))?;
    if !is_bpffs_mounted(&mounts, "/sys/fs/bpf") {
        return Err("/sys/fs/bpf is not a bpffs mount (mount -t bpf bpf /sys/fs/bpf)".to_owned());
    }
    Ok(())
}

/// Whether `/proc/mounts` text shows a `bpf` filesystem mounted at `dir`.
fn is_bpffs_mounted(mounts: &str, dir: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, mountpoint, fstype) = (fields.next(), fields.next(), fields.next());
        mountpoint == Some(dir) && fstype == Some("bpf")
    })
}

/// The first executable file called `program` in a `PATH` directory.
#[must_use]
pub fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
