//! The `steer` command: parses arguments, sets up logging, and calls one
//! library function per subcommand.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use steer::{
    daemon::{self, Policy, Source},
    ops, paths,
};

/// Zero-loss reloads for SO_REUSEPORT servers: choose which process generation
/// gets new connections.
#[derive(Debug, Parser)]
#[command(name = "steer", version, about, long_about = None)]
struct Cli {
    /// State directory on bpffs [env: STEER_STATE_DIR] [default: /sys/fs/bpf/steer]
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Can steering work here? Kernel, privileges, bpffs, program load
    Check {
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Send new connections of PID's reuseport groups to PID's sockets
    Promote {
        /// The process whose listening sockets get new connections
        pid: u32,
        /// Only the groups on this port (repeatable); default: every listening port of PID
        #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
        /// Send only this percentage of new connections to PID (a canary); the rest stays
        #[arg(long, value_name = "PCT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
        weight: u32,
        /// Take the group over when another steer state directory holds its sockets
        /// (for example one removed without `steer detach`)
        #[arg(long)]
        take_over: bool,
        #[command(flatten)]
        udp: UdpArgs,
        /// Steer in select-only mode (new connections only, no queue migration on close), as on
        /// kernels before 5.14; kept by later commands while the groups stay steered
        #[arg(long)]
        no_migrate: bool,
    },
    /// End a running canary; without one, make the previous generation active again, if it still listens
    Rollback {
        /// Only the groups on this port (repeatable)
        #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
    },
    /// Groups, their sockets (pid, fd, cookie, accept queue), roles and counters
    Status {
        /// Print the stable JSON document (schema in docs/ARCHITECTURE.md)
        #[arg(long)]
        json: bool,
    },
    /// Remove steering; the kernel's default selection resumes
    Detach {
        /// Only the groups on this port (repeatable)
        #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
    },
    /// Start CMD as the new generation, wait until it listens and is ready, promote it, let the
    /// old generation drain, then signal it
    Reload {
        /// The process serving now (the active generation)
        #[arg(long, value_name = "PID")]
        old: u32,
        /// Ready when CMD exits 0; run through `sh -c` with STEER_PID, STEER_PORT and STEER_ADDR set
        #[arg(long, value_name = "CMD")]
        ready_cmd: Option<String>,
        /// Ready when GET URL answers 2xx; URL is the new generation's own health address
        /// (http://127.0.0.1:8404/health), not the reloaded one
        #[arg(long, value_name = "URL")]
        ready_http: Option<steer::ops::ready::HttpProbe>,
        /// Seconds the new generation has, from its start, to listen and pass the readiness check
        #[arg(long, value_name = "S", default_value_t = 30.0, value_parser = parse_seconds)]
        ready_timeout: f64,
        /// Signal sent to the old generation once it has drained: TERM, SIGUSR1, QUIT, 15, ...
        #[arg(long, value_name = "SIG", default_value = "TERM")]
        signal: steer::ops::reload::Signal,
        /// Seconds to wait for the old generation's accept queues and pending handshakes to empty
        #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = parse_seconds)]
        drain_timeout: f64,
        /// Only the groups on this port (repeatable); default: every group in which --old is active
        #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
        /// The new generation's command line
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Watch for new listeners and promote per policy (the sidecar)
    #[command(group(clap::ArgGroup::new("select").args(["comms", "ports"]).required(true).multiple(true)))]
    #[command(group(clap::ArgGroup::new("gate").args(["ready_cmd", "ready_http"]).multiple(true)))]
    Daemon {
        /// Watch processes with this name (repeatable), e.g. haproxy; at most 15 bytes, as the
        /// kernel keeps it
        #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
        comms: Vec<String>,
        /// Watch listeners on this port (repeatable)
        #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        ports: Vec<u16>,
        /// Only processes in this network namespace (repeatable), e.g. /proc/PID/ns/net or
        /// /run/netns/NAME; `all` for every one [default: the daemon's own]
        #[arg(long = "netns", value_name = "PATH|all")]
        netns: Vec<PathBuf>,
        /// Only processes whose every uid (real, effective, saved) is USER (repeatable): a uid, or
        /// a name from /etc/passwd
        #[arg(long = "user", value_name = "USER", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        users: Vec<String>,
        /// Only processes running this executable (repeatable), compared by device and inode with
        /// the file at PATH (as it was at start, or as it is now: an upgraded binary still matches)
        #[arg(long = "exe", value_name = "PATH")]
        exes: Vec<PathBuf>,
        /// Only processes in this cgroup (repeatable): /PATH is that cgroup and below, as
        /// /proc/PID/cgroup shows it (e.g. /kubepods.slice); any other TEXT must appear in the
        /// path (a container id, a pod UID)
        #[arg(long = "cgroup", value_name = "PATH|TEXT", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        cgroups: Vec<String>,
        /// Act on any process that passes --comm and --port, without --user, --exe or --cgroup
        /// (a process sets its own name, so --comm proves nothing)
        #[arg(long)]
        any_process: bool,
        /// Also act on processes in user namespaces other than the initial one (rootless
        /// containers, `unshare -r`, pods with hostUsers: false); off by default
        #[arg(long)]
        user_namespaces: bool,
        /// Create pinned state for at most N network namespaces; a promote that needs one more is
        /// refused
        #[arg(long, value_name = "N", default_value_t = daemon::Limits::default().instances,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_instances: u32,
        /// Promote no process that listens in more than N reuseport groups (addresses and ports)
        #[arg(long, value_name = "N", default_value_t = daemon::Limits::default().groups_per_process,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_groups_per_process: u32,
        /// Promote one process at most N times a minute (promotions that change something)
        #[arg(long, value_name = "N", default_value_t = daemon::Limits::default().generations_per_process,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_generations_per_process: u32,
        /// newest: promote each new generation as soon as it listens; manual: only re-attach and report
        #[arg(long, value_enum, default_value_t = Policy::Newest)]
        policy: Policy,
        /// Wait this long after a generation listens before promoting it (at most an hour)
        #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=3_600_000))]
        ready_delay: u64,
        /// Make each new generation a canary with PCT percent of new connections first (1..99),
        /// then promote it fully after --canary-for, unless its process exits or an operator's
        /// `steer rollback` ends it (policy newest)
        #[arg(long, value_name = "PCT", requires = "canary_for",
              value_parser = clap::value_parser!(u32).range(1..=99))]
        canary: Option<u32>,
        /// How long a canary runs before its full promotion: 500ms, 30s, 2m
        #[arg(long, value_name = "DURATION", requires = "canary", value_parser = daemon::parse_duration)]
        canary_for: Option<std::time::Duration>,
        /// Promote a new generation only once CMD exits 0 (asked again every 100 ms); run through
        /// `sh -c` with STEER_PID, STEER_PORT and STEER_ADDR set. Until then it gets no new connection
        #[arg(long, value_name = "CMD", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        ready_cmd: Option<String>,
        /// Promote a new generation only once GET URL answers 2xx; URL is an address only the new
        /// generation holds (its own health port), never the steered one, which reaches the active
        /// generation
        #[arg(long, value_name = "URL")]
        ready_http: Option<steer::ops::ready::HttpProbe>,
        /// How long a new generation has to pass --ready-cmd or --ready-http, from when it listens:
        /// 500ms, 30s, 2m; then it is not promoted and the active generation keeps serving
        /// [default: 30s]
        #[arg(long, value_name = "DURATION", requires = "gate", value_parser = daemon::parse_duration)]
        ready_timeout: Option<std::time::Duration>,
        /// Serve metrics on /metrics and /healthz at ADDR: IP:PORT, or a bare PORT on 127.0.0.1 (0.0.0.0:9477 in a pod); off by default
        #[arg(long, value_name = "ADDR", value_parser = steer::metrics::parse_addr)]
        metrics: Option<std::net::SocketAddr>,
        /// Log format on stderr
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Where listener events come from: raw tracepoints (no tracefs), tracefs tracepoints, polling, or the first that works
        #[arg(long, value_enum, default_value_t = Source::Auto)]
        source: Source,
        /// How often the polling source looks for new listeners (1 ms to an hour)
        #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
        poll_interval: u64,
        /// Scheduling niceness (-20..19): a reload keeps the CPU busy, and a promotion waits for it
        #[arg(long, value_name = "N", default_value_t = -10, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i32).range(-20..=19))]
        nice: i32,
        /// SCHED_FIFO priority (1..99) of the thread that promotes, so that it runs as soon as an event
        /// arrives (tracepoint source only); 0 leaves it to --nice. Falls back to --nice, with a
        /// warning, without the privilege
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u8).range(0..=99))]
        rt_priority: u8,
        #[command(flatten)]
        udp: UdpArgs,
        /// Steer in select-only mode (new connections only, no queue migration on close), as on
        /// kernels before 5.14
        #[arg(long)]
        no_migrate: bool,
    },
}

