//! Unit tests of `server.rs`.
use clap::Parser as _;

use super::ServerArgs;

#[test]
fn args_round_trip_through_the_command_line() {
    let mut args = ServerArgs::new("b2", ["127.0.0.1:8080".parse().unwrap(), "[::1]:8080".parse().unwrap()]);
    args.listeners = 4;
    args.backlog = 16;
    args.http = true;
    args.paused = true;
    args.accept_delay_ms = 20;
    let argv = std::iter::once("steer-testserver".to_owned()).chain(args.to_args());
    assert_eq!(ServerArgs::try_parse_from(argv).unwrap(), args);
}

#[test]
fn defaults_match_new() {
    let argv = ["steer-testserver", "--listen", "127.0.0.1:1", "--gen", "a"];
    let parsed = ServerArgs::try_parse_from(argv).unwrap();
    assert_eq!(parsed, ServerArgs::new("a", ["127.0.0.1:1".parse().unwrap()]));
}

#[test]
fn zero_listeners_is_a_usage_error() {
    let argv = ["x", "--listen", "127.0.0.1:1", "--gen", "a", "--listeners", "0"];
    assert!(ServerArgs::try_parse_from(argv).is_err());
}
