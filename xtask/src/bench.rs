//! `cargo xtask bench`: steer measured, one [`Section`] per figure, each in a fresh network
//! namespace. Every number goes to `target/bench/bench.json`, a summary to
//! `target/bench/bench.md`, and the same summary is printed as a table.
//!
//! Sections, in order: the reload matrix, every HAProxy reload method side by side under
//! the same load (`bench/matrix.rs`, which also writes `matrix.md` and `matrix.png`); the
//! daemon's detection-to-promotion latency (`bench/latency.rs`) and memory over many
//! generations (`bench/memory.rs`); the program's overhead on HAProxy's connection rate
//! and its cost per run (`bench/overhead.rs`); `steer promote` wall time for 1 and 100
//! ports (`bench/promote.rs`); and 1,000 groups and 64 generations (`bench/scale.rs`). A
//! new measurement is one more entry in [`SECTIONS`]. Targets are reported, not enforced;
//! a section fails the bench only when it cannot run or a hard check (`failures`) fails.
//! `--quick` runs every section briefly, and `cargo xtask test` runs it. `--soak MINUTES`
//! runs the soak (`bench/soak.rs`) instead of the sections.

mod chart;
mod cli;
mod cost;
mod daemon;
mod latency;
mod matrix;
mod memory;
mod overhead;
mod pinned;
mod promote;
mod report;
mod scale;
mod soak;
mod udp;

use std::{
    fs,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};

use crate::release::{self, Steer};

#[derive(clap::Args)]
pub struct Options {
    /// Every section briefly (a few seconds per reload mode, 20 reloads, 100 generations),
    /// with the checks that are stable: steer and socket-transfer modes lose no request.
    #[arg(long)]
    quick: bool,
    /// Skip `setup` (for quick loops on a machine already set up).
    #[arg(long)]
    no_setup: bool,
    /// Run only these sections (their keys in `bench.json`); repeat for more.
    #[arg(long, value_name = "KEY")]
    only: Vec<String>,
    /// Instead of the sections: HAProxy reloaded ten times a second with the daemon under
    /// load for MINUTES; failures, the daemon's RSS, fds and slots, instances and pinned
    /// kernel memory at the start and the end (`soak` in `bench.json`).
    #[arg(long, value_name = "MINUTES", conflicts_with_all = ["quick", "only"])]
    soak: Option<u64>,
}

/// Every measurement, in the order they run.
const SECTIONS: &[Section] = &[
    matrix::SECTION,
    latency::SECTION,
    memory::SECTION,
    overhead::SECTION,
    cost::SECTION,
    promote::SECTION,
    scale::SECTION,
    udp::SECTION,
];

/// One measurement: where its numbers go in `bench.json`, its title, and how it runs.
pub struct Section {
    /// Key under `sections` in `bench.json`.
    pub key: &'static str,
    pub title: &'static str,
    pub run: fn(&Ctx) -> Result<Findings>,
}

/// What every section gets.
pub struct Ctx {
    /// `--quick`: fewer iterations, stricter checks.
    pub quick: bool,
    /// The built `steer`.
    steer_bin: PathBuf,
    /// `target/bench`: the outputs and the daemons' logs.
    pub out_dir: PathBuf,
    /// `--soak MINUTES` (0 without it).
    pub soak_minutes: u64,
}

impl Ctx {
    /// A fresh `target/bench/haproxy-<tag>` for an HAProxy's config, pidfile and log; the
    /// log stays there after the run.
    pub fn haproxy_dir(&self, tag: &str) -> Result<PathBuf> {
        let dir = self.out_dir.join(format!("haproxy-{tag}"));
        match fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("could not remove {}", dir.display()));
            }
            _ => {}
        }
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(dir)
    }

    /// The built `steer` with a fresh state directory of the bench's own, removed on drop.
    pub fn steer(&self) -> Result<Steer> {
        let state_dir = PathBuf::from(format!("/sys/fs/bpf/steer-bench-{}", std::process::id()));
        Steer::new(self.steer_bin.clone(), state_dir)
    }
}

/// What a section measured.
#[derive(Default)]
pub struct Findings {
    /// One line on what ran (server, iterations, load).
    pub setup: String,
    /// The summary, in order.
    pub rows: Vec<Row>,
    /// Every number, for `bench.json`.
    pub data: Map<String, Value>,
    /// Hard checks that failed; each fails the bench (targets missed do not).
    pub failures: Vec<String>,
    /// More Markdown (a table of its own, say), shown after the summary in `bench.md` and
    /// on stdout.
    pub markdown: Option<String>,
}

/// One line of the summary: a figure, and the target it is held to, if any.
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: Option<Target>,
}

