//! [`TestServer`]: runs `steer-testserver` inside a network namespace and drives it over
//! stdin/stdout ([`Piped`]); [`bin_path`] finds the harness's built binaries.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

use super::ServerArgs;
use crate::netns::NetNs;
use crate::piped::Piped;

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
    piped: Piped,
    generation: String,
}

impl TestServer {
    /// Starts the server in `ns` and waits (up to 10 s) until every listener listens.
    ///
    /// # Errors
    ///
    /// When the binary is missing, fails to start, or is not ready in time.
    pub fn spawn(ns: &NetNs, args: &ServerArgs) -> anyhow::Result<TestServer> {
        let what = format!("test server gen={}", args.generation);
        let piped = Piped::spawn(ns, "steer-testserver", &args.to_args(), what)?;
        Ok(TestServer { piped, generation: args.generation.clone() })
    }

    /// The server's pid (as it reported it; `ip netns exec` execs, so it is the child's).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.piped.pid()
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
        self.piped.command("pause")
    }

    /// Accepts again after [`TestServer::pause`].
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s, or its listeners are closed.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.piped.command("resume")
    }

    /// Closes every listening socket without accepting what is queued; returns once all
    /// are closed. The process stays up so in-flight connections finish.
    ///
    /// # Errors
    ///
    /// When the server does not confirm within 10 s.
    pub fn close_listeners(&mut self) -> anyhow::Result<()> {
        self.piped.command("close")
    }

    /// The connections the server has accepted so far, on every listener.
    ///
    /// # Errors
    ///
    /// When the server does not answer within 10 s.
    pub fn accepted(&mut self) -> anyhow::Result<u64> {
        let line = self.piped.ask("accepted", |line| line.starts_with("accepted "))?;
        line.trim_start_matches("accepted ").parse().with_context(|| format!("malformed answer {line:?}"))
    }

    /// Asks the server to exit and reaps it.
    ///
    /// # Errors
    ///
    /// When the server does not confirm, or does not exit within 10 s.
    pub fn exit(&mut self) -> anyhow::Result<()> {
        self.piped.command("exit")?;
        self.piped.wait_exit()
    }
}
