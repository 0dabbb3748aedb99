//! The listener watcher: a tracepoint on `sock:inet_sock_set_state` that reports
//! every TCP socket entering TCP_LISTEN or closing from it, with the caller's pid, to the
//! daemon through a ring buffer; and one on `task:task_newtask` that reports the forks
//! of the processes the daemon lists in `STEER_WATCHED`. It only observes; it never
//! changes a socket or a process.
//! Field offsets are those of /sys/kernel/tracing/events/{sock/inet_sock_set_state,
//! task/task_newtask}/format (include/trace/events/{sock,task}.h); the daemon checks
//! them before it loads this.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, RingBuf},
    programs::TracePointContext,
};
use steer_abi::{IPPROTO_TCP, ListenEvent, watch};

#[map(name = "STEER_EVENTS")]
static STEER_EVENTS: RingBuf = RingBuf::with_byte_size(watch::EVENTS_BYTES, 0);

/// The processes whose forks are reported, by tgid; the daemon fills it.
#[map(name = "STEER_WATCHED")]
static STEER_WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(watch::WATCHED_MAX, 0);

const OLDSTATE: usize = 16;
const NEWSTATE: usize = 20;
const SPORT: usize = 24;
const FAMILY: usize = 28;
const PROTOCOL: usize = 30;

#[tracepoint]
pub fn steer_watch(ctx: TracePointContext) -> u32 {
    match try_watch(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_watch(ctx: &TracePointContext) -> Result<(), ()> {
    // SAFETY: reads at fixed offsets of the tracepoint record, bounds-checked by the helper.
    let protocol: u16 = unsafe { ctx.read_at(PROTOCOL) }.map_err(|_| ())?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(OLDSTATE) }.map_err(|_| ())?;
    let new: i32 = unsafe { ctx.read_at(NEWSTATE) }.map_err(|_| ())?;
    let kind = if new == watch::TCP_LISTEN {
        watch::KIND_LISTEN
    } else if old == watch::TCP_LISTEN && new == watch::TCP_CLOSE {
        // Only a listener closing. A new connection's child socket is cloned from
        // its listener, state included, and then set to TCP_SYN_RECV: reporting
        // that would wake the daemon at every connection.
        watch::KIND_CLOSE
    } else {
        return Ok(());
    };
    let port: u16 = unsafe { ctx.read_at(SPORT) }.map_err(|_| ())?;
    let family: u16 = unsafe { ctx.read_at(FAMILY) }.map_err(|_| ())?;
    let event = ListenEvent {
        // SAFETY: plain helper call.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid: ctx.tgid(),
        kind,
        port,
        family,
        child: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    STEER_EVENTS.output::<ListenEvent>(event, 0).map_err(|_| ())
}

/// `task:task_newtask` offsets: the new task's pid and the clone flags.
const NEWTASK_PID: usize = 8;
const NEWTASK_CLONE_FLAGS: usize = 32;

/// Runs in the context of the task that creates another, at every fork and
/// thread creation on the host: one hash lookup, and an event only for a new
/// process of a watched one.
#[tracepoint]
pub fn steer_watch_fork(ctx: TracePointContext) -> u32 {
    match try_watch_fork(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_watch_fork(ctx: &TracePointContext) -> Result<(), ()> {
    let parent = ctx.tgid();
    // SAFETY: the value is only tested for presence.
    if unsafe { STEER_WATCHED.get(parent) }.is_none() {
        return Ok(());
    }
    // SAFETY: reads at fixed offsets of the tracepoint record, bounds-checked by the helper.
    let flags: u64 = unsafe { ctx.read_at(NEWTASK_CLONE_FLAGS) }.map_err(|_| ())?;
    if flags & watch::CLONE_THREAD != 0 {
        return Ok(());
    }
    let child: i32 = unsafe { ctx.read_at(NEWTASK_PID) }.map_err(|_| ())?;
    let event = ListenEvent {
        // SAFETY: plain helper call.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid: parent,
        kind: watch::KIND_FORK,
        port: 0,
        family: 0,
        child: child as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    STEER_EVENTS.output::<ListenEvent>(event, 0).map_err(|_| ())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
