//! Handovers of unbound generations under dnsperf at a fixed query rate, with or without
//! steer: the figures the UDP end-to-end test asserts and `cargo xtask bench` prints.
//!
//! A handover without steer starts the new generation, waits until it has bound the
//! port, then sends SIGTERM to the old one. With steer it is one `steer reload --old OLD
//! -- ip netns exec NS unbound -d -c NEWCONF`: steer starts the new generation, promotes
//! it, releases the old generation's flows to it, waits until the old sockets' receive
//! queues are empty, then sends SIGTERM. After each handover a TXT query for
//! [`GEN_NAME`] must be answered by the new generation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::dnsperf::{Dnsperf, DnsperfConfig, DnsperfReport, write_query_file};
use crate::netns::NetNs;
use crate::procfs::{self, wait_for};
use crate::unbound::{GEN_NAME, Unbound, UnboundConfig};

/// How a handover is done.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Start the new generation, wait until it has bound the port, SIGTERM the old one.
    Unsteered,
    /// `steer --state-dir STATE_DIR reload --old OLD -- ...`, the first generation
    /// promoted with `steer promote` before the load starts.
    Steered { steer: PathBuf, state_dir: PathBuf },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct HandoverRun {
    pub handovers: usize,
    /// dnsperf's fixed rate (`-Q`), queries per second.
    pub rate: u32,
    /// dnsperf's client sockets (source ports).
    pub clients: u16,
    /// Pause after each handover.
    pub gap: Duration,
    pub port: u16,
    /// Configs, logs and the query file.
    pub dir: PathBuf,
}

impl HandoverRun {
    /// 20 handovers, 300 ms apart, at 5,000 queries per second from 16 source ports.
    #[must_use]
    pub fn new(port: u16, dir: &Path) -> HandoverRun {
        HandoverRun {
            handovers: 20,
            rate: 5_000,
            clients: 16,
            gap: Duration::from_millis(300),
            port,
            dir: dir.to_owned(),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct HandoverReport {
    pub dnsperf: DnsperfReport,
    /// Queries each generation answered, in order (from its log's statistics).
    pub answered: Vec<(String, u64)>,
    /// Handovers after which the TXT query named the new generation.
    pub new_generation_answered: usize,
    /// Wall time of each handover, milliseconds.
    pub handover_ms: Vec<u64>,
}

impl HandoverReport {
    /// One line: sent, completed, lost, and the spread of answers over generations.
    #[must_use]
    pub fn summary(&self) -> String {
        let served = self.answered.iter().filter(|(_, n)| *n > 0).count();
        let mut ms = self.handover_ms.clone();
        ms.sort_unstable();
        format!(
            "{} queries sent, {} completed, {} lost, {} in flight at the end; {} of {} generations answered, {} in all; \
             the new generation answered after {} of {} handovers; handover p50 {} ms, max {} ms",
            self.dnsperf.sent,
            self.dnsperf.completed,
            self.dnsperf.lost,
            self.dnsperf.interrupted,
            served,
            self.answered.len(),
            self.answered.iter().map(|(_, n)| n).sum::<u64>(),
            self.new_generation_answered,
            self.handover_ms.len(),
            ms.get(ms.len() / 2).copied().unwrap_or(0),
            ms.last().copied().unwrap_or(0),
        )
    }
}

/// Settle time before the first and after the last handover.
const SETTLE: Duration = Duration::from_millis(500);
/// Upper bound on a `steer reload`.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `run.handovers` handovers of unbound in `ns` under dnsperf.
///
/// # Errors
///
/// When a generation, dnsperf or steer fails; dnsperf's loss is reported, not judged.
pub fn run(ns: &NetNs, run: &HandoverRun, mode: &Mode) -> anyhow::Result<HandoverReport> {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], run.port));
    let queries = run.dir.join("queries.txt");
    write_query_file(&queries)?;
    let config = |i: usize| UnboundConfig::new(&format!("g{i}"), run.port, &run.dir);
    let mut old = Unbound::spawn(ns, config(0))?;
    if let Mode::Steered { steer, state_dir } = mode {
        steer_ok(steer_cmd(steer, state_dir).args(["promote", &old.pid().to_string()]))?;
    }
    let mut perf = DnsperfConfig::new(target, Some(run.rate), Duration::from_secs(600), &queries);
    perf.clients = run.clients;
    let load = Dnsperf::start(ns, &perf)?;
    std::thread::sleep(SETTLE);
    let mut report = HandoverReport::default();
    for i in 1..=run.handovers {
        let started = Instant::now();
        let new = match mode {
            Mode::Unsteered => {
                let new = Unbound::spawn(ns, config(i))?;
                procfs::signal(old.pid(), rustix::process::Signal::TERM)?;
                new
            }
            Mode::Steered { steer, state_dir } => reload(ns, steer, state_dir, old.pid(), config(i))?,
        };
        let generation = old.generation().to_owned();
        old.wait_exit()?;
        report.handover_ms.push(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        report.answered.push((generation, old.answered()?));
        old = new;
        match crate::dns::query_txt(ns, target, GEN_NAME) {
            Ok(name) if name == old.generation() => report.new_generation_answered += 1,
            Ok(name) => {
                eprintln!("after handover {i}: {GEN_NAME} answered by {name}, not {}", old.generation());
            }
            Err(e) => eprintln!("after handover {i}: {GEN_NAME} TXT: {e:#}"),
        }
        std::thread::sleep(run.gap);
    }
    std::thread::sleep(SETTLE);
    report.dnsperf = load.interrupt()?;
    let generation = old.generation().to_owned();
    report.answered.push((generation, old.stop()?));
    Ok(report)
}

/// `steer reload --old OLD -- ip netns exec NS unbound -d -c NEWCONF`; the new
/// generation once it has bound the port.
fn reload(
    ns: &NetNs,
    steer: &Path,
    state_dir: &Path,
    old: u32,
    config: UnboundConfig,
) -> anyhow::Result<Unbound> {
    let out = config.dir.join(format!("reload-{}.out", config.generation));
    let mut cmd = steer_cmd(steer, state_dir);
    cmd.args(["reload", "--old", &old.to_string(), "--"]).args(config.argv(ns)?);
    // The new generation inherits steer's stdout and stderr: files, not pipes.
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("spawning steer reload")?;
    let status =
        wait_for("steer reload to finish", RELOAD_TIMEOUT, || Ok(child.try_wait()?)).inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    ensure!(status.success(), "steer reload --old {old} failed ({status}): {text}");
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("new generation: pid "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no `new generation: pid N` line in steer reload's output: {text}"))?;
    Unbound::adopt(pid, config)
}

/// `steer --state-dir DIR`, without the variables that would change what it does.
#[must_use]
pub fn steer_cmd(steer: &Path, state_dir: &Path) -> Command {
    let mut cmd = Command::new(steer);
    cmd.arg("--state-dir").arg(state_dir);
    for key in ["STEER_STATE_DIR", "STEER_KERNEL_RELEASE", "STEER_MAX_SLOTS"] {
        cmd.env_remove(key);
    }
    cmd
}

/// Runs a steer command; its stdout, or an error with its stderr.
///
/// # Errors
///
/// When it cannot run or exits non-zero.
pub fn steer_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
