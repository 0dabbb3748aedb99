//! Finding a process's listening sockets (TCP listeners, and bound UDP sockets
//! with SO_REUSEPORT) and taking verified duplicates of them with `pidfd_getfd`. A duplicate keeps the socket open, so callers must drop
//! every [`Candidate`] as soon as the map insert and attach are done.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
use steer_abi::{AF_INET, AF_INET6, GroupKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    netns,
    proc::{ProcError, Process},
    sockdiag::{self, DiagError, Listener},
};

/// Why a process's sockets cannot be steered.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Diag(#[from] DiagError),
    #[error(
        "process {pid} ({comm}) has no listening TCP socket or bound UDP socket{ports}; start the server first, or pass the pid of the process that holds the listeners"
    )]
    NoListeners { pid: u32, comm: String, ports: String },
    #[error(
        "process {pid} ({comm}) listens on {addr}{udp} (fd {fd}) without SO_REUSEPORT; enable it in the server (HAProxy: remove `noreuseport`; nginx: `listen ... reuseport`; unbound: `so-reuseport: yes`)",
        udp = if *udp { "/udp" } else { "" }
    )]
    NoReuseport { pid: u32, comm: String, addr: SocketAddr, fd: u32, udp: bool },
    #[error(
        "cannot duplicate the sockets of process {pid}: permission denied; run steer as root or with CAP_SYS_PTRACE"
    )]
    NoPtrace { pid: u32 },
    #[error("process {pid} exited while steer was reading its sockets; start it again and retry")]
    Vanished { pid: u32 },
    #[error(
        "process {pid} closed its listeners or exited while steer promoted it, and no other process holds them, so nothing was changed; promote the process that listens now"
    )]
    LeftDuringPromote { pid: u32 },
    #[error("{what} of fd {fd} in process {pid}")]
    Sys {
        what: &'static str,
        pid: u32,
        fd: u32,
        #[source]
        source: io::Error,
    },
}

/// A verified duplicate of one of a process's listening sockets.
#[derive(Debug)]
pub struct Candidate {
    /// Descriptor number in the owning process.
    pub fd: u32,
    pub inode: u64,
    pub addr: SocketAddr,
    pub key: GroupKey,
    pub cookie: u64,
    pub accept_queue: u32,
    /// Our duplicate; dropping it closes it.
    pub dup: OwnedFd,
}

/// Lists the process's listening TCP sockets and bound UDP sockets,
/// optionally only on `ports`.
/// Sockets on other ports are never touched.
pub fn listening_sockets(process: &Process, ports: &[u16]) -> Result<Vec<(u32, Listener)>, SocketError> {
    let fds = process.socket_fds()?;
    let listeners = if fds.len() <= DIRECT_MAX_SOCKETS {
        held_listeners(process, &fds)?
    } else {
        namespace_listeners(process)?
    };
    let mut out: Vec<(u32, Listener)> = listeners
        .into_iter()
        .filter(|l| ports.is_empty() || ports.contains(&l.addr.port()))
        .filter_map(|l| fds.get(&l.inode).map(|fd| (*fd, l)))
        .collect();
    out.sort_by_key(|(fd, _)| *fd);
    if out.is_empty() {
        return Err(SocketError::NoListeners {
            pid: process.pid,
            comm: process.comm.clone(),
            ports: ports_phrase(ports),
        });
    }
    Ok(out)
}

