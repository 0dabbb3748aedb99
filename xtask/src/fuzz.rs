//! The fuzz step of `cargo xtask test`: builds the cargo-fuzz targets of `fuzz/` (a
//! workspace of its own, with its own target directory) and runs each one for a bounded
//! time, [`PARALLEL`] at once. libFuzzer adds what it finds to a scratch corpus, so the
//! committed seeds in `fuzz/corpus/<target>/` stay as they are; a crash fails the step,
//! and libFuzzer leaves the input that caused it in `fuzz/artifacts/<target>/`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, cmd};

/// How long each target runs.
pub const SECONDS: u32 = 10;
/// Targets run at once: one per core of the test machine.
const PARALLEL: usize = 2;

/// Why the targets cannot be built here, if they cannot.
fn missing_tool() -> Option<String> {
    let toolchains = util::probe(cmd("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|line| line.starts_with("nightly-")) {
        return Some("the nightly toolchain is not installed (cargo fuzz needs it)".to_owned());
    }
    if which::which_in("cargo-fuzz", Some(util::search_path()), util::workspace_root()).is_err() {
        return Some("cargo-fuzz is not installed (`cargo xtask setup` installs it)".to_owned());
    }
    None
}

/// `cargo +nightly fuzz ARGS` in `fuzz/`. The targets are built without a sanitizer:
/// the parsers are safe Rust, so AddressSanitizer finds nothing that the overflow checks
/// and bounds checks (both on) do not, and without it the build is shorter and every
/// run twice as fast.
fn cargo_fuzz(dir: &Path, args: &[&str]) -> Command {
    let mut command = cmd("cargo");
    command.current_dir(dir).args(["+nightly", "fuzz"]).args(args);
    command
}

/// Builds every target, then runs each for [`SECONDS`]. Outside CI a missing nightly
/// toolchain or cargo-fuzz is a skip, with the reason; with `CI=true` it is a failure.
pub fn run() -> Result<()> {
    if let Some(reason) = missing_tool() {
        if env::var("CI").is_ok_and(|v| v == "true") {
            bail!("{reason}; with CI=true the fuzz targets must run");
        }
        println!("skipping fuzz: {reason}");
        return Ok(());
    }
    let dir = util::workspace_root().join("fuzz");
    util::run(&mut cargo_fuzz(&dir, &["build", "--sanitizer", "none"]))?;
    let list = util::output(&mut cargo_fuzz(&dir, &["list"]))?;
    let targets: Vec<&str> = list.lines().map(str::trim).filter(|t| !t.is_empty()).collect();
    let scratch = env::temp_dir().join(format!("steer-fuzz-{}", std::process::id()));
    let mut failed = Vec::new();
    for batch in targets.chunks(PARALLEL) {
        let started: Vec<(&str, PathBuf, Child, Instant)> = batch
            .iter()
            .map(|&target| {
                let (child, log) = start(&dir, &scratch, target)?;
                Ok((target, log, child, Instant::now()))
            })
            .collect::<Result<_>>()?;
        for (target, log, mut child, since) in started {
            let status = child.wait().with_context(|| format!("wait for fuzz target {target}"))?;
            let text = fs::read_to_string(&log).unwrap_or_default();
            let runs = text
                .lines()
                .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
                .map_or("?", str::trim);
            let secs = since.elapsed().as_secs();
            if status.success() {
                println!("ok: fuzz target {target}: {runs} runs in {secs} s, no crash");
            } else {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                for line in tail.into_iter().rev() {
                    println!("  {target}: {line}");
                }
                println!("FAILED: fuzz target {target} ({status}); the input is in fuzz/artifacts/{target}/");
                failed.push(target);
            }
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Starts one target on a scratch corpus (first, where libFuzzer writes) and the
/// committed seeds; its output goes to a log file.
fn start(dir: &Path, scratch: &Path, target: &str) -> Result<(Child, PathBuf)> {
    let corpus = scratch.join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    let log = scratch.join(format!("{target}.log"));
    let out = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let seeds = format!("corpus/{target}");
    let max_time = format!("-max_total_time={SECONDS}");
    let mut command = cargo_fuzz(dir, &["run", "--sanitizer", "none", target]);
    command
        .arg(&corpus)
        .args([seeds.as_str(), "--", &max_time, "-print_final_stats=1"])
        .stdout(out.try_clone()?)
        .stderr(Stdio::from(out));
    println!("$ {}", util::display(&command));
    let child = command.spawn().with_context(|| format!("start fuzz target {target}"))?;
    Ok((child, log))
}
