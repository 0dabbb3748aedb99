//! [`Haproxy`]: HAProxy 2.6 for one bench run, in a network namespace, started in daemon mode
//! (`-D`) or master-worker mode (`-W -D`) and reloaded the ways [`Reload`] names. It owns a
//! scratch directory for its config, pidfile, admin socket and output; on drop it stops
//! every process it started (old generations included) and removes the directory.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use steer_harness::{
    netns::NetNs,
    procfs::{self, children, listening_inodes, read_pidfile, wait_for},
};

use crate::util::{self, cmd};

/// How long a start or a reload may take before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long drop gives the processes to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// The signal that reloads a master-worker HAProxy.
const SIGUSR2: u32 = 12;

/// How HAProxy reloads; [`Reload::MasterWorker`] also decides how it starts (`-W`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// A new process with `-st OLD`: the old one stops at once, open connections and all.
    HardRestart,
    /// A new process with `-sf OLD`, which binds a socket of its own; the old one finishes.
    Soft,
    /// `-sf OLD -x ADMIN`: the new process takes the old one's listeners over the admin
    /// socket (`expose-fd listeners`).
    SocketTransfer,
    /// SIGUSR2 to the master of `haproxy -W`: a new worker inherits the same listeners.
    MasterWorker,
}

/// A running HAProxy; every process it started is stopped on drop.
pub struct Haproxy<'ns> {
    ns: &'ns NetNs,
    dir: PathBuf,
    port: u16,
    reload: Reload,
    /// Daemon mode: the pidfile's pid, the process serving now; master-worker: the master.
    pid: u32,
    /// Every pid the pidfile named and every worker seen, so drop stops them all.
    seen: Vec<u32>,
}

impl<'ns> Haproxy<'ns> {
    /// Makes the scratch directory `steer-bench-<pid>-<tag>`, writes the config that `render`
    /// returns for the admin socket's path, and starts HAProxy in `ns`; returns once the
    /// serving process (master-worker: a worker) holds the listener on `port`.
    pub fn start(
        ns: &'ns NetNs,
        tag: &str,
        port: u16,
        reload: Reload,
        render: impl FnOnce(&Path) -> String,
    ) -> Result<Haproxy<'ns>> {
        let dir = std::env::temp_dir().join(format!("steer-bench-{}-{tag}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        // From here on, drop removes the directory and stops what was started.
        let mut hap = Haproxy { ns, dir, port, reload, pid: 0, seen: Vec::new() };
        let cfg = hap.dir.join("haproxy.cfg");
        fs::write(&cfg, render(&hap.admin_socket()))
            .with_context(|| format!("could not write {}", cfg.display()))?;
        let master_worker = reload == Reload::MasterWorker;
        hap.run(if master_worker { &["-W"] } else { &[] }).context("starting HAProxy")?;
        hap.pid =
            wait_for("HAProxy to write its pidfile", READY_TIMEOUT, || Ok(read_pidfile(&hap.pidfile())))?;
        hap.seen.push(hap.pid);
        if master_worker {
            hap.wait_new_worker(&[])?;
        } else {
            hap.wait_listening(hap.pid)?;
        }
        Ok(hap)
    }

    /// Daemon mode: the process serving now; master-worker: the master.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The admin socket a config may declare (`stats socket ... expose-fd listeners`).
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Reloads the way it was started for, and returns the new serving pid once the new
    /// process holds the listener: daemon mode, once `haproxy -D ... -sf|-st OLD` has
    /// returned and the pidfile names it; master-worker, once the master has a new worker.
    pub fn reload(&mut self) -> Result<u32> {
        let old = self.pid;
        let old_pid = old.to_string();
        let admin = self.admin_socket();
        let admin = admin.to_string_lossy();
        let args: &[&str] = match self.reload {
            Reload::HardRestart => &["-st", &old_pid],
            Reload::Soft => &["-sf", &old_pid],
            Reload::SocketTransfer => &["-sf", &old_pid, "-x", &admin],
            Reload::MasterWorker => {
                let before: Vec<u32> = children(old, "haproxy")?.iter().map(|c| c.0).collect();
                util::output(cmd("kill").args(["-s", "USR2", &old_pid]))
                    .context("could not send SIGUSR2 to the HAProxy master")?;
                let new = self.wait_new_worker(&before)?;
                // The master forks the new worker before it is done starting, and a SIGUSR2
                // sent before it catches the signal again can go unanswered: under load,
                // without this wait, one reload in three here never made a new worker.
                wait_for("the HAProxy master to catch SIGUSR2 again", READY_TIMEOUT, || {
                    Ok(catches(old, SIGUSR2).then_some(()))
                })?;
                return Ok(new);
            }
        };
        self.run(args)?;
        let new = read_pidfile(&self.pidfile()).with_context(|| self.log_tail("HAProxy wrote no pidfile"))?;
        if new == old {
            bail!("the pidfile still names the old HAProxy {old}");
        }
        self.pid = new;
        self.seen.push(new);
        self.wait_listening(new)
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }

    /// `haproxy -D -f CFG -p PIDFILE ARGS` in the namespace; returns once it has daemonized.
    fn run(&self, args: &[&str]) -> Result<()> {
        let mut command = self.ns.command("haproxy");
        command.arg("-D").arg("-f").arg(self.dir.join("haproxy.cfg")).arg("-p").arg(self.pidfile());
        command.args(args);
        procfs::run_daemonizing(command, &self.log(), READY_TIMEOUT)
    }

    /// Waits until `pid` holds a listener on the port; returns `pid`.
    fn wait_listening(&self, pid: u32) -> Result<u32> {
        let what = format!("HAProxy pid {pid} to listen on port {}", self.port);
        wait_for(&what, READY_TIMEOUT, || Ok((!listening_inodes(pid, self.port).is_empty()).then_some(pid)))
            .with_context(|| self.log_tail("HAProxy did not listen"))
    }

    /// Waits for a worker of the master, not in `before`, that holds a listener; the newest
    /// if there are several.
    fn wait_new_worker(&mut self, before: &[u32]) -> Result<u32> {
        let what = format!("a new worker of HAProxy master {} listening on port {}", self.pid, self.port);
        let new = wait_for(&what, READY_TIMEOUT, || {
            let mut fresh = children(self.pid, "haproxy")?;
            fresh.retain(|(pid, _)| !before.contains(pid) && !listening_inodes(*pid, self.port).is_empty());
            Ok(fresh.into_iter().max_by_key(|(_, start)| *start).map(|(pid, _)| pid))
        })
        .with_context(|| self.log_tail("no new HAProxy worker"))?;
        self.seen.push(new);
        Ok(new)
    }

    fn log_tail(&self, what: &str) -> String {
        format!("{what}; {} ends with:\n{}", self.log().display(), procfs::tail(&self.log(), 10))
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        let mut pids = self.seen.clone();
        if self.reload == Reload::MasterWorker {
            pids.extend(children(self.pid, "haproxy").unwrap_or_default().iter().map(|c| c.0));
        }
        procfs::stop_all(&pids, "haproxy", STOP_TIMEOUT);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {err}", self.dir.display());
        }
    }
}

