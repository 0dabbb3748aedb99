//! A promote killed (`kill -9`, through the test build's failpoints) at every
//! step between its map writes, and a server that exits while a promote looks
//! at it: under load with reloads running, no request fails, and the next
//! command leaves one consistent generation and no leaked slot.
use std::{
    os::unix::process::ExitStatusExt as _,
    process::Output,
    time::{Duration, Instant},
};

use steer::failpoint;
use steer_harness::server::{ServerArgs, TestServer};

use super::{TARGET, start_load};
use crate::common::{World, addr, answered_by, assert_no_failures};

/// `steer promote PID` with `STEER_FAILPOINT=point`.
fn promote_at(w: &World, server: &TestServer, point: &str) -> Output {
    w.steer_env(&["promote", &server.pid().to_string()], &[(failpoint::ENV, point)])
}

/// Asserts that the promote was killed by SIGKILL at its failpoint.
fn assert_killed(out: &Output, point: &str) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the promote was not killed at {point} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server with two listeners in the group, so that a promote can die with
/// one of them in the sockarray and the other not.
fn server(w: &World, generation: &str) -> TestServer {
    let mut args = ServerArgs::new(generation, [addr(TARGET)]);
    args.listeners = 2;
    w.server_with(args)
}

/// The state is consistent: `status` reads, one generation is active, and every
/// used slot belongs to a configuration (active or previous).
fn assert_consistent(w: &World, active: &TestServer, what: &str) {
    let g = w.group(8080);
    let pids: Vec<u32> = g.sockets.iter().filter(|s| s.role == "active").map(|s| s.pid).collect();
    assert!(pids.iter().all(|p| *p == active.pid()) && pids.len() == 2, "{what}: {g:?}");
    assert!(g.sockets.iter().all(|s| s.role != "unreferenced"), "{what}: a slot leaked: {g:?}");
    assert!(g.sockets.len() <= 4, "{what}: active and previous only: {g:?}");
}

