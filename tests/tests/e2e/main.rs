//! Privileged end-to-end tests of steer: real kernel BPF, real sockets, each test
//! in a fresh network namespace with its own state directory. They prove the eBPF
//! path ran (counters, which generation answered), not just that nothing failed.
//! Without privileges they skip with a printed reason; with `CI=true` they fail.
mod canary;
mod common;
mod containers;
mod daemon;
mod deploy;
mod errors;
mod faults;
mod handover;
mod metrics;
mod privileges;
mod reload;
mod select;
mod servers;
mod steering;
mod udp;
