//! The daemon's effects on steering: promote, canary, complete a canary or
//! re-attach a process's generation, through the same code as `steer
//! promote`, with the error's verdict (try again, or give up) decided here once.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
    path::PathBuf,
};

use steer_abi::{FLAG_OPERATOR, WEIGHT_SCALE};

use crate::{
    ops::{OpError, promote},
    proc::Process,
    sockets::{self, SocketError},
    state::{OpenInstances, StateDir, StateError},
};

/// Why a step failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The process's listener is not where promote looks yet: the listen
    /// event fires as listen() begins, before the socket listens or joins its
    /// group; or the process is leaving. Worth another try while it lives.
    #[error(transparent)]
    NotReady(OpError),
    /// Another state directory holds the socket. The CLI's sentence names a
    /// flag the daemon does not have, so this one names a command.
    #[error(
        "socket fd {fd} of pid {pid} (cookie {cookie}) is held by another steer state directory, or by one removed without `steer detach`; detach it there, or run `steer promote {pid} --take-over` once to make this state steer the group"
    )]
    Busy { cookie: u64, pid: u32, fd: u32 },
    /// Another state directory steers the group (one of its members sits in
    /// that state's sockarray).
    #[error(
        "group {group} is steered by another steer state directory (pid {holder}'s socket sits in its sockarray); detach it there, or run `steer promote PID --take-over` once to make this state steer the group"
    )]
    Owned { group: String, holder: u32 },
    /// A cap refused it (see `limits`); the refusal was logged and counted
    /// once there, so the core reports it quietly.
    #[error("{0}")]
    Refused(String),
    /// Anything else: trying again would fail the same way.
    #[error(transparent)]
    Failed(OpError),
}

impl From<OpError> for StepError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Proc(_)
            | OpError::Socket(
                SocketError::Proc(_)
                | SocketError::Diag(_)
                | SocketError::Vanished { .. }
                | SocketError::NoListeners { .. },
            )
            // Another writer holds the lock (a CLI command, or one that was stopped):
            // the core tries again after its backoff.
            | OpError::State(StateError::Locked { .. }) => Self::NotReady(e),
            OpError::State(StateError::SocketBusy { cookie, pid, fd }) => Self::Busy { cookie, pid, fd },
            OpError::State(StateError::GroupOwned { group, pid }) => Self::Owned { group, holder: pid },
            other => Self::Failed(other),
        }
    }
}

impl StepError {
    /// Whether the same step may succeed a little later.
    #[must_use]
    pub fn retryable(&self) -> bool {
        matches!(self, Self::NotReady(_))
    }
}

/// What a canary's completion did.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// The groups promoted fully (or left as an operator's canary holds them).
    pub changes: Vec<promote::Change>,
    /// The ports where the process's sockets were the canary no more: an
    /// operator's command ended or changed it. Nothing was done there.
    pub left: Vec<u16>,
}

/// What the daemon does to steering. [`State`] is the real one; the core's
/// tests script their own.
pub trait Steerer {
    /// Promotes `pid`'s generation on `scope` (empty: all its ports).
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<promote::Change>, StepError>;
    /// Gives `pid`'s generation `weight` percent of new connections on `scope`,
    /// a canary; fully where its group has no active generation yet, and not
    /// at all where it is the active generation already.
    fn canary(&mut self, pid: u32, scope: &[u16], weight: u32) -> Result<Vec<promote::Change>, StepError>;
    /// Promotes `pid`'s canary fully on the ports of `scope` where its
    /// sockets are still the canary; the others are left alone and named.
    fn complete(&mut self, pid: u32, scope: &[u16]) -> Result<Completion, StepError>;
    /// The ports of `pid` in `scope` whose groups an operator's command set
    /// (`FLAG_OPERATOR`) naming none of its sockets.
    fn unnamed_by_operator(&mut self, _pid: u32, _scope: &[u16]) -> Vec<u16> {
        Vec::new()
    }
    /// Per port of `pid` in `scope`, the configuration generation of its group
    /// if an operator's command set it last (`FLAG_OPERATOR`), else 0: the
    /// readiness gate compares them before and after a wait.
    fn operator_marks(&mut self, _pid: u32, _scope: &[u16]) -> super::gate::Marks {
        super::gate::Marks::new()
    }
    /// The ports of `pid` in `scope` where its sockets are the active generation.
    fn active_ports(&mut self, _pid: u32, _scope: &[u16]) -> Vec<u16> {
        Vec::new()
    }
    /// Attaches the program to the configured groups of `pid`'s listeners on
    /// `scope`, changing no configuration; returns those groups.
    fn reattach(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<String>, StepError>;
}

/// Steering through the pinned state in `state_dir`, with the CLI's code.
/// The preflight checks ran once, when the daemon started, and the instances
/// it wrote stay open between promotions (each still takes the lock).
#[derive(Debug)]
pub struct State {
    state_dir: PathBuf,
    open: OpenInstances,
    udp: crate::policy::UdpSettings,
    /// `--no-migrate`: new instances steer in select-only mode.
    no_migrate: bool,
}

impl State {
    #[must_use]
    pub fn new(state_dir: PathBuf, no_migrate: bool) -> Self {
        Self {
            state_dir,
            open: OpenInstances::default(),
            no_migrate,
            udp: crate::policy::UdpSettings::default(),
        }
    }

