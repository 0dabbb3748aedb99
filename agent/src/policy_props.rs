//! Property tests of the slot and generation policy: random sequences of
//! promotes (new generations, weighted ones, grown ones, two groups at once),
//! rollbacks, generations that exit and upkeep, run against a model of one
//! instance's sockarray. The model composes the policy as `ops::promote`,
//! `ops::rollback` and `state::Instance::{reclaim, release_unreferenced}` do,
//! without the kernel: a slot is live while the socket recorded in it is open.
//! After every operation no slot leaks, no two groups' ranges overlap, a
//! group's active, previous and canary ranges are disjoint, and every
//! configuration is valid.
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use steer_abi::GroupKey;

use super::*;

/// Small enough that the sockarray fills up now and then.
const MAX_SLOTS: u32 = 12;
const GROUPS: u16 = 3;

fn key(group: u16) -> GroupKey {
    GroupKey { family: 2, protocol: 6, port: 8000 + group, ..GroupKey::default() }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new process listens on `group` with `sockets` sockets and is promoted.
    Promote {
        group: u16,
        sockets: u32,
        weight: u32,
    },
    /// A new process listens on two groups and is promoted in both at once.
    PromoteTwo {
        groups: (u16, u16),
        sockets: u32,
        weight: u32,
    },
    /// An earlier generation of `group` (the `which`-th, modulo) is promoted again.
    Repromote {
        group: u16,
        which: usize,
        weight: u32,
    },
    /// The active generation of `group` listens on `extra` more sockets and is promoted.
    Grow {
        group: u16,
        extra: u32,
    },
    Rollback {
        group: u16,
    },
    /// A generation's process exits: its sockets close.
    Exit {
        group: u16,
        which: usize,
    },
    /// The daemon's upkeep: reclaim, then release what no configuration refers to.
    Upkeep,
}

fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![3 => Just(WEIGHT_SCALE), 1 => 1..WEIGHT_SCALE]
}

fn op() -> impl Strategy<Value = Op> {
    let group = 0..GROUPS;
    prop_oneof![
        4 => (group.clone(), 1..4_u32, weight()).prop_map(|(group, sockets, weight)| Op::Promote { group, sockets, weight }),
        1 => (group.clone(), 1..GROUPS, 1..3_u32, weight()).prop_map(|(a, d, sockets, weight)| Op::PromoteTwo {
            groups: (a, (a + d) % GROUPS),
            sockets,
            weight
        }),
        2 => (group.clone(), any::<usize>(), weight()).prop_map(|(group, which, weight)| Op::Repromote { group, which, weight }),
        1 => (group.clone(), 1..3_u32).prop_map(|(group, extra)| Op::Grow { group, extra }),
        2 => group.clone().prop_map(|group| Op::Rollback { group }),
        3 => (group, any::<usize>()).prop_map(|(group, which)| Op::Exit { group, which }),
        1 => Just(Op::Upkeep),
    ]
}

/// One promotion planned for one group, as `ops::promote::plan` makes it.
struct Plan {
    key: GroupKey,
    cookies: Vec<u64>,
    range: SlotRange,
    fill: bool,
    stale: Vec<u32>,
    config: GroupConfig,
}

/// One instance: the slot records, the groups' configurations, and which
/// sockets are open (the kernel empties a closed socket's sockarray slot).
#[derive(Default)]
struct Model {
    metas: Slots,
    configs: BTreeMap<GroupKey, GroupConfig>,
    open: BTreeSet<u64>,
    /// Every generation ever started, per group: its sockets' cookies.
    generations: BTreeMap<u16, Vec<Vec<u64>>>,
    next_cookie: u64,
}

impl Model {
    fn new_sockets(&mut self, n: u32) -> Vec<u64> {
        (0..n)
            .map(|_| {
                self.next_cookie += 1;
                self.open.insert(self.next_cookie);
                self.next_cookie
            })
            .collect()
    }

    fn live(&self, slot: u32) -> bool {
        self.metas.get(&slot).is_some_and(|m| self.open.contains(&m.cookie))
    }

    /// `Instance::reclaim`: forgets the records of closed sockets.
    fn reclaim(&mut self) {
        let open = &self.open;
        self.metas.retain(|_, m| open.contains(&m.cookie));
    }

    /// `Instance::release_unreferenced`.
    fn release_unreferenced(&mut self) {
        let referenced: Vec<SlotRange> = self.configs.values().flat_map(ranges).collect();
        self.metas.retain(|slot, _| referenced.iter().any(|r| r.contains(*slot)));
    }

