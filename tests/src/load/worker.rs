//! One load worker: a new TCP connection per request, read to EOF, classified and
//! counted in the worker's own tally.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::classify::{Verdict, classify};
use super::histogram::Histogram;
use super::{LoadConfig, Protocol, Shared};

/// What an HTTP request sends.
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
/// Replies longer than this are cut off and count as bad.
const MAX_REPLY: usize = 64 * 1024;

/// Failure classes, each counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Reset,
    Timeout,
    Short,
    Bad,
    Other,
}

/// Counts of one worker (or, merged, of all).
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    pub(super) requests: u64,
    pub(super) ok: u64,
    pub(super) connect_errors: u64,
    pub(super) resets: u64,
    pub(super) timeouts: u64,
    pub(super) short_replies: u64,
    pub(super) bad_replies: u64,
    pub(super) other_errors: u64,
    pub(super) by_generation: BTreeMap<String, u64>,
    pub(super) by_pid: BTreeMap<u32, u64>,
    pub(super) latency_us: Histogram,
}

impl Tally {
    pub(super) fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.connect_errors += other.connect_errors;
        self.resets += other.resets;
        self.timeouts += other.timeouts;
        self.short_replies += other.short_replies;
        self.bad_replies += other.bad_replies;
        self.other_errors += other.other_errors;
        for (generation, n) in &other.by_generation {
            *self.by_generation.entry(generation.clone()).or_default() += n;
        }
        for (pid, n) in &other.by_pid {
            *self.by_pid.entry(*pid).or_default() += n;
        }
        self.latency_us.merge(&other.latency_us);
    }

    fn count_failure(&mut self, failure: Failure) {
        let counter = match failure {
            Failure::Connect => &mut self.connect_errors,
            Failure::Reset => &mut self.resets,
            Failure::Timeout => &mut self.timeouts,
            Failure::Short => &mut self.short_replies,
            Failure::Bad => &mut self.bad_replies,
            Failure::Other => &mut self.other_errors,
        };
        *counter += 1;
    }
}

/// Runs requests until told to stop, out of time, or out of tickets.
pub(super) fn work(index: usize, cfg: &LoadConfig, shared: &Shared, deadline: Instant) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return;
        }
        if let Some(max) = cfg.max_requests
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= max
        {
            return;
        }
        let started = Instant::now();
        let result = request(cfg, &mut buf);
        let elapsed = started.elapsed();
        let mut tally = shared.lock_tally(index);
        tally.requests += 1;
        // The client's own address names the connection in a failure message, so that
        // it can be found in a server's log or a packet capture.
        let from = match &result {
            Ok(local) => format!(" (from {local})"),
            Err(_) => String::new(),
        };
        let failure = match result.map(|_| classify(cfg.protocol, &buf)) {
            Ok(Verdict::Ok(answer)) => {
                tally.ok += 1;
                match tally.by_generation.get_mut(answer.generation) {
                    Some(n) => *n += 1,
                    None => {
                        tally.by_generation.insert(answer.generation.to_owned(), 1);
                    }
                }
                if let Some(pid) = answer.pid {
                    *tally.by_pid.entry(pid).or_default() += 1;
                }
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.record(micros);
                continue;
            }
            Ok(Verdict::Short(why)) => (Failure::Short, format!("{why}{from}")),
            Ok(Verdict::Bad(why)) => (Failure::Bad, format!("{why}{from}")),
            Err(failure) => failure,
        };
        tally.count_failure(failure.0);
        drop(tally);
        shared.note_error(|| format!("{}: {}", cfg.target, failure.1));
    }
}

/// One request: connect, send (HTTP), read until EOF into `buf`, all within the timeout.
/// Returns the client's local address; an error after connect names it too.
fn request(cfg: &LoadConfig, buf: &mut Vec<u8>) -> Result<SocketAddr, (Failure, String)> {
    buf.clear();
    let deadline = Instant::now() + cfg.timeout;
    let mut stream = TcpStream::connect_timeout(&cfg.target, cfg.timeout).map_err(|e| {
        let class = match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Failure::Reset,
            _ => Failure::Connect,
        };
        (class, format!("connect: {e}"))
    })?;
    let local = stream.local_addr().map_err(|e| io_failure("getsockname", &e))?;
    let from = |(class, message): (Failure, String)| (class, format!("{message} (from {local})"));
    if cfg.protocol == Protocol::Http {
        stream
            .set_write_timeout(Some(cfg.timeout))
            .and_then(|()| stream.write_all(HTTP_REQUEST))
            .map_err(|e| from(io_failure("write", &e)))?;
    }
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(from((Failure::Timeout, format!("read: no EOF within {:?}", cfg.timeout))));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| from(io_failure("read", &e)))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(local),
            Ok(n) if buf.len() + n > MAX_REPLY => {
                return Err(from((Failure::Bad, format!("reply longer than {MAX_REPLY} bytes"))));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(from(io_failure("read", &e))),
        }
    }
}

fn io_failure(stage: &str, e: &std::io::Error) -> (Failure, String) {
    let class = match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => Failure::Reset,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Other,
    };
    (class, format!("{stage}: {e}"))
}
