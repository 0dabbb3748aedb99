//! The built `steer` as the overhead, promote and scale sections measure it: [`timed`] runs
//! one command and gives its wall time (spawn to exit) and its peak resident memory, read
//! from the rusage that `wait4` returns when the process is reaped; and the readings of
//! `steer status --json` those sections share.

use std::{
    ffi::OsStr,
    io::{self, Read as _},
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    release::{self, Steer},
    util,
};

/// One finished `steer` command.
pub struct Run {
    /// From spawning the process to reaping it.
    pub wall: Duration,
    /// Peak resident memory of the process (`ru_maxrss`), KiB.
    pub max_rss_kb: u64,
}

impl Run {
    /// The wall time in microseconds.
    pub fn wall_us(&self) -> u64 {
        u64::try_from(self.wall.as_micros()).unwrap_or(u64::MAX)
    }

    /// The wall time in milliseconds, for a summary row.
    pub fn ms(&self) -> String {
        format!("{:.1}", util::ms(self.wall_us()))
    }
}

/// Runs `steer ARGS`, drains its output, reaps it with `wait4`; fails unless it exits 0.
pub fn timed<I, S>(steer: &Steer, args: I) -> Result<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = steer.command(args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let line = util::display(&command);
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("could not start `{line}`"))?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("the output of `{line}` was not piped");
    };
    // stderr on a thread of its own, so that neither pipe can fill up and stall the child.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        err.read_to_string(&mut text).map(|_| text)
    });
    let mut stdout = String::new();
    let read = out.read_to_string(&mut stdout);
    let (status, max_rss_kb) = wait4(child.id()).with_context(|| format!("waiting for `{line}`"))?;
    let wall = started.elapsed();
    read.with_context(|| format!("reading the output of `{line}`"))?;
    let stderr = errors
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading the errors of `{line}` panicked"))?
        .with_context(|| format!("reading the errors of `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", stderr.trim());
    }
    Ok(Run { wall, max_rss_kb })
}

/// Reaps `pid`; returns its exit status and peak resident memory (KiB on Linux).
fn wait4(pid: u32) -> Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(pid).context("a pid fits in pid_t")?;
    let mut status = 0;
    // SAFETY: `rusage` is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types, and `pid` is our own
        // child, not reaped yet (std's `Child` has not waited for it).
        let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if reaped == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    Ok((ExitStatus::from_raw(status), u64::try_from(usage.ru_maxrss).unwrap_or(0)))
}

/// Sockarray slots that the groups on `port` (every port: `None`) use: `(recorded, live)`.
/// A slot stays recorded after its socket closes until the next write reclaims it.
pub fn slots(status: &Value, port: Option<u16>) -> (usize, usize) {
    let sockets: Vec<&Value> = release::groups(status)
        .filter(|g| port.is_none_or(|p| g["port"].as_u64() == Some(u64::from(p))))
        .flat_map(|g| g["sockets"].as_array().into_iter().flatten())
        .collect();
    let live = sockets.iter().filter(|s| s["live"].as_bool() == Some(true)).count();
    (sockets.len(), live)
}

/// Every counter of every namespace, summed: how many times the program ran, as it counts.
pub fn all_counters(status: &Value) -> u64 {
    namespaces(status)
        .filter_map(|ns| ns["counters"].as_object())
        .flat_map(|counters| counters.values().filter_map(Value::as_u64))
        .sum()
}

/// The programs' `(run_time_ns, run_count)`, summed over namespaces; `None` when the status
/// has no `program` figures.
pub fn program_stats(status: &Value) -> Option<(u64, u64)> {
    let programs: Vec<&Value> =
        namespaces(status).map(|ns| &ns["program"]).filter(|p| p.is_object()).collect();
    if programs.is_empty() {
        return None;
    }
    let sum = |field: &str| programs.iter().filter_map(|p| p[field].as_u64()).sum();
    Some((sum("run_time_ns"), sum("run_count")))
}

fn namespaces(status: &Value) -> impl Iterator<Item = &Value> {
    status["namespaces"].as_array().into_iter().flatten()
}
