//! The steer reuseport program: one `sk_reuseport/migrate` program serves every
//! reuseport group it is attached to. It reads the group from `ctx->sk`, looks up
//! that group's configuration, and selects the active (or canary) generation's
//! socket from the REUSEPORT_SOCKARRAY; a canary whose socket is gone yields its
//! share to the active generation. Anything else unexpected fails open: it returns
//! `SK_PASS` without a selection and the kernel's own hash pick applies
//! (net/core/sock_reuseport.c: `reuseport_select_sock` falls back to
//! `reuseport_select_sock_by_hash` when the program selected nothing). It never
//! returns `SK_DROP`, which would reset a new connection. In select-only mode
//! the agent loads `steer_select` instead, once per group, with the group set
//! before load: the same logic, without `ctx->sk` and without migration.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, sk_action::SK_PASS},
    helpers::generated::bpf_sk_select_reuseport,
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::SkReuseportContext,
};
use steer_abi::{
    Counters, GroupConfig, GroupKey, Info, MAX_GROUPS, MAX_SLOTS, SlotMeta, SlotRange, counter, pick,
};

/// The sockets, one per slot; the agent inserts them, the kernel clears a slot
/// when its socket closes (kernel/bpf/reuseport_array.c, `bpf_sk_reuseport_detach`).
///
/// Declared by hand rather than with aya-ebpf's `ReusePortSockArray`, whose values
/// are 4 bytes: with 8-byte values a lookup from userspace returns the socket's
/// cookie (kernel/bpf/reuseport_array.c, `bpf_fd_reuseport_array_lookup_elem`),
/// which is how the agent knows whether a slot is still live.
#[unsafe(link_section = "maps")]
#[unsafe(export_name = "STEER_SOCKETS")]
static STEER_SOCKETS: SockArrayDef = SockArrayDef(UnsafeCell::new(bpf_map_def {
    type_: BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
    key_size: size_of::<u32>() as u32,
    value_size: size_of::<u64>() as u32,
    max_entries: MAX_SLOTS,
    map_flags: 0,
    id: 0,
    pinning: 0,
}));

#[repr(transparent)]
struct SockArrayDef(UnsafeCell<bpf_map_def>);

// SAFETY: the definition is only read by the loader and passed to helpers by address.
unsafe impl Sync for SockArrayDef {}

impl SockArrayDef {
    /// `bpf_sk_select_reuseport(ctx, map, &slot, 0)`: 0 or a negative errno.
    #[inline(always)]
    fn select(&self, ctx: &SkReuseportContext, slot: u32) -> i64 {
        let mut key = slot;
        // SAFETY: a valid context, this map, and a key on the stack.
        unsafe { bpf_sk_select_reuseport(ctx.as_ptr().cast(), self.0.get().cast(), (&raw mut key).cast(), 0) }
    }
}

/// Configuration per group, replaced whole by the agent.
#[map(name = "STEER_GROUPS")]
static STEER_GROUPS: HashMap<GroupKey, GroupConfig> = HashMap::with_max_entries(MAX_GROUPS, 0);

/// Per-CPU counters per group, created by the agent when it configures a group.
#[map(name = "STEER_GSTATS")]
static STEER_GSTATS: PerCpuHashMap<GroupKey, Counters> = PerCpuHashMap::with_max_entries(MAX_GROUPS, 0);

/// Per-CPU selections per slot: which socket (and so which generation) got what.
#[map(name = "STEER_SSTATS")]
static STEER_SSTATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Per-CPU counters over every group, including groups without configuration.
#[map(name = "STEER_GLOBAL")]
static STEER_GLOBAL: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// The agent's record of each used slot (cookie, pid, fd), keyed by slot. Not
/// read here; it lives in the object so that it is created and pinned with the
/// other maps. A hash map, so reading it costs what is used, not its capacity.
#[map(name = "STEER_SLOTS")]
static STEER_SLOTS: HashMap<u32, SlotMeta> = HashMap::with_max_entries(MAX_SLOTS, 0);

/// ABI version of whoever created the pinned state.
#[map(name = "STEER_INFO")]
static STEER_INFO: Array<Info> = Array::with_max_entries(1, 0);

const ENOENT: i64 = 2;

#[sk_reuseport(migrate)]
pub fn steer(ctx: SkReuseportContext) -> u32 {
    match try_steer(&ctx, group_key(&ctx), ctx.migrating_sk().is_some()) {
        Ok(v) | Err(v) => v,
    }
}

/// The group a `steer_select` instance serves, set by the agent before load
/// (`EbpfLoader::override_global`): one instance per group, attached to that
/// group only. Read with `read_volatile` so the placeholder is not folded in.
#[unsafe(no_mangle)]
static STEER_SELECT_GROUP: GroupKey =
    GroupKey { family: 0, protocol: 0, port: 0, pad: 0, ifindex: 0, addr: [0; 4] };

