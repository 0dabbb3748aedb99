//! The kernel memory a steer state pins: each pinned map and program of each
//! instance opened by path (`BPF_OBJ_GET`) and its `memlock` read from
//! `/proc/self/fdinfo`, as bpftool does, without bpftool.

use std::{
    ffi::CString,
    fs,
    os::{fd::FromRawFd as _, fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// `BPF_OBJ_GET` of `bpf(2)` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;

/// What one state directory pins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Instances (`net-*` directories).
    pub instances: usize,
    /// `memlock` summed over every pinned map and program, bytes.
    pub bytes: u64,
}

impl Pinned {
    /// Bytes per instance (0 without one).
    pub fn per_instance(self) -> u64 {
        self.bytes.checked_div(self.instances as u64).unwrap_or(0)
    }
}

/// Sums the `memlock` of every object pinned in the instances of `state_dir`.
pub fn measure(state_dir: &Path) -> Result<Pinned> {
    let mut out = Pinned::default();
    let Ok(entries) = fs::read_dir(state_dir) else { return Ok(out) };
    for dir in entries.flatten().filter(|e| e.file_name().as_bytes().starts_with(b"net-")) {
        out.instances += 1;
        let pins =
            fs::read_dir(dir.path()).with_context(|| format!("could not list {}", dir.path().display()))?;
        for pin in pins.flatten() {
            out.bytes += memlock(&pin.path())?;
        }
    }
    Ok(out)
}

/// `memlock` of the object pinned at `path`, bytes.
fn memlock(path: &Path) -> Result<u64> {
    let fd = obj_get(path)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let info = format!("/proc/self/fdinfo/{raw}");
    let text = fs::read_to_string(&info).with_context(|| format!("could not read {info}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock in {info} (for {})", path.display()))
}

/// A descriptor of the object pinned at `path`.
fn obj_get(path: &Path) -> Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).context("a pin path without NUL")?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0_u64; 3];
    attr[0] = name.as_ptr() as u64;
    let size = std::mem::size_of_val(&attr);
    // SAFETY: attr is a valid, zeroed bpf_attr prefix of `size` bytes; `name`
    // outlives the call; the kernel returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), size) };
    if fd < 0 {
        bail!("BPF_OBJ_GET {}: {}", path.display(), std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).context("a descriptor number")?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
