//! The commands of the CLI contract, one file each. Every command validates
//! everything it can before it changes anything, so a refused command leaves
//! the state as it was.
pub mod check;
pub mod detach;
pub mod promote;
pub mod ready;
pub mod reload;
pub mod rollback;
pub mod status;

use steer_abi::GroupKey;

use crate::{
    policy::PolicyError,
    preflight::PreflightError,
    proc::ProcError,
    sockets::{self, SocketError},
    state::StateError,
};

/// Why a command was refused or failed. Each message is one sentence that
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    State(#[from] StateError),
    /// The reason is part of the sentence, so it is not also a `source`: `{:#}`
    /// would print it twice.
    #[error("group {group} {reason}")]
    Policy { group: String, reason: PolicyError },
    #[error("no steered group{ports}; `steer status` lists the steered groups")]
    NoGroups { ports: String },
}

impl OpError {
    pub(crate) fn policy(key: &GroupKey) -> impl FnOnce(PolicyError) -> Self {
        let group = sockets::key_label(key);
        move |reason| Self::Policy { group, reason }
    }
}

/// " on port 80" / " on ports 80, 443" / "" (it lives with the sockets, which name ports in
/// their errors too).
pub use crate::sockets::ports_phrase;

/// Whether a group passes a `--port` filter.
#[must_use]
pub fn port_selected(key: &GroupKey, ports: &[u16]) -> bool {
    ports.is_empty() || ports.contains(&key.port)
}

/// A duplicate of the socket a slot record names (it lives with the sockets).
pub use crate::sockets::reopen;

/// The error and its sources as one sentence, like anyhow's `{:#}`.
#[must_use]
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
