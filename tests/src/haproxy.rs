//! A driver for HAProxy (Debian's 2.6) inside a network namespace: daemon mode reloaded
//! with `-sf` (a new process and a new socket per reload), `-st` (the old process stops at
//! once) or `-sf -x` (the new process takes the old one's sockets), or master-worker mode
//! reloaded with SIGUSR2 (a new worker that inherits the same socket). The e2e tests and
//! `cargo xtask bench` both drive HAProxy through it.
//!
//! Every reply is `gen=g<N> pid=<PID>`, where `N` counts reloads: the config is rewritten
//! before each reload with the new name, because a master-worker reload re-executes the
//! master with its old environment (an `env(GEN)` would never change there).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::Signal;

use crate::netns::NetNs;
use crate::procfs::{self, children, listening_inodes, probe, read_pidfile, signal, wait_for};

/// How long a start or a reload may take before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Drop`] gives the processes to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// How HAProxy runs and reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `haproxy -D`; reload starts a new process with `-sf OLD`, which binds its own socket.
    Daemon,
    /// `haproxy -D`; reload starts a new process with `-st OLD`: the old one stops at once,
    /// open connections and all.
    DaemonHardRestart,
    /// `haproxy -D`; reload starts a new process with `-sf OLD -x ADMIN`, which takes the old
    /// one's listeners over the admin socket (`expose-fd listeners`).
    DaemonSocketTransfer,
    /// `haproxy -W -D`; reload is SIGUSR2 to the master, whose new worker gets the old
    /// worker's socket over the master's socketpair.
    MasterWorker,
}

/// The signal that reloads a master-worker HAProxy.
const SIGUSR2: u32 = 12;

/// A running HAProxy; every process it started is stopped on drop.
#[derive(Debug)]
pub struct Haproxy<'ns> {
    ns: &'ns NetNs,
    dir: PathBuf,
    mode: Mode,
    port: u16,
    /// Lines added to the config's `global` section.
    global: Vec<String>,
    /// Reloads done; the current generation is `g<reloads>`.
    reloads: u32,
    /// The process serving now (daemon: the pidfile's; master-worker: the newest worker).
    pid: u32,
    /// Daemon: the pidfile's pid; master-worker: the master.
    master: u32,
    /// Every daemon-mode HAProxy pid seen (and the master), so that drop also stops
    /// generations still finishing; master-worker workers are found as the master's children.
    seen: Vec<u32>,
}

impl<'ns> Haproxy<'ns> {
    /// Writes `dir/haproxy.cfg`, starts HAProxy in `ns` listening on `127.0.0.1:port`, and
    /// waits until the serving process holds the listener and a connection succeeds.
    ///
    /// # Errors
    ///
    /// When the config cannot be written, HAProxy fails to start, or is not ready in 10 s.
    pub fn start(ns: &'ns NetNs, dir: &Path, mode: Mode, port: u16) -> anyhow::Result<Haproxy<'ns>> {
        Haproxy::start_with(ns, dir, mode, port, &[])
    }

    /// [`Haproxy::start`] with `global` added to the config's global section, e.g.
    /// `grace 100ms`: after a reload's signal the old process keeps accepting for that long
    /// before it soft-stops (see [`render_config`]).
    ///
    /// # Errors
    ///
    /// As [`Haproxy::start`].
    pub fn start_with(
        ns: &'ns NetNs,
        dir: &Path,
        mode: Mode,
        port: u16,
        global: &[&str],
    ) -> anyhow::Result<Haproxy<'ns>> {
        let mut hap = Haproxy {
            ns,
            dir: dir.to_owned(),
            mode,
            port,
            global: global.iter().map(|line| (*line).to_owned()).collect(),
            reloads: 0,
            pid: 0,
            master: 0,
            seen: Vec::new(),
        };
        hap.write_config()?;
        let mut cmd = hap.haproxy_command();
        if mode == Mode::MasterWorker {
            cmd.arg("-W");
        }
        hap.run_foreground(cmd).context("starting haproxy")?;
        let pidfile = hap.pidfile();
        // From here on, drop stops what was started even if readiness fails.
        hap.master = wait_for("haproxy to write its pidfile", READY_TIMEOUT, || Ok(read_pidfile(&pidfile)))?;
        hap.seen.push(hap.master);
        hap.pid = match mode {
            Mode::MasterWorker => hap.wait_new_worker(&[])?,
            _ => hap.wait_listening(hap.master)?,
        };
        hap.seen.push(hap.pid);
        probe(ns, port)?;
        Ok(hap)
    }

