//! The event-driven listener source: the `steer-watch` programs on
//! `inet_sock_set_state` and `task_newtask`, attached as raw tracepoints (offsets
//! from BTF, no tracefs) or as classic tracepoints (tracefs), and read through
//! their ring buffer by the daemon's event thread.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
};
use steer_abi::{ListenEvent, watch};

use super::{Event, source::EventSource};
use crate::{btf::Btf, program};

/// Where tracepoint formats live: tracefs, or tracefs under debugfs.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"];

/// The offsets the listener program reads (ebpf/src/watch.rs).
const EXPECTED: [(&str, usize); 5] =
    [("oldstate", 16), ("newstate", 20), ("sport", 24), ("family", 28), ("protocol", 30)];

/// The offsets the fork program reads (ebpf/src/watch.rs).
const EXPECTED_FORK: [(&str, usize); 2] = [("pid", 8), ("clone_flags", 32)];

/// The format text of tracepoint `category/name`.
fn format(category: &str, name: &str) -> anyhow::Result<String> {
    TRACEFS
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/{category}/{name}/format")).ok())
        .with_context(|| format!("tracefs is not mounted (no {category}/{name} format)"))
}

/// Checks that the running kernel lays a tracepoint out as its program expects.
pub fn check_format(text: &str, expected: &[(&str, usize)]) -> anyhow::Result<()> {
    for &(field, offset) in expected {
        let line = text
            .lines()
            .find(|l| l.split(';').next().is_some_and(|d| d.split_whitespace().last() == Some(field)))
            .with_context(|| format!("field {field} missing from the tracepoint format"))?;
        let found = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|o| o.parse::<usize>().ok())
            .with_context(|| format!("no offset for {field}"))?;
        if found != offset {
            bail!("field {field} is at offset {found}, the watcher reads {offset}");
        }
    }
    Ok(())
}

/// How the watcher's programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Raw tracepoints by name, with field offsets from the kernel's BTF: no tracefs.
    Raw,
    /// Classic tracepoints, found and checked through tracefs.
    Tracefs,
}

impl Attach {
    /// The `source` field of the daemon's log and of `steer check`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw_tracepoint",
            Self::Tracefs => "tracepoint",
        }
    }
}

/// The loaded watcher; dropping it detaches the tracepoints. The daemon's own
/// thread waits on its ring buffer, so an event wakes exactly the thread that
/// promotes (a reader thread in between cost a second wake-up, and under a
/// reload's CPU load each wake-up can wait milliseconds).
pub struct Watcher {
    ring: RingBuf<MapData>,
    /// The processes whose forks are reported; `None` without the fork tracepoint.
    watched: Option<HashMap<MapData, u32, u8>>,
    /// What [`Self::watched`] holds.
    listed: BTreeSet<u32>,
    attach: Attach,
    /// tracefs, when this watcher mounted it (unmounted on drop).
    mounted: Option<&'static str>,
    /// Events the program could not write (the ring buffer was full), and how
    /// many of them were reported already.
    drops: PerCpuArray<MapData, u64>,
    drops_seen: u64,
    _ebpf: Ebpf,
}

/// Events read per wake-up at most: a flood (an unprivileged process opening
/// and closing listeners in a loop) cannot keep the event thread from its
/// due work; the rest waits in the ring buffer for the next turn.
const MAX_DRAIN: usize = 4096;

/// The loader's global that turns the in-kernel port filter on for `ports`
/// (the daemon's `--port`; none, or more than the map holds: every port).
fn port_filter(ports: &[u16]) -> u32 {
    u32::from(!ports.is_empty() && ports.len() <= watch::PORTS_MAX as usize)
}

/// The loader's global that turns the raw programs' namespace filter on for
/// `netns` (the daemon's `--netns`; none, `--netns all`, or more than the map
/// holds: every namespace).
fn netns_filter(netns: &[u64]) -> u32 {
    u32::from(
        !netns.is_empty()
            && netns.len() <= watch::NETNS_MAX as usize
            && netns.iter().all(|n| u32::try_from(*n).is_ok()),
    )
}

