//! The eBPF object built by `build.rs`, embedded in the binary.

/// The compiled `steer-ebpf` object file.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));
