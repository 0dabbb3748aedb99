//! [`Daemon`]: a `steer daemon` run for one section, its JSON log written to a file and read
//! back as it grows, its memory and descriptors read from `/proc`; killed on drop.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    release::Steer,
    util::{self, cmd},
};

/// How long the daemon may take to start watching, and to exit after SIGTERM.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a wait reads the log again.
const POLL: Duration = Duration::from_millis(2);
/// Log lines quoted in an error.
const QUOTED_LINES: usize = 5;

/// A running `steer daemon --log-format json`.
pub struct Daemon {
    child: Child,
    pid: u32,
    log: LogTail,
}

impl Daemon {
    /// Starts `steer daemon --log-format json ARGS` at its default log level, stderr going to
    /// `log_path`, and waits for its `watching` line.
    pub fn spawn<I, S>(steer: &Steer, args: I, log_path: &Path) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let sink =
            File::create(log_path).with_context(|| format!("could not create {}", log_path.display()))?;
        let mut command = steer.command(["daemon", "--log-format", "json"]);
        command.args(args).stdout(Stdio::null()).stderr(sink);
        let line = util::display(&command);
        println!("$ {line} 2>{}", log_path.display());
        let log = LogTail::open(log_path)?;
        let child = command.spawn().with_context(|| format!("could not start `{line}`"))?;
        // From here on, drop kills the daemon whatever goes wrong.
        let mut daemon = Daemon { pid: child.id(), child, log };
        daemon.wait_for("the daemon to start watching", START_STOP_TIMEOUT, |l| {
            message(l) == Some("watching")
        })?;
        Ok(daemon)
    }

    /// Every log line so far: parsed JSON, or a string for a line that is not JSON.
    pub fn lines(&mut self) -> Result<&[Value]> {
        self.log.read()?;
        Ok(&self.log.lines)
    }

    /// Waits up to `timeout` for a log line (newest first) that `wanted` accepts.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines()?.iter().rev().find(|line| wanted(line)) {
                return Ok(line.clone());
            }
            if let Some(status) = self.child.try_wait().context("checking on the daemon")? {
                bail!("the daemon exited ({status}) while waiting for {what}; {}", self.log.quote());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; {}", self.log.quote());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the `promoted` line of `pid`.
    pub fn wait_promoted(&mut self, pid: u32, timeout: Duration) -> Result<Value> {
        let what = format!("the promotion of pid {pid}");
        self.wait_for(&what, timeout, |line| is_promoted(line) && field_u64(line, "pid") == Some(pid.into()))
    }

    /// SIGTERM, then waits for a clean exit; the log is complete afterwards.
    pub fn stop(&mut self) -> Result<()> {
        util::output(cmd("kill").args(["-s", "TERM", &self.pid.to_string()]))
            .context("could not send SIGTERM to the daemon")?;
        let status = self.wait_exit().context("the daemon ignored SIGTERM")?;
        self.log.read()?;
        if !status.success() {
            bail!("the daemon exited with {status} after SIGTERM; {}", self.log.quote());
        }
        Ok(())
    }

    fn wait_exit(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("waiting for the daemon")? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("still running {START_STOP_TIMEOUT:?} after SIGTERM")
    }

    /// Resident memory (`VmRSS` in `/proc/PID/status`), KiB.
    pub fn rss_kb(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    /// `(run_time_ns, run_count)` summed over the daemon's tracepoint programs (its
    /// listener watcher), from `/proc/PID/fdinfo` of its program descriptors. They grow
    /// only while `kernel.bpf_stats_enabled=1`.
    pub fn tracepoint_stats(&self) -> Result<(u64, u64)> {
        // BPF_PROG_TYPE_TRACEPOINT and BPF_PROG_TYPE_RAW_TRACEPOINT (the daemon's
        // default source since it stopped needing tracefs).
        const TRACEPOINT: [&str; 2] = ["5", "17"];
        let dir = format!("/proc/{}/fd", self.pid);
        let mut total = (0, 0);
        for entry in fs::read_dir(&dir).with_context(|| format!("could not list {dir}"))?.flatten() {
            if fs::read_link(entry.path()).ok().and_then(|l| l.to_str().map(|l| l == "anon_inode:bpf-prog"))
                != Some(true)
            {
                continue;
            }
            let info = format!("/proc/{}/fdinfo/{}", self.pid, entry.file_name().to_string_lossy());
            let Ok(text) = fs::read_to_string(&info) else { continue };
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().trim_start_matches(':').trim())
            };
            if !field("prog_type").is_some_and(|t| TRACEPOINT.contains(&t)) {
                continue;
            }
            let num = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total.0 += num("run_time_ns");
            total.1 += num("run_cnt");
        }
        Ok(total)
    }

    /// Open descriptors (entries of `/proc/PID/fd`).
    pub fn open_fds(&self) -> Result<usize> {
        let path = format!("/proc/{}/fd", self.pid);
        Ok(fs::read_dir(&path).with_context(|| format!("could not list {path}"))?.count())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Either fails only when the daemon already exited and was reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon's log file, read incrementally; complete lines are kept parsed.
struct LogTail {
    path: PathBuf,
    file: File,
    /// Bytes after the last newline read so far.
    partial: Vec<u8>,
    lines: Vec<Value>,
}

impl LogTail {
    fn open(path: &Path) -> Result<LogTail> {
        let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
        Ok(LogTail { path: path.to_owned(), file, partial: Vec::new(), lines: Vec::new() })
    }

    /// Reads what the daemon wrote since the last call.
    fn read(&mut self) -> Result<()> {
        let mut fresh = Vec::new();
        self.file
            .read_to_end(&mut fresh)
            .with_context(|| format!("could not read {}", self.path.display()))?;
        self.partial.extend_from_slice(&fresh);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end();
            self.lines.push(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())));
        }
        Ok(())
    }

    /// The last few lines and where the rest is, for an error message.
    fn quote(&self) -> String {
        let start = self.lines.len().saturating_sub(QUOTED_LINES);
        let last: Vec<String> = self.lines[start..].iter().map(Value::to_string).collect();
        format!("log {} ends with:\n{}", self.path.display(), last.join("\n"))
    }
}

/// `fields.message` of a JSON log line.
pub fn message(line: &Value) -> Option<&str> {
    line["fields"]["message"].as_str()
}

/// A numeric field of a JSON log line.
pub fn field_u64(line: &Value, name: &str) -> Option<u64> {
    line["fields"][name].as_u64()
}

/// A `promoted` line: the daemon made a new generation active. (The `promote` lines of the
/// operation itself, with `outcome: promoted`, are not these.)
pub fn is_promoted(line: &Value) -> bool {
    message(line) == Some("promoted")
}

/// How many `promote failed` warnings the log holds.
pub fn failed_promotes(lines: &[Value]) -> usize {
    lines.iter().filter(|line| line["level"] == "WARN" && message(line) == Some("promote failed")).count()
}
