//! `steer daemon`: the sidecar. It watches for new listening sockets of matching
//! processes and, under the `newest` policy, promotes the newest generation of
//! each group as soon as it listens. It only automates what the CLI does: all
//! state stays pinned, so stopping or killing the daemon changes nothing for
//! traffic, and a restarted daemon adopts what it finds.
mod scan;
mod service;
pub mod source;
mod tracepoint;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

pub use scan::{Filter, start_time};
pub use service::serve;
pub use source::Source;

use crate::{
    metrics::{DaemonStats, EventCounts},
    ops::{OpError, attach, promote},
    proc::Process,
    sockets::{self, SocketError},
    state::StateError,
};

/// What to do when a new generation listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Promote the newest generation of each group as soon as it listens.
    Newest,
    /// Only re-attach the program to groups that formed again, and report.
    Manual,
}

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub filter: Filter,
    pub policy: Policy,
    pub ready_delay: Duration,
    pub source: Source,
    pub poll_interval: Duration,
    /// The niceness to run at (see [`service::serve`]).
    pub nice: i32,
    /// SCHED_FIFO priority of the event thread with the tracepoint source; 0: none
    /// (see [`service::set_realtime`]).
    pub rt_priority: u8,
}

/// A listener event.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// A socket started listening on `port` in process `pid` (which may already
    /// have exited: daemonising servers listen, then fork).
    Listen { pid: u32, port: u16, ktime_ns: u64 },
    /// A listening socket closed (slot upkeep runs soon).
    Closed,
    /// A watched process (one that holds a promoted generation, or its
    /// same-named parent) forked `child`.
    Forked { parent: u32, child: u32, ktime_ns: u64 },
}

/// What led to a promotion; the `trigger` field of the `promoted` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The daemon started and took over what it found.
    Adopt,
    /// A socket started listening.
    Listen,
    /// A watched process forked a child that holds a different set of listeners
    /// than the active generation, the same set its parent holds now.
    Fork,
    /// The active generation lost sockets; its newest holder is promoted again.
    Close,
    /// The polling source found a new listener.
    Poll,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Adopt => "adopt",
            Self::Listen => "listen",
            Self::Fork => "fork",
            Self::Close => "close",
            Self::Poll => "poll",
        }
    }
}

/// How often closed sockets' slots are reclaimed.
const MAINTENANCE: Duration = Duration::from_secs(1);

