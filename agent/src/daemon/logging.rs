//! The daemon's log lines: what each of the core's reports says, and which
//! of them count in the metrics.
use super::{core::Action, core::Report, monotonic_ns};
use crate::{metrics::DaemonStats, ops::promote::Change, policy::Outcome};

/// Logs the core's reports, and counts promotions.
pub(super) fn log(reports: &[Report], stats: &DaemonStats) {
    for report in reports {
        match report {
            Report::Promoted { pid, trigger, ktime_ns, changes } => {
                log_changes(*pid, trigger.as_str(), Some(*ktime_ns), changes, stats);
            }
            Report::Canaried { pid, trigger, ktime_ns, changes, duration } => {
                let latency_us = monotonic_ns().saturating_sub(*ktime_ns) / 1000;
                let trigger = trigger.as_str();
                let completes_in_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                for c in changes {
                    match c.outcome {
                        Outcome::Canary { weight } => {
                            tracing::info!(pid, group = %c.group, weight, slot = c.first_slot, generation = c.generation, sockets = c.sockets, latency_us, trigger, completes_in_ms, "canary started");
                        }
                        Outcome::AlreadyCanary { weight } => {
                            tracing::info!(pid, group = %c.group, weight, trigger, completes_in_ms, "canary runs on");
                        }
                        _ => log_changes(*pid, trigger, Some(*ktime_ns), std::slice::from_ref(c), stats),
                    }
                }
            }
            Report::Completed { pid, after, changes } => {
                let canary_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(pid, canary_ms, "canary ran its course; promoting it fully");
                log_changes(*pid, "canary", None, changes, stats);
            }
            Report::CanaryEnded { pid, port, why } => {
                tracing::info!(
                    pid,
                    port,
                    why = why.as_str(),
                    "canary abandoned; the active generation keeps every new connection, and it is not promoted"
                );
            }
            Report::NotAgain { pid, port } => {
                tracing::debug!(pid, port, "not canaried again: its canary ended");
            }
            Report::Yielded { pid, port } => {
                tracing::info!(
                    pid,
                    port,
                    "not adopted: the operator's last command set this group and does not name this generation (it may be a canary that command ended); a generation that listens from now on is canaried"
                );
            }
            Report::Reattached { pid, ports, groups } => {
                tracing::info!(pid, ?ports, reattached = ?groups, "new generation listening; not promoted (policy manual)");
            }
            Report::Retrying { pid, port, tries, error } => {
                tracing::debug!(pid, port, tries, error, "not promoted yet; trying again");
            }
            Report::Failed { action: Action::Reattach, pid, port, tries, error } => {
                tracing::warn!(pid, port, tries, error, "re-attach failed");
            }
            Report::Failed { action, pid, port, tries, error } => {
                tracing::warn!(pid, port, tries, error, action = ?action, "promote failed");
            }
            Report::NextHolder { pid, next, port } => {
                tracing::debug!(
                    pid,
                    next,
                    port,
                    "listener's process left; promoting the port's newest holder"
                );
            }
            Report::Left { pid, port, error } => {
                tracing::debug!(pid, port, error, "the new listener's process left");
            }
            Report::Gone { port } => tracing::debug!(port, "new listener gone before it could be handled"),
            // Logged (once per process or namespace) and counted where the cap decided.
            Report::Refused { pid, port, error } => tracing::debug!(pid, port, error, "refused by a cap"),
            Report::Waiting { pid, ports, timeout } => {
                let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(
                    pid,
                    ?ports,
                    timeout_ms,
                    "waiting for readiness; no new connection goes to it until it is ready"
                );
            }
            Report::Ready { pid, after, checks } => {
                let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(pid, after_ms, checks, "ready");
            }
            Report::NotReady { pid, port, after, checks, reason } => {
                stats.record_not_ready();
                let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(
                    pid,
                    port,
                    after_ms,
                    checks,
                    reason,
                    "not ready within --ready-timeout; not promoted, and the active generation keeps every new connection"
                );
            }
            Report::NoLongerWaiting { pid, port, why } => {
                tracing::info!(pid, port, why, "no longer waiting for readiness; not promoted");
            }
            Report::OperatorWhileWaiting { pid, port } => {
                tracing::info!(
                    pid,
                    port,
                    "not promoted: an operator's command set this group while it waited for readiness"
                );
            }
        }
    }
}

/// Logs what a promotion did per group, and counts those that changed.
fn log_changes(pid: u32, trigger: &str, ktime_ns: Option<u64>, changes: &[Change], stats: &DaemonStats) {
    let latency_us = ktime_ns.map(|k| monotonic_ns().saturating_sub(k) / 1000);
    for c in changes {
        if c.changed {
            stats.record_promotion(&c.group);
            tracing::info!(pid, group = %c.group, slot = c.first_slot, generation = c.generation, sockets = c.sockets, latency_us, trigger, previous = ?c.previous_pids, "promoted");
        } else if c.outcome == Outcome::HeldByOperator {
            tracing::info!(pid, group = %c.group, trigger, "not promoted: the operator's last command (promote, rollback or a canary by hand) set this group, and this generation is one it named");
        } else {
            tracing::debug!(pid, group = %c.group, trigger, "already active");
        }
    }
}
