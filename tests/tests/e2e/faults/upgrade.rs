//! In-place upgrade (fault matrix item 3): a state the previous release wrote
//! (ABI 2, `steer_harness::previous`) is upgraded by this steer's next write
//! command while traffic flows and reloads run. Its maps and sockets are kept
//! (the same pins, so the same maps), every group moves to its own new
//! program, and the old program is freed (no group runs it). A failed upgrade
//! leaves the state exactly as it was, and the older steer still runs it; a
//! killed one is finished by the next command.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use steer_harness::{previous, server::TestServer};

use super::{TARGET, start_load};
use crate::common::{Daemon, World, answered_by, assert_no_failures};

const OTHER: &str = "127.0.0.1:8081";

/// The previous release's steer on this world's state directory.
fn old_steer(w: &World, args: &[&str]) -> Output {
    let bin = previous::abi2_steer().expect("the ABI-2 steer (built by cargo xtask test)");
    let out =
        Command::new(bin).arg("--state-dir").arg(&w.state_dir).args(args).output().expect("run old steer");
    assert!(out.status.success(), "old steer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The one instance directory of the world's state.
fn instance_dir(w: &World) -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&w.state_dir).expect("state dir").flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

/// Every pin of the instance, by name, with its inode: the same inode is the
/// same pinned object.
fn pins(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .expect("instance dir")
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("pin").ino()))
        .collect()
}

/// The first namespace's program id in `status --json` (ABI 2 has one
/// program for every group of a migrating instance).
fn program_id(status: &str) -> u32 {
    let v: serde_json::Value = serde_json::from_str(status).expect("status --json");
    v["namespaces"][0]["program"]["id"].as_u64().expect("a program id") as u32
}

/// Whether the kernel still has program `id` (`BPF_PROG_GET_FD_BY_ID`): an
/// attached program is held by its group, so a freed one runs nowhere.
fn program_exists(id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let mut attr = [0_u32; 4];
    attr[0] = id;
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of the union from `attr`.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr(), size_of_val(&attr) as u32)
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    false
}

fn retire(old: &mut TestServer) {
    std::thread::sleep(Duration::from_millis(30));
    old.pause().expect("pause");
    old.close_listeners().expect("close");
    old.exit().expect("exit");
}

#[test]
fn an_older_steers_state_is_upgraded_in_place_under_load_and_nothing_fails() {
    let Some(w) = World::new("fupgrade") else { return };
    let mut old = w.server("g0", &[TARGET, OTHER]);
    old_steer(&w, &["promote", &old.pid().to_string()]);
    let dir = instance_dir(&w);
    let old_program = program_id(&String::from_utf8_lossy(&old_steer(&w, &["status", "--json"]).stdout));
    let running = start_load(&w, 120);
    let mut kept = BTreeMap::new();
    for i in 1..=12 {
        let new = w.server(&format!("g{i}"), &[TARGET, OTHER]);
        let pid = new.pid().to_string();
        match i {
            1..=3 => {
                old_steer(&w, &["promote", &pid]);
            }
            4 => {
                // A failed upgrade (after one group moved): every pin as it was,
                // and the older steer still runs the state.
                let before = pins(&dir);
                let out = w.steer_env(&["promote", &pid], &[("STEER_FAILPOINT", "upgrade-attached:fail")]);
                assert!(!out.status.success(), "the failed upgrade fails the command");
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("failpoint upgrade-attached"), "{err}");
                assert_eq!(pins(&dir), before, "a failed upgrade leaves the state exactly as it was");
                assert_eq!(
                    program_id(&String::from_utf8_lossy(&old_steer(&w, &["status", "--json"]).stdout)),
                    old_program
                );
                old_steer(&w, &["promote", &pid]);
                kept = before;
            }
            5 => {
                // Killed mid-upgrade (one group moved, no commit): this steer's
                // next command finishes it.
                let out = w.steer_env(&["promote", &pid], &[("STEER_FAILPOINT", "upgrade-attached")]);
                assert!(!out.status.success(), "killed at the failpoint");
                let done = w.promote(&new);
                assert!(done.contains(pid.as_str()), "{done}");
            }
            _ => {
                w.promote(&new);
            }
        }
        retire(&mut old);
        old = new;
    }
    let report = running.stop();
    eprintln!(
        "upgrade from ABI 2 during 12 handovers (a failed and a killed upgrade among them): {} requests, {} failed",
        report.requests,
        report.failed()
    );
    assert_no_failures(&report, "the in-place upgrade");

    // Maps kept: the same pins (inodes) as ABI 2 wrote them.
    let after = pins(&dir);
    for map in ["sockets", "groups", "slots", "group_stats", "slot_stats", "global_stats", "info", "flows"] {
        assert_eq!(after.get(map), kept.get(map), "map {map} kept: {after:?}");
    }
    assert!(after.contains_key("configs") && after.contains_key("current"), "{after:?}");
    assert!(!after.contains_key("prog-upgrade"), "{after:?}");
    assert_ne!(after.get("prog"), kept.get("prog"), "the marker is this steer's program");
    assert_eq!(w.group_programs().len(), 2, "each group runs its own program: {:?}", w.group_programs());
    // The old program runs nowhere: no group holds it any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while program_exists(old_program) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!program_exists(old_program), "the ABI-2 program {old_program} was freed");
    // And the new programs steer both groups, counting into the kept counters.
    let steered_before = w.counters(8080).steered_active;
    for target in [TARGET, OTHER] {
        let r = w.requests(target, 200);
        assert_eq!(answered_by(&r, "g12"), 200, "{target}: {:?}", r.by_generation);
    }
    assert!(w.counters(8080).steered_active >= steered_before + 200, "{:?}", w.counters(8080));
    assert!(steered_before > report.requests / 2, "the counters carried over: {steered_before}");
}

