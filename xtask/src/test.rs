//! `cargo xtask test`: what CI runs: setup, rustfmt, clippy on the host crates and on
//! the eBPF crate, every test, the fuzz targets for a bounded time, `bench --quick`, then
//! the kernel matrix (`kernels`), stopping at the first failure.

use std::{
    env,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    setup,
    util::{self, cmd},
};

/// The eBPF crate: built for the host only through aya-build, never directly.
const EBPF_CRATE: &str = "steer-ebpf";

#[derive(clap::Args)]
pub struct Options {
    /// Skip `setup` (for quick loops on a machine already set up).
    #[arg(long)]
    no_setup: bool,
    /// Skip the last step, `bench --quick` (it builds in release mode and runs every
    /// bench section briefly).
    #[arg(long)]
    no_bench: bool,
    /// Skip `kernels` (boots Debian's 5.10, 6.1 and 6.12 in QEMU and runs the smoke
    /// suite in each and on the host; about 2.5 minutes).
    #[arg(long)]
    no_kernels: bool,
    /// Passed to the test harness as `--test-threads N`.
    #[arg(long, value_name = "N")]
    test_threads: Option<usize>,
}

/// Runs every step in order; the error names the step that failed.
pub fn run(options: &Options) -> Result<()> {
    let start = Instant::now();
    let mut steps: Vec<(&str, Command)> = vec![
        ("rustfmt", cargo(["fmt", "--all", "--", "--check"])),
        ("clippy (host)", host_clippy()),
        ("clippy (eBPF)", ebpf_clippy()),
        ("tests", tests(options)),
        ("real-server and container tests", server_tests()),
    ];
    if options.no_setup {
        println!("== setup: skipped (--no-setup)");
    } else {
        step("setup", setup::run)?;
    }
    let passed_env: Vec<String> = env::vars()
        .filter(|(key, _)| key == "CI" || key.starts_with("STEER_"))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if !passed_env.is_empty() {
        println!("environment for the tests: {}", passed_env.join(" "));
    }
    // The shipped systemd unit (deploy/systemd/steer.service), offline.
    step("systemd unit (systemd-analyze verify)", crate::unit::verify)?;
    // hadolint, and the images the container tests run (they build them too, if missing).
    step("images", crate::image::run_if_docker)?;
    // The last ABI-2 steer, from this repository's history, for the in-place upgrade
    // tests (they build it too, if missing; here no test pays for it under load).
    step("previous release's steer (ABI 2)", || steer_harness::previous::abi2_steer().map(|_| ()))?;
    for (name, command) in &mut steps {
        step(name, || util::run(command))?;
    }
    // Each cargo-fuzz target of fuzz/ for a bounded time (skipped, with the reason,
    // where nightly or cargo-fuzz is missing outside CI).
    step(&format!("fuzz ({} s per target)", crate::fuzz::SECONDS), crate::fuzz::run)?;
    let ci = env::var("CI").is_ok_and(|v| v == "true");
    let mut ran_bench = false;
    if options.no_bench {
        println!("== bench (quick): skipped (--no-bench)");
    } else if !ci && !setup::is_root()? {
        // As the privileged tests do outside CI; with CI=true it must run, and fails.
        println!("== bench (quick): skipped: not running as root (it needs network namespaces and eBPF)");
    } else {
        step("bench (quick)", crate::bench::run_quick)?;
        ran_bench = true;
    }
    let mut ran_kernels = false;
    if options.no_kernels {
        println!("== kernels: skipped (--no-kernels)");
    } else if !ci && !setup::is_root()? {
        println!("== kernels: skipped: not running as root (it installs QEMU and boots kernels)");
    } else {
        step("kernels (Debian's 5.10, 6.1, 6.12 in QEMU, and the host)", crate::kernels::run_all)?;
        ran_kernels = true;
    }
    println!(
        "xtask test: all {} steps passed in {}",
        steps.len() + 4 + usize::from(!options.no_setup) + usize::from(ran_bench) + usize::from(ran_kernels),
        minutes(start.elapsed())
    );
    Ok(())
}

/// Runs one step between banners; on failure the error says which step and how long it ran.
fn step(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("== {name}");
    let start = Instant::now();
    let result = body();
    let took = minutes(start.elapsed());
    match result {
        Ok(()) => {
            println!("== {name}: ok ({took})");
            Ok(())
        }
        Err(err) => {
            println!("== {name}: FAILED ({took})");
            Err(err).with_context(|| format!("xtask test stopped at step `{name}`"))
        }
    }
}

fn minutes(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    format!("{}m{:02}s", secs / 60, secs % 60)
}

/// `cargo ARGS` in the workspace root, with the toolchain cargo was started with.
fn cargo<const N: usize>(args: [&str; N]) -> Command {
    let mut command = cmd("cargo");
    command.current_dir(util::workspace_root()).args(args);
    command
}

/// Clippy on every host crate and target; the agent's build script still builds the
/// eBPF program through aya-build, so this also proves that build works.
fn host_clippy() -> Command {
    let mut command = cargo(["clippy", "--workspace", "--exclude", EBPF_CRATE, "--all-targets"]);
    command.args(["--", "-D", "warnings"]);
    command
}

/// Clippy on the eBPF crate for its real target, as aya-build compiles it: nightly,
/// `build-std=core`, and the `bpf_target_arch` cfg that aya-ebpf needs. A target
/// directory of its own keeps it from invalidating the host build.
fn ebpf_clippy() -> Command {
    let mut command = cmd("cargo");
    command
        .current_dir(util::workspace_root())
        .env("CARGO_ENCODED_RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH))
        .env_remove("RUSTFLAGS")
        .args(["+nightly", "clippy", "-p", EBPF_CRATE, "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"]);
    command
}

/// Every unit and integration test of the host crates. The environment (`CI`,
/// `STEER_*`) passes through: the privileged tests read it to decide whether a
/// missing capability is a skip or a failure.
/// The real-server and container end-to-end tests (`servers::`, `containers::`,
/// `udp::unbound::`) run in a step of their own.
fn tests(options: &Options) -> Command {
    // The test build of steer: its failpoints are compiled in (tests/tests/e2e/faults).
    let mut command = cargo([
        "test",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--features",
        "steer/failpoints",
        "--no-fail-fast",
    ]);
    command.args(["--", "--skip", SERVER_TESTS, "--skip", CONTAINER_TESTS, "--skip", UDP_SERVER_TESTS]);
    if let Some(threads) = options.test_threads {
        command.args(["--test-threads", &threads.to_string()]);
    }
    command
}

/// End-to-end tests that reload real HAProxy and nginx under load. They run one
/// at a time after the others: each saturates this 2-core machine by itself,
/// and HAProxy's reload time (and so the test's length) grows with contention.
const SERVER_TESTS: &str = "servers::";
/// Real containers under load (`containers::`), one at a time for the same reason.
const CONTAINER_TESTS: &str = "containers::";
/// unbound reloaded under dnsperf (`udp::unbound::`), one at a time for the same reason.
const UDP_SERVER_TESTS: &str = "udp::unbound::";

fn server_tests() -> Command {
    let mut command = cargo(["test", "-p", "steer-tests", "--test", "e2e", "--no-fail-fast"]);
    command.args(["--", SERVER_TESTS, CONTAINER_TESTS, UDP_SERVER_TESTS, "--test-threads", "1"]);
    command
}
