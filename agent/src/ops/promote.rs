//! `steer promote PID`: send new connections of PID's reuseport groups to PID's
//! sockets (or a share of them with `--weight`).
use std::{collections::BTreeMap, os::fd::AsFd as _, path::Path};

use serde::Serialize;
use steer_abi::{GroupConfig, GroupKey, SlotMeta, SlotRange, WEIGHT_SCALE};

use super::OpError;
use crate::{
    failpoint,
    policy::{self, Outcome, Slots},
    preflight,
    proc::Process,
    sockets::{self, Candidate},
    state::{Instance, OpenInstances, StateDir},
};

/// What to promote.
#[derive(Debug, Clone)]
pub struct Request {
    pub pid: u32,
    /// Only these ports (empty: every listening port of the process).
    pub ports: Vec<u16>,
    /// Percent of new connections, 1..=100.
    pub weight: u32,
    /// Take over sockets that another sockarray holds (another state
    /// directory, or one removed without `steer detach`).
    pub take_over: bool,
    /// A person asked (the CLI, `steer reload`): the configuration is marked
    /// as the operator's. The daemon's promotes are not, and leave a marked
    /// configuration alone for the generations it names.
    pub by_operator: bool,
    /// For UDP groups: the flow table's settings (`--udp-flows`,
    /// `--udp-flow-timeout`); `None`s keep the group's.
    pub udp: policy::UdpSettings,
    /// Steer in select-only mode (`--no-migrate`) when this makes the
    /// instance; an instance that holds groups keeps the mode it has.
    pub no_migrate: bool,
}

/// What happened to one group.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub group: String,
    pub pid: u32,
    pub sockets: usize,
    pub first_slot: u32,
    pub outcome: Outcome,
    /// Whether the configuration changed (false for "already active").
    pub changed: bool,
    /// The group's configuration generation after the change.
    pub generation: u64,
    /// Pids of the generation that was active before, if any.
    pub previous_pids: Vec<u32>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = if self.sockets == 1 { "" } else { "s" };
        write!(
            f,
            "{}: {} pid {} ({} socket{s}, slot {})",
            self.group, self.outcome, self.pid, self.sockets, self.first_slot
        )?;
        if !self.previous_pids.is_empty() {
            let pids: Vec<String> = self.previous_pids.iter().map(u32::to_string).collect();
            write!(f, "; previous pid {}", pids.join(","))?;
        }
        Ok(())
    }
}

/// One group's decided change, before anything is written.
struct Plan {
    key: GroupKey,
    sockets: Vec<Candidate>,
    range: SlotRange,
    /// True when the sockets must be inserted into `range`.
    fill: bool,
    /// Slots that hold some of these sockets in a stale layout; freed before
    /// those sockets go into `range`, where they come first (`sockets` is
    /// ordered so).
    stale: Vec<u32>,
    config: GroupConfig,
    outcome: Outcome,
    previous_pids: Vec<u32>,
}

/// Runs a promote. Every refusal happens before the first write.
pub fn run(state_dir: &Path, req: &Request) -> Result<Vec<Change>, OpError> {
    preflight::all()?;
    run_kept(state_dir, req, &mut OpenInstances::default())
}

