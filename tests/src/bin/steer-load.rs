//! `steer-load`: closed-loop TCP load (one connection per request) that prints a JSON
//! report of successes per generation and pid, failures per class, and latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use steer_harness::load::{self, LoadConfig, Protocol};

#[derive(Debug, Parser)]
#[command(name = "steer-load", about = "Closed-loop TCP load generator; prints a JSON report")]
struct Args {
    /// Server address, e.g. `127.0.0.1:8080` or `[::1]:8080`.
    #[arg(long)]
    target: SocketAddr,
    /// Worker threads, each with one request in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Start no request after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Start no more than this many requests in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Speak HTTP/1.1 instead of the line protocol.
    #[arg(long)]
    http: bool,
    /// Bound on each request (connect, and the whole reply).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Run the workers in this network namespace (a name under /run/netns, or a path).
    #[arg(long)]
    netns: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let max_duration = Duration::try_from_secs_f64(args.duration_secs)
        .context("--duration-secs must be a non-negative number of seconds")?;
    let netns = args
        .netns
        .as_ref()
        .map(|ns| if ns.contains('/') { PathBuf::from(ns) } else { PathBuf::from("/run/netns").join(ns) });
    let cfg = LoadConfig {
        concurrency: usize::from(args.concurrency),
        max_duration,
        max_requests: args.requests,
        timeout: Duration::from_millis(args.timeout_ms),
        protocol: if args.http { Protocol::Http } else { Protocol::Line },
        netns,
        ..LoadConfig::new(args.target)
    };
    let report = load::run(cfg)?;
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    println!("{json}");
    Ok(())
}
