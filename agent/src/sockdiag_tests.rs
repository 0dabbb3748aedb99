//! Fixture tests for the sock_diag and `/proc/net/tcp` parsers.
use super::*;

/// Builds one netlink message carrying an `inet_diag_msg`.
fn diag_message(
    family: u8,
    state: u8,
    port: u16,
    addr: &[u8],
    queue: u32,
    backlog: u32,
    inode: u32,
) -> Vec<u8> {
    let mut body = vec![0_u8; DIAG_MSG_LEN];
    body[0] = family;
    body[1] = state;
    body[4..6].copy_from_slice(&port.to_be_bytes());
    body[8..8 + addr.len()].copy_from_slice(addr);
    body[44..48].copy_from_slice(&0xdead_beef_u32.to_ne_bytes());
    body[48..52].copy_from_slice(&1_u32.to_ne_bytes());
    body[56..60].copy_from_slice(&queue.to_ne_bytes());
    body[60..64].copy_from_slice(&backlog.to_ne_bytes());
    body[64..68].copy_from_slice(&998_u32.to_ne_bytes());
    body[68..72].copy_from_slice(&inode.to_ne_bytes());
    let mut msg = Vec::new();
    msg.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&[0; 10]);
    msg.extend_from_slice(&body);
    msg
}

fn done() -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&20_u32.to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&[0; 14]);
    msg
}

#[test]
fn parses_ipv4_and_ipv6_listeners() {
    let mut buf = diag_message(2, TCP_LISTEN, 8080, &[127, 0, 0, 1], 3, 1024, 777);
    let mut v6 = [0_u8; 16];
    v6[15] = 1;
    buf.extend(diag_message(10, TCP_LISTEN, 443, &v6, 0, 511, 778));
    buf.extend(done());
    let mut out = Vec::new();
    assert!(parse_dump(&buf, &mut out).unwrap());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(out[0].accept_queue, 3);
    assert_eq!(out[0].backlog, Some(1024));
    assert_eq!(out[0].uid, Some(998));
    assert_eq!(out[0].inode, 777);
    assert_eq!(out[0].cookie, Some((1_u64 << 32) | 0xdead_beef));
    assert_eq!(out[1].addr, "[::1]:443".parse().unwrap());
}

#[test]
fn skips_sockets_that_are_not_listening() {
    let buf = diag_message(2, 1, 8080, &[127, 0, 0, 1], 0, 0, 1);
    let mut out = Vec::new();
    assert!(!parse_dump(&buf, &mut out).unwrap());
    assert!(out.is_empty());
}

#[test]
fn reports_netlink_errors_and_garbage() {
    let mut err = Vec::new();
    err.extend_from_slice(&36_u32.to_ne_bytes());
    err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    err.extend_from_slice(&[0; 10]);
    err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
    err.extend_from_slice(&[0; 16]);
    assert!(matches!(parse_dump(&err, &mut Vec::new()), Err(DiagError::Netlink(_))));
    let mut bad = done();
    bad[0] = 200;
    assert!(matches!(parse_dump(&bad, &mut Vec::new()), Err(DiagError::Malformed(_))));
}

#[test]
fn parses_proc_net_tcp() {
    let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
    let l = parse_proc_line(v4).unwrap();
    assert_eq!(l.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(l.accept_queue, 5);
    assert_eq!(l.inode, 123_456);
    assert_eq!(l.cookie, None);
    let established =
        "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 123457 1";
    assert!(parse_proc_line(established).is_none());
    let v6 = "   0: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 42 1 0000000000000000 100 0 0 10 0";
    let l = parse_proc_line(v6).unwrap();
    assert_eq!(l.addr, "[::1]:443".parse().unwrap());
    assert_eq!(l.uid, Some(998));
    assert!(parse_proc_line("  sl  local_address rem_address   st").is_none());
}

#[test]
fn parses_pending_handshakes_and_skips_other_states() {
    let mut msg = [0_u8; DIAG_MSG_LEN];
    msg[0] = libc::AF_INET as u8;
    msg[1] = TCP_SYN_RECV;
    msg[4..6].copy_from_slice(&8080_u16.to_be_bytes());
    msg[6..8].copy_from_slice(&40000_u16.to_be_bytes());
    msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
    msg[24..28].copy_from_slice(&[127, 0, 0, 2]);
    let h = parse_handshake(&msg).unwrap().expect("a handshake");
    assert_eq!(h.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(h.remote, "127.0.0.2:40000".parse().unwrap());
    msg[1] = TCP_LISTEN;
    assert_eq!(parse_handshake(&msg).unwrap(), None);
    assert!(parse_handshake(&msg[..10]).is_err());
}

/// Found by the `sock_diag` fuzz target: an NLMSG_ERROR whose code is
/// `i32::MIN` overflowed when negated into an errno.
#[test]
fn an_error_code_that_is_no_errno_is_malformed() {
    let error = |code: i32| {
        let mut msg = Vec::new();
        msg.extend_from_slice(&20_u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&code.to_ne_bytes());
        parse_dump(&msg, &mut Vec::new())
    };
    assert!(matches!(error(i32::MIN), Err(DiagError::Malformed("bad error code"))));
    assert!(matches!(error(5), Err(DiagError::Malformed("bad error code"))));
    assert!(
        matches!(error(-libc::EPERM), Err(DiagError::Netlink(e)) if e.raw_os_error() == Some(libc::EPERM))
    );
    assert!(matches!(error(0), Ok(false)));
}
