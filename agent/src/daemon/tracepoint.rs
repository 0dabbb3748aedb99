//! The event-driven listener source: the `steer-watch` tracepoint program on
//! `sock:inet_sock_set_state`, read through its ring buffer on a thread of its own.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::TracePoint,
};
use steer_abi::{ListenEvent, watch};

use super::Event;
use crate::program;

/// Where the tracepoint's format lives (tracefs, or tracefs under debugfs).
const FORMATS: [&str; 2] = [
    "/sys/kernel/tracing/events/sock/inet_sock_set_state/format",
    "/sys/kernel/debug/tracing/events/sock/inet_sock_set_state/format",
];

/// The offsets the watcher program reads (ebpf/src/watch.rs).
const EXPECTED: [(&str, usize); 5] =
    [("oldstate", 16), ("newstate", 20), ("sport", 24), ("family", 28), ("protocol", 30)];

/// Checks that the running kernel lays the tracepoint out as the program expects.
pub fn check_format(text: &str) -> anyhow::Result<()> {
    for (field, offset) in EXPECTED {
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

/// The loaded watcher; dropping it detaches the tracepoint. The daemon's own
/// thread waits on its ring buffer, so an event wakes exactly the thread that
/// promotes (a reader thread in between cost a second wake-up, and under a
/// reload's CPU load each wake-up can wait milliseconds).
pub struct Watcher {
    ring: RingBuf<MapData>,
    _ebpf: Ebpf,
}

impl Watcher {
    /// Loads and attaches the watcher.
    pub fn start() -> anyhow::Result<Self> {
        let format = FORMATS
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .context("tracefs is not mounted (no sock/inet_sock_set_state format)")?;
        check_format(&format)?;
        let mut ebpf = EbpfLoader::new().load(program::WATCH_OBJECT).context("load the watcher")?;
        let prog: &mut TracePoint = ebpf
            .program_mut(watch::PROGRAM_NAME)
            .context("watcher program missing")?
            .try_into()
            .context("watcher is not a tracepoint")?;
        prog.load().context("load the tracepoint program")?;
        prog.attach("sock", "inet_sock_set_state").context("attach to sock:inet_sock_set_state")?;
        let ring = RingBuf::try_from(ebpf.take_map(watch::EVENTS).context("events map missing")?)
            .context("events map is not a ring buffer")?;
        Ok(Self { ring, _ebpf: ebpf })
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
                _ => {}
            }
        }
    }
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
        check_format(FORMAT).unwrap();
    }

    #[test]
    fn a_moved_field_is_refused() {
        let moved = FORMAT.replace("offset:24", "offset:32");
        assert!(check_format(&moved).unwrap_err().to_string().contains("sport"));
        assert!(check_format("name: x\n").is_err());
    }
}
