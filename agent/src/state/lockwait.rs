//! How long the writers of this process waited for the state's lock, for the
//! daemon's metrics: a writer that has to wait is one that another `steer`
//! (or a stopped one) holds up.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

static WAITS: AtomicU64 = AtomicU64::new(0);
static WAITED_US: AtomicU64 = AtomicU64::new(0);
static TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Lock waits of this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockWaits {
    /// Writes that found the lock held and waited for it.
    pub waits: u64,
    /// Time those writes waited, in total.
    pub waited: Duration,
    /// Waits that gave up (the write was refused, naming the holder).
    pub timeouts: u64,
}

/// The lock waits of this process so far.
#[must_use]
pub fn lock_waits() -> LockWaits {
    LockWaits {
        waits: WAITS.load(Ordering::Relaxed),
        waited: Duration::from_micros(WAITED_US.load(Ordering::Relaxed)),
        timeouts: TIMEOUTS.load(Ordering::Relaxed),
    }
}

/// Counts one write that waited `waited` for the lock (and got it, or not).
pub(super) fn record(waited: Duration, timed_out: bool) {
    WAITS.fetch_add(1, Ordering::Relaxed);
    WAITED_US.fetch_add(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    if timed_out {
        TIMEOUTS.fetch_add(1, Ordering::Relaxed);
    }
}
