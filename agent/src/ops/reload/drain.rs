//! Waiting until the old generation has nothing left queued: its sockets'
//! accept queues (for UDP, receive queues), and the handshakes pending at the
//! promote.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::{
    netns,
    proc::{self, Process},
    sockdiag::{self, Handshake},
    sockets::{self, SocketError},
};

/// How often the old generation's queues are read while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// How the old generation drained after the promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub elapsed: Duration,
    /// False when `--drain-timeout` ran out first.
    pub drained: bool,
    /// Connections left in the old sockets' accept queues at the end.
    pub queued: u32,
    /// Handshakes pending at the promote and still pending at the end; `None`
    /// when they could not be read (no CAP_SYS_ADMIN to enter the namespace).
    pub handshakes: Option<usize>,
    /// The old process exited by itself meanwhile.
    pub old_exited: bool,
}

/// Waits until the old sockets' accept queues are empty and every handshake
/// pending right after the promote has completed or gone, or `timeout`.
///
/// After the promote the program sends no new connection to the old sockets,
/// but a request already in a SYN queue completes on the socket it started on,
/// and lands in that socket's accept queue. Which listener a request belongs to
/// is not reported (see [`sockdiag::pending_handshakes`]), so the set taken
/// right after the promote stands for the old generation's: it holds every
/// request of the old sockets still pending then (and perhaps a few of the new
/// one's, which complete just as fast). The handshakes are read before the
/// queues in each round, so one that completes in between is counted queued.
pub fn drain(old: &Process, inodes: &BTreeSet<u64>, ports: &[u16], timeout: Duration) -> Drain {
    let started = Instant::now();
    let read_handshakes = || -> Option<BTreeSet<Handshake>> {
        netns::run_in(old.pid, old.netns, || sockdiag::pending_handshakes(ports))
            .ok()?
            .ok()
            .map(|v| v.into_iter().collect())
    };
    let at_promote = read_handshakes();
    // Empty twice in a row: a datagram the program sent to an old UDP socket
    // just before the release (or a connection just before the promote) may
    // still be on its way into the queue at the first reading.
    let mut empty_before = false;
    loop {
        let handshakes = at_promote
            .as_ref()
            .and_then(|before| read_handshakes().map(|now| before.intersection(&now).count()));
        let queued = match Process::open(old.pid) {
            Ok(p) => queued(&p, inodes, ports),
            Err(_) => None,
        };
        let Some(queued) = queued else {
            return Drain {
                elapsed: started.elapsed(),
                drained: true,
                queued: 0,
                handshakes,
                old_exited: true,
            };
        };
        let empty = queued == 0 && handshakes.unwrap_or(0) == 0;
        let drained = empty && empty_before;
        empty_before = empty;
        if drained || started.elapsed() >= timeout {
            return Drain { elapsed: started.elapsed(), drained, queued, handshakes, old_exited: false };
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// The summed accept queues of the old sockets; `None` once the process is gone.
fn queued(old: &Process, inodes: &BTreeSet<u64>, ports: &[u16]) -> Option<u32> {
    match sockets::listening_sockets(old, ports) {
        Ok(listening) => Some(
            listening.iter().filter(|(_, l)| inodes.contains(&l.inode)).map(|(_, l)| l.accept_queue).sum(),
        ),
        Err(SocketError::NoListeners { .. }) => Some(0),
        Err(_) => proc::comm(old.pid).map(|_| 0),
    }
}
