//! Unit tests of `proc.rs`.
use super::*;

#[test]
fn stat_fields_are_read_after_the_last_parenthesis() {
    let stat = "42 (a) b) (c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0";
    assert_eq!(stat_field(stat, 4), Some(7));
    assert_eq!(stat_field(stat, 22), Some(12345));
    assert_eq!(stat_field(stat, 2), None);
    assert_eq!(stat_field("no parenthesis", 4), None);
    assert_eq!(stat_field("1 (x)", 4), None);
}

#[test]
fn start_time_parent_and_children_of_our_own_process() {
    let me = std::process::id();
    let started = start_time(me).expect("own stat");
    assert!(start_time(1).is_some_and(|init| init <= started));
    let expected = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().unsigned_abs());
    assert_eq!(parent(me), expected);
    // A shell whose main thread forks a sleep: the sleep is its child.
    let mut shell =
        std::process::Command::new("sh").args(["-c", "sleep 5 & wait"]).spawn().expect("spawn sh");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let kids = loop {
        let kids = children(shell.id());
        if !kids.is_empty() || std::time::Instant::now() > deadline {
            break kids;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(kids.len(), 1, "{kids:?}");
    assert_eq!(parent(kids[0]), Some(shell.id()));
    assert!(children(u32::MAX).is_empty());
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(kids[0]).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = shell.kill();
    let _ = shell.wait();
}

#[test]
fn socket_links() {
    assert_eq!(parse_socket_link("socket:[4242]"), Some(4242));
    assert_eq!(parse_socket_link("pipe:[4242]"), None);
    assert_eq!(parse_socket_link("socket:[]"), None);
    assert_eq!(parse_socket_link("/dev/null"), None);
}

#[test]
fn missing_pid_is_reported_as_such() {
    let err = Process::open(u32::MAX - 1).unwrap_err();
    assert!(matches!(err, ProcError::NoSuchProcess { .. }), "{err}");
    assert!(err.to_string().contains("no process with pid"));
}

#[test]
fn own_process_is_readable() {
    let me = Process::open(std::process::id()).expect("own /proc entry");
    assert!(me.netns > 0);
    assert!(!me.comm.is_empty());
}

#[test]
fn the_map_id_is_read_from_a_bpf_maps_fdinfo() {
    let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t28\n\
                value_size:\t48\nmax_entries:\t1024\nmap_flags:\t0x1\nmap_extra:\t0x0\nmemlock:\t0\n\
                map_id:\t4711\nfrozen:\t0\n";
    assert_eq!(parse_fdinfo_map_id(text), Some(4711));
    assert_eq!(parse_fdinfo_map_id("pos:\t0\nflags:\t02\n"), None);
    assert_eq!(parse_fdinfo_map_id("map_id:\tx\n"), None);
}
