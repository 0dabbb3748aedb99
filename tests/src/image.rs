//! Building the two local images, for `cargo xtask image` and the container tests alike:
//! `steer:dev` (a static `steer` in `FROM scratch`, `deploy/Dockerfile`) and
//! `steer-haproxy:dev` (the host's HAProxy with the libraries it links,
//! `deploy/image/haproxy/Dockerfile`). No base image is pulled: both build where no
//! registry can be reached.
//!
//! Each build context lives under `target/image/context/`; files are copied only when
//! their content changed, so Docker's layer cache keeps an image whose inputs did not
//! change, and the report says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};

/// The steer agent's image.
pub const STEER_IMAGE: &str = "steer:dev";
/// HAProxy for the container tests.
pub const HAPROXY_IMAGE: &str = "steer-haproxy:dev";
/// The steer image's Dockerfile, relative to the workspace root.
pub const STEER_DOCKERFILE: &str = "deploy/Dockerfile";
/// The HAProxy image's directory (Dockerfile and haproxy.cfg), relative to the root.
pub const HAPROXY_DIR: &str = "deploy/image/haproxy";
/// The target directory of the static build, so the host build is not invalidated.
const TARGET_DIR: &str = "target/image";
/// Host programs the HAProxy image carries, with their libraries.
const HAPROXY_PROGRAMS: &[&str] = &["/usr/sbin/haproxy", "/usr/bin/sleep"];

/// What building an image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub tag: &'static str,
    pub id: String,
    /// False when the image id did not change (every layer came from the cache).
    pub changed: bool,
}

impl std::fmt::Display for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.changed { "built" } else { "up to date" };
        write!(f, "{}: {what} ({})", self.tag, self.id)
    }
}

/// Every Dockerfile the project has, relative to the workspace root.
#[must_use]
pub fn dockerfiles() -> Vec<&'static str> {
    vec![STEER_DOCKERFILE, "deploy/image/haproxy/Dockerfile"]
}