    /// The flow-table settings the daemon's promotes give UDP groups.
    #[must_use]
    pub fn with_udp(mut self, udp: crate::policy::UdpSettings) -> Self {
        self.udp = udp;
        self
    }
}

impl State {
    fn promote_with(
        &mut self,
        pid: u32,
        scope: &[u16],
        weight: u32,
    ) -> Result<Vec<promote::Change>, StepError> {
        let request = promote::Request {
            pid,
            ports: scope.to_vec(),
            weight,
            take_over: false,
            by_operator: false,
            udp: self.udp,
            no_migrate: self.no_migrate,
        };
        Ok(promote::run_kept(&self.state_dir, &request, &mut self.open)?)
    }
}

impl Steerer for State {
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<promote::Change>, StepError> {
        self.promote_with(pid, scope, WEIGHT_SCALE)
    }

    fn canary(&mut self, pid: u32, scope: &[u16], weight: u32) -> Result<Vec<promote::Change>, StepError> {
        let places = places(&self.state_dir, pid, scope)?;
        let ports = |f: fn(&Place) -> bool| -> Vec<u16> {
            let mut ports: Vec<u16> = places.iter().filter(|p| f(p)).map(|p| p.port).collect();
            ports.dedup();
            ports
        };
        // policy::promote refuses a canary without an active generation, and
        // of the active generation itself; neither is this step's to make.
        let first = ports(|p| !p.has_active);
        let active = ports(|p| p.role == Some(Role::Active));
        let canary: Vec<u16> = ports(|p| p.has_active)
            .into_iter()
            .filter(|p| !active.contains(p) && !first.contains(p))
            .collect();
        let mut changes = Vec::new();
        if !first.is_empty() {
            changes.extend(self.promote_with(pid, &first, WEIGHT_SCALE)?);
        }
        if !canary.is_empty() {
            changes.extend(self.promote_with(pid, &canary, weight)?);
        }
        Ok(changes)
    }

    fn complete(&mut self, pid: u32, scope: &[u16]) -> Result<Completion, StepError> {
        let places = places(&self.state_dir, pid, scope)?;
        let mut still: BTreeMap<u16, bool> = BTreeMap::new();
        for p in &places {
            *still.entry(p.port).or_insert(true) &= p.role == Some(Role::Canary);
        }
        // Read without the state's lock: a rollback between this read and the
        // promote below is not seen (a window of about a millisecond).
        let (ports, left): (Vec<u16>, Vec<u16>) = still.keys().partition(|port| still[port]);
        let changes =
            if ports.is_empty() { Vec::new() } else { self.promote_with(pid, &ports, WEIGHT_SCALE)? };
        Ok(Completion { changes, left })
    }

    fn unnamed_by_operator(&mut self, pid: u32, scope: &[u16]) -> Vec<u16> {
        let places = places(&self.state_dir, pid, scope).unwrap_or_default();
        let mut ports: Vec<u16> =
            places.iter().filter(|p| p.operator && p.role.is_none()).map(|p| p.port).collect();
        ports.dedup();
        ports
    }

