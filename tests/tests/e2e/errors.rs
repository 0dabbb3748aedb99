//! Every bad input: exit status 1 (2 for usage), one sentence saying what to
//! do, and the state exactly as it was (`status --json` before == after).
use std::process::{Command, Output};

use steer_harness::server::ServerArgs;

use crate::common::{World, addr, steer_bin};

/// Runs a refused command and checks its exit code, message, and that the
/// state did not change.
fn refused(w: &World, out: &Output, code: i32, needle: &str, before: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit status; stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr should mention {needle:?}: {stderr}");
    if code == 1 {
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    }
    assert_eq!(w.status_json(), before, "state changed");
}

/// `steer --state-dir DIR ARGS` as user nobody, without capabilities.
fn as_nobody(w: &World, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(steer_bin())
        .arg("--state-dir")
        .arg(&w.state_dir)
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn bad_inputs_are_refused_without_changing_state() {
    let Some(w) = World::new("errors") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let before = w.status_json();
    let pid = a.pid().to_string();

    let out = w.steer(&["promote", "4194303"]);
    refused(&w, &out, 1, "no process with pid 4194303", &before);

    let mut sleeper = w.ns.command("sleep").arg("30").spawn().expect("sleep");
    let out = w.steer(&["promote", &sleeper.id().to_string()]);
    refused(&w, &out, 1, "has no listening TCP socket", &before);
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let out = w.steer(&["promote", &pid, "--port", "9999"]);
    refused(&w, &out, 1, "no listening TCP socket or bound UDP socket on port 9999", &before);
    // Every port named must match, not just one of them.
    let out = w.steer(&["promote", &pid, "--port", "8080", "--port", "9999"]);
    refused(&w, &out, 1, "no listening TCP socket or bound UDP socket on port 9999", &before);

    let mut plain = ServerArgs::new("plain", [addr("127.0.0.1:8090")]);
    plain.no_reuseport = true;
    let plain = w.server_with(plain);
    let out = w.steer(&["promote", &plain.pid().to_string()]);
    refused(&w, &out, 1, "without SO_REUSEPORT", &before);

    let out = w.steer_env(&["promote", &pid], &[("STEER_KERNEL_RELEASE", "5.4.0-150-generic")]);
    refused(&w, &out, 1, "older than 5.6", &before);
    // 5.10 steers in select-only mode, which these migrating groups are not in.
    let out = w.steer_env(&["promote", &pid], &[("STEER_KERNEL_RELEASE", "5.10.0-28-amd64")]);
    refused(&w, &out, 1, "older than 5.14 (no ctx->sk", &before);

    // No privileges: an unprivileged user.
    let out = as_nobody(&w, &["promote", &pid]);
    refused(&w, &out, 1, "CAP_SYS_PTRACE", &before);
    // Reading needs privileges too, and says so rather than calling the state damaged.
    let out = as_nobody(&w, &["status"]);
    refused(&w, &out, 1, "permission denied; run steer as root", &before);

    for args in [vec!["promote"], vec!["promote", "x"], vec!["promote", &pid, "--weight", "0"], vec!["bogus"]]
    {
        let out = w.steer(&args);
        refused(&w, &out, 2, "", &before);
    }

    let out = w.steer(&["rollback"]);
    refused(&w, &out, 1, "has no previous generation", &before);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("previous generation").count(), 1, "the reason is said once: {stderr}");
    let out = w.steer(&["detach", "--port", "9999"]);
    refused(&w, &out, 1, "no steered group on port 9999", &before);
}

#[test]
fn bpffs_that_cannot_be_mounted_is_refused() {
    let Some(w) = World::new("nobpffs") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let dir = std::env::temp_dir().join(format!("steer-nobpffs-{}", std::process::id()));
    // Root without CAP_SYS_ADMIN: steering capabilities, but no mount(2).
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--inh-caps=-sys_admin"])
        .arg(steer_bin())
        .arg("--state-dir")
        .arg(&dir)
        .args(["promote", &a.pid().to_string()])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot mount bpffs"), "{stderr}");
    assert!(!steer::state::is_bpffs(&dir), "nothing was mounted");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(w.status().namespaces.is_empty());
}

#[test]
fn a_full_sockarray_is_refused() {
    let Some(w) = World::new("full") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    let c = w.server("c", &["127.0.0.1:8080"]);
    let env = [("STEER_MAX_SLOTS", "2")];
    for s in [&a, &b] {
        let out = w.steer_env(&["promote", &s.pid().to_string()], &env);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(w.status().namespaces[0].max_slots, 2);
    let before = w.status_json();
    let out = w.steer_env(&["promote", &c.pid().to_string()], &env);
    refused(&w, &out, 1, "sockarray is full", &before);
    // Once the previous generation exits, its slot is reclaimed and c fits.
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let out = w.steer_env(&["promote", &c.pid().to_string()], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "c"), 300);
}