/// A global of the watcher object and the value it gets before load.
type Global = (&'static str, u32);

/// The field offsets the raw programs read, from the kernel's BTF: the
/// four they need, then the two of the namespace filter (both 0, and the
/// filter off, when this kernel's BTF lacks one).
fn raw_offsets() -> anyhow::Result<([Global; 4], Option<[Global; 2]>)> {
    let btf = Btf::from_sys_fs().context("the raw tracepoints need the kernel's BTF")?;
    let at = |strukt: &str, field: &str, size: u32| -> anyhow::Result<u32> {
        Ok(btf.field(strukt, field, size).context("read a field offset from the kernel's BTF")?.offset)
    };
    let needed = [
        (watch::OFF_SKC_NUM, at("sock", "__sk_common.skc_num", 2)?),
        (watch::OFF_SKC_FAMILY, at("sock", "__sk_common.skc_family", 2)?),
        (watch::OFF_SK_PROTOCOL, at("sock", "sk_protocol", 2)?),
        (watch::OFF_TASK_PID, at("task_struct", "pid", 4)?),
    ];
    let netns = (|| {
        Ok::<_, anyhow::Error>([
            (watch::OFF_SKC_NET, at("sock", "__sk_common.skc_net.net", 8)?),
            (watch::OFF_NET_INUM, at("net", "ns.inum", 4)?),
        ])
    })()
    .inspect_err(|e| tracing::debug!(error = format!("{e:#}"), "no namespace filter in the kernel"))
    .ok();
    Ok((needed, netns))
}

impl Watcher {
    /// Loads the watcher and attaches it as raw tracepoints, with the field
    /// offsets of this kernel's BTF (`/sys/kernel/btf/vmlinux`). Reads nothing
    /// from tracefs or debugfs. The fork tracepoint is optional, as in
    /// [`Self::start_tracefs`].
    /// With `ports`, only listen and close events on them are reported; with
    /// `netns`, only those of sockets in these network namespaces.
    pub fn start_raw(ports: &[u16], netns: &[u64]) -> anyhow::Result<Self> {
        let (offsets, netns_offsets) = raw_offsets()?;
        let filter = port_filter(ports);
        let in_netns = if netns_offsets.is_some() { netns_filter(netns) } else { 0 };
        let mut loader = EbpfLoader::new();
        for (name, value) in offsets.iter().chain(netns_offsets.iter().flatten()) {
            loader.override_global(name, value, true);
        }
        loader.override_global(watch::PORT_FILTER, &filter, true);
        loader.override_global(watch::NETNS_FILTER, &in_netns, true);
        let mut ebpf = loader.load(program::WATCH_OBJECT).context("load the watcher")?;
        fill_ports(&mut ebpf, ports, filter)?;
        fill_netns(&mut ebpf, netns, in_netns)?;
        attach_raw(&mut ebpf, watch::RAW_PROGRAM_NAME, "inet_sock_set_state")?;
        let forks = attach_raw(&mut ebpf, watch::RAW_FORK_PROGRAM_NAME, "task_newtask");
        Self::finish(ebpf, forks, Attach::Raw, None)
    }

    /// Loads the watcher and attaches it as classic tracepoints, after checking
    /// their record layout in tracefs. With `may_mount`, mounts tracefs at
    /// `/sys/kernel/tracing` when no tracefs is found (it needs CAP_SYS_ADMIN),
    /// and unmounts it when the watcher is dropped.
    pub fn start_tracefs(may_mount: bool, ports: &[u16]) -> anyhow::Result<Self> {
        let mut mounted = None;
        let text = match format("sock", "inet_sock_set_state") {
            Ok(text) => text,
            Err(e) if may_mount => {
                mount_tracefs().with_context(|| format!("{e:#}, and it could not be mounted"))?;
                mounted = Some(TRACEFS_MOUNT);
                format("sock", "inet_sock_set_state").inspect_err(|_| unmount_tracefs())?
            }
            Err(e) => return Err(e),
        };
        let started = (|| {
            check_format(&text, &EXPECTED)?;
            let filter = port_filter(ports);
            let mut ebpf = EbpfLoader::new()
                .override_global(watch::PORT_FILTER, &filter, true)
                .load(program::WATCH_OBJECT)
                .context("load the watcher")?;
            fill_ports(&mut ebpf, ports, filter)?;
            attach(&mut ebpf, watch::PROGRAM_NAME, "sock", "inet_sock_set_state")?;
            let forks = format("task", "task_newtask")
                .and_then(|text| check_format(&text, &EXPECTED_FORK))
                .and_then(|()| attach(&mut ebpf, watch::FORK_PROGRAM_NAME, "task", "task_newtask"));
            Self::finish(ebpf, forks, Attach::Tracefs, mounted)
        })();
        if started.is_err() && mounted.is_some() {
            unmount_tracefs();
        }
        started
    }

    fn finish(
        mut ebpf: Ebpf,
        forks: anyhow::Result<()>,
        attach: Attach,
        mounted: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        let watched = match forks {
            Ok(()) => Some(
                HashMap::try_from(ebpf.take_map(watch::WATCHED).context("watched map missing")?)
                    .context("watched map is not a hash map")?,
            ),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "fork tracepoint unavailable; a generation that only forks (nginx with fewer workers) is promoted when the old listeners close"
                );
                None
            }
        };
        let ring = RingBuf::try_from(ebpf.take_map(watch::EVENTS).context("events map missing")?)
            .context("events map is not a ring buffer")?;
        let drops = PerCpuArray::try_from(ebpf.take_map(watch::DROPS).context("drops map missing")?)
            .context("drops map is not a per-CPU array")?;
        Ok(Self {
            ring,
            watched,
            listed: BTreeSet::new(),
            attach,
            mounted,
            drops,
            drops_seen: 0,
            _ebpf: ebpf,
        })
    }

    /// How the programs are attached.
    #[must_use]
    pub fn attach(&self) -> Attach {
        self.attach
    }

    /// Whether forks of watched processes are reported.
    #[must_use]
    pub fn reports_forks(&self) -> bool {
        self.watched.is_some()
    }

    /// Whether this watcher mounted tracefs.
    #[must_use]
    pub fn mounted_tracefs(&self) -> bool {
        self.mounted.is_some()
    }
}

