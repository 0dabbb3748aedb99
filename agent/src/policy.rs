//! The steering policy as pure functions: how a group's configuration changes
//! on promote, canary and rollback (which ends a canary before anything else), and where a generation's sockets go in the
//! sockarray. No I/O here, so every rule is unit-tested.
use std::collections::BTreeMap;

use steer_abi::{FLAG_OPERATOR, GroupConfig, SlotMeta, SlotRange, WEIGHT_SCALE};

/// The records of the used slots, by slot.
pub type Slots = BTreeMap<u32, SlotMeta>;

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "cannot be placed: the sockarray is full ({free} free slots, {needed} needed); stop old generations that still listen, or detach unused groups"
    )]
    SockarrayFull { needed: u32, free: u32 },
    #[error("has no active generation to take a share from; promote without --weight first")]
    NoActiveForCanary,
    #[error(
        "is already steered to this process as its active generation; to give another generation a share, promote that one with --weight"
    )]
    CanaryIsActive,
    #[error("has no previous generation to roll back to")]
    NoPrevious,
    #[error("has no previous generation still listening, so there is nothing to roll back to")]
    PreviousGone,
}

/// What a promote did to one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing changed: the sockets already get every new connection.
    AlreadyActive,
    /// Nothing changed: the sockets already get this canary share.
    AlreadyCanary { weight: u32 },
    /// The sockets now get every new connection.
    Promoted,
    /// The sockets now get `weight` percent of new connections.
    Canary { weight: u32 },
    /// Nothing changed: an operator's command chose the configuration, and
    /// these sockets are a generation it names (the daemon yields).
    HeldByOperator,
}

impl Outcome {
    /// Whether the group's configuration changed.
    #[must_use]
    pub fn changed(self) -> bool {
        !matches!(self, Self::AlreadyActive | Self::AlreadyCanary { .. } | Self::HeldByOperator)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyActive => f.write_str("already active"),
            Self::AlreadyCanary { weight } => write!(f, "already canary at {weight}%"),
            Self::Promoted => f.write_str("promoted"),
            Self::Canary { weight } => write!(f, "canary at {weight}%"),
            Self::HeldByOperator => f.write_str("left as the operator's last command set it"),
        }
    }
}

/// The configuration after promoting the generation in `target` with `weight`
/// percent (100 = all new connections). `fresh` says the sockets were just put
/// into `target`: a new generation even when its slots are the ones an exited
/// generation had.
pub fn promote(
    current: Option<&GroupConfig>,
    target: SlotRange,
    weight: u32,
    fresh: bool,
) -> Result<(GroupConfig, Outcome), PolicyError> {
    let cur = current.copied().unwrap_or_default();
    let next_gen = cur.generation + 1;
    if weight >= WEIGHT_SCALE {
        if cur.active == target && cur.canary.is_none() && !fresh {
            return Ok((cur, Outcome::AlreadyActive));
        }
        let previous = if cur.active == target || cur.active.is_none() { cur.previous } else { cur.active };
        let config = GroupConfig {
            generation: next_gen,
            active: target,
            previous,
            canary: SlotRange::NONE,
            canary_weight: 0,
            flags: cur.flags & SETTINGS,
            stats: cur.stats,
            pad: 0,
        };
        return Ok((config, Outcome::Promoted));
    }
    if cur.active.is_none() {
        return Err(PolicyError::NoActiveForCanary);
    }
    if cur.active == target && !fresh {
        return Err(PolicyError::CanaryIsActive);
    }
    if cur.canary == target && cur.canary_weight == weight && !fresh {
        return Ok((cur, Outcome::AlreadyCanary { weight }));
    }
    let config = GroupConfig { generation: next_gen, canary: target, canary_weight: weight, ..cur };
    Ok((config, Outcome::Canary { weight }))
}

/// What `steer rollback` does to a group, by the group's state. `status` shows
/// it, and [`rollback`] follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackEffect {
    /// A canary runs: rollback ends it. The canary gets no more new
    /// connections, and the active generation, unchanged, gets them all.
    EndsCanary,
    /// The previous generation still listens: rollback makes it active again,
    /// and the active one becomes the previous.
    RestoresPrevious,
    /// Refused: the group has no previous generation.
    RefusedNoPrevious,
    /// Refused: the previous generation no longer listens.
    RefusedPreviousGone,
}

