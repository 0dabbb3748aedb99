//! The core's vocabulary: the work waiting per group, the decisions it hands
//! to the effects, what a step did, and the reports it makes for the log and
//! the metrics.
use std::time::{Duration, Instant};

use super::{canary::Ended, core::GroupId, event::Trigger, steerer::Completion};
use crate::ops::promote::Change;

/// Work waiting for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// When to handle it (after `--ready-delay`, or a retry's backoff).
    pub due: Instant,
    /// The earliest event's time (CLOCK_MONOTONIC ns), for `latency_us`.
    pub ktime_ns: u64,
    /// The latest listening pid (0: only a close was seen; find the newest holder).
    pub pid: u32,
    /// Attempts so far that failed while the process lived.
    pub tries: u32,
    /// Times the process had left and the newest holder was taken instead.
    pub fallbacks: u32,
    /// What led here.
    pub trigger: Trigger,
}

/// What a decision asks of the effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Promote fully (policy `newest`).
    Promote,
    /// Promote with `weight` percent, a canary (`--canary`); where the group
    /// has no active generation yet, fully.
    Canary { weight: u32 },
    /// Promote a canary fully where its sockets are still the group's canary.
    Complete,
    /// Only re-attach the program (policy `manual`).
    Reattach,
    /// Ask the readiness gate about the process (`--ready-cmd`, `--ready-http`);
    /// the answer comes back later, and the promotion it holds waits for it.
    Check,
}

/// One step for the effects to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub pid: u32,
    /// The ports to act on; empty: all of the process's ports (no `--port`).
    pub scope: Vec<u16>,
    /// The groups that led here, for retries and fallbacks.
    pub groups: Vec<(GroupId, Pending)>,
    /// The earliest event's trigger and time.
    pub trigger: Trigger,
    pub ktime_ns: u64,
}

/// What a step did.
#[derive(Debug, Clone)]
pub enum Done {
    Promoted(Vec<Change>),
    Completed(Completion),
    Reattached(Vec<String>),
}

/// What the core has to say, for the log and the metrics.
#[derive(Debug, Clone)]
pub enum Report {
    /// A promotion ran; `changes` says per group whether anything changed.
    Promoted { pid: u32, trigger: Trigger, ktime_ns: u64, changes: Vec<Change> },
    /// A canary step ran; it completes after `duration` unless abandoned.
    Canaried { pid: u32, trigger: Trigger, ktime_ns: u64, changes: Vec<Change>, duration: Duration },
    /// A canary ran its course and was promoted fully.
    Completed { pid: u32, after: Duration, changes: Vec<Change> },
    /// A canary was abandoned; the active generation stays active.
    CanaryEnded { pid: u32, port: u16, why: Ended },
    /// Work for a process whose canary ended there: it is not canaried or
    /// promoted again.
    NotAgain { pid: u32, port: u16 },
    /// At start: the operator's last command set the group and does not name
    /// this generation, which may be a canary it ended; no canary is started.
    Yielded { pid: u32, port: u16 },
    /// Policy `manual`: the program was re-attached where it was missing.
    Reattached { pid: u32, ports: Vec<u16>, groups: Vec<String> },
    /// A step failed and will be tried again.
    Retrying { pid: u32, port: u16, tries: u32, error: String },
    /// A step failed for good while the process lives.
    Failed { action: Action, pid: u32, port: u16, tries: u32, error: String },
    /// The process left; its port's newest holder is tried instead.
    NextHolder { pid: u32, next: u32, port: u16 },
    /// The process left and nobody else holds the port.
    Left { pid: u32, port: u16, error: String },
    /// Work for a port whose listener is gone, with no holder left.
    Gone { port: u16 },
    /// A cap refused the step (logged once where it was decided); not retried.
    Refused { pid: u32, port: u16, error: String },
    /// The readiness gate holds the promotion until the process is ready.
    Waiting { pid: u32, ports: Vec<u16>, timeout: Duration },
    /// The process passed the readiness gate; its promotion follows.
    Ready { pid: u32, after: Duration, checks: u32 },
    /// The process did not pass the gate within `--ready-timeout`: it is not
    /// promoted, and the active generation keeps every new connection.
    NotReady { pid: u32, port: u16, after: Duration, checks: u32, reason: String },
    /// A process waiting for readiness left, or a newer generation of the
    /// group took its place; it is not promoted there.
    NoLongerWaiting { pid: u32, port: u16, why: &'static str },
    /// An operator's command set the group while the process waited for
    /// readiness: the daemon leaves it as the operator set it.
    OperatorWhileWaiting { pid: u32, port: u16 },
}
