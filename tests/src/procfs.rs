//! `/proc` helpers the server drivers share: process status and children, the sockets
//! on a port a process holds (TCP listening, UDP bound), kernel TCP counters, signals,
//! running a daemonizing command, probing a port, and bounded polling.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::netns::NetNs;

/// Fields of `/proc/PID/stat` the drivers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Start time after boot, in clock ticks.
    pub starttime: u64,
    /// Niceness, -20..19.
    pub nice: i32,
    /// Real-time priority, 0 under a normal policy.
    pub rt_priority: u32,
    /// Scheduling policy: 0 normal, 1 FIFO (`SCHED_*`).
    pub policy: u32,
}

/// Parses `/proc/PID/stat` (the comm may hold spaces and parentheses).
#[must_use]
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state(3) ppid(4) ... nice(19) ... starttime(22) ... rt_priority(40)
    // policy(41), numbered from pid = 1.
    let field = |n: usize| rest.get(n - 3).copied();
    let state = field(3)?.chars().next()?;
    let ppid = field(4)?.parse().ok()?;
    let nice = field(19)?.parse().ok()?;
    let starttime = field(22)?.parse().ok()?;
    let rt_priority = field(40)?.parse().ok()?;
    let policy = field(41)?.parse().ok()?;
    Some(Stat { comm, state, ppid, starttime, nice, rt_priority, policy })
}

/// The status of `pid`, `None` when it does not exist.
#[must_use]
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The status of each thread of `pid` (`/proc/PID/task/TID/stat`), sorted by name.
#[must_use]
pub fn threads(pid: u32) -> Vec<Stat> {
    let mut out: Vec<Stat> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?))
        .collect();
    out.sort_by(|a, b| a.comm.cmp(&b.comm));
    out
}

/// Whether `pid` exists, is not a zombie, and is called `comm`.
#[must_use]
pub fn is_running(pid: u32, comm: &str) -> bool {
    stat(pid).is_some_and(|s| s.comm == comm && !matches!(s.state, 'Z' | 'X'))
}

/// Running children of `ppid` called `comm`, with their start times.
///
/// # Errors
///
/// When `/proc` cannot be listed.
pub fn children(ppid: u32, comm: &str) -> anyhow::Result<Vec<(u32, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(s) = stat(pid)
            && s.ppid == ppid
            && s.comm == comm
            && !matches!(s.state, 'Z' | 'X')
        {
            found.push((pid, s.starttime));
        }
    }
    Ok(found)
}

/// Which sockets of a process [`held_sockets`] looks for: the `/proc/PID/net` files of
/// one protocol, and the state a socket must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sockets {
    /// The files to read, IPv4 then IPv6 (`tcp`, `tcp6`).
    pub files: [&'static str; 2],
    /// The wanted state (`st`, in hex), `None` for any. Reading stops at the first line
    /// in another state, so `Some` only for one the kernel lists before all others.
    pub state: Option<&'static str>,
}

/// TCP listeners (`0A`, `TCP_LISTEN`). `/proc/net/tcp` lists the listening hash before
/// the established one (`tcp_get_idx`, net/ipv4/tcp_ipv4.c), so reading stops at the
/// first other socket: a server under load has tens of thousands of `TIME_WAIT` lines
/// after them, slow to read.
pub const TCP_LISTENING: Sockets = Sockets { files: ["tcp", "tcp6"], state: Some("0A") };
/// UDP sockets bound to the port, connected or not (`07` and `01` lines are mixed).
pub const UDP_BOUND: Sockets = Sockets { files: ["udp", "udp6"], state: None };

/// Inodes of the sockets on local `port` in `wanted`'s state, from the lines of one of
/// its files (header first).
pub fn parse_sockets<S: AsRef<str>>(
    lines: impl IntoIterator<Item = S>,
    port: u16,
    wanted: Sockets,
) -> Vec<u64> {
    let mut found = Vec::new();
    for line in lines.into_iter().skip(1) {
        let fields: Vec<&str> = line.as_ref().split_whitespace().collect();
        if let Some(state) = wanted.state
            && fields.get(3) != Some(&state)
        {
            break;
        }
        let local_port = fields.get(1).and_then(|a| a.rsplit_once(':'));
        let inode = fields.get(9).and_then(|i| i.parse().ok());
        if let (Some((_, p)), Some(inode)) = (local_port, inode)
            && u16::from_str_radix(p, 16) == Ok(port)
        {
            found.push(inode);
        }
    }
    found
}

