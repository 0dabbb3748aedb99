//! The ABI between the steer eBPF program and the agent: map names, pin names,
//! map keys and values, counter indices, and the ABI version.
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding and a size assertion,
//! so both sides agree byte for byte. With the `user` feature the types implement
//! `aya::Pod` so the agent can read and write them through aya's typed maps.
#![no_std]

/// Bumped whenever a map layout or the program's meaning changes. A pinned state
/// directory written by another ABI version is refused by the agent.
pub const ABI_VERSION: u32 = 3;

/// Number of slots in the REUSEPORT_SOCKARRAY (one slot per steered socket).
pub const MAX_SLOTS: u32 = 8192;
/// Number of reuseport groups one state instance can steer (the per-CPU
/// counters take `MAX_GROUPS * size_of::<Counters>()` bytes per CPU: 96 KiB).
pub const MAX_GROUPS: u32 = 1024;
/// The canary share is expressed in percent.
pub const WEIGHT_SCALE: u32 = 100;

/// How the program turns a connection's hash (`ctx->hash`, for TCP the kernel's
/// `inet_ehashfn` of the 4-tuple, a jhash) into its two decisions. Each takes its
/// own half of the hash, so they are independent: with the same bits, a canary of
/// `w` % would only ever see hashes with `hash % 100 < w`, and the socket inside
/// it (`hash % count`) would follow from that (at 10 % and 4 sockets, 3:3:2:2; at
/// 1 %, every canary connection on its first socket).
pub mod pick {
    use super::WEIGHT_SCALE;

    /// The connection's bucket for the canary share, `0..WEIGHT_SCALE`, from the
    /// hash's high 16 bits: the canary takes the buckets below its weight.
    #[inline(always)]
    #[must_use]
    pub const fn share_bucket(hash: u32) -> u32 {
        ((hash >> 16) * WEIGHT_SCALE) >> 16
    }

    /// The index of the socket inside a generation of `count` sockets, from the
    /// hash's low 16 bits (0 when `count` is 0).
    #[inline(always)]
    #[must_use]
    pub const fn socket_index(hash: u32, count: u32) -> u32 {
        match (hash & 0xffff).checked_rem(count) {
            Some(i) => i,
            None => 0,
        }
    }
}

/// `AF_INET` and `AF_INET6` as the kernel reports them in `bpf_sock.family`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u16 = 17;

/// The UDP flow table: which slot each flow of a UDP group was first sent to,
/// so that its later datagrams follow it while that socket lives.
///
/// A flow is a datagram's 4-tuple, as the kernel's own hash of it names it
/// (`ctx->hash`, `udp_ehashfn`/`udp6_ehashfn` of the addresses and ports: a
/// jhash with a boot-time secret). The table is an array of
/// [`ENTRIES`](flows::ENTRIES) buckets of one `u64` each, written with a
/// single store, so a concurrent reader never sees half an entry:
///
/// | bits | field |
/// |---|---|
/// | 63..32 | the flow's hash (the tag) |
/// | 31..16 | the slot |
/// | 15..0 | when the flow was last seen, in [`TICK_SHIFT`](flows::TICK_SHIFT) ticks, modulo 2^16 |
///
/// A flow's bucket is [`bucket`](flows::bucket) of its hash and port. A new
/// flow whose bucket holds another flow that is still live (seen within the
/// group's timeout) does not displace it: it is steered as usual and not
/// remembered (`flow_table_full`), so a flood of new source ports cannot cut
/// the exchanges already in progress. Memory is fixed: 8 bytes a bucket.
pub mod flows {
    /// Buckets in the table (a power of two): 512 KiB per instance.
    pub const ENTRIES: u32 = 1 << 16;
    /// CLOCK_MONOTONIC (ns) `>> TICK_SHIFT` is the table's clock: 1.07 s
    /// ticks. The program reads it from `jiffies` ([`now_ns`]).
    pub const TICK_SHIFT: u32 = 30;
    /// Global (u64) the agent sets before load: the length of a jiffy in ns
    /// (`TICK_NSEC`, the resolution of CLOCK_MONOTONIC_COARSE).
    pub const JIFFY_NS_GLOBAL: &str = "STEER_JIFFY_NS";
    /// Global (u64) the agent sets before load: [`initial_jiffies`] of the
    /// kernel's HZ.
    pub const INITIAL_JIFFIES_GLOBAL: &str = "STEER_INITIAL_JIFFIES";