/// How UDP groups are steered (docs/udp.md).
#[derive(clap::Args, Debug, Clone, Copy)]
struct UdpArgs {
    /// UDP groups: `on` keeps each flow (source address and port) with the generation that
    /// started it while that socket lives; `off` sends every datagram where a new flow goes
    /// [default: on, or what the group has]
    #[arg(long = "udp-flows", value_name = "on|off", value_parser = parse_on_off)]
    flows: Option<bool>,
    /// UDP groups: forget a flow after this long without a datagram: 2s, 30s, 5m (1 s to 9 h)
    /// [default: 30s, or what the group has]
    #[arg(long = "udp-flow-timeout", value_name = "DURATION", value_parser = parse_flow_timeout)]
    flow_timeout: Option<u32>,
}

impl From<UdpArgs> for steer::policy::UdpSettings {
    fn from(a: UdpArgs) -> Self {
        Self { flows: a.flows, timeout_ticks: a.flow_timeout }
    }
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{text:?} is neither on nor off")),
    }
}

/// A flow timeout in the flow table's ticks (2^30 ns, about 1.07 s), rounded up.
fn parse_flow_timeout(text: &str) -> Result<u32, String> {
    let d = daemon::parse_duration(text)?;
    let tick = 1_u128 << steer_abi::flows::TICK_SHIFT;
    let ticks = d.as_nanos().div_ceil(tick);
    match u32::try_from(ticks) {
        Ok(t) if (1..=steer_abi::flows::MAX_TIMEOUT_TICKS).contains(&t) && d.as_millis() >= 1000 => Ok(t),
        _ => Err(format!("{text:?} is outside 1s to 9h, the flow timeouts steer keeps")),
    }
}

