//! The test server's accept threads (one per listener, polling so that commands take
//! effect within one poll interval), the command state they obey, and the replies.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use rustix::event::{PollFd, PollFlags, Timespec};

/// How often an accept thread looks at the command state while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long an HTTP connection may take to send its request, and a reply to be written.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest HTTP request head read.
const MAX_REQUEST: usize = 16 * 1024;

/// What the accept threads are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Running,
    Paused,
    /// Listeners closed, without accepting what was queued; there is no way back.
    Closed,
}

/// Command state shared by the control loop and the accept threads.
///
/// Every change bumps an epoch; [`Control::set`] returns once every accept thread has
/// acknowledged the new epoch, so after `ok pause` nothing more is accepted and after
/// `ok close` every listening socket is closed.
pub(super) struct Control {
    inner: Mutex<Inner>,
    changed: Condvar,
}

struct Inner {
    mode: Mode,
    epoch: u64,
    /// The last epoch each accept thread acted on.
    seen: Vec<u64>,
}

impl Control {
    pub(super) fn new(threads: usize, mode: Mode) -> Control {
        Control {
            inner: Mutex::new(Inner { mode, epoch: 0, seen: vec![0; threads] }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent whatever panicked: every write is a single field.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current mode and its epoch.
    fn current(&self) -> (Mode, u64) {
        let inner = self.lock();
        (inner.mode, inner.epoch)
    }

    /// Records that accept thread `index` acts on `epoch`.
    fn ack(&self, index: usize, epoch: u64) {
        let mut inner = self.lock();
        if inner.seen[index] < epoch {
            inner.seen[index] = epoch;
            self.changed.notify_all();
        }
    }

    /// Sleeps up to `timeout` unless the epoch moves past `epoch`; true if it did.
    fn wait_change(&self, epoch: u64, timeout: Duration) -> bool {
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |inner| inner.epoch == epoch)
            .unwrap_or_else(PoisonError::into_inner);
        inner.epoch != epoch
    }

    /// Switches every accept thread to `mode` and waits until all have done so.
    pub(super) fn set(&self, mode: Mode, timeout: Duration) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if inner.mode == Mode::Closed {
            if mode == Mode::Closed {
                return Ok(());
            }
            bail!("the listeners are closed");
        }
        inner.mode = mode;
        inner.epoch += 1;
        let epoch = inner.epoch;
        self.changed.notify_all();
        let (inner, result) = self
            .changed
            .wait_timeout_while(inner, timeout, |inner| inner.seen.iter().any(|&s| s < epoch))
            .unwrap_or_else(PoisonError::into_inner);
        drop(inner);
        if result.timed_out() {
            bail!("accept threads did not follow within {timeout:?}");
        }
        Ok(())
    }
}

/// What the server answers, precomputed, and how many connections it accepted.
pub(super) struct Reply {
    http: bool,
    bytes: Vec<u8>,
    accepted: std::sync::atomic::AtomicU64,
}

impl Reply {
    pub(super) fn new(generation: &str, pid: u32, http: bool) -> Reply {
        let body = format!("gen={generation} pid={pid}\n");
        let bytes = if http {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        } else {
            body
        };
        Reply { http, bytes: bytes.into_bytes(), accepted: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Connections accepted so far, on every listener.
    pub(super) fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Accepts on `listener` as `control` says until it says [`Mode::Closed`], then closes it.
pub(super) fn accept_loop(
    index: usize,
    listener: TcpListener,
    control: &Control,
    reply: &Arc<Reply>,
    delay: Duration,
) {
    loop {
        let (mode, epoch) = control.current();
        match mode {
            Mode::Closed => {
                drop(listener);
                control.ack(index, epoch);
                return;
            }
            Mode::Paused => {
                control.ack(index, epoch);
                control.wait_change(epoch, POLL_INTERVAL);
            }
            Mode::Running => {
                control.ack(index, epoch);
                match readable(&listener, POLL_INTERVAL) {
                    Ok(false) => {}
                    Ok(true) => {
                        if delay.is_zero() || !control.wait_change(epoch, delay) {
                            accept_one(&listener, reply);
                        }
                    }
                    Err(e) => {
                        eprintln!("steer-testserver: poll: {e}");
                        std::thread::sleep(POLL_INTERVAL);
                    }
                }
            }
        }
    }
}

/// Whether `listener` has a connection to accept, waiting up to `timeout`.
fn readable(listener: &TcpListener, timeout: Duration) -> rustix::io::Result<bool> {
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec { tv_sec: 0, tv_nsec: 50_000_000 });
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Accepts one connection, if there is one, and serves it.
fn accept_one(listener: &TcpListener, reply: &Arc<Reply>) {
    match listener.accept() {
        Ok((stream, _peer)) => {
            reply.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            serve(stream, reply);
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::ConnectionAborted | ErrorKind::Interrupted
            ) => {}
        Err(e) => {
            // EMFILE and friends: back off instead of spinning.
            eprintln!("steer-testserver: accept: {e}");
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Answers one connection. The line protocol's reply is written inline (a few bytes
/// into an empty send buffer never block); HTTP waits for the request, so it gets a
/// short-lived thread of its own.
fn serve(stream: TcpStream, reply: &Arc<Reply>) {
    if !reply.http {
        let _ = write_reply(stream, reply);
        return;
    }
    let reply = Arc::clone(reply);
    let spawned =
        std::thread::Builder::new().name("conn".to_owned()).stack_size(64 * 1024).spawn(move || {
            let _ = serve_http(stream, &reply);
        });
    if let Err(e) = spawned {
        eprintln!("steer-testserver: spawning a connection thread: {e}");
    }
}

fn serve_http(mut stream: TcpStream, reply: &Reply) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST || Instant::now() >= deadline {
            return Err(ErrorKind::InvalidData.into());
        }
        match stream.read(&mut chunk)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => head.extend_from_slice(&chunk[..n]),
        }
    }
    write_reply(stream, reply)
}

/// Writes the reply and closes the connection (the server closes first).
fn write_reply(mut stream: TcpStream, reply: &Reply) -> std::io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&reply.bytes)
}