    /// `INITIAL_JIFFIES` (include/linux/jiffies.h): the value `jiffies` has
    /// at boot, `(unsigned long)(unsigned int)(-300 * HZ)`, so that it wraps
    /// 32 bits five minutes after boot.
    #[must_use]
    pub const fn initial_jiffies(hz: u64) -> u64 {
        0_u32.wrapping_sub((300 * hz) as u32) as u64
    }

    /// CLOCK_MONOTONIC in ns, to within a jiffy, from `jiffies` (which the
    /// verifier inlines as one load, where a clock helper costs about 40 ns
    /// a datagram here).
    #[inline(always)]
    #[must_use]
    pub const fn now_ns(jiffies: u64, initial: u64, jiffy_ns: u64) -> u64 {
        jiffies.wrapping_sub(initial).wrapping_mul(jiffy_ns)
    }
    /// The default idle timeout, in ticks (about 30 s: QUIC's common idle
    /// timeout, and far beyond a DNS exchange).
    pub const DEFAULT_TIMEOUT_TICKS: u32 = 28;
    /// The longest idle timeout a group can have, in ticks (the clock wraps at 2^16).
    pub const MAX_TIMEOUT_TICKS: u32 = 0x7fff;

    /// The bucket of a flow: its hash mixed with the group's port, so that two
    /// groups' flows with one hash rarely share a bucket.
    #[inline(always)]
    #[must_use]
    pub const fn bucket(hash: u32, port: u16) -> u32 {
        (hash ^ (port as u32).wrapping_mul(0x9e37_79b1)) & (ENTRIES - 1)
    }

    /// An entry for `hash` in `slot`, seen at `tick`.
    #[inline(always)]
    #[must_use]
    pub const fn entry(hash: u32, slot: u32, tick: u32) -> u64 {
        (hash as u64) << 32 | ((slot & 0xffff) as u64) << 16 | (tick & 0xffff) as u64
    }

    /// The hash an entry remembers.
    #[inline(always)]
    #[must_use]
    pub const fn tag(entry: u64) -> u32 {
        (entry >> 32) as u32
    }

    /// The slot an entry remembers.
    #[inline(always)]
    #[must_use]
    pub const fn slot(entry: u64) -> u32 {
        (entry >> 16) as u32 & 0xffff
    }

    /// Whether an entry was last seen more than `timeout` ticks before `now`
    /// (an empty bucket is idle).
    #[inline(always)]
    #[must_use]
    pub const fn idle(entry: u64, now: u32, timeout: u32) -> bool {
        entry == 0 || (now.wrapping_sub(entry as u32) & 0xffff) > timeout
    }
}

/// Names of the maps inside the eBPF object (also their kernel names, so at most
/// 15 bytes each).
pub mod map_names {
    pub const SOCKETS: &str = "STEER_SOCKETS";
    pub const GROUPS: &str = "STEER_GROUPS";
    pub const SLOTS: &str = "STEER_SLOTS";
    pub const GROUP_STATS: &str = "STEER_GSTATS";
    pub const SLOT_STATS: &str = "STEER_SSTATS";
    pub const GLOBAL_STATS: &str = "STEER_GLOBAL";
    pub const INFO: &str = "STEER_INFO";
    pub const FLOWS: &str = "STEER_FLOWS";
    /// The configurations the program reads: two entries per group index,
    /// the one in use named by [`CURRENT`] (`steer_abi::published`).
    pub const CONFIGS: &str = "STEER_CONFIGS";
    /// Per group index: 0 (no configuration), 1 or 2 (which of the group's
    /// two [`CONFIGS`] entries is in use).
    pub const CURRENT: &str = "STEER_CURRENT";
}