    /// The process serving now: daemon, the pidfile's pid; master-worker, the newest worker.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Master-worker: the master's pid (it holds no listener); daemon: the same as [`pid`].
    ///
    /// [`pid`]: Haproxy::pid
    #[must_use]
    pub fn master_pid(&self) -> u32 {
        self.master
    }

    /// The generation name the serving process puts in its replies (`g<reloads>`).
    #[must_use]
    pub fn generation(&self) -> String {
        generation_name(self.reloads)
    }

    /// Reloads, returning the new serving pid once it holds the listener. Daemon modes:
    /// start `haproxy -D ... -sf|-st OLD [-x ADMIN]` and wait for the pidfile to change;
    /// master-worker: SIGUSR2 to the master, and wait for a new worker.
    ///
    /// # Errors
    ///
    /// When the config cannot be written, the reload fails, or the new process is not
    /// listening within 10 s.
    pub fn reload(&mut self) -> anyhow::Result<u32> {
        self.reloads += 1;
        self.write_config()?;
        let new = match self.mode {
            Mode::Daemon | Mode::DaemonHardRestart | Mode::DaemonSocketTransfer => {
                let old = self.pid;
                let mut cmd = self.haproxy_command();
                let stop = if self.mode == Mode::DaemonHardRestart { "-st" } else { "-sf" };
                cmd.arg(stop).arg(old.to_string());
                if self.mode == Mode::DaemonSocketTransfer {
                    cmd.arg("-x").arg(admin_socket(&self.dir));
                }
                self.run_foreground(cmd).with_context(|| format!("reload {} of haproxy", self.reloads))?;
                let pidfile = self.pidfile();
                let new = wait_for("the pidfile to name a new haproxy", READY_TIMEOUT, || {
                    Ok(read_pidfile(&pidfile).filter(|&p| p != old))
                })?;
                self.master = new;
                // Pushed before waiting, so that drop stops it even if the wait fails.
                self.seen.push(new);
                self.wait_listening(new)?
            }
            Mode::MasterWorker => {
                let before: Vec<u32> = children(self.master, "haproxy")?.iter().map(|c| c.0).collect();
                signal(self.master, Signal::USR2).context("SIGUSR2 to the haproxy master")?;
                let new = self
                    .wait_new_worker(&before)
                    .with_context(|| format!("reload {} of haproxy (SIGUSR2)", self.reloads))?;
                // The master forks the new worker before it is done starting, and a SIGUSR2
                // sent before it catches the signal again can go unanswered: under load,
                // without this wait, one reload in three of the bench's never made a worker.
                wait_for("the haproxy master to catch SIGUSR2 again", READY_TIMEOUT, || {
                    Ok(catches(self.master, SIGUSR2).then_some(()))
                })?;
                new
            }
        };
        self.pid = new;
        Ok(new)
    }

    /// For a reload that another tool carries out (`steer reload`): writes the next
    /// generation's config and returns its command line, `haproxy -D -f CFG -p PIDFILE` in
    /// the namespace, with no `-sf`: the old process is left to that tool. Call
    /// [`Haproxy::adopt`] with the new serving pid once the tool is done.
    ///
    /// # Errors
    ///
    /// When the config cannot be written.
    pub fn next_generation(&mut self) -> anyhow::Result<Command> {
        self.reloads += 1;
        self.write_config()?;
        Ok(self.haproxy_command())
    }

    /// Takes `pid` as the serving process after a reload made with
    /// [`Haproxy::next_generation`]; drop stops it with the others.
    pub fn adopt(&mut self, pid: u32) {
        self.pid = pid;
        self.master = pid;
        self.seen.push(pid);
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }

