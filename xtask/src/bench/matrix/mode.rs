//! One mode of the reload matrix: a fresh namespace, HAProxy (and the daemon, for the steer
//! modes), the load, and the reload schedule; and what it measured.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use steer_harness::{
    haproxy::{Haproxy, Mode as HaproxyMode},
    load::{self, LoadConfig, LoadHandle, LoadReport, Protocol},
    netns::NetNs,
    procfs,
};

use super::{CONCURRENCY, INTERVAL, Mode, Reloader};
use crate::{
    bench::{
        Ctx, Summary, chart,
        daemon::{self, Daemon},
    },
    release::Steer,
    util::ms,
};

/// HAProxy's frontend port, inside each mode's namespace.
const PORT: u16 = 8080;
/// Load after the reload window, so the last reload's old process finishing is covered.
pub const SETTLE: Duration = Duration::from_millis(500);
/// A reload that starts more than this after its time counts as late.
const LATE: Duration = Duration::from_millis(20);
/// How often a long mode prints how it is going.
const PROGRESS: Duration = Duration::from_secs(5);
/// Reload errors kept for the report.
const FIRST_ERRORS: usize = 5;

/// What every mode adds to the harness's HAProxy config: old processes stopped 10 s after
/// a reload at the latest, and `grace 100ms`, which docs/haproxy.md recommends with steer:
/// an old process keeps accepting that long after its soft-stop signal, so that it does
/// not close connections it has just accepted. Every mode gets both, so that the modes
/// differ only in how they reload.
const GLOBAL: &[&str] = &["hard-stop-after 10s", "grace 100ms"];

/// What one mode measured.
pub struct Outcome {
    pub mode: &'static Mode,
    pub load: LoadReport,
    pub reloads: Reloads,
    /// Steer modes: the daemon's `promoted` lines after it started watching, and before.
    pub promotions: Option<(usize, usize)>,
    pub promote_failed: usize,
    /// `TcpExt` `TCPMigrateReqSuccess` and `TCPMigrateReqFailure` of the namespace.
    pub migrate_req: (Option<u64>, Option<u64>),
    /// Steer modes: the daemon's log.
    pub daemon_log: Option<PathBuf>,
}

/// The reloads of one mode.
#[derive(Default)]
pub struct Reloads {
    pub attempted: u32,
    pub performed: u32,
    /// Each reload's duration (command or signal to the new process listening), µs.
    durations_us: Vec<u64>,
    pub first_errors: Vec<String>,
    /// Reloads that started more than [`LATE`] after their time (the one before ran
    /// long), and the latest start.
    pub late: u32,
    max_late: Duration,
    /// From the first reload's start to the end of the last one.
    window: Duration,
}

impl Reloads {
    /// Reloads done per second of the reload window.
    pub fn rate(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { f64::from(self.performed) / secs } else { 0.0 }
    }
}

