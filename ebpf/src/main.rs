//! The steer reuseport program. Every reuseport group gets its own instance of
//! it, with the group and the group's index set before load (globals in
//! `.rodata`, so the verifier sees them as constants): the instance reads its
//! configuration from an array at that index, with no hash lookup per packet
//! (`steer_abi::published`), and selects the active (or canary) generation's
//! socket from the REUSEPORT_SOCKARRAY; a canary whose socket is gone yields
//! its share to the active generation. A UDP group's datagrams of a flow stay
//! with the socket that flow was first sent to while that socket lives (the
//! flow table, `steer_abi::flows`). Anything else unexpected fails open: it
//! returns `SK_PASS` without a selection and the kernel's own hash pick applies
//! (net/core/sock_reuseport.c: `reuseport_select_sock` falls back to
//! `reuseport_select_sock_by_hash` when the program selected nothing). It never
//! returns `SK_DROP`, which would reset a new connection. `steer` is loaded as
//! `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` (Linux 5.14+) and also places a closing
//! listener's queue; `steer_select`, for select-only mode, is the same logic
//! without migration.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, sk_action::SK_PASS},
    helpers::generated::{bpf_jiffies64, bpf_sk_select_reuseport},
    macros::{map, sk_reuseport},
    maps::{Array, HashMap, PerCpuArray},
    programs::SkReuseportContext,
};
use steer_abi::{
    Counters, FLAG_FLOWS_OFF, FLAG_RELEASE, GroupConfig, GroupKey, IPPROTO_UDP, Info, MAX_GROUPS, MAX_SLOTS,
    SlotMeta, SlotRange, counter, flows, pick, published,
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

/// The agent's record of each group's configuration, by group. Not read here
/// (a hash lookup per packet costs about 100 ns): the program reads the copy
/// the agent publishes in [`STEER_CONFIGS`].
#[map(name = "STEER_GROUPS")]
static STEER_GROUPS: HashMap<GroupKey, GroupConfig> =
    HashMap::with_max_entries(MAX_GROUPS, BPF_F_NO_PREALLOC);

/// `BPF_F_NO_PREALLOC` (include/uapi/linux/bpf.h): a hash map's elements are
/// allocated when the agent inserts them, so an instance's memory follows the
/// groups and slots in use, not the maps' capacities. An update still swaps the
/// element whole (kernel/bpf/hashtab.c, `htab_map_update_elem`).
const BPF_F_NO_PREALLOC: u32 = 1;

/// The configurations the program reads, two entries per group index, the one
/// in use named by [`STEER_CURRENT`] (`steer_abi::published`).
#[map(name = "STEER_CONFIGS")]
static STEER_CONFIGS: Array<GroupConfig> = Array::with_max_entries(published::CONFIGS, 0);

/// Per group index: which of its two [`STEER_CONFIGS`] entries is in use (1 or
/// 2), or 0 for none.
#[map(name = "STEER_CURRENT")]
static STEER_CURRENT: Array<u32> = Array::with_max_entries(MAX_GROUPS, 0);

/// Per-CPU counters per group, at the index the group's configuration names
/// (`GroupConfig::stats`): an array lookup, which the verifier inlines, where a
/// hash lookup keyed by the group would cost as much as the configuration's.
#[map(name = "STEER_GSTATS")]
static STEER_GSTATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_GROUPS, 0);

/// The UDP flow table (`steer_abi::flows`): one `u64` per bucket, shared by
/// every CPU and written with single stores.
#[map(name = "STEER_FLOWS")]
static STEER_FLOWS: Array<u64> = Array::with_max_entries(flows::ENTRIES, 0);

/// Per-CPU selections per slot: which socket (and so which generation) got what.
#[map(name = "STEER_SSTATS")]
static STEER_SSTATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Per-CPU counters of the runs for groups without configuration; the agent
/// adds the configured groups' counters to make the instance's totals.
#[map(name = "STEER_GLOBAL")]
static STEER_GLOBAL: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// The agent's record of each used slot (cookie, pid, fd), keyed by slot. Not
/// read here; it lives in the object so that it is created and pinned with the
/// other maps. A hash map, so reading it costs what is used, not its capacity.
#[map(name = "STEER_SLOTS")]
static STEER_SLOTS: HashMap<u32, SlotMeta> = HashMap::with_max_entries(MAX_SLOTS, BPF_F_NO_PREALLOC);

/// ABI version of whoever created the pinned state.
#[map(name = "STEER_INFO")]
static STEER_INFO: Array<Info> = Array::with_max_entries(1, 0);

const ENOENT: i64 = 2;

/// The length of a jiffy in ns and `jiffies` at boot, set by the agent before
/// load from the kernel's HZ (`steer_abi::flows::now_ns`).
#[unsafe(no_mangle)]
static STEER_JIFFY_NS: u64 = 4_000_000;
#[unsafe(no_mangle)]
static STEER_INITIAL_JIFFIES: u64 = flows::initial_jiffies(250);

