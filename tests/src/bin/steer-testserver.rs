//! `steer-testserver`: a reuseport TCP server whose reply names its generation; see
//! [`steer_harness::server`] for the protocol.

use std::process::ExitCode;

use clap::Parser as _;
use steer_harness::server::{ServerArgs, run};

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer-testserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
