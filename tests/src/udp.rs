//! UDP for the tests: [`Flow`], a client holding one exchange of datagrams from ONE
//! source port, each answered by a [`crate::udp_server`] generation that names itself.
//! (The bound UDP sockets a process holds: [`crate::procfs::held_sockets`].)

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::netns::NetNs;

/// How long [`Flow::ask`] waits for an answer before it counts the datagram as lost.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// The generation in an answer `gen=<NAME> pid=<PID> <SEQ>` to datagram `seq`; `None`
/// for an answer to another datagram or a malformed one.
#[must_use]
pub fn parse_answer(answer: &str, seq: u64) -> Option<String> {
    let mut words = answer.split_whitespace();
    let generation = words.next()?.strip_prefix("gen=")?;
    words.next()?.strip_prefix("pid=")?;
    (words.next()?.parse::<u64>().ok()? == seq).then(|| generation.to_owned())
}

/// One flow: a UDP socket of the test's namespace, bound to one source port and
/// connected to the server, so every datagram carries the same 4-tuple.
#[derive(Debug)]
pub struct Flow {
    socket: UdpSocket,
    seq: u64,
}

impl Flow {
    /// Opens a flow to `target` from inside `ns` (a fresh source port).
    ///
    /// # Errors
    ///
    /// When the socket cannot be created, bound or connected there.
    pub fn open(ns: &NetNs, target: SocketAddr) -> anyhow::Result<Flow> {
        let socket = ns
            .spawn_in(move || {
                let local: SocketAddr =
                    if target.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { "[::1]:0".parse()? };
                let socket = UdpSocket::bind(local).context("binding a client UDP socket")?;
                socket.connect(target).with_context(|| format!("connecting to {target}"))?;
                socket.set_read_timeout(Some(ANSWER_TIMEOUT)).context("setting SO_RCVTIMEO")?;
                Ok(socket)
            })
            .join()
            .map_err(|_| anyhow!("the flow thread panicked"))??;
        Ok(Flow { socket, seq: 0 })
    }

    /// The flow's source port.
    ///
    /// # Errors
    ///
    /// When `getsockname` fails.
    pub fn source_port(&self) -> anyhow::Result<u16> {
        Ok(self.socket.local_addr().context("getsockname")?.port())
    }

    /// Sends the next datagram and returns the generation that answered it, `None` when
    /// no answer came within [`ANSWER_TIMEOUT`] (answers to earlier datagrams are skipped).
    ///
    /// # Errors
    ///
    /// When sending or receiving fails other than by the timeout.
    pub fn ask(&mut self) -> anyhow::Result<Option<String>> {
        self.seq += 1;
        let seq = self.seq;
        self.socket.send(seq.to_string().as_bytes()).context("sending a datagram")?;
        let mut buf = [0u8; 256];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    if let Some(generation) = parse_answer(&String::from_utf8_lossy(&buf[..n]), seq) {
                        return Ok(Some(generation));
                    }
                }
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Ok(None);
                }
                // An ICMP port unreachable from a moment with no socket bound: lost.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
                Err(e) => return Err(e).context("receiving an answer"),
            }
        }
    }

    /// Keeps asking every `every` in a background thread until [`Exchange::stop`].
    #[must_use]
    pub fn exchange(self, every: Duration) -> Exchange {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let mut flow = self;
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                answers.push(flow.ask()?);
                std::thread::sleep(every);
            }
            Ok((flow, answers))
        });
        Exchange { stop, thread }
    }
}

/// A [`Flow`] asking in the background; [`Exchange::stop`] gives the flow back with every
/// answer in order (`None` for a datagram nobody answered).
#[derive(Debug)]
pub struct Exchange {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<(Flow, Vec<Option<String>>)>>,
}

impl Exchange {
    /// Stops asking; returns the flow (to go on from the same source port) and the answers.
    ///
    /// # Errors
    ///
    /// When a datagram could not be sent or received.
    pub fn stop(self) -> anyhow::Result<(Flow, Vec<Option<String>>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow!("the exchange thread panicked"))?
    }
}

#[cfg(test)]
#[path = "udp_tests.rs"]
mod tests;
