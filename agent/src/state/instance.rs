//! One network namespace's pinned program and maps, opened from bpffs, with the
//! few operations the commands need on them.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{ProgramInfo, SkReuseport},
};
use steer_abi::{Counters, GroupConfig, GroupKey, Info, SlotMeta, counter, published};

use super::{
    StateError,
    select::{self, Mode},
    sockarray::{self, SockArray},
};
use crate::paths::pins;

/// An opened instance.
pub struct Instance {
    pub dir: PathBuf,
    pub netns: u64,
    pub info: Info,
    sockets: MapData,
    groups: HashMap<MapData, GroupKey, GroupConfig>,
    slots: HashMap<MapData, u32, SlotMeta>,
    group_stats: PerCpuArray<MapData, Counters>,
    slot_stats: PerCpuArray<MapData, u64>,
    global_stats: PerCpuArray<MapData, Counters>,
    /// What the programs read (`steer_abi::published`).
    configs: Array<MapData, GroupConfig>,
    current: Array<MapData, u32>,
    pub mode: Mode,
}

/// The kernel's figures for the programs of an instance (summed over the
/// groups' programs), counted only while `kernel.bpf_stats_enabled` is 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgramFigures {
    /// The first group's program id.
    pub id: u32,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

/// A group's configuration and counters, as read.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub key: GroupKey,
    pub config: GroupConfig,
    pub counters: [u64; counter::COUNT],
}

/// One used slot, as read.
#[derive(Debug, Clone, Copy)]
pub struct SlotView {
    pub slot: u32,
    pub meta: SlotMeta,
    /// Whether the sockarray still holds the socket the meta names.
    pub live: bool,
    /// New connections the program sent to this slot.
    pub hits: u64,
}

fn pinned(dir: &Path, pin: &'static str) -> Result<MapData, StateError> {
    let path = dir.join(pin);
    MapData::from_pin(&path).map_err(|e| StateError::pin("map", path, e))
}

pub(super) fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    dir: &Path,
    pin: &'static str,
) -> Result<T, StateError> {
    let data = pinned(dir, pin)?;
    let map = Map::from_map_data(data).map_err(|e| StateError::pin("map", dir.join(pin), e))?;
    T::try_from(map).map_err(|e| StateError::pin("map", dir.join(pin), e))
}

impl Instance {
    /// Opens the pins in `dir` and checks the ABI version.
    pub fn open(dir: &Path, netns: u64) -> Result<Self, StateError> {
        let info = read_info(dir)?;
        let found = info.abi_version;
        if found != steer_abi::ABI_VERSION {
            let path = dir.to_path_buf();
            return Err(if found == super::upgrade::FROM {
                StateError::AbiOlder { path, found }
            } else {
                StateError::AbiMismatch { path, found, expected: steer_abi::ABI_VERSION }
            });
        }
        Self::open_with(dir, netns, info)
    }

    /// Opens the pins in `dir` whatever ABI wrote them (an upgrade, which
    /// has pinned this ABI's maps beside the older ones).
    pub(super) fn open_any_abi(dir: &Path, netns: u64) -> Result<Self, StateError> {
        Self::open_with(dir, netns, read_info(dir)?)
    }

