//! Section "program cost per packet": the steering program's mean run time per UDP
//! datagram and per TCP connection, against an empty `sk_reuseport` program (`r0 =
//! SK_PASS; exit`) measured the same way in the same run. Each protocol gets two
//! reuseport groups of two sockets on loopback, held by this process: one steered (`steer
//! promote`), one with the empty program attached. Clients drive each group in turn, in
//! alternating rounds, with `kernel.bpf_stats_enabled=1`; the figure is the growth of
//! `run_time_ns / run_cnt`, from `steer status --json` for the steering program and from
//! `/proc/self/fdinfo` for the empty one. The UDP clients use 64 flows (connected
//! sockets), so the flow table's path runs; the TCP clients open a connection per request.
//!
//! Hard checks: both programs ran, and the steering program took its flow path for UDP.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{Ctx, Findings, Row, Section, cli, overhead::StatsOn};

pub const SECTION: Section = Section {
    key: "program_cost",
    title: "program cost per packet: UDP and TCP against an empty program",
    run,
};

/// The target: at most this far above the empty program, ns per run.
const TARGET_ABOVE_EMPTY_NS: f64 = 150.0;
/// Rounds of (empty, steered) phases, and each phase's length: full, quick.
const ROUNDS: (usize, usize) = (3, 1);
const PHASE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_millis(700));
/// Client threads, and UDP flows per thread.
const CLIENTS: usize = 4;
const FLOWS_PER_CLIENT: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

fn run(ctx: &Ctx) -> Result<Findings> {
    let (rounds, phase) = if ctx.quick { (ROUNDS.1, PHASE.1) } else { (ROUNDS.0, PHASE.0) };
    let steer = ctx.steer()?;
    let empty = empty_program().context("loading an empty sk_reuseport program")?;
    let stop = Arc::new(AtomicBool::new(false));
    let groups = [
        (Proto::Udp, Group::start(Proto::Udp, &stop)?, Group::start(Proto::Udp, &stop)?),
        (Proto::Tcp, Group::start(Proto::Tcp, &stop)?, Group::start(Proto::Tcp, &stop)?),
    ];
    let pid = std::process::id().to_string();
    let mut args = vec!["promote".to_owned(), pid];
    for (_, steered, plain) in &groups {
        args.extend(["--port".to_owned(), steered.addr.port().to_string()]);
        attach(&plain.sockets[0], &empty)?;
    }
    cli::timed(&steer, &args).context("promoting the steered groups")?;
    let _stats = StatsOn::enable()?;
    let mut rows = Vec::new();
    let mut data = serde_json::Map::new();
    let mut failures = Vec::new();
    for (proto, steered, plain) in &groups {
        let name = if *proto == Proto::Udp { "UDP datagram" } else { "TCP connection" };
        let (mut s, mut e) = ((0_u64, 0_u64), (0_u64, 0_u64));
        for _ in 0..rounds {
            let before = fdinfo_stats(&empty)?;
            drive(*proto, plain.addr, phase)?;
            let after = fdinfo_stats(&empty)?;
            e = (e.0 + after.0 - before.0, e.1 + after.1 - before.1);
            let before = cli::program_stats(&steer.status_json()?).context("no program figures in status")?;
            drive(*proto, steered.addr, phase)?;
            let after = cli::program_stats(&steer.status_json()?).context("no program figures in status")?;
            s = (s.0 + after.0 - before.0, s.1 + after.1 - before.1);
        }
        if s.1 == 0 || e.1 == 0 {
            failures.push(format!("{name}: a program did not run (steer {} runs, empty {} runs)", s.1, e.1));
            continue;
        }
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds and counts as means")]
        let (sn, en) = (s.0 as f64 / s.1 as f64, e.0 as f64 / e.1 as f64);
        let above = sn - en;
        rows.push(Row::new(format!("{name}: steering program (ns per run)"), format!("{sn:.0}")));
        rows.push(Row::new(format!("{name}: empty program (ns per run)"), format!("{en:.0}")));
        rows.push(
            Row::new(format!("{name}: steering above empty (ns)"), format!("{above:.0}"))
                .target(format!("<= {TARGET_ABOVE_EMPTY_NS:.0}"), Some(above <= TARGET_ABOVE_EMPTY_NS)),
        );
        let key = if *proto == Proto::Udp { "udp" } else { "tcp" };
        data.insert(
            key.to_owned(),
            json!({ "steer": { "run_time_ns": s.0, "run_count": s.1, "ns_per_run": sn },
                    "empty": { "run_time_ns": e.0, "run_count": e.1, "ns_per_run": en },
                    "above_empty_ns": above }),
        );
    }
    let status = steer.status_json()?;
    let flowed = status["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|ns| ns["groups"].as_array().into_iter().flatten())
        .any(|g| {
            g["protocol"] == "udp"
                && g["udp"]["flows"] == true
                && g["counters"]["steered_active"].as_u64() > Some(0)
        });
    if !flowed {
        failures.push("the UDP group's steered_active did not grow with its flow table on".to_owned());
    }
    stop.store(true, Ordering::Relaxed);
    // The TCP accept loops wake for one last connection each and see the stop.
    for (proto, steered, plain) in &groups {
        if *proto == Proto::Tcp {
            for _ in 0..2 {
                let _ = TcpStream::connect(steered.addr);
                let _ = TcpStream::connect(plain.addr);
            }
        }
    }
    let _ = cli::timed(&steer, ["detach"]);
    Ok(Findings {
        setup: format!(
            "two reuseport groups of 2 sockets per protocol on loopback, one steered and one with \
             an empty program; {rounds} rounds of {:.1} s per group under {CLIENTS} clients \
             ({} UDP flows), bpf_stats_enabled=1",
            phase.as_secs_f64(),
            CLIENTS * FLOWS_PER_CLIENT
        ),
        rows,
        data,
        failures,
        markdown: None,
    })
}

/// Two sockets of one reuseport group on 127.0.0.1, answered by threads of this process.
struct Group {
    addr: SocketAddr,
    sockets: Vec<OwnedFd>,
}

impl Group {
    fn start(proto: Proto, stop: &Arc<AtomicBool>) -> Result<Group> {
        let first = reuseport_socket(proto, 0)?;
        let addr = local(&first)?;
        let second = reuseport_socket(proto, addr.port())?;
        let sockets = vec![first, second];
        for fd in &sockets {
            let fd = fd.try_clone().context("dup a server socket")?;
            let stop = Arc::clone(stop);
            match proto {
                Proto::Udp => {
                    let socket = UdpSocket::from(fd);
                    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                    thread::spawn(move || {
                        let mut buf = [0_u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                                let _ = socket.send_to(&buf[..n], from);
                            }
                        }
                    });
                }
                Proto::Tcp => {
                    let listener = TcpListener::from(fd);
                    thread::spawn(move || {
                        for stream in listener.incoming() {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            if let Ok(mut s) = stream {
                                let _ = s.write_all(b"k");
                            }
                        }
                    });
                }
            }
        }
        Ok(Group { addr, sockets })
    }
}

