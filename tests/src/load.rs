//! The closed-loop load generator: worker threads each open one TCP connection per
//! request, classify the reply, and count successes per generation and pid, failures
//! per class, and latency; bounded by a stop flag, a duration and a request count.

mod classify;
mod histogram;
#[cfg(test)]
mod selftest;
mod worker;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use serde::{Deserialize, Serialize};

pub use classify::{Answer, Verdict, classify};
pub use histogram::Histogram;

use worker::Tally;

/// How many error messages a report keeps.
const FIRST_ERRORS: usize = 10;
/// How long [`start`] waits for every worker to enter the network namespace.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// Connect, read `gen=<NAME> pid=<PID>\n` until EOF.
    #[default]
    Line,
    /// `GET / HTTP/1.1` with `Connection: close`; status 200 and a `gen=` body.
    Http,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    /// Worker threads, each with at most one request in flight.
    pub concurrency: usize,
    /// Workers start no request after this long.
    pub max_duration: Duration,
    /// Workers start no more than this many requests in total.
    pub max_requests: Option<u64>,
    /// Bound on each request (connect, and the whole reply).
    pub timeout: Duration,
    pub protocol: Protocol,
    /// A network namespace file (`/run/netns/NAME`) each worker enters first.
    pub netns: Option<PathBuf>,
}

impl LoadConfig {
    /// 8 workers, 10 s, no request limit, 5 s timeout, line protocol, current netns.
    #[must_use]
    pub fn new(target: SocketAddr) -> LoadConfig {
        LoadConfig {
            target,
            concurrency: 8,
            max_duration: Duration::from_secs(10),
            max_requests: None,
            timeout: Duration::from_secs(5),
            protocol: Protocol::Line,
            netns: None,
        }
    }
}

/// Latency of successful requests (connect start to reply complete), microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// Totals of a run (or of a run so far).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests finished, whatever their outcome.
    pub requests: u64,
    pub ok: u64,
    /// Connect failed (refused, unreachable, ...).
    pub connect_errors: u64,
    /// ECONNRESET / EPIPE while connecting, writing or reading.
    pub resets: u64,
    /// Connect or reply not done within the timeout.
    pub timeouts: u64,
    /// EOF before the reply was complete.
    pub short_replies: u64,
    /// A complete reply that is no success: HTTP status not 200, no `gen=`, too long.
    pub bad_replies: u64,
    /// Any other I/O error.
    pub other_errors: u64,
    pub by_generation: BTreeMap<String, u64>,
    pub by_pid: BTreeMap<u32, u64>,
    pub latency_us: LatencyUs,
    pub elapsed_secs: f64,
    /// Successful requests per second.
    pub rps: f64,
    /// The first few failures, for diagnosis.
    pub first_errors: Vec<String>,
}

impl LoadReport {
    /// All failures, whatever their class.
    #[must_use]
    pub fn failed(&self) -> u64 {
        self.connect_errors
            + self.resets
            + self.timeouts
            + self.short_replies
            + self.bad_replies
            + self.other_errors
    }
}

