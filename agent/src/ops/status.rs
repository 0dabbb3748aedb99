//! `steer status`: groups, their sockets, roles and counters. Reads only; it
//! never locks, mounts or creates anything.
use std::path::Path;

use serde::Serialize;
use steer_abi::{GroupConfig, counter};

use crate::{
    policy::{self, RollbackEffect},
    proc, sockets,
    state::{StateDir, StateError},
};

/// Version of the JSON document; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole status document (`steer status --json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub schema: u32,
    pub state_dir: String,
    pub abi_version: u32,
    pub namespaces: Vec<Namespace>,
}

/// One network namespace's instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Namespace {
    pub netns: u64,
    pub max_slots: u32,
    /// `select+migrate`, or `select-only` (no queue migration on close).
    #[serde(default)]
    pub mode: String,
    /// The namespace's program, as the kernel reports it (in select-only mode,
    /// summed over the groups' programs); `None` when it cannot say.
    #[serde(default)]
    pub program: Option<Program>,
    /// Counters over every group of the namespace, configured or not.
    pub counters: Counters,
    pub groups: Vec<Group>,
    /// Why this namespace's state could not be read (damaged pins, another
    /// ABI version); the other namespaces are read as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kernel's figures for a loaded program (`bpf_prog_info`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Program {
    /// The kernel's program id (as in `bpftool prog show id ID`).
    pub id: u32,
    /// Time spent in the program, counted only while `kernel.bpf_stats_enabled` is 1.
    pub run_time_ns: u64,
    /// Runs of the program, counted only while `kernel.bpf_stats_enabled` is 1.
    pub run_count: u64,
}

/// One steered reuseport group.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Group {
    pub address: String,
    /// `tcp` or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    pub port: u16,
    pub ifindex: u32,
    pub generation: u64,
    pub canary_weight: u32,
    /// What `steer rollback` would do now: `ends_canary`, `restores_previous`,
    /// `refused_no_previous` or `refused_previous_gone`.
    pub rollback: RollbackEffect,
    pub counters: Counters,
    /// A UDP group's flow table settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpView>,
    pub sockets: Vec<Socket>,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// How a UDP group's datagrams are steered.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct UdpView {
    /// Whether flows stay with the generation that started them (`--udp-flows`).
    pub flows: bool,
    /// A flow is forgotten after this many milliseconds without a datagram.
    pub flow_timeout_ms: u64,
    /// Flows of generations other than the active one and the canary go to
    /// the active one (`steer reload` drains the old generation).
    pub released: bool,
}

impl UdpView {
    fn of(config: &GroupConfig) -> Self {
        let tick_ns = 1_u64 << steer_abi::flows::TICK_SHIFT;
        Self {
            flows: config.flags & steer_abi::FLAG_FLOWS_OFF == 0,
            flow_timeout_ms: u64::from(config.flow_timeout()) * tick_ns / 1_000_000,
            released: config.flags & steer_abi::FLAG_RELEASE != 0,
        }
    }
}

/// One socket in the sockarray.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Socket {
    pub slot: u32,
    pub role: Role,
    pub pid: u32,
    pub comm: Option<String>,
    pub fd: u32,
    pub cookie: u64,
    /// False once the socket has closed (its slot is reclaimed on the next write).
    pub live: bool,
    /// Connections waiting to be accepted, when steer may look (CAP_SYS_PTRACE).
    pub accept_queue: Option<u32>,
    /// New connections the program sent to this socket.
    pub selected: u64,
}

/// The program's counters, by name.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub steered_active: u64,
    pub steered_canary: u64,
    pub migrated: u64,
    pub fallback_no_config: u64,
    pub fallback_empty_slot: u64,
    pub helper_error: u64,
    /// Queued connections of a closing listener that the kernel moved to another
    /// member because the program could not place them (the closing socket was
    /// the active one).
    pub migrated_by_kernel: u64,
    /// New connections drawn for the canary that went to the active generation
    /// because the canary's socket had closed.
    #[serde(default)]
    pub canary_to_active: u64,
    /// UDP: datagrams of flows kept with a generation other than the active
    /// one and the canary (the previous one) because its socket still lives.
    #[serde(default)]
    pub flow_kept_previous: u64,
    /// UDP: datagrams of flows whose generation's socket closed (or was
    /// released), sent to the active generation, which keeps the flow.
    #[serde(default)]
    pub flow_to_active: u64,
    /// UDP: new flows not remembered because their bucket of the flow table
    /// held another live flow (counted beside the path they took).
    #[serde(default)]
    pub flow_table_full: u64,
}

