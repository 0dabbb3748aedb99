//! `systemd-analyze verify` of the shipped unit, `deploy/systemd/steer.service`, a step of
//! `cargo xtask test`. It takes a second; the unit run for real under systemd, with all
//! its hardening, is the end-to-end test `containers::systemd`.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail, ensure};

use crate::util::{self, cmd};

/// The unit, relative to the workspace root.
pub const UNIT: &str = "deploy/systemd/steer.service";
/// Where the unit expects the binary (deploy/README.md, "Install").
const INSTALLED_BIN: &str = "/usr/local/bin/steer";

/// Verifies the unit as shipped, except that `ExecStart=` names the `steer` binary just
/// built instead of `/usr/local/bin/steer` (verify refuses a unit whose binary is
/// missing). `systemd-analyze verify` exits 0 on unknown keys and bad values, only
/// printing them; any output fails the step.
pub fn verify() -> Result<()> {
    let root = util::workspace_root();
    util::run(cmd("cargo").current_dir(root).args(["build", "--quiet", "-p", "steer", "--bin", "steer"]))?;
    let bin = root.join("target/debug/steer");
    let text = fs::read_to_string(root.join(UNIT)).with_context(|| format!("reading {UNIT}"))?;
    ensure!(text.contains(INSTALLED_BIN), "{UNIT} no longer runs {INSTALLED_BIN}: update xtask/src/unit.rs");
    let dir = root.join("target/xtask-unit");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The file name is the unit's name: keep it.
    let copy = dir.join("steer.service");
    fs::write(&copy, text.replace(INSTALLED_BIN, &bin.to_string_lossy()))
        .with_context(|| format!("writing {}", copy.display()))?;
    check(&copy)
}

fn check(unit: &Path) -> Result<()> {
    let mut command = cmd("systemd-analyze");
    command.args(["verify", "--man=no"]).arg(unit);
    let line = util::display(&command);
    let out =
        command.output().with_context(|| format!("could not start `{line}` (apt-get install systemd)"))?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !said.trim().is_empty() {
        bail!("`{line}` ({}) found problems in {UNIT}:\n{}", out.status, said.trim());
    }
    println!("{UNIT}: systemd-analyze verify: no problems");
    Ok(())
}

#[cfg(test)]
#[path = "unit_tests.rs"]
mod tests;
