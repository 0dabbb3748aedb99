//! The metrics endpoint seen by a client on a real connection: what each request
//! gets, and how slow clients, too many clients and shutdown are handled.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

use super::{Limits, MAX_HEAD, Route, SHUTDOWN_GRACE, route, serve_with};
use crate::metrics::DaemonStats;
use hyper::Method;

/// A server on a port of its own, over a state directory that does not exist
/// (so `/metrics` shows the daemon's own figures only).
struct Server {
    addr: SocketAddr,
    stats: Arc<DaemonStats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state_dir = PathBuf::from("/nonexistent/steer-metrics-test");
    let stats = Arc::new(DaemonStats::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, state_dir, Arc::clone(&stats), limits, async {
        let _ = stopped.await;
    }));
    Server { addr, stats, stop, task }
}

/// A response: the status, the head in lower case, the body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` and reads the whole response (the server closes after it).
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {response:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply { status, head: head.to_ascii_lowercase(), body: body.to_owned() }
}

async fn get(addr: SocketAddr, path: &str, headers: &str) -> Reply {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes()).await
}

/// True when the server closed `stream` within `within` (EOF or reset), false
/// when it is still open then.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => false,
    }
}

#[test]
fn requests_are_routed_by_method_and_path() {
    assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
    assert_eq!(route(&Method::HEAD, "/healthz"), Route::Health);
    assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
    assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
    assert_eq!(route(&Method::DELETE, "/"), Route::NotFound);
}

#[tokio::test]
async fn get_and_head_of_metrics_and_healthz() {
    let server = start(Limits::default()).await;
    let addr = server.addr;
    server.stats.record_promotion("127.0.0.1:8080");

    // Before the event loop's first beat: not healthy yet.
    let r = get(addr, "/healthz", "").await;
    assert_eq!((r.status, r.body.as_str()), (503, "starting: the event loop has not run yet\n"));
    server.stats.beat();
    let r = get(addr, "/healthz", "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(r.head.contains("\r\nconnection: close"), "{}", r.head);

    // No Accept, or curl's: the Prometheus text format.
    let r = get(addr, "/metrics", "Accept: */*\r\n").await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"), "{}", r.head);
    assert!(r.head.contains(&format!("\r\ncontent-length: {}", r.body.len())), "{}", r.head);
    assert!(r.body.contains("# TYPE steer_promotions_total counter\n"), "{}", r.body);
    assert!(r.body.contains("steer_promotions_total{group=\"127.0.0.1:8080\"} 1\n"), "{}", r.body);
    assert!(r.body.contains("steer_groups 0\n"), "{}", r.body);
    assert!(!r.body.contains("# EOF"), "{}", r.body);
    // A scraper that asks for OpenMetrics gets it.
    let r = get(addr, "/metrics?x=1", "Accept: application/openmetrics-text; version=1.0.0\r\n").await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("\r\ncontent-type: application/openmetrics-text; version=1.0.0"), "{}", r.head);
    assert!(r.body.contains("# TYPE steer_promotions counter\n"), "{}", r.body);
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);

    let r = exchange(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(r.head.contains("\r\ncontent-length: 3"), "{}", r.head);
    // HTTP/1.0 and a bare-LF head are still understood.
    let r = exchange(addr, b"GET /healthz HTTP/1.0\n\n").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn other_paths_methods_and_bad_heads_are_refused() {
    let server = start(Limits::default()).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/nope", "").await.status, 404);
    let r = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 405);
    assert!(r.head.contains("\r\nallow: get, head"), "{}", r.head);
    assert_eq!(exchange(addr, b"garbage\r\n\r\n").await.status, 400);
    assert_eq!(exchange(addr, b"GET /metrics SPDY/3\r\n\r\n").await.status, 400);
    // Exactly the limit and no end of head yet: the server reads it all, so its
    // close is a clean FIN and the 431 arrives.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(MAX_HEAD, b'a');
    assert_eq!(exchange(addr, &huge).await.status, 431);
    // Just under it, the request is served.
    let mut large = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
    large.resize(MAX_HEAD - 100, b'a');
    large.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(addr, &large).await.status, 503);
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_header_timeout_closes_silent_and_slow_clients() {
    let timeout = Duration::from_millis(300);
    let server = start(Limits { header_timeout: timeout, ..Limits::default() }).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // A byte every 50 ms does not hold the connection open: the timeout is a
    // deadline for the whole head, not for each read.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"X").await.is_err() {
                break;
            }
        }
        closed(&mut slow, Duration::from_secs(2)).await
    };
    let (silent_closed, slow_closed) = tokio::join!(closed(&mut silent, Duration::from_secs(3)), trickle);
    assert!(silent_closed && slow_closed);
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout && elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    // A prompt client is still served.
    assert_eq!(get(server.addr, "/healthz", "").await.status, 503);
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn at_the_cap_a_new_client_takes_the_place_of_the_oldest_silent_one() {
    let server = start(Limits { connections: 2, ..Limits::default() }).await;
    let mut oldest = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut newer = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let r = get(server.addr, "/healthz", "").await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    assert!(closed(&mut oldest, Duration::from_millis(500)).await, "the oldest silent client was closed");
    assert!(!closed(&mut newer, Duration::from_millis(100)).await, "the newer one is still waiting");

    // Many more: every one is served, and the server never holds more than two.
    for _ in 0..20 {
        let _held = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(get(server.addr, "/healthz", "").await.status, 503);
    }
    assert!(closed(&mut newer, Duration::from_millis(500)).await, "the newer one made room in turn");
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_burst_of_silent_clients_leaves_at_most_the_cap_open() {
    let server = start(Limits { connections: 16, ..Limits::default() }).await;
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    assert_eq!(get(server.addr, "/healthz", "").await.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    let open = still_open(&mut held).await;
    assert!(open <= 16, "{open} silent clients still open, more than the cap");
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

/// How many of `streams` the server has not closed.
async fn still_open(streams: &mut [TcpStream]) -> usize {
    let mut open = 0;
    for s in streams {
        if !closed(s, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    open
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_the_clients_that_sent_nothing() {
    let server = start(Limits::default()).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
    assert!(started.elapsed() < SHUTDOWN_GRACE, "stopped in {:?}", started.elapsed());
    assert!(closed(&mut silent, Duration::from_millis(500)).await);
    assert!(closed(&mut partial, Duration::from_millis(500)).await);
    assert!(TcpStream::connect(server.addr).await.is_err(), "the listener is closed after shutdown");
}