/// Runs until `stop` is set, with events from `watcher` (`None`: polling).
/// Events are handled one batch at a time.
pub fn run(
    state_dir: &Path,
    opts: &Options,
    mut watcher: Option<tracepoint::Watcher>,
    stats: &DaemonStats,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut watched = Watched::default();
    watched.add_all(adopt(state_dir, opts, stats));
    let mut poller = scan::Poller::default();
    if watcher.is_none() {
        poller.poll(&opts.filter);
    }
    tracing::info!(policy = ?opts.policy, comm = ?opts.filter.comms, port = ?opts.filter.ports, cgroup = ?opts.filter.cgroups, "watching");

    // Slot upkeep runs on a thread of its own: it reads /proc and takes
    // milliseconds, and an event must not wait behind it.
    let (nudge, nudges) = mpsc::channel::<()>();
    let (shrunk_tx, shrunk) = mpsc::channel::<u16>();
    let upkeep = {
        let (dir, filter) = (state_dir.to_path_buf(), opts.filter.clone());
        std::thread::Builder::new()
            .name("steer-upkeep".into())
            .spawn(move || upkeep_loop(&dir, &filter, &nudges, &shrunk_tx))?
    };
    // Only now, from this thread, so that the threads started before keep the
    // normal policy at --nice. Only for the tracepoint: polling waits out its
    // interval anyway, and would scan /proc at real-time priority.
    if watcher.is_some() {
        service::set_realtime(opts.rt_priority);
    }

    // Ports with a new listener: when to handle them, the earliest event time,
    // the latest listening pid, and how many times it was tried.
    let mut pending: BTreeMap<u16, Pending> = BTreeMap::new();
    let mut events = Vec::new();
    let mut next_poll = Instant::now() + opts.poll_interval;
    while !stop.load(Ordering::Relaxed) {
        stats.beat();
        let now = Instant::now();
        // Wake at least this often to see `stop` and the upkeep's findings.
        let mut wake = now + Duration::from_millis(200);
        if watcher.is_none() {
            wake = wake.min(next_poll);
        }
        if let Some(p) = pending.values().min_by_key(|p| p.due) {
            wake = wake.min(p.due);
        }
        events.clear();
        match watcher.as_mut() {
            Some(w) => w.wait(wake.saturating_duration_since(now), &mut events),
            None => std::thread::sleep(wake.saturating_duration_since(now)),
        }
        // A stop requested while waiting wins over the events that came with it:
        // after SIGTERM nothing changes.
        if stop.load(Ordering::Relaxed) {
            break;
        }
        stats.record_events(EventCounts {
            listen: events.iter().filter(|e| matches!(e, Event::Listen { .. })).count() as u64,
            close: events.iter().filter(|e| matches!(e, Event::Closed)).count() as u64,
            fork: events.iter().filter(|e| matches!(e, Event::Forked { .. })).count() as u64,
        });
        for &event in &events {
            match event {
                Event::Listen { pid, port, ktime_ns }
                    if opts.filter.port_matches(port) && pid != std::process::id() =>
                {
                    // The listening pid may have exited already (daemon mode forks
                    // after listen()); then the port decides, in handle().
                    let process = Process::open(pid).ok();
                    if process.is_none_or(|p| opts.filter.process_matches(&p)) {
                        let due = Instant::now() + opts.ready_delay;
                        queue(
                            &mut pending,
                            port,
                            Pending { due, ktime: ktime_ns, pid, tries: 0, trigger: Trigger::Listen },
                        );
                    }
                }
                Event::Listen { .. } => {}
                Event::Closed => {
                    let _ = nudge.send(());
                }
                // Promotions fill the watch list, so forks are only seen under `newest`.
                Event::Forked { parent, child, ktime_ns } => {
                    let Some(ports) = forked_generation(&opts.filter, parent, child) else { continue };
                    tracing::debug!(parent, child, ?ports, "a watched process forked a new generation");
                    let due = Instant::now() + opts.ready_delay;
                    for port in ports {
                        let p =
                            Pending { due, ktime: ktime_ns, pid: child, tries: 0, trigger: Trigger::Fork };
                        queue(&mut pending, port, p);
                    }
                }
            }
        }
        // An active generation that lost sockets (nginx with fewer workers):
        // promote the port's newest holder again.
        for port in shrunk.try_iter() {
            if opts.policy == Policy::Newest && opts.filter.port_matches(port) {
                let (due, ktime) = (Instant::now(), monotonic_ns());
                pending.entry(port).or_insert(Pending {
                    due,
                    ktime,
                    pid: 0,
                    tries: 0,
                    trigger: Trigger::Close,
                });
            }
        }
        let now = Instant::now();
        if watcher.is_none() && now >= next_poll {
            // Several new listeners on one port in one poll: the newest process
            // wins (start time, then pid; pids wrap, so start time comes first).
            let newest = |pid: u32| (start_time(pid).unwrap_or(0), pid);
            for (pid, port) in poller.poll(&opts.filter) {
                let due = now + opts.ready_delay;
                pending
                    .entry(port)
                    .and_modify(|p| {
                        if newest(pid) > newest(p.pid) {
                            p.pid = pid;
                        }
                    })
                    .or_insert(Pending { due, ktime: monotonic_ns(), pid, tries: 0, trigger: Trigger::Poll });
            }
            next_poll = now + opts.poll_interval;
        }
        let due: Vec<(u16, Pending)> =
            pending.iter().filter(|(_, p)| p.due <= now).map(|(port, p)| (*port, *p)).collect();
        if !due.is_empty() {
            for (port, _) in &due {
                pending.remove(port);
            }
            let handled = handle(state_dir, opts, stats, &due);
            for (port, retry) in handled.retries {
                // A newer event for the port since then wins.
                pending.entry(port).or_insert(retry);
            }
            watched.add_all(handled.promoted);
        }
        watched.prune(now);
        if watched.take_changed()
            && let Some(w) = watcher.as_mut()
        {
            w.watch_forks(&watched.pids());
        }
    }
    drop(nudge);
    let _ = upkeep.join();
    tracing::info!("stopping; steering stays in place");
    drop(watcher);
    Ok(())
}

/// After a listener closes, the upkeep waits this long (its process is
/// usually closing the rest), then frees the slots.
const CLOSE_SETTLE: Duration = Duration::from_millis(200);

