//! Canaries: `rollback` during a canary ends it and leaves the active generation
//! as it was; a canary whose process exits yields its share to the active
//! generation, never to the demoted previous one; and a small canary spreads
//! its connections over all of its sockets.
use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    ops::Range,
    time::Duration,
};

use anyhow::Context as _;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use steer::policy::RollbackEffect;
use steer_harness::server::ServerArgs;

use crate::common::{World, addr, answered_by, assert_no_failures};

const TARGET: &str = "127.0.0.1:8080";
const N: u64 = 400;

/// Pids of the sockets with `role` in the group on 8080.
fn pids(w: &World, role: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = w.group(8080).sockets.iter().filter(|s| s.role == role).map(|s| s.pid).collect();
    pids.dedup();
    pids
}

/// `steer status` (text) and `status --json` both say what rollback would do.
fn assert_rollback_says(w: &World, effect: RollbackEffect) {
    assert_eq!(w.group(8080).rollback, effect);
    let text = w.steer_ok(&["status"]);
    assert!(text.contains(&format!("rollback: {}", effect.describe())), "{effect:?}:\n{text}");
}

/// Promote Z, promote A, then B at 25 %: `rollback` ends B's canary and A keeps
/// every new connection (it used to swap to Z: 40 of 40 answers from Z).
#[test]
fn rollback_during_a_canary_ends_it_and_keeps_the_active_generation() {
    let Some(w) = World::new("cnrollback") else { return };
    let z = w.server("z", &[TARGET]);
    let a = w.server("a", &[TARGET]);
    let b = w.server("b", &[TARGET]);
    w.promote(&z);
    w.promote(&a);
    w.steer_ok(&["promote", &b.pid().to_string(), "--weight", "25"]);
    let r = w.requests(TARGET, N);
    assert_no_failures(&r, "with a canary");
    assert!(answered_by(&r, "b") > 0 && answered_by(&r, "z") == 0, "{:?}", r.by_generation);
    assert_rollback_says(&w, RollbackEffect::EndsCanary);

    let out = w.steer_ok(&["rollback"]);
    assert!(
        out.contains(&format!(
            "ended the canary of pid {}; pid {} gets every new connection",
            b.pid(),
            a.pid()
        )),
        "{out}"
    );
    let canary_before = w.counters(8080).steered_canary;
    let r = w.requests(TARGET, N);
    eprintln!("after rollback during a canary: {:?}", r.by_generation);
    assert_no_failures(&r, "after rollback during a canary");
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    assert_eq!((answered_by(&r, "z"), answered_by(&r, "b")), (0, 0), "{:?}", r.by_generation);
    let g = w.group(8080);
    assert_eq!((g.canary_weight, g.counters.steered_canary), (0, canary_before));
    assert_eq!((pids(&w, "active"), pids(&w, "previous")), (vec![a.pid()], vec![z.pid()]));
    assert!(
        g.sockets.iter().all(|s| s.pid != b.pid()),
        "the ended canary left the sockarray: {:?}",
        g.sockets
    );

    // Now an ordinary rollback, back to Z.
    assert_rollback_says(&w, RollbackEffect::RestoresPrevious);
    let out = w.steer_ok(&["rollback"]);
    assert!(out.contains(&format!("rolled back to pid {}", z.pid())), "{out}");
    let r = w.requests(TARGET, N);
    assert_eq!(answered_by(&r, "z"), N, "{:?}", r.by_generation);
}

