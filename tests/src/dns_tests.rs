//! Unit tests of `dns.rs`.
use super::{parse_txt_answer, txt_query};

#[test]
fn a_txt_query_encodes_the_name_in_labels() {
    let q = txt_query(0x1234, "gen.steer.test.").unwrap();
    assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
    assert_eq!(&q[12..], b"\x03gen\x05steer\x04test\x00\x00\x10\x00\x01");
    assert!(txt_query(1, "a..b").is_err());
}

#[test]
fn the_txt_string_is_read_through_a_compressed_name() {
    let mut msg = txt_query(7, "gen.steer.test").unwrap();
    msg[2] = 0x85; // an authoritative answer
    msg[3] = 0x80;
    msg[7] = 1; // one answer
    // Name: a pointer to the question's; TXT IN, TTL 0, rdata "\x02g3".
    msg.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 0, 0, 3, 2, b'g', b'3']);
    assert_eq!(parse_txt_answer(7, &msg).unwrap(), "g3");
    assert!(parse_txt_answer(8, &msg).is_err(), "another query's id");
    msg[3] = 0x85; // REFUSED
    assert!(parse_txt_answer(7, &msg).is_err());
}
