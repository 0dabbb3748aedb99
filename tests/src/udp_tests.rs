//! Unit tests of `udp.rs`.
use super::{parse_answer, parse_bound};

#[test]
fn bound_sockets_are_found_by_local_port() {
    let lines = [
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
        "  120: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0",
        "  121: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0",
        "  122: 0100007F:14E9 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 0",
    ];
    assert_eq!(parse_bound(lines, 5353), vec![4242, 4243]);
    assert_eq!(parse_bound(lines, 53), vec![77]);
    assert!(parse_bound(lines, 80).is_empty());
}

#[test]
fn an_answer_names_its_generation_only_for_its_own_datagram() {
    assert_eq!(parse_answer("gen=g1 pid=42 7", 7).as_deref(), Some("g1"));
    assert_eq!(parse_answer("gen=g1 pid=42 6", 7), None);
    assert_eq!(parse_answer("g1 42 7", 7), None);
}
