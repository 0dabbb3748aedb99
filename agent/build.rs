//! Builds the eBPF program (crate `steer-ebpf`) with the nightly toolchain and
//! bpf-linker; `src/program.rs` embeds the result with `include_bytes_aligned!`.
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = PathBuf::from(manifest_dir).join("..").join("ebpf");
    let root = root.canonicalize().context("locate ebpf/")?;
    let root = root.to_str().context("ebpf/ path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package { name: "steer-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::default(),
    )
}