/// [`run`] for a caller that has run the preflight checks already and keeps
/// the instances it wrote open in `open` (the daemon): the same plan and apply.
pub fn run_kept(state_dir: &Path, req: &Request, open: &mut OpenInstances) -> Result<Vec<Change>, OpError> {
    let process = Process::open(req.pid)?;
    let listening = sockets::listening_sockets(&process, &req.ports)?;
    // Every port named must match: a typo in one of several is not a partial success.
    let missing: Vec<u16> =
        req.ports.iter().copied().filter(|p| !listening.iter().any(|(_, l)| l.addr.port() == *p)).collect();
    if !missing.is_empty() {
        return Err(sockets::SocketError::NoListeners {
            pid: process.pid,
            comm: process.comm.clone(),
            ports: super::ports_phrase(&missing),
        }
        .into());
    }
    failpoint::hit(failpoint::PROMOTE_DISCOVERED);
    let candidates = sockets::duplicate(&process, &listening)?;
    failpoint::hit(failpoint::PROMOTE_DUPLICATED);
    if candidates.is_empty() {
        return Err(sockets::SocketError::Vanished { pid: req.pid }.into());
    }
    let mut by_group: BTreeMap<GroupKey, Vec<Candidate>> = BTreeMap::new();
    for c in candidates {
        by_group.entry(c.key).or_default().push(c);
    }

    let state = StateDir::open_for_write(state_dir)?;
    // A refused promote leaves no state behind: an instance made for it is removed again.
    let existed = crate::paths::instance_dir(state_dir, process.netns).exists();
    let result = promote_in(&state, &process, by_group, req, open);
    if result.as_ref().is_err_and(|e| e.refused_before_any_write) && !existed {
        let _ = state.remove_instance(process.netns);
    }
    result.map_err(|e| e.error)
}

/// A promote's error, and whether it came before anything was written to the
/// instance (its configuration, slots or attachments).
struct Failed {
    error: OpError,
    refused_before_any_write: bool,
}

/// Plans every group, then applies each; see [`run`].
fn promote_in(
    state: &StateDir,
    process: &Process,
    by_group: BTreeMap<GroupKey, Vec<Candidate>>,
    req: &Request,
    open: &mut OpenInstances,
) -> Result<Vec<Change>, Failed> {
    let early = |error: OpError| Failed { error, refused_before_any_write: true };
    let wanted = crate::state::Wanted::new(req.no_migrate);
    let mut instance =
        state.instance_or_create_kept(process.netns, open, &wanted).map_err(|e| early(e.into()))?;
    if req.take_over {
        // A socket can sit in one sockarray only. One left in another state's
        // map (a directory removed without `steer detach`) leaves it only when
        // that map is freed: when no group runs that state's program any
        // more. So attach this program to every group first, then fill.
        for sockets in by_group.values() {
            if let Some(first) = sockets.first() {
                instance.attach(&first.key, first.dup.as_fd()).map_err(|e| early(e.into()))?;
            }
        }
    }
    let changes = promote_with(&mut instance, process, by_group, req)?;
    open.keep(instance);
    Ok(changes)
}

/// Plans and applies, with `instance` open.
fn promote_with(
    instance: &mut Instance,
    process: &Process,
    by_group: BTreeMap<GroupKey, Vec<Candidate>>,
    req: &Request,
) -> Result<Vec<Change>, Failed> {
    let early = |error: OpError| Failed { error, refused_before_any_write: !req.take_over };
    let late = |error: OpError| Failed { error, refused_before_any_write: false };
    if !req.take_over {
        refuse_owned_elsewhere(instance, process, &by_group).map_err(early)?;
    }
    instance.reclaim().map_err(|e| late(e.into()))?;
    let mut metas = instance.slot_metas().map_err(|e| early(e.into()))?;
    // Slots of closed generations that a configuration still names stay taken.
    policy::reserve_referenced(&mut metas, instance.groups().into_iter().map(|g| g.config));
    let plans = by_group
        .into_iter()
        .map(|(key, sockets)| plan(instance, &mut metas, key, sockets, req))
        .collect::<Result<Vec<_>, _>>()
        .map_err(early)?;

    let mut changes = Vec::with_capacity(plans.len());
    for plan in plans {
        // apply() undoes its own writes when it fails; the groups before it stay.
        let first = changes.is_empty();
        let change = apply(instance, process, plan, req.take_over)
            .map_err(|e| if first { early(e) } else { late(e) })?;
        changes.push(change);
    }
    instance.release_unreferenced().map_err(|e| late(e.into()))?;
    // Every duplicate was dropped inside apply(): none outlives this call.
    Ok(changes)
}