/// Whether `pid` catches `signal` and does not block it now (`SigCgt` and `SigBlk` of
/// `/proc/PID/status`, bit `signal - 1`); false when unreadable.
fn catches(pid: u32, signal: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .map(|mask| mask >> (signal - 1) & 1 == 1)
    };
    mask("SigCgt:") == Some(true) && mask("SigBlk:") == Some(false)
}

/// The config the bench runs: HAProxy answers every request on `127.0.0.1:port` itself
/// with its pid (`gen=<PID>`); `global` lines are added to the global section.
pub fn config(port: u16, global: &[&str]) -> String {
    let global: String = global.iter().map(|line| format!("    {line}\n")).collect();
    format!(
        "# written by cargo xtask bench
global
    maxconn 4000
{global}
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain lf-string \"gen=%pid\\n\"
"
    )
}

/// `HAProxy 2.6.12-1+deb12u4`, from `haproxy -v`.
pub fn version() -> Result<String> {
    let text = util::output(cmd("haproxy").arg("-v")).context("HAProxy is needed (cargo xtask setup)")?;
    // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
    Ok(format!("HAProxy {}", text.split_whitespace().nth(2).unwrap_or("(version unknown)")))
}

#[cfg(test)]
mod tests {
    use super::config;

    #[test]
    fn config_adds_global_lines_and_answers_with_the_pid() {
        let cfg = config(8081, &["hard-stop-after 10s"]);
        assert!(cfg.contains("\n    maxconn 4000\n    hard-stop-after 10s\n\ndefaults\n"), "{cfg}");
        assert!(cfg.contains("\n    bind 127.0.0.1:8081\n"), "{cfg}");
        assert!(cfg.contains(r#"lf-string "gen=%pid\n""#), "{cfg}");
        assert!(config(8080, &[]).contains("\n    maxconn 4000\n\ndefaults\n"));
    }
}