/// A target and whether the figure met it (`None`: not judged this run).
pub struct Target {
    pub text: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(metric: impl Into<String>, value: impl ToString) -> Row {
        Row { metric: metric.into(), value: value.to_string(), target: None }
    }

    /// The same row, held to `text`.
    pub fn target(mut self, text: impl Into<String>, met: Option<bool>) -> Row {
        self.target = Some(Target { text: text.into(), met });
        self
    }
}

/// `HAProxy 2.6.12-1+deb12u4`, from `haproxy -v`.
pub fn haproxy_version() -> Result<String> {
    let text = crate::util::output(crate::util::cmd("haproxy").arg("-v"))
        .context("HAProxy is needed (cargo xtask setup)")?;
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
    Ok(format!("HAProxy {}", text.split_whitespace().nth(2).unwrap_or("(version unknown)")))
}

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(values: &[u64]) -> Summary {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        // The smallest value with at least `ppm` millionths of the sample at or below it.
        let rank = |ppm: usize| {
            let index = (sorted.len() * ppm).div_ceil(1_000_000).saturating_sub(1);
            sorted.get(index).copied().unwrap_or(0)
        };
        Summary {
            count: sorted.len(),
            p50: rank(500_000),
            p99: rank(990_000),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// A section's outcome, as the report needs it.
pub struct Done {
    pub section: &'static Section,
    pub wall: Duration,
    pub outcome: Result<Findings>,
}

/// Runs setup, builds, runs every section, writes the outputs and prints the table; fails
/// (exit 1) when a section could not run or a hard check failed.
pub fn run(options: &Options) -> Result<ExitCode> {
    let started = Instant::now();
    if options.soak == Some(0) {
        bail!("--soak takes the soak's length in minutes, at least 1 (for example --soak 30)");
    }
    if let Some(unknown) = options.only.iter().find(|key| !SECTIONS.iter().any(|s| s.key == key.as_str())) {
        let keys: Vec<&str> = SECTIONS.iter().map(|s| s.key).collect();
        bail!("there is no bench section `{unknown}`; the sections are {}", keys.join(", "));
    }
    let sections: Vec<&Section> = if options.soak.is_some() {
        vec![&soak::SECTION]
    } else {
        SECTIONS
            .iter()
            .filter(|s| options.only.is_empty() || options.only.iter().any(|k| k == s.key))
            .collect()
    };
    let bin_dir = release::prepare(options.no_setup, "bench")?;
    let out_dir = bin_dir.parent().context("the release directory has a parent")?.join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("could not create {}", out_dir.display()))?;
    let ctx = Ctx {
        quick: options.quick,
        steer_bin: bin_dir.join("steer"),
        out_dir,
        soak_minutes: options.soak.unwrap_or(0),
    };
    let mode = if ctx.quick { "quick" } else { "full" };
    println!("== bench ({mode}): {} sections, outputs in {}", sections.len(), ctx.out_dir.display());

    let mut done = Vec::new();
    for section in sections {
        println!("== {}: {}", section.key, section.title);
        let section_started = Instant::now();
        let outcome = (section.run)(&ctx);
        let wall = section_started.elapsed();
        match &outcome {
            Ok(_) => println!("== {}: done in {:.1} s", section.key, wall.as_secs_f64()),
            Err(err) => println!("== {}: FAILED after {:.1} s: {err:#}", section.key, wall.as_secs_f64()),
        }
        done.push(Done { section, wall, outcome });
    }

    let wall = started.elapsed();
    let env = report::environment();
    let json = report::json(&done, ctx.quick, wall, &env);
    let json_path = ctx.out_dir.join("bench.json");
    let text = serde_json::to_string_pretty(&json).context("serializing bench.json")?;
    fs::write(&json_path, text + "\n").with_context(|| format!("could not write {}", json_path.display()))?;
    let md_path = ctx.out_dir.join("bench.md");
    fs::write(&md_path, report::markdown(&done, ctx.quick, wall, &env))
        .with_context(|| format!("could not write {}", md_path.display()))?;

    println!();
    report::print(&done);
    println!();
    println!("wrote {} and {}", json_path.display(), md_path.display());
    println!("bench ({mode}) finished in {:.1} s (setup and build included)", wall.as_secs_f64());
    let problems = report::problems(&done);
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            println!("FAIL: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// `bench --quick` with setup already done, as a step of `cargo xtask test`: every
/// section runs briefly, so the bench cannot rot, and quick mode's checks must hold.
pub fn run_quick() -> Result<()> {
    let options = Options { quick: true, no_setup: true, only: Vec::new(), soak: None };
    if run(&options)? == ExitCode::SUCCESS {
        Ok(())
    } else {
        bail!("`cargo xtask bench --quick` failed; its FAIL lines above say which check")
    }
}

#[cfg(test)]
#[path = "bench_tests.rs"]
mod tests;