impl RollbackEffect {
    /// One sentence for `steer status`.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::EndsCanary => "ends the canary; the active generation gets every new connection",
            Self::RestoresPrevious => "makes the previous generation active again",
            Self::RefusedNoPrevious => "refused: there is no previous generation",
            Self::RefusedPreviousGone => "refused: the previous generation no longer listens",
        }
    }
}

/// What a rollback would do to `current`; `previous_live` says whether the
/// previous generation's sockets all still sit in their slots. Ending a canary
/// comes first: an operator who rolls back during a canary aborts the canary,
/// and the generation that was active before it stays active.
#[must_use]
pub fn rollback_effect(current: &GroupConfig, previous_live: bool) -> RollbackEffect {
    if !current.canary.is_none() {
        RollbackEffect::EndsCanary
    } else if current.previous.is_none() {
        RollbackEffect::RefusedNoPrevious
    } else if previous_live {
        RollbackEffect::RestoresPrevious
    } else {
        RollbackEffect::RefusedPreviousGone
    }
}

/// The configuration after a rollback, and what it did (see [`rollback_effect`]).
pub fn rollback(
    current: &GroupConfig,
    previous_live: bool,
) -> Result<(GroupConfig, RollbackEffect), PolicyError> {
    let effect = rollback_effect(current, previous_live);
    let generation = current.generation + 1;
    let config = match effect {
        RollbackEffect::EndsCanary => GroupConfig {
            generation,
            canary: SlotRange::NONE,
            canary_weight: 0,
            flags: current.flags | FLAG_OPERATOR,
            ..*current
        },
        RollbackEffect::RestoresPrevious => GroupConfig {
            generation,
            active: current.previous,
            previous: current.active,
            canary: SlotRange::NONE,
            canary_weight: 0,
            flags: FLAG_OPERATOR | current.flags & SETTINGS,
            stats: current.stats,
            pad: 0,
        },
        RollbackEffect::RefusedNoPrevious => return Err(PolicyError::NoPrevious),
        RollbackEffect::RefusedPreviousGone => return Err(PolicyError::PreviousGone),
    };
    Ok((config, effect))
}

/// The configuration to hold while the first `moving` sockets of a generation
/// move into `range`: `config` with `range` narrowed to the sockets already in
/// place, those from `moving` on.
#[must_use]
pub fn interim(config: &GroupConfig, range: SlotRange, moving: u32) -> GroupConfig {
    let part = SlotRange { first: range.first + moving, count: range.count.saturating_sub(moving) };
    let narrow = |r: SlotRange| if r == range { part } else { r };
    GroupConfig { active: narrow(config.active), canary: narrow(config.canary), ..*config }
}

/// The ranges a configuration refers to.
#[must_use]
pub fn ranges(config: &GroupConfig) -> [SlotRange; 3] {
    [config.active, config.previous, config.canary]
}

/// The range among `config`'s that holds exactly the sockets with `cookies`,
/// or else a run of consecutive slots inside one of them that does: a
/// generation that kept some of its predecessor's sockets (nginx with fewer
/// workers) is promoted where its sockets already sit. Moving them instead
/// would empty slots of the active range until the new configuration is in.
#[must_use]
pub fn find_range(config: &GroupConfig, metas: &Slots, cookies: &[u64]) -> Option<SlotRange> {
    let holds = |r: SlotRange| {
        (r.first..r.first + r.count).all(|s| metas.get(&s).is_some_and(|m| cookies.contains(&m.cookie)))
    };
    let Ok(count) = u32::try_from(cookies.len()) else { return None };
    let configured = ranges(config).into_iter().filter(|r| !r.is_none());
    configured.clone().find(|r| r.count == count && holds(*r)).or_else(|| {
        configured
            .filter(|r| r.count > count && count > 0)
            .flat_map(|r| (r.first..=r.first + r.count - count).map(move |first| SlotRange { first, count }))
            .find(|w| holds(*w))
    })
}

/// First run of `needed` consecutive slots below `max_slots` that `used` does
/// not hold.
pub fn allocate(used: &Slots, max_slots: u32, needed: u32) -> Result<SlotRange, PolicyError> {
    let mut start = 0_u32;
    for &slot in used.keys().chain(std::iter::once(&max_slots)) {
        let slot = slot.min(max_slots);
        if slot >= start && slot - start >= needed {
            return Ok(SlotRange { first: start, count: needed });
        }
        start = start.max(slot + 1);
    }
    let free = max_slots.saturating_sub(used.keys().filter(|s| **s < max_slots).count() as u32);
    Err(PolicyError::SockarrayFull { needed, free })
}

