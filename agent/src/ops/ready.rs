//! The readiness gate: whether a new generation may get connections. A command
//! (`--ready-cmd`, exit 0 = ready) and an HTTP probe (`--ready-http URL`, a 2xx
//! answer = ready). `steer reload` asks the gate before it promotes.
//!
//! An HTTP probe cannot go to the group's own address: the reuseport program
//! sends every new connection there to the active (old) generation, the probe's
//! too. So the URL names an address that only the new generation holds (a
//! health or stats port of its own), and before each probe the gate checks, in
//! the new generation's network namespace, that every listener on that address
//! belongs to it. A probe that could reach another process counts as not ready.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use crate::{netns, proc::Process, sockdiag};

/// The longest one HTTP probe may take (connect, request and answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What decides readiness. Empty: ready as soon as it listens.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// Run through `sh -c` with `STEER_PID`, `STEER_PORT` and `STEER_ADDR` set.
    pub cmd: Option<String>,
    pub http: Option<HttpProbe>,
}

/// `--ready-http http://ADDR[:PORT]/PATH`: `GET PATH` sent to ADDR, which must
/// belong to the new generation alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl std::fmt::Display for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

impl FromStr for HttpProbe {
    type Err = String;

    /// `http://127.0.0.1:8404/health`, `http://[::1]:8404/`, `http://localhost:8404/health`.
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{url:?} is not an http:// URL; a path alone would be sent to the group's address, which \
                 reaches the active generation, so give the new generation's own health address, e.g. \
                 http://127.0.0.1:8404/health"
            )
        })?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let bad = || format!("{url:?}: expected http://ADDRESS[:PORT]/PATH with an IP address or localhost");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                (h, p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?)
            }
            _ => (authority, 80),
        };
        let ip = if host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| bad())?
        };
        Ok(Self { addr: SocketAddr::new(ip, port), host: authority.to_owned(), path: path.to_owned() })
    }
}

/// The generation the gate looks at.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub process: &'a Process,
    /// The group addresses it will serve (for `STEER_PORT` and `STEER_ADDR`).
    pub groups: &'a [SocketAddr],
}

/// Why a generation is not ready (yet).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("`{cmd}` for {addr} exited with {status}")]
    CmdFailed { cmd: String, addr: SocketAddr, status: std::process::ExitStatus },
    #[error("`{cmd}` for {addr} was still running at the deadline")]
    CmdHung { cmd: String, addr: SocketAddr },
    #[error("cannot run `sh -c {cmd:?}`: {error}")]
    CmdSpawn { cmd: String, error: std::io::Error },
    #[error("nothing listens on {addr} in pid {pid}'s network namespace")]
    NotListening { addr: SocketAddr, pid: u32 },
    #[error(
        "{addr} is also held by a process other than pid {pid}, so a probe there could be answered by it; give the new generation's own health address"
    )]
    Shared { addr: SocketAddr, pid: u32 },
    #[error("cannot look at {addr} in pid {pid}'s network namespace: {error}")]
    Netns { addr: SocketAddr, pid: u32, error: String },
    #[error("GET {url} failed: {error}")]
    Http { url: String, error: std::io::Error },
    #[error("GET {url} answered {status_line:?}")]
    HttpStatus { url: String, status_line: String },
}

impl Gate {
    /// Whether the gate is open for `target` now; `deadline` bounds a command
    /// that does not return.
    pub fn check(&self, target: Target<'_>, deadline: Instant) -> Result<(), NotReady> {
        if let Some(probe) = &self.http {
            http_check(probe, target.process)?;
        }
        if let Some(cmd) = &self.cmd {
            for addr in target.groups {
                run_cmd(cmd, target.process.pid, *addr, deadline)?;
            }
        }
        Ok(())
    }
}

/// Runs the ready command for one group, killing it (and its process group)
/// at `deadline`.
fn run_cmd(cmd: &str, pid: u32, addr: SocketAddr, deadline: Instant) -> Result<(), NotReady> {
    let mut child = std::os::unix::process::CommandExt::process_group(
        Command::new("sh")
            .args(["-c", cmd])
            .env("STEER_PID", pid.to_string())
            .env("STEER_PORT", addr.port().to_string())
            .env("STEER_ADDR", addr.to_string())
            .stdin(Stdio::null()),
        0,
    )
    .spawn()
    .map_err(|error| NotReady::CmdSpawn { cmd: cmd.to_owned(), error })?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(NotReady::CmdFailed { cmd: cmd.to_owned(), addr, status }),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                if let Some(group) = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(NotReady::CmdHung { cmd: cmd.to_owned(), addr });
            }
        }
    }
}