#[test]
fn a_different_abi_version_is_refused() {
    let Some(w) = World::new("abi") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    // Rewrite the pinned info map's ABI version, as an older steer would have left it.
    let ns = w.status().namespaces[0].netns;
    let info = w.state_dir.join(format!("net-{ns}")).join("info");
    let data = aya::maps::MapData::from_pin(&info).expect("open info pin");
    let mut map: aya::maps::Array<_, steer_abi::Info> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).expect("map")).expect("array");
    let mut v = map.get(&0, 0).expect("info");
    v.abi_version += 1;
    map.set(0, v, 0).expect("set info");
    let out = w.steer(&["promote", &a.pid().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ABI version") && stderr.contains("steer detach"), "{stderr}");
}

#[test]
fn a_state_dir_removed_without_detach_is_recovered_and_a_live_one_is_named() {
    let Some(w) = World::new("busy") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let b = w.server("b", &["127.0.0.1:8080"]);
    w.promote(&b);
    // A second, live state directory cannot take b's socket: say so, change nothing.
    let other = w.state_dir.with_extension("other").to_string_lossy().replace('.', "-");
    let other = std::path::PathBuf::from(other);
    let out = crate::common::steer_cmd(&other, &["promote", &b.pid().to_string()]).output().expect("steer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("held by another steer state directory"), "{stderr}");
    let _ = std::fs::remove_dir_all(&other);
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "b"), 300, "the first state still steers");

    // The state directory removed by hand, program still attached: refused
    // with the way out named, then taken over when asked to.
    std::fs::remove_dir_all(&w.state_dir).expect("remove state dir");
    let out = w.steer(&["promote", &b.pid().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--take-over"), "{out:?}");
    w.steer_ok(&["promote", &b.pid().to_string(), "--take-over"]);
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "b"), 300);
    assert_eq!(w.counters(8080).steered_active, 300);
    // A socket no sockarray holds needs no take-over.
    w.promote(&a);
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "a"), 300);
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let Some(w) = World::new("nocolour") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let out = w.steer(&["-v", "promote", &a.pid().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("promote"), "-v logs the promotion: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI escape codes in a pipe: {stderr:?}");
}

#[test]
fn bpffs_is_mounted_only_on_an_empty_directory_and_never_in_a_namespace_of_steers_own() {
    let Some(w) = World::new("bpffsrules") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    let pid = a.pid().to_string();

    // A directory that holds something: not hidden under a mount.
    let full = std::env::temp_dir().join(format!("steer-full-{}", std::process::id()));
    std::fs::create_dir_all(&full).expect("create dir");
    std::fs::write(full.join("keep"), "mine").expect("write file");
    let out = crate::common::steer_cmd(&full, &["promote", &pid]).output().expect("steer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not empty, so steer will not mount bpffs over it"), "{stderr}");
    assert!(!steer::state::is_bpffs(&full), "nothing was mounted");
    assert_eq!(std::fs::read_to_string(full.join("keep")).ok().as_deref(), Some("mine"));
    let _ = std::fs::remove_dir_all(&full);

    // A mount namespace of steer's own without bpffs (as under `ip netns exec`):
    // a bpffs mounted there would vanish with it.
    let script = format!(
        "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf || exit 97; done; exec {} --state-dir /sys/fs/bpf/steer-private-{} promote {pid}",
        steer_bin().display(),
        std::process::id()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mount namespace of its own"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    assert!(w.status().namespaces.is_empty(), "no state anywhere");
}

/// Every bad input of the table: its exit status, a sentence that says what
/// to do, and no change to the state.
#[test]
fn bad_input_table() {
    let Some(w) = World::new("badtable") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let before = w.status_json();
    let pid = a.pid().to_string();
    // A zombie: a child that exited and was not waited for.
    let zombie = w.ns.command("sh").args(["-c", "exit 0"]).spawn().expect("spawn sh");
    let zombie_pid = zombie.id().to_string();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["promote", "0"], 1, "no process with pid 0"),
        (vec!["promote", "-5"], 2, ""),
        (vec!["promote", "99999999999"], 2, ""),
        (vec!["promote", "4194304"], 1, "no process with pid 4194304"),
        (vec!["promote", "abc"], 2, ""),
        (vec!["promote", "2"], 1, "has no listening TCP socket"),
        (vec!["promote", &zombie_pid], 1, "no process with pid"),
        (vec!["promote", &pid, "--port", "0"], 2, ""),
        (vec!["promote", &pid, "--port", "65536"], 2, ""),
        (vec!["promote", &pid, "--weight", "0"], 2, ""),
        (vec!["promote", &pid, "--weight", "101"], 2, ""),
        (vec!["daemon", "--comm", "a-name-of-16-byt"], 2, "15"),
        (vec!["daemon", "--port", "8080", "--ready-delay", "18446744073709551615"], 2, ""),
        (vec!["daemon", "--port", "8080", "--poll-interval", "18446744073709551615"], 2, ""),
        (
            vec!["daemon", "--port", "8080", "--any-process", "--netns", "/etc/hostname"],
            1,
            "is not a network namespace",
        ),
        (
            vec!["daemon", "--port", "8080", "--any-process", "--netns", "/nonexistent"],
            1,
            "cannot read network namespace",
        ),
    ];
    for (args, code, needle) in cases {
        let out = w.steer(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should say {needle:?}: {stderr}");
        if code == 1 {
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one sentence: {stderr}");
        }
        assert_eq!(w.status_json(), before, "{args:?} changed the state");
    }
    let mut zombie = zombie;
    let _ = zombie.wait();
}

