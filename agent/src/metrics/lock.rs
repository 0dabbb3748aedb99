//! The state lock's waits in `/metrics`: how often and how long this daemon's
//! writes waited for another writer (a `steer` command, or a stopped one).
use prometheus_client::{
    metrics::counter::Counter,
    registry::{Registry, Unit},
};

use crate::state::LockWaits;

/// Registers `steer_lock_waits_total`, `steer_lock_wait_seconds_total` and
/// `steer_lock_timeouts_total`.
pub fn register(registry: &mut Registry, waits: LockWaits) {
    let count = Counter::<u64>::default();
    count.inc_by(waits.waits);
    registry.register(
        "lock_waits",
        "Writes of this daemon that found the state's lock held by another steer and waited",
        count,
    );
    let seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    seconds.inc_by(waits.waited.as_secs_f64());
    registry.register_with_unit(
        "lock_wait",
        "Time this daemon's writes waited for the state's lock, in total",
        Unit::Seconds,
        seconds,
    );
    let timeouts = Counter::<u64>::default();
    timeouts.inc_by(waits.timeouts);
    registry.register(
        "lock_timeouts",
        "Writes of this daemon that gave up waiting for the state's lock (STEER_LOCK_WAIT_MS, default 5 s)",
        timeouts,
    );
}
