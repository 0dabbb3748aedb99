//! Listening TCP sockets and bound UDP sockets of a network namespace, from
//! NETLINK_SOCK_DIAG (inet_diag, filtered to TCP_LISTEN so a busy server's
//! connections are not read at all, and for UDP to the unconnected sockets,
//! which the kernel reports as TCP_CLOSE), or from `/proc/PID/net/{tcp,udp}{,6}`
//! where the namespace cannot be entered.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Errors listing listeners.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag netlink call failed")]
    Netlink(#[source] io::Error),
    #[error("sock_diag answered with a malformed message: {0}")]
    Malformed(&'static str),
    #[error("cannot read {path}")]
    Proc {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One listening TCP socket, or one bound, unconnected UDP socket (which
/// receives the datagrams of its group, as a listener does its connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u16,
    pub addr: SocketAddr,
    pub inode: u64,
    /// Owner uid, when known (sock_diag and /proc).
    pub uid: Option<u32>,
    /// Connections waiting in the accept queue; for UDP, the bytes waiting in
    /// the receive queue.
    pub accept_queue: u32,
    /// The listen() backlog, when known (sock_diag only).
    pub backlog: Option<u32>,
    /// `SO_COOKIE`, when known (sock_diag only).
    pub cookie: Option<u64>,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_LISTEN: u8 = 10;
/// An unconnected UDP socket's state in inet_diag and `/proc/net/udp`.
const TCP_CLOSE: u8 = 7;
const TCP_SYN_RECV: u8 = 3;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// Lists the listening TCP sockets and the bound, unconnected UDP sockets
/// (IPv4 and IPv6) of the calling thread's network namespace.
pub fn listeners() -> Result<Vec<Listener>, DiagError> {
    let sock = netlink_socket()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        send_request(&sock, family, libc::IPPROTO_TCP as u8, 1 << TCP_LISTEN)?;
        read_dump(&sock, &mut out)?;
        send_request(&sock, family, libc::IPPROTO_UDP as u8, 1 << TCP_CLOSE)?;
        read_dump(&sock, &mut out)?;
    }
    Ok(out)
}

fn netlink_socket() -> Result<OwnedFd, DiagError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(DiagError::Netlink(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A handshake in progress: a request socket waiting for the client's ACK
/// (the listener's SYN queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handshake {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Pending handshakes of the calling thread's network namespace whose local
/// port is one of `ports`.
///
/// The kernel keeps no SYN-queue length that userspace can read per listener
/// (`inet_csk_reqsk_queue_len` is reported nowhere: `tcp_get_info` gives a
/// listener's accept queue only). Each request socket, though, sits in the
/// established hash as `TCP_NEW_SYN_RECV`, and a dump that asks for
/// `TCP_SYN_RECV` returns them (net/ipv4/inet_diag.c, `inet_diag_dump_icsk`
/// adds `TCPF_NEW_SYN_RECV`; `inet_req_diag_fill` reports them as
/// `TCP_SYN_RECV`). What the dump does not say is which listener a request
/// belongs to: the two generations of a group share its address and port.
pub fn pending_handshakes(ports: &[u16]) -> Result<Vec<Handshake>, DiagError> {
    let sock = netlink_socket()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        send_request(&sock, family, libc::IPPROTO_TCP as u8, 1 << TCP_SYN_RECV)?;
        read_each(&sock, |body| {
            out.extend(parse_handshake(body)?.filter(|h| ports.contains(&h.local.port())));
            Ok(())
        })?;
    }
    Ok(out)
}

/// `struct inet_diag_msg` → handshake (None for a socket in another state).
pub fn parse_handshake(b: &[u8]) -> Result<Option<Handshake>, DiagError> {
    if b.len() < DIAG_MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag_msg"));
    }
    if b[1] != TCP_SYN_RECV {
        return Ok(None);
    }
    let (Some(local_ip), Some(remote_ip)) = (diag_ip(b[0], &b[8..24]), diag_ip(b[0], &b[24..40])) else {
        return Ok(None);
    };
    Ok(Some(Handshake {
        local: SocketAddr::new(local_ip, u16::from_be_bytes([b[4], b[5]])),
        remote: SocketAddr::new(remote_ip, u16::from_be_bytes([b[6], b[7]])),
    }))
}

/// An address of `inet_diag_sockid` (16 bytes; IPv4 in the first 4).
fn diag_ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

fn send_request(sock: &OwnedFd, family: u8, protocol: u8, states: u32) -> Result<(), DiagError> {
    let mut req = [0_u8; NLMSG_HDR + 56];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1_u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, id.
    req[16] = family;
    req[17] = protocol;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: req is a valid buffer of req.len() bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(DiagError::Netlink(io::Error::last_os_error()));
    }
    Ok(())
}

fn read_dump(sock: &OwnedFd, out: &mut Vec<Listener>) -> Result<(), DiagError> {
    read_each(sock, |body| {
        if let Some(listener) = parse_msg(body)? {
            out.push(listener);
        }
        Ok(())
    })
}

/// Reads a dump to its end, handing each `inet_diag_msg` to `each`.
fn read_each(sock: &OwnedFd, mut each: impl FnMut(&[u8]) -> Result<(), DiagError>) -> Result<(), DiagError> {
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(DiagError::Netlink(err));
        }
        let n = usize::try_from(n).map_err(|_| DiagError::Malformed("negative length"))?;
        if walk_dump(&buf[..n], &mut each)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of a dump into `out`; true once `NLMSG_DONE` is seen.
pub fn parse_dump(buf: &[u8], out: &mut Vec<Listener>) -> Result<bool, DiagError> {
    walk_dump(buf, &mut |body| {
        if let Some(listener) = parse_msg(body)? {
            out.push(listener);
        }
        Ok(())
    })
}

/// Walks one datagram of a dump, handing each `inet_diag_msg` to `each`; true
/// once `NLMSG_DONE` is seen.
fn walk_dump(
    mut buf: &[u8],
    each: &mut impl FnMut(&[u8]) -> Result<(), DiagError>,
) -> Result<bool, DiagError> {
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > buf.len() {
            return Err(DiagError::Malformed("bad nlmsg length"));
        }
        let body = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(DiagError::Malformed("short error message"))?;
                if code != 0 {
                    // A negative errno (include/uapi/linux/netlink.h, struct nlmsgerr).
                    let errno = code
                        .checked_neg()
                        .filter(|e| *e > 0)
                        .ok_or(DiagError::Malformed("bad error code"))?;
                    return Err(DiagError::Netlink(io::Error::from_raw_os_error(errno)));
                }
            }
            SOCK_DIAG_BY_FAMILY => each(body)?,
            _ => {}
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(false)
}

/// `struct inet_diag_msg` → listener: a TCP socket in TCP_LISTEN, or a UDP
/// socket in TCP_CLOSE (only UDP dumps ask for that state) bound to a port;
/// None for any other.
fn parse_msg(b: &[u8]) -> Result<Option<Listener>, DiagError> {
    if b.len() < DIAG_MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag_msg"));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let family = b[0];
    let protocol = match b[1] {
        TCP_LISTEN => libc::IPPROTO_TCP as u16,
        TCP_CLOSE => libc::IPPROTO_UDP as u16,
        _ => return Ok(None),
    };
    // id: sport (be16) at 4, dport at 6, src at 8..24, dst at 24..40, if at 40, cookie at 44..52.
    let port = u16::from_be_bytes([b[4], b[5]]);
    if port == 0 {
        return Ok(None);
    }
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(b[8], b[9], b[10], b[11])),
        libc::AF_INET6 => {
            let octets: [u8; 16] = b[8..24].try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Ok(None),
    };
    let cookie = u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32);
    Ok(Some(Listener {
        protocol,
        addr: SocketAddr::new(ip, port),
        accept_queue: u32_at(56),
        backlog: Some(u32_at(60)),
        uid: Some(u32_at(64)),
        inode: u64::from(u32_at(68)),
        cookie: Some(cookie),
    }))
}