    /// Writes the config for the current generation (to a temporary file, then renamed).
    fn write_config(&self) -> anyhow::Result<()> {
        let global: Vec<&str> = self.global.iter().map(String::as_str).collect();
        let text = render_config(&self.dir, self.port, &self.generation(), &global);
        let tmp = self.dir.join("haproxy.cfg.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.config_path())
            .with_context(|| format!("renaming {} into place", tmp.display()))
    }

    /// `haproxy -D -f CFG -p PIDFILE` in the namespace, output appended to the log.
    fn haproxy_command(&self) -> Command {
        let mut cmd = self.ns.command("haproxy");
        cmd.arg("-D").arg("-f").arg(self.config_path()).arg("-p").arg(self.pidfile());
        cmd
    }

    /// Runs a command that daemonizes and returns, output appended to the log.
    fn run_foreground(&self, cmd: Command) -> anyhow::Result<()> {
        procfs::run_daemonizing(cmd, &self.log_path(), READY_TIMEOUT)
    }

    /// Waits until `pid` holds a listener on the port; returns `pid`.
    fn wait_listening(&self, pid: u32) -> anyhow::Result<u32> {
        let what = format!("haproxy pid {pid} to listen on port {}", self.port);
        wait_for(&what, READY_TIMEOUT, || Ok((!listening_inodes(pid, self.port).is_empty()).then_some(pid)))
            .with_context(|| format!("haproxy log: {}", self.log_tail()))
    }

    /// Waits for a worker of the master, not in `before`, that holds a listener; the
    /// newest if there are several.
    fn wait_new_worker(&self, before: &[u32]) -> anyhow::Result<u32> {
        let what = format!("a new worker of haproxy master {} listening on port {}", self.master, self.port);
        wait_for(&what, READY_TIMEOUT, || {
            let mut fresh = children(self.master, "haproxy")?;
            fresh.retain(|(pid, _)| !before.contains(pid) && !listening_inodes(*pid, self.port).is_empty());
            Ok(fresh.into_iter().max_by_key(|(_, start)| *start).map(|(pid, _)| pid))
        })
        .with_context(|| format!("haproxy log: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        procfs::tail(&self.log_path(), 10)
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        let mut pids = self.seen.clone();
        if self.mode == Mode::MasterWorker {
            pids.extend(children(self.master, "haproxy").unwrap_or_default().iter().map(|c| c.0));
        }
        procfs::stop_all(&pids, "haproxy", STOP_TIMEOUT);
    }
}

/// The generation name of reload `n` (`g0` before the first reload).
#[must_use]
pub fn generation_name(n: u32) -> String {
    format!("g{n}")
}

/// The admin socket of the config in `dir`, which exposes the listeners' descriptors.
fn admin_socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// Whether `pid` catches `signal` and does not block it now (`SigCgt` and `SigBlk` of
/// `/proc/PID/status`, bit `signal - 1`); false when unreadable.
fn catches(pid: u32, signal: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .map(|mask| mask >> (signal - 1) & 1 == 1)
    };
    mask("SigCgt:") == Some(true) && mask("SigBlk:") == Some(false)
}

/// The HAProxy config: a frontend on `127.0.0.1:port` that answers every request itself
/// with `gen=<generation> pid=<PID>`, and an admin socket in `dir` that exposes the
/// listeners' descriptors. `global` lines are added to the global section.
///
/// HAProxy's internal HTTP client (unused here) would load the system's CA files at every
/// start, most of a start's 70 ms of CPU; `httpclient.ssl.verify none` skips that, so a
/// reload competes less with the load.
///
/// `grace` (a `global` line the daemon-mode tests add): at a soft stop HAProxy closes its
/// idle frontend connections, and a connection it accepted a moment before, whose request
/// is still on the way, counts as idle: its client gets a reset (TcpExt TCPAbortOnData).
/// No listener is involved, so steer cannot prevent it by itself. With `grace`, the old
/// process keeps accepting for that long after the reload's signal, while steer sends new
/// connections to the new process; when the old one stops, nothing it holds is that
/// fresh. See docs/haproxy.md.
#[must_use]
pub fn render_config(dir: &Path, port: u16, generation: &str, global: &[&str]) -> String {
    let admin = admin_socket(dir);
    let global: String = global.iter().map(|line| format!("    {line}\n")).collect();
    format!(
        "# written by steer-tests
global
    # The default maxconn would raise RLIMIT_NOFILE above what a test environment allows.
    maxconn 4000
    stats socket {admin} mode 600 level admin expose-fd listeners
    httpclient.ssl.verify none
{global}
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend steer_test
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain lf-string \"gen={generation} pid=%pid\\n\"
",
        admin = admin.display()
    )
}

#[cfg(test)]
#[path = "haproxy_tests.rs"]
mod tests;
