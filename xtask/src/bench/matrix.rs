//! Section "reload matrix": the same HTTP load against HAProxy 2.6 under the same reload
//! schedule (a fixed number of reloads at fixed times), once per way of reloading (none,
//! hard restart, `-sf`, `-sf -x`, `-sf` with `tcp_migrate_req`, `-sf` with `steer daemon`,
//! `steer reload`, master-worker with and without the daemon), each mode in a fresh
//! network namespace. Per mode: requests, failures by
//! class, successful requests per second, latency percentiles, reloads done (and tried),
//! and for the steer modes the promotions the daemon logged.
//!
//! Besides `bench.json` and `bench.md`, the section writes `target/bench/matrix.md` (one
//! row per mode) and `target/bench/matrix.png` (failures and latency per mode).

mod mode;
mod table;

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use steer_harness::haproxy::Mode as HaproxyMode;

use super::{Ctx, Findings, Row, Section, chart};
use mode::Outcome;

pub const SECTION: Section =
    Section { key: "reload_matrix", title: "reload matrix: HAProxy reloads under load", run };

/// Reloads each reloading mode performs, full run: the same number at the same times in
/// every mode (one every [`INTERVAL`] from the start of the load), so that rate and tail
/// latency compare row against row. The baseline runs as long without reloading.
const RELOADS: u32 = 40;
/// Reloads per mode with `--quick`.
const RELOADS_QUICK: u32 = 8;
/// Time between two scheduled reloads. `steer reload` waits for the new process to
/// listen and for the old one to drain, a few hundred milliseconds with `haproxy -D`, so
/// the schedule is one every half second; a reload that starts late is counted as late.
const INTERVAL: Duration = Duration::from_millis(500);
/// Load workers, each with one request (one new connection) in flight.
const CONCURRENCY: usize = 20;

/// One way of running and reloading HAProxy.
pub struct Mode {
    /// Its name in the table, `bench.json` and the daemon's log file.
    pub key: &'static str,
    /// What it does, for `matrix.md`.
    pub what: &'static str,
    /// How HAProxy runs and reloads; `None`: daemon mode, never reloaded (the baseline).
    pub reload: Option<HaproxyMode>,
    /// `net.ipv4.tcp_migrate_req=1` in the mode's namespace.
    pub migrate_req: bool,
    /// `steer daemon --comm haproxy` runs through the mode.
    pub steer: bool,
    /// Who carries each reload out.
    pub reloader: Reloader,
    /// `--quick` fails when a request of this mode fails.
    pub lossless: bool,
}

/// Who carries a reload out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloader {
    /// HAProxy itself, as [`Mode::reload`] says (`-sf`, `-st`, `-x`, SIGUSR2).
    Haproxy,
    /// `steer reload --old PID --signal USR1 -- haproxy -D ...` (no `-sf`): steer starts
    /// the new process, promotes it once it listens, waits until the old one's queues are
    /// empty, then tells it to finish. No kernel migration is involved.
    SteerReload,
    /// The same in select-only mode (`steer promote --no-migrate` first): the program is
    /// loaded as `BPF_SK_REUSEPORT_SELECT`, as on kernels before 5.14, and nothing can
    /// migrate, so the drain before the signal is all that keeps queues from resets.
    SteerReloadSelectOnly,
}

/// Every mode, in the order they run.
const MODES: &[Mode] = &[
    Mode {
        key: "no_reload",
        what: "`haproxy -D`, never reloaded (the baseline)",
        reload: None,
        migrate_req: false,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: false,
    },
    Mode {
        key: "hard_restart",
        what: "a new `haproxy -D` with `-st OLD`: the old process stops at once",
        reload: Some(HaproxyMode::DaemonHardRestart),
        migrate_req: false,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: false,
    },
    Mode {
        key: "plain_reload",
        what: "a new `haproxy -D` with `-sf OLD`: a socket of its own, the old one finishes",
        reload: Some(HaproxyMode::Daemon),
        migrate_req: false,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: false,
    },
    Mode {
        key: "socket_transfer",
        what: "`-sf OLD -x ADMIN_SOCK`: the listeners pass over the admin socket",
        reload: Some(HaproxyMode::DaemonSocketTransfer),
        migrate_req: false,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: true,
    },
    Mode {
        key: "kernel_migration",
        what: "`-sf OLD` with `net.ipv4.tcp_migrate_req=1` in the namespace",
        reload: Some(HaproxyMode::Daemon),
        migrate_req: true,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: false,
    },
    Mode {
        key: "steer_daemon",
        what: "`-sf OLD` with `steer daemon --comm haproxy` promoting each new process",
        reload: Some(HaproxyMode::Daemon),
        migrate_req: false,
        steer: true,
        reloader: Reloader::Haproxy,
        lossless: true,
    },
    Mode {
        key: "steer_reload",
        what: "`steer reload --old OLD --signal USR1 -- haproxy -D` (no `-sf`): promote once it listens, drain, then stop the old one",
        reload: Some(HaproxyMode::Daemon),
        migrate_req: false,
        steer: false,
        reloader: Reloader::SteerReload,
        lossless: true,
    },
    Mode {
        key: "steer_reload_select_only",
        what: "`steer reload` as above in select-only mode (`--no-migrate`, as before Linux 5.14): no queue migration, the drain alone",
        reload: Some(HaproxyMode::Daemon),
        migrate_req: false,
        steer: false,
        reloader: Reloader::SteerReloadSelectOnly,
        lossless: true,
    },
    Mode {
        key: "master_worker",
        what: "`haproxy -W -D`, reloaded with SIGUSR2 to the master (a new worker, same sockets)",
        reload: Some(HaproxyMode::MasterWorker),
        migrate_req: false,
        steer: false,
        reloader: Reloader::Haproxy,
        lossless: false,
    },
    Mode {
        key: "master_worker_steer",
        what: "master-worker as above, with `steer daemon --comm haproxy`",
        reload: Some(HaproxyMode::MasterWorker),
        migrate_req: false,
        steer: true,
        reloader: Reloader::Haproxy,
        lossless: true,
    },
];