/// State the workers share with their [`LoadHandle`].
struct Shared {
    stop: AtomicBool,
    /// Requests started, against `max_requests`.
    tickets: AtomicU64,
    /// One per worker, so workers never contend.
    tallies: Vec<Mutex<Tally>>,
    errors_seen: AtomicUsize,
    first_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn lock_tally(&self, index: usize) -> MutexGuard<'_, Tally> {
        // A tally is plain counters: still meaningful if a holder panicked.
        self.tallies[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the message of one of the first failures; builds it only then.
    fn note_error(&self, message: impl FnOnce() -> String) {
        if self.errors_seen.fetch_add(1, Ordering::Relaxed) < FIRST_ERRORS {
            self.first_errors.lock().unwrap_or_else(PoisonError::into_inner).push(message());
        }
    }

    fn report(&self, elapsed: Duration) -> LoadReport {
        let mut total = Tally::default();
        for index in 0..self.tallies.len() {
            total.merge(&self.lock_tally(index));
        }
        let elapsed_secs = elapsed.as_secs_f64();
        #[expect(clippy::cast_precision_loss, reason = "a rate, precision to spare")]
        let rps = if elapsed_secs > 0.0 { total.ok as f64 / elapsed_secs } else { 0.0 };
        let h = &total.latency_us;
        LoadReport {
            requests: total.requests,
            ok: total.ok,
            connect_errors: total.connect_errors,
            resets: total.resets,
            timeouts: total.timeouts,
            short_replies: total.short_replies,
            bad_replies: total.bad_replies,
            other_errors: total.other_errors,
            by_generation: total.by_generation,
            by_pid: total.by_pid,
            latency_us: LatencyUs {
                p50: h.quantile_ppm(500_000),
                p99: h.quantile_ppm(990_000),
                p999: h.quantile_ppm(999_000),
                max: h.max(),
            },
            elapsed_secs,
            rps,
            first_errors: self.first_errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// A load run in progress. Dropping it stops and joins the workers.
pub struct LoadHandle {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl LoadHandle {
    /// Totals so far (requests in flight are not counted yet).
    #[must_use]
    pub fn snapshot(&self) -> LoadReport {
        self.shared.report(self.started.elapsed())
    }

    /// Whether every worker has finished (out of time or of requests).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Tells the workers to stop after their current request, joins them, and reports.
    #[must_use]
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the workers finish by themselves (duration or request limit).
    #[must_use]
    pub fn wait(mut self) -> LoadReport {
        self.join()
    }

    fn join(&mut self) -> LoadReport {
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                self.shared.note_error(|| "a load worker panicked".to_owned());
            }
        }
        self.shared.report(self.started.elapsed())
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Starts the workers; returns once each is in its network namespace and running.
///
/// # Errors
///
/// When the configuration is unusable, a thread cannot start, or a worker cannot
/// enter the network namespace.
pub fn start(cfg: LoadConfig) -> anyhow::Result<LoadHandle> {
    ensure!(cfg.concurrency > 0, "concurrency must be at least 1");
    ensure!(!cfg.timeout.is_zero(), "the request timeout must be above zero");
    let netns = match &cfg.netns {
        Some(path) => {
            Some(Arc::new(File::open(path).with_context(|| format!("opening netns {}", path.display()))?))
        }
        None => None,
    };
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
        tallies: (0..cfg.concurrency).map(|_| Mutex::default()).collect(),
        errors_seen: AtomicUsize::new(0),
        first_errors: Mutex::default(),
    });
    let started = Instant::now();
    let deadline = started + cfg.max_duration;
    let mut handle = LoadHandle { shared: Arc::clone(&shared), workers: Vec::new(), started };
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    for index in 0..cfg.concurrency {
        let (cfg, shared, netns, ready) =
            (Arc::clone(&cfg), Arc::clone(&shared), netns.clone(), ready_tx.clone());
        let worker = std::thread::Builder::new()
            .name(format!("load-{index}"))
            .spawn(move || {
                if let Some(file) = netns {
                    let entered = crate::netns::enter_netns_file(&file);
                    let failed = entered.is_err();
                    let _ = ready.send(entered);
                    if failed {
                        return;
                    }
                } else {
                    let _ = ready.send(Ok(()));
                }
                worker::work(index, &cfg, &shared, deadline);
            })
            .context("spawning a load worker")?;
        handle.workers.push(worker);
    }
    drop(ready_tx);
    for _ in 0..cfg.concurrency {
        // On error, dropping `handle` stops and joins the workers already running.
        ready_rx
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| anyhow!("load workers did not start within {SETUP_TIMEOUT:?}"))?
            .context("a load worker could not enter the network namespace")?;
    }
    Ok(handle)
}

/// Runs to the end: until `max_duration` passes or `max_requests` have been made.
///
/// # Errors
///
/// As [`start`].
pub fn run(cfg: LoadConfig) -> anyhow::Result<LoadReport> {
    Ok(start(cfg)?.wait())
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