/// A socket with SO_REUSEPORT bound to 127.0.0.1:`port` (listening, for TCP).
fn reuseport_socket(proto: Proto, port: u16) -> Result<OwnedFd> {
    let kind = if proto == Proto::Udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    // SAFETY: plain socket(2); owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    };
    // SAFETY: valid option and address buffers of the sizes given.
    let ok = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) == 0
            && (proto == Proto::Udp || libc::listen(fd.as_raw_fd(), 1024) == 0)
    };
    if !ok {
        bail!("binding a reuseport socket: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The address a socket is bound to (getsockname works on either kind).
fn local(fd: &OwnedFd) -> Result<SocketAddr> {
    Ok(UdpSocket::from(fd.try_clone()?).local_addr()?)
}

/// Attaches `prog` to the reuseport group of `socket` (SO_ATTACH_REUSEPORT_EBPF).
fn attach(socket: &OwnedFd, prog: &OwnedFd) -> Result<()> {
    const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: a valid int option.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_EBPF,
            (&raw const fd).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        bail!("SO_ATTACH_REUSEPORT_EBPF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_SK_REUSEPORT` program that returns SK_PASS at once.
fn empty_program() -> Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
    // mov r0, 1 (SK_PASS); exit
    let insns: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0_u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SK_REUSEPORT.to_ne_bytes());
    attr[4..8].copy_from_slice(&2_u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) with a valid attribute buffer that outlives the call.
    let raw = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len()) };
    if raw < 0 {
        bail!("BPF_PROG_LOAD: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(raw)?) })
}

/// `(run_time_ns, run_cnt)` of a program from `/proc/self/fdinfo`.
fn fdinfo_stats(prog: &OwnedFd) -> Result<(u64, u64)> {
    let path = format!("/proc/self/fdinfo/{}", prog.as_raw_fd());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("run_time_ns:")?, field("run_cnt:")?))
}

/// Drives a group for `length`: UDP request/answer on many flows, or TCP connections.
fn drive(proto: Proto, addr: SocketAddr, length: Duration) -> Result<()> {
    let until = Instant::now() + length;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || -> std::io::Result<()> {
                let mut buf = [0_u8; 64];
                if proto == Proto::Udp {
                    let flows = (0..FLOWS_PER_CLIENT)
                        .map(|_| {
                            let s = UdpSocket::bind("127.0.0.1:0")?;
                            s.connect(addr)?;
                            s.set_read_timeout(Some(Duration::from_millis(200)))?;
                            Ok(s)
                        })
                        .collect::<std::io::Result<Vec<_>>>()?;
                    while Instant::now() < until {
                        for s in &flows {
                            s.send(b"q")?;
                            let _ = s.recv(&mut buf);
                        }
                    }
                } else {
                    while Instant::now() < until {
                        let mut s = TcpStream::connect(addr)?;
                        let _ = s.read(&mut buf);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(())
}
