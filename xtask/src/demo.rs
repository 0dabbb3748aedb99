//! `cargo xtask demo`: a scripted reload under load, with and without steer (to be written).

use std::process::ExitCode;

/// Runs the demo; not written yet, so it says so and fails.
pub fn run() -> anyhow::Result<ExitCode> {
    eprintln!("demo: not implemented yet");
    Ok(ExitCode::FAILURE)
}