#[test]
fn a_held_lock_is_waited_for_a_bounded_time_and_its_holder_named() {
    let Some(w) = World::new("locked") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    let before = w.status_json();
    // Another writer that holds the lock and does not let go (a stopped steer).
    let mut holder =
        Command::new("flock").arg("-o").arg(&w.state_dir).args(["sleep", "30"]).spawn().expect("spawn flock");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let out = w.steer_env(&["promote", &a.pid().to_string()], &[("STEER_LOCK_WAIT_MS", "500")]);
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("(pid {}) has held the lock", holder.id())), "{stderr}");
    assert!(took < std::time::Duration::from_secs(3), "bounded: {took:?}");
    assert_eq!(w.status_json(), before);
    // Free again: the same command works.
    w.steer_ok(&["promote", &a.pid().to_string()]);
}

#[test]
fn take_over_works_for_a_server_on_two_ports_and_a_refused_promote_leaves_no_state() {
    let Some(w) = World::new("takeover2") else { return };
    let a = w.server_with(ServerArgs::new("a", [addr("127.0.0.1:8080"), addr("127.0.0.1:8081")]));
    let pid = a.pid().to_string();
    // Promoted in a state directory that is then removed without detach: its
    // program stays attached to both groups, holding its map and the sockets.
    let gone = std::path::PathBuf::from(w.state_dir.to_string_lossy().replace("steer-test-", "steer-gone-"));
    let out = crate::common::steer_cmd(&gone, &["promote", &pid]).output().expect("steer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&gone).expect("remove the first state directory");

    // Refused without --take-over, and nothing is left behind.
    let before = w.status_json();
    let out = w.steer(&["promote", &pid]);
    refused(&w, &out, 1, "--take-over", &before);
    assert!(w.status().namespaces.is_empty(), "a refused promote created no instance");

    // With it, both groups are taken over at once.
    let out = w.steer_ok(&["promote", &pid, "--take-over"]);
    assert!(out.contains("127.0.0.1:8080") && out.contains("127.0.0.1:8081"), "{out}");
    for target in ["127.0.0.1:8080", "127.0.0.1:8081"] {
        let r = w.requests(target, 200);
        assert_eq!(crate::common::answered_by(&r, "a"), 200, "{target}");
    }
    let c = w.status().namespaces[0].counters.clone();
    assert!(c.steered_active >= 400, "this state's program steers both groups: {c:?}");
}

#[test]
fn one_group_one_owner_a_second_state_does_not_take_a_group_over_silently() {
    let Some(w) = World::new("oneowner") else { return };
    let a = w.server("a", &["127.0.0.1:8080"]);
    w.promote(&a);
    // b is new: no sockarray holds its socket, but the group is the first state's.
    let b = w.server("b", &["127.0.0.1:8080"]);
    let second =
        std::path::PathBuf::from(w.state_dir.to_string_lossy().replace("steer-test-", "steer-second-"));
    let second_status = || {
        let out = crate::common::steer_cmd(&second, &["status", "--json"]).output().expect("steer");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = second_status();
    let out = crate::common::steer_cmd(&second, &["promote", &b.pid().to_string()]).output().expect("steer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is steered by another steer state directory") && stderr.contains("--take-over"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(second_status(), before, "the refused promote left no state in the second directory");
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "a"), 300, "routing did not change");
    // With --take-over the second state steers the group.
    let out = crate::common::steer_cmd(&second, &["promote", &b.pid().to_string(), "--take-over"])
        .output()
        .expect("steer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = w.requests("127.0.0.1:8080", 300);
    assert_eq!(crate::common::answered_by(&r, "b"), 300);
    let _ = crate::common::steer_cmd(&second, &["detach"]).output();
    let _ = std::fs::remove_dir_all(&second);
}