/// Name of the program inside the eBPF object (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`).
pub const PROGRAM_NAME: &str = "steer";
/// Name of the select-only entry point (`BPF_SK_REUSEPORT_SELECT`).
pub const SELECT_PROGRAM_NAME: &str = "steer_select";
/// Global ([`GroupKey`]) the agent sets before loading either entry point:
/// every group has its own program instance, which serves that group only.
pub const GROUP_GLOBAL: &str = "STEER_GROUP";
/// Global (`u32`, below [`MAX_GROUPS`]) the agent sets before load: the
/// group's index into the configurations ([`published`]) and its counters.
pub const GROUP_INDEX_GLOBAL: &str = "STEER_GROUP_INDEX";

/// How the agent publishes a group's configuration to the program without a
/// torn read and without a hash lookup per packet. The program instance of
/// group index `i` reads `CURRENT[i]`: 0 means no configuration; 1 or 2 names
/// the entry `CONFIGS[2 * i + CURRENT[i] - 1]`. The agent writes the entry not
/// in use, then switches `CURRENT[i]` with a single 4-byte store. Both are
/// array lookups, which the verifier inlines.
pub mod published {
    /// Entries of `STEER_CONFIGS`: two per group index.
    pub const CONFIGS: u32 = super::MAX_GROUPS * 2;

    /// The `STEER_CONFIGS` entry `current` names for group index `index`, or
    /// `None` when `current` is 0 (no configuration).
    #[inline(always)]
    #[must_use]
    pub const fn entry(index: u32, current: u32) -> Option<u32> {
        match current {
            1 | 2 => Some(index * 2 + current - 1),
            _ => None,
        }
    }

    /// The `CURRENT` value that names the entry not in use: where the next
    /// configuration goes.
    #[inline(always)]
    #[must_use]
    pub const fn next(current: u32) -> u32 {
        if current == 1 { 2 } else { 1 }
    }
}

/// The listener watcher (a second object, `steer-watch`, loaded by the daemon).
pub mod watch {
    /// Program name: a tracepoint on `sock:inet_sock_set_state`.
    pub const PROGRAM_NAME: &str = "steer_watch";
    /// Program name: a tracepoint on `task:task_newtask` that reports the forks of
    /// the processes in [`WATCHED`].
    pub const FORK_PROGRAM_NAME: &str = "steer_watch_fork";
    /// Hash map, tgid to 1: the processes whose forks are reported (the daemon
    /// keeps the holders of promoted generations and their same-named parents here).
    pub const WATCHED: &str = "STEER_WATCHED";
    /// Capacity of [`WATCHED`].
    pub const WATCHED_MAX: u32 = 1024;
    /// Per-CPU array of one u64: events lost because the ring buffer was full.
    pub const DROPS: &str = "STEER_WATCH_DROPS";
    /// Hash map, port (host order) to 1: with [`PORT_FILTER`] set, only listen
    /// and close events on these ports are reported (the daemon's `--port`).
    pub const PORTS: &str = "STEER_WATCH_PORTS";
    /// Capacity of [`PORTS`].
    pub const PORTS_MAX: u32 = 256;
    /// Global (u32) the daemon sets before load: 1 when [`PORTS`] filters events.
    pub const PORT_FILTER: &str = "STEER_PORT_FILTER";
    /// Hash map, network namespace inode (`net->ns.inum`) to 1: with
    /// [`NETNS_FILTER`] set, the raw programs report only listen and close
    /// events of sockets in these namespaces (the daemon's `--netns`).
    pub const NETNS: &str = "STEER_WATCH_NETNS";
    /// Capacity of [`NETNS`].
    pub const NETNS_MAX: u32 = 256;
    /// Global (u32) the daemon sets before load: 1 when [`NETNS`] filters events.
    pub const NETNS_FILTER: &str = "STEER_NETNS_FILTER";
    /// `CLONE_THREAD` (include/uapi/linux/sched.h): a new thread, not a process.
    pub const CLONE_THREAD: u64 = 0x0001_0000;
    /// The ring buffer of [`super::ListenEvent`]s.
    pub const EVENTS: &str = "STEER_EVENTS";
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// `TCP_LISTEN` (include/net/tcp_states.h).
    pub const TCP_LISTEN: i32 = 10;
    /// `TCP_CLOSE` (include/net/tcp_states.h).
    pub const TCP_CLOSE: i32 = 7;
    /// [`super::ListenEvent::kind`]: a socket started listening.
    pub const KIND_LISTEN: u32 = 1;
    /// [`super::ListenEvent::kind`]: a listening socket closed (TCP_LISTEN to
    /// TCP_CLOSE). Not a connection's child socket, which leaves the listener's
    /// copied state for TCP_SYN_RECV at every accepted connection.
    pub const KIND_CLOSE: u32 = 2;
    /// [`super::ListenEvent::kind`]: a process in [`WATCHED`] forked
    /// [`super::ListenEvent::child`]. A server that closes listeners and then forks
    /// the workers of its next generation (nginx lowering `worker_processes`) shows
    /// that generation here, before the dropped listeners close.
    pub const KIND_FORK: u32 = 3;

