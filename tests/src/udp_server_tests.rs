//! Unit tests of `udp_server.rs`.
use clap::Parser as _;

use super::UdpServerArgs;

#[test]
fn args_round_trip_through_the_command_line() {
    let mut args = UdpServerArgs::new("b2", "[::1]:5300".parse().unwrap());
    args.sockets = 3;
    let argv = std::iter::once("steer-udpserver".to_owned()).chain(args.to_args());
    assert_eq!(UdpServerArgs::try_parse_from(argv).unwrap(), args);
}

#[test]
fn zero_sockets_is_a_usage_error() {
    let argv = ["x", "--listen", "127.0.0.1:1", "--gen", "a", "--sockets", "0"];
    assert!(UdpServerArgs::try_parse_from(argv).is_err());
}
