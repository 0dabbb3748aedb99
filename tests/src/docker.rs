//! Driving the Docker CLI for the container tests: whether an engine runs here, and
//! [`Container`], a detached container whose log is collected and which is removed
//! (`docker rm -f`) on drop.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// The engine's socket: where it exists, a Docker engine is promised to run.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// `Ok(())` when `docker` works here; `Err(reason)` otherwise. The reason says whether
/// an engine is promised (its socket exists, so a failure is an error) or simply absent.
///
/// # Errors
///
/// [`Unavailable`] with the reason.
pub fn available() -> Result<(), Unavailable> {
    if !Path::new(DOCKER_SOCKET).exists() {
        return Err(Unavailable::Absent(format!("no Docker engine here ({DOCKER_SOCKET} does not exist)")));
    }
    match Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output() {
        Err(e) => Err(Unavailable::Broken(format!("cannot run the docker CLI: {e}"))),
        Ok(out) if !out.status.success() => Err(Unavailable::Broken(format!(
            "docker version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(_) => Ok(()),
    }
}

/// Why Docker cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No engine on this machine: the container tests skip, even in CI.
    Absent(String),
    /// An engine is there but does not answer: a failure where CI promises tests run.
    Broken(String),
}

/// Runs `docker ARGS` and returns its trimmed stdout.
///
/// # Errors
///
/// When docker cannot start or exits non-zero (the error carries its stderr).
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().context("running docker")?;
    ensure!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the engine accepts `--cap-add NAME` (Docker 20.10 as Debian packages it knows
/// no CAP_BPF or CAP_PERFMON: "invalid CapAdd: unknown capability").
#[must_use]
pub fn knows_capability(image: &str, name: &str) -> bool {
    docker(&["create", "--cap-drop", "ALL", "--cap-add", name, image])
        .map(|id| {
            let _ = docker(&["rm", "-f", &id]);
        })
        .is_ok()
}

/// A detached container, removed with `docker rm -f` on drop; its output (stdout and
/// stderr) is collected from `docker logs --follow`.
#[derive(Debug)]
pub struct Container {
    id: String,
    name: String,
    log: Arc<Mutex<String>>,
    follower: Option<Child>,
}

impl Container {
    /// `docker run --detach --name NAME ARGS...`, where `ARGS` holds the options, the
    /// image and its arguments.
    ///
    /// # Errors
    ///
    /// When `docker run` fails.
    pub fn run(name: &str, args: &[&str]) -> anyhow::Result<Container> {
        let mut full = vec!["run", "--detach", "--name", name];
        full.extend_from_slice(args);
        let id = docker(&full).with_context(|| format!("starting container {name}"))?;
        let mut c = Container { id, name: name.to_owned(), log: Arc::default(), follower: None };
        c.follow(None)?;
        Ok(c)
    }

    /// Starts (again) collecting the log, from `since` (a timestamp) or the beginning.
    fn follow(&mut self, since: Option<&str>) -> anyhow::Result<()> {
        if let Some(mut old) = self.follower.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = Arc::new(Mutex::new(String::new()));
        let mut command = Command::new("docker");
        command.args(["logs", "--follow"]);
        if let Some(since) = since {
            command.args(["--since", since]);
        }
        let mut child = command
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running docker logs --follow")?;
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push_str(&(line + "\n"));
                }
            });
        }
        self.log = log;
        self.follower = Some(child);
        Ok(())
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its main process's pid in the host's pid namespace (0 when it is not running).
    ///
    /// # Errors
    ///
    /// When `docker inspect` fails.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &self.id])?;
        pid.parse().with_context(|| format!("docker inspect printed pid {pid:?}"))
    }

    /// Whether it is running.
    #[must_use]
    pub fn running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.id]).is_ok_and(|s| s == "true")
    }

    /// The log collected so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Log lines containing every needle.
    #[must_use]
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    /// Waits (at most `timeout`) for a log line containing every needle and returns it.
    ///
    /// # Errors
    ///
    /// On timeout, or when the container stopped; the error carries the log's tail.
    pub fn wait_for(&self, needles: &[&str], what: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines_with(needles).into_iter().next() {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} in {}; log:\n{}",
                    self.name,
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the log.
    #[must_use]
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `docker stop --time SECS`: its stop signal, then SIGKILL after `secs`.
    ///
    /// # Errors
    ///
    /// When `docker stop` fails.
    pub fn stop(&self, secs: u32) -> anyhow::Result<()> {
        docker(&["stop", "--time", &secs.to_string(), &self.id]).map(drop)
    }

    /// `docker kill` (SIGKILL), and waits until it is no longer running.
    ///
    /// # Errors
    ///
    /// When `docker kill` or `docker wait` fails.
    pub fn kill(&self) -> anyhow::Result<()> {
        docker(&["kill", &self.id])?;
        docker(&["wait", &self.id]).map(drop)
    }

    /// `docker start` after a stop or kill; the log is collected afresh from the end
    /// of the previous run (`docker logs --since` its `FinishedAt`).
    ///
    /// # Errors
    ///
    /// When `docker start` fails.
    pub fn start(&mut self) -> anyhow::Result<()> {
        // Follow from when the previous run ended, not from the new StartedAt: dockerd
        // records StartedAt once the task runs, and a process that logs at once (steer's
        // first lines come within milliseconds) can log before it; `--since StartedAt`
        // then hides those lines and a test waits for them in vain.
        let finished = docker(&["inspect", "--format", "{{.State.FinishedAt}}", &self.id])?;
        docker(&["start", &self.id])?;
        self.follow(Some(&finished))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.id]);
        if let Some(mut follower) = self.follower.take() {
            let _ = follower.kill();
            let _ = follower.wait();
        }
    }
}
