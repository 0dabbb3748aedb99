//! Checks that come before anything changes: kernel version and privileges.
use std::fs;

use crate::paths;

/// The oldest kernel steer runs on: `pidfd_getfd` (5.6) takes the server's
/// sockets. Before [`MIGRATE_KERNEL`] it steers in select-only mode.
pub const MIN_KERNEL: (u32, u32) = (5, 6);
/// The oldest kernel with `ctx->sk`, `ctx->migrating_sk` and
/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`.
pub const MIGRATE_KERNEL: (u32, u32) = (5, 14);

/// Capabilities and their bit numbers (include/uapi/linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Why steering cannot work here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("kernel {release} is older than {}.{}: steer takes the server's sockets with pidfd_getfd (Linux 5.6+); upgrade the kernel", MIN_KERNEL.0, MIN_KERNEL.1)]
    OldKernel { release: String },
    #[error(
        "steer lacks {missing}; run it as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE (docs/security.md says why each)"
    )]
    Privileges { missing: String },
}

/// The running kernel's release, or `STEER_KERNEL_RELEASE` when set (tests).
#[must_use]
pub fn kernel_release() -> String {
    std::env::var(paths::KERNEL_RELEASE_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| rustix::system::uname().release().to_string_lossy().into_owned())
}

/// `6.18.44-foo` → (6, 18).
#[must_use]
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses kernels older than [`MIN_KERNEL`].
pub fn kernel() -> Result<String, PreflightError> {
    let release = kernel_release();
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => Ok(release),
        _ => Err(PreflightError::OldKernel { release }),
    }
}

/// Whether `release` has listener migration for reuseport programs
/// ([`MIGRATE_KERNEL`]); an unparsable release has not.
#[must_use]
pub fn migrate_supported(release: &str) -> bool {
    parse_release(release).is_some_and(|v| v >= MIGRATE_KERNEL)
}

/// The effective capability set, from `/proc/self/status`.
#[must_use]
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s)).unwrap_or(0)
}

/// The `CapEff:` line of a status file.
#[must_use]
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Names of the capabilities a write command needs and `caps` lacks.
#[must_use]
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    // The verifier allows the program's counter indexing and the watcher's
    // tracepoint only with CAP_PERFMON (kernel/bpf/verifier.c, `bpf_allow_ptr_leaks`
    // and `env->bypass_spec_v1`).
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    missing
}

/// Refuses a write command without the capabilities it needs.
pub fn privileges() -> Result<(), PreflightError> {
    let missing = missing_caps(effective_caps());
    if missing.is_empty() { Ok(()) } else { Err(PreflightError::Privileges { missing: missing.join(", ") }) }
}

/// Both checks, in the order a user should fix them.
pub fn all() -> Result<(), PreflightError> {
    kernel()?;
    privileges()
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
