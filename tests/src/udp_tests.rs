//! Unit tests of `udp.rs`.
use super::parse_answer;

#[test]
fn an_answer_names_its_generation_only_for_its_own_datagram() {
    assert_eq!(parse_answer("gen=g1 pid=42 7", 7).as_deref(), Some("g1"));
    assert_eq!(parse_answer("gen=g1 pid=42 6", 7), None);
    assert_eq!(parse_answer("g1 42 7", 7), None);
}
