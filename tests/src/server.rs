//! The `steer-testserver` program: reuseport TCP listeners whose reply names their
//! generation, paused, resumed and closed by commands on stdin; and [`TestServer`], the
//! driver tests use to run it inside a network namespace.
//!
//! Protocol on stdout: one `ready pid=<PID> gen=<NAME>` line once every listener
//! listens, then `ok <cmd>` (or `err <cmd>: <reason>`) per stdin command:
//! `pause`, `resume`, `close` (close every listener without accepting its queue; the
//! process stays up so in-flight connections finish), `exit`; and `accepted`, answered
//! `accepted <N>`: the connections accepted so far. EOF on stdin exits too.
//! SIGTERM stops it gracefully: the listeners close once each accept thread has
//! answered the connection in hand, then it exits 0.

mod accept;
mod driver;
mod listen;

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};

pub use driver::{TestServer, bin_path};

use accept::{Control, Mode, Reply};

/// How long a command waits for every accept thread to take it into account.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Command line of `steer-testserver`; also what [`TestServer::spawn`] passes to it.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(name = "steer-testserver", about = "Reuseport TCP test server whose reply names its generation")]
pub struct ServerArgs {
    /// Address to listen on, IPv4 or IPv6 (`127.0.0.1:8080`, `[::1]:8080`); repeatable.
    #[arg(long, required = true)]
    pub listen: Vec<SocketAddr>,
    /// Generation name put in every reply (`gen=<NAME>`).
    #[arg(long = "gen")]
    pub generation: String,
    /// Listening sockets per address, all in the same reuseport group (nginx-style).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub listeners: u16,
    /// listen() backlog of every socket.
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,
    /// Bind without SO_REUSEPORT.
    #[arg(long)]
    pub no_reuseport: bool,
    /// Speak HTTP/1.1 instead of the line protocol.
    #[arg(long)]
    pub http: bool,
    /// Sleep this long before each accept (a slow server).
    #[arg(long, default_value_t = 0)]
    pub accept_delay_ms: u64,
    /// Start without accepting (as after `pause`).
    #[arg(long)]
    pub paused: bool,
    /// Wait this long between opening one listener and the next.
    #[arg(long, default_value_t = 0)]
    pub listen_gap_ms: u64,
}

impl ServerArgs {
    /// Defaults (one reuseport listener per address, line protocol, accepting) for a
    /// generation listening on `listen`.
    pub fn new(generation: &str, listen: impl IntoIterator<Item = SocketAddr>) -> ServerArgs {
        ServerArgs {
            listen: listen.into_iter().collect(),
            generation: generation.to_owned(),
            listeners: 1,
            backlog: 1024,
            no_reuseport: false,
            http: false,
            accept_delay_ms: 0,
            paused: false,
            listen_gap_ms: 0,
        }
    }

    /// The command-line arguments that parse back into `self`.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for addr in &self.listen {
            args.extend(["--listen".to_owned(), addr.to_string()]);
        }
        args.extend(["--gen".to_owned(), self.generation.clone()]);
        args.extend(["--listeners".to_owned(), self.listeners.to_string()]);
        args.extend(["--backlog".to_owned(), self.backlog.to_string()]);
        args.extend(["--accept-delay-ms".to_owned(), self.accept_delay_ms.to_string()]);
        args.extend(["--listen-gap-ms".to_owned(), self.listen_gap_ms.to_string()]);
        for (set, flag) in
            [(self.no_reuseport, "--no-reuseport"), (self.http, "--http"), (self.paused, "--paused")]
        {
            if set {
                args.push(flag.to_owned());
            }
        }
        args
    }
}

/// Runs the test server until `exit` or EOF on stdin.
///
/// # Errors
///
/// When a listener cannot be set up or stdout is gone.
pub fn run(args: &ServerArgs) -> anyhow::Result<()> {
    ensure!(
        !args.generation.is_empty() && !args.generation.contains(char::is_whitespace),
        "--gen must be a non-empty word, got {:?}",
        args.generation
    );
    let listeners = listen::bind_all(args)?;
    // Blocked here, so that every thread started below inherits the mask and
    // only `stop_on_sigterm`'s sigwait takes the signal.
    let sigterm = block_sigterm()?;
    let initial = if args.paused { Mode::Paused } else { Mode::Running };
    let control = Arc::new(Control::new(listeners.len(), initial));
    let pid = std::process::id();
    let reply = Arc::new(Reply::new(&args.generation, pid, args.http));
    let delay = Duration::from_millis(args.accept_delay_ms);
    for (index, listener) in listeners.into_iter().enumerate() {
        let (control, reply) = (Arc::clone(&control), Arc::clone(&reply));
        std::thread::Builder::new()
            .name(format!("accept-{index}"))
            .spawn(move || accept::accept_loop(index, listener, &control, &reply, delay))
            .context("spawning an accept thread")?;
    }
    let stopper = Arc::clone(&control);
    std::thread::Builder::new()
        .name("sigterm".to_owned())
        .spawn(move || stop_on_sigterm(&sigterm, &stopper))
        .context("spawning the SIGTERM thread")?;
    say(&format!("ready pid={pid} gen={}", args.generation))?;

    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let cmd = line.trim();
        let result = match cmd {
            "" => continue,
            "pause" => control.set(Mode::Paused, COMMAND_TIMEOUT),
            "resume" => control.set(Mode::Running, COMMAND_TIMEOUT),
            "close" => control.set(Mode::Closed, COMMAND_TIMEOUT),
            "exit" => {
                say("ok exit")?;
                return Ok(());
            }
            "accepted" => {
                say(&format!("accepted {}", reply.accepted()))?;
                continue;
            }
            _ => Err(anyhow::anyhow!("unknown command")),
        };
        match result {
            Ok(()) => say(&format!("ok {cmd}"))?,
            Err(e) => say(&format!("err {cmd}: {e:#}"))?,
        }
    }
    Ok(())
}

/// Blocks SIGTERM in the calling thread; returns the set to wait on.
fn block_sigterm() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: the set is initialised by sigemptyset before use, and
    // pthread_sigmask only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        ensure!(rc == 0, "pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        Ok(set)
    }
}

/// A graceful stop, as real servers do on their stop signal: on SIGTERM, close
/// every listener once its accept thread has finished the connection in hand
/// (the line protocol answers inline), then exit 0.
fn stop_on_sigterm(set: &libc::sigset_t, control: &Control) {
    let mut sig = 0;
    // SAFETY: a valid, initialised set and an int to write to.
    while unsafe { libc::sigwait(set, &raw mut sig) } != 0 {}
    if let Err(e) = control.set(Mode::Closed, COMMAND_TIMEOUT) {
        eprintln!("steer-testserver: closing on SIGTERM: {e:#}");
    }
    std::process::exit(0);
}

/// Prints one line on stdout and flushes it.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