/// " on port 80" / " on ports 80, 443" / "".
#[must_use]
pub fn ports_phrase(ports: &[u16]) -> String {
    match ports {
        [] => String::new(),
        [p] => format!(" on port {p}"),
        _ => format!(" on ports {}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// A duplicate of one socket of `key`'s protocol on `addr` in `process`'s network namespace that
/// `process` does not hold (not among `own` inodes), with the pid holding it:
/// another member of the group. Reads the namespace's listeners, then the fd
/// tables of the processes in it, so it is for a group's first promote in a
/// state only.
#[must_use]
pub fn other_member(
    process: &Process,
    key: &GroupKey,
    addr: SocketAddr,
    own: &[u64],
) -> Option<(u32, OwnedFd)> {
    let inodes: Vec<u64> = namespace_listeners(process)
        .ok()?
        .into_iter()
        .filter(|l| l.protocol == key.protocol && l.addr == addr && !own.contains(&l.inode))
        .map(|l| l.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let pids = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids.filter(|p| *p != process.pid) {
        let Ok(other) = Process::open(pid) else { continue };
        if other.netns != process.netns {
            continue;
        }
        let Ok(fds) = other.socket_fds() else { continue };
        let Some(fd) = inodes.iter().find_map(|inode| fds.get(inode)) else { continue };
        let Ok(pidfd) = open_pidfd(pid) else { continue };
        if let Ok(Ok(dup)) = getfd(&pidfd, pid, *fd) {
            return Some((pid, dup));
        }
    }
    None
}

/// Up to this many sockets, a process's listeners are found by looking at each
/// of its sockets directly (a fresh server generation holds a handful); beyond
/// it, sock_diag lists only the namespace's listeners, so a draining process's
/// thousands of connections are never touched.
const DIRECT_MAX_SOCKETS: usize = 64;

/// The process's listening TCP sockets and bound, unconnected UDP sockets
/// with SO_REUSEPORT, found by duplicating each of its sockets and asking it:
/// no namespace to enter and no netlink dump, which keeps the daemon's
/// promote fast. (A UDP socket without SO_REUSEPORT is a client's, such as
/// one a server sends logs from, not a group member: it is left out.)
fn held_listeners(process: &Process, fds: &HashMap<u64, u32>) -> Result<Vec<Listener>, SocketError> {
    let pid = process.pid;
    let pidfd = open_pidfd(pid)?;
    let mut out = Vec::new();
    for (&inode, &fd) in fds {
        let Ok(dup) = getfd(&pidfd, pid, fd)? else {
            continue; // closed since /proc was read
        };
        let Some(protocol) = steerable(dup.as_fd()) else { continue };
        let (Ok(addr), Ok(cookie)) = (local_addr(dup.as_fd()), rustix::net::sockopt::socket_cookie(&dup))
        else {
            continue;
        };
        if protocol == IPPROTO_UDP && addr.port() == 0 {
            continue;
        }
        let accept_queue = queued(&dup, protocol).unwrap_or(0);
        out.push(Listener {
            protocol,
            addr,
            inode,
            uid: None,
            accept_queue,
            backlog: None,
            cookie: Some(cookie),
        });
    }
    Ok(out)
}

/// Listeners of the process's network namespace: sock_diag inside it, or its
/// `/proc/PID/net/{tcp,udp}{,6}` when the namespace cannot be entered.
pub fn namespace_listeners(process: &Process) -> Result<Vec<Listener>, SocketError> {
    match netns::run_in(process.pid, process.netns, sockdiag::listeners) {
        Ok(result) => Ok(result?),
        Err(_) => Ok(sockdiag::listeners_from_proc(process.pid)?),
    }
}

/// Duplicates and verifies the given sockets of the process. A UDP socket
/// without SO_REUSEPORT is left out (a client's socket, not a group member),
/// unless nothing else is left.
pub fn duplicate(process: &Process, sockets: &[(u32, Listener)]) -> Result<Vec<Candidate>, SocketError> {
    let pid = process.pid;
    let pidfd = open_pidfd(pid)?;
    let mut out = Vec::with_capacity(sockets.len());
    let mut lone_udp = None;
    for (fd, listener) in sockets {
        let fd = *fd;
        let sys = |what| move |source| SocketError::Sys { what, pid, fd, source };
        let dup = getfd(&pidfd, pid, fd)?.map_err(|e| sys("pidfd_getfd")(e.into()))?;
        if steerable(dup.as_fd()) != Some(listener.protocol) {
            continue; // stopped listening (or connected) since the dump
        }
        if !rustix::net::sockopt::socket_reuseport(&dup).map_err(|e| sys("SO_REUSEPORT")(e.into()))? {
            let error = SocketError::NoReuseport {
                pid,
                comm: process.comm.clone(),
                addr: listener.addr,
                fd,
                udp: listener.protocol == IPPROTO_UDP,
            };
            if listener.protocol == IPPROTO_UDP {
                lone_udp.get_or_insert(error);
                continue;
            }
            return Err(error);
        }
        let cookie = rustix::net::sockopt::socket_cookie(&dup).map_err(|e| sys("SO_COOKIE")(e.into()))?;
        if listener.cookie.is_some_and(|c| c != cookie) {
            continue; // the fd number was reused for another socket meanwhile
        }
        let addr = local_addr(dup.as_fd()).map_err(sys("getsockname"))?;
        let ifindex = bound_ifindex(dup.as_fd()).map_err(sys("SO_BINDTOIFINDEX"))?;
        out.push(Candidate {
            fd,
            inode: listener.inode,
            addr,
            key: group_key(addr, ifindex, listener.protocol),
            cookie,
            accept_queue: listener.accept_queue,
            dup,
        });
    }
    match lone_udp {
        Some(error) if out.is_empty() => Err(error),
        _ => Ok(out),
    }
}

/// The protocol of a socket steer can steer: a listening TCP socket, or an
/// unconnected UDP socket (a connected one is no longer a group's receiver).
fn steerable(fd: BorrowedFd<'_>) -> Option<u16> {
    let protocol = getsockopt_u32(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    if protocol == libc::IPPROTO_TCP as u32 {
        return rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false).then_some(IPPROTO_TCP);
    }
    if protocol == libc::IPPROTO_UDP as u32 {
        return rustix::net::getpeername(fd).is_err().then_some(IPPROTO_UDP);
    }
    None
}

/// Connections in a TCP listener's accept queue, or bytes in a UDP socket's
/// receive queue.
pub fn queued(fd: impl AsFd, protocol: u16) -> io::Result<u32> {
    if protocol == IPPROTO_UDP { receive_queue(fd) } else { accept_queue(fd) }
}

/// Bytes waiting in a socket's receive queue (`SK_MEMINFO_RMEM_ALLOC` of
/// `SO_MEMINFO`, net/core/sock.c `sk_get_meminfo`: every queued datagram, not
/// only the first as `FIONREAD` gives for UDP).
pub fn receive_queue(fd: impl AsFd) -> io::Result<u32> {
    let mut info = [0_u32; 9];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len describe a valid buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(info[0]) }
}

/// For a promote: refuses whose process let go of one of these sockets (closed it,
/// or exited) since they were duplicated, when no other process holds it
/// either: steer's duplicate alone keeps such a socket open, and listening,
/// though nobody accepts from it any more. (A server that forks its worker and
/// exits, HAProxy `-D`, leaves its sockets to the worker: those are promoted.)
/// Checked after the slots are filled and before the configuration names
/// them, so that a process leaving before this point changes nothing; one
/// leaving after it is a promoted generation that dies (its slots empty, the
/// previous one serves).
pub fn still_held(process: &Process, sockets: &[Candidate]) -> Result<(), SocketError> {
    let held = |c: &Candidate| {
        crate::proc::holds_socket(process.pid, c.fd, c.inode) || crate::proc::socket_holder(c.inode).is_some()
    };
    if sockets.iter().all(held) { Ok(()) } else { Err(SocketError::LeftDuringPromote { pid: process.pid }) }
}

/// A duplicate of descriptor `fd` of process `pid` (through its `pidfd`). The outer error
/// is one a user can act on (no ptrace rights, the process exited); the inner one any
/// other failure, such as a descriptor closed meanwhile, for the caller to judge.
fn getfd(pidfd: &OwnedFd, pid: u32, fd: u32) -> Result<Result<OwnedFd, rustix::io::Errno>, SocketError> {
    match pidfd_getfd(pidfd, fd as i32, PidfdGetfdFlags::empty()) {
        Err(e) if e == rustix::io::Errno::PERM || e == rustix::io::Errno::ACCESS => {
            Err(SocketError::NoPtrace { pid })
        }
        Err(e) if e == rustix::io::Errno::SRCH => Err(SocketError::Vanished { pid }),
        other => Ok(other),
    }
}

/// A duplicate of the socket a slot record names, if that process still holds
/// it under that descriptor (checked by cookie). Needs CAP_SYS_PTRACE.
#[must_use]
pub fn reopen(meta: &steer_abi::SlotMeta) -> Option<OwnedFd> {
    let pidfd = open_pidfd(meta.pid).ok()?;
    let fd = i32::try_from(meta.fd).ok()?;
    let dup = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).ok()?;
    (rustix::net::sockopt::socket_cookie(&dup).ok()? == meta.cookie).then_some(dup)
}

/// A pidfd for `pid`, with the errors a user can act on.
pub fn open_pidfd(pid: u32) -> Result<OwnedFd, SocketError> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let Some(p) = raw else {
        return Err(SocketError::Vanished { pid });
    };
    pidfd_open(p, PidfdFlags::empty()).map_err(|e| match e {
        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => SocketError::NoPtrace { pid },
        _ => SocketError::Vanished { pid },
    })
}

/// The group key the program computes for a `protocol` socket bound to `addr`
/// on `ifindex` (the program reads `bpf_sock.src_ip4`/`src_ip6`, which hold
/// the address in network byte order, as native-endian words).
#[must_use]
pub fn group_key(addr: SocketAddr, ifindex: u32, protocol: u16) -> GroupKey {
    let (family, words) = match addr.ip() {
        IpAddr::V4(ip) => (AF_INET, [u32::from_ne_bytes(ip.octets()), 0, 0, 0]),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (AF_INET6, [w(0), w(4), w(8), w(12)])
        }
    };
    GroupKey { family, protocol, port: addr.port(), pad: 0, ifindex, addr: words }
}