    /// Program name: a raw tracepoint (`BPF_RAW_TRACEPOINT_OPEN`, no tracefs) on
    /// `inet_sock_set_state(sk, oldstate, newstate)`, reporting what
    /// [`PROGRAM_NAME`] reports.
    pub const RAW_PROGRAM_NAME: &str = "steer_watch_raw";
    /// Program name: a raw tracepoint on `task_newtask(task, clone_flags)`,
    /// reporting what [`FORK_PROGRAM_NAME`] reports.
    pub const RAW_FORK_PROGRAM_NAME: &str = "steer_watch_fork_raw";
    /// Globals of the watcher object that the daemon sets before load, from the
    /// kernel's BTF: byte offsets in `struct sock` of `skc_num` (local port, host
    /// order, u16), `skc_family` (u16) and `sk_protocol` (u16), and in
    /// `struct task_struct` of `pid` (i32).
    pub const OFF_SKC_NUM: &str = "STEER_OFF_SKC_NUM";
    pub const OFF_SKC_FAMILY: &str = "STEER_OFF_SKC_FAMILY";
    pub const OFF_SK_PROTOCOL: &str = "STEER_OFF_SK_PROTOCOL";
    pub const OFF_TASK_PID: &str = "STEER_OFF_TASK_PID";
    /// `sock.__sk_common.skc_net.net`: the socket's network namespace.
    pub const OFF_SKC_NET: &str = "STEER_OFF_SKC_NET";
    /// `net.ns.inum`: a network namespace's inode number.
    pub const OFF_NET_INUM: &str = "STEER_OFF_NET_INUM";
}