impl EventSource for Watcher {
    /// Makes `pids` the processes whose forks are reported (at most
    /// [`watch::WATCHED_MAX`]; the rest are left out, with a debug line).
    fn watch_forks(&mut self, pids: &BTreeSet<u32>) {
        let Some(map) = self.watched.as_mut() else { return };
        for pid in self.listed.difference(pids) {
            let _ = map.remove(pid);
        }
        for &pid in pids.difference(&self.listed) {
            if let Err(e) = map.insert(pid, 1, 0) {
                tracing::debug!(pid, error = %e, "fork watch list is full");
            }
        }
        self.listed.clone_from(pids);
    }

    /// Waits up to `timeout` for events, then appends every event there is to `out`.
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>) {
        // Returns at once when unread events are waiting (the ring buffer's poll
        // compares the consumer and producer positions).
        let mut pfd = libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, ms) };
        for _ in 0..MAX_DRAIN {
            let Some(item) = self.ring.next() else { break };
            if item.len() < size_of::<ListenEvent>() {
                continue;
            }
            // SAFETY: the program writes whole ListenEvents; read_unaligned copes
            // with the ring buffer's 8-byte alignment.
            let ev: ListenEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match ev.kind {
                watch::KIND_LISTEN => {
                    out.push(Event::Listen { pid: ev.pid, port: ev.port, ktime_ns: ev.ktime_ns });
                }
                watch::KIND_CLOSE => out.push(Event::Closed),
                watch::KIND_FORK => {
                    out.push(Event::Forked { parent: ev.pid, child: ev.child, ktime_ns: ev.ktime_ns });
                }
                _ => {}
            }
        }
        // Lost events: the daemon cannot know which listeners they were, so it
        // looks at every matching group again (adoption is idempotent).
        let drops: u64 = self.drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(self.drops_seen);
        if drops > self.drops_seen {
            out.push(Event::Lost { count: drops - self.drops_seen });
            self.drops_seen = drops;
        }
    }
}

