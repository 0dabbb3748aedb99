//! Creating the test server's listening sockets: SO_REUSEADDR, SO_REUSEPORT (unless
//! disabled), IPV6_V6ONLY for IPv6, bind, listen; non-blocking so accept loops can poll.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

use super::ServerArgs;

/// Every listener `args` asks for: `--listeners` sockets per `--listen` address.
pub(super) fn bind_all(args: &ServerArgs) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners: Vec<TcpListener> = Vec::new();
    for addr in &args.listen {
        for i in 0..args.listeners {
            if !listeners.is_empty() && args.listen_gap_ms > 0 {
                // One listener after another, as a server whose threads each open
                // their own (HAProxy `shards`).
                std::thread::sleep(std::time::Duration::from_millis(args.listen_gap_ms));
            }
            let listener = bind_one(*addr, !args.no_reuseport, args.backlog)
                .with_context(|| format!("listener {i} on {addr}"))?;
            listeners.push(listener);
        }
    }
    Ok(listeners)
}

/// One non-blocking, close-on-exec listening socket.
fn bind_one(addr: SocketAddr, reuseport: bool, backlog: i32) -> anyhow::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .context("socket()")?;
    sockopt::set_socket_reuseaddr(&fd, true).context("setting SO_REUSEADDR")?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true).context("setting SO_REUSEPORT")?;
    }
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true).context("setting IPV6_V6ONLY")?;
    }
    rustix::net::bind(&fd, &addr).context("bind()")?;
    rustix::net::listen(&fd, backlog).context("listen()")?;
    Ok(TcpListener::from(fd))
}