/// Counter indices. Every invocation of the program increments exactly one of
/// the path counters (`ACTIVE` to `FLOW_TO_ACTIVE`), so their sum is the number
/// of invocations; [`counter::FLOW_TABLE_FULL`] counts an event beside them.
pub mod counter {
    /// A new connection was sent to the active generation.
    pub const ACTIVE: usize = 0;
    /// A new connection was sent to the canary generation.
    pub const CANARY: usize = 1;
    /// A queued connection of a closing listener was moved to the active generation.
    pub const MIGRATED: usize = 2;
    /// The group has no configuration; the kernel chose.
    pub const NO_CONFIG: usize = 3;
    /// The chosen slot held no socket (it closed); the kernel chose.
    pub const EMPTY_SLOT: usize = 4;
    /// `bpf_sk_select_reuseport` failed for another reason; the kernel chose.
    pub const HELPER_ERROR: usize = 5;
    /// A queued connection of a closing listener could not go to the active
    /// generation (typically because the closing socket was the active one, and
    /// it leaves the sockarray before its queue migrates); the kernel moved it
    /// to another live member of the group.
    pub const MIGRATED_BY_KERNEL: usize = 6;
    /// A new connection drawn for the canary went to the active generation,
    /// because the canary's socket could not take it (it closed: the canary's
    /// process exited). Without this the kernel would pick among every member
    /// still listening, the demoted previous generation included.
    pub const CANARY_TO_ACTIVE: usize = 7;
    /// A datagram of a UDP flow that a generation other than the active one
    /// and the canary (the previous one, typically) started, kept there
    /// because its socket still lives.
    pub const FLOW_KEPT_PREVIOUS: usize = 8;
    /// A datagram of a UDP flow whose generation's socket closed, or whose
    /// generation was released (`steer reload` drains it), sent to the active
    /// generation, which now keeps the flow.
    pub const FLOW_TO_ACTIVE: usize = 9;
    /// Not a path: a new UDP flow found its bucket of the flow table held by
    /// another live flow, so it was steered without being remembered (its
    /// later datagrams are steered as new flows).
    pub const FLOW_TABLE_FULL: usize = 10;
    /// How many counters are in use.
    pub const COUNT: usize = 11;
    /// The path counters: one of them counts each run.
    pub const PATHS: usize = 10;
    /// Names used by `steer status` and the metrics, in index order.
    pub const NAMES: [&str; COUNT] = [
        "steered_active",
        "steered_canary",
        "migrated",
        "fallback_no_config",
        "fallback_empty_slot",
        "helper_error",
        "migrated_by_kernel",
        "canary_to_active",
        "flow_kept_previous",
        "flow_to_active",
        "flow_table_full",
    ];
}

/// Identifies a reuseport group inside one network namespace: its member
/// sockets' family, protocol, local address, port and bound device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u16,
    /// Local port in host byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
    /// `SO_BINDTODEVICE` interface index, 0 when unbound.
    pub ifindex: u32,
    /// Local address as the kernel stores it (network byte order words). An IPv4
    /// address is in `addr[0]`, the other words are zero.
    pub addr: [u32; 4],
}

/// A run of consecutive sockarray slots holding one generation's sockets in one
/// group. `count == 0` means none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotRange {
    pub first: u32,
    pub count: u32,
}

impl SlotRange {
    pub const NONE: Self = Self { first: 0, count: 0 };

    #[must_use]
    pub const fn is_none(&self) -> bool {
        self.count == 0
    }

    /// Whether `slot` lies inside this range.
    #[must_use]
    pub const fn contains(&self, slot: u32) -> bool {
        slot >= self.first && slot - self.first < self.count
    }
}

/// A group's configuration. The agent replaces the whole value in one map update,
/// so the program never sees a torn configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupConfig {
    /// Bumped on every change of the group's configuration.
    pub generation: u64,
    /// Where new connections go (all of them, or `100 - canary_weight` percent).
    pub active: SlotRange,
    /// The generation that was active before; `rollback` swaps it back.
    pub previous: SlotRange,
    /// Receives `canary_weight` percent of new connections when not empty.
    pub canary: SlotRange,
    /// Share of new connections for the canary, 0..=100.
    pub canary_weight: u32,
    /// [`FLAG_OPERATOR`], [`FLAG_FLOWS_OFF`], [`FLAG_RELEASE`], and in the
    /// high 16 bits the UDP flow table's idle timeout in ticks
    /// ([`flows::TICK_SHIFT`]; 0 means [`flows::DEFAULT_TIMEOUT_TICKS`]).
    pub flags: u32,
    /// The group's entry in the per-CPU counters array (`STEER_GSTATS`,
    /// below [`MAX_GROUPS`]): an array index costs the program no hash
    /// lookup. The agent assigns it when it first configures the group.
    pub stats: u32,
    /// Always zero.
    pub pad: u32,
}