/// The upkeep thread: every [`MAINTENANCE`], and [`CLOSE_SETTLE`] after a
/// listener closed (a `nudge`), frees the slots of closed sockets and corrects
/// the recorded owners of inherited ones. Sends the ports whose active
/// generation lost sockets. Returns when the event loop drops its sender.
fn upkeep_loop(state_dir: &Path, filter: &Filter, nudges: &mpsc::Receiver<()>, shrunk: &mpsc::Sender<u16>) {
    loop {
        match nudges.recv_timeout(MAINTENANCE) {
            Ok(()) => {
                std::thread::sleep(CLOSE_SETTLE);
                while nudges.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        match attach::maintain(state_dir, || scan::candidates(filter)) {
            Ok(upkeep) => {
                if upkeep.freed > 0 {
                    tracing::debug!(freed = upkeep.freed, "reclaimed slots");
                }
                for port in upkeep.shrunk {
                    let _ = shrunk.send(port);
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "slot upkeep failed"),
        }
    }
}

/// A port with a new listener, waiting to be handled.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When to handle it (after `--ready-delay`, or a retry's backoff).
    due: Instant,
    /// The earliest event's time (CLOCK_MONOTONIC ns), for `latency_us`.
    ktime: u64,
    /// The latest listening pid (0: only a close was seen; find the port's newest holder).
    pid: u32,
    /// Attempts so far that failed.
    tries: u32,
    /// What led here, for the log.
    trigger: Trigger,
}

/// Queues `new` for `port`. A port already waiting keeps its time, earliest
/// event and trigger, and takes the newer pid, with its tries reset.
fn queue(pending: &mut BTreeMap<u16, Pending>, port: u16, new: Pending) {
    pending
        .entry(port)
        .and_modify(|p| {
            p.pid = new.pid;
            p.tries = 0;
        })
        .or_insert(new);
}

/// Attempts to promote a new listener while its process lives: the event can
/// arrive before the socket listens or has joined its reuseport group.
const MAX_TRIES: u32 = 5;
/// The first retry's delay; each next one waits twice as long (10 ms to 160 ms).
const RETRY_AFTER: Duration = Duration::from_millis(10);

/// What [`handle`] did.
#[derive(Debug, Default)]
struct Handled {
    /// Ports to try again: a live listener whose socket was not found.
    retries: Vec<(u16, Pending)>,
    /// Processes promoted (or found already active).
    promoted: Vec<u32>,
}

/// Promotes (or, under `manual`, re-attaches) the process that listened on
/// each port in `due`; when it is gone, the newest matching holder of the port.
fn handle(state_dir: &Path, opts: &Options, stats: &DaemonStats, due: &[(u16, Pending)]) -> Handled {
    // Per pid: its ports, and the earliest event (its time and trigger).
    let mut targets: BTreeMap<u32, (Vec<(u16, Pending)>, Pending)> = BTreeMap::new();
    for &(port, p) in due {
        // pid 0: only a close was seen on the port; look for its newest holder.
        let alive = p.pid != 0 && Process::open(p.pid).is_ok_and(|p| opts.filter.process_matches(&p));
        let found = if alive {
            Some(forked_child(p.pid, port).unwrap_or(p.pid))
        } else {
            newest_listener(&opts.filter, port)
        };
        let Some(pid) = found else {
            tracing::debug!(port, "new listener gone before it could be handled");
            continue;
        };
        let t = targets.entry(pid).or_insert((Vec::new(), p));
        t.0.push((port, p));
        if p.ktime < t.1.ktime {
            t.1 = p;
        }
    }
    let mut handled = Handled::default();
    for (pid, (entries, Pending { ktime, trigger, .. })) in targets {
        let ports: Vec<u16> = entries.iter().map(|(port, _)| *port).collect();
        let scope = if opts.filter.ports.is_empty() { Vec::new() } else { ports.clone() };
        let result = match opts.policy {
            Policy::Newest => {
                let at = Attempt { trigger, port: ports.first().copied(), ktime };
                promote_one(state_dir, &opts.filter, stats, pid, scope, at)
                    .map(|promoted| handled.promoted.push(promoted))
            }
            Policy::Manual => match attach::reattach(state_dir, pid, &scope) {
                Ok(groups) => {
                    tracing::info!(pid, ?ports, reattached = ?groups, "new generation listening; not promoted (policy manual)");
                    Ok(())
                }
                Err(e) => Err(format!("{e:#}")),
            },
        };
        let Err(error) = result else { continue };
        // The tracepoint fires as listen() begins: the socket may not be listening,
        // or not yet in its reuseport group, when the daemon looks. While the
        // process lives, look again a little later; then give up, loudly.
        let alive = Process::open(pid).is_ok();
        for (port, p) in entries {
            if alive && p.tries + 1 < MAX_TRIES {
                let due = Instant::now() + RETRY_AFTER * 2_u32.pow(p.tries);
                tracing::debug!(pid, port, tries = p.tries + 1, error, "not promoted yet; trying again");
                handled.retries.push((port, Pending { due, tries: p.tries + 1, ..p }));
            } else if alive && opts.policy == Policy::Manual {
                tracing::warn!(pid, port, tries = MAX_TRIES, error, "re-attach failed");
            } else if alive {
                tracing::warn!(pid, port, tries = MAX_TRIES, error, "promote failed");
            } else {
                tracing::debug!(pid, port, error, "the new listener's process left");
            }
        }
    }
    handled
}

/// Why and when a promotion is attempted.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    trigger: Trigger,
    /// The port whose event led here (None at adoption).
    port: Option<u16>,
    /// The event's time (CLOCK_MONOTONIC ns), for `latency_us`.
    ktime: u64,
}

/// Promotes `pid` for `scope` (empty: all its ports) and returns the pid
/// promoted. `at.port` is the port whose event led here: if the process is gone
/// by now (daemonising servers listen, then fork and exit), the newest holder
/// of that port is promoted instead, a few times at most. A live process whose
/// listener is not found is an error (the caller tries again), never a reason
/// to promote another, older holder.
fn promote_one(
    state_dir: &Path,
    filter: &Filter,
    stats: &DaemonStats,
    pid: u32,
    scope: Vec<u16>,
    at: Attempt,
) -> Result<u32, String> {
    let mut pid = pid;
    for attempt in 0..4 {
        let request = promote::Request { pid, ports: scope.clone(), weight: 100, take_over: false };
        match promote::run(state_dir, &request) {
            Ok(changes) => {
                let latency_us = monotonic_ns().saturating_sub(at.ktime) / 1000;
                let trigger = at.trigger.as_str();
                for c in changes {
                    if c.changed {
                        stats.record_promotion(&c.group);
                        tracing::info!(pid, group = %c.group, slot = c.first_slot, generation = c.generation, sockets = c.sockets, latency_us, trigger, previous = ?c.previous_pids, "promoted");
                    } else {
                        tracing::debug!(pid, group = %c.group, trigger, "already active");
                    }
                }
                return Ok(pid);
            }
            Err(
                OpError::Proc(_)
                | OpError::Socket(
                    SocketError::Proc(_)
                    | SocketError::Diag(_)
                    | SocketError::Vanished { .. }
                    | SocketError::NoListeners { .. },
                ),
            ) if attempt < 3 && Process::open(pid).is_err() => {
                let next = at.port.and_then(|port| newest_listener(filter, port)).filter(|p| *p != pid);
                let Some(next) = next else {
                    return Err(format!("process {pid} left and no other process holds the port"));
                };
                tracing::debug!(pid, next, "listener's process left; promoting the port's newest holder");
                pid = next;
            }
            // The CLI's sentence names a flag the daemon does not have.
            Err(OpError::State(StateError::SocketBusy { cookie, pid, fd })) => {
                return Err(format!(
                    "socket fd {fd} of pid {pid} (cookie {cookie}) is held by another steer state directory, or by one removed without `steer detach`; detach it there, or run `steer promote {pid} --take-over` once to make this state steer the group"
                ));
            }
            Err(e) => return Err(format!("{e:#}")),
        }
    }
    Err(format!("process {pid} left, and so did the next holders of the port"))
}

/// The newest matching process holding a listener on `port`. Newest first, so
/// the search usually stops at once, at a fresh process with few sockets whose
/// listeners are read from the sockets themselves (no namespace to enter).
fn newest_listener(filter: &Filter, port: u16) -> Option<u32> {
    // Start times tick every 10 ms: break ties by pid, the later fork.
    let mut procs: Vec<((u64, u32), Process)> =
        scan::candidates(filter).into_iter().filter_map(|p| Some(((start_time(p.pid)?, p.pid), p))).collect();
    procs.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    procs
        .into_iter()
        .find(|(_, p)| sockets::listening_sockets(p, &[port]).is_ok_and(|ls| !ls.is_empty()))
        .map(|(_, p)| p.pid)
}

/// At start: promote the newest matching process of each group (policy
/// `newest`) or re-attach (policy `manual`). Groups whose newest generation
/// is already active are left alone. Returns the processes promoted.
fn adopt(state_dir: &Path, opts: &Options, stats: &DaemonStats) -> Vec<u32> {
    let mut promoted = Vec::new();
    let mut by_pid: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    for (_, (pid, port)) in scan::newest_per_group(&opts.filter) {
        by_pid.entry(pid).or_default().insert(port);
    }
    for (pid, ports) in by_pid {
        let ports: Vec<u16> = ports.into_iter().collect();
        tracing::info!(pid, ?ports, "adopting");
        match opts.policy {
            Policy::Newest => {
                let at = Attempt { trigger: Trigger::Adopt, port: None, ktime: monotonic_ns() };
                match promote_one(state_dir, &opts.filter, stats, pid, ports, at) {
                    Ok(pid) => promoted.push(pid),
                    Err(error) => tracing::warn!(pid, error, "promote failed"),
                }
            }
            Policy::Manual => {
                if let Err(e) = attach::reattach(state_dir, pid, &ports) {
                    tracing::warn!(pid, error = format!("{e:#}"), "re-attach failed");
                }
            }
        }
    }
    promoted
}

/// The youngest child of `pid` with the same name, if it holds the parent's
/// listeners on `port`: a daemonising server (HAProxy `-D`) listens, then forks
/// the process that serves and exits. Found from `/proc/PID/task/PID/children`.
fn forked_child(pid: u32, port: u16) -> Option<u32> {
    let comm = crate::proc::comm(pid)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let child = children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .filter(|c| crate::proc::comm(*c).as_deref() == Some(comm.as_str()))
        .max()?;
    // Only a child that holds every listener its parent holds on the port: the serving
    // process of a daemonising server, not an older worker of a master (nginx) that has
    // just opened more sockets and not yet forked the workers for them.
    let listeners = |pid: u32| listener_set(&Process::open(pid).ok()?, &[port]);
    listeners(pid)?.is_subset(&listeners(child)?).then_some(child)
}

/// The (port, inode) of each listener `process` holds on `ports` (all when
/// empty); `None` when it holds none or cannot be read.
fn listener_set(process: &Process, ports: &[u16]) -> Option<BTreeSet<(u16, u64)>> {
    let found = sockets::listening_sockets(process, ports).ok()?;
    Some(found.into_iter().map(|(_, l)| (l.addr.port(), l.inode)).collect())
}

/// The ports on which `child`, just forked by `parent`, holds listeners, when it
/// holds exactly the listeners its parent holds now: a server that closed some
/// listeners and then forked the workers of its next generation (nginx
/// lowering `worker_processes`; its master closes the dropped workers' sockets
/// before it forks, and tells the old workers to stop only 100 ms later).
/// `None` when the child holds no matching listener, or other ones than its
/// parent (a helper closing what it inherited). Whether the set differs from
/// the active generation is for `promote` to say: the same set is `already
/// active`, and nothing changes.
fn forked_generation(filter: &Filter, parent: u32, child: u32) -> Option<Vec<u16>> {
    let held = |pid: u32| {
        let process = Process::open(pid).ok()?;
        filter.process_matches(&process).then(|| listener_set(&process, &filter.ports))?
    };
    let mine = held(child)?;
    if mine != held(parent)? {
        return None;
    }
    let ports: BTreeSet<u16> = mine.into_iter().map(|(port, _)| port).collect();
    Some(ports.into_iter().collect())
}

/// The processes whose forks the watcher reports: each process a promotion
/// named, and its parent when that has the same name (nginx's master, which
/// forks the workers of each new generation). Kept with their start times, so
/// that a reused pid is not watched; exited ones are pruned every second.
#[derive(Debug, Default)]
struct Watched {
    pids: BTreeMap<u32, u64>,
    changed: bool,
    next_prune: Option<Instant>,
}

impl Watched {
    fn add_all(&mut self, promoted: impl IntoIterator<Item = u32>) {
        for pid in promoted {
            let comm = crate::proc::comm(pid);
            let parent = scan::parent(pid).filter(|p| comm.is_some() && crate::proc::comm(*p) == comm);
            for p in std::iter::once(pid).chain(parent) {
                if self.pids.contains_key(&p) {
                    continue;
                }
                if let Some(started) = start_time(p) {
                    self.pids.insert(p, started);
                    self.changed = true;
                }
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        if self.next_prune.is_some_and(|t| now < t) {
            return;
        }
        self.next_prune = Some(now + MAINTENANCE);
        let before = self.pids.len();
        self.pids.retain(|pid, started| start_time(*pid) == Some(*started));
        self.changed |= self.pids.len() != before;
    }

    fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn pids(&self) -> BTreeSet<u32> {
        self.pids.keys().copied().collect()
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}
