//! The listener watcher: a tracepoint on `sock:inet_sock_set_state` that reports
//! every TCP socket entering TCP_LISTEN or closing from it, with the caller's pid, to the
//! daemon through a ring buffer; and one on `task:task_newtask` that reports the forks
//! of the processes the daemon lists in `STEER_WATCHED`. It only observes; it never
//! changes a socket or a process.
//!
//! Each comes twice, and the daemon attaches one of the pairs:
//! - raw tracepoints (`BPF_RAW_TRACEPOINT_OPEN` by name, kernel 4.17+), which need
//!   no tracefs. They get the tracepoints' `TP_PROTO` arguments, `struct sock *` and
//!   `struct task_struct *`, and read the few fields they need at offsets the daemon
//!   takes from the kernel's BTF and sets as globals before load;
//! - classic tracepoints, whose record field offsets are those of
//!   /sys/kernel/tracing/events/{sock/inet_sock_set_state,task/task_newtask}/format
//!   (include/trace/events/{sock,task}.h); the daemon checks them before it loads this.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use steer_abi::{IPPROTO_TCP, ListenEvent, watch};

#[map(name = "STEER_EVENTS")]
static STEER_EVENTS: RingBuf = RingBuf::with_byte_size(watch::EVENTS_BYTES, 0);

/// Events lost because the ring buffer was full (one per-CPU counter); the
/// daemon exports it and rescans when it grows.
#[map(name = "STEER_WATCH_DROPS")]
static STEER_WATCH_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The ports whose listen and close events are reported when
/// `STEER_PORT_FILTER` is set; the daemon fills it from `--port`.
#[map(name = "STEER_WATCH_PORTS")]
static STEER_WATCH_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(watch::PORTS_MAX, 0);

/// 1: report listen and close events only on the ports in `STEER_WATCH_PORTS`
/// (set by the daemon before load; 0 reports every port).
#[unsafe(no_mangle)]
static STEER_PORT_FILTER: u32 = 0;

/// Whether a listen or close on `port` is reported (every one of the host's
/// listeners passes here, so the daemon wakes only for its own).
#[inline(always)]
fn port_watched(port: u16) -> bool {
    // SAFETY: a read of a static; the loader rewrote its value in .rodata.
    if unsafe { core::ptr::read_volatile(&STEER_PORT_FILTER) } == 0 {
        return true;
    }
    // SAFETY: the value is only tested for presence.
    unsafe { STEER_WATCH_PORTS.get(port) }.is_some()
}

/// The network namespaces whose listen and close events the raw programs
/// report when `STEER_NETNS_FILTER` is set; the daemon fills it from `--netns`.
#[map(name = "STEER_WATCH_NETNS")]
static STEER_WATCH_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(watch::NETNS_MAX, 0);

/// 1: report listen and close events only of sockets in the namespaces in
/// `STEER_WATCH_NETNS` (set by the daemon before load; 0 reports every one).
#[unsafe(no_mangle)]
static STEER_NETNS_FILTER: u32 = 0;

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
    let Some(kind) = listener_change(old, new) else { return Ok(()) };
    let port: u16 = unsafe { ctx.read_at(SPORT) }.map_err(|_| ())?;
    if !port_watched(port) {
        return Ok(());
    }
    let family: u16 = unsafe { ctx.read_at(FAMILY) }.map_err(|_| ())?;
    report(ctx.tgid(), kind, port, family, 0)
}

/// The kind of a TCP state change worth reporting: a socket starting to listen,
/// or a listener closing. Only a listener closing: a new connection's child
/// socket is cloned from its listener, state included, and then set to
/// TCP_SYN_RECV, and reporting that would wake the daemon at every connection.
#[inline(always)]
fn listener_change(old: i32, new: i32) -> Option<u32> {
    if new == watch::TCP_LISTEN {
        Some(watch::KIND_LISTEN)
    } else if old == watch::TCP_LISTEN && new == watch::TCP_CLOSE {
        Some(watch::KIND_CLOSE)
    } else {
        None
    }
}