    /// `ops::promote::plan` for one group.
    fn plan(&self, metas: &mut Slots, key: GroupKey, cookies: Vec<u64>, weight: u32) -> Option<Plan> {
        let current = self.configs.get(&key).copied();
        let existing = current.as_ref().and_then(|c| find_range(c, metas, &cookies));
        let grows = current.as_ref().is_some_and(|c| grows(c.active, metas, &cookies));
        let (range, fill, stale) = match existing {
            Some(range) => (range, false, Vec::new()),
            None => {
                let stale: Vec<u32> =
                    metas.iter().filter(|(_, m)| cookies.contains(&m.cookie)).map(|(s, _)| *s).collect();
                if let Some(c) = current.as_ref()
                    && weight >= WEIGHT_SCALE
                    && !grows
                {
                    unreserve(metas, c.previous);
                }
                let needed = u32::try_from(cookies.len()).unwrap();
                let range = allocate(metas, MAX_SLOTS, needed).ok()?;
                for s in &stale {
                    metas.remove(s);
                }
                assert!(range.first + range.count <= MAX_SLOTS && range.count == needed);
                for s in range.first..range.first + range.count {
                    assert!(!metas.contains_key(&s), "slot {s} allocated while in use");
                    metas.insert(s, SlotMeta { cookie: u64::MAX, ..SlotMeta::default() });
                }
                (range, true, stale)
            }
        };
        let (mut config, outcome) = promote(current.as_ref(), range, weight.min(WEIGHT_SCALE), fill).ok()?;
        if grows
            && outcome == Outcome::Promoted
            && let Some(c) = current
        {
            config.previous = c.previous;
        }
        Some(Plan { key, cookies, range, fill, stale, config })
    }

    /// `ops::promote::apply`: the stale slots of the sockets that move are
    /// freed before those sockets enter `range`; while they move, the group
    /// points at the part of `range` already filled.
    fn apply(&mut self, plan: Plan) {
        let Plan { key, cookies, range, fill, stale, config } = plan;
        let current = self.configs.get(&key).copied().unwrap_or_default();
        if fill {
            let moving = stale.len().min(cookies.len());
            let put = |model: &mut Self, i: usize| {
                let slot = range.first + u32::try_from(i).unwrap();
                assert!(!model.metas.contains_key(&slot), "slot {slot} filled twice");
                model.metas.insert(slot, SlotMeta { cookie: cookies[i], group: key, ..SlotMeta::default() });
            };
            for i in moving..cookies.len() {
                put(self, i);
            }
            let selected = |slot: &u32| [current.active, current.canary].iter().any(|r| r.contains(*slot));
            if moving > 0 && moving < cookies.len() && stale.iter().any(selected) {
                let held = interim(&config, range, u32::try_from(moving).unwrap());
                assert_valid(&held);
                // While the rest move, the group selects only slots of `range` already filled.
                for r in [held.active, held.canary] {
                    let inside = (r.first..r.first + r.count).filter(|s| range.contains(*s));
                    inside
                        .clone()
                        .for_each(|s| assert!(self.metas.contains_key(&s), "interim selects empty {s}"));
                }
                self.configs.insert(key, held);
            }
            for slot in &stale {
                self.metas.remove(slot);
            }
            for i in 0..moving {
                put(self, i);
            }
        }
        self.configs.insert(key, config);
    }

    /// `ops::promote::run`: reclaim, plan every group (all or nothing), apply,
    /// release what is no longer referenced.
    fn promote(&mut self, per_group: Vec<(GroupKey, Vec<u64>)>, weight: u32) -> bool {
        self.reclaim();
        let mut metas = self.metas.clone();
        reserve_referenced(&mut metas, self.configs.values().copied());
        let mut plans = Vec::new();
        for (key, cookies) in per_group {
            let Some(plan) = self.plan(&mut metas, key, cookies, weight) else { return false };
            plans.push(plan);
        }
        for plan in plans {
            let key = plan.key;
            let before = self.configs.get(&key).copied();
            let (range, cookies, weight) = (plan.range, plan.cookies.clone(), plan.config.canary_weight);
            self.apply(plan);
            let after = self.configs[&key];
            if Some(after) != before {
                assert!(after.generation > before.map_or(0, |b| b.generation));
            }
            // The promoted sockets are where the configuration says.
            assert_eq!(range.count as usize, cookies.len());
            for s in range.first..range.first + range.count {
                assert!(
                    cookies.contains(&self.metas[&s].cookie),
                    "slot {s} does not hold the promoted sockets"
                );
            }
            let role = if weight == 0 { after.active } else { after.canary };
            assert_eq!(role, range);
        }
        self.release_unreferenced();
        true
    }