#[test]
fn an_older_select_only_state_is_upgraded_and_keeps_its_mode() {
    let Some(w) = World::new("fupgsel") else { return };
    let a = w.server("a", &[TARGET, OTHER]);
    old_steer(&w, &["promote", "--no-migrate", &a.pid().to_string()]);
    let dir = instance_dir(&w);
    let before = pins(&dir);
    assert_eq!(before.keys().filter(|k| k.starts_with("prog-select-")).count(), 2, "{before:?}");
    let b = w.server("b", &[TARGET, OTHER]);
    w.promote(&b);
    let after = pins(&dir);
    assert_eq!(after.keys().filter(|k| k.starts_with("prog-select-")).count(), 0, "{after:?}");
    assert_eq!(w.group_programs().len(), 2, "{after:?}");
    assert_eq!(w.status().namespaces[0].mode, "select-only");
    for target in [TARGET, OTHER] {
        let r = w.requests(target, 200);
        assert_eq!(answered_by(&r, "b"), 200, "{target}: {:?}", r.by_generation);
    }
    assert!(w.counters(8081).steered_active >= 200);
    // Rollback and a canary after the upgrade: the configuration the new
    // programs read follows every command.
    w.steer_ok(&["rollback", "--port", "8080"]);
    let r = w.requests(TARGET, 200);
    assert_eq!(answered_by(&r, "a"), 200, "rolled back: {:?}", r.by_generation);
    w.steer_ok(&["promote", &b.pid().to_string(), "--port", "8080", "--weight", "50"]);
    let r = w.requests(TARGET, 400);
    assert!(answered_by(&r, "a") > 100 && answered_by(&r, "b") > 100, "a 50 % canary: {:?}", r.by_generation);
    assert_eq!(w.counters(8080).steered_canary, answered_by(&r, "b"), "{:?}", w.counters(8080));
}

#[test]
fn reading_an_older_state_names_the_upgrade() {
    let Some(w) = World::new("fupgread") else { return };
    let a = w.server("a", &[TARGET]);
    old_steer(&w, &["promote", &a.pid().to_string()]);
    let out = w.steer(&["status"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("older steer (ABI version 2)"), "{text}");
    assert!(text.contains("upgrades it in place"), "{text}");
    // Reading changed nothing: the older steer still reads it.
    old_steer(&w, &["status", "--json"]);
}

/// A daemon of the previous release keeps the instance open between its
/// writes: this steer refuses to upgrade under it (the daemon would go on
/// writing only the maps it knows), naming it, and changes nothing; once it
/// stops, the same command upgrades.
#[test]
fn a_running_older_daemon_is_named_and_the_upgrade_waits_for_it_to_stop() {
    let Some(w) = World::new("fupgdmn") else { return };
    let old_bin = previous::abi2_steer().expect("the ABI-2 steer (built by cargo xtask test)");
    let old_bin = old_bin.to_str().expect("utf-8 path").to_owned();
    // `sh -c 'shift; exec OLD "$@"' sh NEW daemon ...`: the older steer, same pid.
    let exec_old = format!("shift; exec {old_bin} \"$@\"");
    let a = w.server("a", &[TARGET]);
    let d = Daemon::spawn_via(&w, &["sh", "-c", &exec_old, "sh"], &["--port", "8080"]);
    d.promoted(&a);
    let dir = instance_dir(&w);
    let before = pins(&dir);
    let b = w.server("b", &[TARGET]);
    let out = w.steer(&["promote", &b.pid().to_string()]);
    assert!(!out.status.success(), "refused while the older daemon holds the state");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {} (steer)", d.pid())) && err.contains("stop it"), "{err}");
    assert_eq!(pins(&dir), before, "a refused upgrade changes nothing");
    // The older daemon goes on: it promotes b itself.
    d.promoted(&b);
    let r = w.requests(TARGET, 200);
    assert_eq!(answered_by(&r, "b"), 200, "the older daemon still steers: {:?}", r.by_generation);
    d.stop();
    let c = w.server("c", &[TARGET]);
    w.promote(&c);
    let r = w.requests(TARGET, 200);
    assert_eq!(answered_by(&r, "c"), 200, "{:?}", r.by_generation);
    assert_eq!(w.group_programs().len(), 1);
}
