//! The polling source, for when no tracepoint can be loaded: sock_diag per
//! watched namespace every `--poll-interval`, compared with what it saw before.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{Event, Filter, monotonic_ns, source::EventSource, world::candidates};
use crate::{proc::Process, sockets};

/// The polling source: it lists the listeners of each watched namespace with
/// sock_diag every interval and reports the ones it has not seen, with the
/// processes that hold them.
#[derive(Debug)]
pub struct Poller {
    filter: Filter,
    interval: Duration,
    next: Instant,
    /// Listener inodes seen, per network namespace.
    known: HashMap<u64, HashSet<u64>>,
    /// Listener inodes found new but held by no candidate: looked at again once.
    pending: HashMap<u64, HashSet<u64>>,
    primed: bool,
    /// Only sockets of this protocol (the UDP poller beside a watcher).
    protocol: Option<u16>,
}

impl Poller {
    /// A poller that has recorded what listens now (adoption handles that).
    #[must_use]
    pub fn new(filter: Filter, interval: Duration) -> Self {
        Self::of(filter, interval, None)
    }

    /// A poller of UDP sockets only, for beside a tracepoint watcher: the
    /// kernel has no tracepoint where a UDP socket binds (see docs/udp.md).
    #[must_use]
    pub fn udp(filter: Filter, interval: Duration) -> Self {
        Self::of(filter, interval, Some(steer_abi::IPPROTO_UDP))
    }

    fn of(filter: Filter, interval: Duration, protocol: Option<u16>) -> Self {
        let mut poller = Self {
            filter,
            interval,
            next: Instant::now() + interval,
            known: HashMap::new(),
            pending: HashMap::new(),
            primed: false,
            protocol,
        };
        poller.poll();
        poller
    }

    /// Polls if its interval has passed; the events found go to `out`.
    pub fn poll_if_due(&mut self, out: &mut Vec<Event>) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        let ktime_ns = monotonic_ns();
        out.extend(self.poll().into_iter().map(|(pid, port)| Event::Polled { pid, port, ktime_ns }));
    }

    /// How long until the next poll is due.
    #[must_use]
    pub fn until_due(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// New listeners of matching processes since the last call, as (pid, port).
    /// The first call only records what exists.
    fn poll(&mut self) -> Vec<(u32, u16)> {
        let filter = &self.filter;
        let mut by_ns: HashMap<u64, Vec<Process>> = HashMap::new();
        for p in candidates(filter) {
            by_ns.entry(p.netns).or_default().push(p);
        }
        let mut found = Vec::new();
        let mut known = HashMap::new();
        let mut pending = HashMap::new();
        for (netns, processes) in by_ns {
            let Ok(mut listeners) = sockets::namespace_listeners(&processes[0]) else {
                // Unreadable this time (its first process left, say): what was seen stays seen.
                if let Some(seen) = self.known.remove(&netns) {
                    known.insert(netns, seen);
                }
                continue;
            };
            if let Some(protocol) = self.protocol {
                listeners.retain(|l| l.protocol == protocol);
            }
            let seen = self.known.get(&netns);
            let fresh: Vec<_> = listeners
                .iter()
                .filter(|l| filter.port_matches(l.addr.port()))
                .filter(|l| self.primed && !seen.is_some_and(|s| s.contains(&l.inode)))
                .collect();
            let mut held = HashSet::new();
            if !fresh.is_empty() {
                for p in &processes {
                    let Ok(fds) = p.socket_fds() else { continue };
                    for l in fresh.iter().filter(|l| fds.contains_key(&l.inode)) {
                        found.push((p.pid, l.addr.port()));
                        held.insert(l.inode);
                    }
                }
            }
            // A listener of a process that started after `candidates` read /proc
            // is held by none of `processes` yet: it is looked at once more on the
            // next poll before it counts as seen (someone else's, then).
            let was_pending = self.pending.get(&netns);
            let retry: HashSet<u64> = fresh
                .iter()
                .map(|l| l.inode)
                .filter(|i| !held.contains(i) && !was_pending.is_some_and(|p| p.contains(i)))
                .collect();
            known.insert(netns, listeners.iter().map(|l| l.inode).filter(|i| !retry.contains(i)).collect());
            pending.insert(netns, retry);
        }
        self.pending = pending;
        self.known = known;
        self.primed = true;
        found.sort_unstable();
        found.dedup();
        found
    }
}

impl EventSource for Poller {
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>) {
        let now = Instant::now();
        std::thread::sleep((now + timeout).min(self.next).saturating_duration_since(now));
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        let ktime_ns = monotonic_ns();
        out.extend(self.poll().into_iter().map(|(pid, port)| Event::Polled { pid, port, ktime_ns }));
    }

    fn is_polling(&self) -> bool {
        true
    }
}
