//! The listener watcher: a tracepoint on `sock:inet_sock_set_state` that reports
//! every TCP socket entering TCP_LISTEN or closing from it, with the caller's pid, to the
//! daemon through a ring buffer. It only observes; it never changes a socket.
//! Field offsets are those of /sys/kernel/tracing/events/sock/inet_sock_set_state/format
//! (include/trace/events/sock.h); the daemon checks them before it loads this.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
};
use steer_abi::{IPPROTO_TCP, ListenEvent, watch};

#[map(name = "STEER_EVENTS")]
static STEER_EVENTS: RingBuf = RingBuf::with_byte_size(watch::EVENTS_BYTES, 0);

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
        pad: 0,
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