fn run(ctx: &Ctx) -> Result<Findings> {
    let reloads = if ctx.quick { RELOADS_QUICK } else { RELOADS };
    let duration = INTERVAL * reloads;
    let version = super::haproxy_version()?;
    let mut findings = Findings {
        setup: format!(
            "{version}; {} modes, each in a fresh netns: {CONCURRENCY} closed-loop HTTP clients, \
             a new connection per request, and the same schedule in every mode: {reloads} \
             reloads, one every {} ms from the start of the load (a reload still running when \
             the next is due delays it, and counts as late), then {} s of load without reloads",
            MODES.len(),
            INTERVAL.as_millis(),
            mode::SETTLE.as_secs_f64()
        ),
        ..Findings::default()
    };
    let mut outcomes = Vec::new();
    let mut modes_data = Vec::new();
    for (index, mode) in MODES.iter().enumerate() {
        println!("   [{}/{}] {}: {}", index + 1, MODES.len(), mode.key, mode.what);
        match mode::run(ctx, mode, reloads).with_context(|| format!("mode {}", mode.key)) {
            Ok(outcome) => {
                println!("   [{}/{}] {}", index + 1, MODES.len(), outcome.summary());
                modes_data.push(outcome.json());
                outcomes.push(outcome);
            }
            Err(err) => {
                println!("   [{}/{}] {}: FAILED: {err:#}", index + 1, MODES.len(), mode.key);
                findings.failures.push(format!("{err:#}"));
                modes_data.push(json!({ "mode": mode.key, "what": mode.what, "error": format!("{err:#}") }));
            }
        }
    }

    let table = table::markdown(&outcomes);
    let md_path = ctx.out_dir.join("matrix.md");
    let md = format!(
        "# Reload matrix ({})\n\n{}.\n\n{table}{}",
        if ctx.quick { "quick" } else { "full" },
        findings.setup,
        table::legend(MODES)
    );
    std::fs::write(&md_path, md).with_context(|| format!("could not write {}", md_path.display()))?;
    let png_path = ctx.out_dir.join("matrix.png");
    chart::reload_matrix(&png_path, &outcomes.iter().map(Outcome::bars).collect::<Vec<_>>())
        .with_context(|| format!("could not draw {}", png_path.display()))?;
    println!("   wrote {} and {}", md_path.display(), png_path.display());

    for outcome in &outcomes {
        findings.rows.extend(outcome.rows());
        if ctx.quick {
            findings.failures.extend(outcome.quick_failures());
        }
    }
    findings.markdown = Some(table);
    let data = json!({
        "haproxy": version,
        "duration_secs": duration.as_secs_f64(),
        "reloads_scheduled": reloads,
        "interval_ms": INTERVAL.as_millis(),
        "concurrency": CONCURRENCY,
        "modes": modes_data,
        "table": md_path,
        "chart": png_path,
    });
    findings.data = data.as_object().cloned().unwrap_or_default();
    Ok(findings)
}

impl Outcome {
    /// Summary rows: failures of every mode, reloads of the reloading ones.
    fn rows(&self) -> Vec<Row> {
        let key = self.mode.key;
        let failed = self.load.failed();
        let mut failed_row =
            Row::new(format!("{key}: failed / requests"), format!("{failed} / {}", self.load.requests));
        if self.mode.lossless {
            failed_row = failed_row.target("0", Some(failed == 0));
        }
        let mut rows = vec![failed_row];
        if self.mode.reload.is_some() {
            rows.push(Row::new(
                format!("{key}: reloads done / tried"),
                format!(
                    "{} / {} ({:.1}/s, {} late)",
                    self.reloads.performed,
                    self.reloads.attempted,
                    self.reloads.rate(),
                    self.reloads.late
                ),
            ));
        }
        rows
    }

    /// What `--quick` holds the mode to: requests made, reloads done, and no failure for a
    /// lossless mode.
    fn quick_failures(&self) -> Vec<String> {
        let (key, load) = (self.mode.key, &self.load);
        let mut failures = Vec::new();
        if load.requests == 0 {
            failures.push(format!("{key}: the load made no request; first errors: {:?}", load.first_errors));
        }
        if self.mode.reload.is_some() && self.reloads.performed == 0 {
            failures.push(format!(
                "{key}: no reload done of {} tried; first errors: {:?}",
                self.reloads.attempted, self.reloads.first_errors
            ));
        }
        if self.mode.lossless && load.failed() > 0 {
            failures.push(format!(
                "{key}: {} of {} requests failed over {} reloads (connect errors {}, resets {}, \
                 timeouts {}, short replies {}, bad replies {}, other {}); first errors: {:?}",
                load.failed(),
                load.requests,
                self.reloads.performed,
                load.connect_errors,
                load.resets,
                load.timeouts,
                load.short_replies,
                load.bad_replies,
                load.other_errors,
                load.first_errors
            ));
        }
        failures
    }
}
