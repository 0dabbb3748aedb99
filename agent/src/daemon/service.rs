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
    // Before any thread starts: every thread inherits it.
    set_niceness(opts.nice);
    let stats = Arc::new(DaemonStats::new());
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("steer-io")
        .enable_all()
        .build()
        .context("start the I/O runtime")?;
    let flag = Arc::clone(&stop);
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
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = metrics {
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| {
            format!("cannot listen on {addr} for metrics; pick a free address with --metrics")
        })?;
        tracing::info!(%addr, "serving metrics on /metrics and /healthz");
        let dir = state_dir.to_path_buf();
        let stats = Arc::clone(&stats);
        rt.spawn(async move {
            let shutdown = async {
                let _ = done_rx.await;
            };
            if let Err(e) = crate::metrics::serve(listener, dir, stats, shutdown).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
    }
    let result = super::run(state_dir, opts, &stats, &stop);
    let _ = done_tx.send(());
    rt.shutdown_timeout(Duration::from_secs(1));
    result
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
