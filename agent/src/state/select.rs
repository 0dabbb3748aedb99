//! The two ways an instance steers, and select-only mode's program instances.
//!
//! With listener migration (Linux 5.14+) one `steer` program, loaded as
//! `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`, serves every group: it reads the group
//! from `ctx->sk`. Select-only mode (`--no-migrate`, or a kernel before 5.14,
//! which has no `ctx->sk`) loads `steer_select` as `BPF_SK_REUSEPORT_SELECT`,
//! once per group, with the group set before load; each instance shares the
//! pinned maps and is pinned beside them as `prog-select-<group>`. The
//! instance directory says which mode it is in: `prog` (the migrating
//! program) or `prog-select` (a `steer_select` loaded for no group, never
//! attached), so every later command keeps the mode.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{SkReuseport, sk_reuseport::SkReuseportAttachType},
};
use steer_abi::{GroupKey, SELECT_GROUP_GLOBAL, SELECT_PROGRAM_NAME};

use super::{StateError, create::MAP_PINS};
use crate::{paths::pins, preflight, program};

/// How an instance steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// New connections, and a closing listener's queue (Linux 5.14+).
    #[serde(rename = "select+migrate")]
    SelectOrMigrate,
    /// New connections only; a closing listener's queue is reset.
    SelectOnly,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SelectOrMigrate => "select+migrate",
            Self::SelectOnly => "select-only",
        })
    }
}

/// The mode a command asks for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub mode: Mode,
    /// Why select-only: `--no-migrate`, or the kernel; empty otherwise.
    pub reason: String,
}

impl Wanted {
    /// The mode for `--no-migrate` (when set) on the running kernel (or
    /// `STEER_KERNEL_RELEASE`): select-only when asked, or when the kernel has
    /// no `ctx->sk` nor `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`.
    #[must_use]
    pub fn new(no_migrate: bool) -> Self {
        if no_migrate {
            return Self { mode: Mode::SelectOnly, reason: "--no-migrate".to_owned() };
        }
        let release = preflight::kernel_release();
        if preflight::migrate_supported(&release) {
            Self { mode: Mode::SelectOrMigrate, reason: String::new() }
        } else {
            let (major, minor) = preflight::MIGRATE_KERNEL;
            Self {
                mode: Mode::SelectOnly,
                reason: format!(
                    "kernel {release} is older than {major}.{minor} (no ctx->sk, no BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)"
                ),
            }
        }
    }

    /// Whether an instance in `have`, holding groups, can serve this request.
    /// A request that does not insist keeps the instance's mode; only a
    /// request for select-only meets an instance that migrates.
    #[must_use]
    pub fn accepts(&self, have: Mode) -> bool {
        self.mode == have || self.mode == Mode::SelectOrMigrate
    }
}

/// The mode of the instance in `dir`, from its program pins; `None` when it
/// has neither (a damaged instance).
#[must_use]
pub fn mode_of(dir: &Path) -> Option<Mode> {
    if dir.join(pins::PROGRAM).exists() {
        Some(Mode::SelectOrMigrate)
    } else if dir.join(pins::SELECT_PROGRAM).exists() {
        Some(Mode::SelectOnly)
    } else {
        None
    }
}

/// Pin name of the `steer_select` instance of `key`: every field in hex (no
/// dots, which bpffs refuses), so that two groups never share one.
#[must_use]
pub fn pin_name(key: &GroupKey) -> String {
    let [a, b, c, d] = key.addr;
    format!(
        "{}{:x}-{:x}-{:x}-{:x}-{a:08x}{b:08x}{c:08x}{d:08x}",
        pins::SELECT_PROGRAM_PREFIX,
        key.family,
        key.protocol,
        key.port,
        key.ifindex
    )
}

/// Loads `steer_select` from an already loaded object (instance creation:
/// its maps are the ones being pinned) and pins it at `path`.
pub fn load_template(ebpf: &mut Ebpf, path: &Path) -> Result<(), StateError> {
    let prog = select_program(ebpf)?;
    prog.load().map_err(|e| StateError::Load(Box::new(e)))?;
    prog.pin(path).map_err(|e| StateError::pin("program", path.to_path_buf(), e))
}

/// The `steer_select` instance of `key` in the instance directory `dir`:
/// opened from its pin, or loaded against the pinned maps and pinned first.
/// Only with the state's lock held.
pub fn group_program(dir: &Path, key: &GroupKey) -> Result<SkReuseport, StateError> {
    let path = dir.join(pin_name(key));
    if !path.exists() {
        let pinned: Vec<(&str, PathBuf)> =
            MAP_PINS.iter().map(|(name, pin)| (*name, dir.join(pin))).collect();
        let mut loader = EbpfLoader::new();
        for (name, pin) in &pinned {
            loader.map_pin_path(name, pin.as_path());
        }
        let mut ebpf = loader
            .override_global(SELECT_GROUP_GLOBAL, key, true)
            .load(program::OBJECT)
            .map_err(|e| StateError::Load(Box::new(e)))?;
        load_template(&mut ebpf, &path)?;
    }
    SkReuseport::from_pin(&path, SkReuseportAttachType::Select)
        .map_err(|e| StateError::pin("program", path.clone(), e))
}

/// Every `steer_select` instance pinned in `dir` (not the template).
#[must_use]
pub fn group_programs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(pins::SELECT_PROGRAM_PREFIX)))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn select_program(ebpf: &mut Ebpf) -> Result<&mut SkReuseport, StateError> {
    ebpf.program_mut(SELECT_PROGRAM_NAME)
        .ok_or_else(|| StateError::Load("select program missing from the object".into()))?
        .try_into()
        .map_err(|e| StateError::Load(Box::new(e)))
}

/// Loads `steer_select` of a fresh object through the verifier (nothing is
/// pinned or attached): `steer check` in select-only mode.
pub fn check_load() -> Result<(), StateError> {
    let mut ebpf = EbpfLoader::new()
        .override_global(SELECT_GROUP_GLOBAL, &GroupKey::default(), true)
        .load(program::OBJECT)
        .map_err(|e| StateError::Load(Box::new(e)))?;
    select_program(&mut ebpf)?.load().map_err(|e| StateError::Load(Box::new(e)))
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
