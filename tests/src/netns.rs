//! Throw-away network namespaces: create with `ip netns add`, run commands and threads
//! inside, set sysctls, and on drop kill what is left in them and delete them.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context as _, bail};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Longest tag kept in a namespace name, so names stay short and readable.
const MAX_TAG_LEN: usize = 8;

/// Distinguishes namespaces created by one process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/NAME`) with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `steer-<tag>-<pid>-<counter>` (tag cut to 8 characters) and brings `lo` up.
    ///
    /// # Errors
    ///
    /// When `ip netns add` or `ip link set lo up` fails.
    pub fn new(tag: &str) -> anyhow::Result<NetNs> {
        let tag: String =
            tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(MAX_TAG_LEN).collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("steer-{tag}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name]).with_context(|| format!("creating netns {name}"))?;
        // From here on, drop deletes the namespace even if bringing lo up fails.
        let ns = NetNs { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])
            .with_context(|| format!("bringing lo up in netns {}", ns.name))?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/NAME`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    ///
    /// `ip netns exec` execs the program, so the child's pid is the program's pid.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Moves the calling thread into the namespace (`setns(CLONE_NEWNET)`); other threads
    /// of the process stay where they are.
    ///
    /// # Errors
    ///
    /// When the namespace file cannot be opened or `setns` fails.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        enter_netns_file(&file).with_context(|| format!("entering netns {}", self.name))
    }

    /// Spawns a thread that enters the namespace and then runs `f`.
    pub fn spawn_in<F, T>(&self, f: F) -> JoinHandle<anyhow::Result<T>>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            enter_netns_file(&file).with_context(|| format!("entering netns {}", path.display()))?;
            f()
        })
    }

    /// Sets a sysctl inside the namespace (`sysctl -qw key=value`).
    ///
    /// # Errors
    ///
    /// When the sysctl cannot be set.
    pub fn set_sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let output = self
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .stdin(Stdio::null())
            .output()
            .context("running sysctl")?;
        check_output(&output).with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// Pids of the processes in the namespace (`ip netns pids NAME`).
    ///
    /// # Errors
    ///
    /// When `ip netns pids` fails or prints something that is not a pid.
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let output = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stdin(Stdio::null())
            .output()
            .context("running ip netns pids")?;
        check_output(&output)?;
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(|p| p.parse().with_context(|| format!("ip netns pids printed {p:?}")))
            .collect()
    }

    fn cleanup(&self) -> anyhow::Result<()> {
        let me = std::process::id();
        for pid in self.pids()?.into_iter().filter(|&pid| pid != me) {
            if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                // The process may be gone already; that is what we want anyway.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        run_ip(&["netns", "del", &self.name])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("warning: cleaning up netns {}: {e:#}", self.name);
        }
    }
}

/// `setns(fd, CLONE_NEWNET)` for the calling thread.
pub(crate) fn enter_netns_file(file: &File) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).context("setns(CLONE_NEWNET)")
}

/// Runs `ip ARGS`, failing with its stderr when it exits non-zero.
fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    check_output(&output).with_context(|| format!("ip {}", args.join(" ")))
}

fn check_output(output: &Output) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
