//! The two ways an instance steers, and the programs of its groups.
//!
//! Every group has its own instance of the program, loaded against the pinned
//! maps with the group and the group's index set before load, and pinned
//! beside them as `prog-group-<index>-<group>`. With listener migration
//! (Linux 5.14+) that is `steer`, loaded as `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`;
//! select-only mode (`--no-migrate`, or a kernel before 5.14) loads
//! `steer_select` as `BPF_SK_REUSEPORT_SELECT`. The instance directory says
//! which mode it is in: `prog` or `prog-select`, the entry point loaded for no
//! group and never attached, so every later command keeps the mode.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{SkReuseport, sk_reuseport::SkReuseportAttachType},
};
use steer_abi::{GROUP_GLOBAL, GROUP_INDEX_GLOBAL, GroupKey, PROGRAM_NAME, SELECT_PROGRAM_NAME, flows};

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

impl Mode {
    /// The program's entry point in the object.
    #[must_use]
    pub const fn entry_point(self) -> &'static str {
        match self {
            Self::SelectOrMigrate => PROGRAM_NAME,
            Self::SelectOnly => SELECT_PROGRAM_NAME,
        }
    }

    /// How the entry point is loaded and attached.
    #[must_use]
    pub const fn attach_type(self) -> SkReuseportAttachType {
        match self {
            Self::SelectOrMigrate => SkReuseportAttachType::SelectOrMigrate,
            Self::SelectOnly => SkReuseportAttachType::Select,
        }
    }

    /// The pin that marks an instance in this mode.
    #[must_use]
    pub const fn marker(self) -> &'static str {
        match self {
            Self::SelectOrMigrate => pins::PROGRAM,
            Self::SelectOnly => pins::SELECT_PROGRAM,
        }
    }
}

/// The part of a group program's pin name after its index: every field of
/// `key` in hex (no dots, which bpffs refuses), so that two groups never
/// share one.
pub(super) fn key_suffix(key: &GroupKey) -> String {
    let [a, b, c, d] = key.addr;
    format!(
        "-{:x}-{:x}-{:x}-{:x}-{a:08x}{b:08x}{c:08x}{d:08x}",
        key.family, key.protocol, key.port, key.ifindex
    )
}

/// Pin name of the program of the group `key` at `index`.
#[must_use]
pub fn pin_name(index: u32, key: &GroupKey) -> String {
    format!("{}{index}{}", pins::GROUP_PROGRAM_PREFIX, key_suffix(key))
}

/// Every group program pinned in `dir` as (index, the rest of its name,
/// [`key_suffix`]).
fn pinned(dir: &Path) -> Vec<(u32, String)> {
    group_programs(dir)
        .iter()
        .filter_map(|path| {
            let rest = path.file_name()?.to_str()?.strip_prefix(pins::GROUP_PROGRAM_PREFIX)?;
            let (index, suffix) = rest.split_at(rest.find('-')?);
            Some((index.parse().ok()?, suffix.to_owned()))
        })
        .collect()
}

/// The index of the group program pinned in `dir` for `key`, if any.
#[must_use]
pub fn pinned_index(dir: &Path, key: &GroupKey) -> Option<u32> {
    let suffix = key_suffix(key);
    pinned(dir).into_iter().find_map(|(index, s)| (s == suffix).then_some(index))
}

/// The indexes of every group program pinned in `dir`.
#[must_use]
pub fn pinned_indexes(dir: &Path) -> Vec<u32> {
    pinned(dir).into_iter().map(|(index, _)| index).collect()
}

/// Loads the entry point of `mode` from an already loaded object (instance
/// creation: its maps are the ones being pinned) and pins it at `path`.
pub fn load_pinned(ebpf: &mut Ebpf, mode: Mode, path: &Path) -> Result<(), StateError> {
    let prog = entry_point(ebpf, mode)?;
    prog.load().map_err(|e| StateError::Load(Box::new(e)))?;
    prog.pin(path).map_err(|e| StateError::pin("program", path.to_path_buf(), e))
}

/// The program of the group `key` at `index` in the instance directory `dir`:
/// opened from its pin, or loaded against the maps pinned there and pinned
/// first. Only with the state's lock held.
pub fn group_program(dir: &Path, mode: Mode, key: &GroupKey, index: u32) -> Result<SkReuseport, StateError> {
    let path = dir.join(pin_name(index, key));
    if !path.exists() {
        let pins = map_pin_paths(dir);
        let (jiffy_ns, initial) = jiffy_clock();
        let mut ebpf = loader_for(&pins)
            .override_global(GROUP_GLOBAL, key, true)
            .override_global(GROUP_INDEX_GLOBAL, &index, true)
            .override_global(flows::JIFFY_NS_GLOBAL, &jiffy_ns, true)
            .override_global(flows::INITIAL_JIFFIES_GLOBAL, &initial, true)
            .load(program::OBJECT)
            .map_err(|e| StateError::Load(Box::new(e)))?;
        load_pinned(&mut ebpf, mode, &path)?;
    }
    SkReuseport::from_pin(&path, mode.attach_type()).map_err(|e| StateError::pin("program", path.clone(), e))
}

/// Every map of the object with its pin path in the instance directory `dir`.
#[must_use]
pub fn map_pin_paths(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    MAP_PINS.iter().map(|(name, pin)| (*name, dir.join(pin))).collect()
}

/// A loader that takes each map from its pin in `pins` ([`map_pin_paths`]),
/// creating and pinning the ones missing there.
#[must_use]
pub fn loader_for<'a>(pins: &'a [(&'static str, PathBuf)]) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    for (name, pin) in pins {
        loader.map_pin_path(name, pin.as_path());
    }
    loader
}

/// The kernel's jiffy in ns and `jiffies` at boot, for the flow table's clock
/// (`steer_abi::flows::now_ns`): the jiffy is the resolution of
/// CLOCK_MONOTONIC_COARSE (`TICK_NSEC`, kernel/time/posix-timers.c), and HZ
/// follows from it.
#[must_use]
pub fn jiffy_clock() -> (u64, u64) {
    let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
    let ns = u64::try_from(res.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(res.tv_nsec).unwrap_or(0);
    jiffy_clock_of(ns)
}

/// [`jiffy_clock`] for a coarse resolution of `ns` (HZ 250 when it reads 0).
#[must_use]
pub fn jiffy_clock_of(ns: u64) -> (u64, u64) {
    let jiffy_ns = if ns == 0 { 4_000_000 } else { ns };
    let hz = (1_000_000_000 + jiffy_ns / 2) / jiffy_ns;
    (jiffy_ns, flows::initial_jiffies(hz))
}

/// Every group program pinned in `dir` (not the marker).
#[must_use]
pub fn group_programs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(pins::GROUP_PROGRAM_PREFIX)))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn entry_point(ebpf: &mut Ebpf, mode: Mode) -> Result<&mut SkReuseport, StateError> {
    ebpf.program_mut(mode.entry_point())
        .ok_or_else(|| StateError::Load(format!("{} missing from the object", mode.entry_point()).into()))?
        .try_into()
        .map_err(|e| StateError::Load(Box::new(e)))
}

/// Loads the entry point of `mode` of a fresh object through the verifier
/// (nothing is pinned or attached): `steer check`.
pub fn check_load(mode: Mode) -> Result<(), StateError> {
    let mut ebpf = EbpfLoader::new().load(program::OBJECT).map_err(|e| StateError::Load(Box::new(e)))?;
    entry_point(&mut ebpf, mode)?.load().map_err(|e| StateError::Load(Box::new(e)))
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
