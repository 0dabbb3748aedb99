//! The event-driven listener source: the `steer-watch` tracepoint program on
//! `sock:inet_sock_set_state`, read through its ring buffer on a thread of its own.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
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

/// The loaded watcher; dropping it detaches the tracepoint and stops the reader.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _ebpf: Ebpf,
}

impl Watcher {
    /// Loads and attaches the watcher; events go to `tx`.
    pub fn start(tx: Sender<Event>) -> anyhow::Result<Self> {
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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let reader = std::thread::Builder::new()
            .name("steer-watch".into())
            .spawn(move || read_loop(ring, &tx, &flag))
            .context("spawn the ring buffer reader")?;
        Ok(Self { stop, reader: Some(reader), _ebpf: ebpf })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_loop(mut ring: RingBuf<MapData>, tx: &Sender<Event>, stop: &AtomicBool) {
    let fd = ring.as_fd().as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a 100 ms timeout bounds how long stop waits.
        unsafe { libc::poll(&raw mut pfd, 1, 100) };
        while let Some(item) = ring.next() {
            if item.len() < size_of::<ListenEvent>() {
                continue;
            }
            // SAFETY: the program writes whole ListenEvents; read_unaligned copes
            // with the ring buffer's 8-byte alignment.
            let ev: ListenEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let event = match ev.kind {
                watch::KIND_LISTEN => Event::Listen { pid: ev.pid, port: ev.port, ktime_ns: ev.ktime_ns },
                watch::KIND_CLOSE => Event::Closed,
                _ => continue,
            };
            if tx.send(event).is_err() {
                return;
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