/// One group, one owner: a group this state has no configuration for, one of
/// whose other members sits in another state's sockarray, is that state's.
/// Attaching this state's program would take it over silently; refuse
/// instead, before anything is written (`--take-over` says the operator means it).
fn refuse_owned_elsewhere(
    instance: &Instance,
    process: &Process,
    by_group: &BTreeMap<GroupKey, Vec<Candidate>>,
) -> Result<(), OpError> {
    for (key, sockets) in by_group {
        let Some(first) = sockets.first() else { continue };
        if instance.config(key).is_some() {
            continue;
        }
        let own: Vec<u64> = sockets.iter().map(|c| c.inode).collect();
        let Some((pid, member)) = sockets::other_member(process, key, first.addr, &own) else { continue };
        let used = instance.slot_metas()?;
        let Ok(free) = policy::allocate(&used, instance.info.max_slots, 1) else { continue };
        if instance.held_elsewhere(free.first, member.as_fd())? {
            return Err(crate::state::StateError::GroupOwned { group: sockets::key_label(key), pid }.into());
        }
    }
    Ok(())
}

fn plan(
    instance: &Instance,
    metas: &mut Slots,
    key: GroupKey,
    sockets: Vec<Candidate>,
    req: &Request,
) -> Result<Plan, OpError> {
    let current = instance.config(&key);
    let cookies: Vec<u64> = sockets.iter().map(|c| c.cookie).collect();
    let existing = current.as_ref().and_then(|c| policy::find_range(c, metas, &cookies));
    if let (Some(c), Some(range)) = (current, existing)
        && policy::operator_holds(&c, true, req.by_operator)
    {
        let outcome = Outcome::HeldByOperator;
        return Ok(Plan {
            key,
            sockets,
            range,
            fill: false,
            stale: Vec::new(),
            config: c,
            outcome,
            previous_pids: Vec::new(),
        });
    }
    // Read before the stale slots leave `metas` below.
    let grows = current.as_ref().is_some_and(|c| policy::grows(c.active, metas, &cookies));
    let mut sockets = sockets;
    let (range, fill, stale) = match existing {
        Some(range) => (range, false, Vec::new()),
        None => {
            let stale: Vec<u32> =
                metas.iter().filter(|(_, m)| cookies.contains(&m.cookie)).map(|(s, _)| *s).collect();
            // A full promote replaces the group's previous generation (unless it
            // grows the active one): the slots of a previous generation that has
            // exited are free for it, though the configuration names them now.
            if let Some(c) = current.as_ref()
                && req.weight >= WEIGHT_SCALE
                && !grows
            {
                policy::unreserve(metas, c.previous);
            }
            // Allocated while the stale slots still count as used: the sockets new to
            // the sockarray enter `range` before the stale slots are emptied (see apply).
            let range = policy::allocate(metas, instance.info.max_slots, sockets.len() as u32)
                .map_err(OpError::policy(&key))?;
            let moving: Vec<u64> = stale.iter().filter_map(|s| metas.remove(s)).map(|m| m.cookie).collect();
            // The sockets that move first, then the ones new to the sockarray (see apply).
            sockets.sort_by_key(|c| !moving.contains(&c.cookie));
            for s in range.first..range.first + range.count {
                // Reserve the slots so the next group's plan does not take them.
                metas.insert(s, SlotMeta { cookie: u64::MAX, ..SlotMeta::default() });
            }
            (range, true, stale)
        }
    };
    let (mut config, outcome) = policy::promote(current.as_ref(), range, req.weight.min(WEIGHT_SCALE), fill)
        .map_err(OpError::policy(&key))?;
    if outcome.changed() {
        config.flags = policy::flags_after_promote(&config, req.by_operator);
    }
    if key.protocol == steer_abi::IPPROTO_UDP {
        config.flags = req.udp.apply(config.flags);
    }
    // The active generation grown by sockets that listened after it was
    // promoted: still the same generation, so the previous one stays the
    // rollback target (and its slots are not released).
    let grown = grows && outcome == Outcome::Promoted;
    if grown && let Some(c) = current.as_ref() {
        config.previous = c.previous;
    }
    // The generation that stops being active (a canary leaves it active).
    let previous_pids = current
        .filter(|c| outcome == Outcome::Promoted && !grown && !c.active.is_none() && c.active != range)
        .map(|c| pids_of(metas, c.active))
        .unwrap_or_default();
    Ok(Plan { key, sockets, range, fill, stale, config, outcome, previous_pids })
}