/// Inodes of the `wanted` sockets on `port` (in `pid`'s network namespace) that `pid`
/// holds a descriptor of; empty when `pid` is gone.
#[must_use]
pub fn held_sockets(pid: u32, port: u16, wanted: Sockets) -> BTreeSet<u64> {
    let mut on_port = BTreeSet::new();
    for file in wanted.files {
        if let Ok(f) = File::open(format!("/proc/{pid}/net/{file}")) {
            on_port.extend(parse_sockets(BufReader::new(f).lines().map_while(Result::ok), port, wanted));
        }
    }
    if on_port.is_empty() {
        return on_port;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return BTreeSet::new() };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|inode| on_port.contains(inode))
        .collect()
}

/// Inodes of the TCP sockets listening on `port` that `pid` holds ([`TCP_LISTENING`]).
#[must_use]
pub fn listening_inodes(pid: u32, port: u16) -> BTreeSet<u64> {
    held_sockets(pid, port, TCP_LISTENING)
}

/// A `TcpExt` counter (such as `TCPMigrateReqSuccess`) from `/proc/net/netstat` text:
/// a line of names followed by a line of values, both starting with `TcpExt:`.
#[must_use]
pub fn parse_tcp_ext(text: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// A `TcpExt` counter of `pid`'s network namespace; `None` when unreadable.
#[must_use]
pub fn tcp_ext(pid: u32, name: &str) -> Option<u64> {
    parse_tcp_ext(&std::fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?, name)
}

/// The pid in a pidfile, `None` while it is missing, empty or half-written.
#[must_use]
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `sig` to `pid`.
///
/// # Errors
///
/// When `pid` is not a valid pid or `kill` fails.
pub fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| anyhow!("bad pid {pid}"))?;
    kill_process(raw, sig).with_context(|| format!("kill({pid}, {sig:?})"))
}

/// SIGTERM to each of `pids` still running as `comm`, then SIGKILL to those left
/// after `grace`. The comm check keeps a recycled pid safe.
pub fn stop_all(pids: &[u32], comm: &str, grace: Duration) {
    let alive = |pids: &[u32]| -> Vec<u32> {
        let mut alive: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p, comm)).collect();
        alive.sort_unstable();
        alive.dedup();
        alive
    };
    for pid in alive(pids) {
        let _ = signal(pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !alive(pids).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in alive(pids) {
        let _ = signal(pid, Signal::KILL);
    }
}

/// Runs `cmd` (a server that daemonizes, so the command returns), stdout and stderr
/// appended to `log`; fails on a non-zero exit, or after `timeout`.
///
/// # Errors
///
/// When the log cannot be opened, the command cannot start, does not return in time,
/// or exits non-zero (the error holds the log's end).
pub fn run_daemonizing(mut cmd: Command, log: &Path, timeout: Duration) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let status = match wait_for(&format!("{cmd:?} to return"), timeout, || Ok(child.try_wait()?)) {
        Ok(status) => status,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if !status.success() {
        bail!("{cmd:?} exited with {status}; log {}: {}", log.display(), tail(log, 10));
    }
    Ok(())
}

/// The last `n` lines of a file (empty when it cannot be read), for error messages.
#[must_use]
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Connects once to `127.0.0.1:port` from inside `ns`.
///
/// # Errors
///
/// When the connection fails or takes over 2 s.
pub fn probe(ns: &NetNs, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    ns.spawn_in(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))
            .map(drop)
    })
    .join()
    .map_err(|_| anyhow!("the probe thread panicked"))?
    .with_context(|| format!("probing 127.0.0.1:{port} in netns {}", ns.name()))
}

/// Polls `check` every 10 ms until it gives `Some`, fails, or `timeout` passes.
///
/// # Errors
///
/// When `check` fails, or on timeout (naming `what`).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().with_context(|| format!("waiting for {what}"))? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
#[path = "procfs_tests.rs"]
mod tests;