/// The address a group key stands for.
#[must_use]
pub fn key_addr(key: &GroupKey) -> SocketAddr {
    let ip = if key.family == AF_INET6 {
        let mut o = [0_u8; 16];
        for (i, w) in key.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::from(key.addr[0].to_ne_bytes()))
    };
    SocketAddr::new(ip, key.port)
}

/// Human form of a group: `127.0.0.1:8080`, with `%ifindex` when bound to a
/// device, and `/udp` for a UDP group.
#[must_use]
pub fn key_label(key: &GroupKey) -> String {
    let addr = key_addr(key);
    let udp = if key.protocol == IPPROTO_UDP { "/udp" } else { "" };
    if key.ifindex == 0 { format!("{addr}{udp}") } else { format!("{addr}%{}{udp}", key.ifindex) }
}

/// `"tcp"` or `"udp"`.
#[must_use]
pub fn protocol_name(protocol: u16) -> &'static str {
    if protocol == IPPROTO_UDP { "udp" } else { "tcp" }
}

fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any address and len says so.
    let ret = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
            Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const storage).cast()) };
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    }
}

fn bound_ifindex(fd: BorrowedFd<'_>) -> io::Result<u32> {
    const SO_BINDTOIFINDEX: libc::c_int = 62;
    getsockopt_u32(fd, libc::SOL_SOCKET, SO_BINDTOIFINDEX)
}

/// The accept-queue length of a listening socket (`tcpi_unacked` of TCP_INFO
/// is `sk_ack_backlog` for a listener: net/ipv4/tcp.c, `tcp_get_info`).
pub fn accept_queue(fd: impl AsFd) -> io::Result<u32> {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len describe a valid buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(info.tcpi_unacked) }
}

fn getsockopt_u32(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a valid int buffer.
    let ret = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut value).cast(), &raw mut len) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(value.unsigned_abs()) }
}

#[cfg(test)]
#[path = "sockets_tests.rs"]
mod tests;