/// Builds both images from the workspace at `root`; `say` receives one line per step.
///
/// # Errors
///
/// When cargo, ldd or docker fails, or the `steer` binary is not static.
pub fn build_all(root: &Path, say: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Built>> {
    let steer = build_steer(root, say)?;
    let haproxy = build_haproxy(root, say)?;
    Ok(vec![steer, haproxy])
}

/// `cargo build --release -p steer` for the host's triple with `+crt-static`, checked to
/// be static, then `docker build` of `deploy/Dockerfile`.
///
/// # Errors
///
/// As [`build_all`].
pub fn build_steer(root: &Path, say: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let binaries = build_static(root, &[("steer", "steer")], say)?;
    let context = root.join(TARGET_DIR).join("context/steer");
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    copy_if_changed(&binaries[0], &context.join("steer"))?;
    docker_build(STEER_IMAGE, &root.join(STEER_DOCKERFILE), &context, say)
}

/// Builds each `(package, binary)` of `bins` with `cargo build --release` for the host's
/// triple with `+crt-static`, in `target/image` so the host build is not invalidated;
/// checks that each is static and returns their paths, in order. `cargo xtask kernels`
/// puts them in its VMs' initramfs.
///
/// # Errors
///
/// When cargo fails or a binary is not static.
pub fn build_static(
    root: &Path,
    bins: &[(&str, &str)],
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<PathBuf>> {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let flags_var = format!("CARGO_TARGET_{}_RUSTFLAGS", triple.to_uppercase().replace('-', "_"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .env(&flags_var, "-C target-feature=+crt-static")
        // Either would replace the target's flags.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--quiet", "--release"]);
    for (package, bin) in bins {
        build.args(["-p", package, "--bin", bin]);
    }
    build.args(["--target", &triple, "--target-dir", TARGET_DIR]).stdin(Stdio::null());
    let names: Vec<&str> = bins.iter().map(|(_, bin)| *bin).collect();
    say(&format!(
        "static {}: cargo build --release --target {triple} --target-dir {TARGET_DIR}",
        names.join(", ")
    ));
    run(&mut build)?;
    let release = root.join(TARGET_DIR).join(&triple).join("release");
    let mut paths = Vec::new();
    for name in names {
        let binary = release.join(name);
        ensure_static(&binary)?;
        say(&format!("static {name}: {} has no program interpreter (static)", binary.display()));
        paths.push(binary);
    }
    Ok(paths)
}

/// Copies HAProxy, `sleep` and their libraries (from `ldd`) into a root filesystem, adds
/// the config, then `docker build` of `deploy/image/haproxy/Dockerfile`.
///
/// # Errors
///
/// As [`build_all`].
pub fn build_haproxy(root: &Path, say: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let context = root.join(TARGET_DIR).join("context/haproxy");
    let rootfs = context.join("rootfs");
    let mut files = BTreeSet::new();
    for program in HAPROXY_PROGRAMS {
        files.insert(PathBuf::from(program));
        files.extend(libraries(Path::new(program))?);
    }
    let mut copied = 0;
    for file in &files {
        let inside = rootfs.join(file.strip_prefix("/").unwrap_or(file));
        copied += usize::from(copy_if_changed(file, &inside)?);
    }
    let dir = root.join(HAPROXY_DIR);
    copied += usize::from(copy_if_changed(&dir.join("haproxy.cfg"), &context.join("haproxy.cfg"))?);
    say(&format!(
        "haproxy root filesystem: {} files ({} programs and their libraries, the config), {copied} changed",
        files.len() + 1,
        HAPROXY_PROGRAMS.len()
    ));
    docker_build(HAPROXY_IMAGE, &dir.join("Dockerfile"), &context, say)
}

/// The shared libraries `program` loads, as absolute paths (`ldd`), the loader included.
fn libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).stdin(Stdio::null()).output().context("running ldd")?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = line.split_once("=>").map_or(line, |(_, right)| right);
            path.split_whitespace().next().filter(|p| p.starts_with('/')).map(PathBuf::from)
        })
        .collect()
}

/// Copies `from` (its content, symlinks followed) to `to` unless `to` already holds the
/// same bytes; keeps the mode. Returns whether it copied.
fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<bool> {
    let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(to);
    std::fs::write(to, &data).with_context(|| format!("writing {}", to.display()))?;
    let mode = std::fs::metadata(from)?.permissions();
    std::fs::set_permissions(to, mode).with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(true)
}

/// Fails unless `binary` is an ELF file without a `PT_INTERP` program header (no dynamic
/// loader, so it runs in `FROM scratch`).
fn ensure_static(binary: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    match has_interpreter(&data) {
        Some(false) => Ok(()),
        Some(true) => bail!("{} is dynamically linked (it names a program interpreter)", binary.display()),
        None => bail!("{} is not a 64-bit little-endian ELF file", binary.display()),
    }
}

/// Whether a 64-bit little-endian ELF image has a `PT_INTERP` header; `None` if it is not one.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    let mut found = false;
    for i in 0..phnum {
        found |= u32_at(phoff + i * phentsize)? == PT_INTERP;
    }
    Some(found)
}

/// `docker build -q -t TAG -f DOCKERFILE CONTEXT`, reporting whether the image id changed.
fn docker_build(
    tag: &'static str,
    dockerfile: &Path,
    context: &Path,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<Built> {
    let before = image_id(tag);
    let out = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag, "--file"])
        .arg(dockerfile)
        .arg(context)
        .stdin(Stdio::null())
        .output()
        .context("running docker build")?;
    ensure!(
        out.status.success(),
        "docker build of {tag} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let built = Built { tag, changed: before.as_deref() != Some(id.as_str()), id };
    say(&built.to_string());
    Ok(built)
}

/// The id of the local image `tag`, if there is one.
#[must_use]
pub fn image_id(tag: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
