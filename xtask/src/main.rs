//! `cargo xtask`: the project's setup, test, demo and bench steps, the same for developers
//! and CI.
//!
//! Layout: `setup.rs` installs what building and testing need, `test.rs` runs the checks
//! and tests in CI's order, `demo.rs` shows steer at work, `bench.rs` measures it,
//! `release.rs` holds what demo and bench share (preflight, release build, the `steer`
//! binary), `image.rs` builds the container images, `kernels.rs` runs steer on other kernels in
//! QEMU, `fuzz.rs` runs the fuzz targets of `fuzz/`, `unit.rs` verifies the systemd unit,
//! and `util.rs` runs commands.

mod bench;
mod demo;
mod fuzz;
mod image;
mod kernels;
mod release;
mod setup;
mod test;
mod unit;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Project automation for steer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need; only what is missing (needs root for that).
    Setup,
    /// Run setup, then rustfmt, clippy (host and eBPF) and every test, stopping at the first failure.
    Test(test::Options),
    /// Show steer keeping every connection through server reloads: the same reloads
    /// under load without and with steer, side by side (needs root).
    Demo(demo::Options),
    /// Measure steer: HAProxy's reload methods side by side, the daemon's latency and memory,
    /// the program's overhead, promote speed and scale; writes target/bench/ (needs root).
    Bench(bench::Options),
    /// Boot Debian's kernels 5.10, 6.1 and 6.12 under QEMU, run a smoke suite of steer in
    /// each and on the host, and print the table kernel × capability (needs root; writes
    /// target/kernels/).
    Kernels(kernels::Options),
    /// Check the Dockerfiles with hadolint and build the local images: `steer:dev` (a
    /// static `steer` in `FROM scratch`) and `steer-haproxy:dev` (for the container tests).
    Image,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Test(options) => test::run(&options).map(|()| ExitCode::SUCCESS),
        Command::Demo(options) => demo::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Image => image::run().map(|()| ExitCode::SUCCESS),
        Command::Kernels(options) => kernels::run(&options),
    }
}
