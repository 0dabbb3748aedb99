//! unbound generations for the UDP tests: a config with `so-reuseport: yes` and a local
//! zone (no query leaves the machine), one process per generation run in the test's
//! namespace (by the harness, or by `steer reload` from [`Unbound::argv`]), waiting
//! until it has bound the port, stopping it, and reading how many queries it answered
//! from the statistics it logs at exit.
//!
//! Each generation answers `gen.steer.test. TXT` with its own name, so a client can tell
//! which generation answered ([`crate::dns`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustix::process::Signal;

use crate::netns::NetNs;
use crate::procfs::{self, UDP_BOUND, held_sockets, wait_for};

/// The zone every generation serves, statically: nothing is ever forwarded or recursed.
pub const ZONE: &str = "steer.test.";
/// The name whose TXT record holds the answering generation's name.
pub const GEN_NAME: &str = "gen.steer.test.";
/// Names with A records in [`ZONE`] (`h0.steer.test.` ...), for query files.
pub const HOSTS: usize = 16;
/// How long a generation may take to bind its port, and to exit after SIGTERM.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One generation's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundConfig {
    /// Generation name: the TXT answer of [`GEN_NAME`], and the file names.
    pub generation: String,
    /// UDP port on 127.0.0.1.
    pub port: u16,
    /// `num-threads`: with `so-reuseport`, one socket per thread in the group.
    pub threads: u16,
    /// Where the config and the log go.
    pub dir: PathBuf,
}

impl UnboundConfig {
    #[must_use]
    pub fn new(generation: &str, port: u16, dir: &Path) -> UnboundConfig {
        UnboundConfig { generation: generation.to_owned(), port, threads: 1, dir: dir.to_owned() }
    }

    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(format!("unbound-{}.conf", self.generation))
    }

    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("unbound-{}.log", self.generation))
    }

    /// The config text: foreground, no chroot, no user change, no remote control, no
    /// TCP or IPv6, no trust anchors or root hints, a static local zone, and everything
    /// else refused; statistics logged at exit (verbosity 1).
    #[must_use]
    pub fn render(&self) -> String {
        let mut c = String::from("server:\n");
        let mut line = |s: &str| {
            c.push_str("    ");
            c.push_str(s);
            c.push('\n');
        };
        line("interface: 127.0.0.1");
        line(&format!("port: {}", self.port));
        line("so-reuseport: yes");
        line(&format!("num-threads: {}", self.threads));
        line("do-daemonize: no");
        line("chroot: \"\"");
        line("username: \"\"");
        line(&format!("directory: \"{}\"", self.dir.display()));
        line("pidfile: \"\"");
        line("use-syslog: no");
        line(&format!("logfile: \"{}\"", self.log_path().display()));
        line("verbosity: 1");
        line("do-ip6: no");
        line("do-tcp: no");
        line("module-config: \"iterator\"");
        line("root-hints: \"\"");
        line("auto-trust-anchor-file: \"\"");
        line("trust-anchor-file: \"\"");
        line("access-control: 127.0.0.0/8 allow");
        line(&format!("local-zone: \"{ZONE}\" static"));
        line(&format!("local-data: '{GEN_NAME} 0 IN TXT \"{}\"'", self.generation));
        for i in 0..HOSTS {
            line(&format!("local-data: \"h{i}.{ZONE} 0 IN A 192.0.2.{}\"", i + 1));
        }
        line("local-zone: \".\" refuse");
        c.push_str("remote-control:\n    control-enable: no\n");
        c
    }

    /// Writes the config file (and truncates the log of an earlier run).
    ///
    /// # Errors
    ///
    /// When a file cannot be written.
    pub fn write(&self) -> anyhow::Result<PathBuf> {
        let path = self.config_path();
        std::fs::write(&path, self.render()).with_context(|| format!("writing {}", path.display()))?;
        std::fs::write(self.log_path(), "")
            .with_context(|| format!("creating {}", self.log_path().display()))?;
        Ok(path)
    }

    /// `ip netns exec NS unbound -d -c CONFIG`: the command that runs this generation,
    /// for `steer reload ... -- ARGV` (writes the config first).
    ///
    /// # Errors
    ///
    /// When the config cannot be written.
    pub fn argv(&self, ns: &NetNs) -> anyhow::Result<Vec<String>> {
        let conf = self.write()?;
        Ok(["ip", "netns", "exec", ns.name(), "unbound", "-d", "-c"]
            .into_iter()
            .map(str::to_owned)
            .chain([conf.display().to_string()])
            .collect())
    }
}