/// Runs `mode` through `scheduled` reloads, one every [`INTERVAL`] (and [`SETTLE`]);
/// everything it started is stopped on return.
pub fn run(ctx: &Ctx, mode: &'static Mode, scheduled: u32) -> Result<Outcome> {
    let duration = INTERVAL * scheduled;
    let ns = NetNs::new("matrix")?;
    if mode.migrate_req {
        ns.set_sysctl("net.ipv4.tcp_migrate_req", "1")?;
    }
    let dir = ctx.haproxy_dir(&format!("matrix-{}", mode.key))?;
    let haproxy_mode = mode.reload.unwrap_or(HaproxyMode::Daemon);
    let mut hap = Haproxy::start_with(&ns, &dir, haproxy_mode, PORT, GLOBAL).context("starting HAProxy")?;
    let reloading_steer = matches!(mode.reloader, Reloader::SteerReload | Reloader::SteerReloadSelectOnly);
    let steer = if mode.steer || reloading_steer { Some(ctx.steer()?) } else { None };
    if let (Some(steer), true) = (&steer, reloading_steer) {
        // `steer reload` hands over from the active generation: make the first one so.
        let pid = hap.pid().to_string();
        let mut args = vec!["promote", pid.as_str()];
        if mode.reloader == Reloader::SteerReloadSelectOnly {
            args.push("--no-migrate");
        }
        run_steer(steer, &args, &ctx.out_dir.join("steer-reload.out"))?;
    }
    let log_path = ctx.out_dir.join(format!("daemon-matrix-{}.log", mode.key));
    let mut daemon = match &steer {
        Some(steer) if mode.steer => {
            let netns = ns.path();
            // The bench runs HAProxy and nginx as root: `--user 0` is what verifies them.
            let args = ["--comm", "haproxy", "--user", "0", "--netns"]
                .map(AsRef::as_ref)
                .into_iter()
                .chain([netns.as_os_str()]);
            Some(Daemon::spawn(steer, args, &log_path)?)
        }
        _ => None,
    };

    let mut load_cfg = LoadConfig::new(([127, 0, 0, 1], PORT).into());
    load_cfg.protocol = Protocol::Http;
    load_cfg.concurrency = CONCURRENCY;
    load_cfg.max_duration = duration + SETTLE + Duration::from_secs(60);
    load_cfg.netns = Some(ns.path());
    // On an error below, dropping the handle stops and joins the workers.
    let running = load::start(load_cfg).context("starting the load")?;
    let started = Instant::now();
    let mut progress = Progress { mode: mode.key, started, next: started + PROGRESS };
    let mut reloads = Reloads::default();
    // Reload i is due INTERVAL * i after the start; one still running delays the next.
    for i in 0..scheduled {
        let due = started + INTERVAL * i;
        progress.wait_until(due, &running, &reloads);
        let begun = Instant::now();
        if mode.reload.is_none() {
            continue;
        }
        let late = begun.saturating_duration_since(due);
        if late > LATE {
            reloads.late += 1;
        }
        reloads.max_late = reloads.max_late.max(late);
        reloads.attempted += 1;
        let done = match (&steer, mode.reloader) {
            (Some(steer), Reloader::SteerReload | Reloader::SteerReloadSelectOnly) => {
                steer_reload(steer, &mut hap, &ctx.out_dir)
            }
            _ => hap.reload().map(drop),
        };
        match done {
            Ok(()) => {
                reloads.performed += 1;
                reloads.durations_us.push(u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Err(err) if reloads.first_errors.len() < FIRST_ERRORS => {
                reloads.first_errors.push(format!("reload {}: {err:#}", reloads.attempted));
            }
            Err(_) => {}
        }
        reloads.window = started.elapsed();
    }
    let end = (started + duration).max(Instant::now());
    progress.wait_until(end + SETTLE, &running, &reloads);
    let load = running.stop();
    let migrate_req = (
        procfs::tcp_ext(hap.pid(), "TCPMigrateReqSuccess"),
        procfs::tcp_ext(hap.pid(), "TCPMigrateReqFailure"),
    );

    let (mut promotions, mut promote_failed) = (None, 0);
    if let Some(daemon) = &mut daemon {
        daemon.stop()?;
        let lines = daemon.lines()?;
        // The promotions logged before `watching` adopted the HAProxy running at start.
        let watching = lines.iter().position(|line| daemon::message(line) == Some("watching")).unwrap_or(0);
        let count = |lines: &[Value]| lines.iter().filter(|line| daemon::is_promoted(line)).count();
        promotions = Some((count(&lines[watching..]), count(&lines[..watching])));
        promote_failed = daemon::failed_promotes(lines);
    }
    let daemon_log = mode.steer.then_some(log_path);
    Ok(Outcome { mode, load, reloads, promotions, promote_failed, migrate_req, daemon_log })
}

/// One reload by `steer reload`: the next HAProxy started without `-sf`, promoted once it
/// listens, the old one told to finish (SIGUSR1, HAProxy's soft stop) once its queues are
/// empty. Its report goes to `steer-reload.out` in `out_dir`.
fn steer_reload(steer: &Steer, hap: &mut Haproxy<'_>, out_dir: &Path) -> Result<()> {
    let old = hap.pid().to_string();
    let next = hap.next_generation()?;
    let mut args: Vec<OsString> = ["reload", "--old", &old, "--signal", "USR1", "--drain-timeout", "5", "--"]
        .map(OsString::from)
        .into();
    args.push(next.get_program().to_owned());
    args.extend(next.get_args().map(ToOwned::to_owned));
    let out = out_dir.join("steer-reload.out");
    let report = run_steer(steer, &args, &out)?;
    let new = report
        .lines()
        .find_map(|l| l.strip_prefix("new generation: pid "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no new pid in the report of `steer reload`: {report:?}"))?;
    hap.adopt(new);
    Ok(())
}

/// Runs `steer ARGS`, its stdout in a file (not a pipe: a daemonising server it starts may
/// keep a pipe open) and its stderr appended to `out` too; returns its stdout.
fn run_steer<S: AsRef<OsStr>>(steer: &Steer, args: &[S], out: &Path) -> Result<String> {
    let stdout_path = out.with_extension("stdout");
    let stdout =
        std::fs::File::create(&stdout_path).with_context(|| format!("create {}", stdout_path.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("open {}", out.display()))?;
    let status = steer
        .command(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        .status()
        .context("could not run steer")?;
    let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    if !status.success() {
        bail!("`steer` failed ({status}); its errors are in {}", out.display());
    }
    Ok(text)
}

/// Prints a line every [`PROGRESS`] while a mode runs.
struct Progress {
    mode: &'static str,
    started: Instant,
    next: Instant,
}

impl Progress {
    /// Sleeps until `until`, printing progress lines when they are due.
    fn wait_until(&mut self, until: Instant, running: &LoadHandle, reloads: &Reloads) {
        loop {
            let now = Instant::now();
            if now >= self.next {
                let load = running.snapshot();
                println!(
                    "      {}: {:.0} s, {} requests, {} failed, {} reloads",
                    self.mode,
                    self.started.elapsed().as_secs_f64(),
                    load.requests,
                    load.failed(),
                    reloads.performed
                );
                self.next += PROGRESS;
            }
            if now >= until {
                return;
            }
            std::thread::sleep(until.min(self.next) - now);
        }
    }
}

impl Outcome {
    /// One line for the console when the mode is done.
    pub fn summary(&self) -> String {
        let load = &self.load;
        let mut line = format!(
            "{}: {} requests, {} failed (connect {}, resets {}, timeouts {}, short {}), {:.0} req/s, \
             p99 {:.2} ms",
            self.mode.key,
            load.requests,
            load.failed(),
            load.connect_errors,
            load.resets,
            load.timeouts,
            load.short_replies,
            load.rps,
            ms(load.latency_us.p99)
        );
        if self.mode.reload.is_some() {
            let r = &self.reloads;
            let took = Summary::of(&r.durations_us);
            line += &format!(
                ", {}/{} reloads ({:.1}/s, each {:.0} ms median, {} late, latest by {:.0} ms)",
                r.performed,
                r.attempted,
                r.rate(),
                ms(took.p50),
                r.late,
                r.max_late.as_secs_f64() * 1000.0
            );
            for error in &r.first_errors {
                line += &format!("\n      {error}");
            }
        }
        if let Some((promotions, _)) = self.promotions {
            line += &format!(", {promotions} promotions");
        }
        line
    }

    /// Every number of the mode, for `bench.json`.
    pub fn json(&self) -> Value {
        let (mode, r) = (self.mode, &self.reloads);
        let took = Summary::of(&r.durations_us);
        json!({
            "mode": mode.key,
            "what": mode.what,
            "reload": mode.reload.map(|reload| format!("{reload:?}")),
            "tcp_migrate_req": mode.migrate_req,
            "steer_daemon": mode.steer,
            "reloader": format!("{:?}", mode.reloader),
            "load": self.load,
            "failed": self.load.failed(),
            "reloads": {
                "attempted": r.attempted,
                "performed": r.performed,
                "window_secs": r.window.as_secs_f64(),
                "per_sec": r.rate(),
                "duration_us": { "p50": took.p50, "p99": took.p99, "max": took.max },
                "late": r.late,
                "max_late_ms": r.max_late.as_secs_f64() * 1000.0,
                "first_errors": r.first_errors,
            },
            "promotions": self.promotions.map(|p| p.0),
            "adoption_promotions": self.promotions.map(|p| p.1),
            "promote_failed": mode.steer.then_some(self.promote_failed),
            "tcp_migrate_req_success": self.migrate_req.0,
            "tcp_migrate_req_failure": self.migrate_req.1,
            "daemon_log": self.daemon_log,
        })
    }

    /// What the chart shows of the mode.
    pub fn bars(&self) -> chart::ModeBars {
        let l = &self.load.latency_us;
        chart::ModeBars {
            label: self.mode.key.to_owned(),
            failed: self.load.failed(),
            latency_ms: [ms(l.p50), ms(l.p99), ms(l.p999)],
        }
    }
}
