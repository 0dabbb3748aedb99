//! The metrics endpoint: a small HTTP/1.1 server on a tokio listener, one task per
//! connection, `Connection: close`. `GET /metrics` scrapes, `GET /healthz` answers
//! `ok` while the daemon's event loop goes round (503 before it starts and once it
//! has not run for [`super::HEARTBEAT_STALE`]), everything else is 404.
use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinError, JoinSet},
    time::timeout,
};
use tracing::{debug, warn};

use super::{DaemonStats, Health, render};
use crate::{ops::status, state::StateError};

/// Largest request head read; a longer one is answered 431.
pub(super) const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The kernel's counters of the daemon's own network namespace.
const NETSTAT: &str = "/proc/net/netstat";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Why a scrape produced no metrics.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("cannot read the steering state")]
    Status(#[source] StateError),
    #[error("cannot encode the metrics")]
    Render(#[source] std::fmt::Error),
    #[error("the scrape task did not finish")]
    Task(#[source] JoinError),
}

/// What every connection task shares.
struct Context {
    state_dir: PathBuf,
    stats: Arc<DaemonStats>,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves, then
/// drops the connections still open. Each `/metrics` scrape reads
/// [`status::read`] of `state_dir` and `/proc/net/netstat` afresh.
///
/// # Errors
/// None so far: a failed accept is logged and retried, a failed connection is
/// logged and closed. The `Result` leaves room for setup that can fail.
pub async fn serve(
    listener: TcpListener,
    state_dir: PathBuf,
    stats: Arc<DaemonStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let ctx = Arc::new(Context { state_dir, stats });
    let mut shutdown = pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = done {
                    warn!(%error, "a metrics connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        debug!(%peer, "too many metrics connections; closing this one");
                        continue;
                    }
                    let ctx = Arc::clone(&ctx);
                    connections.spawn(async move {
                        if let Err(error) = handle(stream, peer, &ctx).await {
                            debug!(%peer, %error, "metrics connection closed early");
                        }
                    });
                }
                Err(error) => {
                    warn!(%error, "cannot accept a metrics connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// One response, written whole and followed by closing the connection.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self { status, reason, content_type: TEXT, allow: false, body: body.into() }
    }
}

/// Where a request line leads.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Health,
    /// A known path with a method other than GET or HEAD.
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

/// Routes a request line (`GET /metrics HTTP/1.1`); the flag is true for HEAD.
pub(super) fn route(request_line: &str) -> (Route, bool) {
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Route::BadRequest, false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Route::BadRequest, false);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let head = method == "HEAD";
    let route = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", "/healthz") => Route::Health,
        (_, "/metrics" | "/healthz") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    };
    (route, head)
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: &Context) -> io::Result<()> {
    let head = timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no complete request within the timeout"))??;
    let (response, head_only) = match head {
        None => (Response::text(431, "Request Header Fields Too Large", "request too large\n"), false),
        Some(head) => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let (route, head_only) = route(line.trim_end());
            debug!(%peer, request = %line.trim_end(), ?route, "metrics request");
            (respond(route, ctx).await, head_only)
        }
    };
    timeout(IO_TIMEOUT, write_response(&mut stream, &response, head_only))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client did not take the response"))?
}

/// Reads up to the blank line that ends the request head: `Some(head)`, or
/// `None` when the head is longer than [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_complete(&buf) {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// True once `buf` holds an empty line (CRLF or bare LF line endings).
pub(super) fn head_complete(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

async fn respond(route: Route, ctx: &Context) -> Response {
    match route {
        Route::Metrics => match scrape(ctx).await {
            Ok(body) => Response { status: 200, reason: "OK", content_type: OPENMETRICS, allow: false, body },
            Err(error) => {
                let message = chain(&error);
                warn!(error = %message, "metrics scrape failed");
                Response::text(500, "Internal Server Error", format!("{message}\n"))
            }
        },
        Route::Health => match ctx.stats.health(std::time::Instant::now()) {
            Health::Beating(_) => Response::text(200, "OK", "ok\n"),
            Health::Starting => {
                Response::text(503, "Service Unavailable", "starting: the event loop has not run yet\n")
            }
            Health::Stale(age) => Response::text(
                503,
                "Service Unavailable",
                format!(
                    "stale: the event loop last ran {:.1} s ago (limit {} s)\n",
                    age.as_secs_f64(),
                    crate::metrics::HEARTBEAT_STALE.as_secs()
                ),
            ),
        },
        Route::MethodNotAllowed => Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD are served\n")
        },
        Route::NotFound => Response::text(404, "Not Found", "not found; try /metrics or /healthz\n"),
        Route::BadRequest => Response::text(400, "Bad Request", "bad request\n"),
    }
}

/// Reads the state and the kernel's counters off the runtime's threads (both
/// are blocking syscalls) and renders them.
async fn scrape(ctx: &Context) -> Result<String, ScrapeError> {
    let state_dir = ctx.state_dir.clone();
    let stats = Arc::clone(&ctx.stats);
    tokio::task::spawn_blocking(move || {
        let status = status::read(&state_dir).map_err(ScrapeError::Status)?;
        let netstat = read_netstat(Path::new(NETSTAT));
        render(&status, &stats, &netstat).map_err(ScrapeError::Render)
    })
    .await
    .map_err(ScrapeError::Task)?
}

fn read_netstat(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| {
        debug!(path = %path.display(), %error, "cannot read the kernel's TCP counters");
        String::new()
    })
}

/// The error and its sources as one sentence, like anyhow's `{:#}`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

async fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    let allow = if response.allow { "Allow: GET, HEAD\r\n" } else { "" };
    let header = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len(),
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(response.body.as_bytes()).await?;
    }
    stream.shutdown().await
}
