//! dnsperf (Debian's package) against an unbound group: a query file of names in the
//! local zone, a run at a fixed rate (`-Q`) or as fast as it goes, bounded in time, and
//! its report (sent, completed, lost, queries per second).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use crate::netns::NetNs;
use crate::unbound::{GEN_NAME, HOSTS, ZONE};

/// A dnsperf run's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsperfConfig {
    pub target: SocketAddr,
    /// Queries per second (`-Q`); `None` sends as fast as answers come back.
    pub rate: Option<u32>,
    /// How long it sends (`-l`).
    pub duration: Duration,
    /// When a query without an answer counts as lost (`-t`).
    pub timeout: Duration,
    /// Client sockets, each with its own source port (`-c`).
    pub clients: u16,
    /// Queries in flight at most (`-q`).
    pub outstanding: u32,
    pub query_file: PathBuf,
}

impl DnsperfConfig {
    /// A run at `rate` queries per second for `duration`, 4 clients, 2 s timeout.
    #[must_use]
    pub fn new(
        target: SocketAddr,
        rate: Option<u32>,
        duration: Duration,
        query_file: &Path,
    ) -> DnsperfConfig {
        DnsperfConfig {
            target,
            rate,
            duration,
            timeout: Duration::from_secs(2),
            clients: 4,
            outstanding: 100,
            query_file: query_file.to_owned(),
        }
    }

    /// dnsperf's arguments.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "-s".to_owned(),
            self.target.ip().to_string(),
            "-p".to_owned(),
            self.target.port().to_string(),
            "-d".to_owned(),
            self.query_file.display().to_string(),
            "-l".to_owned(),
            format!("{:.3}", self.duration.as_secs_f64()),
            "-t".to_owned(),
            format!("{:.3}", self.timeout.as_secs_f64()),
            "-c".to_owned(),
            self.clients.to_string(),
            "-q".to_owned(),
            self.outstanding.to_string(),
        ];
        if let Some(rate) = self.rate {
            args.extend(["-Q".to_owned(), rate.to_string()]);
        }
        args
    }
}

/// Writes a query file: an A query for each host of the local zone and one TXT query
/// for the generation's name.
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_query_file(path: &Path) -> anyhow::Result<()> {
    let mut text: String = (0..HOSTS).map(|i| format!("h{i}.{ZONE} A\n")).collect();
    text.push_str(&format!("{GEN_NAME} TXT\n"));
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What dnsperf reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DnsperfReport {
    pub sent: u64,
    pub completed: u64,
    /// Queries without an answer within the timeout.
    pub lost: u64,
    /// Queries still in flight when the run was interrupted (neither answered nor lost).
    pub interrupted: u64,
    pub queries_per_second: f64,
}

/// Parses dnsperf's `Statistics:` block.
///
/// # Errors
///
/// When a field is missing.
pub fn parse_report(text: &str) -> anyhow::Result<DnsperfReport> {
    let field = |name: &str| -> anyhow::Result<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.trim_start().strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| anyhow!("no {name:?} in dnsperf's output"))
    };
    let count = |name: &str| -> anyhow::Result<u64> {
        field(name)?.parse().with_context(|| format!("dnsperf's {name:?} is not a count"))
    };
    Ok(DnsperfReport {
        sent: count("Queries sent")?,
        completed: count("Queries completed")?,
        lost: count("Queries lost")?,
        // Printed only when the run was interrupted with queries in flight.
        interrupted: count("Queries interrupted").unwrap_or(0),
        queries_per_second: field("Queries per second")?.parse().context("dnsperf's queries per second")?,
    })
}

/// dnsperf running in the background.
#[derive(Debug)]
pub struct Dnsperf {
    child: Child,
}

impl Dnsperf {
    /// Starts dnsperf in `ns`.
    ///
    /// # Errors
    ///
    /// When it cannot start (is it installed? `cargo xtask setup`).
    pub fn start(ns: &NetNs, config: &DnsperfConfig) -> anyhow::Result<Dnsperf> {
        let child = ns
            .command("dnsperf")
            .args(config.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dnsperf (is it installed? cargo xtask setup)")?;
        Ok(Dnsperf { child })
    }

    /// Stops the run now (SIGINT: dnsperf prints its statistics and exits) and returns
    /// its report.
    ///
    /// # Errors
    ///
    /// As [`Dnsperf::wait`].
    pub fn interrupt(self) -> anyhow::Result<DnsperfReport> {
        // `ip netns exec` execs, so the child is dnsperf itself; it may have ended already.
        let _ = crate::procfs::signal(self.child.id(), rustix::process::Signal::INT);
        self.wait()
    }

    /// Waits for the end of the run and returns its report.
    ///
    /// # Errors
    ///
    /// When dnsperf fails or prints no statistics.
    pub fn wait(self) -> anyhow::Result<DnsperfReport> {
        let out = self.child.wait_with_output().context("waiting for dnsperf")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("dnsperf exited with {}: {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
        }
        parse_report(&stdout)
    }
}

/// Runs dnsperf in `ns` to the end.
///
/// # Errors
///
/// As [`Dnsperf::start`] and [`Dnsperf::wait`].
pub fn run(ns: &NetNs, config: &DnsperfConfig) -> anyhow::Result<DnsperfReport> {
    Dnsperf::start(ns, config)?.wait()
}

#[cfg(test)]
#[path = "dnsperf_tests.rs"]
mod tests;