/// Writes one event to the ring buffer (dropped if it is full).
#[inline(always)]
fn report(pid: u32, kind: u32, port: u16, family: u16, child: u32) -> Result<(), ()> {
    let event = ListenEvent {
        // SAFETY: plain helper call.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid,
        kind,
        port,
        family,
        child,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if STEER_EVENTS.output::<ListenEvent>(event, 0).is_err() {
        if let Some(drops) = STEER_WATCH_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe { *drops += 1 };
        }
        return Err(());
    }
    Ok(())
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
    report(parent, watch::KIND_FORK, 0, 0, child as u32)
}

// Field offsets for the raw tracepoints, set by the daemon from the kernel's BTF
// before load (`EbpfLoader::override_global`). Read with `read_volatile` so that
// the compiler does not fold the placeholder zeros in.
#[unsafe(no_mangle)]
static STEER_OFF_SKC_NUM: u32 = 0;
#[unsafe(no_mangle)]
static STEER_OFF_SKC_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static STEER_OFF_SK_PROTOCOL: u32 = 0;
#[unsafe(no_mangle)]
static STEER_OFF_TASK_PID: u32 = 0;
#[unsafe(no_mangle)]
static STEER_OFF_SKC_NET: u32 = 0;
#[unsafe(no_mangle)]
static STEER_OFF_NET_INUM: u32 = 0;

/// Whether a listen or close of socket `sk` is reported, by its network
/// namespace (a listener in a namespace the daemon does not watch wakes it
/// not). A namespace it cannot read is reported: the daemon filters again.
#[inline(always)]
fn netns_watched(sk: u64) -> bool {
    // SAFETY: a read of a static; the loader rewrote its value in .rodata.
    if unsafe { core::ptr::read_volatile(&STEER_NETNS_FILTER) } == 0 {
        return true;
    }
    let Ok(net) = read_kernel::<u64>(sk, offset(&STEER_OFF_SKC_NET)) else { return true };
    let Ok(inum) = read_kernel::<u32>(net, offset(&STEER_OFF_NET_INUM)) else { return true };
    // SAFETY: the value is only tested for presence.
    unsafe { STEER_WATCH_NETNS.get(inum) }.is_some()
}

#[inline(always)]
fn offset(global: &u32) -> usize {
    // SAFETY: a read of a static; the loader rewrote its value in .rodata.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read_kernel<T>(base: u64, off: usize) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    unsafe { bpf_probe_read_kernel((base as usize + off) as *const T) }.map_err(|_| ())
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`
/// (include/trace/events/sock.h), without tracefs.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn steer_watch_raw(ctx: RawTracePointContext) -> u32 {
    match try_watch_raw(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_watch_raw(ctx: &RawTracePointContext) -> Result<(), ()> {
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let Some(kind) = listener_change(old, new) else { return Ok(()) };
    let sk: u64 = ctx.arg(0);
    let protocol: u16 = read_kernel(sk, offset(&STEER_OFF_SK_PROTOCOL))?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let port: u16 = read_kernel(sk, offset(&STEER_OFF_SKC_NUM))?;
    if !port_watched(port) || !netns_watched(sk) {
        return Ok(());
    }
    let family: u16 = read_kernel(sk, offset(&STEER_OFF_SKC_FAMILY))?;
    report(current_tgid(), kind, port, family, 0)
}

/// `task_newtask(struct task_struct *task, unsigned long clone_flags)`
/// (include/trace/events/task.h), without tracefs.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn steer_watch_fork_raw(ctx: RawTracePointContext) -> u32 {
    match try_watch_fork_raw(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_watch_fork_raw(ctx: &RawTracePointContext) -> Result<(), ()> {
    let parent = current_tgid();
    // SAFETY: the value is only tested for presence.
    if unsafe { STEER_WATCHED.get(parent) }.is_none() {
        return Ok(());
    }
    let flags: u64 = ctx.arg(1);
    if flags & watch::CLONE_THREAD != 0 {
        return Ok(());
    }
    let task: u64 = ctx.arg(0);
    let child: i32 = read_kernel(task, offset(&STEER_OFF_TASK_PID))?;
    report(parent, watch::KIND_FORK, 0, 0, child as u32)
}

/// The calling process's id (the thread group id).
#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
