//! The VMs' root filesystem: an uncompressed cpio archive ("newc", the format the kernel
//! unpacks, Documentation/driver-api/early-userspace/buffer-format.rst) written here, so
//! no `cpio` program is needed.
//!
//! It holds busybox, the static `steer`, `steer-testserver` and `steer-load`, the
//! sock_diag modules of the kernel it is for, `init.sh` as `/init` and `smoke.sh`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::fetch::{BUSYBOX, Fetched};

const DIR: u32 = 0o040_755;
const EXEC: u32 = 0o100_755;
const FILE: u32 = 0o100_644;
const CHAR: u32 = 0o020_600;

/// Writes the initramfs for `kernel` next to its download; returns its path.
pub fn build(kernel: &Fetched, bins: &[PathBuf], init: &str, smoke: &str) -> Result<PathBuf> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    // The console init's output goes to, before devtmpfs is mounted.
    cpio.node("dev/console", CHAR, (5, 1));
    cpio.file("bin/busybox", EXEC, &read(Path::new(BUSYBOX))?);
    for bin in bins {
        let name = bin.file_name().context("a binary without a name")?.to_string_lossy();
        cpio.file(&format!("bin/{name}"), EXEC, &read(bin)?);
    }
    for (i, module) in kernel.modules.iter().enumerate() {
        let name = module.file_name().context("a module without a name")?.to_string_lossy();
        cpio.file(&format!("lib/modules/{i:02}-{name}"), FILE, &read(module)?);
    }
    cpio.file("init", EXEC, init.as_bytes());
    cpio.file("smoke.sh", FILE, smoke.as_bytes());
    let out = kernel.home.join(format!("initramfs-{}.cpio", kernel.release));
    std::fs::write(&out, cpio.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A newc archive being written.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, DIR, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, (0, 0), data);
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    /// One header, the name and the data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let size = u32::try_from(data.len()).expect("initramfs files stay under 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short names");
        let nlink = if mode & 0o170_000 == DIR & 0o170_000 { 2 } else { 1 };
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
#[path = "initramfs_tests.rs"]
mod tests;
