//! The kernels and the tools `cargo xtask kernels` needs, from Debian's archive.
//!
//! apt runs with a private configuration under `target/kernels/apt/`: the machine's own
//! sources plus the extra suites, and lists of its own. Nothing in `/etc/apt` changes,
//! and no other apt run on the machine ever sees bullseye or bookworm-backports lists
//! (DESIGN.md, "Other kernels": never edit debian.sources, no foreign lists at install).
//! Downloads are cached in `target/kernels/<suite>/`: delete that directory to fetch the
//! suite's newest kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::Kernel;
use crate::setup;
use crate::util::{self, cmd};

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The modules steer needs that Debian builds as modules: NETLINK_SOCK_DIAG for TCP.
/// Loaded in this order.
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
/// The static busybox of Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `target/kernels/<suite>/`: the download, and what is made for this kernel.
    pub home: PathBuf,
    pub vmlinuz: PathBuf,
    /// `uname -r`.
    pub release: String,
    pub package: String,
    pub version: String,
    /// The [`MODULES`], uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

impl Fetched {
    /// `linux-image-… 5.10.223-1 (bullseye)`.
    pub fn describe(&self, kernel: &Kernel) -> String {
        format!("{} {} ({})", self.package, self.version, kernel.suite)
    }
}

/// apt with a private source list and private package lists.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// A configuration under `dir`: the machine's sources plus `suites` of Debian's main
    /// archive. Its lists are updated once.
    fn new(dir: PathBuf, suites: &[&str]) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let list: String =
            suites.iter().map(|suite| format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")).collect();
        std::fs::write(dir.join("sources.list"), list)?;
        let apt = Apt { dir };
        util::run(apt.cmd("apt-get").args(["-q", "update"]))
            .context("could not update the private apt lists")?;
        Ok(apt)
    }

    fn cmd(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut command = cmd(program);
        for option in [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            // The lists live in target/, which apt's sandbox user may not reach.
            "APT::Sandbox::User=root".to_owned(),
            "DPkg::Lock::Timeout=600".to_owned(),
        ] {
            command.args(["-o", &option]);
        }
        command
    }
}

/// QEMU and a static busybox, installed when missing. QEMU comes from bookworm-backports:
/// this machine kind has qemu-utils 10.0 from there, which bookworm's qemu-system-x86 7.2
/// would remove.
pub fn tools(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    match which::which("qemu-system-x86_64") {
        Ok(path) => println!("ok: qemu-system-x86_64 already installed ({})", path.display()),
        Err(_) => missing.push("qemu-system-x86"),
    }
    match setup::dpkg_version("busybox-static") {
        Some(version) => println!("ok: busybox-static {version} already installed"),
        None => missing.push("busybox-static"),
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: {} (apt-get, qemu from bookworm-backports)", missing.join(" "));
    let apt = Apt::new(dir.join("apt/tools"), &["bookworm-backports"])?;
    util::run(
        apt.cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "install", "-y", "--no-install-recommends", "--no-remove"])
            .args(["-t", "bookworm-backports"])
            .args(&missing),
    )
    .context("could not install QEMU and busybox-static")?;
    which::which("qemu-system-x86_64").context("qemu-system-x86_64 is still missing after apt-get")?;
    Ok(())
}

/// `kernel`'s image package, downloaded and extracted unless `target/kernels/<suite>/`
/// has it already. `apt` is set up on the first download.
pub fn kernel(kernel: &Kernel, dir: &Path, apt: &mut Option<Apt>) -> Result<Fetched> {
    let home = dir.join(kernel.suite);
    let tree = home.join("tree");
    if find_deb(&home).is_none() {
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let apt = match apt {
            Some(apt) => apt,
            None => apt.insert(Apt::new(dir.join("apt/kernels"), &["bullseye", "bookworm-backports"])?),
        };
        download(kernel, apt, &home)?;
    }
    let deb = find_deb(&home).context("apt-get download left no .deb")?;
    if !tree.join("boot").is_dir() {
        util::run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    let name = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut fields = name.trim_end_matches(".deb").split('_');
    let (package, version) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
    let vmlinuz = std::fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    let release =
        vmlinuz.file_name().unwrap_or_default().to_string_lossy().trim_start_matches("vmlinuz-").to_owned();
    let modules = MODULES
        .iter()
        .map(|m| module(&tree.join("lib/modules").join(&release), m, &home))
        .collect::<Result<_>>()?;
    println!("ok: {} {version}: {}", kernel.label, vmlinuz.display());
    Ok(Fetched {
        home,
        vmlinuz,
        release,
        package: package.to_owned(),
        version: version.replace("%3a", ":"),
        modules,
    })
}

fn find_deb(home: &Path) -> Option<PathBuf> {
    std::fs::read_dir(home)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

/// The image package `linux-image-cloud-amd64` of the suite depends on, downloaded.
fn download(kernel: &Kernel, apt: &Apt, home: &Path) -> Result<()> {
    let madison = util::output(apt.cmd("apt-cache").args(["madison", "linux-image-cloud-amd64"]))?;
    let meta = madison_version(&madison, kernel.suite)
        .with_context(|| format!("no linux-image-cloud-amd64 in {}:\n{madison}", kernel.suite))?;
    let show = util::output(apt.cmd("apt-cache").args(["show", &format!("linux-image-cloud-amd64={meta}")]))?;
    let image = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .and_then(|deps| deps.split([',', '(']).map(str::trim).find(|d| d.starts_with("linux-image-")))
        .with_context(|| format!("linux-image-cloud-amd64 {meta} names no image package"))?
        .to_owned();
    println!("fetching: {image} {meta} ({})", kernel.suite);
    util::run(apt.cmd("apt-get").current_dir(home).args(["-q", "download", &format!("{image}={meta}")]))
        .with_context(|| format!("could not download {image}"))
}

/// The version `apt-cache madison` lists for `suite`'s main component.
fn madison_version(madison: &str, suite: &str) -> Option<String> {
    let wanted = format!("{suite}/main");
    madison.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let source = fields.get(2)?;
        source.split_whitespace().any(|w| w == wanted).then(|| fields[1].to_owned())
    })
}

/// `name.ko` from the kernel's module tree, uncompressed into `home` (busybox insmod
/// takes no `.ko.xz`).
fn module(tree: &Path, name: &str, home: &Path) -> Result<PathBuf> {
    let out = home.join(format!("{name}.ko"));
    if out.exists() {
        return Ok(out);
    }
    let found = walk(tree)
        .into_iter()
        .find(|p| {
            p.file_name().is_some_and(|n| n == &*format!("{name}.ko") || n == &*format!("{name}.ko.xz"))
        })
        .with_context(|| format!("no {name}.ko under {}", tree.display()))?;
    if found.extension().is_some_and(|e| e == "xz") {
        let data = Command::new("xz").arg("-dc").arg(&found).output().context("running xz")?;
        if !data.status.success() {
            bail!("xz -dc {} failed", found.display());
        }
        std::fs::write(&out, data.stdout)?;
    } else {
        std::fs::copy(&found, &out)?;
    }
    Ok(out)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
