//! Unprivileged checks of the load generator against tiny servers on loopback.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use super::{LoadConfig, run};

/// A loopback server that answers `reply` to `count` connections, then stops.
fn serve(reply: &'static [u8], count: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let _ = stream.unwrap().write_all(reply);
        }
    });
    addr
}

fn config(target: SocketAddr, requests: u64) -> LoadConfig {
    LoadConfig {
        concurrency: 4,
        max_duration: Duration::from_secs(10),
        max_requests: Some(requests),
        timeout: Duration::from_secs(2),
        ..LoadConfig::new(target)
    }
}

#[test]
fn counts_successes_per_generation_and_pid() {
    let target = serve(b"gen=x pid=7\n", 40);
    let report = run(config(target, 40)).unwrap();
    assert_eq!((report.requests, report.ok, report.failed()), (40, 40, 0), "{report:?}");
    assert_eq!(report.by_generation.get("x"), Some(&40));
    assert_eq!(report.by_pid.get(&7), Some(&40));
    assert!(report.latency_us.p50 <= report.latency_us.max && report.latency_us.max > 0);
}

#[test]
fn counts_short_replies() {
    let target = serve(b"gen=x pid=7", 10);
    let report = run(config(target, 10)).unwrap();
    assert_eq!((report.ok, report.short_replies), (0, 10), "{report:?}");
    assert_eq!(report.first_errors.len(), 10);
}

#[test]
fn counts_refused_connections() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let report = run(config(target, 5)).unwrap();
    assert_eq!((report.requests, report.connect_errors), (5, 5), "{report:?}");
}