    /// `ops::rollback::run` for one group.
    fn rollback(&mut self, key: GroupKey) {
        let Some(current) = self.configs.get(&key).copied() else { return };
        let prev = current.previous;
        let live = !prev.is_none() && (prev.first..prev.first + prev.count).all(|s| self.live(s));
        let effect = rollback_effect(&current, live);
        match rollback(&current, live) {
            Ok((config, done)) => {
                assert_eq!(done, effect);
                assert!(config.generation > current.generation);
                if effect == RollbackEffect::RestoresPrevious {
                    assert_eq!((config.active, config.previous), (current.previous, current.active));
                    // Every socket made active again is open and of this group.
                    for s in config.active.first..config.active.first + config.active.count {
                        assert!(self.live(s) && self.metas[&s].group == key, "rollback to slot {s}");
                    }
                } else {
                    assert_eq!((config.active, config.canary), (current.active, SlotRange::NONE));
                }
                self.configs.insert(key, config);
                self.release_unreferenced();
            }
            Err(_) => assert!(matches!(
                effect,
                RollbackEffect::RefusedNoPrevious | RollbackEffect::RefusedPreviousGone
            )),
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Promote { group, sockets, weight } => {
                let cookies = self.new_sockets(sockets);
                self.generations.entry(group).or_default().push(cookies.clone());
                self.promote(vec![(key(group), cookies)], weight);
            }
            Op::PromoteTwo { groups: (a, b), sockets, weight } => {
                let (ca, cb) = (self.new_sockets(sockets), self.new_sockets(sockets));
                self.generations.entry(a).or_default().push(ca.clone());
                self.generations.entry(b).or_default().push(cb.clone());
                self.promote(vec![(key(a), ca), (key(b), cb)], weight);
            }
            Op::Repromote { group, which, weight } => {
                let Some(generations) = self.generations.get(&group) else { return };
                let cookies = &generations[which % generations.len()];
                // A process that exited cannot be promoted.
                if cookies.iter().all(|c| self.open.contains(c)) {
                    self.promote(vec![(key(group), cookies.clone())], weight);
                }
            }
            Op::Grow { group, extra } => {
                let active = self.configs.get(&key(group)).map_or(SlotRange::NONE, |c| c.active);
                let holds = |g: &Vec<u64>| {
                    (active.first..active.first + active.count)
                        .all(|s| self.metas.get(&s).is_some_and(|m| g.contains(&m.cookie)))
                };
                let found = self.generations.get(&group).and_then(|gens| gens.iter().position(holds));
                let Some(gen_index) = found.filter(|_| !active.is_none()) else { return };
                let more = self.new_sockets(extra);
                let generation = &mut self.generations.get_mut(&group).unwrap()[gen_index];
                generation.extend(more);
                if generation.iter().all(|c| self.open.contains(c)) {
                    let cookies = generation.clone();
                    self.promote(vec![(key(group), cookies)], WEIGHT_SCALE);
                }
            }
            Op::Rollback { group } => self.rollback(key(group)),
            Op::Exit { group, which } => {
                if let Some(generations) = self.generations.get(&group) {
                    for cookie in &generations[which % generations.len()] {
                        self.open.remove(cookie);
                    }
                }
            }
            Op::Upkeep => {
                self.reclaim();
                self.release_unreferenced();
            }
        }
    }

    /// The invariants that hold after every operation.
    fn check(&self) {
        // No leak: a used slot is referenced by a configuration, or its socket
        // has closed and the next reclaim frees it.
        for (slot, meta) in &self.metas {
            let referenced = self.configs.values().flat_map(ranges).any(|r| r.contains(*slot));
            assert!(referenced || !self.open.contains(&meta.cookie), "slot {slot} leaks");
            assert!(*slot < MAX_SLOTS && meta.cookie != u64::MAX);
        }
        // No overlap between groups, nor between one group's ranges.
        let mut owner: BTreeMap<u32, GroupKey> = BTreeMap::new();
        for (key, config) in &self.configs {
            assert_valid(config);
            // One generation may hold two roles (a canary of the previous
            // generation): a group's ranges are equal or disjoint.
            for (i, a) in ranges(config).into_iter().enumerate() {
                for b in ranges(config).into_iter().skip(i + 1) {
                    let disjoint = a.first + a.count <= b.first || b.first + b.count <= a.first;
                    assert!(a == b || a.is_none() || b.is_none() || disjoint, "ranges overlap in {config:?}");
                }
            }
            let mut own = BTreeSet::new();
            for r in ranges(config) {
                for s in r.first..r.first + r.count {
                    if !own.insert(s) {
                        continue;
                    }
                    if let Some(other) = owner.insert(s, *key) {
                        panic!("slot {s} is in ranges of groups {} and {}", other.port, key.port);
                    }
                    // A slot in use holds a socket of its own group.
                    if let Some(meta) = self.metas.get(&s) {
                        assert_eq!(meta.group, *key, "slot {s} of {} holds another group's socket", key.port);
                    }
                }
            }
        }
    }
}

