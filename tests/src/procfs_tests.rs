//! Unit tests of `procfs.rs`.
use super::{TCP_LISTENING, UDP_BOUND, parse_sockets, parse_stat, parse_tcp_ext};

#[test]
fn stat_parses_comm_with_spaces_and_parentheses() {
    // A real thread's line (a SCHED_FIFO thread at priority 1, niceness -10).
    let text = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 -2 -10 3 0 12345 1000 10 \
                18446744073709551615 1 1 0 0 0 0 0 4096 1 0 0 0 17 1 1 1 0 0 0 0 0 0 0 0 0 0 0";
    let s = parse_stat(text).unwrap();
    assert_eq!((s.comm.as_str(), s.state, s.ppid, s.starttime), ("a (b) c", 'S', 7, 12345));
    assert_eq!((s.nice, s.rt_priority, s.policy), (-10, 1, 1));
    assert!(parse_stat("42 (x) S").is_none());
}

#[test]
fn tcp_ext_counters_are_found_by_name() {
    let text = "TcpExt: SyncookiesSent TCPMigrateReqSuccess TCPMigrateReqFailure\n\
                TcpExt: 0 12 3\nIpExt: InNoRoutes\nIpExt: 0\n";
    assert_eq!(parse_tcp_ext(text, "TCPMigrateReqSuccess"), Some(12));
    assert_eq!(parse_tcp_ext(text, "TCPMigrateReqFailure"), Some(3));
    assert_eq!(parse_tcp_ext(text, "InNoRoutes"), None);
}

#[test]
fn listeners_are_found_by_port_and_state() {
    let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1638840 1 0 100 0 0 10 0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1638841 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 1638842 1 0 100 0 0 10 0
";
    assert_eq!(parse_sockets(text.lines(), 8080, TCP_LISTENING), vec![1_638_840]);
    assert_eq!(parse_sockets(text.lines(), 8081, TCP_LISTENING), vec![1_638_841]);
    assert!(parse_sockets(text.lines(), 80, TCP_LISTENING).is_empty());
    // Reading stops at the first socket that is not listening.
    let late = format!("{text}   3: 0100007F:1F92 00000000:0000 0A 0 0 0 0 0 1638843\n");
    assert!(parse_sockets(late.lines(), 8082, TCP_LISTENING).is_empty());
}

#[test]
fn udp_sockets_are_found_by_local_port_in_any_state() {
    let lines = [
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
        "  120: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0",
        "  121: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0",
        "  122: 0100007F:14E9 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0",
    ];
    assert_eq!(parse_sockets(lines, 5353, UDP_BOUND), vec![4242, 4243]);
    assert_eq!(parse_sockets(lines, 53, UDP_BOUND), vec![77]);
    assert!(parse_sockets(lines, 80, UDP_BOUND).is_empty());
}
