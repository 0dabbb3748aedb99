//! The event-driven listener source: the `steer-watch` tracepoint programs on
//! `sock:inet_sock_set_state` and `task:task_newtask`, read through their ring buffer
//! by the daemon's event thread.
use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, RingBuf},
    programs::TracePoint,
};
use steer_abi::{ListenEvent, watch};

use super::Event;
use crate::program;

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
    _ebpf: Ebpf,
}

impl Watcher {
    /// Loads and attaches the watcher. The fork tracepoint is optional: without
    /// it, a warning, and generations that only fork are seen when listeners close.
    pub fn start() -> anyhow::Result<Self> {
        check_format(&format("sock", "inet_sock_set_state")?, &EXPECTED)?;
        let mut ebpf = EbpfLoader::new().load(program::WATCH_OBJECT).context("load the watcher")?;
        attach(&mut ebpf, watch::PROGRAM_NAME, "sock", "inet_sock_set_state")?;
        let forks = format("task", "task_newtask")
            .and_then(|text| check_format(&text, &EXPECTED_FORK))
            .and_then(|()| attach(&mut ebpf, watch::FORK_PROGRAM_NAME, "task", "task_newtask"));
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
        Ok(Self { ring, watched, listed: BTreeSet::new(), _ebpf: ebpf })
    }

    /// Makes `pids` the processes whose forks are reported (at most
    /// [`watch::WATCHED_MAX`]; the rest are left out, with a debug line).
    pub fn watch_forks(&mut self, pids: &BTreeSet<u32>) {
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
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<Event>) {
        // Returns at once when unread events are waiting (the ring buffer's poll
        // compares the consumer and producer positions).
        let mut pfd = libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, ms) };
        while let Some(item) = self.ring.next() {
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
    }
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
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state\n\
        \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
        \tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
        \tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n";

    #[test]
    fn the_format_of_this_kernel_generation_is_accepted() {
        check_format(FORMAT, &EXPECTED).unwrap();
    }

    #[test]
    fn a_moved_field_is_refused() {
        let moved = FORMAT.replace("offset:24", "offset:32");
        assert!(check_format(&moved, &EXPECTED).unwrap_err().to_string().contains("sport"));
        assert!(check_format("name: x\n", &EXPECTED).is_err());
    }

    const NEWTASK: &str = "name: task_newtask\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
        \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";

    #[test]
    fn the_fork_tracepoint_format_is_checked_by_field_name() {
        check_format(NEWTASK, &EXPECTED_FORK).unwrap();
        let moved = NEWTASK.replace("offset:32", "offset:40");
        assert!(check_format(&moved, &EXPECTED_FORK).unwrap_err().to_string().contains("clone_flags"));
    }
}