impl GroupConfig {
    /// The UDP flows' idle timeout, in ticks.
    #[inline(always)]
    #[must_use]
    pub const fn flow_timeout(&self) -> u32 {
        match self.flags >> 16 {
            0 => flows::DEFAULT_TIMEOUT_TICKS,
            t => t,
        }
    }
}

/// [`GroupConfig::flags`]: an operator's command (`promote`, `rollback`, a
/// canary by hand) chose this configuration. The daemon leaves it alone for
/// the generations it names, across restarts, until a generation it does not
/// name appears. The program ignores the flags.
pub const FLAG_OPERATOR: u32 = 1;
/// [`GroupConfig::flags`], UDP groups: no flow table; every datagram goes
/// where a new flow would (the active generation, or the canary's share).
pub const FLAG_FLOWS_OFF: u32 = 2;
/// [`GroupConfig::flags`], UDP groups: flows kept on a generation other than
/// the active one and the canary go to the active one (`steer reload` sets
/// it while the old generation drains; a full promote clears it).
pub const FLAG_RELEASE: u32 = 4;
/// The bits of [`GroupConfig::flags`] that hold the flow timeout.
pub const FLOW_TIMEOUT_SHIFT: u32 = 16;

/// Per-CPU counters of one group (or of all groups, in the global map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; 12],
}

/// What the agent remembers about the socket in one sockarray slot. The kernel
/// clears the sockarray slot itself when the socket closes; this record is
/// reclaimed by the agent once the cookie no longer belongs to a listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotMeta {
    /// `SO_COOKIE` of the socket; 0 marks a free slot.
    pub cookie: u64,
    /// The process the socket was taken from.
    pub pid: u32,
    /// The descriptor number in that process.
    pub fd: u32,
    /// Socket inode, as in `/proc/PID/fd`.
    pub inode: u64,
    /// When the slot was filled (`CLOCK_REALTIME` seconds).
    pub since: u64,
    /// The group the socket belongs to.
    pub group: GroupKey,
    /// Always zero.
    pub pad: u32,
}

/// The single entry of the info map: what wrote this state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub abi_version: u32,
    pub max_slots: u32,
    pub max_groups: u32,
    pub pad: u32,
}

/// One event from the watcher, written to the ring buffer from the
/// `sock:inet_sock_set_state` tracepoint in the context of the process that
/// called listen() or closed the socket, or from `task:task_newtask` in the
/// context of a watched process that forked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEvent {
    /// `bpf_ktime_get_ns()` when the state changed (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Process id (tgid) of the caller.
    pub pid: u32,
    /// [`watch::KIND_LISTEN`], [`watch::KIND_CLOSE`] or [`watch::KIND_FORK`].
    pub kind: u32,
    /// Local port, host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6` (0 for a fork).
    pub family: u16,
    /// The new process's pid, for [`watch::KIND_FORK`]; otherwise zero.
    pub child: u32,
    /// `bpf_get_current_comm()`: the calling thread's name.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<ListenEvent>() == 40);
const _: () = assert!(size_of::<GroupKey>() == 28);
const _: () = assert!(size_of::<SlotRange>() == 8);
const _: () = assert!(size_of::<GroupConfig>() == 48);
const _: () = assert!(size_of::<Counters>() == 96);
const _: () = assert!(size_of::<SlotMeta>() == 64);
const _: () = assert!(size_of::<Info>() == 16);
const _: () = assert!(counter::COUNT <= 12);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), Copy, made only of integers, with explicit
    // padding fields, so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::GroupKey {}
    unsafe impl aya::Pod for super::GroupConfig {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::SlotMeta {}
    unsafe impl aya::Pod for super::Info {}
    unsafe impl aya::Pod for super::ListenEvent {}
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
