//! The `steer-udpserver` program: bound reuseport UDP sockets that answer every datagram
//! with `gen=<NAME> pid=<PID> <DATAGRAM>`, controlled over stdin; and [`UdpServer`],
//! the driver tests use to run it inside a network namespace.
//!
//! Protocol on stdout: one `ready pid=<PID> gen=<NAME>` line once every socket is bound,
//! then `ok <cmd>` per stdin command: `close` (close every socket, dropping what is
//! queued, as a process that exits does; the process stays up), `exit`. EOF on stdin
//! exits too, and so does SIGTERM (the kernel's default action).

use std::io::{BufRead as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use crate::netns::NetNs;
use crate::piped::Piped;

/// How long each socket's thread blocks in `recv` before it looks at the close flag.
const POLL: Duration = Duration::from_millis(10);

/// Command line of `steer-udpserver`; also what [`UdpServer::spawn`] passes to it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "steer-udpserver", about = "Reuseport UDP test server whose answers name its generation")]
pub struct UdpServerArgs {
    /// Address to bind, IPv4 or IPv6 (`127.0.0.1:5300`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Generation name put in every answer (`gen=<NAME>`).
    #[arg(long = "gen")]
    pub generation: String,
    /// Sockets bound to the address, all in the same reuseport group.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub sockets: u16,
}

impl UdpServerArgs {
    #[must_use]
    pub fn new(generation: &str, listen: SocketAddr) -> UdpServerArgs {
        UdpServerArgs { listen, generation: generation.to_owned(), sockets: 1 }
    }

    /// The command-line arguments that parse back into `self`.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--listen".to_owned(),
            self.listen.to_string(),
            "--gen".to_owned(),
            self.generation.clone(),
            "--sockets".to_owned(),
            self.sockets.to_string(),
        ]
    }
}

/// Runs the server until `exit` or EOF on stdin.
///
/// # Errors
///
/// When a socket cannot be bound or stdout is gone.
pub fn run(args: &UdpServerArgs) -> anyhow::Result<()> {
    ensure!(
        !args.generation.is_empty() && !args.generation.contains(char::is_whitespace),
        "--gen must be a non-empty word, got {:?}",
        args.generation
    );
    let pid = std::process::id();
    let prefix = format!("gen={} pid={pid} ", args.generation);
    let closing = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    for index in 0..args.sockets {
        let socket = bind_one(args.listen).with_context(|| format!("socket {index} on {}", args.listen))?;
        open.fetch_add(1, Ordering::SeqCst);
        let (prefix, closing, open) = (prefix.clone(), Arc::clone(&closing), Arc::clone(&open));
        std::thread::Builder::new()
            .name(format!("udp-{index}"))
            .spawn(move || answer_loop(&socket, &prefix, &closing, &open))
            .context("spawning a socket thread")?;
    }
    say(&format!("ready pid={pid} gen={}", args.generation))?;
    for line in std::io::stdin().lock().lines() {
        match line.context("reading stdin")?.trim() {
            "" => {}
            "close" => {
                closing.store(true, Ordering::SeqCst);
                while open.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                say("ok close")?;
            }
            "exit" => return say("ok exit"),
            other => say(&format!("err {other}: unknown command"))?,
        }
    }
    Ok(())
}

/// Answers datagrams until `closing`; then drops the socket and counts it closed.
fn answer_loop(socket: &UdpSocket, prefix: &str, closing: &AtomicBool, open: &AtomicUsize) {
    let mut buf = [0u8; 512];
    while !closing.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let mut answer = prefix.as_bytes().to_vec();
        answer.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&answer, from);
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// One close-on-exec reuseport UDP socket bound to `addr`, with a short receive timeout.
fn bind_one(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::DGRAM, SocketFlags::CLOEXEC, None)
        .context("socket()")?;
    sockopt::set_socket_reuseport(&fd, true).context("setting SO_REUSEPORT")?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true).context("setting IPV6_V6ONLY")?;
    }
    rustix::net::bind(&fd, &addr).context("bind()")?;
    let socket = UdpSocket::from(fd);
    socket.set_read_timeout(Some(POLL)).context("setting SO_RCVTIMEO")?;
    Ok(socket)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")
}

/// A running `steer-udpserver`, killed and reaped on drop.
#[derive(Debug)]
pub struct UdpServer {
    piped: Piped,
}

impl UdpServer {
    /// Starts the server in `ns` and waits (up to 10 s) until every socket is bound.
    ///
    /// # Errors
    ///
    /// When the binary is missing, fails to start, or is not ready in time.
    pub fn spawn(ns: &NetNs, args: &UdpServerArgs) -> anyhow::Result<UdpServer> {
        let what = format!("UDP server gen={}", args.generation);
        Ok(UdpServer { piped: Piped::spawn(ns, "steer-udpserver", &args.to_args(), what)? })
    }

    /// The server's pid (as it reported it; `ip netns exec` execs, so it is the child's).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.piped.pid()
    }

    /// Closes every socket (what is queued is dropped); the process stays up.
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s.
    pub fn close(&mut self) -> anyhow::Result<()> {
        self.piped.command("close")
    }
}

#[cfg(test)]
#[path = "udp_server_tests.rs"]
mod tests;
