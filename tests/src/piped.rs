//! [`Piped`]: one of the harness's test servers (`steer-testserver`, `steer-udpserver`)
//! run inside a network namespace and driven line by line over stdin/stdout, every wait
//! bounded. Both speak the same protocol: one `ready pid=<PID> ...` line once up, then
//! `ok <cmd>` or `err <cmd>: <reason>` for each command on stdin.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::netns::NetNs;
use crate::server::bin_path;

/// How long to wait for the `ready` line, for each command's answer, and for an exit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How the line a server prints once it is up starts.
const READY: &str = "ready ";

/// A running test server, killed and reaped on drop.
#[derive(Debug)]
pub struct Piped {
    child: Child,
    /// The pid the server reported (`ip netns exec` execs, so it is the child's).
    pid: u32,
    /// What it is, for messages (`test server gen=g1`).
    what: String,
    stdin: ChildStdin,
    /// Lines the server printed on stdout, read by a background thread.
    lines: Receiver<String>,
}

impl Piped {
    /// Starts the binary `name` with `args` in `ns` and waits (up to 10 s) for its
    /// `ready` line; `what` names it in messages.
    ///
    /// # Errors
    ///
    /// When the binary is missing, fails to start, or is not ready in time.
    pub fn spawn(ns: &NetNs, name: &str, args: &[String], what: String) -> anyhow::Result<Piped> {
        let bin = bin_path(name)?;
        let mut child = ns
            .command(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} in netns {}", bin.display(), ns.name()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the stdin/stdout of the {what} were not piped");
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // From here on, drop kills the child whatever goes wrong.
        let mut piped = Piped { pid: child.id(), child, what, stdin, lines };
        let ready = piped
            .wait_line(|line| line.starts_with(READY))
            .with_context(|| format!("waiting for {} to be ready", piped.what))?;
        piped.pid = parse_ready(&ready)?;
        Ok(piped)
    }

    /// The server's pid, as it reported it.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `cmd` and waits for `ok cmd` (or fails on `err cmd: ...`).
    ///
    /// # Errors
    ///
    /// When the server refuses, or does not answer within 10 s.
    pub fn command(&mut self, cmd: &str) -> anyhow::Result<()> {
        let (ok, err) = (format!("ok {cmd}"), format!("err {cmd}"));
        let line = self.ask(cmd, |line| line == ok || line.starts_with(&err))?;
        if line != ok {
            bail!("{} pid {} refused {cmd:?}: {line}", self.what, self.pid);
        }
        Ok(())
    }

    /// Sends `question` and returns the next line matching `answer`.
    ///
    /// # Errors
    ///
    /// When the server does not answer within 10 s.
    pub fn ask(&mut self, question: &str, answer: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        writeln!(self.stdin, "{question}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("sending {question:?} to {} pid {}", self.what, self.pid))?;
        self.wait_line(answer)
            .with_context(|| format!("waiting for {} pid {} to answer {question:?}", self.what, self.pid))
    }

    /// Waits (up to 10 s) until the process has exited, and reaps it.
    ///
    /// # Errors
    ///
    /// When it is still running then.
    pub fn wait_exit(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().with_context(|| format!("reaping the {}", self.what))?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{} pid {} did not exit within {REPLY_TIMEOUT:?}", self.what, self.pid)
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
                    let status = self.child.wait().with_context(|| format!("reaping the {}", self.what))?;
                    bail!("the {} closed its stdout ({status})", self.what);
                }
            }
        }
    }
}

impl Drop for Piped {
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
#[path = "piped_tests.rs"]
mod tests;
