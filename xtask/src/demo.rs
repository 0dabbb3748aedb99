//! `cargo xtask demo`: reloads of a test server under load, first without steer, then with
//! it, each in a fresh network namespace; prints what each run lost, side by side.
//!
//! A reload here is what a busy server does: a new generation starts listening on the same
//! port (SO_REUSEPORT), the old one stops accepting while connections still reach it, then
//! closes its listener and exits. Without steer, the connections queued on the old listener
//! are reset. With steer, `steer promote <new pid>` runs just before the close: new
//! connections go to the new generation and the queued ones migrate to it.
//!
//! The harness (`steer-tests`) is used as a library; the `steer` agent only as a built
//! binary (see `release.rs`), so xtask itself builds without the eBPF toolchain.

mod report;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use steer_harness::{
    load::{self, LoadConfig, LoadReport},
    netns::NetNs,
    server::{ServerArgs, TestServer},
};

use crate::{
    release::{self, Steer},
    util,
};

/// Where every generation listens, inside its run's namespace.
const LISTEN: &str = "127.0.0.1:8080";
/// Upper bound of each load run; the handovers take a few seconds.
const LOAD_MAX_DURATION: Duration = Duration::from_secs(120);
/// Bound on each request of the load.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Load before the first handover and after the last, so both ends are steady.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct Options {
    /// Reloads (handovers from one generation to the next) in each run.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    handovers: u32,
    /// Load workers, each with one request (one TCP connection) in flight.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// How long the old generation stops accepting before it closes its listener.
    #[arg(long, value_name = "MS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=5000))]
    pause_ms: u64,
    /// Skip `setup` (for quick loops on a machine already set up).
    #[arg(long)]
    no_setup: bool,
}

/// What one run measured.
pub struct Outcome {
    handovers: u32,
    load: LoadReport,
    /// Wall time of each `steer promote` made during a handover (steered run only).
    promotes: Vec<Duration>,
    /// Wall time of the first `steer promote`, which also loads and pins the program.
    first_promote: Option<Duration>,
    /// `counters` of the group on port 8080 in `steer status --json` (steered run only).
    counters: Option<Value>,
    /// `steer status` as printed for people (steered run only).
    status: Option<String>,
}

/// Runs setup, builds, runs both scenarios and prints the comparison; fails (exit 1) when
/// the steered run lost any request.
pub fn run(options: &Options) -> Result<ExitCode> {
    let started = Instant::now();
    let bin_dir = release::prepare(options.no_setup, "demo")?;
    let steer_bin = bin_dir.join("steer");
    let listen: SocketAddr = LISTEN.parse().context("the demo's listen address")?;

    println!(
        "== demo: {} reloads of a test server on {LISTEN}, {} connections in flight, \
         old generation paused {} ms before it closes; each run in a fresh network namespace",
        options.handovers, options.concurrency, options.pause_ms
    );
    println!("== run 1: without steer (the kernel picks the socket; tcp_migrate_req=0, the default)");
    let plain = scenario(options, listen, None)?;
    println!("   {}", summary(&plain.load));

    let state_dir = PathBuf::from(format!("/sys/fs/bpf/steer-demo-{}", std::process::id()));
    let steer = Steer::new(steer_bin, state_dir)?;
    println!(
        "== run 2: with steer (`{} --state-dir {} promote <new pid>` at each reload)",
        steer.bin.display(),
        steer.state_dir.display()
    );
    let steered = scenario(options, listen, Some(&steer))?;
    println!("   {}", summary(&steered.load));

    println!();
    report::print(&plain, &steered);
    drop(steer);
    let lost = steered.load.failed();
    println!();
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    if lost == 0 {
        println!(
            "PASS: with steer, {} reloads lost 0 of {} requests (without steer: {} of {} failed)",
            steered.handovers,
            steered.load.requests,
            plain.load.failed(),
            plain.load.requests
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "FAIL: with steer, {lost} of {} requests failed over {} reloads; first errors: {:?}",
            steered.load.requests, steered.handovers, steered.load.first_errors
        );
        Ok(ExitCode::FAILURE)
    }
}

/// One run: generation g0 under load, then `handovers` reloads, each in its own netns.
fn scenario(options: &Options, listen: SocketAddr, steer: Option<&Steer>) -> Result<Outcome> {
    let ns = NetNs::new(if steer.is_some() { "steered" } else { "plain" })?;
    let spawn = |generation: &str| {
        TestServer::spawn(&ns, &ServerArgs::new(generation, [listen]))
            .with_context(|| format!("starting generation {generation}"))
    };
    let mut old = spawn("g0")?;
    let first_promote = steer.map(|s| s.promote(&old)).transpose()?;
    let mut cfg = LoadConfig::new(listen);
    cfg.concurrency = usize::from(options.concurrency);
    cfg.max_duration = LOAD_MAX_DURATION;
    cfg.timeout = REQUEST_TIMEOUT;
    cfg.netns = Some(ns.path());
    // On an error below, dropping the handle stops and joins the workers.
    let running = load::start(cfg).context("starting the load")?;
    std::thread::sleep(SETTLE);

    let pause = Duration::from_millis(options.pause_ms);
    let mut promotes = Vec::new();
    for i in 1..=options.handovers {
        let new = spawn(&format!("g{i}"))?;
        // The old generation stops accepting while connections still reach it, so its
        // accept queue fills, as with a busy server.
        old.pause().with_context(|| format!("pausing {}", old.generation()))?;
        std::thread::sleep(pause);
        if let Some(steer) = steer {
            promotes.push(steer.promote(&new)?);
        }
        old.close_listeners().with_context(|| format!("closing the listener of {}", old.generation()))?;
        old.exit().with_context(|| format!("stopping {}", old.generation()))?;
        old = new;
    }
    std::thread::sleep(SETTLE);
    let load = running.stop();
    if load.requests == 0 {
        bail!("the load made no request at all; first errors: {:?}", load.first_errors);
    }
    // Read while the last generation still listens, so the status shows it.
    let (counters, status) = match steer {
        Some(steer) => (Some(steer.counters(listen.port())?), Some(steer.status_text()?)),
        None => (None, None),
    };
    drop(old);
    drop(ns);
    Ok(Outcome { handovers: options.handovers, load, promotes, first_promote, counters, status })
}

/// One line on a finished load run.
fn summary(load: &LoadReport) -> String {
    format!(
        "{} requests in {:.1} s, {} failed, {} generations answered",
        load.requests,
        load.elapsed_secs,
        load.failed(),
        load.by_generation.len()
    )
}

/// The demo's uses of the built `steer`.
impl Steer {
    /// Promotes the server's sockets; returns the command's wall time.
    fn promote(&self, server: &TestServer) -> Result<Duration> {
        let started = Instant::now();
        util::output(&mut self.command(["promote", &server.pid().to_string()])).with_context(|| {
            format!("could not promote generation {} (pid {})", server.generation(), server.pid())
        })?;
        Ok(started.elapsed())
    }

    /// The counters of the steered group on `port`, from `steer status --json`.
    fn counters(&self, port: u16) -> Result<Value> {
        let status = self.status_json()?;
        release::groups(&status)
            .find(|group| group["port"].as_u64() == Some(u64::from(port)))
            .map(|group| group["counters"].clone())
            .with_context(|| format!("`steer status --json` shows no group on port {port}: {status}"))
    }

    /// `steer status`, the table for people.
    fn status_text(&self) -> Result<String> {
        util::output(&mut self.command(["status"]))
    }
}