/// A then B at 25 %, with no generation before A: `rollback` still ends the
/// canary. Then every other state that `status` names: no previous generation
/// (refused), a previous that still listens, and one that is gone (refused).
#[test]
fn rollback_during_a_canary_without_a_previous_generation_ends_it() {
    let Some(w) = World::new("cnnoprev") else { return };
    let mut a = w.server("a", &[TARGET]);
    let b = w.server("b", &[TARGET]);
    w.promote(&a);
    w.steer_ok(&["promote", &b.pid().to_string(), "--weight", "25"]);
    assert_rollback_says(&w, RollbackEffect::EndsCanary);

    let out = w.steer_ok(&["rollback"]);
    assert!(out.contains(&format!("ended the canary of pid {}", b.pid())), "{out}");
    let r = w.requests(TARGET, N);
    eprintln!("after rollback during a canary, no previous: {:?}", r.by_generation);
    assert_no_failures(&r, "after rollback during a canary");
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    assert_eq!(pids(&w, "active"), vec![a.pid()]);

    assert_rollback_says(&w, RollbackEffect::RefusedNoPrevious);
    refused(&w, "has no previous generation to roll back to");

    let c = w.server("c", &[TARGET]);
    w.promote(&c);
    assert_rollback_says(&w, RollbackEffect::RestoresPrevious);
    a.exit().expect("a exits");
    assert_rollback_says(&w, RollbackEffect::RefusedPreviousGone);
    refused(&w, "has no previous generation still listening");
    let r = w.requests(TARGET, N);
    assert_eq!(answered_by(&r, "c"), N, "{:?}", r.by_generation);
}

