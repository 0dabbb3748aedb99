//! The daemon's effects on steering: promote or re-attach a process's
//! generation, through the same code as `steer promote`, with the error's
//! verdict (try again, or give up) decided here once.
use std::{collections::BTreeSet, os::fd::AsFd as _, path::PathBuf};

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

/// What the daemon does to steering. [`State`] is the real one; the core's
/// tests script their own.
pub trait Steerer {
    /// Promotes `pid`'s generation on `scope` (empty: all its ports).
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<promote::Change>, StepError>;
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
}

impl State {
    #[must_use]
    pub fn new(state_dir: PathBuf) -> Self {
        Self { state_dir, open: OpenInstances::default() }
    }
}

impl Steerer for State {
    fn promote(&mut self, pid: u32, scope: &[u16]) -> Result<Vec<promote::Change>, StepError> {
        let request = promote::Request {
            pid,
            ports: scope.to_vec(),
            weight: 100,
            take_over: false,
            by_operator: false,
        };
        Ok(promote::run_kept(&self.state_dir, &request, &mut self.open)?)
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
            instance.attach(c.dup.as_fd())?;
        }
    }
    Ok(done.iter().map(sockets::key_label).collect())
}