impl From<[u64; counter::COUNT]> for Counters {
    fn from(v: [u64; counter::COUNT]) -> Self {
        Self {
            steered_active: v[counter::ACTIVE],
            steered_canary: v[counter::CANARY],
            migrated: v[counter::MIGRATED],
            fallback_no_config: v[counter::NO_CONFIG],
            fallback_empty_slot: v[counter::EMPTY_SLOT],
            helper_error: v[counter::HELPER_ERROR],
            migrated_by_kernel: v[counter::MIGRATED_BY_KERNEL],
            canary_to_active: v[counter::CANARY_TO_ACTIVE],
            flow_kept_previous: v[counter::FLOW_KEPT_PREVIOUS],
            flow_to_active: v[counter::FLOW_TO_ACTIVE],
            flow_table_full: v[counter::FLOW_TABLE_FULL],
        }
    }
}

fn role(config: &GroupConfig, slot: u32) -> Role {
    if config.active.contains(slot) {
        Role::Active
    } else if config.canary.contains(slot) {
        Role::Canary
    } else if config.previous.contains(slot) {
        Role::Previous
    } else {
        Role::Unreferenced
    }
}

/// What a socket's slot is to its group (`"active"` and so on in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Gets new connections (all, or all but the canary's share).
    Active,
    /// Gets the canary's share.
    Canary,
    /// The rollback target; gets none.
    Previous,
    /// No configuration names it; its slot is freed on the next write.
    Unreferenced,
}

impl Role {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Canary => "canary",
            Self::Previous => "previous",
            Self::Unreferenced => "unreferenced",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So that `socket.role == "active"` reads as it did when the role was text.
impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Active, Self::Canary, Self::Previous, Self::Unreferenced]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("no role {s:?}"))
    }
}

/// Reads the status of every instance under `state_dir`.
pub fn read(state_dir: &Path) -> Result<Status, StateError> {
    let mut status = Status {
        schema: SCHEMA_VERSION,
        state_dir: state_dir.display().to_string(),
        abi_version: steer_abi::ABI_VERSION,
        namespaces: Vec::new(),
    };
    let Some(state) = StateDir::open_for_read(state_dir) else {
        return Ok(status);
    };
    // The directory is 0700: without privileges, say so rather than "no groups".
    if std::fs::read_dir(state_dir).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) {
        return Err(StateError::Permission { path: state_dir.to_path_buf() });
    }
    for netns in state.namespaces() {
        match namespace(&state, netns) {
            Ok(Some(ns)) => status.namespaces.push(ns),
            Ok(None) => {}
            // Not a damaged instance: nothing can be read without privileges.
            Err(e @ StateError::Permission { .. }) => return Err(e),
            // One bad instance says so, and the others are read as usual.
            Err(e) => status.namespaces.push(Namespace {
                netns,
                max_slots: 0,
                mode: String::new(),
                program: None,
                counters: Counters::default(),
                groups: Vec::new(),
                error: Some(super::chain(&e)),
            }),
        }
    }
    Ok(status)
}