/// A configuration the program can follow.
fn assert_valid(config: &GroupConfig) {
    for r in ranges(config) {
        assert!(r.first.checked_add(r.count).is_some_and(|end| end <= MAX_SLOTS), "{config:?}");
    }
    assert_eq!(config.canary.is_none(), config.canary_weight == 0, "{config:?}");
    assert!(config.canary_weight < WEIGHT_SCALE, "{config:?}");
    assert!(config.canary.is_none() || !config.active.is_none(), "canary without active: {config:?}");
    assert_eq!(config.flags & !FLAG_OPERATOR, 0, "{config:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn slots_never_leak_or_overlap(ops in prop::collection::vec(op(), 1..40)) {
        let mut model = Model::default();
        for op in &ops {
            model.run(op);
            model.check();
        }
        // Once every process has exited, upkeep frees every slot.
        model.open.clear();
        model.run(&Op::Upkeep);
        prop_assert!(model.metas.is_empty());
    }

    /// `allocate` returns free consecutive slots below the limit, and refuses
    /// only when no such run exists.
    #[test]
    fn allocate_finds_a_free_run_when_there_is_one(
        used in prop::collection::btree_set(0..40_u32, 0..40),
        max in 0..40_u32,
        needed in 1..8_u32,
    ) {
        let slots: Slots = used.iter().map(|s| (*s, SlotMeta { cookie: 1, ..SlotMeta::default() })).collect();
        let free_run = (0..max).any(|first| {
            first + needed <= max && (first..first + needed).all(|s| !used.contains(&s))
        });
        match allocate(&slots, max, needed) {
            Ok(r) => {
                prop_assert_eq!(r.count, needed);
                prop_assert!(r.first + r.count <= max);
                prop_assert!((r.first..r.first + r.count).all(|s| !used.contains(&s)));
            }
            Err(PolicyError::SockarrayFull { needed: n, free }) => {
                prop_assert!(!free_run);
                prop_assert_eq!(n, needed);
                prop_assert_eq!(free, max - u32::try_from(used.iter().filter(|s| **s < max).count()).unwrap());
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

/// Found by `slots_never_leak_or_overlap`: a generation exits, upkeep frees its
/// slots, and the next promote (here a canary) was given the very slots the
/// active range still named, so active and canary were one range.
#[test]
fn slots_a_configuration_still_names_are_not_allocated_again() {
    let mut model = Model::default();
    for op in [
        Op::Promote { group: 2, sockets: 1, weight: WEIGHT_SCALE },
        Op::Exit { group: 2, which: 0 },
        Op::Promote { group: 2, sockets: 1, weight: 1 },
        Op::Promote { group: 1, sockets: 1, weight: WEIGHT_SCALE },
    ] {
        model.run(&op);
        model.check();
    }
    let (two, one) = (model.configs[&key(2)], model.configs[&key(1)]);
    assert_eq!(
        (two.active, two.canary, one.active.first),
        (SlotRange { first: 0, count: 1 }, SlotRange { first: 1, count: 1 }, 2)
    );

    let mut used = Slots::new();
    reserve_referenced(
        &mut used,
        [GroupConfig { active: SlotRange { first: 0, count: 2 }, ..GroupConfig::default() }],
    );
    assert_eq!(allocate(&used, 4, 1).unwrap(), SlotRange { first: 2, count: 1 });
}

/// Found by `slots_never_leak_or_overlap`: a generation that grew (one more
/// socket) was given a range whose last slot was one of its own stale slots,
/// still holding a socket when the new sockets went in.
#[test]
fn a_growing_generation_is_not_placed_over_its_own_stale_slots() {
    let mut model = Model::default();
    for op in [
        Op::Promote { group: 0, sockets: 2, weight: WEIGHT_SCALE },
        Op::Promote { group: 2, sockets: 1, weight: WEIGHT_SCALE },
        Op::Grow { group: 0, extra: 1 },
        Op::Grow { group: 2, extra: 2 },
    ] {
        model.run(&op);
        model.check();
    }
    assert_eq!(model.configs[&key(2)].active.count, 3);
}
