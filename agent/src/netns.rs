//! Running a short piece of work inside another process's network namespace, on
//! a thread of its own (setns(2) changes only the calling thread).
use std::{fs::File, io, os::fd::AsFd as _};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Runs `f` in the network namespace of `pid` (whose namespace inode is
/// `netns`). Runs it on the calling thread when that is already our namespace.
/// Entering another namespace needs CAP_SYS_ADMIN; the error says so.
pub fn run_in<T: Send>(pid: u32, netns: u64, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    if crate::proc::netns_inode(std::process::id()).ok() == Some(netns) {
        return Ok(f());
    }
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace worker panicked"))?
    })
}