/// One namespace's status; `None` when its instance is gone.
fn namespace(state: &StateDir, netns: u64) -> Result<Option<Namespace>, StateError> {
    {
        let Some(instance) = state.instance(netns)? else { return Ok(None) };
        let slots = instance.slots()?;
        let groups = instance
            .groups()
            .into_iter()
            .map(|g| Group {
                address: sockets::key_label(&g.key),
                protocol: sockets::protocol_name(g.key.protocol).to_owned(),
                port: g.key.port,
                ifindex: g.key.ifindex,
                generation: g.config.generation,
                canary_weight: g.config.canary_weight,
                rollback: policy::rollback_effect(
                    &g.config,
                    super::rollback::previous_live(&g.config, &slots),
                ),
                counters: g.counters.into(),
                udp: (g.key.protocol == steer_abi::IPPROTO_UDP).then(|| UdpView::of(&g.config)),
                sockets: slots
                    .iter()
                    .filter(|s| s.meta.group == g.key)
                    .map(|s| Socket {
                        slot: s.slot,
                        role: role(&g.config, s.slot),
                        pid: s.meta.pid,
                        comm: proc::comm(s.meta.pid),
                        fd: s.meta.fd,
                        cookie: s.meta.cookie,
                        live: s.live,
                        accept_queue: s
                            .live
                            .then(|| super::reopen(&s.meta))
                            .flatten()
                            .and_then(|dup| sockets::queued(&dup, g.key.protocol).ok()),
                        selected: s.hits,
                    })
                    .collect(),
            })
            .collect();
        Ok(Some(Namespace {
            netns,
            max_slots: instance.info.max_slots,
            mode: instance.mode.to_string(),
            program: instance.program_figures().map(|info| Program {
                id: info.id,
                run_time_ns: u64::try_from(info.run_time.as_nanos()).unwrap_or(u64::MAX),
                run_count: info.run_count,
            }),
            counters: instance.global_counters().into(),
            groups,
            error: None,
        }))
    }
}

/// The human-readable table.
#[must_use]
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for ns in status.namespaces.iter().filter(|n| n.error.is_some()) {
        let _ = writeln!(
            out,
            "netns {}: cannot read its state: {}",
            ns.netns,
            ns.error.as_deref().unwrap_or_default()
        );
    }
    if status.namespaces.iter().all(|n| n.groups.is_empty() && n.error.is_none()) {
        let _ = writeln!(out, "no steered groups in {}", status.state_dir);
        return out;
    }
    for ns in &status.namespaces {
        for g in &ns.groups {
            let canary =
                if g.canary_weight > 0 { format!(", canary {}%", g.canary_weight) } else { String::new() };
            let mode = if ns.mode == "select-only" { ", select-only" } else { "" };
            let _ = writeln!(
                out,
                "{} (netns {}, generation {}{canary}{mode})",
                g.address, ns.netns, g.generation
            );
            let _ = writeln!(
                out,
                "  {:<6} {:<21} {:>8} {:<16} {:>5} {:>20} {:>7} {:>10}",
                "slot", "role", "pid", "comm", "fd", "cookie", "queue", "selected"
            );
            for s in &g.sockets {
                let queue = s.accept_queue.map_or_else(|| "-".to_owned(), |q| q.to_string());
                let role = if s.live { s.role.to_string() } else { format!("{} (closed)", s.role) };
                let comm = s.comm.clone().unwrap_or_else(|| "-".to_owned());
                let _ = writeln!(
                    out,
                    "  {:<6} {:<21} {:>8} {:<16} {:>5} {:>20} {:>7} {:>10}",
                    s.slot, role, s.pid, comm, s.fd, s.cookie, queue, s.selected
                );
            }
            let c = &g.counters;
            let _ = writeln!(
                out,
                "  counters: active {} canary {} (to active {}) migrated {} (by kernel {}) fallback(no config {} empty slot {}) helper errors {}",
                c.steered_active,
                c.steered_canary,
                c.canary_to_active,
                c.migrated,
                c.migrated_by_kernel,
                c.fallback_no_config,
                c.fallback_empty_slot,
                c.helper_error
            );
            if let Some(u) = &g.udp {
                let _ = writeln!(
                    out,
                    "  udp flows: {} (timeout {} s{}) kept on previous {} moved to active {} table full {}",
                    if u.flows { "on" } else { "off" },
                    u.flow_timeout_ms / 1000,
                    if u.released { ", old generations released" } else { "" },
                    c.flow_kept_previous,
                    c.flow_to_active,
                    c.flow_table_full
                );
            }
            let _ = writeln!(out, "  rollback: {}", g.rollback.describe());
        }
    }
    out
}
