//! The daemon as a service: privileges checked, signals handled, the metrics
//! endpoint served, and the watch loop run until SIGTERM or SIGINT.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

use super::Options;
use crate::{metrics::DaemonStats, preflight};

/// Runs the daemon until SIGTERM or SIGINT. Steering stays in place afterwards.
pub fn serve(state_dir: &Path, opts: &Options, metrics: Option<SocketAddr>) -> anyhow::Result<()> {
    preflight::all()?;
    // First, so that the first log line says where events come from and why.
    let (mut source, chosen) = super::source::open(opts.source, &opts.filter, opts.poll_interval)?;
    log_source(&chosen, opts);
    // Before any thread starts: every thread inherits it.
    set_niceness(opts.nice);
    let stats = Arc::new(DaemonStats::new());
    let stop = Arc::new(AtomicBool::new(false));
    let io = Io::start(state_dir, metrics, &stats, &stop)?;
    let world = super::world::System::new(opts.filter.clone(), Arc::clone(&stats));
    let mut steerer = super::limits::Limited::new(
        super::steerer::State::new(state_dir.to_path_buf(), opts.no_migrate).with_udp(opts.udp),
        state_dir.to_path_buf(),
        opts.limits,
        Arc::clone(&stats),
    );
    let filter = opts.filter.clone();
    let (upkeep, upkeep_thread) = super::upkeep::start(state_dir, move || super::world::candidates(&filter))
        .context("start the upkeep thread")?;
    // Only now, from this thread, so that the threads started before keep the
    // normal policy at --nice. Not when polling: it waits out its interval
    // anyway, and would scan /proc at real-time priority.
    if !source.is_polling() {
        set_realtime(opts.rt_priority);
    }
    super::run(opts, source.as_mut(), &world, &mut steerer, Some(&upkeep), &stats, &stop);
    drop(upkeep);
    let _ = upkeep_thread.join();
    drop(source);
    io.stop();
    Ok(())
}

/// The daemon's first log line: where events come from, and why.
fn log_source(chosen: &super::source::Chosen, opts: &Options) {
    let poll_interval_ms = u64::try_from(opts.poll_interval.as_millis()).unwrap_or(u64::MAX);
    if chosen.source == "poll" && opts.source != super::Source::Poll {
        tracing::warn!(
            source = chosen.source,
            reason = chosen.reason,
            poll_interval_ms,
            "event source: polling instead, so new generations are seen up to one poll interval late"
        );
    } else {
        tracing::info!(
            source = chosen.source,
            reason = chosen.reason,
            forks = chosen.forks,
            poll_interval_ms,
            "event source"
        );
    }
}

/// The I/O runtime: signal handling (which sets `stop`) and the metrics endpoint.
struct Io {
    rt: tokio::runtime::Runtime,
    done: tokio::sync::oneshot::Sender<()>,
}

impl Io {
    fn start(
        state_dir: &Path,
        metrics: Option<SocketAddr>,
        stats: &Arc<DaemonStats>,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("steer-io")
            .enable_all()
            .build()
            .context("start the I/O runtime")?;
        let flag = Arc::clone(stop);
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
                }
                flag.store(true, Ordering::Relaxed);
            });
            Ok::<_, std::io::Error>(())
        })
        .context("install signal handlers")?;
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(addr) = metrics {
            let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| {
                format!("cannot listen on {addr} for metrics; pick a free address with --metrics")
            })?;
            tracing::info!(%addr, "serving metrics on /metrics and /healthz");
            let dir = state_dir.to_path_buf();
            let stats = Arc::clone(stats);
            rt.spawn(async move {
                let shutdown = async {
                    let _ = done_rx.await;
                };
                if let Err(e) = crate::metrics::serve(listener, dir, stats, shutdown).await {
                    tracing::warn!(error = %e, "metrics server stopped");
                }
            });
        }
        Ok(Self { rt, done })
    }

    /// Stops the metrics endpoint and the runtime.
    fn stop(self) {
        let _ = self.done.send(());
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Runs the calling thread (and so every thread started after it) at `nice`.
/// The reloading server and its clients keep the CPU busy exactly when a
/// promotion is due; on two busy cores the p99 from listen() to promotion was
/// 14-34 ms at niceness 0 and 4-9 ms at -10. Lowering the niceness needs
/// CAP_SYS_NICE (or systemd's `Nice=`, which the shipped unit sets); without
/// it the daemon runs on and says so.
fn set_niceness(nice: i32) {
    let current = rustix::process::getpriority_process(None).unwrap_or(0);
    if nice == current {
        return;
    }
    match rustix::process::setpriority_process(None, nice) {
        Ok(()) => tracing::info!(nice, "scheduling niceness set"),
        Err(e) => tracing::warn!(
            nice,
            current,
            error = %e,
            "cannot change the scheduling niceness (lowering it needs CAP_SYS_NICE, or Nice= in the systemd unit); promotions may wait for a CPU when it is busy"
        ),
    }
}

/// Longest CPU burst the event thread may run without blocking while it is
/// SCHED_FIFO: past the soft limit the kernel sends SIGXCPU, past the hard
/// limit SIGKILL (RLIMIT_RTTIME, microseconds). The loop blocks in poll()
/// between events, and a promotion takes about a millisecond, so only a
/// runaway loop gets near it; it then dies instead of holding a CPU, which
/// costs no connection (steering is pinned) and lets the unit restart it.
const RT_BURST_LIMIT_US: (u64, u64) = (1_000_000, 2_000_000);

/// Runs the calling thread SCHED_FIFO at `priority` (0: leave it alone). At
/// niceness -10 alone, an event that woke the daemon while both cores were busy
/// with the reload and its clients still waited up to tens of milliseconds for
/// a CPU; a real-time thread preempts them at once. It needs CAP_SYS_NICE, or an
/// RLIMIT_RTPRIO of at least `priority` (the shipped unit's `LimitRTPRIO=1`);
/// without either the thread stays at `--nice` and the daemon says so.
fn set_realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Only ever lower it: raising the hard limit needs CAP_SYS_RESOURCE. `None`
    // is unlimited.
    let limit = getrlimit(Resource::Rttime);
    let maximum = limit.maximum.map_or(RT_BURST_LIMIT_US.1, |m| m.min(RT_BURST_LIMIT_US.1));
    let current = limit.current.map_or(RT_BURST_LIMIT_US.0, |c| c.min(RT_BURST_LIMIT_US.0)).min(maximum);
    if let Err(e) = setrlimit(Resource::Rttime, Rlimit { current: Some(current), maximum: Some(maximum) }) {
        tracing::debug!(error = %e, "cannot lower RLIMIT_RTTIME");
    }
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: pid 0 is the calling thread; a valid sched_param. RESET_ON_FORK:
    // nothing this thread starts inherits the policy.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &raw const param)
    };
    if rc == 0 {
        tracing::info!(rt_priority = priority, "event thread runs SCHED_FIFO");
    } else {
        tracing::warn!(
            rt_priority = priority,
            error = %std::io::Error::last_os_error(),
            "cannot run the event thread SCHED_FIFO (it needs CAP_SYS_NICE, or LimitRTPRIO= in the systemd unit); it runs at --nice, and promotions may wait for a busy CPU"
        );
    }
}