/// `steer rollback` fails with one sentence that says `needle` once, and
/// changes nothing.
fn refused(w: &World, needle: &str) {
    let before = w.status_json();
    let out = w.steer(&["rollback"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    assert_eq!(stderr.matches(needle).count(), 1, "{needle:?} once: {stderr}");
    assert_eq!(w.status_json(), before, "state changed");
}

/// Z, then A active, B a 25 % canary; B exits. Its share goes to A: none to Z
/// (it used to be the kernel's pick among Z and A: 10 of 40 answers from Z).
#[test]
fn a_dead_canarys_share_goes_to_the_active_generation() {
    let Some(w) = World::new("cndead") else { return };
    let z = w.server("z", &[TARGET]);
    let a = w.server("a", &[TARGET]);
    let mut b = w.server("b", &[TARGET]);
    w.promote(&z);
    w.promote(&a);
    w.steer_ok(&["promote", &b.pid().to_string(), "--weight", "25"]);
    let r = w.requests(TARGET, N);
    assert!(answered_by(&r, "b") > 0, "the canary ran: {:?}", r.by_generation);
    b.exit().expect("the canary exits");
    let before = w.counters(8080);

    let r = w.requests(TARGET, N);
    let after = w.counters(8080);
    let to_active = after.canary_to_active - before.canary_to_active;
    let active = after.steered_active - before.steered_active;
    eprintln!(
        "canary exited: {:?}; {active} steered to the active generation, {to_active} of the canary's share",
        r.by_generation
    );
    assert_no_failures(&r, "after the canary exited");
    assert_eq!(answered_by(&r, "z"), 0, "nothing to the previous generation: {:?}", r.by_generation);
    assert_eq!(answered_by(&r, "a"), N, "{:?}", r.by_generation);
    assert_eq!(active + to_active, N, "every connection was steered: {before:?} -> {after:?}");
    // The canary's share is 25 %: with N = 400 its sd is under 9, so 50..150 is
    // beyond 5 sigma on both sides.
    assert!((50..150).contains(&to_active), "the canary's share went to A: {to_active}");
    assert_eq!(
        (after.fallback_empty_slot, after.helper_error, after.steered_canary),
        (before.fallback_empty_slot, before.helper_error, before.steered_canary),
        "no kernel fallback"
    );
    let g = w.group(8080);
    assert!(g.sockets.iter().any(|s| s.pid == b.pid() && s.role == "canary" && !s.live), "{:?}", g.sockets);
}

/// A 10 % canary with 4 sockets: each socket gets a quarter of the canary's
/// connections, within 5 sigma of the binomial. With the share and the socket
/// taken from the same bits of the hash, they got 30:30:20:20 (%).
///
/// The bound holds for independent draws, that is for distinct 4-tuples: the
/// hash is a function of the 4-tuple (`inet_ehashfn`), and `connect()` steps
/// through the ephemeral ports at random strides, so a load run of 10,000
/// connections reuses thousands of tuples, which was seen to widen the spread
/// past 5 sigma. So each connection here comes from its own address and port:
/// 4 source addresses times 10,000 ports.
#[test]
fn a_small_canary_spreads_over_all_its_sockets() {
    const PORTS: Range<u16> = 10_000..20_000;
    const SOURCES: [Ipv4Addr; 4] = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    ];
    let requests = (SOURCES.len() * PORTS.len()) as u64;
    let Some(w) = World::new("cnspread") else { return };
    let a = w.server("a", &[TARGET]);
    let mut args = ServerArgs::new("b", [addr(TARGET)]);
    args.listeners = 4;
    let b = w.server_with(args);
    w.promote(&a);
    let out = w.steer_ok(&["promote", &b.pid().to_string(), "--weight", "10"]);
    assert!(out.contains("canary at 10%") && out.contains("4 sockets"), "{out}");

    let runs: Vec<_> = SOURCES
        .into_iter()
        .map(|source| w.ns.spawn_in(move || connect_from_each_port(source, PORTS, addr(TARGET))))
        .collect();
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    for run in runs {
        for (generation, n) in run.join().expect("client thread").expect("every connection answered") {
            *answers.entry(generation).or_default() += n;
        }
    }
    assert_eq!(answers.values().sum::<u64>(), requests, "{answers:?}");

    let g = w.group(8080);
    let per_socket: Vec<u64> = g.sockets.iter().filter(|s| s.role == "canary").map(|s| s.selected).collect();
    let canary: u64 = per_socket.iter().sum();
    // Each socket's count, given the canary's: binomial(canary, 1/4), sd about 27;
    // 5 sigma is about 3.4 % of the canary's connections, a 30 % socket is 5 % off.
    let sd_socket = (canary as f64 * 0.25 * 0.75).sqrt();
    let sigmas: Vec<String> =
        per_socket.iter().map(|n| format!("{:+.2}", (*n as f64 - canary as f64 / 4.0) / sd_socket)).collect();
    eprintln!("{requests} connections, canary {canary}, per canary socket {per_socket:?} (sigma {sigmas:?})");
    assert_eq!(per_socket.len(), 4);
    let answered_by_b = answers.get("b").copied().unwrap_or(0);
    assert_eq!((canary, answered_by_b), (g.counters.steered_canary, g.counters.steered_canary));
    // The canary's share: binomial(requests, 0.1), sd 60.
    let sd = (requests as f64 * 0.1 * 0.9).sqrt();
    assert!((canary as f64 - requests as f64 * 0.1).abs() < 5.0 * sd, "canary {canary} of {requests}");
    for n in &per_socket {
        assert!((*n as f64 - canary as f64 / 4.0).abs() < 5.0 * sd_socket, "{per_socket:?} of {canary}");
    }
}

/// One connection to `target` from each port of `ports` on `source`, one after
/// another, each read to EOF: how many each generation answered.
fn connect_from_each_port(
    source: Ipv4Addr,
    ports: Range<u16>,
    target: SocketAddr,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut answers = BTreeMap::new();
    for port in ports {
        let from = SocketAddr::from((source, port));
        let fd =
            rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        rustix::net::bind(&fd, &from).with_context(|| format!("bind {from}"))?;
        rustix::net::connect(&fd, &target).with_context(|| format!("connect from {from}"))?;
        let mut stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).with_context(|| format!("reply to {from}"))?;
        let generation = reply
            .split_whitespace()
            .find_map(|w| w.strip_prefix("gen="))
            .with_context(|| format!("no gen= in the reply to {from}: {reply:?}"))?;
        *answers.entry(generation.to_owned()).or_default() += 1;
    }
    Ok(answers)
}
