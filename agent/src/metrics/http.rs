//! The metrics endpoint: `/metrics` and `/healthz` over HTTP/1.1, served by
//! hyper on the daemon's tokio runtime, one task per connection.
//!
//! hyper 1 (with hyper-util's tokio glue and http-body-util's `Full` body)
//! parses the request head (with `httparse`, fuzzed upstream) and writes the
//! response; nothing here reads bytes off the socket. axum would route two
//! fixed paths through tower and its router and bring about ten more crates on
//! top of the same hyper; a `match` on method and path does it here.
//!
//! What a client gets:
//! - `GET` or `HEAD` of `/metrics` (in the format `Accept` asks for, see
//!   [`super::format`]) and `/healthz` (`ok` while the event loop goes round,
//!   503 before it starts and once it has not run for [`super::HEARTBEAT_STALE`]);
//!   404 for other paths, 405 with `Allow: GET, HEAD` for other methods, 400 for
//!   a head that does not parse, 431 for one longer than [`MAX_HEAD`].
//! - One request per connection, answered with `Connection: close`.
//! - The head must arrive whole within [`Limits::header_timeout`] of the
//!   connection (hyper's header read timeout, a deadline rather than an idle
//!   timer), and a connection lasts [`Limits::deadline`] at most.
//! - [`Limits::connections`] at once. At the cap, a new connection takes the
//!   place of the oldest stalled one: one that has read all its client sent
//!   without a whole request head ([`slots`]). So clients that connect and send
//!   nothing, or send slowly, cannot lock out a scraper, whose head comes at
//!   once. When none is stalled (all are being answered, or have not yet had a
//!   turn to read), the new connection waits up to 50 ms for one to stall or
//!   end, and is closed if none does.
//! - On shutdown the listener closes, connections that have not sent a request
//!   close, and those answering one get [`SHUTDOWN_GRACE`] to finish.
use std::{
    convert::Infallible,
    io,
    path::{Path, PathBuf},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch, task::JoinError};
use tracing::{debug, warn};

mod slots;
use slots::{Slots, Watched};

use super::{
    DaemonStats, Health,
    format::{Format, negotiate, prometheus_text},
    render,
};
use crate::{ops::status, state::StateError};

/// Largest request head (request line and headers) read; a longer one is answered 431.
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// How long a stopping server lets the requests it is answering finish.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Pause after a failed accept (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The kernel's counters of the daemon's own network namespace.
const NETSTAT: &str = "/proc/net/netstat";
const TEXT: &str = "text/plain; charset=utf-8";

/// The bounds on what a client can hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Time from the connection to the end of its request head.
    pub header_timeout: Duration,
    /// Time from the connection to the end of the response.
    pub deadline: Duration,
    /// Connections served at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(5), deadline: Duration::from_secs(10), connections: 64 }
    }
}

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
struct Shared {
    state_dir: PathBuf,
    stats: Arc<DaemonStats>,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
/// Each `/metrics` scrape reads [`status::read`] of `state_dir` and
/// `/proc/net/netstat` afresh.
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
    serve_with(listener, state_dir, stats, Limits::default(), shutdown).await
}

/// [`serve`] within `limits`.
pub(super) async fn serve_with(
    listener: TcpListener,
    state_dir: PathBuf,
    stats: Arc<DaemonStats>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let ctx = Arc::new(Shared { state_dir, stats });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD)
        .keep_alive(false);
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut connections = Slots::new(limits.connections);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                // An aborted task is a connection closed to make room.
                if let Err(error) = done && error.is_panic() {
                    warn!(%error, "a metrics connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if !connections.make_room().await {
                        debug!(%peer, "every metrics connection is answering a request; closing this one");
                        continue;
                    }
                    connections.spawn(stream, |stream| {
                        let conn = connection(stream, Arc::clone(&ctx), &http, stopping.clone());
                        async move {
                            match tokio::time::timeout(limits.deadline, conn).await {
                                Ok(Ok(())) => {}
                                Ok(Err(error)) => debug!(%peer, %error, "metrics connection closed early"),
                                Err(_) => debug!(%peer, "metrics connection outlived its deadline; closing it"),
                            }
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
    drop(listener);
    let _ = stop.send(true);
    connections.close(SHUTDOWN_GRACE).await;
    Ok(())
}

/// Serves one connection until its response is written, or until the server
/// stops: then at once if no request came, else after the response.
fn connection(
    stream: Watched,
    ctx: Arc<Shared>,
    http: &http1::Builder,
    mut stopping: watch::Receiver<bool>,
) -> impl Future<Output = hyper::Result<()>> + use<> {
    let phase = stream.phase();
    let seen = stream.phase();
    let service = service_fn(move |request| {
        seen.requested();
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(answer(&request, &ctx).await) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    async move {
        let mut conn = pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                if !phase.is_requested() {
                    return Ok(());
                }
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }
}

/// Where a request leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Health,
    /// A known path with a method other than GET or HEAD.
    MethodNotAllowed,
    NotFound,
}

/// Routes a request by its method and path.
pub(super) fn route(method: &Method, path: &str) -> Route {
    let readable = method == Method::GET || method == Method::HEAD;
    match path {
        "/metrics" if readable => Route::Metrics,
        "/healthz" if readable => Route::Health,
        "/metrics" | "/healthz" => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// The response to one request; hyper leaves out the body for HEAD.
async fn answer(request: &Request<Incoming>, ctx: &Shared) -> Response<Full<Bytes>> {
    let route = route(request.method(), request.uri().path());
    debug!(method = %request.method(), path = request.uri().path(), ?route, "metrics request");
    match route {
        Route::Metrics => {
            let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = negotiate(accept);
            match scrape(ctx, format).await {
                Ok(body) => reply(StatusCode::OK, format.content_type(), body),
                Err(error) => {
                    let message = crate::ops::chain(&error);
                    warn!(error = %message, "metrics scrape failed");
                    reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{message}\n"))
                }
            }
        }
        Route::Health => match ctx.stats.health(std::time::Instant::now()) {
            Health::Beating(_) => reply(StatusCode::OK, TEXT, "ok\n".to_owned()),
            Health::Starting => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "starting: the event loop has not run yet\n".to_owned(),
            ),
            Health::Stale(age) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "stale: the event loop last ran {:.1} s ago (limit {} s)\n",
                    age.as_secs_f64(),
                    super::HEARTBEAT_STALE.as_secs()
                ),
            ),
        },
        Route::MethodNotAllowed => {
            let mut response =
                reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD are served\n".to_owned());
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Route::NotFound => {
            reply(StatusCode::NOT_FOUND, TEXT, "not found; try /metrics or /healthz\n".to_owned())
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Reads the state and the kernel's counters off the runtime's threads (both
/// are blocking syscalls) and renders them in `format`.
async fn scrape(ctx: &Shared, format: Format) -> Result<String, ScrapeError> {
    let state_dir = ctx.state_dir.clone();
    let stats = Arc::clone(&ctx.stats);
    tokio::task::spawn_blocking(move || {
        let status = status::read(&state_dir).map_err(ScrapeError::Status)?;
        let netstat = read_netstat(Path::new(NETSTAT));
        let text = render(&status, &stats, &netstat).map_err(ScrapeError::Render)?;
        Ok(match format {
            Format::OpenMetrics => text,
            Format::Prometheus => prometheus_text(&text),
        })
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

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