    fn active_ports(&mut self, pid: u32, scope: &[u16]) -> Vec<u16> {
        let places = places(&self.state_dir, pid, scope).unwrap_or_default();
        let mut ports: Vec<u16> =
            places.iter().filter(|p| p.role == Some(Role::Active)).map(|p| p.port).collect();
        ports.dedup();
        ports
    }

    fn operator_marks(&mut self, pid: u32, scope: &[u16]) -> super::gate::Marks {
        let mut marks = super::gate::Marks::new();
        for p in places(&self.state_dir, pid, scope).unwrap_or_default() {
            let mark = marks.entry(p.port).or_default();
            *mark = (*mark).max(if p.operator { p.generation } else { 0 });
        }
        marks
    }

    fn reattach(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<String>, StepError> {
        Ok(reattach(&self.state_dir, pid, scope)?)
    }
}

/// Attaches the program to every group of PID's listeners that has a
/// configuration; returns those groups. A group that emptied and formed again
/// has no program until then.
fn reattach(state_dir: &std::path::Path, pid: u32, ports: &[u16]) -> Result<Vec<String>, OpError> {
    let process = Process::open(pid)?;
    let listening = sockets::listening_sockets(&process, ports)?;
    let candidates = sockets::duplicate(&process, &listening)?;
    let Some(state) = StateDir::open_existing_for_write(state_dir)? else { return Ok(Vec::new()) };
    let Some(instance) = state.instance(process.netns)? else { return Ok(Vec::new()) };
    let mut done = BTreeSet::new();
    for c in &candidates {
        if instance.config(&c.key).is_some() && done.insert(c.key) {
            instance.attach(&c.key, c.dup.as_fd())?;
        }
    }
    Ok(done.iter().map(sockets::key_label).collect())
}

/// Which range of a group a process's sockets sit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Previous,
    Canary,
}

/// A process's place in one group it listens in.
#[derive(Debug, Clone, Copy)]
struct Place {
    port: u16,
    /// The range holding its sockets; `None`: none does.
    role: Option<Role>,
    /// Whether the group has an active generation.
    has_active: bool,
    /// Whether an operator's command set the group's configuration.
    operator: bool,
    /// The configuration's generation (0: none).
    generation: u64,
}

/// The place of `pid`'s listeners on `scope` (empty: all) in their groups, by
/// port, from the pinned state read without its lock; sockets are matched by
/// inode. A port whose group has no configuration yet has no role and no
/// active generation.
fn places(state_dir: &std::path::Path, pid: u32, scope: &[u16]) -> Result<Vec<Place>, OpError> {
    let process = Process::open(pid)?;
    let listening = sockets::listening_sockets(&process, scope)?;
    let mine: BTreeMap<u64, u16> = listening.iter().map(|(_, l)| (l.inode, l.addr.port())).collect();
    let ports: BTreeSet<u16> = mine.values().copied().collect();
    let instance =
        StateDir::open_for_read(state_dir).map(|s| s.instance(process.netns)).transpose()?.flatten();
    let Some(instance) = instance else {
        return Ok(ports
            .into_iter()
            .map(|port| Place { port, role: None, has_active: false, operator: false, generation: 0 })
            .collect());
    };
    let metas = instance.slot_metas()?;
    let groups = instance.groups();
    let mut out = Vec::new();
    for port in ports {
        let on_port: Vec<_> = groups.iter().filter(|g| g.key.port == port).collect();
        if on_port.is_empty() {
            out.push(Place { port, role: None, has_active: false, operator: false, generation: 0 });
        }
        for g in on_port {
            let c = g.config;
            let holds = |r: steer_abi::SlotRange| {
                (r.first..r.first + r.count)
                    .any(|s| metas.get(&s).is_some_and(|m| mine.get(&m.inode) == Some(&port)))
            };
            let role = [(c.active, Role::Active), (c.canary, Role::Canary), (c.previous, Role::Previous)]
                .into_iter()
                .find(|(r, _)| !r.is_none() && holds(*r))
                .map(|(_, role)| role);
            let operator = c.flags & FLAG_OPERATOR != 0;
            out.push(Place {
                port,
                role,
                has_active: !c.active.is_none(),
                operator,
                generation: c.generation,
            });
        }
    }
    Ok(out)
}
