//! `steer-udpserver`: a reuseport UDP server whose answers name its generation; see
//! [`steer_harness::udp_server`] for the protocol.

use std::process::ExitCode;

use clap::Parser as _;
use steer_harness::udp_server::{UdpServerArgs, run};

fn main() -> ExitCode {
    let args = UdpServerArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer-udpserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