#[test]
fn a_promote_killed_at_every_step_is_repaired_by_the_next_and_nothing_fails() {
    let Some(w) = World::new("hffailpt") else { return };
    // Each generation: the failpoints its promotes die at, one attempt each,
    // before a last promote that must repair what they left.
    let plan: [(&str, &[&str]); 7] = [
        ("g0", &[failpoint::CREATE_PINNED, failpoint::PROMOTE_CONFIGURED]),
        ("g1", &[failpoint::SLOT_RECORDED]),
        ("g2", &[failpoint::SLOT_FILLED, failpoint::PROMOTE_STALE_FREED]),
        ("g3", &[failpoint::PROMOTE_FILLED]),
        ("g4", &[failpoint::PROMOTE_CONFIGURED]),
        ("g5", &[failpoint::PROMOTE_ATTACHED]),
        ("g6", &[failpoint::PROMOTE_DUPLICATED, failpoint::PROMOTE_DISCOVERED]),
    ];
    let mut old: Option<TestServer> = None;
    let mut running = None;
    let mut killed = 0;
    for (generation, points) in plan {
        let new = server(&w, generation);
        for point in points {
            assert_killed(&promote_at(&w, &new, point), point);
            killed += 1;
            // A reader still reads what the killed writer left.
            let _ = w.status();
        }
        w.promote(&new);
        assert_consistent(&w, &new, &format!("after the repair of {generation}"));
        // The load starts once g0 steers (before, the port had no listener yet).
        running.get_or_insert_with(|| start_load(&w, 120));
        std::thread::sleep(Duration::from_millis(200));
        if let Some(mut old) = old.take() {
            old.pause().expect("pause");
            old.close_listeners().expect("close");
            old.exit().expect("exit");
        }
        old = Some(new);
    }
    // The active generation grows (its second listener opens after its
    // promotion): its sockets move, through an interim configuration.
    let grown = growing(&w, "g7");
    assert_killed(&promote_at(&w, &grown, failpoint::PROMOTE_INTERIM), failpoint::PROMOTE_INTERIM);
    killed += 1;
    w.promote(&grown);
    assert_consistent(&w, &grown, "after the repair of the grown generation");
    std::thread::sleep(Duration::from_millis(200));
    if let Some(mut old) = old.take() {
        old.pause().expect("pause");
        old.close_listeners().expect("close");
        old.exit().expect("exit");
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = running.expect("load started").stop();
    eprintln!(
        "{killed} promotes killed at their failpoints: {} requests, {} failed",
        report.requests,
        report.failed()
    );
    assert_no_failures(&report, "promotes killed mid-way");
    assert_consistent(&w, &grown, "at the end");
    let c = w.counters(8080);
    assert!(c.steered_active > report.requests / 2, "the program steered: {c:?}");
    assert_eq!(c.helper_error, 0, "{c:?}");
    let r = w.requests(TARGET, 300);
    assert_eq!(answered_by(&r, "g7"), 300);
}

/// A generation promoted when its first listener opens, its second opening
/// 1.5 s later; returned once both listen.
fn growing(w: &World, generation: &str) -> TestServer {
    let mut args = ServerArgs::new(generation, [addr(TARGET)]);
    args.listeners = 2;
    args.listen_gap_ms = 1500;
    std::thread::scope(|s| {
        let spawned = s.spawn(|| w.server_with(args));
        let needle = format!("--gen\0{generation}\0");
        let deadline = Instant::now() + Duration::from_secs(10);
        let promoted = loop {
            assert!(Instant::now() < deadline, "{generation} never listened");
            let pid = std::fs::read_dir("/proc").expect("/proc").flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
            });
            if let Some(pid) = pid
                && w.steer(&["promote", &pid.to_string()]).status.success()
            {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let server = spawned.join().expect("spawn the growing server");
        assert_eq!(server.pid(), promoted);
        let listening = w.group(8080).sockets.iter().filter(|s| s.pid == promoted).count();
        assert_eq!(listening, 1, "promoted with one listener of two");
        server
    })
}

/// The group's sockets as (slot, pid, fd, role), and its configuration generation.
fn sockets(w: &World) -> (Vec<(u32, u32, u32, String)>, u64) {
    let g = w.group(8080);
    (g.sockets.iter().map(|s| (s.slot, s.pid, s.fd, s.role.to_string())).collect(), g.generation)
}

/// Waits until `pid` is stopped (state `T` in `/proc/PID/stat`).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')) {
            return;
        }
        assert!(Instant::now() < deadline, "steer never reached its failpoint: {stat}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_server_exiting_mid_promote_fails_the_promote_cleanly_or_is_promoted_whole() {
    let Some(w) = World::new("hfexit") else { return };
    let mut old = server(&w, "a");
    w.promote(&old);
    let running = start_load(&w, 60);
    let mut outcomes = Vec::new();
    for (i, point) in [failpoint::PROMOTE_DISCOVERED, failpoint::PROMOTE_DUPLICATED].into_iter().enumerate() {
        let before = sockets(&w);
        let mut doomed = server(&w, &format!("x{i}"));
        // The promote stops itself between discovery and the map writes ...
        let child = crate::common::steer_cmd(&w.state_dir, &["promote", &doomed.pid().to_string()])
            .env(failpoint::ENV, format!("{point}:stop"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn steer promote");
        wait_stopped(child.id());
        // ... the server exits meanwhile (its queue migrates to the active one) ...
        doomed.pause().expect("pause");
        doomed.close_listeners().expect("close");
        doomed.exit().expect("exit");
        // ... and the promote goes on.
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
        let out = child.wait_with_output().expect("wait steer promote");
        // Without the failpoint's own line.
        let stderr: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("steer: failpoint "))
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("{point}: {} {}", out.status, stderr.trim());
        assert!(
            !out.status.success(),
            "a promote of an exited server succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let sentence = stderr.trim().trim_start_matches("steer: ");
        assert!(!sentence.contains('\n'), "one sentence: {stderr}");
        assert!(sentence.contains(&doomed.pid().to_string()), "names the pid: {stderr}");
        assert_eq!(sockets(&w), before, "{point}: the refused promote changed the state");
        outcomes.push(sentence.to_owned());
    }
    // The next generation is promoted as usual.
    let next = server(&w, "b");
    w.promote(&next);
    std::thread::sleep(Duration::from_millis(200));
    old.pause().expect("pause");
    old.close_listeners().expect("close");
    old.exit().expect("exit");
    std::thread::sleep(Duration::from_millis(300));
    let report = running.stop();
    assert_no_failures(&report, "servers exiting mid-promote");
    assert!(report.requests > 100, "the load ran: {report:?}");
    assert_consistent(&w, &next, "after the next promote");
    let r = w.requests(TARGET, 300);
    assert_eq!(answered_by(&r, "b"), 300, "{outcomes:?}");
}
