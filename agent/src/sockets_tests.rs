//! Unit tests of `sockets.rs`.
use super::*;

#[test]
fn group_keys_match_what_the_program_reads() {
    let k = group_key("127.0.0.1:8080".parse().unwrap(), 0, IPPROTO_TCP);
    assert_eq!(k.family, AF_INET);
    assert_eq!(k.port, 8080);
    // bpf_sock.src_ip4 holds the bytes 127,0,0,1 in memory order.
    assert_eq!(k.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
    assert_eq!(key_label(&k), "127.0.0.1:8080");
    let k6 = group_key("[2001:db8::1]:443".parse().unwrap(), 3, IPPROTO_TCP);
    assert_eq!(k6.family, AF_INET6);
    assert_eq!(key_addr(&k6), "[2001:db8::1]:443".parse().unwrap());
    assert_eq!(key_label(&k6), "[2001:db8::1]:443%3");
}
