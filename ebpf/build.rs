//! Rebuild the program when bpf-linker changes (it is part of the toolchain).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
