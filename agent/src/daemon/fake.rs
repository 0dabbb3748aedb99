//! A scripted [`World`] for the daemon's unit tests: processes with a
//! namespace, a name, a start time, a parent and listeners, nothing read from
//! the machine.
use std::collections::BTreeMap;

use super::world::{ListenerSet, ProcInfo, World};

/// A process of the scripted world.
#[derive(Debug, Clone)]
pub struct P {
    pub netns: u64,
    pub comm: &'static str,
    pub matches: bool,
    pub start: u64,
    pub parent: u32,
    pub listeners: ListenerSet,
}

/// `comm` in `netns`, started at `start`, listening on `ports` (inode = port * 100 + pid).
pub fn p(netns: u64, comm: &'static str, start: u64, pid: u32, ports: &[u16]) -> (u32, P) {
    let listeners = ports.iter().map(|port| (*port, u64::from(*port) * 100 + u64::from(pid))).collect();
    (pid, P { netns, comm, matches: true, start, parent: 1, listeners })
}

#[derive(Debug, Default, Clone)]
pub struct Fake {
    pub procs: BTreeMap<u32, P>,
}

impl Fake {
    pub fn with(procs: impl IntoIterator<Item = (u32, P)>) -> Self {
        Self { procs: procs.into_iter().collect() }
    }
}

impl World for Fake {
    fn process(&self, pid: u32) -> Option<ProcInfo> {
        let p = self.procs.get(&pid)?;
        Some(ProcInfo { pid, netns: p.netns, comm: p.comm.to_owned(), matches: p.matches })
    }
    fn start_time(&self, pid: u32) -> Option<u64> {
        self.procs.get(&pid).map(|p| p.start)
    }
    fn parent(&self, pid: u32) -> Option<u32> {
        self.procs.get(&pid).map(|p| p.parent)
    }
    fn children(&self, pid: u32) -> Vec<u32> {
        self.procs.iter().filter(|(_, p)| p.parent == pid).map(|(c, _)| *c).collect()
    }
    fn listeners(&self, pid: u32, ports: &[u16]) -> Option<ListenerSet> {
        let set: ListenerSet = self
            .procs
            .get(&pid)?
            .listeners
            .iter()
            .filter(|(port, _)| ports.is_empty() || ports.contains(port))
            .copied()
            .collect();
        (!set.is_empty()).then_some(set)
    }
    fn newest_holder(&self, netns: Option<u64>, port: u16) -> Option<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| p.matches && netns.is_none_or(|n| n == p.netns))
            .filter(|(_, p)| p.listeners.iter().any(|(lp, _)| *lp == port))
            .max_by_key(|(pid, p)| (p.start, **pid))
            .map(|(pid, _)| *pid)
    }
    fn newest_per_group(&self) -> Vec<(u32, u64, u16)> {
        let mut best: BTreeMap<(u64, u16), (u64, u32)> = BTreeMap::new();
        for (pid, p) in self.procs.iter().filter(|(_, p)| p.matches) {
            for (port, _) in &p.listeners {
                let e = best.entry((p.netns, *port)).or_insert((p.start, *pid));
                *e = (*e).max((p.start, *pid));
            }
        }
        best.into_iter().map(|((netns, port), (_, pid))| (pid, netns, port)).collect()
    }
}

/// A promote's change of one group for `pid`, as the steerer reports it.
pub fn promoted(pid: u32) -> crate::ops::promote::Change {
    crate::ops::promote::Change {
        group: "127.0.0.1:80".into(),
        pid,
        sockets: 1,
        first_slot: 0,
        changed: true,
        generation: 1,
        outcome: crate::policy::Outcome::Promoted,
        previous_pids: Vec::new(),
    }
}
