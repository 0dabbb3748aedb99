//! The fork watch list: which processes' forks the event source reports.
use std::{collections::BTreeMap, time::Instant};

use super::{core::PRUNE_EVERY, world::World};

/// The processes whose forks the watcher reports: each process a promotion
/// named, and its parent when that has the same name (nginx's master, which
/// forks the workers of each new generation). Kept with their start times, so
/// that a reused pid is not watched.
#[derive(Debug, Default)]
pub(super) struct Watched {
    pub(super) pids: BTreeMap<u32, u64>,
    pub(super) changed: bool,
    next_prune: Option<Instant>,
}

impl Watched {
    pub(super) fn add(&mut self, world: &dyn World, pid: u32) {
        let comm = world.process(pid).map(|i| i.comm);
        let parent =
            world.parent(pid).filter(|p| comm.is_some() && world.process(*p).map(|i| i.comm) == comm);
        for p in std::iter::once(pid).chain(parent) {
            if self.pids.contains_key(&p) {
                continue;
            }
            if let Some(started) = world.start_time(p) {
                self.pids.insert(p, started);
                self.changed = true;
            }
        }
    }

    pub(super) fn prune(&mut self, now: Instant, world: &dyn World) {
        if self.next_prune.is_some_and(|t| now < t) {
            return;
        }
        self.next_prune = Some(now + PRUNE_EVERY);
        let before = self.pids.len();
        self.pids.retain(|pid, started| world.start_time(*pid) == Some(*started));
        self.changed |= self.pids.len() != before;
    }
}