/// Listening sockets from `/proc/PID/net/tcp` and `tcp6`, and bound UDP
/// sockets from `udp` and `udp6` (the PID's namespace).
pub fn listeners_from_proc(pid: u32) -> Result<Vec<Listener>, DiagError> {
    let mut out = Vec::new();
    for file in ["udp", "udp6"] {
        // Not ordered by state: every line is read (a host has few UDP sockets).
        out.extend(proc_lines(pid, file)?.filter_map(|l| parse_proc_udp_line(&l)));
    }
    for file in ["tcp", "tcp6"] {
        // The kernel lists listening sockets first (net/ipv4/tcp_ipv4.c,
        // `tcp_seq_start`: the listening hash, then the established one), so
        // reading stops at the first other socket and a busy server's
        // connections are neither generated nor parsed.
        out.extend(proc_lines(pid, file)?.map_while(|l| parse_proc_line(&l)));
    }
    Ok(out)
}

/// The lines of `/proc/PID/net/FILE` after its header, read as they are used.
fn proc_lines(pid: u32, file: &str) -> Result<impl Iterator<Item = String>, DiagError> {
    let path = format!("/proc/{pid}/net/{file}");
    let file = std::fs::File::open(&path).map_err(|source| DiagError::Proc { path, source })?;
    Ok(std::io::BufRead::lines(std::io::BufReader::new(file)).skip(1).map_while(Result::ok))
}

/// One line of `/proc/net/tcp{,6}` → listener (None unless state is LISTEN).
#[must_use]
pub fn parse_proc_line(line: &str) -> Option<Listener> {
    parse_proc_entry(line, libc::IPPROTO_TCP as u16, TCP_LISTEN)
}

/// One line of `/proc/net/udp{,6}` → bound UDP socket (None unless it is
/// unconnected, state 07, and bound to a port).
#[must_use]
pub fn parse_proc_udp_line(line: &str) -> Option<Listener> {
    parse_proc_entry(line, libc::IPPROTO_UDP as u16, TCP_CLOSE).filter(|l| l.addr.port() != 0)
}

/// The `/proc/net/{tcp,udp}{,6}` line format (the two are alike up to the inode).
fn parse_proc_entry(line: &str, protocol: u16, state: u8) -> Option<Listener> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = f.next()?;
    let _remote = f.next()?;
    if u8::from_str_radix(f.next()?, 16).ok()? != state {
        return None;
    }
    let (_tx, rx) = f.next()?.split_once(':')?;
    let _timer = f.next()?;
    let _retr = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    let (addr_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host byte order.
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr_hex.get(i * 8..i * 8 + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut o = [0_u8; 16];
            for i in 0..4 {
                o[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(Listener {
        protocol,
        addr: SocketAddr::new(ip, port),
        inode,
        uid: Some(uid),
        accept_queue: u32::from_str_radix(rx, 16).ok()?,
        backlog: None,
        cookie: None,
    })
}

#[cfg(test)]
#[path = "sockdiag_tests.rs"]
mod tests;
