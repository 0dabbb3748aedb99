//! The daemon's metrics endpoint under slow clients (issue 12, fault 11): 1,000
//! connections that send nothing, or a request head a byte at a time, do not
//! keep a scrape from answering promptly, and the header timeout closes them.
use std::{
    io::{self, Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use crate::common::{Daemon, World};

/// Slow connections opened.
const SLOW: usize = 1_000;
/// What a scrape may take beside them.
const PROMPT: Duration = Duration::from_secs(2);
/// The endpoint's header timeout and connection cap (agent/src/metrics/http.rs).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CAP: usize = 64;

#[test]
fn a_scrape_answers_promptly_beside_1000_slow_connections_and_they_are_closed() {
    let Some(w) = World::new("mslow") else { return };
    raise_fd_limit(SLOW + 256);
    // A bare port: the daemon listens on 127.0.0.1 of its own namespace, this
    // process's, where `free_port` found it free.
    let port = crate::common::free_port();
    let d = Daemon::spawn(&w, &["--port", "8080", "--metrics", &port.to_string()]);
    let first = scrape(port).expect("scrape before the slow connections");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let head = first.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");

    // Opened from another thread while this one scrapes: the odd ones send a
    // request line and one header, then nothing.
    let opener = thread::spawn(move || {
        (0..SLOW)
            .map(|i| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect a slow client");
                if i % 2 == 1 {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n");
                }
                s
            })
            .collect::<Vec<_>>()
    });
    let mut took = Vec::new();
    while !opener.is_finished() {
        took.push(timed_scrape(port));
        thread::sleep(Duration::from_millis(20));
    }
    let mut slow = opener.join().expect("the opener thread");
    let opened = Instant::now();
    let during = took.len();
    // Then with all of them open, the odd ones sending a header byte every
    // 100 ms: a trickle does not keep a connection open past the timeout.
    while opened.elapsed() < Duration::from_secs(2) {
        for s in slow.iter_mut().skip(1).step_by(2) {
            let _ = s.write_all(b"x");
        }
        took.push(timed_scrape(port));
        thread::sleep(Duration::from_millis(100));
    }
    let slowest = took.iter().max().copied().unwrap_or_default();
    println!(
        "{} scrapes ({during} while {SLOW} slow connections were being opened), slowest {slowest:?}",
        took.len()
    );
    assert!(slowest < PROMPT, "a scrape took {slowest:?}");

    // The daemon holds at most CAP of them; the rest it closed at once.
    let open = still_open(&slow);
    println!("{open} of {SLOW} slow connections open {:?} after the last was opened", opened.elapsed());
    assert!(open <= CAP, "{open} slow connections still open, more than the cap of {CAP}");
    // And the header timeout closes those.
    while opened.elapsed() < HEADER_TIMEOUT + Duration::from_secs(3) && still_open(&slow) > 0 {
        thread::sleep(Duration::from_millis(100));
    }
    let open = still_open(&slow);
    println!("{open} of {SLOW} slow connections open {:?} after the last was opened", opened.elapsed());
    assert_eq!(open, 0, "the header timeout closes every slow connection");
    assert!(timed_scrape(port) < PROMPT);
    let status = d.stop();
    assert!(status.success(), "daemon exit status {status}");
}

/// One `GET /metrics`, answered 200 with a body, and how long it took.
fn timed_scrape(port: u16) -> Duration {
    let started = Instant::now();
    let response =
        scrape(port).unwrap_or_else(|e| panic!("scrape failed after {:?}: {e}", started.elapsed()));
    let took = started.elapsed();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\nsteer_groups "), "{response}");
    took
}

fn scrape(port: u16) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// How many of `conns` the server has not closed (a read would block).
fn still_open(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("non-blocking");
            let mut buf = [0u8; 256];
            let mut stream: &TcpStream = s;
            matches!(stream.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Raises this process's soft limit on descriptors to at least `n` (up to the
/// hard limit); the daemon started after inherits it.
fn raise_fd_limit(n: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = u64::try_from(n).unwrap_or(u64::MAX);
    if limit.current.is_some_and(|current| current < want) {
        let raised = limit.maximum.map_or(want, |max| want.min(max));
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit { current: Some(raised), maximum: limit.maximum },
        )
        .expect("raise RLIMIT_NOFILE");
    }
}
