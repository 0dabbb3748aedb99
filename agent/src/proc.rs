//! What `/proc` says about a process: whether it exists, its name, its network
//! namespace, its start time, parent and children, and which of its descriptors
//! are sockets.
use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

/// Errors reading a process's `/proc` entries.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no process with pid {pid}; pass the pid of a running server (for example `pidof haproxy`)")]
    NoSuchProcess { pid: u32 },
    #[error(
        "cannot read {path}: permission denied; run steer as root, or grant CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE"
    )]
    Denied { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A process seen through `/proc`.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm`, e.g. `haproxy`.
    pub comm: String,
    /// Inode of `/proc/PID/ns/net`.
    pub netns: u64,
}

impl Process {
    /// Looks the process up; [`ProcError::NoSuchProcess`] when it does not exist.
    pub fn open(pid: u32) -> Result<Self, ProcError> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !base.exists() {
            return Err(ProcError::NoSuchProcess { pid });
        }
        let comm_path = base.join("comm");
        let comm = fs::read_to_string(&comm_path).map_err(|source| read_error(pid, comm_path, source))?;
        let netns = netns_inode(pid)?;
        Ok(Self { pid, comm: comm.trim_end().to_owned(), netns })
    }

    /// Maps socket inode → descriptor number for every socket the process holds.
    pub fn socket_fds(&self) -> Result<HashMap<u64, u32>, ProcError> {
        let dir = PathBuf::from(format!("/proc/{}/fd", self.pid));
        let entries = fs::read_dir(&dir).map_err(|source| read_error(self.pid, dir.clone(), source))?;
        let mut out = HashMap::new();
        for entry in entries.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A descriptor may close while we look; skip it.
            let Ok(target) = fs::read_link(entry.path()) else { continue };
            if let Some(inode) = target.to_str().and_then(parse_socket_link) {
                // The lowest fd wins when a socket is duplicated within a process.
                out.entry(inode).and_modify(|f: &mut u32| *f = (*f).min(fd)).or_insert(fd);
            }
        }
        Ok(out)
    }
}

/// Inode of a process's network namespace.
pub fn netns_inode(pid: u32) -> Result<u64, ProcError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    fs::metadata(&path).map(|m| m.ino()).map_err(|source| read_error(pid, path, source))
}

/// Whether `/proc/PID/fd/FD` is still the socket with `inode`.
#[must_use]
pub fn holds_socket(pid: u32, fd: u32, inode: u64) -> bool {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok().and_then(|t| t.to_str().and_then(parse_socket_link))
        == Some(inode)
}

/// Some process other than this one whose descriptors hold the socket with
/// `inode` (a scan of every `/proc/PID/fd`: for the rare case where the
/// process it was found in let go of it, as a server that forks its worker and
/// exits does).
#[must_use]
pub fn socket_holder(inode: u64) -> Option<u32> {
    other_holder(|_, _, link| parse_socket_link(link) == Some(inode))
}

/// Some process other than this one holding the BPF map with `id` open: a
/// descriptor `anon_inode:bpf-map` whose `/proc/PID/fdinfo/FD` names the id.
#[must_use]
pub fn bpf_map_holder(id: u32) -> Option<u32> {
    other_holder(|pid, fd, link| {
        link == "anon_inode:bpf-map"
            && fd.file_name().and_then(|n| n.to_str()).is_some_and(|fd| {
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                    .is_ok_and(|text| parse_fdinfo_map_id(&text) == Some(id))
            })
    })
}

/// The `map_id:` line of a BPF map's fdinfo (kernel/bpf/syscall.c,
/// `bpf_map_show_fdinfo`).
#[must_use]
pub fn parse_fdinfo_map_id(text: &str) -> Option<u32> {
    text.lines().find_map(|line| line.strip_prefix("map_id:")?.trim().parse().ok())
}

/// Some process other than this one with a descriptor for which `holds(pid,
/// fd path, link target)` is true: a scan of every `/proc/PID/fd`.
fn other_holder(holds: impl Fn(u32, &Path, &str) -> bool) -> Option<u32> {
    let me = std::process::id();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                let path = fd.path();
                fs::read_link(&path).ok().is_some_and(|t| t.to_str().is_some_and(|t| holds(pid, &path, t)))
            })
            .then_some(pid)
    })
}

fn read_error(pid: u32, path: PathBuf, source: io::Error) -> ProcError {
    if source.kind() == io::ErrorKind::NotFound {
        ProcError::NoSuchProcess { pid }
    } else if source.kind() == io::ErrorKind::PermissionDenied {
        ProcError::Denied { path }
    } else {
        ProcError::Read { path, source }
    }
}

/// `socket:[12345]` → 12345.
#[must_use]
pub fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The comm of a process, if it still exists.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// A process start time in clock ticks since boot (`/proc/PID/stat` field 22):
/// larger is newer.
#[must_use]
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, 22)
}

/// The parent's pid (`/proc/PID/stat` field 4).
#[must_use]
pub fn parent(pid: u32) -> Option<u32> {
    stat_field(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, 4).and_then(|p| u32::try_from(p).ok())
}

/// The children of `pid`'s main thread (`/proc/PID/task/PID/children`).
#[must_use]
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|text| text.split_whitespace().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

/// Numeric field `n` (1-based, as in proc(5)) of the text of a `/proc/PID/stat`,
/// from field 3 on.
#[must_use]
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    // The comm field may hold spaces and parentheses; fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

#[cfg(test)]
#[path = "proc_tests.rs"]
mod tests;