/// Applies a plan. A socket sits in one sockarray slot at most, so the sockets
/// of `stale` slots must leave them before they enter `range`. When a stale
/// slot is one the program selects from (the active or canary range), the
/// sockets new to the sockarray go in first, at the end of `range`, and the
/// group points at them alone while the others move; a new connection never
/// meets an empty slot, which would hand it to the kernel's own pick among all
/// the group's listeners, closing ones included. (A generation with no new
/// socket never moves: `find_range` finds it where it sits.)
fn apply(instance: &mut Instance, process: &Process, plan: Plan, take_over: bool) -> Result<Change, OpError> {
    let Plan { key, sockets, range, fill, stale, config, outcome, previous_pids } = plan;
    let current = instance.config(&key).unwrap_or_default();
    if fill {
        let moving = stale.len().min(sockets.len());
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut filled = Vec::with_capacity(sockets.len());
        let mut fill = |instance: &mut Instance, i: usize| -> Result<(), OpError> {
            let socket = &sockets[i];
            let slot = range.first + i as u32;
            let meta = SlotMeta {
                cookie: socket.cookie,
                pid: process.pid,
                fd: socket.fd,
                inode: socket.inode,
                since,
                group: key,
                pad: 0,
            };
            instance.fill_slot(slot, &socket.dup, &meta, take_over)?;
            filled.push(slot);
            if filled.len() == 1 && sockets.len() > 1 {
                failpoint::hit(failpoint::SLOT_FILLED);
            }
            Ok(())
        };
        let selected = |slot: &u32| [current.active, current.canary].iter().any(|r| r.contains(*slot));
        let interim = (moving > 0 && moving < sockets.len() && stale.iter().any(selected))
            .then(|| policy::interim(&config, range, moving as u32));
        let result = (moving..sockets.len())
            .try_for_each(|i| fill(instance, i))
            .and_then(|()| interim.map_or(Ok(()), |c| instance.set_config(&key, &c).map_err(OpError::from)))
            .inspect(|()| {
                if interim.is_some() {
                    failpoint::hit(failpoint::PROMOTE_INTERIM);
                }
            })
            .and_then(|()| stale.iter().try_for_each(|slot| instance.free_slot(*slot).map_err(OpError::from)))
            .inspect(|()| {
                if !stale.is_empty() {
                    failpoint::hit(failpoint::PROMOTE_STALE_FREED);
                }
            })
            .and_then(|()| (0..moving).try_for_each(|i| fill(instance, i)))
            .and_then(|()| sockets::still_held(process, &sockets).map_err(OpError::from));
        if let Err(e) = result {
            for slot in filled {
                let _ = instance.free_slot(slot);
            }
            if interim.is_some() {
                let _ = instance.set_config(&key, &current);
            }
            return Err(e);
        }
        failpoint::hit(failpoint::PROMOTE_FILLED);
    }
    if config != instance.config(&key).unwrap_or_default() || fill {
        instance.set_config(&key, &config)?;
        failpoint::hit(failpoint::PROMOTE_CONFIGURED);
    }
    // Attach after the configuration is in place, so the program's first run
    // already finds it. Attaching again is harmless and re-arms a group that
    // emptied and formed again.
    if let Some(first) = sockets.first() {
        instance.attach(&key, first.dup.as_fd())?;
        failpoint::hit(failpoint::PROMOTE_ATTACHED);
    }
    tracing::info!(pid = process.pid, group = %sockets::key_label(&key), first_slot = range.first, generation = config.generation, %outcome, "promote");
    let change = Change {
        group: sockets::key_label(&key),
        pid: process.pid,
        sockets: sockets.len(),
        first_slot: range.first,
        changed: outcome.changed(),
        generation: config.generation,
        outcome,
        previous_pids,
    };
    drop(sockets); // close the duplicates now
    Ok(change)
}

/// Kept here for the commands that name it; it lives with the state now.
pub use crate::state::pids_of;