/// Marks as used, in `used`, every slot that a configuration still refers to.
/// A range whose sockets closed stays in its group's configuration (a previous
/// generation that exited, or an active one with no successor) after upkeep
/// freed its slots; [`allocate`] must not hand those slots to another
/// generation, or one slot would sit in two ranges: a rollback would then make
/// another generation, or another group's sockets, active.
pub fn reserve_referenced(used: &mut Slots, configs: impl IntoIterator<Item = GroupConfig>) {
    for range in configs.into_iter().flat_map(|c| ranges(&c)) {
        for slot in range.first..range.first.saturating_add(range.count) {
            used.entry(slot).or_insert(SlotMeta { cookie: u64::MAX, ..SlotMeta::default() });
        }
    }
}

/// Frees in `used` the slots of `range` that only [`reserve_referenced`]
/// holds (no socket sits there): a range the promote being planned drops from
/// its group's configuration.
pub fn unreserve(used: &mut Slots, range: SlotRange) {
    for slot in range.first..range.first.saturating_add(range.count) {
        if used.get(&slot).is_some_and(|m| m.cookie == u64::MAX && m.pid == 0) {
            used.remove(&slot);
        }
    }
}

/// Whether the daemon (`by_operator` false) must leave `config` alone for a
/// generation whose sockets sit in one of its ranges (`configured`): an
/// operator's command set it, and the generation is one that command saw.
#[must_use]
pub fn operator_holds(config: &GroupConfig, configured: bool, by_operator: bool) -> bool {
    !by_operator && configured && config.flags & FLAG_OPERATOR != 0
}

/// The bits of [`GroupConfig::flags`] that are the group's settings rather
/// than its state: a promote or rollback keeps them (UDP: flows off, the flow
/// timeout). [`steer_abi::FLAG_RELEASE`] is state: a new active generation
/// clears it.
pub const SETTINGS: u32 = steer_abi::FLAG_FLOWS_OFF | (0xffff << steer_abi::FLOW_TIMEOUT_SHIFT);

/// UDP settings a command asks for; `None` keeps what the group has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpSettings {
    /// Whether the flow table keeps flows with the generation that started them.
    pub flows: Option<bool>,
    /// The flows' idle timeout, in the flow table's ticks (1..=`MAX_TIMEOUT_TICKS`).
    pub timeout_ticks: Option<u32>,
}

impl UdpSettings {
    /// `flags` with these settings applied.
    #[must_use]
    pub fn apply(self, flags: u32) -> u32 {
        let mut flags = flags;
        match self.flows {
            Some(true) => flags &= !steer_abi::FLAG_FLOWS_OFF,
            Some(false) => flags |= steer_abi::FLAG_FLOWS_OFF,
            None => {}
        }
        if let Some(t) = self.timeout_ticks {
            let t = t.clamp(1, steer_abi::flows::MAX_TIMEOUT_TICKS);
            flags = flags & !(0xffff << steer_abi::FLOW_TIMEOUT_SHIFT) | t << steer_abi::FLOW_TIMEOUT_SHIFT;
        }
        flags
    }
}

/// The flags a promote leaves: an operator's promote (or canary) marks the
/// configuration as the operator's; the daemon's clears the mark.
#[must_use]
pub fn flags_after_promote(config: &GroupConfig, by_operator: bool) -> u32 {
    if by_operator { config.flags | FLAG_OPERATOR } else { config.flags & !FLAG_OPERATOR }
}

/// Whether the sockets of `active` are all among `cookies`: a promotion of
/// those sockets plus more is the same generation grown (a process whose
/// sockets listen one after another, HAProxy `shards`), not a new one, and
/// keeps the previous generation for rollback.
#[must_use]
pub fn grows(active: SlotRange, metas: &Slots, cookies: &[u64]) -> bool {
    !active.is_none()
        && (active.first..active.first + active.count)
            .all(|s| metas.get(&s).is_some_and(|m| cookies.contains(&m.cookie)))
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "policy_props.rs"]
mod props;