/// Select-only mode (`BPF_SK_REUSEPORT_SELECT`, and kernels before 5.14, which
/// have no `ctx->sk`): the group comes from [`STEER_SELECT_GROUP`], and the
/// kernel never asks where a closing listener's queue goes.
#[sk_reuseport]
pub fn steer_select(ctx: SkReuseportContext) -> u32 {
    // SAFETY: a read of a static; the loader rewrote its value in .rodata.
    let key = unsafe { core::ptr::read_volatile(&raw const STEER_SELECT_GROUP) };
    match try_steer(&ctx, key, false) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_steer(ctx: &SkReuseportContext, key: GroupKey, migrating: bool) -> Result<u32, u32> {
    // SAFETY: the value is only read, and the agent replaces it whole.
    let Some(config) = (unsafe { STEER_GROUPS.get(key) }) else {
        count(&key, counter::NO_CONFIG);
        return Err(SK_PASS);
    };

    let hash = ctx.hash();
    let (range, path) = choose(config, migrating, hash);
    if range.is_none() {
        count(&key, if migrating { counter::MIGRATED_BY_KERNEL } else { counter::EMPTY_SLOT });
        return Err(SK_PASS);
    }
    let err = match select(ctx, range, hash) {
        Ok(()) => return selected(&key, path),
        Err(err) => err,
    };
    // A migration the program cannot place: the kernel picks another
    // live member (net/core/sock_reuseport.c, `reuseport_migrate_sock`).
    if migrating {
        count(&key, counter::MIGRATED_BY_KERNEL);
        return Err(SK_PASS);
    }
    // The canary's socket is gone (its process exited): its share goes to the
    // active generation, not to the kernel's pick among every member still
    // listening, which includes the demoted previous generation.
    let err = if path == counter::CANARY && !config.active.is_none() {
        match select(ctx, config.active, hash) {
            Ok(()) => return selected(&key, counter::CANARY_TO_ACTIVE),
            Err(err) => err,
        }
    } else {
        err
    };
    count(&key, if err == -ENOENT { counter::EMPTY_SLOT } else { counter::HELPER_ERROR });
    Err(SK_PASS)
}

/// Selects the socket of `range` that the hash's low bits pick, and counts
/// the selection on that slot; `Err` holds the helper's negative errno.
#[inline(always)]
fn select(ctx: &SkReuseportContext, range: SlotRange, hash: u32) -> Result<(), i64> {
    let slot = range.first + pick::socket_index(hash, range.count);
    match STEER_SOCKETS.select(ctx, slot) {
        0 => {
            if let Some(hits) = STEER_SSTATS.get_ptr_mut(slot) {
                // SAFETY: per-CPU value, only this CPU writes it.
                unsafe { *hits += 1 };
            }
            Ok(())
        }
        err => Err(err),
    }
}

/// Counts a successful selection on `path` and lets the kernel use it.
#[inline(always)]
fn selected(key: &GroupKey, path: usize) -> Result<u32, u32> {
    count(key, path);
    Ok(SK_PASS)
}

/// Which generation gets this connection, and which counter records it. The
/// canary share is decided by the hash's high bits, independent of the low
/// bits that pick the socket inside the generation (`steer_abi::pick`).
#[inline(always)]
fn choose(config: &GroupConfig, migrating: bool, hash: u32) -> (SlotRange, usize) {
    if migrating {
        return (config.active, counter::MIGRATED);
    }
    if !config.canary.is_none() && pick::share_bucket(hash) < config.canary_weight {
        return (config.canary, counter::CANARY);
    }
    (config.active, counter::ACTIVE)
}

/// The group being served, read from a member socket (`ctx->sk`, Linux 5.14+,
/// net/core/filter.c `sk_reuseport_is_valid_access`: PTR_TO_SOCKET, never NULL).
#[inline(always)]
fn group_key(ctx: &SkReuseportContext) -> GroupKey {
    let sk = ctx.sk().sock;
    // SAFETY: the verifier guarantees `sk` points at a valid `bpf_sock`; each
    // field is read with its own 4-byte load, as bpf_sock_is_valid_access wants.
    unsafe {
        let family = core::ptr::read_volatile(&raw const (*sk).family);
        let addr = if family == u32::from(steer_abi::AF_INET6) {
            [
                core::ptr::read_volatile(&raw const (*sk).src_ip6[0]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[1]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[2]),
                core::ptr::read_volatile(&raw const (*sk).src_ip6[3]),
            ]
        } else {
            [core::ptr::read_volatile(&raw const (*sk).src_ip4), 0, 0, 0]
        };
        GroupKey {
            family: family as u16,
            protocol: core::ptr::read_volatile(&raw const (*sk).protocol) as u16,
            port: core::ptr::read_volatile(&raw const (*sk).src_port) as u16,
            pad: 0,
            ifindex: core::ptr::read_volatile(&raw const (*sk).bound_dev_if),
            addr,
        }
    }
}

#[inline(always)]
fn count(key: &GroupKey, index: usize) {
    if index >= counter::COUNT {
        return;
    }
    if let Some(c) = STEER_GSTATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it; index is bounded above.
        unsafe { (*c).values[index] += 1 };
    }
    if let Some(c) = STEER_GLOBAL.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { (*c).values[index] += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
