//! The eBPF objects built by `build.rs`, embedded in the binary.

/// The reuseport program and its maps (`steer-ebpf`'s `steer` binary).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));

/// The listener watcher the daemon loads (`steer-ebpf`'s `steer-watch` binary).
pub static WATCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-watch"));