/// The probe's address must be held by `process` alone; then `GET PATH` must
/// answer 2xx. Both happen in the process's network namespace.
fn http_check(probe: &HttpProbe, process: &Process) -> Result<(), NotReady> {
    let (addr, pid) = (probe.addr, process.pid);
    let netns_error = |error: String| NotReady::Netns { addr, pid, error };
    let own = process.socket_fds().map_err(|e| netns_error(e.to_string()))?;
    netns::run_in(pid, process.netns, || {
        let listeners = sockdiag::listeners().map_err(|e| netns_error(e.to_string()))?;
        let on_addr: Vec<_> = listeners
            .iter()
            .filter(|l| {
                l.addr.port() == addr.port() && (l.addr.ip() == addr.ip() || l.addr.ip().is_unspecified())
            })
            .collect();
        if on_addr.is_empty() {
            return Err(NotReady::NotListening { addr, pid });
        }
        if on_addr.iter().any(|l| !own.contains_key(&l.inode)) {
            return Err(NotReady::Shared { addr, pid });
        }
        get(probe)
    })
    .map_err(|e| netns_error(e.to_string()))?
}

/// One `GET`; Ok on a 2xx status.
fn get(probe: &HttpProbe) -> Result<(), NotReady> {
    let url = probe.to_string();
    let http = |error| NotReady::Http { url: url.clone(), error };
    let mut stream = TcpStream::connect_timeout(&probe.addr, PROBE_TIMEOUT).map_err(http)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(http)?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(http)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: steer-ready\r\nConnection: close\r\n\r\n",
        probe.path, probe.host
    );
    stream.write_all(request.as_bytes()).map_err(http)?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0_u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match stream.read(&mut chunk).map_err(http)? {
            0 => break,
            n => head.extend_from_slice(&chunk[..n]),
        }
    }
    let status_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
    if status_is_success(&status_line) { Ok(()) } else { Err(NotReady::HttpStatus { url, status_line }) }
}

/// `HTTP/1.x 2xx ...`.
#[must_use]
pub fn status_is_success(status_line: &str) -> bool {
    let mut parts = status_line.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts.next().is_some_and(|code| code.len() == 3 && code.starts_with('2'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_an_address_and_a_path() {
        let p: HttpProbe = "http://127.0.0.1:8404/health".parse().unwrap();
        assert_eq!(p.addr, "127.0.0.1:8404".parse().unwrap());
        assert_eq!((p.host.as_str(), p.path.as_str()), ("127.0.0.1:8404", "/health"));
        assert_eq!(p.to_string(), "http://127.0.0.1:8404/health");
        let p: HttpProbe = "http://[::1]:9000".parse().unwrap();
        assert_eq!((p.addr, p.path.as_str()), ("[::1]:9000".parse().unwrap(), "/"));
        let p: HttpProbe = "http://localhost/ready?x=1".parse().unwrap();
        assert_eq!((p.addr, p.path.as_str()), ("127.0.0.1:80".parse().unwrap(), "/ready?x=1"));
        for bad in
            ["/health", "https://127.0.0.1/", "http://example.com/", "http://127.0.0.1:0/", "http://:80/"]
        {
            assert!(bad.parse::<HttpProbe>().is_err(), "{bad}");
        }
        assert!("/health".parse::<HttpProbe>().unwrap_err().contains("reaches the active generation"));
    }

    #[test]
    fn only_2xx_is_ready() {
        assert!(status_is_success("HTTP/1.1 200 OK"));
        assert!(status_is_success("HTTP/1.0 204 No Content"));
        assert!(!status_is_success("HTTP/1.1 503 Service Unavailable"));
        assert!(!status_is_success("HTTP/1.1 301 Moved"));
        assert!(!status_is_success("gen=g1 pid=4"));
        assert!(!status_is_success(""));
    }

    #[test]
    fn the_command_sees_the_generation_and_is_bounded() {
        let me = Process::open(std::process::id()).unwrap();
        let groups = ["127.0.0.1:8080".parse().unwrap()];
        let target = Target { process: &me, groups: &groups };
        let soon = Instant::now() + Duration::from_secs(5);
        let cmd = format!("test \"$STEER_PID $STEER_PORT $STEER_ADDR\" = '{} 8080 127.0.0.1:8080'", me.pid);
        Gate { cmd: Some(cmd), http: None }.check(target, soon).unwrap();
        let err = Gate { cmd: Some("exit 3".into()), http: None }.check(target, soon).unwrap_err();
        assert!(err.to_string().contains("exited with exit status: 3"), "{err}");
        let started = Instant::now();
        let short = started + Duration::from_millis(200);
        let err = Gate { cmd: Some("sleep 10".into()), http: None }.check(target, short).unwrap_err();
        assert!(matches!(err, NotReady::CmdHung { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        Gate::default().check(target, soon).unwrap();
    }
}
