//! What `demo` and `bench` share: the preflight (setup, root, bpffs), the release build of
//! the agent and the test server, and [`Steer`], the built `steer` binary with a state
//! directory of its own.
//!
//! The `steer` agent is used only as a built binary, so xtask itself builds without the
//! eBPF toolchain.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    setup,
    util::{self, cmd},
};

/// Where the harness's `server::bin_path` looks for the built binaries.
const BIN_DIR_ENV: &str = "STEER_TEST_BIN_DIR";
/// Variables that change what `steer` does (test overrides) or logs; demo and bench run it
/// plain, the daemon at its default level (info).
const STEER_ENV: &[&str] = &["STEER_STATE_DIR", "STEER_KERNEL_RELEASE", "STEER_MAX_SLOTS", "RUST_LOG"];

/// Runs setup (unless skipped), checks for root and bpffs, builds the release binaries and
/// points the harness at them; returns their directory. `what` names the caller in errors.
pub fn prepare(no_setup: bool, what: &str) -> Result<PathBuf> {
    if no_setup {
        println!("== setup: skipped (--no-setup)");
    } else {
        println!("== setup: installing only what is missing");
        setup::run().context("setup failed")?;
    }
    if !setup::is_root()? {
        bail!("the {what} creates network namespaces and loads eBPF programs: run it as root");
    }
    if !setup::bpffs_mounted(setup::BPFFS)? {
        bail!("{} is not a bpf filesystem; run `cargo xtask setup` first", setup::BPFFS);
    }
    let bin_dir = build()?;
    // SAFETY: xtask is single-threaded up to here (setup and build only ran child
    // processes), so nothing reads the environment while it changes.
    unsafe { env::set_var(BIN_DIR_ENV, &bin_dir) };
    Ok(bin_dir)
}

/// Builds the agent and the harness binaries in release mode; returns their directory.
fn build() -> Result<PathBuf> {
    println!("== build: the steer agent and the test server, release mode (meaningful timings)");
    let mut command = cmd("cargo");
    command.current_dir(util::workspace_root()).args([
        "build",
        "--release",
        "-p",
        "steer",
        "--bin",
        "steer",
        "-p",
        "steer-tests",
        "--bins",
    ]);
    util::run(&mut command).context("could not build the release binaries")?;
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = util::workspace_root().join(target).join("release");
    for name in ["steer", "steer-testserver"] {
        if !dir.join(name).is_file() {
            bail!("the build succeeded but {} is missing", dir.join(name).display());
        }
    }
    Ok(dir)
}

/// The built `steer` binary with a state directory of its own, removed on drop.
pub struct Steer {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
}

impl Steer {
    /// `bin` with `state_dir`, which is removed first if a previous run left it behind.
    pub fn new(bin: PathBuf, state_dir: PathBuf) -> Result<Steer> {
        remove_state_dir(&state_dir)?;
        Ok(Steer { bin, state_dir })
    }

    /// `steer --state-dir DIR ARGS`, without the variables that would change what it does.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = cmd(&self.bin);
        command.arg("--state-dir").arg(&self.state_dir).args(args);
        for key in STEER_ENV {
            command.env_remove(key);
        }
        command
    }

    /// `steer status --json`, parsed.
    pub fn status_json(&self) -> Result<Value> {
        let text = util::output(&mut self.command(["status", "--json"]))?;
        serde_json::from_str(&text).with_context(|| format!("parsing `steer status --json`: {text}"))
    }
}

impl Drop for Steer {
    fn drop(&mut self) {
        if let Err(err) = remove_state_dir(&self.state_dir) {
            eprintln!("warning: {err:#}");
        }
    }
}

/// Every group of every namespace in a `steer status --json` document.
pub fn groups(status: &Value) -> impl Iterator<Item = &Value> {
    status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|ns| ns["groups"].as_array().into_iter().flatten())
}

/// Removes a state directory (its pins) if it exists.
fn remove_state_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("could not remove the state directory {}", dir.display()))
        }
        _ => Ok(()),
    }
}