/// Fills the watcher's port map when `filter` is on.
fn fill_ports(ebpf: &mut Ebpf, ports: &[u16], filter: u32) -> anyhow::Result<()> {
    fill(ebpf, watch::PORTS, ports.iter().copied(), filter)
}

fn fill_netns(ebpf: &mut Ebpf, netns: &[u64], filter: u32) -> anyhow::Result<()> {
    fill(ebpf, watch::NETNS, netns.iter().filter_map(|n| u32::try_from(*n).ok()), filter)
}

/// Puts `keys` into the watcher's filter map `name`, when its filter is on.
fn fill<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    keys: impl Iterator<Item = K>,
    filter: u32,
) -> anyhow::Result<()> {
    if filter == 0 {
        return Ok(());
    }
    let mut map: HashMap<&mut MapData, K, u8> =
        HashMap::try_from(ebpf.map_mut(name).with_context(|| format!("{name} missing"))?)
            .with_context(|| format!("{name} is not a hash map"))?;
    for key in keys {
        map.insert(key, 1, 0).with_context(|| format!("fill the watcher's {name}"))?;
    }
    Ok(())
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.mounted.is_some() {
            unmount_tracefs();
        }
    }
}

/// Where the watcher mounts tracefs when there is none.
const TRACEFS_MOUNT: &str = "/sys/kernel/tracing";

fn mount_tracefs() -> anyhow::Result<()> {
    rustix::mount::mount("tracefs", TRACEFS_MOUNT, "tracefs", rustix::mount::MountFlags::empty(), None)
        .with_context(|| format!("mount tracefs on {TRACEFS_MOUNT} (needs CAP_SYS_ADMIN)"))?;
    // The event source line that follows says so (its reason).
    tracing::debug!(
        path = TRACEFS_MOUNT,
        "mounted tracefs for the tracepoint source; unmounted when the daemon stops"
    );
    Ok(())
}

fn unmount_tracefs() {
    if let Err(e) = rustix::mount::unmount(TRACEFS_MOUNT, rustix::mount::UnmountFlags::DETACH) {
        tracing::debug!(error = %e, "cannot unmount the tracefs the daemon mounted");
    }
}

/// Loads program `name` of the watcher object and attaches it to raw tracepoint `tracepoint`.
fn attach_raw(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> anyhow::Result<()> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("watcher program {name} missing"))?
        .try_into()
        .with_context(|| format!("{name} is not a raw tracepoint"))?;
    prog.load().with_context(|| format!("load the {name} program"))?;
    prog.attach(tracepoint).with_context(|| format!("attach to raw tracepoint {tracepoint}"))?;
    Ok(())
}

/// Loads program `name` of the watcher object and attaches it to `category:tracepoint`.
fn attach(ebpf: &mut Ebpf, name: &str, category: &str, tracepoint: &str) -> anyhow::Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("watcher program {name} missing"))?
        .try_into()
        .with_context(|| format!("{name} is not a tracepoint"))?;
    prog.load().with_context(|| format!("load the {name} program"))?;
    prog.attach(category, tracepoint).with_context(|| format!("attach to {category}:{tracepoint}"))?;
    Ok(())
}

#[cfg(test)]
#[path = "tracepoint_tests.rs"]
mod tests;
