//! [`TestServer`]: runs `steer-testserver` inside a network namespace and drives it over
//! stdin/stdout with bounded waits; [`bin_path`] finds the harness's built binaries.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::ServerArgs;
use crate::netns::NetNs;

/// How long to wait for the `ready` line and for each command's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Overrides where [`bin_path`] looks (a directory holding the binaries).
pub const BIN_DIR_ENV: &str = "STEER_TEST_BIN_DIR";

/// Path of a binary built from this workspace (`steer-testserver`, `steer-load`, `steer`).
///
/// Looks in `$STEER_TEST_BIN_DIR` if set, else next to the current executable and in its
/// parent directory (integration tests run from `target/<profile>/deps/`, binaries live
/// in `target/<profile>/`).
///
/// # Errors
///
/// When no such file exists in any of those places.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        dirs.push(PathBuf::from(dir));
    } else {
        let exe = std::env::current_exe().context("locating the current executable")?;
        dirs.extend(exe.ancestors().skip(1).take(2).map(PathBuf::from));
    }
    dirs.iter().map(|dir| dir.join(name)).find(|candidate| candidate.is_file()).ok_or_else(|| {
        anyhow!(
            "{name} not found in {dirs:?}; build it first (cargo build -p steer-tests) \
                 or set {BIN_DIR_ENV}"
        )
    })
}

/// A running `steer-testserver`, killed and reaped on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    pid: u32,
    generation: String,
    stdin: ChildStdin,
    /// Lines the server printed on stdout, read by a background thread.
    lines: Receiver<String>,
}

impl TestServer {
    /// Starts the server in `ns` and waits (up to 10 s) until every listener listens.
    ///
    /// # Errors
    ///
    /// When the binary is missing, fails to start, or is not ready in time.
    pub fn spawn(ns: &NetNs, args: &ServerArgs) -> anyhow::Result<TestServer> {
        let bin = bin_path("steer-testserver")?;
        let mut child = ns
            .command(&bin)
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} in netns {}", bin.display(), ns.name()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the test server's stdin/stdout were not piped");
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // From here on, drop kills the child whatever goes wrong.
        let mut server =
            TestServer { pid: child.id(), child, generation: args.generation.clone(), stdin, lines };
        let ready = server
            .wait_line(|line| line.starts_with("ready "))
            .with_context(|| format!("waiting for test server gen={} to be ready", args.generation))?;
        server.pid = parse_ready(&ready)?;
        Ok(server)
    }

    /// The server's pid (as it reported it; `ip netns exec` execs, so it is the child's).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The generation name the server puts in its replies.
    #[must_use]
    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// Stops accepting; new connections pile up in the accept queues.
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.command("pause")
    }

    /// Accepts again after [`TestServer::pause`].
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s, or its listeners are closed.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.command("resume")
    }

    /// Closes every listening socket without accepting what is queued; returns once all
    /// are closed. The process stays up so in-flight connections finish.
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s.
    pub fn close_listeners(&mut self) -> anyhow::Result<()> {
        self.command("close")
    }

    /// The connections the server has accepted so far, on every listener.
    ///
    /// # Errors
    ///
    /// When the server does not answer within 10 s.
    pub fn accepted(&mut self) -> anyhow::Result<u64> {
        writeln!(self.stdin, "accepted")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("asking test server pid {} what it accepted", self.pid))?;
        let line = self.wait_line(|line| line.starts_with("accepted "))?;
        line.trim_start_matches("accepted ").parse().with_context(|| format!("malformed answer {line:?}"))
    }

    /// Asks the server to exit and reaps it.
    ///
    /// # Errors
    ///
    /// When the server does not confirm, or does not exit within 10 s.
    pub fn exit(&mut self) -> anyhow::Result<()> {
        self.command("exit")?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().context("reaping the test server")?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("test server pid {} did not exit within {REPLY_TIMEOUT:?}", self.pid)
    }

    /// Sends `cmd` and waits for `ok cmd` (or fails on `err cmd: ...`).
    fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("sending {cmd:?} to test server pid {}", self.pid))?;
        let ok = format!("ok {cmd}");
        let err = format!("err {cmd}");
        let line = self
            .wait_line(|line| line == ok || line.starts_with(&err))
            .with_context(|| format!("waiting for test server pid {} to {cmd}", self.pid))?;
        if line != ok {
            bail!("test server pid {} refused {cmd:?}: {line}", self.pid);
        }
        Ok(())
    }

    /// The next stdout line matching `wanted`, skipping others, within [`REPLY_TIMEOUT`].
    fn wait_line(&mut self, wanted: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!("no answer within {REPLY_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().context("reaping the test server")?;
                    bail!("the test server closed its stdout ({status})");
                }
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Either may fail because the child already exited and was reaped: that is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid in `ready pid=<PID> gen=<NAME>`.
fn parse_ready(line: &str) -> anyhow::Result<u32> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("pid="))
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| anyhow!("malformed ready line {line:?}"))
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
