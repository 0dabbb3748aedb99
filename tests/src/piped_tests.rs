//! Unit tests of `piped.rs`.
use super::parse_ready;

#[test]
fn ready_line_gives_the_pid() {
    assert_eq!(parse_ready("ready pid=4242 gen=a").unwrap(), 4242);
    assert!(parse_ready("ready gen=a").is_err());
}