/// The flow table's clock, in ticks: CLOCK_MONOTONIC read from `jiffies`,
/// one load once the verifier inlines `bpf_jiffies64` (Linux 5.5+).
#[inline(always)]
fn now_tick() -> u32 {
    // SAFETY: reads of statics (the loader rewrote them in .rodata), and a
    // helper without arguments.
    let (jiffy_ns, initial, jiffies) = unsafe {
        (
            core::ptr::read_volatile(&raw const STEER_JIFFY_NS),
            core::ptr::read_volatile(&raw const STEER_INITIAL_JIFFIES),
            bpf_jiffies64(),
        )
    };
    (flows::now_ns(jiffies, initial, jiffy_ns) >> flows::TICK_SHIFT) as u32
}

#[sk_reuseport(migrate)]
pub fn steer(ctx: SkReuseportContext) -> u32 {
    match try_steer(&ctx, ctx.migrating_sk().is_some()) {
        Ok(v) | Err(v) => v,
    }
}

/// Select-only mode (`BPF_SK_REUSEPORT_SELECT`, and kernels before 5.14): the
/// kernel never asks where a closing listener's queue goes.
#[sk_reuseport]
pub fn steer_select(ctx: SkReuseportContext) -> u32 {
    match try_steer(&ctx, false) {
        Ok(v) | Err(v) => v,
    }
}

/// The group this instance serves, set by the agent before load
/// (`EbpfLoader::override_global`). Read with `read_volatile` so the
/// placeholder is not folded in at build time.
#[unsafe(no_mangle)]
static STEER_GROUP: GroupKey = GroupKey { family: 0, protocol: 0, port: 0, pad: 0, ifindex: 0, addr: [0; 4] };

/// The group's index into [`STEER_CURRENT`], [`STEER_CONFIGS`] and
/// [`STEER_GSTATS`], set by the agent before load.
#[unsafe(no_mangle)]
static STEER_GROUP_INDEX: u32 = 0;

/// The group's configuration as the agent last published it (its `stats` is
/// the group's index).
#[inline(always)]
fn config() -> Option<&'static GroupConfig> {
    // SAFETY: a read of a static; the loader rewrote its value in .rodata.
    let index = unsafe { core::ptr::read_volatile(&raw const STEER_GROUP_INDEX) };
    let current = *STEER_CURRENT.get(index)?;
    // The entry in use is never written: the agent writes the other one and
    // then switches `current` (`steer_abi::published`).
    let config = STEER_CONFIGS.get(published::entry(index, current)?)?;
    Some(config)
}

#[inline(always)]
fn try_steer(ctx: &SkReuseportContext, migrating: bool) -> Result<u32, u32> {
    let Some(config) = config() else {
        count_global(counter::NO_CONFIG);
        return Err(SK_PASS);
    };
    // SAFETY: as for `STEER_GROUP_INDEX`; only the two fields used are read
    // (constants to the verifier, which drops the other protocol's branch).
    let (protocol, port) = unsafe {
        (
            core::ptr::read_volatile(&raw const STEER_GROUP.protocol),
            core::ptr::read_volatile(&raw const STEER_GROUP.port),
        )
    };

    let hash = ctx.hash();
    if protocol == IPPROTO_UDP && config.flags & FLAG_FLOWS_OFF == 0 {
        return steer_flow(ctx, port, config, hash);
    }
    let (range, path) = choose(config, migrating, hash);
    if range.is_none() {
        count(config, if migrating { counter::MIGRATED_BY_KERNEL } else { counter::EMPTY_SLOT });
        return Err(SK_PASS);
    }
    let Err(err) = select(ctx, range, hash) else { return selected(config, path) };
    // A migration the program cannot place: the kernel picks another
    // live member (net/core/sock_reuseport.c, `reuseport_migrate_sock`).
    if migrating {
        count(config, counter::MIGRATED_BY_KERNEL);
        return Err(SK_PASS);
    }
    fallback(ctx, config, hash, path, err).map(|_| SK_PASS)
}

/// After the first choice failed with `err`: the canary's socket is gone (its
/// process exited), so its share goes to the active generation, not to the
/// kernel's pick among every member still listening, which includes the
/// demoted previous generation. `Ok` holds the slot selected.
#[inline(always)]
fn fallback(
    ctx: &SkReuseportContext,
    config: &GroupConfig,
    hash: u32,
    path: usize,
    err: i64,
) -> Result<u32, u32> {
    let err = if path == counter::CANARY && !config.active.is_none() {
        match select(ctx, config.active, hash) {
            Ok(slot) => {
                count(config, counter::CANARY_TO_ACTIVE);
                return Ok(slot);
            }
            Err(err) => err,
        }
    } else {
        err
    };
    count(config, if err == -ENOENT { counter::EMPTY_SLOT } else { counter::HELPER_ERROR });
    Err(SK_PASS)
}

