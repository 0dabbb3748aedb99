//! A driver for nginx (Debian's nginx-light 1.22) inside a network namespace: a master
//! and N workers listening on `127.0.0.1:PORT` with `reuseport` (one socket per worker,
//! all in one reuseport group), reloaded with a new worker count by SIGHUP.
//!
//! Every reply is `gen=<PID> pid=<PID>`, the pid of the worker that answered.
//!
//! Who holds the sockets: the master opens every listening socket and keeps all of them
//! across reloads; each worker inherits all of them (and polls only its own). A reload
//! keeps the sockets the new worker count still needs (same inode) and closes the rest;
//! raising the count opens new ones. So the master is the one process that always holds
//! exactly the current generation's sockets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use rustix::process::Signal;

use crate::netns::NetNs;
use crate::procfs::{self, children, is_running, listening_inodes, probe, read_pidfile, signal, wait_for};

/// How long a start or a reload may take before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Drop`] gives the processes to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A running nginx; its master and workers are stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    dir: PathBuf,
    port: u16,
    workers: u32,
    master: u32,
}

impl Nginx {
    /// Writes `dir/nginx.conf`, starts nginx in `ns` with `workers` workers on
    /// `127.0.0.1:port`, and waits until every worker runs, the master holds one
    /// listener per worker, and a connection succeeds.
    ///
    /// # Errors
    ///
    /// When the config cannot be written, nginx fails to start, or is not ready in 10 s.
    pub fn start(ns: &NetNs, dir: &Path, port: u16, workers: u32) -> anyhow::Result<Nginx> {
        ensure!(workers > 0, "nginx needs at least one worker");
        let mut nginx = Nginx { dir: dir.to_owned(), port, workers, master: 0 };
        nginx.write_config()?;
        let mut cmd = ns.command("nginx");
        cmd.arg("-c").arg(nginx.config_path()).arg("-p").arg(dir);
        procfs::run_daemonizing(cmd, &dir.join("nginx.out"), READY_TIMEOUT).context("starting nginx")?;
        let pidfile = dir.join("nginx.pid");
        // From here on, drop stops what was started even if readiness fails.
        nginx.master = wait_for("nginx to write its pidfile", READY_TIMEOUT, || Ok(read_pidfile(&pidfile)))?;
        nginx.wait_settled(&[])?;
        probe(ns, port)?;
        Ok(nginx)
    }

    /// The master's pid: the process that holds every listening socket.
    #[must_use]
    pub fn master_pid(&self) -> u32 {
        self.master
    }

    /// The worker count configured now.
    #[must_use]
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The running workers' pids.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be listed.
    pub fn worker_pids(&self) -> anyhow::Result<Vec<u32>> {
        Ok(children(self.master, "nginx")?.into_iter().map(|(pid, _)| pid).collect())
    }

    /// Rewrites `worker_processes` to `workers`, sends SIGHUP to the master, and waits
    /// until the old workers have exited, `workers` new ones run and the master holds one
    /// listener per worker.
    ///
    /// # Errors
    ///
    /// When the config cannot be written, the signal fails, or the reload does not settle
    /// within 10 s.
    pub fn reload_with_workers(&mut self, workers: u32) -> anyhow::Result<()> {
        ensure!(workers > 0, "nginx needs at least one worker");
        let old = self.worker_pids()?;
        self.workers = workers;
        self.write_config()?;
        signal(self.master, Signal::HUP).context("SIGHUP to the nginx master")?;
        self.wait_settled(&old).with_context(|| format!("reloading nginx to {workers} workers"))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    /// Waits until none of `old` runs, `self.workers` workers run, and the master holds
    /// `self.workers` listeners on the port.
    fn wait_settled(&self, old: &[u32]) -> anyhow::Result<()> {
        let what = format!(
            "nginx master {} to run {} new workers and hold {} listeners on port {}",
            self.master, self.workers, self.workers, self.port
        );
        let wanted = usize::try_from(self.workers).context("worker count")?;
        wait_for(&what, READY_TIMEOUT, || {
            let workers = self.worker_pids()?;
            let settled = workers.len() == wanted
                && workers.iter().all(|pid| !old.contains(pid))
                && old.iter().all(|&pid| !is_running(pid, "nginx"))
                && listening_inodes(self.master, self.port).len() == wanted;
            Ok(settled.then_some(()))
        })
        .with_context(|| format!("nginx error log: {}", procfs::tail(&self.dir.join("error.log"), 10)))
    }

    /// Writes the config (to a temporary file, then renamed).
    fn write_config(&self) -> anyhow::Result<()> {
        let text = render_config(&self.dir, self.port, self.workers);
        let tmp = self.dir.join("nginx.conf.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.config_path())
            .with_context(|| format!("renaming {} into place", tmp.display()))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master is what `nginx -s stop` sends; it stops the workers too.
        let mut pids = vec![self.master];
        pids.extend(self.worker_pids().unwrap_or_default());
        procfs::stop_all(&pids, "nginx", STOP_TIMEOUT);
    }
}

/// The nginx config: `workers` workers, pidfile, logs and temporary files in `dir`, and a
/// server on `127.0.0.1:port` with `reuseport` that answers `gen=<worker pid>`.
#[must_use]
pub fn render_config(dir: &Path, port: u16, workers: u32) -> String {
    let dir = dir.display();
    format!(
        "# written by steer-tests
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
worker_processes {workers};

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type text/plain;
            return 200 \"gen=$pid pid=$pid\\n\";
        }}
    }}
}}
"
    )
}

#[cfg(test)]
#[path = "nginx_tests.rs"]
mod tests;