    fn open_with(dir: &Path, netns: u64, info: Info) -> Result<Self, StateError> {
        let Some(mode) = select::mode_of(dir) else {
            return Err(StateError::Pin {
                what: "program",
                path: dir.join(pins::PROGRAM),
                source: "neither the migrating program nor the select-only marker is pinned".into(),
            });
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            netns,
            info,
            sockets: pinned(dir, pins::SOCKETS)?,
            groups: typed(dir, pins::GROUPS)?,
            slots: typed(dir, pins::SLOTS)?,
            group_stats: typed(dir, pins::GROUP_STATS)?,
            slot_stats: typed(dir, pins::SLOT_STATS)?,
            global_stats: typed(dir, pins::GLOBAL_STATS)?,
            configs: typed(dir, pins::CONFIGS)?,
            current: typed(dir, pins::CURRENT)?,
            mode,
        })
    }

    fn sockarray(&self) -> SockArray<'_> {
        SockArray::new(self.sockets.fd().as_fd())
    }

    /// Attaches the group's own program to the reuseport group `key` of
    /// `socket` (replacing any program attached before; attaching ours again
    /// is harmless), loading it on first use. Only with the state's lock held.
    pub fn attach(&self, key: &GroupKey, socket: BorrowedFd<'_>) -> Result<(), StateError> {
        let index = self.group_index(key)?;
        select::group_program(&self.dir, self.mode, key, index)?
            .attach(socket)
            .map_err(StateError::map("attach (SO_ATTACH_REUSEPORT_EBPF)"))
    }

    /// The index of group `key` (its configuration's, or its program's when
    /// it has a program but no configuration yet), or the lowest index
    /// neither a configuration nor a program uses.
    fn group_index(&self, key: &GroupKey) -> Result<u32, StateError> {
        if let Some(config) = self.config(key) {
            return Ok(config.stats);
        }
        if let Some(index) = select::pinned_index(&self.dir, key) {
            return Ok(index);
        }
        let mut used: std::collections::BTreeSet<u32> =
            self.groups.iter().flatten().map(|(_, c)| c.stats).collect();
        used.extend(select::pinned_indexes(&self.dir));
        (0..self.group_stats.len()).find(|i| !used.contains(i)).ok_or_else(|| {
            StateError::map("group_stats")(aya::maps::MapError::OutOfBounds {
                index: self.group_stats.len(),
                max_entries: self.group_stats.len(),
            })
        })
    }

    /// Removes whatever program the group of `socket` has.
    pub fn detach(socket: BorrowedFd<'_>) -> Result<(), StateError> {
        SkReuseport::detach(socket).map_err(StateError::map("detach (SO_DETACH_REUSEPORT_BPF)"))
    }

    /// The kernel's figures for the groups' programs, summed, or `None` when
    /// the kernel refuses them or no group has a program yet.
    pub fn program_figures(&self) -> Option<ProgramFigures> {
        let figures = |info: ProgramInfo| ProgramFigures {
            id: info.id(),
            run_time: info.run_time(),
            run_count: info.run_count(),
        };
        let each = select::group_programs(&self.dir).into_iter().filter_map(|path| {
            SkReuseport::from_pin(&path, self.mode.attach_type()).ok()?.info().ok().map(figures)
        });
        each.reduce(|sum, f| ProgramFigures {
            id: sum.id,
            run_time: sum.run_time + f.run_time,
            run_count: sum.run_count + f.run_count,
        })
    }

    pub fn config(&self, key: &GroupKey) -> Option<GroupConfig> {
        self.groups.get(key, 0).ok()
    }

    /// Replaces a group's configuration. A group keeps its index (`stats`,
    /// whatever `config` says); a group configured for the first time gets
    /// its program's index, or the lowest one free, with its counters zeroed
    /// first, so the program never counts into another group's entry. The
    /// program's copy is published first and the agent's record second, so a
    /// command killed between the two leaves a record the next command finds
    /// different from what it wants, and writes again.
    pub fn set_config(&mut self, key: &GroupKey, config: &GroupConfig) -> Result<(), StateError> {
        let existing = self.config(key);
        let stats = self.group_index(key)?;
        if existing.is_none() {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| StateError::map("group_stats")(e))?;
            let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])
                .map_err(StateError::map("group_stats"))?;
            self.group_stats.set(stats, zero, 0).map_err(StateError::map("group_stats"))?;
        }
        let config = GroupConfig { stats, pad: 0, ..*config };
        self.publish(stats, Some(&config))?;
        self.groups.insert(key, config, 0).map_err(StateError::map("groups"))
    }

    /// Makes `config` (or none) what the program of group `index` reads: the
    /// entry not in use is written, then `CURRENT[index]` switches to it. The
    /// switch is one map update of a value whose only changing byte is the
    /// lowest (0, 1 or 2), so a reader sees the old value or the new one.
    /// The entry in use is never written.
    fn publish(&mut self, index: u32, config: Option<&GroupConfig>) -> Result<(), StateError> {
        let Some(config) = config else {
            return self.current.set(index, 0, 0).map_err(StateError::map("current"));
        };
        let next = published::next(self.current.get(&index, 0).unwrap_or(0));
        let entry = published::entry(index, next).unwrap_or_default();
        self.configs.set(entry, config, 0).map_err(StateError::map("configs"))?;
        self.current.set(index, next, 0).map_err(StateError::map("current"))
    }

    /// Forgets a group: the program's copy of its configuration (the program
    /// then leaves it to the kernel), the agent's record, and the group's
    /// program pin. Its index is free for the next new group, which zeroes
    /// its counters.
    pub fn remove_group(&mut self, key: &GroupKey) -> Result<(), StateError> {
        if let Some(index) = self.config(key).map(|c| c.stats) {
            self.publish(index, None)?;
        }
        self.groups.remove(key).map_err(StateError::map("groups"))?;
        if let Some(index) = select::pinned_index(&self.dir, key) {
            let _ = std::fs::remove_file(self.dir.join(select::pin_name(index, key)));
        }
        Ok(())
    }

    /// Every configured group with its summed counters, ordered by key.
    #[must_use]
    pub fn groups(&self) -> Vec<GroupView> {
        let mut out: Vec<GroupView> = self
            .groups
            .iter()
            .flatten()
            .map(|(key, config)| GroupView { key, config, counters: self.group_counters(&config) })
            .collect();
        out.sort_by_key(|g| (g.key.port, g.key.family, g.key.addr, g.key.ifindex));
        out
    }

    fn group_counters(&self, config: &GroupConfig) -> [u64; counter::COUNT] {
        self.group_stats.get(&config.stats, 0).map(|v| sum(&v)).unwrap_or_default()
    }

    /// Counters over every group of this instance, including unconfigured ones:
    /// the program counts a configured group's runs in the group's counters
    /// only, and the others' in the global map (so a group's runs leave the
    /// totals when the group is removed).
    #[must_use]
    pub fn global_counters(&self) -> [u64; counter::COUNT] {
        let mut total = self.global_stats.get(&0, 0).map(|v| sum(&v)).unwrap_or_default();
        for (_, config) in self.groups.iter().flatten() {
            for (t, v) in total.iter_mut().zip(self.group_counters(&config)) {
                *t += v;
            }
        }
        total
    }

    /// The records of the used slots, by slot.
    pub fn slot_metas(&self) -> Result<BTreeMap<u32, SlotMeta>, StateError> {
        self.slots.iter().collect::<Result<_, _>>().map_err(StateError::map("slots"))
    }

    /// The used slots with liveness and hit counts.
    pub fn slots(&self) -> Result<Vec<SlotView>, StateError> {
        let metas = self.slot_metas()?;
        let array = self.sockarray();
        Ok(metas
            .iter()
            .map(|(&slot, meta)| {
                let live = array.cookie(slot).ok().flatten() == Some(meta.cookie);
                let hits = self.slot_stats.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0);
                SlotView { slot, meta: *meta, live, hits }
            })
            .collect())
    }

    /// Puts a socket into a slot and records it. Refuses an occupied slot.
    /// With `take_over`, a socket held by another sockarray is taken over:
    /// this instance's program is attached to its group first.
    pub fn fill_slot(
        &mut self,
        slot: u32,
        socket: impl AsFd,
        meta: &SlotMeta,
        take_over: bool,
    ) -> Result<(), StateError> {
        self.reset_hits(slot)?;
        self.slots.insert(slot, meta, 0).map_err(StateError::map("slots"))?;
        crate::failpoint::hit(crate::failpoint::SLOT_RECORDED);
        let mut result = self.sockarray().insert(slot, socket.as_fd(), sockarray::BPF_NOEXIST);
        if take_over && result.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY)) {
            // The socket sits in another sockarray (kernel/bpf/reuseport_array.c,
            // `reuseport_array_update_check`): typically a state directory that was
            // removed without `steer detach`, whose program is still attached and
            // holds its map. Attaching ours releases that program and its map; the
            // kernel frees the map after an RCU grace period, so retry briefly.
            self.attach(&meta.group, socket.as_fd())?;
            for _ in 0..50 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                result = self.sockarray().insert(slot, socket.as_fd(), sockarray::BPF_NOEXIST);
                if !result.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY)) {
                    break;
                }
            }
        }
        if let Err(e) = result {
            let _ = self.slots.remove(&slot);
            if e.raw_os_error() == Some(libc::EBUSY) {
                return Err(StateError::SocketBusy { cookie: meta.cookie, pid: meta.pid, fd: meta.fd });
            }
            return Err(StateError::map("sockets")(e));
        }
        Ok(())
    }

    /// Whether `socket` sits in another sockarray (another state's), found by
    /// putting it into free `slot` of ours and taking it out again. Our
    /// program selects from no slot that no configuration names, so the
    /// moment it sits here changes nothing for traffic.
    pub fn held_elsewhere(&self, slot: u32, socket: BorrowedFd<'_>) -> Result<bool, StateError> {
        match self.sockarray().insert(slot, socket, sockarray::BPF_NOEXIST) {
            Ok(()) => {
                self.sockarray().clear(slot).map_err(StateError::map("sockets"))?;
                Ok(false)
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
            Err(e) => Err(StateError::map("sockets")(e)),
        }
    }

    /// Replaces the record of a used slot (its socket stays where it is).
    pub fn update_slot_meta(&mut self, slot: u32, meta: &SlotMeta) -> Result<(), StateError> {
        self.slots.insert(slot, meta, 0).map_err(StateError::map("slots"))
    }

    /// Empties a slot and forgets its record and counts.
    pub fn free_slot(&mut self, slot: u32) -> Result<(), StateError> {
        self.sockarray().clear(slot).map_err(StateError::map("sockets"))?;
        if self.slots.get(&slot, 0).is_ok() {
            self.slots.remove(&slot).map_err(StateError::map("slots"))?;
        }
        self.reset_hits(slot)
    }

    fn reset_hits(&mut self, slot: u32) -> Result<(), StateError> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| StateError::map("slot_stats")(e))?;
        let zero = PerCpuValues::try_from(vec![0_u64; n]).map_err(StateError::map("slot_stats"))?;
        self.slot_stats.set(slot, zero, 0).map_err(StateError::map("slot_stats"))
    }

    /// Frees every slot whose socket has closed (the kernel already emptied the
    /// sockarray slot; this forgets our record). Returns the freed slots.
    pub fn reclaim(&mut self) -> Result<Vec<u32>, StateError> {
        let dead: Vec<u32> = self.slots()?.into_iter().filter(|s| !s.live).map(|s| s.slot).collect();
        for slot in &dead {
            self.free_slot(*slot)?;
        }
        Ok(dead)
    }

    /// Frees slots that no group's configuration refers to any more (a
    /// generation two promotes back): the program can never select them.
    pub fn release_unreferenced(&mut self) -> Result<(), StateError> {
        let referenced: Vec<steer_abi::SlotRange> = self
            .groups()
            .iter()
            .flat_map(|g| [g.config.active, g.config.previous, g.config.canary])
            .collect();
        let used: Vec<u32> = self.slots()?.iter().map(|s| s.slot).collect();
        for slot in used {
            if !referenced.iter().any(|r| r.contains(slot)) {
                self.free_slot(slot)?;
            }
        }
        Ok(())
    }
}

/// The info record of the instance in `dir`: what wrote it.
fn read_info(dir: &Path) -> Result<Info, StateError> {
    let info_map: Array<MapData, Info> = typed(dir, pins::INFO)?;
    info_map.get(&0, 0).map_err(|e| StateError::pin("info", dir.join(pins::INFO), e))
}

/// Distinct pids recorded for the slots of `range`.
#[must_use]
pub fn pids_of(metas: &BTreeMap<u32, SlotMeta>, range: steer_abi::SlotRange) -> Vec<u32> {
    let mut pids: Vec<u32> = (range.first..range.first + range.count)
        .filter_map(|s| metas.get(&s))
        .filter(|m| m.cookie != 0 && m.cookie != u64::MAX)
        .map(|m| m.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn sum(values: &PerCpuValues<Counters>) -> [u64; counter::COUNT] {
    let mut out = [0_u64; counter::COUNT];
    for cpu in values.iter() {
        for (o, v) in out.iter_mut().zip(cpu.values) {
            *o += v;
        }
    }
    out
}