/// A running unbound generation. Dropping it kills the process (if still running as
/// `unbound`).
#[derive(Debug)]
pub struct Unbound {
    config: UnboundConfig,
    pid: u32,
    /// Set when the harness started it (else `steer reload` did, and it is not our child).
    child: Option<Child>,
}

impl Unbound {
    /// Starts the generation in `ns` and waits until it has bound the port.
    ///
    /// # Errors
    ///
    /// When unbound does not start or does not bind in time (the error holds its log).
    pub fn spawn(ns: &NetNs, config: UnboundConfig) -> anyhow::Result<Unbound> {
        let conf = config.write()?;
        let child = ns
            .command("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting unbound (is it installed? cargo xtask setup)")?;
        let unbound = Unbound { pid: child.id(), child: Some(child), config };
        unbound.wait_bound()?;
        Ok(unbound)
    }

    /// A generation `steer reload` started as `pid` from [`UnboundConfig::argv`]; waits
    /// until it has bound the port.
    ///
    /// # Errors
    ///
    /// When it does not bind in time.
    pub fn adopt(pid: u32, config: UnboundConfig) -> anyhow::Result<Unbound> {
        let unbound = Unbound { pid, child: None, config };
        unbound.wait_bound()?;
        Ok(unbound)
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    #[must_use]
    pub fn generation(&self) -> &str {
        &self.config.generation
    }

    /// Waits until the process holds a UDP socket bound to the port (one per thread).
    fn wait_bound(&self) -> anyhow::Result<()> {
        let (pid, port, want) = (self.pid, self.config.port, usize::from(self.config.threads));
        wait_for(&format!("unbound {} (pid {pid}) to bind port {port}", self.generation()), TIMEOUT, || {
            if !procfs::is_running(pid, "unbound") && self.exited() {
                bail!("unbound exited; log: {}", procfs::tail(&self.config.log_path(), 10));
            }
            Ok((held_sockets(pid, port, UDP_BOUND).len() >= want).then_some(()))
        })
    }

    fn exited(&self) -> bool {
        procfs::stat(self.pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
    }

    /// SIGTERM, waits for the exit, and returns the queries it answered (from its log).
    ///
    /// # Errors
    ///
    /// When it does not exit in time, or its log holds no statistics.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        if procfs::is_running(self.pid, "unbound") {
            procfs::signal(self.pid, Signal::TERM)?;
        }
        self.wait_exit()?;
        self.answered()
    }

    /// Waits until the process is gone (reaping it when it is our child).
    ///
    /// # Errors
    ///
    /// When it is still there after 10 s.
    pub fn wait_exit(&mut self) -> anyhow::Result<()> {
        let pid = self.pid;
        wait_for(&format!("unbound pid {pid} to exit"), TIMEOUT, || match &mut self.child {
            Some(child) => Ok(child.try_wait()?.map(drop)),
            None => Ok((!procfs::is_running(pid, "unbound")).then_some(())),
        })
    }

    /// Queries answered, summed over the threads' `server stats` lines of the log
    /// (written at exit).
    ///
    /// # Errors
    ///
    /// When the log cannot be read or holds no statistics.
    pub fn answered(&self) -> anyhow::Result<u64> {
        let path = self.config.log_path();
        let log = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        parse_answered(&log)
            .with_context(|| format!("no server stats in {}: {}", path.display(), procfs::tail(&path, 5)))
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None if procfs::is_running(self.pid, "unbound") => {
                let _ = procfs::signal(self.pid, Signal::KILL);
            }
            None => {}
        }
    }
}

/// The sum of `N` over the log's `server stats for thread T: N queries, ...` lines;
/// `None` when there is none.
#[must_use]
pub fn parse_answered(log: &str) -> Option<u64> {
    let counts: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split_once("server stats for thread ")?.1.split_once(": ")?.1.split_once(" queries,")
        })
        .filter_map(|(n, _)| n.trim().parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

#[cfg(test)]
#[path = "unbound_tests.rs"]
mod tests;