/// A process name as the kernel keeps it: 1 to 15 bytes (TASK_COMM_LEN 16 with
/// the NUL, include/linux/sched.h). A longer `--comm` would never match.
fn parse_comm(name: &str) -> Result<String, String> {
    match name.len() {
        0 => Err("a process name cannot be empty".to_owned()),
        1..=15 => Ok(name.to_owned()),
        n => Err(format!(
            "{n} bytes is longer than the 15 the kernel keeps of a process name, so it would never match; pass the name as `ps -o comm` shows it ({:?})",
            name.get(..15).unwrap_or(name)
        )),
    }
}

/// A number of seconds, fractions allowed, up to a day.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds from 0 to 86400")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, daemon) = match &cli.command {
        Command::Daemon { log_format, .. } => (*log_format == LogFormat::Json, true),
        _ => (false, false),
    };
    init_logging(cli.verbose, json, daemon);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("steer: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; the daemon logs at info by default, commands at warn.
fn init_logging(verbose: u8, json: bool, daemon: bool) {
    let default = match (verbose, daemon) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal, not for journald or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let state_dir = paths::state_dir(cli.state_dir.as_deref());
    match cli.command {
        Command::Check { json } => {
            let items = ops::check::run(&state_dir, || {
                let chosen = daemon::source::probe();
                format!("{} for the daemon: {}", chosen.source, chosen.reason)
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                for item in &items {
                    println!("{:<4} {:<16} {}", if item.ok { "ok" } else { "FAIL" }, item.name, item.detail);
                }
            }
            Ok(if items.iter().all(|i| i.ok) { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Promote { pid, ports, weight, take_over, udp, no_migrate } => {
            let udp = udp.into();
            let request =
                ops::promote::Request { pid, ports, weight, take_over, by_operator: true, udp, no_migrate };
            let changes = ops::promote::run(&state_dir, &request)?;
            changes.iter().for_each(|c| println!("{c}"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { ports } => {
            ops::rollback::run(&state_dir, &ports)?.iter().for_each(|c| println!("{c}"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let status = ops::status::read(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", ops::status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { ports } => {
            ops::detach::run(&state_dir, &ports)?.iter().for_each(|c| println!("{c}"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { old, ready_cmd, ready_http, ready_timeout, signal, drain_timeout, ports, cmd } => {
            let request = ops::reload::Request {
                old,
                ports,
                cmd,
                gate: ops::ready::Gate { cmd: ready_cmd, http: ready_http },
                ready_timeout: std::time::Duration::from_secs_f64(ready_timeout),
                drain_timeout: std::time::Duration::from_secs_f64(drain_timeout),
                signal,
            };
            print!("{}", ops::reload::run(&state_dir, &request)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon {
            comms,
            ports,
            netns,
            users,
            exes,
            cgroups,
            any_process,
            user_namespaces,
            max_instances,
            max_groups_per_process,
            max_generations_per_process,
            policy,
            ready_delay,
            canary,
            canary_for,
            ready_cmd,
            ready_http,
            ready_timeout,
            metrics,
            source,
            poll_interval,
            nice,
            rt_priority,
            udp,
            no_migrate,
            ..
        } => {
            let gated = ready_cmd.is_some() || ready_http.is_some();
            if (canary.is_some() || gated) && policy == Policy::Manual {
                use clap::CommandFactory as _;
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--canary, --ready-cmd and --ready-http need --policy newest: under manual the daemon promotes nothing",
                    )
                    .exit();
            }
            let named =
                daemon::Named { comms, ports, netns, cgroups, users, exes, any_process, user_namespaces };
            let opts = daemon::Options {
                filter: named.resolve()?,
                policy,
                ready_delay: std::time::Duration::from_millis(ready_delay),
                source,
                poll_interval: std::time::Duration::from_millis(poll_interval),
                nice,
                rt_priority,
                limits: daemon::Limits {
                    instances: max_instances,
                    groups_per_process: max_groups_per_process,
                    generations_per_process: max_generations_per_process,
                },
                canary: canary
                    .zip(canary_for)
                    .map(|(weight, duration)| daemon::canary::Plan { weight, duration }),
                udp: udp.into(),
                gate: gated.then_some(ops::ready::Gate { cmd: ready_cmd, http: ready_http }),
                ready_timeout: ready_timeout.unwrap_or(std::time::Duration::from_secs(30)),
                no_migrate,
            };
            daemon::serve(&state_dir, &opts, metrics)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
