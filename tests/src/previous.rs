//! The previous release's `steer`, built from this repository's history, for the
//! in-place upgrade tests: the last commit whose program and maps were ABI 2.
//!
//! It is built once into `target/previous/abi2/` (its sources from `git archive`,
//! its own target directory) and found there afterwards; `cargo xtask test` builds it
//! in a step of its own before the tests, so no test pays for the build under load.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The last commit of ABI 2 (`steer_abi::ABI_VERSION == 2`).
pub const ABI2_COMMIT: &str = "5de4f24172cf3610daf357f6d779f50572329560";

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn dir() -> PathBuf {
    workspace().join("target/previous/abi2")
}

/// Where the ABI-2 `steer` binary is, once built.
#[must_use]
pub fn abi2_path() -> PathBuf {
    dir().join("steer")
}

/// The ABI-2 `steer`, built first when missing (a few minutes: a release build of
/// that commit's agent and eBPF program).
///
/// # Errors
///
/// When the commit is not in this clone's history (a shallow clone), or the build fails.
pub fn abi2_steer() -> anyhow::Result<PathBuf> {
    let bin = abi2_path();
    if bin.is_file() {
        return Ok(bin);
    }
    let _lock = lock()?;
    if bin.is_file() {
        return Ok(bin);
    }
    let src = dir().join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).with_context(|| format!("create {}", src.display()))?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!("git -C \"$1\" archive --format=tar {ABI2_COMMIT} | tar -x -C \"$2\""))
        .arg("sh")
        .arg(workspace())
        .arg(&src)
        .status()
        .context("run git archive")?;
    if !archive.success() {
        bail!(
            "cannot extract commit {ABI2_COMMIT} (the last ABI-2 steer) with git archive; \
             the upgrade tests need this repository's history (not a shallow clone)"
        );
    }
    let target = dir().join("target");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--package", "steer", "--bin", "steer"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&src)
        .status()
        .context("run cargo build for the ABI-2 steer")?;
    if !build.success() {
        bail!("building the ABI-2 steer (commit {ABI2_COMMIT}) failed");
    }
    std::fs::copy(target.join("release/steer"), &bin)
        .with_context(|| format!("copy to {}", bin.display()))?;
    Ok(bin)
}

/// An exclusive lock on `target/previous/abi2.lock`, so two test processes build once.
fn lock() -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir())?;
    let file = std::fs::File::create(dir().with_extension("lock"))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).context("lock the ABI-2 build")?;
    Ok(file)
}