/// A UDP datagram: a flow the table remembers goes back to its socket while
/// that socket lives and the flow is not idle; any other goes where a new
/// connection would, and is remembered there.
#[inline(always)]
fn steer_flow(ctx: &SkReuseportContext, port: u16, config: &GroupConfig, hash: u32) -> Result<u32, u32> {
    let Some(bucket) = STEER_FLOWS.get_ptr_mut(flows::bucket(hash, port)) else {
        return steer_new_flow(ctx, config, hash, None);
    };
    let now = now_tick();
    // SAFETY: an 8-byte aligned value of the array; a single load.
    let entry = unsafe { core::ptr::read_volatile(bucket) };
    let live = !flows::idle(entry, now, config.flow_timeout());
    let mut path = None;
    if live && flows::tag(entry) == hash {
        let slot = flows::slot(entry);
        let (in_active, in_canary) = (config.active.contains(slot), config.canary.contains(slot));
        let released = config.flags & FLAG_RELEASE != 0 && !in_active && !in_canary;
        if !released && STEER_SOCKETS.select(ctx, slot) == 0 {
            count_slot(slot);
            if entry as u16 != now as u16 {
                // SAFETY: as above; a single store.
                unsafe { core::ptr::write_volatile(bucket, flows::entry(hash, slot, now)) };
            }
            let path = if in_active {
                counter::ACTIVE
            } else if in_canary {
                counter::CANARY
            } else {
                counter::FLOW_KEPT_PREVIOUS
            };
            return selected(config, path);
        }
        // Its socket closed, or its generation was released: the active one keeps it.
        path = Some(counter::FLOW_TO_ACTIVE);
    } else if live {
        count(config, counter::FLOW_TABLE_FULL);
        return steer_new_flow(ctx, config, hash, None);
    }
    let slot = steer_new_flow(ctx, config, hash, path)?;
    // SAFETY: as above; a single store.
    unsafe { core::ptr::write_volatile(bucket, flows::entry(hash, slot, now)) };
    Ok(SK_PASS)
}

/// A flow the table does not hold (or holds on a socket it cannot keep):
/// the active generation or the canary's share, as for a new connection;
/// `path` overrides the choice with the active generation and its own
/// counter. `Ok` holds the slot selected.
#[inline(always)]
fn steer_new_flow(
    ctx: &SkReuseportContext,
    config: &GroupConfig,
    hash: u32,
    path: Option<usize>,
) -> Result<u32, u32> {
    let (range, path) = match path {
        Some(p) => (config.active, p),
        None => choose(config, false, hash),
    };
    if range.is_none() {
        count(config, counter::EMPTY_SLOT);
        return Err(SK_PASS);
    }
    match select(ctx, range, hash) {
        Ok(slot) => {
            count(config, path);
            Ok(slot)
        }
        Err(err) => fallback(ctx, config, hash, path, err),
    }
}

/// Selects the socket of `range` that the hash's low bits pick, and counts
/// the selection on that slot; `Ok` holds the slot, `Err` the helper's
/// negative errno.
#[inline(always)]
fn select(ctx: &SkReuseportContext, range: SlotRange, hash: u32) -> Result<u32, i64> {
    let slot = range.first + pick::socket_index(hash, range.count);
    match STEER_SOCKETS.select(ctx, slot) {
        0 => {
            count_slot(slot);
            Ok(slot)
        }
        err => Err(err),
    }
}

/// One more selection of `slot`'s socket.
#[inline(always)]
fn count_slot(slot: u32) {
    if let Some(hits) = STEER_SSTATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *hits += 1 };
    }
}

/// Counts a successful selection on `path` and lets the kernel use it.
#[inline(always)]
fn selected(config: &GroupConfig, path: usize) -> Result<u32, u32> {
    count(config, path);
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

/// Counts a run on `index` for the group. The instance's totals are the sum of
/// its groups' plus [`count_global`]'s runs for groups without configuration
/// (the agent adds them up): one counter to touch per run, not two.
#[inline(always)]
fn count(config: &GroupConfig, index: usize) {
    if index >= counter::COUNT {
        return;
    }
    if let Some(c) = STEER_GSTATS.get_ptr_mut(config.stats) {
        // SAFETY: per-CPU value, only this CPU writes it; index is bounded above.
        unsafe { (*c).values[index] += 1 };
    }
}

/// Counts a run on `index` for the whole instance only (a group without
/// configuration has no counters of its own).
#[inline(always)]
fn count_global(index: usize) {
    if index >= counter::COUNT {
        return;
    }
    if let Some(c) = STEER_GLOBAL.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it; index is bounded above.
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
